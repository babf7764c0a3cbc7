"""Optional ZeroMQ CURVE (FERLIVE_CURVE_DIR): the pipeline's sockets with keys talk (the load-balancing links too); a peer without the
client's secret key can neither subscribe to a binding PUB nor inject into a binding PULL."""
from __future__ import annotations

import time

import pytest
import zmq

from services.web.testing import pipeline_config
from shared import bus, keys
from shared.config import ConfigError


@pytest.fixture
def curve(tmp_path):
    keys.generate(tmp_path / "keys")
    cfg = pipeline_config(curve_dir=str(tmp_path / "keys"))
    ctx = zmq.Context()
    yield cfg, ctx, tmp_path
    keys.stop_authenticator(ctx)
    ctx.destroy(linger=0)


def _recv(sock: zmq.Socket, timeout_s: float) -> bytes | None:
    return sock.recv() if sock.poll(int(timeout_s * 1000)) else None


def test_subscribers_need_the_client_key(curve):
    cfg, ctx, tmp = curve
    pub = bus.annotated_pub(cfg, ctx)
    good = bus.annotated_sub(cfg, ctx)
    plain = bus.make_socket(ctx, "SUB", "intruder", cfg.annotated_endpoint, bind=False, hwm=10)
    keys.generate(tmp / "other")  # a key pair the authenticator does not know
    stranger = bus.make_socket(ctx, "SUB", "stranger", cfg.annotated_endpoint, bind=False, hwm=10,
                               curve_dir=str(tmp / "other"))
    got = {"good": 0, "plain": 0, "stranger": 0}
    t_end = time.time() + 3
    while time.time() < t_end and got["good"] < 5:
        pub.send(b"secret frame")
        for name, s in (("good", good), ("plain", plain), ("stranger", stranger)):
            while _recv(s, 0.02) is not None:
                got[name] += 1
    assert got["good"] >= 5 and got["plain"] == 0 and got["stranger"] == 0, got


def test_injection_needs_the_client_key(curve):
    cfg, ctx, _ = curve
    sink = bus.predictions_sink(cfg, ctx)
    plain = bus.make_socket(ctx, "PUSH", "intruder", cfg.predictions_endpoint, bind=False, hwm=10)
    for _ in range(5):
        plain.send(b"injected", zmq.NOBLOCK) if plain.poll(0, zmq.POLLOUT) else None
        time.sleep(0.1)
    assert _recv(sink, 0.5) is None, "a peer without keys got a message in"
    good = bus.predictions_push(cfg, ctx)
    assert bus.send_within(good, b"hello", 3000)
    assert _recv(sink, 3) == b"hello"


def test_missing_keys_are_a_config_error(tmp_path):
    cfg = pipeline_config(curve_dir=str(tmp_path / "nowhere"))
    ctx = zmq.Context()
    try:
        with pytest.raises(ConfigError, match="shared.keys"):
            bus.annotated_pub(cfg, ctx)
    finally:
        ctx.destroy(linger=0)


def test_workers_with_keys_get_work_and_strangers_get_none(curve):
    """The load-balancing links (capture/detect -> workers) under CURVE: a keyed worker's credit reaches
    the dispatcher and it is handed frames; a worker with another key pair is never heard (no credit)."""
    cfg, ctx, tmp = curve
    disp = bus.frames_dispatcher(cfg, ctx)
    good = bus.frames_worker(cfg.replace(web_frames_endpoint=""), ctx)
    keys.generate(tmp / "other")
    stranger = bus.frames_worker(cfg.replace(web_frames_endpoint="", curve_dir=str(tmp / "other")), ctx)
    try:
        stranger.get(0.05)
        assert good.get(0.05) is None
        assert disp.wait_for_workers(5)
        disp.offer("cam", b"frame")
        assert good.get(3) == b"frame"
        disp.offer("cam", b"frame 2")
        assert stranger.get(1) is None and disp.workers() == 1
        assert good.get(3) == b"frame 2"
    finally:
        for x in (disp, good, stranger):
            x.close()
