"""/ws/frames against the real pipeline processes (detect, classify, annotate) with real FER2013 faces."""
from __future__ import annotations

import json
import struct
import threading
import time

import pytest
from simple_websocket import Client

from services.web.testing import (Pipeline, WebServer, detectable_faces, encode_jpeg, pipeline_config,
                                  place_faces, wait_until)
from shared.labels import EMOTIONS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def faces(sample_data, detector):
    return detectable_faces(sample_data.faces, detector, count=4,
                            positions=((40, 120), (400, 160), (200, 100), (235, 155)))


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory, detector):
    cfg = pipeline_config()
    logs = tmp_path_factory.mktemp("ws-pipeline")
    pipe = Pipeline(cfg, tiny_model_dir, log_dir=logs)
    web = WebServer({"FERLIVE": cfg, "MODEL_DIR": str(tiny_model_dir)})
    # wait until detect, classify and annotate are up (heartbeats reach the web)
    hub = web.app.extensions["ferlive.hub"]
    try:
        ok = wait_until(lambda: all(hub.health()["stages"][s]["alive"] for s in ("detect", "classify", "annotate")), 30)
        assert ok, f"pipeline did not start; logs in {logs}: " + str(hub.health()["stages"])
        yield web
    finally:
        web.stop()
        pipe.stop()


def ws_url(server) -> str:
    return server.url.replace("http://", "ws://") + "/ws/frames"


def frame_msg(seq: int, jpeg: bytes) -> bytes:
    return struct.pack(">I", seq) + jpeg


class Conn:
    """A test client: JSON in, helpers to wait for a message type."""

    def __init__(self, server):
        self.ws = Client.connect(ws_url(server))
        # simple-websocket's client handshake parses only the 101 response: a "ready" that arrived in the same
        # read stays in wsproto's buffer until more bytes come (seen under load). A ping makes the server send
        # again, which flushes it; "ready" is still first, the pong second.
        self.ws.send(json.dumps({"type": "ping"}))
        self.ready = self.next()
        assert self.ready["type"] == "ready" and self.ready["source_id"].startswith("browser-")
        assert self.next()["type"] == "pong"

    def next(self, timeout: float = 10.0) -> dict:
        data = self.ws.receive(timeout=timeout)
        assert data is not None, "no message from the server"
        return json.loads(data)

    def answer(self, seq: int, timeout: float = 15.0) -> dict:
        """The result/timeout/busy/error for `seq` (skipping stale answers to earlier frames)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = self.ws.receive(timeout=max(0.1, deadline - time.monotonic()))
            if data is None:
                continue
            msg = json.loads(data)
            if msg.get("seq") == seq:
                return msg
        raise AssertionError(f"no answer for frame {seq}")

    def send_until_result(self, seq0: int, jpeg: bytes, tries: int = 20) -> dict:
        """Right after connecting the pipeline's SUB may miss frames: retry until one is answered."""
        for seq in range(seq0, seq0 + tries):
            self.ws.send(frame_msg(seq, jpeg))
            msg = self.answer(seq)
            if msg["type"] == "result":
                return msg
        raise AssertionError("the pipeline never answered")

    def close(self):
        self.ws.close()


def assert_boxes(faces_json, boxes_xywh):
    assert len(faces_json) == len(boxes_xywh)
    got = sorted(faces_json, key=lambda f: f["box"][0])
    for face, (x, y, w, h) in zip(got, sorted(boxes_xywh.tolist())):
        bx, by, bw, bh = face["box"]
        assert abs(bx + bw / 2 - (x + w / 2)) < 0.35 * w and abs(by + bh / 2 - (y + h / 2)) < 0.35 * h
        assert list(face["scores"]) == list(EMOTIONS) and face["emotion"] in EMOTIONS


def test_round_trip_with_real_faces(server, faces):
    frame, boxes = place_faces(faces[:2], [(40, 120), (400, 160)])
    c = Conn(server)
    try:
        msg = c.send_until_result(1, encode_jpeg(frame))
        assert (msg["width"], msg["height"]) == (640, 480)
        assert_boxes(msg["faces"], boxes)
        assert msg["timing_ms"] > 0
        # steady state: every frame answered, in order
        for seq in range(100, 110):
            c.ws.send(frame_msg(seq, encode_jpeg(frame)))
            msg = c.answer(seq)
            assert msg["type"] == "result", msg
            assert_boxes(msg["faces"], boxes)
    finally:
        c.close()


def test_downscaled_frame_boxes_come_back_in_the_clients_pixels(server, faces):
    import cv2
    frame, boxes = place_faces(faces[:1], [(200, 100)])
    big = cv2.resize(frame, (1920, 1440))  # over MAX_IMAGE_SIDE (1280): the web downscales it
    c = Conn(server)
    try:
        msg = c.send_until_result(1, encode_jpeg(big))
        assert (msg["width"], msg["height"]) == (1920, 1440)
        assert_boxes(msg["faces"], boxes * 3)
    finally:
        c.close()


def test_malformed_messages_get_an_error_and_the_socket_stays_open(server, faces):
    frame, boxes = place_faces(faces[:1], [(200, 100)])
    jpeg = encode_jpeg(frame)
    import cv2
    png = cv2.imencode(".png", frame)[1].tobytes()
    c = Conn(server)
    try:
        bad = [("not json", "JSON"), (json.dumps({"type": "subscribe", "source": "cam0"}), "unknown message"),
               (b"\x00\x01", "4-byte"), (frame_msg(7, b"hello world"), "not an image"),
               (frame_msg(8, png), "must be JPEG"), (frame_msg(9, jpeg[:len(jpeg) // 2]), "truncated JPEG"),
               (frame_msg(10, b"\xff\xd8\xff\xe0" + b"\0" * 100 + b"\xff\xd9"), "corrupt JPEG")]
        for data, needle in bad:
            c.ws.send(data)
            msg = c.next()
            assert msg["type"] == "error" and needle in msg["error"], (data[:20], msg)
        c.ws.send(json.dumps({"type": "ping"}))
        assert c.next()["type"] == "pong"
        msg = c.send_until_result(20, jpeg)
        assert_boxes(msg["faces"], boxes)
    finally:
        c.close()


class FakeWs:
    """Stands in for a simple-websocket connection: scripted incoming messages, recorded outgoing."""

    def __init__(self, incoming):
        self.incoming, self.sent, self.connected = list(incoming), [], True

    def receive(self, timeout=None):
        if self.incoming:
            item = self.incoming.pop(0)
            if isinstance(item, float):
                time.sleep(item)
                return None
            return item
        self.connected = False
        return None

    def send(self, data):
        self.sent.append(json.loads(data))


class SilentHub:
    """Accepts frames and never answers (as the pipeline does when it drops one under load)."""

    def __init__(self):
        self.routes, self.published = {}, []

    def register(self, source, cb):
        self.routes[source] = cb

    def unregister(self, source):
        self.routes.pop(source, None)

    def publish_frame(self, *args):
        self.published.append(args)
        return True


def test_one_frame_in_flight_per_client_and_lost_frames_time_out(faces):
    from services.web.ws import FrameSession
    frame, _ = place_faces(faces[:1], [(200, 100)])
    jpeg = encode_jpeg(frame)
    ws, hub = FakeWs([frame_msg(1, jpeg), frame_msg(2, jpeg), 0.5, frame_msg(3, jpeg), 0.1]), SilentHub()
    session = FrameSession(ws, hub, max_frame_bytes=1 << 20, max_side=1280, result_timeout=0.3)
    session.run()
    kinds = [(m["type"], m.get("seq")) for m in ws.sent]
    assert kinds[0][0] == "ready"
    assert ("busy", 2) in kinds and ("timeout", 1) in kinds   # 2 came while 1 was in flight; 1 was lost
    assert kinds.index(("timeout", 1)) < len(kinds)
    assert [p[1] for p in hub.published] == [1, 2]            # frames 1 and 3 went to the pipeline
    assert hub.routes == {}                                   # closed: the route is gone


def test_a_client_vanishing_mid_frame_frees_its_route(server, faces):
    frame, _ = place_faces(faces[:1], [(200, 100)])
    hub = server.app.extensions["ferlive.hub"]
    before = hub.clients
    c = Conn(server)
    assert wait_until(lambda: hub.clients == before + 1, 2)
    c.ws.send(frame_msg(1, encode_jpeg(frame)))
    c.ws.sock.close()  # gone without a close handshake, a frame in flight
    assert wait_until(lambda: hub.clients == before, 10)
    c2 = Conn(server)   # the server still serves others
    try:
        c2.send_until_result(1, encode_jpeg(frame))
    finally:
        c2.close()


def test_eight_clients_for_ten_seconds_each_get_only_their_own_results_in_order(server, faces):
    n_clients, duration = 8, 10.0
    # each client has its own face at its own place, so a result routed to the wrong client shows
    layouts = []
    for i in range(n_clients):
        pos = (20 + 60 * i, 40 + 30 * (i % 4))
        frame, boxes = place_faces([faces[i % len(faces)]], [pos], side=150)
        layouts.append((encode_jpeg(frame), boxes))
    stats = [dict(results=0, busy=0, timeouts=0, errors=[], seqs=[]) for _ in range(n_clients)]
    conns = [Conn(server) for _ in range(n_clients)]
    sources = {c.ready["source_id"] for c in conns}
    assert len(sources) == n_clients

    def run(i):
        c, (jpeg, boxes), st = conns[i], layouts[i], stats[i]
        seq, end = 0, time.monotonic() + duration
        while time.monotonic() < end:
            seq += 1
            c.ws.send(frame_msg(seq, jpeg))
            msg = c.answer(seq, timeout=15)  # the server answers within WS_RESULT_TIMEOUT; slack for a loaded CI
            if msg["type"] == "result":
                st["results"] += 1
                st["seqs"].append(seq)
                try:
                    assert_boxes(msg["faces"], boxes)
                except AssertionError as exc:
                    st["errors"].append(f"client {i} got a foreign result: {msg['faces']} ({exc})")
            elif msg["type"] in ("timeout", "busy"):
                st[msg["type"] if msg["type"] == "busy" else "timeouts"] += 1
            else:
                st["errors"].append(msg)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n_clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 30)
    elapsed = time.monotonic() - t0
    for c in conns:
        c.close()
    for i, st in enumerate(stats):
        assert not st["errors"], st["errors"][:3]
        assert st["busy"] == 0
        assert st["seqs"] == sorted(st["seqs"]) and len(set(st["seqs"])) == len(st["seqs"])
        assert st["results"] >= 5, f"client {i} got only {st['results']} results in {elapsed:.1f} s: {st}"
    total = sum(st["results"] for st in stats)
    print(f"8 clients, {elapsed:.1f} s: {total} results, {total / elapsed / n_clients:.1f} frames/s per client,"
          f" timeouts {sum(st['timeouts'] for st in stats)}")
