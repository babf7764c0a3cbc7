"""A stage that dies comes back alone: ``shared.supervise`` on its own, then the README's run command
(``honcho start`` on the real Procfile) surviving ``kill -9`` of every stage in turn, the stream back
within 2 s, no other stage restarted, and Ctrl-C still stopping everything with no orphan."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from services.web.testing import config_env, free_port, kill_processes_with_env, pipeline_config
from shared.supervise import Backoff, Supervisor

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("capture", "detect", "classify", "annotate", "web")


def test_backoff_restarts_at_once_then_waits_longer_and_resets_after_a_stable_run():
    b = Backoff(base=0.5, cap=2.0, stable_s=10.0)
    assert [b.next_delay(0.1) for _ in range(5)] == [0.0, 0.5, 1.0, 2.0, 2.0]
    assert b.next_delay(30.0) == 0.0


def test_supervisor_restarts_a_crashing_command_until_it_exits_cleanly(tmp_path):
    counter = tmp_path / "runs"
    script = (f"import pathlib, os, signal; p = pathlib.Path({str(counter)!r}); n = int(p.read_text() or 0) "
              f"if p.exists() else 0; p.write_text(str(n + 1)); "
              f"os.kill(os.getpid(), signal.SIGKILL) if n == 0 else None; raise SystemExit(3 if n == 1 else 0)")
    sup = Supervisor([sys.executable, "-c", script], backoff=Backoff(base=0.01, cap=0.01))
    assert sup.run() == 0
    assert counter.read_text() == "3" and sup.restarts == 2


def test_bad_configuration_is_final(tmp_path):
    sup = Supervisor([sys.executable, "-c", "raise SystemExit(2)"], backoff=Backoff(base=0.01))
    assert sup.run() == 2 and sup.restarts == 0


# ------------------------------------------------------------------------------- the real Procfile
def _stage_pids(port: int) -> dict[str, int]:
    """pid of each stage process (not its supervisor) started with FERLIVE_PORT=port."""
    out: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"FERLIVE_PORT={port}".encode() not in env or b"shared.supervise" in argv:
            continue
        for st in STAGES:
            if f"services.{st}".encode() in argv and argv[argv.index(f"services.{st}".encode()) - 1] == b"-m":
                out[st] = int(entry.name)
    return out


def _latest(url: str) -> dict:
    with urllib.request.urlopen(url + "/api/latest", timeout=1) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_kill_9_of_any_stage_under_honcho_comes_back_alone(tmp_path):
    honcho = shutil.which("honcho", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    assert honcho
    port = free_port()
    env = {**os.environ, **config_env(pipeline_config()), "FERLIVE_PORT": str(port), "FERLIVE_SOURCE": "demo",
           "PYTHONUNBUFFERED": "1", "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    log = open(tmp_path / "honcho.log", "w+")
    proc = subprocess.Popen([honcho, "start"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    back: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "honcho.log").read_text()[-3000:]
            try:
                if _latest(url).get("t_capture") and len(_stage_pids(port)) == len(STAGES):
                    break
            except OSError:
                pass
            time.sleep(0.3)
        else:
            raise AssertionError("no stream within 90 s:\n" + (tmp_path / "honcho.log").read_text()[-3000:])
        for stage in STAGES:
            before = _stage_pids(port)
            t_kill = time.time()
            os.kill(before[stage], signal.SIGKILL)
            while time.time() - t_kill < 15:
                try:
                    if (_latest(url).get("t_capture") or 0) > t_kill:
                        break
                except OSError:
                    pass
                time.sleep(0.02)
            back[stage] = time.time() - t_kill
            after = _stage_pids(port)
            assert after.get(stage) not in (None, before[stage]), f"{stage} was not restarted: {after}"
            assert {k: v for k, v in after.items() if k != stage} == {k: v for k, v in before.items() if k != stage}, \
                f"killing {stage} restarted others: {before} -> {after}"
            assert proc.poll() is None, "honcho stopped"
            time.sleep(1.0)
        print("stream back after kill -9:", {k: round(v, 2) for k, v in back.items()})
        # 2 s is the target (README); a shared 2-core CI box gets some slack before the test fails.
        assert all(v <= 4.0 for v in back.values()), back
        assert sorted(back.values())[len(back) // 2] <= 2.0, back

        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        proc.wait(timeout=20)
        deadline = time.monotonic() + 10
        while _stage_pids(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _stage_pids(port) == {}, "stages outlived Ctrl-C"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        kill_processes_with_env("FERLIVE_PORT", str(port))  # supervisors first: nothing restarts
    log.seek(0)
    out = log.read()
    assert "Traceback" not in out, out[-4000:]
    for stage in STAGES:
        assert f"services.{stage} died (signal SIGKILL)" in out, stage
