"""The README's run command for real: `honcho start` runs every stage of the Procfile, the page shows the
demo source annotated, `-c classify=2,detect=2` starts two workers of each pool, and Ctrl-C (SIGINT to the terminal's process
group) stops every process cleanly: no traceback, no orphan."""
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

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _session_members(sid: int) -> list[int]:
    """pids of live processes in session `sid` (from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] != "Z":  # session id; zombies are already gone
            pids.append(int(entry.name))
    return pids


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_honcho_runs_the_procfile_and_ctrl_c_stops_every_stage(tiny_model_dir, tmp_path):
    honcho = shutil.which("honcho", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    assert honcho, "honcho is a dependency of ferlive; it must be installed beside this Python"
    port = free_port()
    env = {**os.environ, **config_env(pipeline_config()), "FERLIVE_PORT": str(port), "FERLIVE_SOURCE": "demo",
           "FERLIVE_MODEL_DIR": str(tiny_model_dir), "FERLIVE_FPS": "10", "PYTHONUNBUFFERED": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    log = open(tmp_path / "honcho.log", "w+")
    proc = subprocess.Popen([honcho, "start", "-c", "classify=2,detect=2"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, health = time.monotonic() + 90, {}
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"honcho ended early:\n{(tmp_path / 'honcho.log').read_text()[-3000:]}"
            try:
                health = _get(url + "/api/health")
                latest = _get(url + "/api/latest")
                # both workers up: each runs under its own supervisor, and on a loaded machine one may
                # still be loading its model when the stream is already flowing through the other
                if (health.get("ok") and latest.get("faces")
                        and health["stages"]["classify"]["instances"] == 2
                        and health["stages"]["detect"]["instances"] == 2):
                    break
            except OSError:
                pass
            time.sleep(0.3)
        else:
            raise AssertionError(f"no annotated face within 90 s: {health}\n"
                                 f"{(tmp_path / 'honcho.log').read_text()[-3000:]}")
        assert all(health["stages"][s]["alive"] for s in ("capture", "detect", "classify", "annotate")), health
        assert health["stages"]["classify"]["instances"] == 2, health["stages"]["classify"]
        assert health["stages"]["detect"]["instances"] == 2, health["stages"]["detect"]
        assert len(_session_members(proc.pid)) >= 8  # honcho, capture, detect x2, classify x2, annotate, web

        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        proc.wait(timeout=20)
        deadline = time.monotonic() + 10
        while _session_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _session_members(proc.pid) == [], "processes outlived Ctrl-C"
    finally:
        if proc.poll() is None or _session_members(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # honcho's children run in sessions of their own: a failure must not leave them (and their
        # supervisors, which would restart them) behind
        kill_processes_with_env("FERLIVE_PORT", str(port))
    log.seek(0)
    out = log.read()
    assert "Traceback" not in out, out[-4000:]
    for stage in ("capture.1", "detect.1", "detect.2", "classify.1", "classify.2", "annotate.1", "web.1"):
        assert f"{stage} started" in out and f"{stage} stopped" in out, (stage, out[-2000:])
