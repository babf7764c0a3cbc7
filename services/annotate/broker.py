"""Annotate's faces broker: between the detect pool and the classify pool (the zguide's load-balancing
broker), in the one process both pools already know.

Detect workers PUSH what they found (``detections_endpoint``); the broker keeps the newest of each source
and a ``bus.Dispatcher`` (``faces_endpoint``) hands the one waiting longest to whichever classify worker asks.
A result is numbered (``job``, with this process's ``run``) at the moment a worker takes it, so the
``Reorderer`` waits only for frames really sent, whichever detect worker found them; a result older than the
latency budget is dropped then (counted ``stale``), never classified late; and a result of a source captured
before one already handed on (two detect workers finishing out of order) is dropped (``out_of_order``), so
each source stays in capture order.
"""
from __future__ import annotations

import logging
import os
import time
from collections import Counter, OrderedDict
from typing import Optional

import zmq

from shared import bus
from shared.config import Config
from shared.guard import Guard
from shared.messages import Faces, MessageError, decode, encode

log = logging.getLogger(__name__)

MAX_SOURCES = 64
"""At most this many sources keep a 'last handed on' time; beyond it the one seen longest ago is forgotten."""


class FacesBroker:
    def __init__(self, cfg: Config, ctx: zmq.Context, counters: Counter, guard: Guard) -> None:
        self.cfg, self.counters, self.guard = cfg, counters, guard
        self.run = (os.getpid() << 20 | int(time.time() * 1000) & 0xFFFFF) & 0x7FFFFFFFFFFFFFFF
        self.job = 0
        self._last: OrderedDict[str, float] = OrderedDict()
        for k in ("stale", "out_of_order", "detections_in"):
            counters[k] += 0  # every key exists before the dispatcher's thread counts
        self.dispatcher = bus.faces_dispatcher(cfg, ctx, self.release, counters)

    def offer(self, data: bytes) -> None:
        """One detect result (untrusted bytes) in: checked, then waiting for a free classify worker."""
        try:
            faces = decode(data, expect="faces")
        except MessageError as exc:
            self.guard.bad("bad_messages", exc)
            return
        self.counters["detections_in"] += 1
        frame = faces.frame
        last = self._last.pop(frame.source_id, None)
        if last is not None and frame.t_capture < last:
            self._last[frame.source_id] = last
            self.counters["out_of_order"] += 1
            return
        self._last[frame.source_id] = frame.t_capture
        if len(self._last) > MAX_SOURCES:
            self._last.popitem(last=False)
        self.dispatcher.offer(frame.source_id, faces)

    def release(self, faces: Faces, now: Optional[float] = None) -> Optional[bytes]:
        """(The dispatcher's thread) the bytes a classify worker is sent, numbered; None when too old."""
        now = time.time() if now is None else now
        max_lag_s = self.cfg.max_lag_ms / 1e3
        if max_lag_s > 0 and now - faces.frame.t_capture > max_lag_s:
            self.counters["stale"] += 1
            return None
        faces.job, faces.run = self.job, self.run
        self.job += 1
        return encode(faces)

    def close(self) -> None:
        self.dispatcher.close()
