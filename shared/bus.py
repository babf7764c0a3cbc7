"""ZeroMQ sockets of the pipeline, each named by its pattern and role (zguide style).

    capture ──ROUTER frames──▶ detect ×M ──PUSH detections──▶ annotate ──ROUTER faces──▶ classify ×N
    (Dispatcher, bind)    (DEALER connect)    (connect)      (PULL bind) (Dispatcher, bind) (DEALER connect)
    classify ×N ──PUSH predictions (connect)──▶ annotate (PULL bind) ──PUB annotated (bind)──▶ web (SUB)

    web (browser webcams) ──ROUTER web frames (Dispatcher, bind)──▶ detect (a second DEALER per worker)
    every stage ──PUB heartbeat (connect)──▶ heartbeat_endpoint ◀── web: SUB (bind)

  Annotate is the one process between the two pools (the zguide's load-balancing broker): detect workers
  come and go, each connecting; annotate numbers each frame as a classify worker takes it (one order, so
  results are put back in order whichever detect worker found the faces) and keeps each source in capture
  order.

* Live work goes to pools by the zguide's load-balancing pattern with credits: each worker (detect,
  classify) holds one credit per upstream, sending ``READY`` when it is free (``WorkerLink``), and the
  upstream ``Dispatcher`` keeps only the newest item of each source and hands the one waiting longest to
  a free worker. So no hop queues more than one frame per worker, a slow pool skips frames instead of
  falling behind, each frame is handled by exactly one worker, and latency never grows with time.
  Frames of one source may go to any free detect worker (``detect_affinity`` "any") or stay on one
  (``pinned``); annotate keeps one order per detect run and each source's frames in capture order.
* Results go PUSH->PULL to annotate (a result is worth a short wait: ``send_within``), and annotate
  PUBlishes to any number of viewers with a small high-water mark (a slow viewer skips frames).
* Every socket has linger 0, so Ctrl-C never hangs, and a 100 ms..1 s reconnect interval, so a killed
  and restarted stage is back within a second or two (the binding side may restart too: workers repeat
  ``READY`` every second while idle, and a dispatcher forgets a credit not refreshed for 3 s).
* Nothing from a socket is trusted: every receiving socket has ZMQ_MAXMSGSIZE (``cfg.max_msg_bytes``;
  64 kB for credits, heartbeats and subscriptions), and a connecting one is watched by a ``Redialer``
  because libzmq does not reconnect after the protocol error an oversized message is.
* ``cfg.curve_dir`` turns on CURVE for every socket (``shared.keys``): the binding side is the server.

For the web engineer:
    Browser frames: ``offer(source_id, frame_bytes)`` on a ``Dispatcher`` bound at
    ``cfg.web_frames_endpoint``, with a ``source_id`` of your own (e.g. "browser-<id>").
    ``annotated_sub(cfg, ctx)`` receives ``messages.Annotated`` (``decode(data, expect="annotated")``).
    ``heartbeat_sub(cfg, ctx)`` BINDS ``cfg.heartbeat_endpoint``; every stage's ``heartbeat_pub`` connects
    to it and sends a ``messages.Heartbeat`` every ``cfg.heartbeat_interval`` seconds: stage
    ("capture"/"detect"/"classify"/"annotate"), instance (host:pid), counters (monotonic totals such as
    frames_in, frames_out, dropped, bad_messages, faces), status ("ok", "stalled", "reconnecting",
    "eof") and detail. Treat a (stage, instance) as gone after ~3 intervals without a heartbeat.
    Only one process may bind the heartbeat endpoint.
"""
from __future__ import annotations

import logging
import os
import signal
import socket as _socket
import sys
import threading
import time
from collections import Counter
from typing import Callable, Optional

import zmq

from shared.config import Config, ConfigError
from shared.messages import Heartbeat, SourceStatus, encode

log = logging.getLogger(__name__)

CREDIT_HWM = 16
"""High-water mark of dispatcher (ROUTER) and worker (DEALER) sockets. It does not bound the queue (the
credits do: a worker is sent one message per READY); it only has to leave room for libzmq's own
handshake messages (with CURVE, a ROUTER with a receive HWM of 1 never delivers the first message)."""

CONTROL_MAX_MSG = 65536
"""ZMQ_MAXMSGSIZE of sockets that receive only small messages (heartbeats, subscriptions)."""

_PATTERNS = {"XPUB": zmq.XPUB, "PUB": zmq.PUB, "SUB": zmq.SUB, "PUSH": zmq.PUSH, "PULL": zmq.PULL,
             "ROUTER": zmq.ROUTER, "DEALER": zmq.DEALER}


def make_socket(ctx: zmq.Context, pattern: str, role: str, endpoint: str, *, bind: bool, hwm: int,
                sock_buf: int = 0, max_msg: int = 0, curve_dir: str = "") -> zmq.Socket:
    """A socket of ``pattern`` (PUB/SUB/PUSH/PULL) named ``role``, bound or connected to ``endpoint``.

    ``max_msg`` > 0 sets ZMQ_MAXMSGSIZE: a peer that sends a bigger message is disconnected before the
    message is buffered (every receiving socket of the pipeline sets it). ``curve_dir``: encrypt and
    authenticate with the CURVE keys there (``shared.keys``)."""
    sock = ctx.socket(_PATTERNS[pattern])
    sock.setsockopt(zmq.LINGER, 0)
    if max_msg > 0:
        sock.setsockopt(zmq.MAXMSGSIZE, max_msg)
    if curve_dir:
        from shared.keys import apply_curve
        apply_curve(sock, ctx, curve_dir, server=bind)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
    if sock_buf > 0:
        sock.setsockopt(zmq.SNDBUF, sock_buf)
        sock.setsockopt(zmq.RCVBUF, sock_buf)
    if pattern == "SUB":
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    if pattern == "PUSH" and not bind:
        sock.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing for a peer that is not connected
    try:
        if bind:
            sock.bind(endpoint)
        else:
            sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close(0)
        if bind and exc.errno == zmq.EADDRINUSE:  # e.g. a second pipeline: configuration, not a crash to retry
            raise ConfigError(f"{role}: cannot bind {endpoint}: the address is in use (is another ferlive "
                              f"pipeline running? stop it, or move this one with FERLIVE_*_ENDPOINT)") from None
        raise zmq.ZMQError(exc.errno, f"{role}: cannot {'bind' if bind else 'connect'} {endpoint}: "
                                      f"{exc.strerror} (another process on that port? see FERLIVE_*_ENDPOINT)")
    log.debug("%s %s %s %s (hwm %d)", role, pattern, "bind" if bind else "connect", endpoint, hwm)
    return sock


class Redialer:
    """Reconnects a connecting socket whose connection libzmq gave up on.

    libzmq reconnects by itself after a network error, but not after a protocol error, and a message
    over ZMQ_MAXMSGSIZE is one: a peer that sent one oversized message would be cut off for good. This
    watches the socket's monitor and dials an endpoint again when its connection closes.
    ``check()`` is cheap (non-blocking); call it from the loop that owns the socket."""

    def __init__(self, sock: zmq.Socket, endpoints: "list[str]") -> None:
        self.sock, self.endpoints = sock, [e for e in endpoints if e]
        self.mon = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.redials = 0

    def check(self) -> None:
        from zmq.utils.monitor import recv_monitor_message
        while True:
            try:
                ev = recv_monitor_message(self.mon, zmq.NOBLOCK)
            except zmq.Again:
                return
            ep = ev.get("endpoint", b"")
            ep = ep.decode() if isinstance(ep, bytes) else str(ep)
            if ep in self.endpoints:
                try:
                    self.sock.disconnect(ep)
                except zmq.ZMQError:
                    pass
                self.sock.connect(ep)
                self.redials += 1
                log.info("reconnected %s after its connection closed", ep)

    def close(self) -> None:
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.mon.close(0)


# --- the pipeline's sockets, by role -----------------------------------------------------------
def frames_dispatcher(cfg: Config, ctx: zmq.Context, counters: Optional[Counter] = None) -> "Dispatcher":
    """Capture's frames: a ``Dispatcher`` (ROUTER, binds ``frames_endpoint``) handing the newest frame of
    each source to whichever detect worker asks next."""
    return Dispatcher(lambda: make_socket(ctx, "ROUTER", "frames_dispatch", cfg.frames_endpoint, bind=True,
                                          hwm=CREDIT_HWM, sock_buf=cfg.sock_buf, max_msg=CONTROL_MAX_MSG,
                                          curve_dir=cfg.curve_dir),
                      counters=counters, affinity=cfg.detect_affinity, name="frames")


def frames_worker(cfg: Config, ctx: zmq.Context, endpoints: "Optional[list[str]]" = None) -> "WorkerLink":
    """Detect's side of the frames: one credit each at capture's and at the web's (browser) dispatcher."""
    eps = endpoints if endpoints is not None else [cfg.frames_endpoint, cfg.web_frames_endpoint]
    return WorkerLink([(lambda ep=ep: make_socket(ctx, "DEALER", "frames_worker", ep, bind=False,
                                                  hwm=CREDIT_HWM, sock_buf=cfg.sock_buf,
                                                  max_msg=cfg.max_msg_bytes, curve_dir=cfg.curve_dir), ep)
                       for ep in eps if ep])


def faces_dispatcher(cfg: Config, ctx: zmq.Context, prepare: "Callable[[object], Optional[bytes]]",
                     counters: Optional[Counter] = None) -> "Dispatcher":
    """Annotate's faces: a ``Dispatcher`` (ROUTER, binds ``faces_endpoint``); ``prepare`` numbers and encodes
    a result at the moment a classify worker takes it."""
    return Dispatcher(lambda: make_socket(ctx, "ROUTER", "faces_dispatch", cfg.faces_endpoint, bind=True,
                                          hwm=CREDIT_HWM, sock_buf=cfg.sock_buf,
                                          max_msg=CONTROL_MAX_MSG, curve_dir=cfg.curve_dir),
                      prepare=prepare, counters=counters, name="faces")


def _results_push(cfg: Config, ctx: zmq.Context, role: str, endpoint: str) -> zmq.Socket:
    """A stage's results to the single process that binds ``endpoint``: a small queue, dropped when that
    process is away (IMMEDIATE)."""
    return make_socket(ctx, "PUSH", role, endpoint, bind=False, hwm=cfg.push_hwm * 4, sock_buf=cfg.sock_buf,
                       curve_dir=cfg.curve_dir)


def _results_pull(cfg: Config, ctx: zmq.Context, role: str, endpoint: str) -> zmq.Socket:
    return make_socket(ctx, "PULL", role, endpoint, bind=True, hwm=cfg.push_hwm * 4, sock_buf=cfg.sock_buf,
                       max_msg=cfg.max_msg_bytes, curve_dir=cfg.curve_dir)


def detections_push(cfg: Config, ctx: zmq.Context) -> zmq.Socket:
    """Detect's results to annotate, which hands them to the classify workers."""
    return _results_push(cfg, ctx, "detections_push", cfg.detections_endpoint)


def detections_pull(cfg: Config, ctx: zmq.Context) -> zmq.Socket:
    return _results_pull(cfg, ctx, "detections_pull", cfg.detections_endpoint)


def faces_worker(cfg: Config, ctx: zmq.Context) -> "WorkerLink":
    return WorkerLink([(lambda: make_socket(ctx, "DEALER", "faces_worker", cfg.faces_endpoint, bind=False,
                                            hwm=CREDIT_HWM, sock_buf=cfg.sock_buf,
                                            max_msg=cfg.max_msg_bytes, curve_dir=cfg.curve_dir),
                        cfg.faces_endpoint)])


def predictions_push(cfg: Config, ctx: zmq.Context) -> zmq.Socket:
    return _results_push(cfg, ctx, "predictions_push", cfg.predictions_endpoint)


def predictions_sink(cfg: Config, ctx: zmq.Context) -> zmq.Socket:
    return _results_pull(cfg, ctx, "predictions_sink", cfg.predictions_endpoint)


def annotated_pub(cfg: Config, ctx: zmq.Context) -> zmq.Socket:
    return make_socket(ctx, "PUB", "annotated_pub", cfg.annotated_endpoint, bind=True, hwm=cfg.pub_hwm,
                       sock_buf=cfg.sock_buf, curve_dir=cfg.curve_dir)


def annotated_sub(cfg: Config, ctx: zmq.Context, hwm: Optional[int] = None) -> zmq.Socket:
    """The web's (or a test's) subscription to annotated frames."""
    return make_socket(ctx, "SUB", "annotated_sub", cfg.annotated_endpoint, bind=False,
                       hwm=hwm or cfg.pub_hwm, sock_buf=cfg.sock_buf, max_msg=cfg.max_msg_bytes,
                       curve_dir=cfg.curve_dir)


def heartbeat_pub(cfg: Config, ctx: zmq.Context) -> zmq.Socket:
    return make_socket(ctx, "PUB", "heartbeat_pub", cfg.heartbeat_endpoint, bind=False, hwm=16,
                       curve_dir=cfg.curve_dir)


def heartbeat_sub(cfg: Config, ctx: zmq.Context) -> zmq.Socket:
    """The one collector of every stage's heartbeats (binds)."""
    return make_socket(ctx, "SUB", "heartbeat_sub", cfg.heartbeat_endpoint, bind=True, hwm=1000,
                       max_msg=CONTROL_MAX_MSG, curve_dir=cfg.curve_dir)


# --- send / receive ------------------------------------------------------------------------------
def send_nowait(sock: zmq.Socket, data: bytes) -> bool:
    """Send without blocking; False when the peer queues are full (or no peer), the caller counts a drop."""
    try:
        sock.send(data, zmq.NOBLOCK, copy=len(data) < 65536)
        return True
    except zmq.Again:
        return False


def send_within(sock: zmq.Socket, data: bytes, timeout_ms: int) -> bool:
    """Send, waiting at most ``timeout_ms`` for room (a result is worth a short wait); False = dropped."""
    if sock.poll(timeout_ms, zmq.POLLOUT):
        return send_nowait(sock, data)
    return False


READY = b"\x01ready"
"""A worker's credit: 'I am free, send me one message' (the zguide's load-balancing pattern)."""


class Dispatcher:
    """A load-balancing broker (the zguide's LRU queue) with newest-only slots: the one way live work
    leaves a stage for a pool of workers (capture -> detect, browsers -> detect, detect -> classify).

    A thread owns a ROUTER (it binds; workers connect a ``WorkerLink``'s DEALER). A worker sends ``READY``
    when it is free; ``offer(key, item)`` (thread-safe) puts an item in its key's slot, replacing one that
    is still waiting there (counted ``superseded``); the slot waiting longest goes to a free worker, so
    nothing queues: at most one message per worker is in flight, and a slow pool skips frames instead of
    falling behind. ``prepare(item)`` turns an item into bytes at the moment it leaves (returning None
    drops it, e.g. when it is too old); job numbers assigned there count only what was really sent.

    ``affinity``: "any" gives a key's item to whichever worker is free (least recently used first);
    "pinned" keeps each key on one worker while that worker is alive (its last READY within
    ``credit_ttl_s``), spreading keys over workers, so per-key state in a worker stays whole.
    A credit that is not refreshed within ``credit_ttl_s`` expires (workers repeat READY while idle), and a
    worker that is gone (``ROUTER_MANDATORY``: unroutable) loses its credit at once, so a killed or frozen
    worker is never sent work."""

    COUNTERS = ("dispatched", "superseded", "dropped_old", "bad_credits", "lost_workers")

    def __init__(self, make: "Callable[[], zmq.Socket]", prepare: "Optional[Callable[[object], Optional[bytes]]]" = None,
                 counters: Optional[Counter] = None, affinity: str = "any", max_keys: int = 64,
                 credit_ttl_s: float = 3.0, name: str = "dispatch") -> None:
        if affinity not in ("any", "pinned"):
            raise ConfigError(f"{name}: affinity must be 'any' or 'pinned', not {affinity!r}")
        self._prepare = prepare or (lambda item: item)
        self.counters = counters if counters is not None else Counter()
        for k in self.COUNTERS:  # every key exists before the thread starts: readers iterate safely
            self.counters[k] += 0
        self.affinity, self.max_keys, self.credit_ttl_s, self.name = affinity, max_keys, credit_ttl_s, name
        self._lock = threading.Lock()
        self._slots: dict[object, tuple[object, float]] = {}  # key -> (item, waiting since)
        self._ready: dict[bytes, float] = {}  # worker identity -> time of its READY (insertion = LRU order)
        self._seen: dict[bytes, float] = {}  # worker identity -> last READY, busy or not (pinning)
        self._pins: dict[object, bytes] = {}
        self._wake_r, self._wake_w = _socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = False
        self._error: Optional[BaseException] = None
        self._ready_evt = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(make,), name=f"{name}-dispatcher", daemon=True)
        self._thread.start()
        self._ready_evt.wait(10)
        if self._error is not None:  # e.g. the endpoint is in use: the caller's configuration error
            raise self._error

    # --- the caller's side (any thread) ---
    def offer(self, key: object, item: object) -> None:
        with self._lock:
            if key in self._slots:
                self.counters["superseded"] += 1
                self._slots[key] = (item, self._slots[key][1])  # the slot keeps its place in line
            elif len(self._slots) >= self.max_keys:  # bounded: a flood of keys is dropped, not stored
                self.counters["superseded"] += 1
                return
            else:
                self._slots[key] = (item, time.time())
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the thread is awake anyway

    def workers(self) -> int:
        """Workers heard from within ``credit_ttl_s`` (busy or free)."""
        now = time.time()
        with self._lock:
            return sum(1 for t in self._seen.values() if now - t <= self.credit_ttl_s)

    def wait_for_workers(self, timeout_s: float, count: int = 1) -> bool:
        deadline = time.time() + timeout_s
        while self.workers() < count:
            if time.time() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def waiting(self) -> int:
        with self._lock:
            return len(self._slots)

    def close(self, drain_s: float = 0.0) -> None:
        """Stop; with ``drain_s``, first wait up to that long for waiting items to be taken (the last frames
        of a file)."""
        deadline = time.time() + drain_s
        while self.waiting() and time.time() < deadline and self._thread.is_alive():
            time.sleep(0.01)
        self._stop = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._thread.join(2.0)
        self._wake_r.close()
        self._wake_w.close()

    # --- the thread's side ---
    def _loop(self, make: "Callable[[], zmq.Socket]") -> None:
        try:
            sock = make()
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        except BaseException as exc:  # noqa: BLE001 - handed to the constructor's caller
            self._error = exc
            self._ready_evt.set()
            return
        self._ready_evt.set()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        try:
            while not self._stop:
                events = dict(poller.poll(100))
                if self._wake_r.fileno() in events:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                if sock in events:
                    self._credits(sock)
                self._dispatch(sock, time.time())
        except zmq.ContextTerminated:
            pass  # the owner ended the context without close(): nothing left to serve
        finally:
            sock.close(0)

    def _credits(self, sock: zmq.Socket) -> None:
        now = time.time()
        while True:
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(parts) != 2 or parts[1] != READY:
                self.counters["bad_credits"] += 1  # workers send nothing else: a stranger's bytes
                continue
            with self._lock:
                self._ready.pop(parts[0], None)
                self._ready[parts[0]] = now
                self._seen[parts[0]] = now
                if len(self._seen) > 4 * self.max_keys:  # identities come off the wire: bounded
                    for ident in sorted(self._seen, key=self._seen.__getitem__)[:len(self._seen) // 2]:
                        self._forget(ident)

    def _forget(self, ident: bytes) -> None:
        self._ready.pop(ident, None)
        self._seen.pop(ident, None)
        for k in [k for k, w in self._pins.items() if w == ident]:
            del self._pins[k]

    def _choose(self, key: object, now: float) -> Optional[bytes]:
        """The worker for ``key``'s item (with ``_lock`` held), or None to keep it waiting."""
        if self.affinity == "pinned":
            live = [w for w, t in self._seen.items() if now - t <= self.credit_ttl_s]
            load = Counter(w for w in self._pins.values() if w in live)
            pin = self._pins.get(key)
            if pin in live:
                light = min(live, key=lambda w: load[w])
                if load[light] < load[pin] - 1 and light in self._ready:  # a newer worker takes a share
                    self._pins[key] = light
                    return light
                return pin if pin in self._ready else None
            if not self._ready:
                return None
            pin = min(self._ready, key=lambda w: load[w])  # new or orphaned: the free worker with fewest keys
            self._pins[key] = pin
            if len(self._pins) > 4 * self.max_keys:  # keys come off the wire: keep the pins of waiting ones
                self._pins = {k: w for k, w in self._pins.items() if k in self._slots or k == key}
            return pin
        return next(iter(self._ready), None)  # least recently used

    def _dispatch(self, sock: zmq.Socket, now: float) -> None:
        while True:
            with self._lock:
                for ident in [w for w, t in self._ready.items() if now - t > self.credit_ttl_s]:
                    del self._ready[ident]  # a worker silent that long is frozen or gone
                if not self._ready or not self._slots:
                    return
                for key in sorted(self._slots, key=lambda k: self._slots[k][1]):  # waiting longest first
                    ident = self._choose(key, now)
                    if ident is not None:
                        break
                else:
                    return
                item, _ = self._slots.pop(key)
                del self._ready[ident]
            data = self._prepare(item)
            if data is None:
                self.counters["dropped_old"] += 1
                with self._lock:  # the credit was not used
                    self._ready[ident] = now
                continue
            try:
                sock.send_multipart([ident, data], zmq.NOBLOCK, copy=len(data) < 65536)
                self.counters["dispatched"] += 1
            except zmq.ZMQError as exc:  # EHOSTUNREACH: the worker is gone; EAGAIN: its pipe is full
                self.counters["lost_workers"] += 1
                log.debug("%s: worker %r unreachable (%s)", self.name, ident, exc)
                with self._lock:
                    self._forget(ident)
                    if key not in self._slots:  # the item goes to the next free worker
                        self._slots[key] = (item, now)


class WorkerLink:
    """A worker's end of one or more ``Dispatcher``s: a DEALER per dispatcher, each holding at most one
    credit. ``get(timeout_s)`` sends READY where no credit is out (and repeats it every ``refresh_s``
    while idle, so a restarted dispatcher learns of this worker) and returns the next message or None.
    Every DEALER is watched by a ``Redialer`` (an oversized message must not cut the worker off)."""

    def __init__(self, makers: "list[tuple[Callable[[], zmq.Socket], str]]", refresh_s: float = 1.0) -> None:
        self.socks = [make() for make, _ in makers]
        self.redials = [Redialer(s, [ep]) for s, (_, ep) in zip(self.socks, makers)]
        self.refresh_s = refresh_s
        self._asked = [0.0] * len(self.socks)  # when READY went out (0: no credit out)
        self._poller = zmq.Poller()
        for s in self.socks:
            self._poller.register(s, zmq.POLLIN)
        self._queue: "list[bytes]" = []

    def get(self, timeout_s: float) -> Optional[bytes]:
        if self._queue:
            return self._queue.pop(0)
        now = time.time()
        for i, s in enumerate(self.socks):
            self.redials[i].check()
            if now - self._asked[i] >= self.refresh_s:
                try:
                    s.send(READY, zmq.NOBLOCK)
                    self._asked[i] = now
                except zmq.Again:
                    pass
        events = dict(self._poller.poll(int(timeout_s * 1000)))
        for i, s in enumerate(self.socks):
            if s in events:
                self._asked[i] = 0.0  # the credit was used: ask again next time
                while True:
                    try:
                        self._queue.append(s.recv(zmq.NOBLOCK, copy=True))
                    except zmq.Again:
                        break
        return self._queue.pop(0) if self._queue else None

    def drain(self) -> "list[bytes]":
        """Messages already received but not yet taken (more than one only if a credit was repeated)."""
        out, self._queue = self._queue, []
        return out

    def close(self) -> None:
        for r in self.redials:
            r.close()
        for s in self.socks:
            s.close(0)


def recv_all(sock: zmq.Socket, timeout_ms: int, limit: int = 64) -> list[bytes]:
    """Wait up to ``timeout_ms`` for a message, then take every message already queued (at most
    ``limit``), oldest first; [] if none came."""
    if not sock.poll(timeout_ms, zmq.POLLIN):
        return []
    out = [sock.recv(copy=True)]
    while len(out) < limit:
        try:
            out.append(sock.recv(zmq.NOBLOCK, copy=True))
        except zmq.Again:
            break
    return out


def recv_nowait(sock: zmq.Socket, timeout_ms: int) -> Optional[bytes]:
    """One message if it arrives within ``timeout_ms``, else None."""
    if not sock.poll(timeout_ms, zmq.POLLIN):
        return None
    return sock.recv(copy=True)


# --- heartbeats ----------------------------------------------------------------------------------
def instance_name() -> str:
    return f"{_socket.gethostname()}:{os.getpid()}"


class Heartbeater:
    """Counters of one stage, published as a Heartbeat every ``interval`` seconds by ``tick()``;
    ``sources`` (capture) adds each source's own status and counters.

    Call ``note_input()`` when the stage receives work: after ``idle_after`` seconds without any, the
    status reads "idle" ("no input for N s"), so the page can tell a starved stage from a dead one."""

    def __init__(self, sock: zmq.Socket, stage: str, interval: float, idle_after: float = 0.0) -> None:
        self.sock, self.stage, self.interval, self.idle_after = sock, stage, interval, idle_after
        self.instance = instance_name()
        self.counters: Counter[str] = Counter()
        self.status, self.detail = "ok", ""
        self.sources: dict[str, SourceStatus] = {}
        self.last_input = time.time()
        self._next = 0.0

    def note_input(self) -> None:
        self.last_input = time.time()

    def tick(self, now: Optional[float] = None, force: bool = False) -> None:
        now = time.time() if now is None else now
        if not force and now < self._next:
            return
        self._next = now + self.interval
        status, detail = self.status, self.detail
        if self.idle_after and status == "ok" and now - self.last_input > self.idle_after:
            status, detail = "idle", f"no input for {now - self.last_input:.0f} s"
        hb = Heartbeat(stage=self.stage, instance=self.instance, t=now, interval=self.interval,
                       counters={k: int(v) for k, v in self.counters.items()}, status=status, detail=detail,
                       sources=dict(self.sources))
        send_nowait(self.sock, encode(hb))


# --- process plumbing ----------------------------------------------------------------------------
class Shutdown(BaseException):
    """Raised in the main thread on SIGTERM/SIGINT so a stage leaves its loop and closes its sockets
    (a BaseException, like KeyboardInterrupt, so a loop's ``except Exception`` never swallows it)."""


def install_signal_handlers() -> None:
    """SIGTERM and SIGINT (honcho's Ctrl-C) -> ``Shutdown``, once; a second signal does the same."""
    def _handler(signum, _frame):
        raise Shutdown(signal.Signals(signum).name)
    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)


def run_stage(stage: str, loop: Callable[[], None],
              final: tuple[type[Exception], ...] = ()) -> int:
    """A stage process's exit status around its loop: 0 when it ends or is told to stop (``Shutdown``,
    Ctrl-C); 2 with "<stage>: <what>" on stderr for a ``ConfigError`` or one of ``final`` (bad
    configuration: the supervisor does not restart it, ``shared.supervise.FINAL_CODES``). Anything else
    propagates, so the supervisor restarts the stage."""
    try:
        loop()
    except (Shutdown, KeyboardInterrupt):
        pass
    except (ConfigError, *final) as exc:
        print(f"{stage}: {exc}", file=sys.stderr)
        return 2
    return 0


def setup_logging(cfg: Config, stage: str) -> None:
    logging.basicConfig(level=getattr(logging, cfg.log_level.upper(), logging.INFO),
                        format=f"%(asctime)s {stage}[%(process)d] %(levelname)s %(name)s: %(message)s")
