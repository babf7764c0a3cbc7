"""The web's one pipeline subscription, fed by a stand-in annotate stage: latest, MJPEG, health, routing."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from services.web import close_app, create_app
from services.web.hub import PipelineHub
from services.web.testing import encode_jpeg, pipeline_config, wait_until
from shared import bus
from shared.labels import EMOTIONS
from shared.messages import Annotated, FaceResult, Frame, Heartbeat, encode


@pytest.fixture
def cfg():
    return pipeline_config()


@pytest.fixture
def app(cfg):
    app = create_app({"FERLIVE": cfg, "TESTING": True})
    yield app
    close_app(app)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def annotate(cfg):
    """A stand-in annotate stage: PUB on the annotated endpoint, PUB to the web's heartbeat endpoint."""
    ctx = zmq.Context()
    pub = bus.annotated_pub(cfg.replace(pub_hwm=100), ctx)
    hb = bus.heartbeat_pub(cfg, ctx)
    yield pub, hb
    pub.close(0)
    hb.close(0)
    ctx.term()


JPEG = encode_jpeg(np.full((48, 64, 3), 128, np.uint8))


def annotated(source: str, seq: int, n_faces: int = 1, t0: float | None = None) -> Annotated:
    t0 = time.time() - 0.05 if t0 is None else t0
    stamps = [("capture", t0, t0 + 0.001), ("detect", t0 + 0.002, t0 + 0.01),
              ("classify", t0 + 0.011, t0 + 0.02), ("annotate", t0 + 0.021, t0 + 0.025)]
    scores = {e: (0.4 if e == "happy" else 0.1) for e in EMOTIONS}
    results = [FaceResult((10 + 20 * i, 5, 20, 20), "happy", scores, scores, i) for i in range(n_faces)]
    return Annotated(Frame(source, seq, t0, JPEG, 64, 48, stamps), results)


def publish_until(pub, make, predicate, timeout=5.0):
    """PUB/SUB drops messages until the subscription is up: publish until the web has seen one."""
    deadline = time.monotonic() + timeout
    seq = 0
    while time.monotonic() < deadline:
        seq += 1
        msg = make(seq)
        pub.send(msg if isinstance(msg, bytes) else encode(msg))
        if wait_until(predicate, 0.05):
            return seq
    raise AssertionError("the web never received the stand-in annotate stage's messages")


def test_latest_and_health_follow_the_stream(app, client, annotate):
    pub, hb = annotate
    hub = app.extensions["ferlive.hub"]
    publish_until(pub, lambda s: annotated("cam0", s, 2), lambda: hub.latest()[0] is not None)
    for s in range(100, 110):
        pub.send(encode(annotated("cam0", s, 2)))
        time.sleep(0.02)
    assert wait_until(lambda: hub.latest()[0].frame.seq == 109, 2)
    d = client.get("/api/latest").get_json()
    assert d["source_id"] == "cam0" and d["seq"] == 109 and len(d["faces"]) == 2
    face = d["faces"][0]
    assert face["box"] == [10, 5, 20, 20] and face["emotion"] == "happy"
    assert list(face["scores"]) == list(EMOTIONS)

    hb.send(encode(Heartbeat("detect", "h:1", time.time(), 0.5, {"frames_in": 3})))
    assert wait_until(lambda: client.get("/api/health").get_json()["stages"]["detect"]["alive"], 3)
    h = client.get("/api/health").get_json()
    assert not h["stages"]["capture"]["alive"] and not h["ok"]
    assert h["main_source"] == "cam0"
    assert h["sources"]["cam0"]["fps"] > 10
    for key in ("detect", "classify", "annotate", "capture->detect", "total"):
        assert h["latency_ms"][key]["p50"] <= h["latency_ms"][key]["p95"]
    assert h["latency_ms"]["detect"]["p50"] == pytest.approx(8.0, abs=0.01)
    # a stage whose heartbeats stop is reported gone after 3 intervals
    assert wait_until(lambda: not client.get("/api/health").get_json()["stages"]["detect"]["alive"], 4)


def test_mjpeg_stream_sends_the_newest_frames(app, client, annotate):
    pub, _ = annotate
    hub = app.extensions["ferlive.hub"]
    publish_until(pub, lambda s: annotated("cam0", s), lambda: hub.latest()[0] is not None)

    def feed():
        for s in range(1000, 1100):
            pub.send(encode(annotated("cam0", s)))
            time.sleep(0.01)
    t = threading.Thread(target=feed)
    t.start()
    r = client.get("/video_feed?frames=3")
    data = r.data  # the generator runs while frames arrive
    t.join()
    assert r.status_code == 200
    assert r.mimetype == "multipart/x-mixed-replace"
    parts = data.split(b"--frame\r\n")[1:]
    assert len(parts) == 3
    for part in parts:
        head, body = part.split(b"\r\n\r\n", 1)
        assert b"Content-Type: image/jpeg" in head
        assert body.startswith(b"\xff\xd8") and body.rstrip(b"\r\n").endswith(b"\xff\xd9")


def test_mjpeg_shows_a_placeholder_before_the_first_frame(client):
    r = client.get("/video_feed?frames=1")
    assert r.status_code == 200 and r.data.count(b"Content-Type: image/jpeg") == 1


def test_slow_viewer_skips_frames_and_never_queues(app, annotate):
    pub, _ = annotate
    hub = app.extensions["ferlive.hub"]
    publish_until(pub, lambda s: annotated("cam0", s), lambda: hub.latest()[0] is not None)
    _, first = hub.next_frame(None, 0, 1.0)
    for s in range(500, 520):
        pub.send(encode(annotated("cam0", s)))
    assert wait_until(lambda: hub.latest()[0].frame.seq == 519, 2)
    msg, count = hub.next_frame(None, first, 1.0)  # a viewer that was busy gets the newest, not the next
    assert msg.frame.seq == 519 and count > first + 1


def test_browser_sources_go_to_their_own_route_only(app, client, annotate):
    pub, _ = annotate
    hub: PipelineHub = app.extensions["ferlive.hub"]
    got: dict[str, list[int]] = {"browser-a": [], "browser-b": []}
    hub.register("browser-a", lambda m: got["browser-a"].append(m.frame.seq))
    hub.register("browser-b", lambda m: got["browser-b"].append(m.frame.seq))
    publish_until(pub, lambda s: annotated("browser-a", s), lambda: bool(got["browser-a"]))
    for s in range(1, 6):
        pub.send(encode(annotated("browser-b", 1000 + s)))
        pub.send(encode(annotated("browser-a", 2000 + s)))
        time.sleep(0.01)
    assert wait_until(lambda: len(got["browser-b"]) == 5 and got["browser-a"][-1] == 2005, 2)
    assert all(s >= 1000 for s in got["browser-b"]) and all(s < 1000 or s > 2000 for s in got["browser-a"])
    # never shown to anyone else
    assert hub.latest()[0] is None
    assert client.get("/api/latest?source=browser-a").status_code == 404
    assert client.get("/video_feed?source=browser-a").status_code == 404
    assert "browser-a" not in client.get("/api/health").get_json()["sources"]
    hub.unregister("browser-a")
    pub.send(encode(annotated("browser-a", 3000)))
    time.sleep(0.2)
    assert 3000 not in got["browser-a"]


def test_bad_messages_are_counted_not_fatal(app, annotate):
    pub, _ = annotate
    hub = app.extensions["ferlive.hub"]
    publish_until(pub, lambda s: b"not msgpack at all" if s % 2 else encode(annotated("cam0", s)),
                  lambda: hub.bad_messages >= 1 and hub.latest()[0] is not None)
    assert hub.bad_messages >= 1
    before = hub.latest()[0]
    # still serving after bad input: a later good frame replaces the latest one
    publish_until(pub, lambda s: encode(annotated("cam0", 10_000 + s)), lambda: hub.latest()[0] is not before)


def test_health_adds_up_the_counters_of_every_worker(app, client, annotate):
    """honcho -c classify=4: /api/health shows the four workers' totals, and each worker's own."""
    _, hb = annotate

    def four() -> bool:  # resent until seen: a just-connected PUB may drop its first messages
        for k in range(4):
            hb.send(encode(Heartbeat("classify", f"h:{k}", time.time(), 5.0, {"frames_out": 10 * (k + 1), "faces": k})))
        time.sleep(0.05)
        return client.get("/api/health").get_json()["stages"]["classify"]["instances"] == 4
    assert wait_until(four, 5)
    st = client.get("/api/health").get_json()["stages"]["classify"]
    assert st["counters"] == {"frames_out": 100, "faces": 6}
    assert st["per_instance"]["h:2"] == {"frames_out": 30, "faces": 2}


# ------------------------------------------------------------------------------- several sources
def tile_ids(html: str) -> list[str]:
    """The sources of the grid's tiles (not the empty one in the <template> new tiles are made from)."""
    import re
    grid = html.split('id="grid"', 1)[1].split("<template", 1)[0]
    return re.findall(r'<article class="panel tile" data-source="([^"]*)"', grid)


def test_sources_are_listed_and_selected_one_by_one(app, client, annotate):
    pub, _ = annotate
    hub = app.extensions["ferlive.hub"]
    publish_until(pub, lambda s: annotated("cam-a", s, 2), lambda: hub.latest("cam-a")[0] is not None)
    for s in range(1, 8):  # a few frames each, so both have a rate
        pub.send(encode(annotated("cam-a", 100 + s, 2)))
        pub.send(encode(annotated("cam-b", 200 + s, 1)))
        pub.send(encode(annotated("browser-x", s, 1)))  # a browser's camera: never listed, never shown
        time.sleep(0.03)
    assert wait_until(lambda: hub.latest("cam-b")[0] is not None and hub.latest("cam-b")[0].frame.seq == 207, 3)

    d = client.get("/api/sources").get_json()
    by_id = {s["id"]: s for s in d["sources"]}
    assert list(by_id) == ["cam-a", "cam-b"] and d["main_source"] == "cam-b"
    assert by_id["cam-a"]["faces"] == 2 and by_id["cam-b"]["faces"] == 1
    for s in by_id.values():
        assert s["status"] == "ok" and s["fps"] > 5 and 0 <= s["age_s"] < 2 and s["frames"] >= 7

    a = client.get("/api/latest?source=cam-a").get_json()
    assert a["source_id"] == "cam-a" and a["seq"] == 107 and len(a["faces"]) == 2
    b = client.get("/api/latest?source=cam-b").get_json()
    assert b["source_id"] == "cam-b" and b["seq"] == 207 and len(b["faces"]) == 1
    assert client.get("/api/latest").get_json()["source_id"] == "cam-b"  # no argument: the main source, as before

    r = client.get("/api/latest?source=cam-z")
    assert r.status_code == 404 and "unknown source 'cam-z'" in r.get_json()["error"]
    huge = "x" * 5000
    for path in ("/api/latest?source=", "/video_feed?source="):
        r = client.get(path + huge)
        assert r.status_code == 400 and huge[:200] not in r.get_data(as_text=True)
    r = client.get("/api/latest?source=" + "y" * 120)  # a valid length, unknown: named, cut short
    assert r.status_code == 404 and "y" * 60 not in r.get_json()["error"]

    # the page: a tile per source, streaming that source; ?source= shows one
    html = client.get("/").get_data(as_text=True)
    assert tile_ids(html) == ["cam-a", "cam-b"]
    assert 'src="/video_feed?source=cam-a"' in html and 'src="/video_feed?source=cam-b"' in html
    assert "browser-x" not in html
    assert tile_ids(client.get("/?source=cam-b").get_data(as_text=True)) == ["cam-b"]
    assert client.get("/?source=browser-x").status_code == 404
    waiting = client.get("/?source=%3Cb%3Enew").get_data(as_text=True)  # not there yet: a waiting tile, escaped
    assert tile_ids(waiting) == ["&lt;b&gt;new"] and "<b>new" not in waiting


def test_capture_reports_each_source_health(app, client, annotate):
    from shared.messages import SourceStatus
    pub, hb = annotate
    hub = app.extensions["ferlive.hub"]
    publish_until(pub, lambda s: annotated("hall", s), lambda: hub.latest("hall")[0] is not None)
    beat = Heartbeat("capture", "h:9", time.time(), 0.5, {"frames_out": 10}, "degraded", "1 of 3 sources not ok",
                     sources={"hall": SourceStatus("ok", "demo demo", {"frames_out": 10}),
                              "door": SourceStatus("missing", "video file door.mp4 not found", {}),
                              "browser-1": SourceStatus("ok", "", {})})

    def seen() -> bool:
        hb.send(encode(beat))
        return "door" in {s["id"] for s in client.get("/api/sources").get_json()["sources"]}
    assert wait_until(seen, 5, interval=0.1)
    by_id = {s["id"]: s for s in client.get("/api/sources").get_json()["sources"]}
    assert set(by_id) == {"hall", "door"}  # a browser id from the bus is never listed
    assert by_id["door"]["status"] == "missing" and "door.mp4 not found" in by_id["door"]["detail"]
    assert by_id["door"]["age_s"] is None and by_id["door"]["frames"] == 0
    assert by_id["hall"]["status"] == "ok" and by_id["hall"]["capture"] == {"frames_out": 10}
    assert client.get("/api/latest?source=door").get_json()["seq"] is None  # known, no frame yet: 200
    html = client.get("/").get_data(as_text=True)
    assert tile_ids(html) == ["door", "hall"] and "video file door.mp4 not found" in html
    # capture silent for 3 intervals: its sources are no longer reported
    assert wait_until(lambda: "door" not in {s["id"] for s in client.get("/api/sources").get_json()["sources"]}, 4)


def test_a_silent_source_stalls_then_expires(app, client, annotate, monkeypatch):
    from services.web import hub as hub_module
    monkeypatch.setattr(hub_module, "STALLED_AFTER_S", 0.3)
    monkeypatch.setattr(hub_module, "SOURCE_TTL_S", 1.5)
    pub, _ = annotate
    hub = app.extensions["ferlive.hub"]
    publish_until(pub, lambda s: annotated("cam-a", s), lambda: hub.latest("cam-a")[0] is not None)
    assert wait_until(lambda: client.get("/api/sources").get_json()["sources"][0]["status"] == "stalled", 3)
    assert wait_until(lambda: client.get("/api/sources").get_json()["sources"] == [], 5)
    assert client.get("/api/latest?source=cam-a").status_code == 404
    assert tile_ids(client.get("/").get_data(as_text=True)) == []
