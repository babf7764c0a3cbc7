"""Annotate's loop: PULL predictions from the workers, reorder, track, draw, PUB annotated frames."""
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
from shared.messages import BROWSER_PREFIX, Annotated, Frame, MessageError, Predictions, decode, encode
from shared.draw import annotate
from services.annotate.sink import Reorderer, face_results
from shared.tracking import Tracker

log = logging.getLogger(__name__)

SOURCE_IDLE_S = 30.0
"""A source with no frame for this long loses its tracks (its tracker is rebuilt if it comes back)."""


class AnnotateStage:
    """Predictions in (any order) -> Annotated out (frame order), one tracker per source."""

    def __init__(self, cfg: Config, counters: Optional[Counter] = None) -> None:
        self.cfg = cfg
        self.counters = counters if counters is not None else Counter()
        self.reorder = Reorderer(cfg.reorder_window, cfg.reorder_timeout_ms / 1e3, self.counters)
        self.trackers: dict[str, Tracker] = {}
        self._last_seen: dict[str, float] = {}

    def push(self, data: bytes, now: float) -> list[Annotated]:
        try:
            preds = decode(data, expect="predictions")
        except MessageError as exc:
            self.counters["bad_messages"] += 1
            log.warning("dropped a message: %s", exc)
            return []
        return [self.render(p, t) for t, p in self.reorder.push(preds, now)]

    def poll(self, now: float) -> list[Annotated]:
        self.forget_idle_sources(now)
        return [self.render(p, t) for t, p in self.reorder.poll(now)]

    def forget_idle_sources(self, now: float) -> None:
        """Drop the tracks of sources silent for SOURCE_IDLE_S (browser cameras come and go)."""
        for source in [s for s, t in self._last_seen.items() if now - t > SOURCE_IDLE_S]:
            self.trackers.pop(source, None)
            del self._last_seen[source]

    def render(self, preds: Predictions, t_recv: float) -> Annotated:
        frame = preds.frame
        self._last_seen[frame.source_id] = t_recv
        tracker = self.trackers.setdefault(frame.source_id, Tracker(
            self.cfg.ema_alpha, self.cfg.iou_threshold, self.cfg.track_max_age))
        results = face_results(preds, tracker)
        jpeg = frame.jpeg
        if self.cfg.draw and not frame.source_id.startswith(BROWSER_PREFIX):  # browsers draw their own
            img = cv2.imdecode(np.frombuffer(frame.jpeg, np.uint8), cv2.IMREAD_COLOR)
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
    ctx = ctx or zmq.Context.instance()
    sink, pub = bus.predictions_sink(cfg, ctx), bus.annotated_pub(cfg, ctx)
    hb = bus.Heartbeater(bus.heartbeat_pub(cfg, ctx), "annotate", cfg.heartbeat_interval,
                           idle_after=3 * cfg.heartbeat_interval)
    stage = AnnotateStage(cfg, hb.counters)
    poll_ms = max(1, int(cfg.reorder_timeout_ms / 4))
    try:
        while not should_stop():
            hb.tick()
            data = bus.recv_nowait(sink, poll_ms)
            now = time.time()
            if data is not None:
                hb.counters["frames_in"] += 1
                hb.note_input()
                out = stage.push(data, now)
            else:
                out = stage.poll(now)
            for ann in out:
                if not bus.send_nowait(pub, encode(ann)):
                    hb.counters["dropped"] += 1
    finally:
        hb.tick(force=True)
        for s in (sink, pub, hb.sock):
            s.close(0)
