"""The pages in a real browser: Debian's Chromium through Playwright, a fake webcam playing real FER2013
faces, against the real pipeline processes. Screenshots go to $FERLIVE_SCREENSHOTS (default: tmp dir)."""
from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from services.web.testing import (Pipeline, WebServer, detectable_faces, encode_jpeg, pipeline_config,
                                  place_faces, wait_until, write_y4m)
from shared.labels import EMOTIONS

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
                 "--disable-backgrounding-occluded-windows",
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


def face_video_frames(faces, n: int = 60) -> list[np.ndarray]:
    """640x480 frames: two real faces drifting slowly (so the overlay follows them)."""
    frames = []
    for i in range(n):
        dx = int(20 * np.sin(2 * np.pi * i / n))
        frame, _ = place_faces(faces[:2], [(60 + dx, 140), (390 - dx, 150)], side=160)
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def faces(sample_data, detector):
    # found alone at the spots and size face_video_frames uses (the drift's ends included)
    return detectable_faces(sample_data.faces, detector, count=2, side=160,
                            positions=((40, 140), (60, 140), (80, 140), (370, 150), (390, 150), (410, 150)))


@pytest.fixture(scope="module")
def media(faces, tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    frames = face_video_frames(faces)
    y4m = write_y4m(frames, d / "webcam.y4m", fps=30)
    avi = d / "camera.avi"
    w = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"MJPG"), 15, (640, 480))
    for f in frames:
        w.write(f)
    w.release()
    return {"y4m": y4m, "avi": avi, "frame": frames[0]}


@pytest.fixture(scope="module")
def server(tiny_model_dir, media, tmp_path_factory):
    cfg = pipeline_config(fps=15.0)
    logs = tmp_path_factory.mktemp("browser-pipeline")
    # two sources side by side: the faces video and the demo photo
    pipe = Pipeline(cfg, tiny_model_dir, capture_source=f"{media['avi']},demo", log_dir=logs)
    web = WebServer({"FERLIVE": cfg, "MODEL_DIR": str(tiny_model_dir)})
    hub = web.app.extensions["ferlive.hub"]
    try:
        assert wait_until(lambda: hub.health()["ok"], 40), f"pipeline did not start (logs: {logs})"
        yield web
    finally:
        web.stop()
        pipe.stop()


@pytest.fixture(scope="module")
def browser(media):
    from playwright import sync_api
    if not os.path.exists(CHROMIUM):
        pytest.fail("Debian's chromium is missing: `make browser` (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=CHROMIUM_ARGS + [f"--use-file-for-fake-video-capture={media['y4m']}"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
    pg = ctx.new_page()
    pg.csp_errors = []
    pg.on("console", lambda m: pg.csp_errors.append(m.text) if "Content Security Policy" in m.text else None)
    yield pg
    ctx.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    d = Path(os.environ.get("FERLIVE_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def wait_js(page, expr: str, timeout: float = 20000) -> None:
    """Poll a JS expression until truthy (page.wait_for_function would need 'unsafe-eval' under our CSP)."""
    import time
    deadline = time.monotonic() + timeout / 1000
    while time.monotonic() < deadline:
        if page.evaluate(expr):
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"timed out waiting for {expr}")


def overlay(page) -> dict:
    return page.eval_on_selector("#overlay", "c => ({boxes: +c.dataset.boxes, bars: +c.dataset.bars, "
                                             "labels: c.dataset.labels, w: c.width, h: c.height})")


def test_webcam_page_draws_boxes_labels_and_bars_over_the_video(page, server, shots):
    page.goto(server.url + "/webcam")
    assert page.evaluate("window.ferlive.results") == 0
    assert server.app.extensions["ferlive.hub"].clients == 0     # nothing leaves before the click
    page.click("#start")
    wait_js(page, "window.ferlive.results >= 5 && +document.querySelector('#overlay').dataset.boxes >= 1",
                           timeout=30000)
    o = overlay(page)
    assert o["boxes"] >= 1 and o["bars"] == 7 * o["boxes"]
    assert all(label in EMOTIONS for label in o["labels"].split(","))
    # the overlay has drawn pixels (box strokes, label, bar panel)
    drawn = page.eval_on_selector("#overlay", "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, "
                                              "c.height).data; let n = 0; for (let i = 3; i < d.length; i += 4) "
                                              "if (d[i]) n++; return n; }")
    assert drawn > 2000
    wait_js(page, "document.querySelector('#fps').textContent !== '–'", timeout=10000)
    assert float(page.text_content("#fps")) > 0 and float(page.text_content("#rtt")) > 0
    page.wait_for_timeout(1500)  # a little timeline
    page.screenshot(path=str(shots / "webcam.png"))
    assert not page.evaluate("window.ferlive.errors")
    assert not page.csp_errors

    # pause stops sending; resume sends again
    page.click("#pause")
    page.wait_for_timeout(600)
    n = page.evaluate("window.ferlive.results")
    page.wait_for_timeout(800)
    assert page.evaluate("window.ferlive.results") == n
    page.click("#pause")
    wait_js(page, f"window.ferlive.results > {n}", timeout=10000)

    # the session's results as CSV
    with page.expect_download() as dl:
        page.click("#download")
    rows = list(csv.reader(io.StringIO(Path(dl.value.path()).read_text())))
    assert rows[0][:10] == ["time", "elapsed_ms", "seq", "face", "track_id", "x", "y", "w", "h", "emotion"]
    assert rows[0][10:17] == list(EMOTIONS) and len(rows) > 5
    assert all(r[9] in EMOTIONS and abs(sum(map(float, r[10:17])) - 1) < 0.05 for r in rows[1:])


def test_live_page_shows_a_tile_per_source_with_its_stream_faces_and_health(page, server, media, shots):
    page.goto(server.url + "/")
    avi = f".tile[data-source='{media['avi']}']"
    wait_js(page, "document.querySelectorAll('#grid .tile').length === 2", timeout=20000)
    for tile in (avi, ".tile[data-source='demo']"):
        wait_js(page, f"document.querySelector(\"{tile} .stream\").naturalWidth === 640", timeout=20000)
        wait_js(page, f"document.querySelector(\"{tile} .fps\").textContent !== '–'", timeout=10000)
        assert page.text_content(f"{tile} .tile-status") == "ok"
    wait_js(page, f"document.querySelectorAll(\"{avi} .faces .face\").length >= 1", timeout=20000)
    assert page.locator(f"{avi} .faces .face").first.locator(".bar").count() == 7
    wait_js(page, "document.querySelectorAll('#stages .pill.up').length === 4", timeout=10000)
    page.wait_for_timeout(500)
    page.screenshot(path=str(shots / "live.png"))
    assert not page.csp_errors
    # ?source= shows that source alone
    page.goto(server.url + "/?source=demo")
    wait_js(page, "document.querySelector('.tile .stream').naturalWidth === 640", timeout=20000)
    page.wait_for_timeout(1500)  # a status poll later, still one tile
    assert page.locator("#grid .tile").count() == 1


def test_upload_page_annotates_a_dropped_photo(page, server, media, shots, tmp_path):
    photo = tmp_path / "faces.jpg"
    photo.write_bytes(encode_jpeg(media["frame"]))
    page.goto(server.url + "/upload")
    page.set_input_files("#file", str(photo))
    wait_js(page, "+document.querySelector('#overlay').dataset.boxes >= 2", timeout=20000)
    o = overlay(page)
    assert o["bars"] == 7 * o["boxes"]
    assert page.locator("#faces .face").count() == o["boxes"]
    page.screenshot(path=str(shots / "upload.png"))
    # a bad file is reported, not a crash
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"these are not pixels")
    page.set_input_files("#file", str(bad))
    wait_js(page, "document.querySelector('#result-text').classList.contains('error')", timeout=10000)
    assert "not an image" in page.text_content("#result-text")
    assert not page.csp_errors


def test_upload_page_shows_no_broken_image_before_a_photo(page, server):
    page.goto(server.url + "/upload")
    assert not page.locator("#stage").is_visible()  # `hidden` wins over the stage's display rule


def test_pages_fit_a_phone_screen(page, server):
    page.set_viewport_size({"width": 390, "height": 800})
    for path in ("/", "/webcam", "/upload", "/video"):
        page.goto(server.url + path)
        page.wait_for_timeout(300)  # the model tag is filled in
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, path


def test_webcam_placeholder_is_one_paragraph(page, server):
    page.goto(server.url + "/webcam")
    box = page.locator("#placeholder span").bounding_box()
    b = page.locator("#placeholder b").bounding_box()
    assert box["width"] > 3 * b["width"]  # the sentence flows around the button name, not in columns


def test_video_page_analyses_an_upload_and_offers_the_outputs(page, server, media, shots, tmp_path):
    page.goto(server.url + "/video")
    page.set_input_files("#file", str(media["avi"]))
    wait_js(page, "!document.querySelector('#result-video').hidden", timeout=90000)
    assert page.locator("#downloads a").count() >= 4
    wait_js(page, "document.querySelector('#result-video').readyState >= 1", timeout=10000)  # the browser plays it
    assert page.evaluate("document.querySelector('#result-video').duration") > 1
    assert page.locator("#tracks .face").count() >= 1
    page.screenshot(path=str(shots / "video.png"))
    bad = tmp_path / "notes.mp4"
    bad.write_bytes(b"these are not frames" * 100)
    page.set_input_files("#file", str(bad))
    wait_js(page, "document.querySelector('#job-status').classList.contains('error')", timeout=10000)
    assert "not a video" in page.text_content("#job-status")
    assert not page.csp_errors


def test_live_grid_adds_tiles_as_sources_appear_and_streams_at_most_four(page, tmp_path):
    """Six sources from a stand-in annotate stage (no pipeline): a tile each as they appear, the first
    four as MJPEG streams, the others as refreshed stills, each with its own faces."""
    import threading
    import time
    import zmq
    from shared import bus
    from shared.messages import Annotated, FaceResult, Frame, encode
    cfg = pipeline_config()
    web = WebServer({"FERLIVE": cfg})
    ctx = zmq.Context()
    pub = bus.annotated_pub(cfg.replace(pub_hwm=100), ctx)
    jpeg = encode_jpeg(np.full((48, 64, 3), 90, np.uint8))
    scores = {e: (0.4 if e == "sad" else 0.1) for e in EMOTIONS}
    live = ["cam-1", "cam-2", "cam-3", "cam-4", "cam-5"]
    stop = threading.Event()

    def feed():
        seq = 0
        while not stop.is_set():
            seq += 1
            for k, sid in enumerate(list(live)):
                results = [FaceResult((4, 4, 20, 20), "sad", scores, scores, i) for i in range(k % 3 + 1)]
                pub.send(encode(Annotated(Frame(sid, seq, time.time(), jpeg, 64, 48), results)))
            time.sleep(0.1)
    t = threading.Thread(target=feed, daemon=True)
    t.start()
    try:
        hub = web.app.extensions["ferlive.hub"]
        assert wait_until(lambda: len(hub.sources()) == 5, 10)
        page.goto(web.url + "/")
        wait_js(page, "document.querySelectorAll('#grid .tile').length === 5")
        live.append("cam-6")  # a source that comes later gets its tile without a reload
        wait_js(page, "document.querySelectorAll('#grid .tile').length === 6", timeout=10000)
        srcs = page.eval_on_selector_all("#grid .tile .stream", "els => els.map(e => e.getAttribute('src'))")
        assert all(s.startswith(f"/video_feed?source=cam-{i + 1}") for i, s in enumerate(srcs))
        assert all("frames=1" not in s for s in srcs[:4]) and all("frames=1" in s for s in srcs[4:])
        wait_js(page, "[...document.querySelectorAll('#grid .tile .stream')].every(i => i.naturalWidth === 64)",
                timeout=10000)
        wait_js(page, "document.querySelectorAll(\"[data-source='cam-6'] .faces .face\").length === 3", timeout=10000)
        assert page.text_content("[data-source='cam-6'] .tile-status") == "ok"
        assert page.text_content("#source-count") == "6"
        assert not page.csp_errors
    finally:
        stop.set()
        t.join(2)
        web.stop()
        pub.close(0)
        ctx.term()
