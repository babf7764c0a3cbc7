"""Bus: sockets by role; the load-balancing Dispatcher (newest per source, one credit per worker, every
item to exactly one worker, dead or frozen workers skipped, pinning); heartbeats reach the one collector;
closing never hangs."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import zmq

from shared import bus
from shared.config import Config, ConfigError
from shared.messages import Heartbeat, decode

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg():
    d = tempfile.mkdtemp(prefix="flbus", dir="/tmp")
    names = ("frames", "detections", "faces", "predictions", "annotated", "heartbeat")
    return Config(**{f"{n}_endpoint": f"ipc://{d}/{n}" for n in names}, heartbeat_interval=0.05,
                  web_frames_endpoint="")


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    while _open:  # dispatchers and links a test made: closed before the context goes
        _open.pop().close()
    c.destroy(linger=0)


_open: list = []


def dispatcher(cfg, ctx, **kw):
    d = bus.frames_dispatcher(cfg, ctx, **kw)
    _open.append(d)
    return d


def worker(cfg, ctx):
    w = bus.frames_worker(cfg, ctx)
    _open.append(w)
    return w


def wait_recv(sock, timeout_s=2.0):
    return bus.recv_nowait(sock, int(timeout_s * 1000))


def test_a_busy_worker_gets_the_newest_frame_and_nothing_queues(cfg, ctx):
    disp, w = dispatcher(cfg, ctx), worker(cfg, ctx)
    assert w.get(0.05) is None  # sends the credit
    assert disp.wait_for_workers(2.0)
    time.sleep(0.1)
    first = None
    for i in range(100):  # a 1 kHz camera; the worker takes one frame, then is busy
        disp.offer("cam", str(i).encode())
        time.sleep(0.001)
        if first is None:
            first = w.get(0)
    time.sleep(0.1)
    got = w.get(1.0)  # free again: asks, and gets the newest, not the oldest
    assert got == b"99"
    assert disp.counters["superseded"] > 50  # the others were replaced, never queued
    assert w.get(0.2) is None and disp.waiting() == 0


def test_every_item_goes_to_exactly_one_worker(cfg, ctx):
    disp = dispatcher(cfg, ctx)
    workers = [worker(cfg, ctx) for _ in range(2)]
    for w in workers:
        w.get(0.01)
    assert disp.wait_for_workers(2.0, 2)
    got, per_worker = [], [0, 0]
    for i in range(40):
        disp.offer(i, str(i).encode())  # 40 sources: nothing is superseded
    deadline = time.time() + 5
    while time.time() < deadline and len(got) < 40:
        for k, w in enumerate(workers):
            data = w.get(0.005)
            if data is not None:
                per_worker[k] += 1
                got.append(int(data))
    assert sorted(got) == list(range(40))  # none lost, none twice
    assert min(per_worker) > 0  # both workers took a share


def test_no_source_starves_another(cfg, ctx):
    disp, w = dispatcher(cfg, ctx), worker(cfg, ctx)
    for i in range(30):
        disp.offer("a", b"a%d" % i)
    time.sleep(0.01)
    disp.offer("b", b"b0")
    time.sleep(0.01)
    disp.offer("a", b"a99")
    assert w.get(2.0) == b"a99"  # a waited longest (its slot keeps its place), newest of a
    assert w.get(2.0) == b"b0"   # b is not starved by a's stream


def test_a_killed_or_frozen_worker_is_never_sent_work(cfg, ctx):
    disp = dispatcher(cfg, ctx)
    disp.credit_ttl_s = 0.5
    dead, frozen, alive = (bus.frames_worker(cfg, ctx) for _ in range(3))
    _open.append(alive)
    for w in (dead, frozen, alive):
        w.get(0.01)
    assert disp.wait_for_workers(2.0, 3)
    dead.close()  # gone: its credit is unroutable
    time.sleep(0.8)  # frozen never refreshes its credit; alive does (every get)
    alive.refresh_s = 0.1
    assert alive.get(0.05) is None
    for i in range(5):
        disp.offer(i, b"%d" % i)
    got = []
    deadline = time.time() + 3
    while len(got) < 5 and time.time() < deadline:
        if (d := alive.get(0.05)) is not None:
            got.append(d)
    assert sorted(got) == [b"0", b"1", b"2", b"3", b"4"]  # all of it reached the live worker
    assert frozen.drain() == [] and frozen._poller.poll(0) == []
    frozen.close()


def test_pinned_sources_stay_on_their_worker(cfg, ctx):
    disp = dispatcher(cfg, ctx)
    disp.affinity = "pinned"
    workers = [worker(cfg, ctx) for _ in range(2)]
    for w in workers:
        w.get(0.01)
    assert disp.wait_for_workers(2.0, 2)
    seen: dict[int, set] = {0: set(), 1: set()}
    for rnd in range(6):
        for src in (b"a", b"b"):
            disp.offer(src, src + b"%d" % rnd)
        deadline = time.time() + 2
        n = 0
        while n < 2 and time.time() < deadline:
            for k, w in enumerate(workers):
                if (d := w.get(0.01)) is not None:
                    seen[k].add(d[:1])
                    n += 1
    assert seen[0] and seen[1] and not (seen[0] & seen[1])  # each source on one worker, both used


def test_detect_asks_at_capture_and_at_the_browsers(cfg, ctx):
    from services.web.hub import web_frames_dispatcher
    cfg = cfg.replace(web_frames_endpoint="ipc://" + cfg.frames_endpoint[6:] + "-web")
    web = web_frames_dispatcher(cfg, ctx)
    _open.append(web)
    w = worker(cfg, ctx)
    w.get(0.01)
    web.offer("browser-1", b"from-browser")
    assert w.get(2.0) == b"from-browser"


def test_credits_from_strangers_are_counted_not_trusted(cfg, ctx):
    disp = dispatcher(cfg, ctx)
    stranger = bus.make_socket(ctx, "DEALER", "stranger", cfg.frames_endpoint, bind=False, hwm=4)
    stranger.send(b"give me everything")
    deadline = time.time() + 2
    while disp.counters["bad_credits"] == 0 and time.time() < deadline:
        time.sleep(0.01)
    assert disp.counters["bad_credits"] == 1 and disp.workers() == 0
    disp.offer("cam", b"frame")
    assert bus.recv_nowait(stranger, 200) is None  # no credit, no frame
    stranger.close(0)


def test_close_with_pending_messages_does_not_hang(cfg):
    c = zmq.Context()
    push = bus.predictions_push(cfg, c)
    disp = bus.faces_dispatcher(cfg, c, prepare=lambda x: x)
    disp.offer("cam", b"x")
    t0 = time.time()
    disp.close()
    c.destroy()  # linger 0 everywhere
    assert time.time() - t0 < 3.0
    assert push.closed


def test_heartbeats_reach_the_collector(cfg, ctx):
    collector = bus.heartbeat_sub(cfg, ctx)
    hb = bus.Heartbeater(bus.heartbeat_pub(cfg, ctx), "detect", cfg.heartbeat_interval)
    hb.counters["frames_in"] += 5
    hb.status, hb.detail = "stalled", "no frames for 2 s"
    msg = None
    deadline = time.time() + 3
    while msg is None and time.time() < deadline:  # the first beats may go before the connection is up
        hb.tick()
        data = bus.recv_nowait(collector, 20)
        msg = decode(data, expect="heartbeat") if data else None
    assert isinstance(msg, Heartbeat)
    assert (msg.stage, msg.counters, msg.status) == ("detect", {"frames_in": 5}, "stalled")
    assert msg.instance == bus.instance_name()


def test_bind_conflict_names_the_endpoint(cfg, ctx):
    probe = bus.make_socket(ctx, "PUB", "probe", "tcp://127.0.0.1:*", bind=True, hwm=1)
    cfg = cfg.replace(annotated_endpoint=probe.last_endpoint.decode())
    # a taken port is bad configuration (the stage exits 2 with this line; the supervisor does not retry)
    with pytest.raises(ConfigError, match="annotated_pub: cannot bind .* in use .*another ferlive pipeline"):
        bus.annotated_pub(cfg, ctx)


def test_heartbeat_reports_idle_without_input(cfg, ctx):
    collector = bus.heartbeat_sub(cfg, ctx)
    hb = bus.Heartbeater(bus.heartbeat_pub(cfg, ctx), "classify", 0.01, idle_after=0.1)
    hb.last_input -= 5
    seen = []
    deadline = time.time() + 3
    while not seen and time.time() < deadline:
        hb.tick()
        if (d := bus.recv_nowait(collector, 20)) is not None:
            seen.append(decode(d, expect="heartbeat"))
    assert seen[0].status == "idle" and seen[0].detail.startswith("no input for")
    hb.note_input()
    hb.tick(force=True)
    assert decode(bus.recv_nowait(collector, 1000)).status == "ok"


def test_run_stage_exit_status(capsys):
    """0 when the loop ends or is told to stop; 2 and "<stage>: <what>" for bad configuration (final for the
    supervisor); anything else reaches the caller, so the supervisor restarts the stage."""
    def raising(exc):
        def loop():
            raise exc
        return loop

    assert bus.run_stage("detect", lambda: None) == 0
    assert bus.run_stage("detect", raising(bus.Shutdown("SIGTERM"))) == 0
    assert bus.run_stage("detect", raising(KeyboardInterrupt())) == 0
    assert bus.run_stage("detect", raising(ConfigError("jpeg_quality=0: must be 1-100"))) == 2
    assert capsys.readouterr().err == "detect: jpeg_quality=0: must be 1-100\n"
    assert bus.run_stage("capture", raising(FileNotFoundError("no.mp4")), final=(FileNotFoundError,)) == 2
    assert capsys.readouterr().err == "capture: no.mp4\n"
    with pytest.raises(FileNotFoundError):
        bus.run_stage("detect", raising(FileNotFoundError("no.mp4")))
    with pytest.raises(RuntimeError):
        bus.run_stage("detect", raising(RuntimeError("a bug")))


@pytest.mark.parametrize("stage", ["capture", "detect", "classify", "annotate"])
def test_a_stage_with_unreadable_keys_exits_2_and_says_why(stage, tmp_path):
    """A real stage process: its sockets' CURVE keys are missing, so it stops with status 2 (the supervisor
    does not restart it) and names the stage, the key file and the command that makes the keys."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), FERLIVE_CURVE_DIR=str(tmp_path / "nowhere"))
    endpoints = {f"FERLIVE_{n.upper()}_ENDPOINT": f"ipc://{tmp_path}/{n}"
                 for n in ("frames", "detections", "faces", "predictions", "annotated", "heartbeat")}
    args = ["--source", "demo"] if stage == "capture" else []
    r = subprocess.run([sys.executable, "-m", f"services.{stage}", *args], env={**env, **endpoints},
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"{stage}: CURVE key "), r.stderr
    assert "python -m shared.keys" in r.stderr
