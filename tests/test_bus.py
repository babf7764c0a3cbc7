"""Bus: sockets by role; newest-only PUB/SUB; PUSH/PULL spreads work once; non-blocking sends;
heartbeats reach the one collector; closing never hangs."""
from __future__ import annotations

import tempfile
import time

import pytest
import zmq

from shared import bus
from shared.config import Config, ConfigError
from shared.messages import Heartbeat, decode


@pytest.fixture
def cfg():
    d = tempfile.mkdtemp(prefix="flbus", dir="/tmp")
    names = ("frames", "faces", "predictions", "annotated", "heartbeat")
    return Config(**{f"{n}_endpoint": f"ipc://{d}/{n}" for n in names}, heartbeat_interval=0.05,
                  web_frames_endpoint="")


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def wait_recv(sock, timeout_s=2.0):
    return bus.recv_nowait(sock, int(timeout_s * 1000))


def test_slow_subscriber_gets_the_newest_frame(cfg, ctx):
    pub = bus.frames_pub(cfg, ctx)
    newest = bus.NewestReceiver(ctx, lambda: bus.frames_sub(cfg, ctx))
    assert bus.wait_for_subscriber(pub, 2.0)
    time.sleep(0.1)
    for i in range(100):
        bus.send_nowait(pub, str(i).encode())
        time.sleep(0.001)  # a 1 kHz camera
    time.sleep(0.2)  # the slow consumer wakes up
    data, skipped = newest.get(1.0)
    assert data == b"99"  # the newest, not the oldest
    assert skipped > 50  # the others were skipped, not queued
    assert newest.get(0.01) == (None, 0)
    newest.close()


def test_push_pull_spreads_work_exactly_once(cfg, ctx):
    vent = bus.faces_ventilator(cfg, ctx)
    workers = [bus.faces_worker(cfg, ctx) for _ in range(2)]
    sink = bus.predictions_sink(cfg, ctx)
    results = [bus.predictions_push(cfg, ctx) for _ in range(2)]
    time.sleep(0.2)
    sent = [i for i in range(40) if bus.send_nowait(vent, str(i).encode()) or time.sleep(0.005)]
    got: list[bytes] = []
    per_worker = [0, 0]
    deadline = time.time() + 3
    while time.time() < deadline and len(got) < len(sent):
        for k, w in enumerate(workers):
            data = bus.recv_nowait(w, 5)
            if data is not None:
                per_worker[k] += 1
                assert bus.send_within(results[k], data, 1000)
        while (d := bus.recv_nowait(sink, 0)) is not None:
            got.append(d)
    assert sorted(int(x) for x in got) == sent  # none lost, none twice
    assert min(per_worker) > 0  # both workers took a share


def test_send_nowait_drops_instead_of_blocking(cfg, ctx):
    vent = bus.faces_ventilator(cfg, ctx)  # no worker connected
    t0 = time.time()
    assert bus.send_nowait(vent, b"x") is False
    push = bus.predictions_push(cfg, ctx)  # connect side, no sink bound (IMMEDIATE)
    assert bus.send_nowait(push, b"x") is False
    assert time.time() - t0 < 0.5


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


def test_close_with_pending_messages_does_not_hang(cfg):
    c = zmq.Context()
    push = bus.predictions_push(cfg, c)
    bus.faces_ventilator(cfg, c)
    t0 = time.time()
    c.destroy()  # linger 0 everywhere
    assert time.time() - t0 < 1.0
    assert push.closed


def test_newest_per_source_and_no_source_starves(cfg, ctx):
    pub = bus.frames_pub(cfg, ctx)
    newest = bus.NewestReceiver(ctx, lambda: bus.frames_sub(cfg, ctx), key=lambda d: d[:1])
    assert bus.wait_for_subscriber(pub, 2.0)
    for i in range(30):
        bus.send_nowait(pub, b"a%d" % i)
        time.sleep(0.001)
    time.sleep(0.01)
    bus.send_nowait(pub, b"b0")
    time.sleep(0.01)
    bus.send_nowait(pub, b"a99")
    time.sleep(0.2)
    assert newest.get(1.0)[0] == b"a99"  # a waited longest (its slot keeps its place), newest of a
    assert newest.get(1.0)[0] == b"b0"   # b is not starved by a's stream
    newest.close()


def test_detect_subscribes_to_capture_and_browser_frames(cfg, ctx):
    web = bus.make_socket(ctx, "PUB", "web", "ipc://" + cfg.frames_endpoint[6:] + "-web", bind=True, hwm=4)
    cfg = cfg.replace(web_frames_endpoint=web.last_endpoint.decode())
    sub = bus.frames_sub(cfg, ctx)
    time.sleep(0.3)
    web.send(b"from-browser")
    assert bus.recv_nowait(sub, 2000) == b"from-browser"


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


def test_arrival_time_is_the_returned_messages_own(cfg, ctx):
    pub = bus.frames_pub(cfg, ctx)
    newest = bus.NewestReceiver(ctx, lambda: bus.frames_sub(cfg, ctx))
    assert bus.wait_for_subscriber(pub, 2.0)
    bus.send_nowait(pub, b"old")
    time.sleep(0.2)
    t_send = time.time()
    bus.send_nowait(pub, b"new")
    time.sleep(0.1)
    data, skipped = newest.get(1.0)
    assert (data, skipped) == (b"new", 1) and newest.arrived_at >= t_send  # hops never go negative
    newest.close()
