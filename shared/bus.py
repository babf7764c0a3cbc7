"""ZeroMQ sockets of the pipeline, each named by its pattern and role (zguide style).

    capture ──PUB frames──▶ detect ──PUSH faces──▶ classify ×N ──PUSH predictions──▶ annotate ──PUB annotated──▶ web
            (bind)     (SUB connect) (bind)   (PULL connect)    (connect)          (PULL bind)     (bind)   (SUB connect)

    web (browser webcams) ──PUB web frames (bind)──▶ detect (the same SUB connects to both)
    every stage ──PUB heartbeat (connect)──▶ heartbeat_endpoint ◀── web: SUB (bind)

* Live data is PUB/SUB with a small high-water mark and small kernel buffers, and the receiver keeps
  the newest message (``NewestReceiver``: a thread drains the SUB socket into one slot per source), so
  a slow consumer skips frames instead of falling behind and latency never grows with time. No
  CONFLATE (it breaks multi-part and multi-source); dropping happens at the HWM and in NewestReceiver.
* Work is PUSH/PULL: detect is the ventilator, the classify workers pull, annotate is the sink; each
  message goes to exactly one worker. Sends are non-blocking (``send_nowait``): when every worker is
  busy, detect drops the frame and counts it instead of queueing.
* Every socket has linger 0, so Ctrl-C never hangs, and a 100 ms..1 s reconnect interval, so a killed
  and restarted stage is back within a second or two (the binding side may restart too).
* Nothing from a socket is trusted: every receiving socket has ZMQ_MAXMSGSIZE (``cfg.max_msg_bytes``;
  64 kB for heartbeats and subscriptions), and a connecting one is watched by a ``Redialer`` because libzmq
  does not reconnect after the protocol error an oversized message is. Detect->classify is PUSH->PULL with
  a high-water mark of 1 (``cfg.faces_hwm``) and 8 kB kernel buffers, so about one frame waits per worker.
* ``cfg.curve_dir`` turns on CURVE for every socket (``shared.keys``): the binding side is the server.

For the web engineer:
    Browser frames: bind a PUB at ``cfg.web_frames_endpoint`` and send ``messages.Frame`` with a
    ``source_id`` of your own (e.g. "browser-<id>"); detect keeps the newest frame per source_id.
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
import threading
import time
from collections import Counter
from typing import Callable, Optional

import zmq

from shared.config import Config, ConfigError
from shared.messages import Heartbeat, SourceStatus, encode

log = logging.getLogger(__name__)

CONTROL_MAX_MSG = 65536
"""ZMQ_MAXMSGSIZE of sockets that receive only small messages (heartbeats, subscriptions)."""

_PATTERNS = {"XPUB": zmq.XPUB, "PUB": zmq.PUB, "SUB": zmq.SUB, "PUSH": zmq.PUSH, "PULL": zmq.PULL}


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
def frames_pub(cfg: Config, ctx: zmq.Context) -> zmq.Socket:
    """XPUB (a PUB that also sees subscriptions), so capture can wait for detect: ``wait_for_subscriber``."""
    return make_socket(ctx, "XPUB", "frames_pub", cfg.frames_endpoint, bind=True, hwm=cfg.pub_hwm,
                       sock_buf=cfg.sock_buf, max_msg=CONTROL_MAX_MSG, curve_dir=cfg.curve_dir)


def frames_sub(cfg: Config, ctx: zmq.Context) -> zmq.Socket:
    """Detect's SUB: connects to capture's frames and to the web's browser frames (``web_frames_endpoint``)."""
    sock = make_socket(ctx, "SUB", "frames_sub", cfg.frames_endpoint, bind=False, hwm=cfg.pub_hwm,
                       sock_buf=cfg.sock_buf, max_msg=cfg.max_msg_bytes, curve_dir=cfg.curve_dir)
    if cfg.web_frames_endpoint:
        sock.connect(cfg.web_frames_endpoint)
    return sock


def faces_ventilator(cfg: Config, ctx: zmq.Context) -> zmq.Socket:
    return make_socket(ctx, "PUSH", "faces_ventilator", cfg.faces_endpoint, bind=True, hwm=cfg.faces_hwm,
                       sock_buf=cfg.faces_sock_buf, curve_dir=cfg.curve_dir)


def faces_worker(cfg: Config, ctx: zmq.Context) -> zmq.Socket:
    return make_socket(ctx, "PULL", "faces_worker", cfg.faces_endpoint, bind=False, hwm=cfg.faces_hwm,
                       sock_buf=cfg.faces_sock_buf, max_msg=cfg.max_msg_bytes, curve_dir=cfg.curve_dir)


def predictions_push(cfg: Config, ctx: zmq.Context) -> zmq.Socket:
    return make_socket(ctx, "PUSH", "predictions_push", cfg.predictions_endpoint, bind=False,
                       hwm=cfg.push_hwm * 4, sock_buf=cfg.sock_buf, curve_dir=cfg.curve_dir)


def predictions_sink(cfg: Config, ctx: zmq.Context) -> zmq.Socket:
    return make_socket(ctx, "PULL", "predictions_sink", cfg.predictions_endpoint, bind=True,
                       hwm=cfg.push_hwm * 4, sock_buf=cfg.sock_buf, max_msg=cfg.max_msg_bytes,
                       curve_dir=cfg.curve_dir)


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


def wait_for_subscriber(xpub: zmq.Socket, timeout_s: float, count: int = 1) -> bool:
    """Block until ``count`` subscriptions reached an XPUB socket (True) or ``timeout_s`` passed (False)."""
    xpub.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscriber's subscription, not only the first
    deadline, seen = time.time() + timeout_s, 0
    while seen < count:
        left = deadline - time.time()
        if left <= 0 or not xpub.poll(int(left * 1000) + 1, zmq.POLLIN):
            return False
        if xpub.recv()[:1] == b"\x01":
            seen += 1
    return True


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


class NewestReceiver:
    """A thread that drains a SUB socket as fast as messages come and keeps only the newest message per
    source, so a slow stage always gets the latest frame (a PUB drops *new* messages at its HWM, so
    draining in the slow loop itself would hand it an old one).

    ``key(data)`` names a message's source (default: one slot for all); with several sources (the
    capture process and browsers) each keeps its own newest frame and ``get`` serves the one waiting
    longest, so no source starves another. ``get(timeout_s)`` -> (message or None, skipped since last);
    ``arrived_at`` is when the returned message reached this process (time.time()), so a stage's stamp
    can separate transport (the hop) from waiting for the stage to be free (the stage's own time)."""

    def __init__(self, ctx: zmq.Context, make: "Callable[[], zmq.Socket]",
                 key: "Optional[Callable[[bytes], object]]" = None, max_sources: int = 64,
                 endpoints: "Optional[list[str]]" = None) -> None:
        self._make, self._ctx, self._key, self.max_sources = make, ctx, key, max_sources
        self._endpoints = list(endpoints or [])
        self._cond = threading.Condition()
        self._slots: dict[object, tuple[bytes, float, float]] = {}  # key -> (data, arrived, waiting since)
        self._skipped = 0
        self.arrived_at = 0.0
        self._stop = False
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="newest-receiver", daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _loop(self) -> None:
        sock = self._make()
        redial = Redialer(sock, self._endpoints)
        self._ready.set()
        try:
            while not self._stop:
                redial.check()
                if not sock.poll(50, zmq.POLLIN):
                    continue
                data = sock.recv(copy=True)
                arrived = time.time()
                k = self._key(data) if self._key else None
                with self._cond:
                    since = arrived
                    if k in self._slots:
                        self._skipped += 1
                        since = self._slots[k][2]  # the slot keeps its place in line
                    elif len(self._slots) >= self.max_sources:  # bounded: a flood of source ids waits
                        self._skipped += 1
                        continue
                    self._slots[k] = (data, arrived, since)
                    self._cond.notify()
        finally:
            redial.close()
            sock.close(0)

    def get(self, timeout_s: float) -> tuple[Optional[bytes], int]:
        with self._cond:
            if not self._slots:
                self._cond.wait(timeout_s)
            if not self._slots:
                return None, 0
            k = min(self._slots, key=lambda j: self._slots[j][2])
            data, self.arrived_at, _ = self._slots.pop(k)
            skipped, self._skipped = self._skipped, 0
            return data, skipped

    def close(self) -> None:
        self._stop = True
        self._thread.join(1.0)


def recv_newest(sock: zmq.Socket, timeout_ms: int) -> tuple[Optional[bytes], int]:
    """Wait up to ``timeout_ms`` for a message, then drain the queue: (newest message or None, skipped)."""
    if not sock.poll(timeout_ms, zmq.POLLIN):
        return None, 0
    data = sock.recv(copy=True)
    skipped = 0
    while True:
        try:
            data = sock.recv(zmq.NOBLOCK, copy=True)
            skipped += 1
        except zmq.Again:
            return data, skipped


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


def setup_logging(cfg: Config, stage: str) -> None:
    logging.basicConfig(level=getattr(logging, cfg.log_level.upper(), logging.INFO),
                        format=f"%(asctime)s {stage}[%(process)d] %(levelname)s %(name)s: %(message)s")
