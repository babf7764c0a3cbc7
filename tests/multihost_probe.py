"""Clients that tests/test_multihost.py runs inside the test hosts' namespaces (``ip netns exec``).

    python tests/multihost_probe.py watch --health http://10.213.0.13:8000/api/health
        the web host's observer: subscribes to annotate's output with the pipeline's own client
        (FERLIVE_ANNOTATED_ENDPOINT, FERLIVE_CURVE_DIR) and polls the web process's /api/health;
        prints one JSON line per annotated frame and per health answer
    python tests/multihost_probe.py intrude --keys none|DIR --seconds 3 --subscribe EP --push EP \
        --heartbeat EP --handshake EP [EP ...] --instance NAME [--answer-within 20]
        a peer with no keys (none) or with the key pair in DIR: subscribes, injects garbage into a
        PULL, forges heartbeats, and for every endpoint connects one socket of each type with a
        monitor; for --seconds, then on until every handshake has an outcome (--answer-within at most);
        prints one JSON line: messages received, each socket's handshake outcome, the monitor events
        of any socket still without one
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.request
from pathlib import Path

import zmq
from zmq.utils.monitor import recv_monitor_message

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TYPES = {"PUB": zmq.PUB, "SUB": zmq.SUB, "PUSH": zmq.PUSH, "PULL": zmq.PULL, "DEALER": zmq.DEALER,
         "ROUTER": zmq.ROUTER}
"""Every peer type a pipeline socket can have (SUB for XPUB, PUB for SUB, DEALER for ROUTER, ...)."""
FAILED = {zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "failed", zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "failed_protocol",
          zmq.EVENT_HANDSHAKE_FAILED_AUTH: "failed_auth"}
EVENT_NAMES = {getattr(zmq, n): n[6:].lower() for n in dir(zmq) if n.startswith("EVENT_") and
               n not in ("EVENT_ALL", "EVENT_ALL_V1", "EVENT_ALL_V2") and isinstance(getattr(zmq, n), int)}


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def watch(health_url: str, every_s: float) -> None:
    from shared import bus
    from shared.config import Config
    from shared.messages import decode

    cfg = Config.from_env()
    ctx = zmq.Context()
    sub = bus.annotated_sub(cfg, ctx, hwm=10000)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy: it is not on this LAN

    def poll_health() -> None:
        while True:
            try:
                with opener.open(health_url, timeout=2) as r:
                    emit({"kind": "health", "t": time.time(), "body": json.load(r)})
            except OSError as exc:
                emit({"kind": "health_error", "t": time.time(), "error": str(exc)})
            time.sleep(every_s)

    threading.Thread(target=poll_health, daemon=True).start()
    emit({"kind": "ready", "t": time.time()})
    while True:
        if not sub.poll(200):
            continue
        ann = decode(sub.recv(), expect="annotated")
        emit({"kind": "annotated", "t": time.time(), "source": ann.frame.source_id, "seq": ann.frame.seq,
              "stamps": [s[0] for s in ann.frame.stamps], "emotions": [r.emotion for r in ann.results],
              "raw_scores": [r.raw_scores for r in ann.results]})


def _secure(sock: zmq.Socket, keys: str) -> None:
    """A CURVE client with the key pair and server key in ``keys`` ('none': the NULL mechanism)."""
    if keys == "none":
        return
    import zmq.auth
    public, secret = zmq.auth.load_certificate(str(Path(keys) / "client.key_secret"))
    server_public, _ = zmq.auth.load_certificate(str(Path(keys) / "server.key"))
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, server_public


def intrude(a: argparse.Namespace) -> None:
    from shared.messages import Heartbeat, encode

    ctx = zmq.Context()

    def sock(kind: int, endpoint: str, monitor: bool = False) -> tuple[zmq.Socket, "zmq.Socket | None"]:
        s = ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        _secure(s, a.keys)
        if kind == zmq.SUB:
            s.setsockopt(zmq.SUBSCRIBE, b"")
        # The monitor before the connection: libzmq's IO thread can connect, exchange greetings and fail the
        # handshake before connect() returns here, and after a protocol error it never dials again, so a
        # monitor attached afterwards could miss the one answer there will be.
        mon = s.get_monitor_socket() if monitor else None
        s.connect(endpoint)
        return s, mon

    sub, _ = sock(zmq.SUB, a.subscribe)
    push, _ = sock(zmq.PUSH, a.push)
    beat, _ = sock(zmq.PUB, a.heartbeat)
    probes = {}  # (endpoint, type) -> (socket, monitor)
    for ep in a.handshake:
        for name, kind in TYPES.items():
            probes[(ep, name)] = sock(kind, ep, monitor=True)
    outcome = {k: "no_answer" for k in probes}
    events: dict[tuple[str, str], list[str]] = {k: [] for k in probes}
    received = sent = 0
    start = time.time()
    end, answer_by = start + a.seconds, start + max(a.seconds, a.answer_within)
    # At least ``seconds`` of subscribing, injecting and forging; then on until every probe has its answer
    # (a loaded host can take seconds to accept a connection: SYNs are retried after 1 s, 3 s, 7 s).
    while time.time() < end or (time.time() < answer_by and "no_answer" in outcome.values()):
        hb = Heartbeat(stage="capture", instance=a.instance, t=time.time(), interval=0.3,
                       counters={"frames_out": 1}, status="ok", detail="forged")
        for s, data in ((push, b"\x00 injected by " + a.instance.encode()), (beat, encode(hb))):
            try:
                s.send(data, zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                pass
        t_next = time.time() + 0.1
        while (left := t_next - time.time()) > 0:
            if sub.poll(int(left * 1000) + 1):
                sub.recv()
                received += 1
        for key, (_, mon) in probes.items():
            while mon.poll(0):
                ev = recv_monitor_message(mon)["event"]
                if len(events[key]) < 20:
                    events[key].append(EVENT_NAMES.get(ev, str(ev)))
                if ev == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    outcome[key] = "ok"
                elif ev in FAILED and outcome[key] != "ok":
                    outcome[key] = FAILED[ev]
    handshakes: dict[str, dict[str, str]] = {}
    for (ep, name), result in outcome.items():
        handshakes.setdefault(ep, {})[name] = result
    unanswered = {f"{ep} {name}": events[(ep, name)] for (ep, name), r in outcome.items() if r == "no_answer"}
    emit({"keys": a.keys, "received": received, "sent": sent, "handshakes": handshakes,
          "seconds": round(time.time() - start, 2), "unanswered_events": unanswered})
    for s, mon in probes.values():
        s.disable_monitor()
        mon.close(0)
    ctx.destroy(linger=0)


def main() -> None:
    p = argparse.ArgumentParser(prog="python tests/multihost_probe.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("watch")
    w.add_argument("--health", required=True)
    w.add_argument("--every-s", type=float, default=0.3)
    i = sub.add_parser("intrude")
    i.add_argument("--keys", default="none")
    i.add_argument("--seconds", type=float, default=3.0)
    i.add_argument("--answer-within", type=float, default=20.0,
                   help="go on past --seconds until every probe's handshake has failed or succeeded, this long")
    i.add_argument("--subscribe", required=True)
    i.add_argument("--push", required=True)
    i.add_argument("--heartbeat", required=True)
    i.add_argument("--handshake", nargs="+", default=[])
    i.add_argument("--instance", default="intruder:1")
    a = p.parse_args()
    watch(a.health, a.every_s) if a.cmd == "watch" else intrude(a)


if __name__ == "__main__":
    main()
