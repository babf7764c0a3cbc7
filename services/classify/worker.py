"""Classify's logic: Faces -> Predictions with one model call per frame (all its faces at once)."""
from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Callable, Optional, Protocol

import numpy as np
import zmq

from shared import bus
from shared.config import Config
from shared.guard import Guard
from shared.labels import NUM_CLASSES
from shared.messages import Faces, MessageError, Predictions, Skip, decode, encode

log = logging.getLogger(__name__)


class Model(Protocol):
    def predict_proba(self, faces: np.ndarray) -> np.ndarray: ...


def classify(model: Model, faces: Faces) -> Predictions:
    """Probabilities for every face of a frame in one call; a frame without faces costs nothing."""
    if len(faces) == 0:
        probs = np.zeros((0, NUM_CLASSES), np.float32)
    else:
        probs = np.asarray(model.predict_proba(faces.crops), dtype=np.float32)
    return Predictions(faces=faces, probs=probs)


def handle(model: Model, data: bytes, counters: Counter, max_lag_s: float = 0.0,
           now: Optional[float] = None, guard: Optional[Guard] = None) -> Optional[Predictions]:
    """Faces bytes -> Predictions; None (counted) for a bad message or, with ``max_lag_s``, a frame
    captured so long ago that classifying it would only add to the backlog. A model output that is not
    a probability (NaN, out of [0, 1]) is counted ``bad_outputs`` and never sent."""
    guard = guard or Guard(counters, log)
    try:
        faces = decode(data, expect="faces")
    except MessageError as exc:
        guard.bad("bad_messages", exc)
        return None
    now = time.time() if now is None else now
    if max_lag_s > 0 and now - faces.frame.t_capture > max_lag_s:
        counters["stale"] += 1
        return None
    return classify_checked(model, faces, counters, guard)


def stale_skip(data: bytes) -> Optional[Skip]:
    """The Skip that stands for an unclassified faces message (None if it is not a valid one)."""
    try:
        faces = decode(data, expect="faces")
    except MessageError:
        return None
    return Skip(run=faces.run, job=faces.job, reason="stale")


def classify_checked(model: Model, faces: Faces, counters: Counter, guard: Guard) -> Optional[Predictions]:
    """classify(), with a model output that is not a probability counted (``bad_outputs``) and dropped."""
    try:
        preds = classify(model, faces)
    except MessageError as exc:
        guard.bad("bad_outputs", exc)
        return None
    counters["faces"] += len(faces)
    return preds


def run(cfg: Config, model: Model, ctx: Optional[zmq.Context] = None,
        should_stop: Callable[[], bool] = lambda: False) -> None:
    """Ask detect's dispatcher for a faces message when free -> classify -> PUSH predictions to annotate,
    until Shutdown."""
    ctx = ctx or zmq.Context.instance()
    link, push = bus.faces_worker(cfg, ctx), bus.predictions_push(cfg, ctx)
    hb = bus.Heartbeater(bus.heartbeat_pub(cfg, ctx), "classify", cfg.heartbeat_interval,
                           idle_after=3 * cfg.heartbeat_interval)
    guard = Guard(hb.counters, log, cfg.log_every_s)
    hb.tick(force=True)
    try:
        while not should_stop():
            hb.tick()
            data = link.get(0.1)
            if data is None:
                continue
            queued = [data] + link.drain()  # more than one only if a credit was repeated
            t_recv = time.time()
            hb.counters["frames_in"] += len(queued)
            hb.note_input()
            data = queued.pop()  # the newest; an older one would only be late
            with guard.handling("a faces message"):
                for old in queued:  # dropped unclassified: tell the sink not to wait for them
                    hb.counters["stale"] += 1
                    skip = stale_skip(old)
                    if skip is not None:
                        bus.send_within(push, encode(skip), 50)
                stale_before = hb.counters["stale"]
                preds = handle(model, data, hb.counters, cfg.max_lag_ms / 1e3, t_recv, guard)
                if preds is None:
                    skip = stale_skip(data) if hb.counters["stale"] > stale_before else None
                    if skip is not None:
                        bus.send_within(push, encode(skip), 50)
                    continue
                del data, queued
                preds.frame.stamps.append(("classify", t_recv, time.time()))
                if bus.send_within(push, encode(preds), 200):
                    hb.counters["frames_out"] += 1
                else:
                    hb.counters["dropped_no_sink"] += 1
    finally:
        hb.tick(force=True)
        link.close()
        for s in (push, hb.sock):
            s.close(0)
