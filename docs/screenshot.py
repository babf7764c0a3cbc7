"""The README's picture: what `make run` shows, taken from the real pipeline in headless Chromium.

Starts every stage (capture on the `demo` source, detect, classify, annotate) with the bundled model
(or --model-dir), serves the web app, waits until faces are annotated and saves the live page.

    python docs/screenshot.py                       # -> docs/screenshot.png
    python docs/screenshot.py --source clip.mp4 --out /tmp/page.png
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.web.testing import Pipeline, WebServer, pipeline_config, wait_until  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="demo", help="capture source (default: the demo photo)")
    ap.add_argument("--model-dir", default="", help="exported model directory (default: the bundled model)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshot.png"))
    ap.add_argument("--settle", type=float, default=4.0, help="seconds of streaming before the picture")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    a = ap.parse_args(argv)

    from playwright.sync_api import sync_playwright
    logs = Path(tempfile.mkdtemp(prefix="ferlive-shot-"))
    cfg = pipeline_config(fps=15.0)
    pipe = Pipeline(cfg, a.model_dir or None, capture_source=a.source, log_dir=logs)
    web = None
    try:
        web = WebServer({"FERLIVE": cfg, "MODEL_DIR": a.model_dir or None})
        hub = web.app.extensions["ferlive.hub"]
        if not wait_until(lambda: hub.health()["ok"], 60):
            raise SystemExit(f"the pipeline did not start; logs in {logs}")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=a.chromium, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(web.url + "/")
            deadline = time.monotonic() + 30
            while not page.evaluate("document.querySelectorAll('#faces .face').length >= 1"):
                if time.monotonic() > deadline:
                    raise SystemExit(f"no annotated face reached the page in 30 s; logs in {logs}")
                page.wait_for_timeout(200)
            page.wait_for_timeout(int(a.settle * 1000))
            page.screenshot(path=a.out)
            browser.close()
        print(f"saved {a.out}")
    finally:
        if web is not None:
            web.stop()
        pipe.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
