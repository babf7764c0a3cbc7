"""Soak: the whole pipeline for N minutes with MJPEG viewers, WebSocket cameras and uploads (good and bad),
sampling every process's RSS, open fds and threads, the stream's frames/s and each stage's latency.

    python benchmarks/soak.py --minutes 30 --json benchmarks/results/soak.json
    python benchmarks/soak.py --minutes 2 --viewers 2 --ws-clients 1 --uploads-per-s 2     # a short check

The stages run as processes (capture on the demo photo at 30 frames/s, detect, classify, annotate, web on
a free port, the bundled model). The summary compares the first and the last minute: drift of RSS, fds
and threads per process, frames/s, and capture -> web p50/p95 from ``/api/health``.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.inference import machine_info  # noqa: E402
from services.web.testing import (Pipeline, config_env, declared_size_jpeg, encode_jpeg, free_port,  # noqa: E402
                                  pipeline_config, place_faces)


def proc_stats(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    get = {line.split(":")[0]: line.split(":", 1)[1].strip() for line in status}
    return {"rss_mb": round(int(get["VmRSS"].split()[0]) / 1024, 1), "threads": int(get["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def good_jpeg() -> bytes:
    from training.data import load_fer2013
    faces = load_fer2013(ROOT.parent / "shared" / "datasets" / "fer2013" / "fer2013-sample.csv").faces
    frame, _ = place_faces([faces[0]], [(235, 155)])
    return encode_jpeg(frame)


class Load:
    """Viewers, WebSocket cameras and uploaders as threads; counts what they got."""

    def __init__(self, url: str, port: int, jpeg: bytes) -> None:
        self.url, self.port, self.jpeg = url, port, jpeg
        self.stop = threading.Event()
        self.counts = {"mjpeg_bytes": 0, "ws_results": 0, "ws_other": 0, "upload_ok": 0, "upload_refused": 0,
                       "upload_errors": 0}
        self.lock = threading.Lock()

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def viewer(self) -> None:
        while not self.stop.is_set():
            try:
                with requests.get(self.url + "/video_feed", stream=True, timeout=10) as r:
                    for chunk in r.iter_content(65536):
                        self.add("mjpeg_bytes", len(chunk))
                        if self.stop.is_set():
                            return
            except requests.RequestException:
                time.sleep(0.5)

    def ws_camera(self) -> None:
        from simple_websocket import Client
        while not self.stop.is_set():
            try:
                ws = Client.connect(f"ws://127.0.0.1:{self.port}/ws/frames")
                ws.receive(5)
                seq = 0
                while not self.stop.is_set():
                    seq += 1
                    ws.send(struct.pack(">I", seq) + self.jpeg)
                    msg = json.loads(ws.receive(5) or "{}")
                    self.add("ws_results" if msg.get("type") == "result" else "ws_other")
                    time.sleep(1 / 15)
                ws.close()
            except Exception:  # a reconnect is part of the soak
                time.sleep(0.5)

    def uploader(self, per_s: float) -> None:
        bad = [declared_size_jpeg(8000, 8000), b"", encode_jpeg(np.zeros((4, 4, 3), np.uint8))]
        i = 0
        while not self.stop.is_set():
            i += 1
            body = bad[i % len(bad)] if i % 4 == 0 else self.jpeg
            try:
                r = requests.post(self.url + "/api/predict", data=body, timeout=10)
                self.add("upload_ok" if r.status_code == 200 else "upload_refused")
            except requests.RequestException:
                self.add("upload_errors")
            time.sleep(1 / per_s)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--sample-s", type=float, default=5.0)
    ap.add_argument("--viewers", type=int, default=2)
    ap.add_argument("--ws-clients", type=int, default=1)
    ap.add_argument("--uploads-per-s", type=float, default=2.0)
    ap.add_argument("--json", help="write samples and summary here")
    args = ap.parse_args(argv)

    port = free_port()
    cfg = pipeline_config(heartbeat_interval=1.0)
    logdir = Path(tempfile.mkdtemp(prefix="flsoak"))
    pipe = Pipeline(cfg, None, capture_source="demo", log_dir=logdir)
    env = {**os.environ, **config_env(cfg), "FERLIVE_PORT": str(port), "PYTHONPATH": str(ROOT),
           "FERLIVE_LOG_LEVEL": "WARNING"}
    web = subprocess.Popen([sys.executable, "-m", "services.web"], cwd=ROOT, env=env,
                           stdout=open(logdir / "web.log", "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    procs = {"annotate": pipe.procs[0], "classify": pipe.procs[1], "detect": pipe.procs[2],
             "capture": pipe.procs[3], "web": web}
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if requests.get(url + "/api/health", timeout=2).json().get("ok"):
                break
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.5)
    load = Load(url, port, good_jpeg())
    threads = ([threading.Thread(target=load.viewer, daemon=True) for _ in range(args.viewers)]
               + [threading.Thread(target=load.ws_camera, daemon=True) for _ in range(args.ws_clients)]
               + [threading.Thread(target=load.uploader, args=(args.uploads_per_s,), daemon=True)])
    for t in threads:
        t.start()
    samples = []
    t0 = time.time()
    try:
        while time.time() - t0 < args.minutes * 60:
            time.sleep(args.sample_s)
            h = requests.get(url + "/api/health", timeout=5).json()
            src = h.get("sources", {}).get(h.get("main_source") or "", {})
            samples.append({
                "t": round(time.time() - t0, 1),
                "procs": {k: proc_stats(p.pid) for k, p in procs.items() if p.poll() is None},
                "alive": {k: p.poll() is None for k, p in procs.items()},
                "fps": src.get("fps"),
                "latency_ms": {k: v for k, v in h.get("latency_ms", {}).items()
                               if k in ("total", "detect", "classify", "annotate", "annotate->web")},
                "load": dict(load.counts)})
            s = samples[-1]
            print(f"{s['t']:7.1f}s fps {s['fps']} total {s['latency_ms'].get('total')} "
                  f"rss { {k: v['rss_mb'] for k, v in s['procs'].items()} }", flush=True)
    finally:
        load.stop.set()
        pipe.stop()
        web.terminate()
        web.wait(10)

    per_min = max(1, int(60 / args.sample_s))
    first, last = samples[:per_min], samples[-per_min:]

    def mean(rows, f):
        vals = [f(r) for r in rows if f(r) is not None]
        return round(float(np.mean(vals)), 2) if vals else None
    summary = {"minutes": args.minutes, "machine": machine_info(), "load_avg": os.getloadavg(),
               "viewers": args.viewers, "ws_clients": args.ws_clients, "uploads_per_s": args.uploads_per_s,
               "all_alive": all(all(s["alive"].values()) for s in samples), "load_counts": dict(load.counts),
               "first_vs_last_minute": {}}
    for name in procs:
        for key in ("rss_mb", "fds", "threads"):
            f = (lambda r, n=name, k=key: r["procs"].get(n, {}).get(k))
            summary["first_vs_last_minute"][f"{name}.{key}"] = [mean(first, f), mean(last, f)]
    summary["first_vs_last_minute"]["fps"] = [mean(first, lambda r: r["fps"]), mean(last, lambda r: r["fps"])]
    for q in ("p50", "p95"):
        f = (lambda r, q=q: (r["latency_ms"].get("total") or {}).get(q))
        summary["first_vs_last_minute"][f"capture_to_web_{q}_ms"] = [mean(first, f), mean(last, f)]
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "samples": samples}, indent=1))
    return 0 if summary["all_alive"] else 1


if __name__ == "__main__":
    sys.exit(main())
