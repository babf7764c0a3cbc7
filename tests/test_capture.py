"""Capture: source parsing, the demo source, frame messages, end of file, looping, a lost camera, and
several sources in one process."""
from __future__ import annotations

import tempfile
import threading
import time

import cv2
import numpy as np
import pytest
import zmq

from shared import bus
from shared.config import Config, ConfigError
from shared.messages import decode, latencies
from services.capture.source import DemoSource, demo_image_path, fit_frame, parse_source, parse_sources
from services.capture.stage import Backoff, frame_message, run


@pytest.fixture
def cfg():
    d = tempfile.mkdtemp(prefix="flcap", dir="/tmp")
    names = ("frames", "web_frames", "detections", "faces", "predictions", "annotated", "heartbeat")
    return Config(**{f"{n}_endpoint": f"ipc://{d}/{n}" for n in names}, heartbeat_interval=0.1,
                  width=160, height=120, fps=0, wait_subscriber_s=5.0)


def write_video(path, n=12, size=(160, 120), fps=10) -> str:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for i in range(n):
        img = np.zeros((size[1], size[0], 3), np.uint8)
        img[:, : (i + 1) * 10] = 200
        w.write(img)
    w.release()
    return str(path)


def collect(cfg, stop_when, timeout=20.0):
    """Run capture in a thread, ask for frames like a detect worker, return the decoded frames and heartbeats."""
    ctx = zmq.Context()
    sub = bus.frames_worker(cfg, ctx, [cfg.frames_endpoint])  # asks as soon as it has a frame: gets each one
    hbs = bus.heartbeat_sub(cfg, ctx)
    stop = threading.Event()
    t = threading.Thread(target=run, args=(cfg, ctx, stop.is_set), daemon=True)
    t.start()
    frames, beats, deadline = [], [], time.time() + timeout
    while time.time() < deadline and not stop_when(frames, beats):
        if (d := sub.get(0.01)) is not None:
            frames.append(decode(d, expect="frame"))
        while (h := bus.recv_nowait(hbs, 0)) is not None:
            beats.append(decode(h, expect="heartbeat"))
        if not t.is_alive() and (d := sub.get(0.1)) is None:
            break
        if not t.is_alive():
            frames.append(decode(d, expect="frame"))
    stop.set()
    t.join(10)
    while (h := bus.recv_nowait(hbs, 50)) is not None:
        beats.append(decode(h, expect="heartbeat"))
    sub.close()
    ctx.destroy(linger=0)
    return frames, beats, t.is_alive()


def test_parse_source():
    assert parse_source("demo") == ("demo", "demo")
    assert parse_source("0") == ("camera", 0)
    assert parse_source("rtsp://cam/1") == ("stream", "rtsp://cam/1")
    assert parse_source("clip.mp4") == ("file", "clip.mp4")


def test_demo_source_is_a_real_photo_that_moves():
    assert demo_image_path() is not None, "matplotlib's grace_hopper.jpg is the demo photo"
    src = DemoSource(640, 480, fps=30)
    a, b = src.read(), [src.read() for _ in range(30)][-1]
    assert a.shape == (480, 640, 3) and a.dtype == np.uint8
    assert a.std() > 20  # a photo, not a flat fill
    assert np.abs(a.astype(int) - b).mean() > 1  # it pans/zooms


def test_frame_message_and_fit():
    img = fit_frame(np.zeros((100, 200), np.uint8), 64, 48)
    assert img.shape == (48, 64, 3)
    msg = frame_message(img, "cam", 3, 10.0, 90)
    assert (msg.width, msg.height, msg.seq, msg.source_id) == (64, 48, 3, "cam")
    assert cv2.imdecode(np.frombuffer(msg.jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (48, 64, 3)


def test_backoff_doubles_to_a_cap_and_resets():
    b = Backoff(max_s=1.0)
    assert [b.next() for _ in range(4)] == [0.25, 0.5, 1.0, 1.0]
    b.reset()
    assert b.next() == 0.25


def test_file_stops_cleanly_at_its_end(cfg, tmp_path):
    cfg = cfg.replace(source=write_video(tmp_path / "v.avi", 12), heartbeat_interval=0.05, fps=100)
    frames, beats, alive = collect(cfg, lambda f, b: False)
    assert not alive
    assert [f.seq for f in frames] == list(range(12))
    assert all((f.width, f.height) == (160, 120) for f in frames)
    assert latencies(frames[0])["capture"] >= 0
    assert beats[-1].status == "eof" and beats[-1].counters["frames_out"] == 12


def test_file_loops_at_its_own_rate_under_the_cap(cfg, tmp_path):
    """A 10 frames/s file under a 40 frames/s cap plays at 10 frames/s, not at the cap."""
    cfg = cfg.replace(source=write_video(tmp_path / "v.avi", 5, fps=10), loop=True, max_frames=12, fps=40)
    frames, beats, alive = collect(cfg, lambda f, b: False)
    assert [f.seq for f in frames] == list(range(12)) and not alive
    assert beats[-1].counters["rewinds"] == 2
    span = frames[-1].t_capture - frames[0].t_capture
    assert span == pytest.approx(11 / 10, abs=0.15)


def test_file_faster_than_the_cap_skips_frames_and_keeps_real_time(cfg, tmp_path):
    """A 40 frames/s file under a 20 frames/s cap: about every other frame is skipped (never decoded), and
    the file still takes its own duration."""
    cfg = cfg.replace(source=write_video(tmp_path / "v.avi", 40, fps=40), fps=20, heartbeat_interval=0.05)
    frames, beats, alive = collect(cfg, lambda f, b: False)
    assert not alive
    assert 17 <= len(frames) <= 23, len(frames)
    assert beats[-1].counters["skipped"] + len(frames) == 40
    span = frames[-1].t_capture - frames[0].t_capture
    assert span == pytest.approx(39 / 40, abs=0.15)


def test_missing_camera_is_retried_and_reported(cfg):
    cfg = cfg.replace(source="57", retry_max_s=0.2, wait_subscriber_s=0)
    frames, beats, alive = collect(cfg, lambda f, b: any(h.counters.get("open_failures", 0) >= 2 for h in b))
    assert not alive and frames == []
    assert any(h.status == "reconnecting" and "57" in h.detail for h in beats)


def test_missing_file_is_an_error_not_a_retry(cfg):
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        run(cfg.replace(source="/tmp/nope.mp4", wait_subscriber_s=0))


# ------------------------------------------------------------------------------- several sources
def test_parse_sources():
    assert parse_sources("demo") == [("demo", "demo")]  # one source: named by itself, as before
    assert parse_sources("clip.mp4", "cam") == [("clip.mp4", "cam")]
    assert parse_sources("demo, clip.mp4,0") == [("demo", "demo"), ("clip.mp4", "clip.mp4"), ("0", "0")]
    assert parse_sources("demo,demo,demo") == [("demo", "demo"), ("demo", "demo#2"), ("demo", "demo#3")]
    assert parse_sources("demo,0", "hall, door") == [("demo", "hall"), ("0", "door")]
    assert parse_sources('"rtsp://cam/?a=1,2",demo') == [("rtsp://cam/?a=1,2", "rtsp://cam/?a=1,2"), ("demo", "demo")]
    for source, ids, needle in [("demo,0", "a", "names 1 sources but --source has 2"),
                                ("demo,0", "a,a", "repeats an id"),
                                ("demo,,0", "", "empty source"),
                                ("demo", "x" * 129, "129 characters"),
                                ("/" + "d" * 200 + ".mp4", "", "name it with --source-id"),
                                ("demo", "browser-1", "browsers' own cameras"),
                                (",".join(["demo"] * 17), "", "at most 16")]:
        with pytest.raises(ConfigError, match=needle):
            parse_sources(source, ids)


def test_two_sources_send_frames_of_both_ids(cfg, tmp_path):
    video = write_video(tmp_path / "v.avi", 12)
    cfg = cfg.replace(source=f"demo,{video}", source_id="hall,door", loop=True, max_frames=15,
                      fps=50)  # the file at its own 10 frames/s, the demo at 50
    frames, beats, alive = collect(cfg, lambda f, b: False)
    assert not alive
    by_id = {sid: [f.seq for f in frames if f.source_id == sid] for sid in ("hall", "door")}
    assert all(seqs == sorted(seqs) and seqs[-1] == 14 for seqs in by_id.values())  # in order, to the last
    assert {(f.width, f.height) for f in frames} == {(160, 120)}
    last = beats[-1]
    # every frame reached the collector unless a newer one of its source replaced it first (counted as superseded:
    # the collector, a worker here, can be slow on a loaded machine)
    assert len(frames) + last.counters.get("superseded", 0) == 30
    assert last.counters["frames_out"] == 30 and last.counters["rewinds"] == 1
    assert set(last.sources) == {"hall", "door"}
    assert last.sources["hall"].counters["frames_out"] == 15 and last.sources["door"].counters["rewinds"] == 1
    assert last.sources["door"].status == "ok" and "door" in last.detail


def test_a_missing_file_does_not_stop_the_other_sources(cfg, tmp_path):
    missing = str(tmp_path / "nope.avi")
    cfg = cfg.replace(source=f"{missing},demo,demo", max_frames=20, fps=50)
    frames, beats, alive = collect(cfg, lambda f, b: False)
    assert not alive
    assert sorted({f.source_id for f in frames}) == ["demo", "demo#2"]
    hb = beats[-1]
    assert hb.sources[missing].status == "missing" and "nope.avi" in hb.sources[missing].detail
    for sid in ("demo", "demo#2"):  # both demos made and sent every frame; what arrived came in order to the last
        seqs = [f.seq for f in frames if f.source_id == sid]
        assert hb.sources[sid].counters["frames_out"] == 20 and seqs == sorted(seqs) and seqs[-1] == 19
    # live frames: one that no worker asked for before its source's next one is superseded (counted), never lost
    # silently; on a loaded machine the collector here can be that slow worker
    assert len(frames) + hb.counters.get("superseded", 0) == 40
    assert any(b.status == "degraded" and "nope.avi" in b.detail for b in beats)


def test_every_source_missing_is_an_error(cfg):
    with pytest.raises(FileNotFoundError, match="nope"):
        run(cfg.replace(source="/tmp/nope1.mp4,/tmp/nope2.mp4", wait_subscriber_s=0))


def test_stop_ends_every_source_thread(cfg):
    cfg = cfg.replace(source="demo,57", retry_max_s=0.2, fps=30)
    frames, beats, alive = collect(cfg, lambda f, b: len(f) >= 10 and any(
        h.sources.get("57", None) is not None and h.sources["57"].status == "reconnecting" for h in b))
    assert not alive and len(frames) >= 10
    assert {f.source_id for f in frames} == {"demo"}
    assert any(h.status == "degraded" for h in beats)
    assert threading.active_count() < 10  # no source thread left behind
