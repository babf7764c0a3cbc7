"""Keep one stage process alive: restart it when it dies, stop it when told to.

    python -m shared.supervise -- python -m services.detect [flags]      # what each Procfile line runs

honcho (``make run``) ends every process when one exits, so each Procfile line runs its stage under this
small supervisor: a stage that dies (a crash, ``kill -9``, the OOM killer) is started again at once, then
with a growing pause while it keeps dying (``--backoff-s`` doubling up to ``--max-backoff-s``; the pause
resets once a run lasted ``--stable-s``), and no other stage notices beyond the gap in its stream.

* Exit status 0 (a video file that ended) and 2 (bad configuration or flags) are final: the supervisor
  exits with that status, so a misconfigured stage still stops ``honcho start`` with its error message.
* SIGTERM/SIGINT (honcho's stop, Ctrl-C) are forwarded to the stage once; no restart follows and the
  supervisor exits when the stage has. The stage runs in its own process group, so a signal sent to the
  supervisor's group reaches it only through this forwarding (never twice), and it is told to end
  (PR_SET_PDEATHSIG) should the supervisor itself be killed: no orphan either way.

Hand-written on purpose: supervisord and circus are whole daemons with their own config that would
replace honcho and the Procfile rather than fit into them.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

log = logging.getLogger("shared.supervise")

FINAL_CODES = (0, 2)
"""Exit statuses after which the stage is not restarted: done, or bad configuration."""
_PR_SET_PDEATHSIG = 1


@dataclass
class Backoff:
    """Pause before restart number k of a crashing stage: 0 for the first, then ``base * 2**(k-1)``
    capped at ``cap``; a run that lasted ``stable_s`` resets the count."""

    base: float = 0.5
    cap: float = 5.0
    stable_s: float = 10.0
    failures: int = 0

    def next_delay(self, ran_s: float) -> float:
        if ran_s >= self.stable_s:
            self.failures = 0
        self.failures += 1
        return 0.0 if self.failures == 1 else min(self.cap, self.base * 2 ** (self.failures - 2))


def _child_setup() -> None:
    """In the child before exec: own process group; SIGTERM when the supervisor dies (Linux)."""
    os.setpgid(0, 0)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except OSError:  # not Linux: the forwarding still stops the stage
        pass
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"status {returncode}"


class Supervisor:
    """Runs ``cmd`` until it exits with a final status or a stop signal comes; restarts it otherwise."""

    def __init__(self, cmd: Sequence[str], name: str = "", backoff: Optional[Backoff] = None,
                 spawn: Callable[..., subprocess.Popen] = subprocess.Popen) -> None:
        if not cmd:
            raise ValueError("no command to supervise: give it after --")
        self.cmd, self.name = list(cmd), name or " ".join(cmd[-1:])
        self.backoff = backoff or Backoff()
        self._spawn = spawn
        self.child: Optional[subprocess.Popen] = None
        self.stopping: Optional[int] = None
        self.restarts = 0
        self._forwarded: Optional[subprocess.Popen] = None

    def _on_signal(self, signum: int, _frame) -> None:
        if self.stopping is None:
            self.stopping = signum
        self._forward()

    def _forward(self) -> None:
        """Send the stop signal to the current child, once."""
        child = self.child
        if self.stopping is None or child is None or self._forwarded is child or child.poll() is not None:
            return
        self._forwarded = child
        try:
            child.send_signal(self.stopping)
        except ProcessLookupError:
            pass

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        while True:
            t0 = time.monotonic()
            try:
                self.child = self._spawn(self.cmd, preexec_fn=_child_setup)
            except OSError as exc:  # no such program: configuration, not a crash
                log.error("cannot start %s: %s", self.cmd[0], exc)
                return 2
            self._forward()  # a stop that came while it was starting
            code = self._wait(self.child)
            ran = time.monotonic() - t0
            if self.stopping is not None:
                return 0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else (code if code > 0 else 1)
            if code in FINAL_CODES:
                if code:
                    log.error("%s exited with %s (bad configuration?): not restarting", self.name, describe(code))
                return code
            delay = self.backoff.next_delay(ran)
            self.restarts += 1
            log.warning("%s died (%s) after %.1f s; restart %d in %.1f s", self.name, describe(code), ran,
                        self.restarts, delay)
            end = time.monotonic() + delay
            while self.stopping is None and time.monotonic() < end:
                time.sleep(min(0.05, max(0.0, end - time.monotonic())))
            if self.stopping is not None:
                return 0

    @staticmethod
    def _wait(child: subprocess.Popen) -> int:
        while True:
            try:
                return child.wait()
            except InterruptedError:  # pragma: no cover - PEP 475 retries, kept for clarity
                continue


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        i = argv.index("--")
        own, cmd = argv[:i], argv[i + 1:]
    elif argv and argv[0].startswith("-"):
        own, cmd = argv, []
    else:
        own, cmd = [], argv
    p = argparse.ArgumentParser(prog="python -m shared.supervise",
                                description="Run a stage and restart it when it dies (see the module doc).")
    p.add_argument("--name", default="", help="name in the log (default: the command's last word)")
    p.add_argument("--backoff-s", type=float, default=0.5, help="pause before the 2nd restart in a row; doubles")
    p.add_argument("--max-backoff-s", type=float, default=5.0, help="longest pause between restarts")
    p.add_argument("--stable-s", type=float, default=10.0, help="a run this long resets the pause")
    a = p.parse_args(own)
    if not cmd:
        p.error("give the command to supervise after --, e.g. -- python -m services.detect")
    if cmd[0] == "python":  # the venv's Python, as honcho's PATH would give
        cmd[0] = sys.executable
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s supervise[%(process)d] %(levelname)s: %(message)s")
    return Supervisor(cmd, a.name, Backoff(a.backoff_s, a.max_backoff_s, a.stable_s)).run()


if __name__ == "__main__":
    sys.exit(main())
