"""Annotate's loop: hand detect's results to the classify workers (``broker.FacesBroker``), PULL their
predictions, reorder, track, draw, PUB annotated frames."""
from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Callable, Optional

import cv2
import numpy as np
import zmq

from shared import bus
from shared.config import Config
from shared.draw import annotate
from shared.guard import Guard
from shared.images import ImageError, ImageLimits, check_header, decode_image
from shared.messages import BROWSER_PREFIX, Annotated, Frame, MessageError, Predictions, Skip, decode, encode
from shared.tracking import Tracker
from services.annotate.broker import FacesBroker
from services.annotate.sink import Reorderer, face_results

log = logging.getLogger(__name__)

SOURCE_IDLE_S = 30.0
"""A source with no frame for this long loses its tracks (its tracker is rebuilt if it comes back)."""
MAX_SOURCES = 64
"""At most this many sources keep a tracker; beyond it the one silent longest is forgotten."""


class AnnotateStage:
    """Predictions in (any order) -> Annotated out (frame order), one tracker per source."""

    def __init__(self, cfg: Config, counters: Optional[Counter] = None, guard: Optional[Guard] = None) -> None:
        self.cfg = cfg
        self.counters = counters if counters is not None else Counter()
        self.guard = guard or Guard(self.counters, log, cfg.log_every_s)
        self.reorder = Reorderer(cfg.reorder_window, cfg.reorder_timeout_ms / 1e3, self.counters)
        self.trackers: dict[str, Tracker] = {}
        self.limits = ImageLimits(max_pixels=cfg.max_image_pixels, min_side=cfg.min_image_side,
                                  max_side=max(cfg.min_image_side, 16))
        self._last_seen: dict[str, float] = {}

    def push(self, data: bytes, now: float) -> list[Annotated]:
        try:
            msg = decode(data)
            if not isinstance(msg, (Predictions, Skip)):
                raise MessageError(f"expected a 'predictions' or 'skip' message, got {msg.kind!r}")
        except MessageError as exc:
            self.guard.bad("bad_messages", exc)
            return []
        if isinstance(msg, Skip):
            return self._render_all(self.reorder.skip(msg.run, msg.job, now))
        return self._render_all(self.reorder.push(msg, now))

    def poll(self, now: float) -> list[Annotated]:
        self.forget_idle_sources(now)
        return self._render_all(self.reorder.poll(now))

    def _render_all(self, ready: list[tuple[float, Predictions]]) -> list[Annotated]:
        """Render each released result; one that fails is counted and logged, the others still go."""
        out = []
        for t, p in ready:
            with self.guard.handling("a result"):
                out.append(self.render(p, t))
        return out

    def forget_idle_sources(self, now: float) -> None:
        """Drop the tracks of sources silent for SOURCE_IDLE_S (browser cameras come and go)."""
        for source in [s for s, t in self._last_seen.items() if now - t > SOURCE_IDLE_S]:
            self.trackers.pop(source, None)
            del self._last_seen[source]

    def render(self, preds: Predictions, t_recv: float) -> Annotated:
        frame = preds.frame
        self._last_seen[frame.source_id] = t_recv
        if len(self._last_seen) > MAX_SOURCES:  # source ids come off the bus: bound what they cost
            oldest = min(self._last_seen, key=self._last_seen.__getitem__)
            self.trackers.pop(oldest, None)
            del self._last_seen[oldest]
        tracker = self.trackers.setdefault(frame.source_id, Tracker(
            self.cfg.ema_alpha, self.cfg.iou_threshold, self.cfg.track_max_age))
        results = face_results(preds, tracker)
        jpeg = frame.jpeg
        drawn_here = self.cfg.draw and not frame.source_id.startswith(BROWSER_PREFIX)  # browsers draw their own
        if drawn_here and not results:  # nothing to draw: the JPEG goes on as it came, no decode and no encode
            try:  # ... but its header is checked as a decode would check it, and a bad one counted
                check_header(frame.jpeg, self.limits, expect_wh=(frame.width, frame.height), jpeg_only=True)
            except ImageError as exc:
                self.guard.bad("bad_frames", exc)
        elif drawn_here:
            try:  # the header is checked against the message and the pixel cap before decoding
                img = decode_image(frame.jpeg, self.limits, expect_wh=(frame.width, frame.height),
                                   jpeg_only=True).frame_bgr
            except ImageError as exc:
                self.guard.bad("bad_frames", exc)
                img = None
            if img is not None:
                ok, buf = cv2.imencode(".jpg", annotate(img, results),
                                       [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality])
                jpeg = buf.tobytes() if ok else jpeg
        out = Frame(source_id=frame.source_id, seq=frame.seq, t_capture=frame.t_capture, jpeg=jpeg,
                    width=frame.width, height=frame.height, stamps=list(frame.stamps))
        out.stamps.append(("annotate", t_recv, time.time()))
        self.counters["frames_out"] += 1
        self.counters["faces"] += len(results)
        return Annotated(frame=out, results=results)


def run(cfg: Config, ctx: Optional[zmq.Context] = None, should_stop: Callable[[], bool] = lambda: False) -> None:
    """Detect workers' results in -> the faces broker -> classify workers; their predictions in ->
    reorder, track, draw -> PUB annotated frames; until Shutdown."""
    ctx = ctx or zmq.Context.instance()
    sink, pub = bus.predictions_sink(cfg, ctx), bus.annotated_pub(cfg, ctx)
    detections = bus.detections_pull(cfg, ctx)
    hb = bus.Heartbeater(bus.heartbeat_pub(cfg, ctx), "annotate", cfg.heartbeat_interval,
                           idle_after=3 * cfg.heartbeat_interval)
    guard = Guard(hb.counters, log, cfg.log_every_s)
    stage = AnnotateStage(cfg, hb.counters, guard)
    broker = FacesBroker(cfg, ctx, hb.counters, guard)
    poller = zmq.Poller()
    poller.register(sink, zmq.POLLIN)
    poller.register(detections, zmq.POLLIN)
    poll_ms = max(1, int(cfg.reorder_timeout_ms / 4))
    try:
        while not should_stop():
            hb.tick()
            ready = dict(poller.poll(poll_ms))
            now = time.time()
            if detections in ready:
                with guard.handling("a detections message"):
                    for data in bus.recv_all(detections, 0):
                        broker.offer(data)
            out: list[Annotated] = []
            with guard.handling("a predictions message"):
                data = bus.recv_nowait(sink, 0) if sink in ready else None
                if data is not None:
                    hb.counters["frames_in"] += 1
                    hb.note_input()
                    out = stage.push(data, now)
                    del data
                else:
                    out = stage.poll(now)
            for ann in out:
                with guard.handling("an annotated frame"):
                    if not bus.send_nowait(pub, encode(ann)):
                        hb.counters["dropped"] += 1
    finally:
        hb.tick(force=True)
        broker.close()
        for s in (sink, detections, pub, hb.sock):
            s.close(0)
