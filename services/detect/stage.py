"""Detect's logic: Frame message -> Faces message (decode the JPEG once, find faces, crop 48x48 gray).

The detector is injected (``shared.analyzer.FaceAnalyzer`` in the service, the one analysis path the API and
CLI use too): anything with ``detect(frame_bgr, source_id) -> Detections`` (``boxes_xywh`` int32 (N,4),
``crops`` uint8 (N,48,48), ``landmarks`` float32 (N,5,2)).
"""
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
from shared.images import ImageError, ImageLimits, decode_image
from shared.messages import Faces, Frame, MessageError, decode, encode

log = logging.getLogger(__name__)


class Detector(Protocol):
    def detect(self, frame_bgr: np.ndarray, source_id: str = ""): ...


class BadFrame(ValueError):
    """A frame message that decodes but cannot be used (corrupt JPEG, size differs from its header)."""


def decode_frame(frame: Frame, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """The frame's JPEG -> BGR array, checked against the size the message claims and against
    ``limits`` (pixel cap, shortest side) from the JPEG header before anything is decoded."""
    try:
        return decode_image(frame.jpeg, limits, expect_wh=(frame.width, frame.height), jpeg_only=True).frame_bgr
    except ImageError as exc:
        raise BadFrame(f"frame {frame.source_id[:40]}#{frame.seq}: {exc}") from None


def image_limits(cfg: Config) -> ImageLimits:
    """The frame limits of the config: pixel cap and shortest side (frames are never downscaled here)."""
    return ImageLimits(max_pixels=cfg.max_image_pixels, min_side=cfg.min_image_side,
                       max_side=max(cfg.min_image_side, 16))


class DetectStage:
    """Turns frame bytes into Faces; counts bad input instead of failing. (``job`` and ``run`` are numbered
    again by annotate as a classify worker takes the faces.)"""

    def __init__(self, detector: Detector, counters: Optional[Counter] = None,
                 limits: ImageLimits = ImageLimits(), guard: Optional[Guard] = None) -> None:
        self.detector = detector
        self.counters = counters if counters is not None else Counter()
        self.limits = limits
        self.guard = guard or Guard(self.counters, log)

    def handle(self, data: bytes) -> Optional[Faces]:
        """Frame bytes -> Faces, or None (logged + counted) for bad input."""
        try:
            frame = decode(data, expect="frame")
            frame_bgr = decode_frame(frame, self.limits)
        except MessageError as exc:
            self.guard.bad("bad_messages", exc)
            return None
        except BadFrame as exc:
            self.guard.bad("bad_frames", exc)
            return None
        det = self.detector.detect(frame_bgr, source_id=frame.source_id)  # per-source state, if any
        faces = Faces(frame=frame, boxes_xywh=det.boxes_xywh, crops=det.crops, job=0, run=0,
                      landmarks=getattr(det, "landmarks", None))
        self.counters["faces"] += len(faces)
        return faces


def run(cfg: Config, detector: Detector, ctx: Optional[zmq.Context] = None,
        should_stop: Callable[[], bool] = lambda: False) -> None:
    """Frames from capture's and the web's dispatchers (one credit at each: this worker is handed the newest
    frame of a source when it is free) -> detect -> PUSH the faces to annotate, which hands each source's
    newest to whichever classify worker is free; until Shutdown."""
    ctx = ctx or zmq.Context.instance()
    link, push = bus.frames_worker(cfg, ctx), bus.detections_push(cfg, ctx)
    hb = bus.Heartbeater(bus.heartbeat_pub(cfg, ctx), "detect", cfg.heartbeat_interval,
                           idle_after=3 * cfg.heartbeat_interval)
    guard = Guard(hb.counters, log, cfg.log_every_s)
    stage = DetectStage(detector, hb.counters, image_limits(cfg), guard)
    try:
        while not should_stop():
            hb.tick()
            data = link.get(0.1)
            if data is None:
                continue
            t_recv = time.time()  # the frame was sent when this worker asked: the hop is transport only
            hb.counters["frames_in"] += 1
            hb.note_input()
            with guard.handling("a frame"):
                faces = stage.handle(data)
                del data  # nothing of one input outlives its handling
                if faces is None:
                    continue
                faces.frame.stamps.append(("detect", t_recv, time.time()))
                if bus.send_within(push, encode(faces), 50):
                    hb.counters["frames_out"] += 1
                else:
                    hb.counters["dropped_no_sink"] += 1  # annotate is away
    finally:
        hb.tick(force=True)
        link.close()
        for s in (push, hb.sock):
            s.close(0)
