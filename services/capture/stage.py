"""Capture's loop: read a source, JPEG-encode, publish Frame messages at a steady rate; survive a lost
camera or stalled stream by reopening it with backoff."""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional

import cv2
import numpy as np
import zmq

from shared import bus
from shared.config import Config
from shared.guard import Guard
from shared.messages import Frame, encode
from services.capture.source import SourceError, fit_frame, open_source, parse_source

log = logging.getLogger(__name__)


def frame_message(frame_bgr: np.ndarray, source_id: str, seq: int, t_grab: float, quality: int) -> Frame:
    """A BGR frame -> Frame message (JPEG); the capture stamp is added at send time."""
    ok, buf = cv2.imencode(".jpg", frame_bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"cannot JPEG-encode a frame of shape {frame_bgr.shape}")
    h, w = frame_bgr.shape[:2]
    return Frame(source_id=source_id, seq=seq, t_capture=t_grab, jpeg=buf.tobytes(), width=w, height=h)


class Backoff:
    """Waits of 0.25 s, doubling up to ``max_s``; ``reset()`` after a success."""

    def __init__(self, max_s: float, first_s: float = 0.25) -> None:
        self.max_s, self.first_s, self.next_s = max_s, first_s, first_s

    def next(self) -> float:
        wait, self.next_s = self.next_s, min(self.max_s, self.next_s * 2)
        return wait

    def reset(self) -> None:
        self.next_s = self.first_s


def run(cfg: Config, ctx: Optional[zmq.Context] = None, should_stop: Callable[[], bool] = lambda: False) -> int:
    """Publish frames until the source ends (file without --loop), ``max_frames``, or a Shutdown.
    Returns the number of frames sent."""
    ctx = ctx or zmq.Context.instance()
    kind, _ = parse_source(cfg.source)
    source_id = cfg.source_id or cfg.source
    hb = bus.Heartbeater(bus.heartbeat_pub(cfg, ctx), "capture", cfg.heartbeat_interval)
    pub = bus.frames_dispatcher(cfg, ctx, hb.counters)  # the newest frame goes to whichever detect is free
    hb.detail = f"{kind} {cfg.source}"
    hb.tick(force=True)
    if cfg.wait_subscriber_s > 0 and not pub.wait_for_workers(cfg.wait_subscriber_s, cfg.wait_subscribers):
        log.warning("no detect worker after %.1f s; sending anyway", cfg.wait_subscriber_s)
    backoff = Backoff(cfg.retry_max_s)
    guard = Guard(hb.counters, log, cfg.log_every_s)
    period = 1.0 / cfg.fps if cfg.fps > 0 else 0.0
    src, seq, next_due = None, 0, time.time()
    next_file = next_due  # a file's own clock: its frames are due 1/native_fps apart
    try:
        while not should_stop() and not (cfg.max_frames and seq >= cfg.max_frames):
            hb.tick()
            if src is None:
                try:
                    src = open_source(cfg.source, cfg.width, cfg.height, cfg.fps)
                    log.info("opened %s %s", kind, cfg.source)
                    hb.status, hb.detail = "ok", f"{kind} {cfg.source}"
                    hb.counters["opened"] += 1
                except SourceError as exc:
                    wait = backoff.next()
                    log.warning("%s; retrying in %.2f s", exc, wait)
                    hb.status, hb.detail = "reconnecting", str(exc)
                    hb.counters["open_failures"] += 1
                    hb.tick(force=True)
                    time.sleep(wait)
                    continue
            try:
                if src.live:
                    # Grab every frame the device offers so its buffer stays empty; decode only when due.
                    if not src.grab():
                        raise SourceError(f"{kind} {cfg.source!r} stopped giving frames")
                    if time.time() < next_due:
                        continue
                    frame = src.retrieve()
                    if frame is None:
                        raise SourceError(f"{kind} {cfg.source!r} gave an undecodable frame")
                elif src.native_fps and period:
                    # A file plays at its own rate; when that is above the cap, frames are skipped (grabbed,
                    # never decoded) so the file still plays in real time. (--fps 0: as fast as it decodes.)
                    file_period = 1.0 / src.native_fps
                    now = time.time()
                    if now < next_file:
                        time.sleep(next_file - now)
                    next_file = max(next_file + file_period, time.time() - file_period)
                    if period and time.time() < next_due - 1e-3:
                        if src.grab():
                            hb.counters["skipped"] += 1
                            continue
                        frame = None
                    else:
                        frame = src.read()
                else:
                    now = time.time()
                    if now < next_due:
                        time.sleep(next_due - now)
                    frame = src.read()
            except SourceError as exc:
                log.warning("%s; reopening", exc)
                hb.status, hb.detail = "reconnecting", str(exc)
                hb.counters["source_lost"] += 1
                hb.tick(force=True)
                src.close()
                src = None
                continue
            if frame is None:  # end of a file
                if cfg.loop:
                    src.rewind()
                    next_file = time.time()  # the end of a file is no frame: the first one again is due now
                    hb.counters["rewinds"] += 1
                    continue
                log.info("end of %s after %d frames", cfg.source, seq)
                hb.status, hb.detail = "eof", f"end of {cfg.source}"
                break
            backoff.reset()
            t_grab = time.time()
            next_due = max(next_due + period, t_grab) if period else t_grab
            with guard.handling("a frame from the source"):  # a stream's odd frame is counted, not fatal
                msg = frame_message(fit_frame(frame, cfg.width, cfg.height), source_id, seq, t_grab,
                                    cfg.jpeg_quality)
                t_send = time.time()
                msg.stamps.append(("capture", t_grab, t_send))
                pub.offer(source_id, encode(msg))  # replaces a frame no detect worker took yet ('superseded')
                hb.counters["frames_out"] += 1
                seq += 1
    finally:
        hb.tick(force=True)
        if src is not None:
            src.close()
        pub.close(drain_s=1.0)  # the last frames of a file still go to a free worker
        hb.sock.close(0)
    return seq
