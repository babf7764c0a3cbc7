"""Test hosts as Linux network namespaces on a private LAN (needs root and iproute2's ``ip``).

    with Lan({"cam": "10.213.0.11", "web": "10.213.0.13"}) as lan:
        p = lan.popen("web", [sys.executable, "-m", "services.web", "--host", lan.ip["web"]], env=env)

Each host is a namespace with ``lo`` up and one veth (``eth0``, its IP on 10.213.0.0/24 by default) whose
other end sits on a bridge in a namespace of its own: a switch no other interface is plugged into, so
nothing reaches the root namespace's network and the root namespace reaches none of the hosts. Names
carry this process's pid (``flmh<pid>-<host>``), so parallel runs never clash; ``close()`` (also on
leaving the ``with``) SIGKILLs every process in every namespace and deletes them, and a new ``Lan``
first removes the namespaces of runs whose process is gone (a run killed before its teardown).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import IO, Mapping, Optional, Sequence

PREFIX = "flmh"
_NAME = re.compile(rf"^{PREFIX}(\d+)-")


def unavailable() -> Optional[str]:
    """Why namespaces cannot be made here (a skip reason), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs `make test` as root)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is missing (`make test` installs it when run as root: apt-get install iproute2)"
    return None


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``ip ARGS``; a failure raises with ip's own message."""
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip() or res.stdout.strip()}")
    return res


def namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()]


def kill_namespace(name: str) -> None:
    """SIGKILL every process in namespace ``name``, then delete it (quietly if it is gone)."""
    for _ in range(50):
        pids = [int(p) for p in ip("netns", "pids", name, check=False).stdout.split()]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    ip("netns", "del", name, check=False)


def remove_stale() -> None:
    """Delete namespaces left by earlier runs whose process no longer exists."""
    for name in namespaces():
        m = _NAME.match(name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            kill_namespace(name)


class Lan:
    """Hosts (namespace name -> IPv4 address) on one switch; ``popen`` runs a command on a host."""

    def __init__(self, hosts: Mapping[str, str], prefix_len: int = 24) -> None:
        remove_stale()
        self.ip = dict(hosts)
        self.ns = {h: f"{PREFIX}{os.getpid()}-{h}" for h in hosts}
        self.switch = f"{PREFIX}{os.getpid()}-switch"
        self.procs: list[subprocess.Popen] = []
        self._made: list[str] = []
        try:
            self._add(self.switch)
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "br0", "up")
            for i, (host, addr) in enumerate(self.ip.items()):
                ns, port = self.ns[host], f"port{i}"
                self._add(ns)
                ip("-n", ns, "link", "set", "lo", "up")
                ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", self.switch)
                ip("-n", self.switch, "link", "set", port, "master", "br0")
                ip("-n", self.switch, "link", "set", port, "up")
                ip("-n", ns, "addr", "add", f"{addr}/{prefix_len}", "dev", "eth0")
                ip("-n", ns, "link", "set", "eth0", "up")
        except BaseException:
            self.close()
            raise

    def _add(self, ns: str) -> None:
        ip("netns", "add", ns)
        self._made.append(ns)

    def popen(self, host: str, cmd: Sequence[str], *, env: Mapping[str, str], cwd: Optional[Path] = None,
              stdout: "int | IO | None" = None, stderr: "int | IO | None" = subprocess.STDOUT,
              **kw) -> subprocess.Popen:
        """Start ``cmd`` inside ``host``'s namespace (``ip netns exec`` execs it: the pid is the command's)."""
        p = subprocess.Popen(["ip", "netns", "exec", self.ns[host], *cmd], env=dict(env), cwd=cwd,
                             stdout=stdout, stderr=stderr, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def kill_host(self, host: str) -> list[int]:
        """SIGKILL every process on ``host`` (its namespace stays); returns their pids."""
        pids = [int(p) for p in ip("netns", "pids", self.ns[host]).stdout.split()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in self.procs:
            if p.pid in pids:
                p.wait(10)
        return pids

    def close(self) -> None:
        """Kill every process started here and everything left in the namespaces; delete the namespaces."""
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for ns in reversed(self._made):
            kill_namespace(ns)
        self._made.clear()

    def __enter__(self) -> "Lan":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
