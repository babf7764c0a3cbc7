"""Capture's loop: read one or several sources, JPEG-encode, publish Frame messages at a steady rate;
survive a lost camera or stalled stream by reopening it with backoff.

``run()`` owns the process's one frames socket and one heartbeat; each source is read by
``read_source()`` in a thread of its own, which hands its encoded frames to ``send(source_id, data)``
(the one way out, thread-safe) and keeps its status and counters in a ``SourceState`` that the
heartbeat reports per source."""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Callable, Optional

import cv2
import numpy as np
import zmq

from shared import bus
from shared.config import Config
from shared.guard import Guard, short
from shared.messages import MAX_DETAIL_CHARS, MAX_SOURCE_DETAIL_CHARS, Frame, SourceStatus, encode
from services.capture.source import SourceError, fit_frame, open_source, parse_source, parse_sources

log = logging.getLogger(__name__)

Send = Callable[[str, bytes], None]
"""``send(source_id, data)``: hand one encoded Frame to the pipeline (the frames dispatcher, which counts a frame
replaced before a detect worker took it as ``superseded``)."""


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


class SourceState:
    """One source's status and counters: written by its reading thread only, read by the heartbeat.
    ``changed`` (shared by every source of a process) is set on a status change, so the heartbeat says
    so at once."""

    def __init__(self, spec: str, source_id: str, changed: threading.Event) -> None:
        self.spec, self.source_id, self.kind = spec, source_id, parse_source(spec)[0]
        self.counters: Counter[str] = Counter()
        self.status, self.detail = "ok", f"{self.kind} {spec}"
        self.seq = 0
        self.error: Optional[FileNotFoundError] = None  # a file that does not exist: this source is over
        self._changed = changed

    def set(self, status: str, detail: str) -> None:
        self.status, self.detail = status, detail
        self._changed.set()

    def report(self) -> SourceStatus:
        return SourceStatus(status=self.status, detail=short(self.detail, MAX_SOURCE_DETAIL_CHARS - 20),
                            counters={k: int(self.counters[k]) for k in SOURCE_COUNTERS if self.counters[k]})


SOURCE_COUNTERS = ("frames_out", "dropped", "skipped", "rewinds", "opened", "open_failures", "source_lost", "errors")
"""The counters each source reports on its own (the heartbeat's ``counters`` are every source's totals)."""


def read_source(cfg: Config, state: SourceState, send: Send, stopping: Callable[[], bool]) -> int:
    """Read one source until it ends (a file without ``loop``), ``max_frames`` or ``stopping()``, sending
    each frame with ``send``. Returns the number of frames read. A missing file ends this source
    (``state.error``); anything else wrong with it is retried with backoff."""
    spec, kind, source_id = state.spec, state.kind, state.source_id
    backoff = Backoff(cfg.retry_max_s)
    guard = Guard(state.counters, log, cfg.log_every_s)
    period = 1.0 / cfg.fps if cfg.fps > 0 else 0.0
    src, next_due = None, time.time()
    next_file = next_due  # a file's own clock: its frames are due 1/native_fps apart

    def pause(seconds: float) -> None:  # a wait that ends early when the process stops
        end = time.time() + seconds
        while not stopping() and time.time() < end:
            time.sleep(min(0.05, max(0.0, end - time.time())))

    try:
        while not stopping() and not (cfg.max_frames and state.seq >= cfg.max_frames):
            if src is None:
                try:
                    src = open_source(spec, cfg.width, cfg.height, cfg.fps)
                    log.info("opened %s %s as %r", kind, spec, source_id)
                    state.set("ok", f"{kind} {spec}")
                    state.counters["opened"] += 1
                except FileNotFoundError as exc:
                    log.error("%s: source %r ends", exc, source_id)
                    state.error = exc
                    state.set("missing", str(exc))
                    return state.seq
                except SourceError as exc:
                    wait = backoff.next()
                    log.warning("%s; retrying in %.2f s", exc, wait)
                    state.counters["open_failures"] += 1
                    state.set("reconnecting", str(exc))
                    pause(wait)
                    continue
            try:
                if src.live:
                    # Grab every frame the device offers so its buffer stays empty; decode only when due.
                    if not src.grab():
                        raise SourceError(f"{kind} {spec!r} stopped giving frames")
                    if time.time() < next_due:
                        continue
                    frame = src.retrieve()
                    if frame is None:
                        raise SourceError(f"{kind} {spec!r} gave an undecodable frame")
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
                            state.counters["skipped"] += 1
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
                state.counters["source_lost"] += 1
                state.set("reconnecting", str(exc))
                src.close()
                src = None
                continue
            if frame is None:  # end of a file
                if cfg.loop:
                    src.rewind()
                    next_file = time.time()  # the end of a file is no frame: the first one again is due now
                    state.counters["rewinds"] += 1
                    continue
                log.info("end of %s after %d frames", spec, state.seq)
                state.set("eof", f"end of {spec}")
                break
            backoff.reset()
            t_grab = time.time()
            next_due = max(next_due + period, t_grab) if period else t_grab
            with guard.handling("a frame from the source"):  # a stream's odd frame is counted, not fatal
                msg = frame_message(fit_frame(frame, cfg.width, cfg.height), source_id, state.seq, t_grab,
                                    cfg.jpeg_quality)
                t_send = time.time()
                msg.stamps.append(("capture", t_grab, t_send))
                send(source_id, encode(msg))
                state.counters["frames_out"] += 1
                state.seq += 1
    finally:
        if src is not None:
            src.close()
    return state.seq


def _source_thread(cfg: Config, state: SourceState, send: Send, stopping: Callable[[], bool]) -> None:
    """``read_source`` in its thread: an unexpected error is counted and logged, and the source is read
    again after a backoff, so one source's bug never stops the others."""
    backoff = Backoff(cfg.retry_max_s)
    while not stopping():
        try:
            read_source(cfg, state, send, stopping)
            return
        except Exception as exc:  # a source's thread must not die silently
            wait = backoff.next()
            state.counters["errors"] += 1
            log.exception("source %r failed; reading it again in %.2f s", state.source_id, wait)
            state.set("reconnecting", f"error: {exc}")
            end = time.time() + wait
            while not stopping() and time.time() < end:
                time.sleep(0.05)


def _summary(states: list[SourceState]) -> tuple[str, str]:
    """The process's one (status, detail) from its sources': one source's own; with several, "ok" when
    every source still running is, else "degraded" (or the problem itself when none is ok); "eof" when
    all ended."""
    if len(states) == 1:
        return states[0].status, states[0].detail
    running = [s for s in states if s.status != "eof"]
    if not running:
        return "eof", f"all {len(states)} sources ended"
    problems = [s for s in running if s.status != "ok"]
    if not problems:
        return "ok", f"{len(states)} sources: " + ", ".join(s.source_id for s in states)
    text = "; ".join(f"{s.source_id}: {s.detail}" for s in problems)
    status = "degraded" if len(problems) < len(running) else problems[0].status
    return status, short(f"{len(problems)} of {len(states)} sources not ok: {text}", MAX_DETAIL_CHARS - 20)


def _report(hb: bus.Heartbeater, states: list[SourceState], force: bool = False,
            dispatch: Optional[Counter] = None) -> None:
    """Heartbeat: the totals of every source's counters (and the dispatcher's: frames superseded before a
    detect worker was free), the summary status and each source's own status and counters (the web's
    per-source health)."""
    total: Counter[str] = Counter()
    for s in states:
        total.update(dict(s.counters))
    total.update(dict(dispatch or {}))
    hb.counters = total
    hb.status, hb.detail = _summary(states)
    hb.sources = {s.source_id: s.report() for s in states}
    hb.tick(force=force)


def run(cfg: Config, ctx: Optional[zmq.Context] = None, should_stop: Callable[[], bool] = lambda: False) -> int:
    """Publish frames of every source (``cfg.source``: one, or several comma-separated) until each has
    ended (a file without --loop, ``max_frames`` frames) or a Shutdown / ``should_stop()``. Returns the
    number of frames read, all sources together. Raises FileNotFoundError when every source is a file
    that does not exist; a missing file among other sources only ends that one."""
    ctx = ctx or zmq.Context.instance()
    sources = parse_sources(cfg.source, cfg.source_id)
    changed = threading.Event()
    states = [SourceState(spec, sid, changed) for spec, sid in sources]
    hb = bus.Heartbeater(bus.heartbeat_pub(cfg, ctx), "capture", cfg.heartbeat_interval)
    dispatch: Counter[str] = Counter()
    pub = bus.frames_dispatcher(cfg, ctx, dispatch)  # the newest frame of a source goes to a free detect worker
    _report(hb, states, force=True, dispatch=dispatch)
    if cfg.wait_subscriber_s > 0 and not pub.wait_for_workers(cfg.wait_subscriber_s, cfg.wait_subscribers):
        log.warning("no detect worker after %.1f s; sending anyway", cfg.wait_subscriber_s)

    send: Send = pub.offer  # the one way out for every source's thread (the dispatcher is thread-safe)

    stop = threading.Event()

    def stopping() -> bool:
        return stop.is_set() or should_stop()

    threads = [threading.Thread(target=_source_thread, args=(cfg, state, send, stopping), daemon=True,
                                name=f"capture-{i}") for i, state in enumerate(states)]
    try:
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads) and not should_stop():
            force = changed.wait(min(cfg.heartbeat_interval, 0.2))
            changed.clear()
            _report(hb, states, force=force, dispatch=dispatch)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=6.0)  # a stream's read gives up within 5 s
        pub.close(drain_s=1.0)  # the last frames of a file still go to a free worker
        _report(hb, states, force=True, dispatch=dispatch)
        hb.sock.close(0)
    if all(s.error is not None for s in states):
        raise states[0].error
    return sum(s.seq for s in states)
