"""Small pieces several test files share (not fixtures)."""
from __future__ import annotations

import csv
import signal
import subprocess
import time
from pathlib import Path
from typing import Mapping, Sequence


def history_epochs(history: Path) -> list[int]:
    """The epoch numbers a training run's history.csv holds ([] before the first)."""
    if not history.exists():
        return []
    with open(history, newline="") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f) if r.get("epoch", "").strip()]


def kill_after_epochs(cmd: Sequence[str], cwd: Path, env: Mapping[str, str], run: Path, epochs: int,
                      log_path: Path, timeout: float) -> subprocess.Popen:
    """Start a training command, SIGKILL it once `epochs` epochs are in run/history.csv; returns the process.
    Fails when it ends on its own first or takes longer than `timeout` seconds."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=dict(env), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        try:
            while len(history_epochs(run / "history.csv")) < epochs:
                assert proc.poll() is None, f"run ended early: {log_path.read_text()[-2000:]}"
                assert time.monotonic() < deadline, f"no {epochs} epochs within {timeout:.0f} s"
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    return proc
