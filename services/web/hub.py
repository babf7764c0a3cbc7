"""The web process's one link to the pipeline: one thread, one SUB socket on the annotated output.

``PipelineHub`` (registered once in ``app.extensions["ferlive.hub"]``) owns:

* ``annotated_sub`` (SUB, connects): every annotated frame. The newest frame of each source is kept in a
  slot guarded by a condition variable; any number of MJPEG viewers wait on it and each takes the newest
  when it is ready for one, so a slow viewer skips frames and nothing queues.
* ``heartbeat_sub`` (SUB, binds): each stage's heartbeats -> alive or not; capture's also say how each of
  its sources is doing (``Heartbeat.sources``), which ``sources()`` merges with the annotated frames.
* ``web_frames_dispatcher`` (a ``bus.Dispatcher``, ROUTER, binds ``web_frames_endpoint``): frames from
  browsers, handed into the pipeline as their own sources (the newest frame of each to whichever detect
  worker asks next; detect workers ask here as well as at capture's dispatcher).
  Annotated results of such a source are handed to the one callback registered for it (its WebSocket),
  never to anyone else.

Per-stage latency p50/p95 comes from the stamps each stage appends to a frame (``messages.latencies``).
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import zmq

from shared import bus
from shared.config import Config
from shared.guard import Guard
from shared.messages import (BROWSER_PREFIX, MAX_ID_CHARS, STAGES, Annotated, Frame, Heartbeat, MessageError,
                             decode, encode, latencies)

log = logging.getLogger(__name__)

SOURCE_TTL_S = 60.0
"""A source (or a stage instance) with nothing for this long is forgotten: per-source state expires."""
MAX_SOURCES = 64
"""At most this many sources and stage instances are kept; beyond it the oldest is forgotten."""
STALLED_AFTER_S = 3.0
"""A source whose newest annotated frame is older than this reads "stalled"."""
_LATENCY_NAMES = frozenset(("web",) + STAGES)


def source_problem(source: str) -> Optional[tuple[int, str]]:
    """Why a source id from a request cannot name a shown source: (HTTP status, message), or None.
    Never quotes more than a few dozen characters of it."""
    if len(source) > MAX_ID_CHARS:
        return 400, f"source id of {len(source)} characters: at most {MAX_ID_CHARS}"
    if source.startswith(BROWSER_PREFIX):
        return 404, "browser sources are answered on their own WebSocket only"
    return None


def web_frames_dispatcher(cfg: Config, ctx: zmq.Context) -> bus.Dispatcher:
    """The dispatcher (ROUTER, binds ``cfg.web_frames_endpoint``) of browser frames to detect workers."""
    return bus.Dispatcher(lambda: bus.make_socket(ctx, "ROUTER", "web_frames_dispatch", cfg.web_frames_endpoint,
                                                  bind=True, hwm=bus.CREDIT_HWM, sock_buf=cfg.sock_buf,
                                                  max_msg=bus.CONTROL_MAX_MSG, curve_dir=cfg.curve_dir),
                          name="web-frames")


@dataclass
class SourceSlot:
    """The newest annotated frame of one source and a rate counter."""

    frame: Optional[Annotated] = None
    t_recv: float = 0.0
    count: int = 0
    arrivals: deque = field(default_factory=lambda: deque(maxlen=120))

    def fps(self, now: float, window: float = 3.0) -> float:
        recent = [t for t in self.arrivals if now - t <= window]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-6)


def result_json(msg: Annotated) -> list[dict[str, Any]]:
    """An annotated frame's faces as the API's JSON (box, emotion, smoothed scores, landmarks, track id)."""
    return [{"box": list(r.box_xywh), "emotion": r.emotion,
             "scores": {k: safe_score(v) for k, v in r.scores.items()}, "landmarks": r.landmarks,
             "track_id": r.track_id}
            for r in msg.results]


def safe_score(v: float) -> float:
    """A score rounded for JSON; never NaN or infinite (decode refuses those; this is the last guard)."""
    return round(v, 4) if math.isfinite(v) else 0.0


class PipelineHub:
    """One background thread holding the web's pipeline sockets; thread-safe readers for the routes."""

    def __init__(self, cfg: Config, ctx: Optional[zmq.Context] = None, *, ingest: bool = True,
                 heartbeats: bool = True, latency_window: int = 300) -> None:
        self.cfg = cfg
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self._cond = threading.Condition()
        self._slots: dict[str, SourceSlot] = {}
        self._hearts: dict[tuple[str, str], tuple[float, Heartbeat]] = {}
        self._lat: dict[str, deque] = {}
        self._lat_window = latency_window
        self._routes: dict[str, Callable[[Annotated], None]] = {}
        self._pub_lock = threading.Lock()
        self._stop = threading.Event()
        self.counters: Counter = Counter()
        self.guard = Guard(self.counters, log, cfg.log_every_s)
        self._last_expiry = 0.0
        self._browser_frames = 0
        # Sockets are created here but used only by the hub thread (the dispatcher has its own thread).
        self._sub = bus.annotated_sub(cfg, self.ctx)
        self._hb = bus.heartbeat_sub(cfg, self.ctx) if heartbeats else None
        self._pub = web_frames_dispatcher(cfg, self.ctx) if ingest and cfg.web_frames_endpoint else None
        self._thread = threading.Thread(target=self._run, name="ferlive-hub", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the one subscriber thread
    def _run(self) -> None:
        redial = bus.Redialer(self._sub, [self.cfg.annotated_endpoint])
        poller = zmq.Poller()
        poller.register(self._sub, zmq.POLLIN)
        if self._hb is not None:
            poller.register(self._hb, zmq.POLLIN)
        while not self._stop.is_set():
            try:
                ready = dict(poller.poll(200))
            except zmq.ZMQError:
                if self._stop.is_set():
                    break
                raise
            with self.guard.handling("the pipeline's messages"):  # the hub thread must never die
                redial.check()
                if self._sub in ready:
                    self._drain_annotated()
                if self._hb is not None and self._hb in ready:
                    self._drain_heartbeats()
                self.expire(time.time())
        redial.close()

    def count(self, name: str, n: int = 1) -> None:
        """Add to one of the web's counters (shown in /api/health under web.counters); thread-safe."""
        with self._cond:
            self.counters[name] += n

    @property
    def bad_messages(self) -> int:
        return self.counters["bad_messages"]

    def expire(self, now: float) -> None:
        """Forget sources and stage instances silent for SOURCE_TTL_S (checked about once a second)."""
        if now - self._last_expiry < 1.0:
            return
        self._last_expiry = now
        with self._cond:
            for k in [k for k, s in self._slots.items() if now - s.t_recv > SOURCE_TTL_S]:
                del self._slots[k]
            for k in [k for k, (t, _) in self._hearts.items() if now - t > SOURCE_TTL_S]:
                del self._hearts[k]
    def _drain_annotated(self) -> None:
        # Every message is decoded (browser sources need each of theirs); the slot keeps the newest only.
        while True:
            try:
                data = self._sub.recv(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            now = time.time()
            try:
                msg = decode(data, expect="annotated")
            except MessageError as exc:
                self.guard.bad("bad_messages", f"annotated: {exc}")
                continue
            with self.guard.handling("an annotated frame"):
                self._on_annotated(msg, now)

    def _on_annotated(self, msg: Annotated, now: float) -> None:
        source = msg.frame.source_id
        lat = latencies(msg)
        if msg.frame.stamps:
            lat["annotate->web"] = (now - msg.frame.stamps[-1][2]) * 1e3
            lat["total"] = (now - msg.frame.stamps[0][1]) * 1e3
        browser = source.startswith(BROWSER_PREFIX)
        with self._cond:
            for key, ms in lat.items():
                if all(part in _LATENCY_NAMES or part == "total" for part in key.split("->")):
                    self._lat.setdefault(key, deque(maxlen=self._lat_window)).append(ms)
            if browser:  # a browser's frames go to its own socket only and are never kept here
                callback = self._routes.get(source)
                self._browser_frames += 1
            else:
                callback = None
                if source not in self._slots and len(self._slots) >= MAX_SOURCES:
                    del self._slots[min(self._slots, key=lambda k: self._slots[k].t_recv)]
                slot = self._slots.setdefault(source, SourceSlot())
                slot.frame, slot.t_recv = msg, now
                slot.count += 1
                slot.arrivals.append(now)
                self._cond.notify_all()
        if callback is not None:
            try:
                callback(msg)
            except Exception:  # a client's callback must never kill the subscriber
                log.exception("callback for %s failed", source)

    def _drain_heartbeats(self) -> None:
        while True:
            try:
                data = self._hb.recv(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            try:
                hb = decode(data, expect="heartbeat")
            except MessageError as exc:
                self.guard.bad("bad_messages", f"heartbeat: {exc}")
                continue
            with self._cond:
                key = (hb.stage, hb.instance)
                if key not in self._hearts and len(self._hearts) >= MAX_SOURCES:
                    del self._hearts[min(self._hearts, key=lambda k: self._hearts[k][0])]
                self._hearts[key] = (time.time(), hb)

    # ------------------------------------------------------------------ browser sources
    def register(self, source_id: str, callback: Callable[[Annotated], None]) -> None:
        """Send this source's annotated frames to `callback` (called on the hub thread: keep it short)."""
        with self._cond:
            self._routes[source_id] = callback

    def unregister(self, source_id: str) -> None:
        """Forget a browser source's route; its later results are dropped."""
        with self._cond:
            self._routes.pop(source_id, None)

    def publish_frame(self, source_id: str, seq: int, jpeg: bytes, width: int, height: int,
                      t_recv: float) -> bool:
        """Hand a browser frame to the pipeline (replacing one of the same source no detect worker took yet);
        False if there is no ingest or the hub is closed."""
        if self._pub is None:
            return False
        t_send = time.time()
        frame = Frame(source_id=source_id, seq=seq, t_capture=t_recv, jpeg=jpeg, width=width, height=height,
                      stamps=[("web", t_recv, t_send)])
        data = encode(frame)
        with self._pub_lock:
            if self._stop.is_set():
                return False
            self._pub.offer(source_id, data)
            return True

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    @property
    def clients(self) -> int:
        with self._cond:
            return len(self._routes)

    # ------------------------------------------------------------------ readers for the routes
    def main_source(self) -> Optional[str]:
        """The most recently updated source (browsers' sources are never kept, so never shown)."""
        with self._cond:
            return self._main_locked()

    def latest(self, source: Optional[str] = None) -> tuple[Optional[Annotated], float]:
        """(newest annotated frame of `source` (default: main source) or None, its receive time)."""
        source = source or self.main_source()
        with self._cond:
            slot = self._slots.get(source) if source else None
            return (slot.frame, slot.t_recv) if slot else (None, 0.0)

    def _reported_locked(self, now: float) -> dict[str, Any]:
        """Each source a live capture process reports (heartbeat within 3 intervals): id -> SourceStatus."""
        out: dict[str, Any] = {}
        for (stage, _), (t_seen, hb) in sorted(self._hearts.items(), key=lambda kv: kv[1][0]):
            if stage == "capture" and now - t_seen <= 3 * max(hb.interval, 0.1):
                out.update((k, v) for k, v in hb.sources.items() if not k.startswith(BROWSER_PREFIX))
        return out

    def known(self, source: str) -> bool:
        """Whether `source` has annotated frames here or a live capture process reports it."""
        with self._cond:
            return source in self._slots or source in self._reported_locked(time.time())

    def sources(self) -> list[dict[str, Any]]:
        """Every source shown (browsers' never): id, frames/s, age of its newest frame, faces in it, and a
        status: capture's own when it is not "ok" (reconnecting, missing, eof), else "ok", "stalled" (no
        frame for STALLED_AFTER_S) or "waiting" (reported by capture, no annotated frame yet)."""
        now = time.time()
        with self._cond:
            reported = self._reported_locked(now)
            ids = list(self._slots) + [k for k in reported if k not in self._slots]
            out = []
            for sid in sorted(ids[:MAX_SOURCES]):
                slot, cap = self._slots.get(sid), reported.get(sid)
                age = now - slot.t_recv if slot else None
                if cap is not None and cap.status != "ok":
                    status = cap.status
                elif slot is None:
                    status = "waiting"
                else:
                    status = "stalled" if age > STALLED_AFTER_S else "ok"
                out.append({"id": sid, "status": status, "detail": cap.detail if cap else "",
                            "fps": round(slot.fps(now), 2) if slot else 0.0,
                            "age_s": round(age, 3) if age is not None else None,
                            "faces": len(slot.frame.results) if slot else 0,
                            "frames": slot.count if slot else 0,
                            "capture": dict(cap.counters) if cap else None})
        return out

    def _main_locked(self) -> Optional[str]:
        best = max(((s.t_recv, k) for k, s in self._slots.items()), default=None)
        return best[1] if best else None

    def next_frame(self, source: Optional[str], after: int, timeout: float) -> tuple[Optional[Annotated], int]:
        """(newest frame of `source` newer than count `after`, its count) or (None, after) on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._stop.is_set():
                name = source or self._main_locked()
                slot = self._slots.get(name) if name else None
                if slot is not None and slot.count > after:
                    return slot.frame, slot.count
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        return None, after

    def health(self) -> dict[str, Any]:
        """Stages alive (heartbeat within 3 intervals), frames/s per source, latency p50/p95 per stage/hop."""
        now = time.time()
        with self._cond:
            hearts = list(self._hearts.values())
            lat = {k: np.asarray(v, dtype=np.float64) for k, v in self._lat.items() if v}
            sources = {k: {"fps": round(s.fps(now), 2), "frames": s.count,
                           "age_s": round(now - s.t_recv, 3)} for k, s in self._slots.items()}
            clients = len(self._routes)
        stages: dict[str, dict[str, Any]] = {name: {"alive": False, "instances": 0, "age_s": None,
                                                    "status": "no heartbeat", "detail": ""}
                                             for name in STAGES}
        for t_seen, hb in hearts:
            alive = now - t_seen <= 3 * max(hb.interval, 0.1) and hb.status != "eof"
            st = stages.setdefault(hb.stage, {"alive": False, "instances": 0, "age_s": None,
                                              "status": "no heartbeat", "detail": ""})
            age = now - t_seen
            if alive:
                st["instances"] += 1
                # counters of every live process of the stage added up (classify -c 4: all four workers)
                total = st.setdefault("counters", {})
                for name, value in hb.counters.items():
                    total[name] = total.get(name, 0) + value
                st.setdefault("per_instance", {})[hb.instance] = dict(hb.counters)
            if st["age_s"] is None or age < st["age_s"]:
                st.update(age_s=round(age, 3), status=hb.status, detail=hb.detail)
            st["alive"] = st["alive"] or alive
        return {
            "ok": all(s["alive"] for s in stages.values()),
            "stages": stages,
            "main_source": self.main_source(),
            "sources": sources,
            "latency_ms": {k: {"p50": round(float(np.percentile(v, 50)), 2),
                               "p95": round(float(np.percentile(v, 95)), 2), "n": int(v.size)}
                           for k, v in sorted(lat.items())},
            "web": {"websocket_clients": clients, "browser_frames": self._browser_frames,
                    "bad_messages": self.bad_messages, "counters": dict(self.counters)},
        }

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        """Stop the thread and close the sockets (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=2)
        with self._pub_lock:
            for sock in (self._sub, self._hb):
                if sock is not None:
                    sock.close(0)
            if self._pub is not None:
                self._pub.close()
        if self._own_ctx:
            if self.cfg.curve_dir:
                from shared.keys import stop_authenticator
                stop_authenticator(self.ctx)
            self.ctx.term()
