"""Round trip from the page: frame grabbed from the <video> -> JPEG -> WebSocket -> pipeline -> results drawn.

Starts the real pipeline processes (detect, classify, annotate) and the web app, opens N headless
Chromium pages on /webcam with a fake webcam playing real FER2013 faces (640x480), and reads each page's
own measurements (window.ferlive.rtts: grab -> drawn, ms). Reports p50/p95 round trip and frames/s per
client for each client count.

    python benchmarks/web_roundtrip.py                         # 1 and 8 clients, 30 s each, bundled model
    python benchmarks/web_roundtrip.py --seconds 5 --clients 1 # a quick check
    python benchmarks/web_roundtrip.py --model-dir runs/x/model --json out.json

Target: p95 <= 60 ms for one client at 640x480.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.web.testing import (Pipeline, WebServer, detectable_faces, pipeline_config, place_faces,  # noqa: E402
                                  wait_until, write_y4m)

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
                 "--disable-backgrounding-occluded-windows",
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
SAMPLE_CSV = ROOT.parent / "shared" / "datasets" / "fer2013" / "fer2013-sample.csv"


def make_webcam(path: Path, n_frames: int = 90) -> Path:
    """A 640x480 30 fps y4m of two real FER2013 faces drifting slowly."""
    from shared.detector import FaceDetector
    from training.data import load_fer2013
    faces = detectable_faces(load_fer2013(SAMPLE_CSV).faces, FaceDetector(), count=2)
    frames = []
    for i in range(n_frames):
        dx = int(20 * np.sin(2 * np.pi * i / n_frames))
        frames.append(place_faces(faces, [(60 + dx, 140), (390 - dx, 150)], side=160)[0])
    return write_y4m(frames, path, fps=30)


def measure(browser, url: str, clients: int, seconds: float, warmup: float, width: int) -> dict:
    contexts, pages = [], []
    for _ in range(clients):
        ctx = browser.new_context(viewport={"width": 1280, "height": 860})
        page = ctx.new_page()
        page.goto(url + "/webcam")
        page.select_option("#width", str(width))
        page.click("#start")
        contexts.append(ctx)
        pages.append(page)
    time.sleep(warmup)
    for page in pages:
        page.evaluate("window.ferlive.rtts = []; window.ferlive.results = 0; window.ferlive.lost = 0")
    t0 = time.monotonic()
    time.sleep(seconds)
    per_page = [page.evaluate("({rtts: window.ferlive.rtts, results: window.ferlive.results, "
                              "lost: window.ferlive.lost, errors: window.ferlive.errors, "
                              "faces: window.ferlive.faces})") for page in pages]
    elapsed = time.monotonic() - t0
    for ctx in contexts:
        ctx.close()
    rtts = np.concatenate([np.asarray(p["rtts"], float) for p in per_page]) if per_page else np.zeros(0)
    fps = [p["results"] / elapsed for p in per_page]
    return {"clients": clients, "seconds": round(elapsed, 1), "width": width, "frames": int(rtts.size),
            "rtt_p50_ms": round(float(np.percentile(rtts, 50)), 1) if rtts.size else None,
            "rtt_p95_ms": round(float(np.percentile(rtts, 95)), 1) if rtts.size else None,
            "fps_per_client_mean": round(float(np.mean(fps)), 2), "fps_per_client_min": round(float(min(fps)), 2),
            "lost": sum(p["lost"] for p in per_page), "errors": sum(len(p["errors"]) for p in per_page)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8], help="client counts to measure")
    ap.add_argument("--seconds", type=float, default=30.0, help="measured seconds per client count")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    ap.add_argument("--width", type=int, default=640, choices=(320, 480, 640), help="frame width sent")
    ap.add_argument("--workers", type=int, default=1, help="classify workers")
    ap.add_argument("--model-dir", default="", help="exported model dir (default: the bundled model)")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args(argv)

    from playwright.sync_api import sync_playwright
    tmp = Path(tempfile.mkdtemp(prefix="ferlive-bench-"))
    y4m = make_webcam(tmp / "webcam.y4m")
    cfg = pipeline_config()
    pipe = Pipeline(cfg, a.model_dir or None, classify_workers=a.workers, log_dir=tmp)
    web = None
    results = []
    try:
        web = WebServer({"FERLIVE": cfg, "MODEL_DIR": a.model_dir or None})
        hub = web.app.extensions["ferlive.hub"]
        if not wait_until(lambda: all(hub.health()["stages"][s]["alive"] for s in ("detect", "classify", "annotate")), 60):
            raise SystemExit(f"pipeline did not start; logs in {tmp}")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=a.chromium, headless=True,
                                        args=CHROMIUM_ARGS + [f"--use-file-for-fake-video-capture={y4m}"])
            for n in a.clients:
                r = measure(browser, web.url, n, a.seconds, a.warmup, a.width)
                r["server_latency_p50_ms"] = {k: v["p50"] for k, v in hub.health()["latency_ms"].items()}
                results.append(r)
                print(json.dumps(r), flush=True)
            browser.close()
    finally:
        if web is not None:
            web.stop()
        pipe.stop()
    print(f"\n{'clients':>7} {'frames':>7} {'rtt p50':>8} {'rtt p95':>8} {'fps/client':>10} {'lost':>5}")
    for r in results:
        print(f"{r['clients']:>7} {r['frames']:>7} {r['rtt_p50_ms']:>8} {r['rtt_p95_ms']:>8} "
              f"{r['fps_per_client_mean']:>10} {r['lost']:>5}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
