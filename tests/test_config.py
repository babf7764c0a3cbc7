"""Config: defaults, FERLIVE_* env vars, CLI flags over env, narrow errors."""
from __future__ import annotations

import pytest

from shared.config import Config, ConfigError


def test_defaults_are_local_tcp_and_small_queues():
    cfg = Config.from_env({})
    assert cfg.frames_endpoint.startswith("tcp://127.0.0.1:") and cfg.source == "demo"
    endpoints = [cfg.frames_endpoint, cfg.faces_endpoint, cfg.predictions_endpoint, cfg.annotated_endpoint,
                 cfg.heartbeat_endpoint]
    assert len(set(endpoints)) == 5
    assert 1 <= cfg.pub_hwm <= 4 and 1 <= cfg.push_hwm <= 4


def test_env_vars_are_parsed_by_type():
    cfg = Config.from_env({"FERLIVE_FPS": "12.5", "FERLIVE_WIDTH": "320", "FERLIVE_LOOP": "yes",
                           "FERLIVE_SOURCE": "clip.mp4", "OTHER": "x"})
    assert (cfg.fps, cfg.width, cfg.loop, cfg.source) == (12.5, 320, True, "clip.mp4")


def test_flags_override_env():
    env = {"FERLIVE_FPS": "12", "FERLIVE_LOOP": "1", "FERLIVE_MODEL_DIR": "/m"}
    cfg = Config.from_env_and_args(["--fps", "30", "--no-loop", "--source", "0"], env=env)
    assert (cfg.fps, cfg.loop, cfg.source, cfg.model_dir) == (30.0, False, "0", "/m")


def test_bad_values_name_the_variable():
    with pytest.raises(ConfigError, match="FERLIVE_FPS='fast': expected float"):
        Config.from_env({"FERLIVE_FPS": "fast"})
    with pytest.raises(ConfigError, match="FERLIVE_LOOP='maybe'"):
        Config.from_env({"FERLIVE_LOOP": "maybe"})
    with pytest.raises(ConfigError, match="ema_alpha"):
        Config(ema_alpha=0.0)
    with pytest.raises(ConfigError, match="unbounded"):
        Config(pub_hwm=0)
    with pytest.raises(SystemExit):
        Config.from_env_and_args(["--width", "ten"], env={})


def test_every_field_is_documented(capsys):
    with pytest.raises(SystemExit):
        Config.from_env_and_args(["--help"], env={})
    out = capsys.readouterr().out
    for flag in ("--frames-endpoint", "--ema-alpha", "--reorder-timeout-ms", "FERLIVE_MODEL_DIR"):
        assert flag in out
