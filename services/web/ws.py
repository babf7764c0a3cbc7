"""``/ws/frames``: a browser's webcam as its own pipeline source, answered on the same socket only.

Protocol (one socket per camera session):

* client -> server, binary: 4-byte big-endian unsigned sequence number, then one JPEG.
* client -> server, text: ``{"type": "ping"}`` (answered ``{"type": "pong"}``); nothing else.
* server -> client, text JSON:
  ``{"type": "ready", "source_id", "max_frame_bytes"}`` once, on connect;
  ``{"type": "result", "seq", "width", "height", "faces": [{box, emotion, scores, track_id}], "timing_ms"}``;
  ``{"type": "busy", "seq"}`` a frame came while one was in flight (dropped: one in flight per client);
  ``{"type": "busy", "seq", "retry_after_s"}`` the server decodes as many images as it may at once;
  ``{"type": "timeout", "seq"}`` the pipeline did not answer in time (it drops frames under load);
  ``{"type": "error", "seq"?, "error"}`` a malformed message; the socket stays open.

Each connection gets a source id ``browser-<random>``; the hub routes that source's annotated frames to
this connection only. A vanished client (closed, reset, ping timeout) unregisters its route and drops its
in-flight frame. Frames are never stored.
"""
from __future__ import annotations

import json
import logging
import secrets
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional

import cv2
from flask import Blueprint, current_app
from flask_sock import ConnectionClosed, Sock

from services.web.guards import DecodeSlots, Saturated
from services.web.hub import PipelineHub, safe_score
from shared.images import ImageError, ImageLimits, decode_image
from shared.messages import BROWSER_PREFIX, Annotated

log = logging.getLogger(__name__)

bp = Blueprint("ws", __name__)
sock = Sock()
HEADER = struct.Struct(">I")


@dataclass
class InFlight:
    client_seq: int
    pipeline_seq: int
    t_recv: float
    scale: float          # client-frame pixels per published-frame pixel
    width: int            # the client's frame size
    height: int


class FrameSession:
    """One WebSocket client: parses its frames, publishes them, and sends back its own results.

    Threads: the request thread runs ``receive_loop`` (blocking reads); a sender thread owns every write
    to the socket (so the hub thread never blocks on a slow client) and times out lost frames.
    """

    def __init__(self, ws: Any, hub: PipelineHub, *, max_frame_bytes: int, max_side: int,
                 result_timeout: float, limits: Optional[ImageLimits] = None,
                 slots: Optional[DecodeSlots] = None) -> None:
        self.ws, self.hub = ws, hub
        self.source_id = BROWSER_PREFIX + secrets.token_hex(6)
        self.max_frame_bytes, self.max_side, self.result_timeout = max_frame_bytes, max_side, result_timeout
        self.limits = limits or ImageLimits(max_side=max_side)
        self.slots = slots or DecodeSlots(1)
        self._cond = threading.Condition()
        self._outbox: deque[dict[str, Any]] = deque(maxlen=64)
        self._inflight: Optional[InFlight] = None
        self._pipeline_seq = 0
        self._closed = False
        self.counters = {"frames": 0, "results": 0, "busy": 0, "timeouts": 0, "errors": 0}
        self._sender = threading.Thread(target=self._send_loop, name=f"ws-send-{self.source_id}", daemon=True)

    # ------------------------------------------------------------------ lifecycle
    def run(self) -> None:
        self.hub.register(self.source_id, self._on_annotated)
        self._sender.start()
        self._post({"type": "ready", "source_id": self.source_id, "max_frame_bytes": self.max_frame_bytes})
        try:
            self.receive_loop()
        finally:
            self.close()

    def close(self) -> None:
        """Free everything this client holds (idempotent): route, in-flight frame, sender thread."""
        self.hub.unregister(self.source_id)
        with self._cond:
            self._closed = True
            self._inflight = None
            self._outbox.clear()
            self._cond.notify_all()
        if self._sender.is_alive() and threading.current_thread() is not self._sender:
            self._sender.join(timeout=2)
        log.info("ws %s closed: %s", self.source_id, self.counters)

    def _count(self, name: str) -> None:
        count = getattr(self.hub, "count", None)  # a hub's web counters (shown in /api/health)
        if count is not None:
            count(name)

    # ------------------------------------------------------------------ incoming
    def receive_loop(self) -> None:
        while not self._closed:
            try:
                data = self.ws.receive(timeout=5)
            except ConnectionClosed:
                return
            if data is None:
                if not self.ws.connected:
                    return
                continue
            if isinstance(data, str):
                self._on_text(data)
            else:
                self._on_frame(bytes(data))

    def _on_text(self, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            return self._error(None, "text messages must be JSON; send frames as binary "
                                     "(4-byte big-endian seq + JPEG)")
        if isinstance(msg, dict) and msg.get("type") == "ping":
            return self._post({"type": "pong", "t": time.time()})
        self._error(None, "unknown message: the only text message is {\"type\": \"ping\"}; "
                          "send frames as binary (4-byte big-endian seq + JPEG)")

    def _on_frame(self, data: bytes) -> None:
        t_recv = time.time()
        if len(data) <= HEADER.size:
            return self._error(None, f"binary message of {len(data)} bytes: expected a 4-byte big-endian "
                                     "sequence number followed by a JPEG")
        (seq,) = HEADER.unpack_from(data)
        jpeg = data[HEADER.size:]
        if len(jpeg) > self.max_frame_bytes:
            return self._error(seq, f"frame of {len(jpeg)} bytes: at most {self.max_frame_bytes}; "
                                    "send a smaller or more compressed JPEG")
        try:  # checked (header first: size cap, shortest side) before anything reaches the bus
            with self.slots.slot():
                image = decode_image(jpeg, self.limits, jpeg_only=True)
                frame_bgr = image.frame_bgr
                if image.scale != 1.0:  # downscaled: the pipeline gets the smaller JPEG
                    ok, buf = cv2.imencode(".jpg", frame_bgr, [cv2.IMWRITE_JPEG_QUALITY, 80])
                    jpeg = buf.tobytes()
        except ImageError as exc:
            self._count("ws_bad_frames")
            return self._error(seq, str(exc))
        except Saturated as exc:
            self._count("ws_saturated")
            return self._post({"type": "busy", "seq": seq, "retry_after_s": exc.retry_after_s})
        with self._cond:
            if self._inflight is not None:
                self.counters["busy"] += 1
                self._outbox.append({"type": "busy", "seq": seq})
                self._cond.notify_all()
                return
            self._pipeline_seq += 1
            self._inflight = InFlight(seq, self._pipeline_seq, t_recv, image.scale, *image.original_wh)
            self.counters["frames"] += 1
            pipeline_seq = self._pipeline_seq
            self._cond.notify_all()  # the sender starts this frame's timeout clock
        h, w = frame_bgr.shape[:2]
        if not self.hub.publish_frame(self.source_id, pipeline_seq, jpeg, w, h, t_recv):
            with self._cond:
                self._inflight = None
            self._error(seq, "the pipeline is not accepting frames right now; try again")

    # ------------------------------------------------------------------ results (hub thread)
    def _on_annotated(self, msg: Annotated) -> None:
        now = time.time()
        with self._cond:
            f = self._inflight
            if f is None or msg.frame.seq != f.pipeline_seq:
                return  # late answer to a frame already timed out: drop it
            self._inflight = None
            s = f.scale
            faces = [{"box": [int(round(v * s)) for v in r.box_xywh], "emotion": r.emotion,
                      "scores": {k: safe_score(v) for k, v in r.scores.items()},
                      "landmarks": ([[round(c * s, 1) for c in p] if p is not None else None for p in r.landmarks]
                                    if r.landmarks is not None else None),
                      "track_id": r.track_id}
                     for r in msg.results]
            self.counters["results"] += 1
            self._outbox.append({"type": "result", "seq": f.client_seq, "width": f.width, "height": f.height,
                                 "faces": faces, "timing_ms": round((now - f.t_recv) * 1e3, 2)})
            self._cond.notify_all()

    # ------------------------------------------------------------------ outgoing (sender thread)
    def _post(self, msg: dict[str, Any]) -> None:
        with self._cond:
            if not self._closed:
                self._outbox.append(msg)
                self._cond.notify_all()

    def _error(self, seq: Optional[int], message: str) -> None:
        self.counters["errors"] += 1
        self._post({"type": "error", "seq": seq, "error": message})

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._outbox:
                    f = self._inflight
                    if f is not None and time.time() - f.t_recv > self.result_timeout:
                        self._inflight = None
                        self.counters["timeouts"] += 1
                        self._outbox.append({"type": "timeout", "seq": f.client_seq})
                        break
                    self._cond.wait(0.1 if f is not None else 1.0)
                if self._closed:
                    return
                batch = list(self._outbox)
                self._outbox.clear()
            try:
                for msg in batch:
                    self.ws.send(json.dumps(msg, separators=(",", ":")))
            except (ConnectionClosed, OSError):
                with self._cond:
                    self._closed = True
                    self._inflight = None
                    self._cond.notify_all()
                return


@sock.route("/ws/frames", bp=bp)
def frames(ws: Any) -> None:
    hub = current_app.extensions["ferlive.hub"]
    if hub is None:
        ws.send(json.dumps({"type": "error", "seq": None, "error": "this web process has no pipeline link"}))
        return
    cfg = current_app.config
    FrameSession(ws, hub, max_frame_bytes=cfg["WS_MAX_FRAME_BYTES"], max_side=cfg["MAX_IMAGE_SIDE"],
                 result_timeout=cfg["WS_RESULT_TIMEOUT"], limits=current_app.extensions["ferlive.image_limits"],
                 slots=current_app.extensions["ferlive.decode_slots"]).run()
