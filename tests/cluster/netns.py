"""Many "machines" on one host: each daemon runs in its own UTS + mount namespace, with its own hostname
and a private ``/etc/hosts`` bind-mounted over the real one, so names like ``master`` and ``slave17``
resolve to distinct loopback addresses (127.0.0.0/8 only). Needs root and util-linux ``unshare``.

Namespaces die with their processes and mounts inside a private mount namespace vanish with it, so
stopping the daemons (by the process groups we started, never by name) is the whole cleanup.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# sets the hostname, hides /etc/hosts behind the private file, then becomes the daemon (same pid)
_ENTER = 'hostname "$1" && mount --bind "$2" /etc/hosts && shift 2 && exec "$@"'


def unshare_problem() -> str | None:
    """Why per-host namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (UTS and mount namespaces, bind mount over /etc/hosts)"
    if shutil.which("unshare") is None:
        return "util-linux 'unshare' is not installed"
    r = subprocess.run(
        ["unshare", "--uts", "--mount", "--propagation", "private", "sh", "-c", "hostname gproc-probe"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    if r.returncode != 0:
        return f"cannot create UTS + mount namespaces: {r.stderr.strip() or r.returncode}"
    return None


def write_hosts(path: str, hosts: Mapping[str, str]) -> None:
    """Write a hosts file mapping each name to its own loopback address (refuses anything else)."""
    lines = ["127.0.0.1 localhost"]
    for name, addr in hosts.items():
        if ipaddress.ip_address(addr) not in ipaddress.ip_network("127.0.0.0/8"):
            raise ValueError(f"{name}: {addr} is not a loopback address")
        lines.append(f"{addr} {name}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def as_host(hostname: str, hosts_file: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run as if on a machine called ``hostname`` whose /etc/hosts is ``hosts_file``."""
    return ["unshare", "--uts", "--mount", "--propagation", "private", "sh", "-c", _ENTER, "sh", hostname,
            hosts_file, *argv]  # fmt: skip


def port_free(addrs: Iterable[str], port: int) -> bool:
    """Can a listener bind ``port`` on every one of ``addrs`` right now?"""
    socks: list[socket.socket] = []
    try:
        for a in addrs:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((a, port))
            s.listen(1)  # a listener, so a wildcard listener elsewhere on the port is seen as a clash
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def pick_port(addrs: Sequence[str], preferred: int) -> int:
    """``preferred`` when free on every address, else a port the kernel hands out that is."""
    if port_free(addrs, preferred):
        return preferred
    for _ in range(50):
        with socket.socket() as s:
            s.bind((addrs[0], 0))
            port = int(s.getsockname()[1])
        if port_free(addrs, port):
            return port
    raise RuntimeError(f"no TCP port free on all of {len(addrs)} loopback addresses")


@dataclass
class Daemons:
    """Processes started each in a new session, logging to ``logdir``; stopped by process group."""

    logdir: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        with open(self.log(name), "ab") as out:
            self.procs[name] = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                close_fds=True,
                env=dict(env) if env is not None else None,
            )

    def log(self, name: str) -> str:
        return os.path.join(self.logdir, f"{name}.log")

    def dead(self) -> dict[str, int]:
        """Daemons that exited, with their exit status."""
        return {n: rc for n, p in self.procs.items() if (rc := p.poll()) is not None}

    def tail(self, name: str, lines: int = 15) -> str:
        try:
            with open(self.log(name), errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def report(self, names: Iterable[str] | None = None, limit: int = 4) -> str:
        """Exit statuses and the log tails of (a few of) ``names``, for assertion messages."""
        dead = self.dead()
        picked = list(names if names is not None else dead)[:limit]
        parts = [f"exited: {dead or 'none'}"]
        parts += [f"--- {n} ({self.log(n)}):\n{self.tail(n)}" for n in picked]
        return "\n".join(parts)

    def stop(self, first: Sequence[str] = (), grace: float = 5.0) -> None:
        """SIGTERM ``first`` (e.g. the master, which takes the tree down), then everyone; SIGKILL what
        is left after ``grace`` seconds; reap all."""
        order = [n for n in first if n in self.procs] + [n for n in self.procs if n not in first]
        for n in order:
            self._signal(n, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in self.procs.values():
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for n in order:
            self._signal(n, signal.SIGKILL)  # the group: also any program a daemon left running
        for p in self.procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def _signal(self, name: str, sig: int) -> None:
        try:
            os.killpg(self.procs[name].pid, sig)  # pgid == pid: start_new_session=True
        except (ProcessLookupError, PermissionError):
            pass
