"""``gproc launch --ssh HOSTS``: start node daemons on machines over ssh, as a tree; ``--stop`` undoes it.

Uses the master at the client socket, or starts one here. The hosts are laid out as a tree ``fanout``
wide (``local.layout``); this process starts the first level over ssh, and the launch agent on each
host starts its own daemon, then its children, the same way (``launchagent``), so the launch takes a
time that grows with the tree's depth. The cluster credential travels in each ssh session's stdin.
With ``--certs`` the credential (the CA) stays here: each host gets its own key and certificate, issued
here, in the stdin of the ssh session that starts it (which, in a tree launch, an interior host's agent
relays to its subtree), and the master started here gets one too.

What a launch started is recorded next to the master's socket (``<socket>.launch``) so that
``gproc launch --stop`` (or ``gproc down``) can stop exactly that: every host's daemon, by the record
its agent keeps, and the master when the launch started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
from ClusterShell.NodeSet import NodeSet, NodeSetException

from gproc import certs, credential, launchagent, runtime
from gproc.client import Cluster, socket_path
from gproc.errors import GprocError, UsageError
from gproc.local import layout

DEFAULT_SSH = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]


def ssh_command(explicit: str | None = None) -> list[str]:
    """``--ssh-command``, else ``$GPROC_SSH``, else ssh that never prompts."""
    text = explicit or os.environ.get("GPROC_SSH")
    if not text:
        return list(DEFAULT_SSH)
    try:
        argv = shlex.split(text)
    except ValueError as e:
        raise UsageError(f"bad ssh command {text!r}: {e}") from None
    if not argv:
        raise UsageError("empty ssh command")
    return argv


def expand_hosts(spec: str) -> list[str]:
    """A ClusterShell hostlist (``node[1-16],gpu[01-04]``) as a list of names, in order."""
    try:
        names = list(NodeSet(spec))
    except NodeSetException as e:
        raise UsageError(f"bad host list {spec!r}: {e}") from None
    if not names:
        raise UsageError("no hosts to launch")
    return names


def tree(hosts: list[str], fanout: int) -> list[dict[str, Any]]:
    """The hosts as nested subtrees ``{"host", "id", "children"}`` under this (the master's) machine."""
    parents = layout(len(hosts), fanout)
    nodes: list[dict[str, Any]] = [{"host": h, "id": str(i + 1), "children": []} for i, h in enumerate(hosts)]
    top: list[dict[str, Any]] = []
    for i, p in enumerate(parents):
        (top if p < 0 else nodes[p]["children"]).append(nodes[i])
    return top


@dataclass
class LaunchRecord:
    """What ``--stop`` needs; saved as ``<socket>.launch``."""

    socket: str
    hosts: list[str]  # every host a daemon may run on (the hosts whose agent ran, once launched)
    fanout: int
    ssh: list[str]
    python: str
    rundir: str = ""  # this launch's files (the master's log and state when it started one)
    master: list[float] = field(default_factory=list)  # [pid, start time] of a master we started
    runtime: dict[str, Any] = field(default_factory=dict)  # how hosts without Python run gproc (stop needs it)
    slurm: dict[str, Any] = field(default_factory=dict)  # a --slurm launch: job, step name, srun's [pid, start]

    def save(self) -> None:
        tmp = self.socket + ".launch.tmp"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            json.dump(self.__dict__, f)
        os.replace(tmp, self.socket + ".launch")

    @classmethod
    def load(cls, sock: str) -> LaunchRecord | None:
        try:
            with open(sock + ".launch") as f:
                return cls(**json.load(f))
        except (OSError, ValueError, TypeError):
            return None


@dataclass
class Outcome:
    """Every host's outcome (``{"host", "ok", "reached", "error"?…}``; ``reached``: its agent ran),
    the master's socket, how long it took."""

    rows: list[dict[str, Any]]
    socket: str
    seconds: float
    started_master: bool

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if not r["ok"]]


def _alive(proc: list[float]) -> bool:
    try:
        p = psutil.Process(int(proc[0]))
        return abs(p.create_time() - proc[1]) < 0.01 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


async def _master_stats(sock: str) -> dict[str, Any] | None:
    try:
        return await Cluster(sock, timeout=3.0).stats()
    except (GprocError, OSError):
        return None


def _start_master(
    rec: LaunchRecord, key: str, listen: str | None, port: int, debug: int, with_certs: bool = False
) -> str:
    """Start a master here for this launch; return the address it listens on."""
    ready = os.path.join(rec.rundir, "master.addr")
    identity = ["--cert", certs.issue(key, "master", os.path.join(rec.rundir, "certs"))[1]] if with_certs else []
    argv = [sys.executable, "-m", "gproc", "m", "--socket", rec.socket, "--key", key, *identity,
            "--ready-file", ready, "--state", os.path.join(rec.rundir, "state"), "--debug", str(debug)]  # fmt: skip
    if with_certs:  # the master's own key beside its certificate, not the credential
        argv[argv.index("--key") : argv.index("--key") + 2] = []
    argv += ["--listen", listen] if listen else ["--port", str(port)]
    log = os.path.join(rec.rundir, "master.log")
    with open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as out:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    rec.master = [p.pid, psutil.Process(p.pid).create_time()]
    rec.save()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise GprocError(f"the master did not start: {launchagent._last_line(log)}")
        with contextlib.suppress(OSError), open(ready) as f:
            return f.read().strip()
        time.sleep(0.02)
    raise GprocError("the master did not start in time")


def launch(
    hosts: str,
    *,
    fanout: int = 16,
    ssh: list[str] | None = None,
    socket: str | None = None,
    key: str | None = None,
    listen: str | None = None,
    address: str | None = None,
    port: int = launchagent.DEFAULT_PORT,
    bin_root: str | None = None,
    python: str | None = None,
    debug: int = 0,
    hop_timeout: float = launchagent.DEFAULT_HOP_TIMEOUT,
    join_timeout: float = 30.0,
    ship: str = "auto",
    runtime_dir: str | None = None,
    with_certs: bool = False,
) -> Outcome:
    """Start a daemon on every host of ``hosts`` and wait until those that started joined the master.

    ``listen``: where a master started here listens (default every address, ``port``); ``address``:
    the master's address as the hosts reach it (default: the address each first-level host's ssh
    session came from); ``port``: the port the nodes listen on (and a new master's). ``ship``:
    ``auto`` runs gproc on a host's ``python`` when it has gproc, else ships gproc's runtime there
    (``gproc.runtime``) into ``runtime_dir`` (default ``~/.cache/gproc/runtime``); ``always`` ships it
    to every host; ``never`` reports a host without gproc. ``with_certs``: every host its own
    certificate, issued here by the credential (the running master must use certificates of the
    same CA)."""
    t0 = time.monotonic()
    names = expand_hosts(hosts)
    if fanout < 1:
        raise UsageError(f"--fanout must be at least 1 (got {fanout})")
    if ship not in launchagent.SHIP_MODES:
        raise UsageError(f"--ship must be one of {', '.join(launchagent.SHIP_MODES)} (got {ship!r})")
    sock = socket_path(socket)
    old = LaunchRecord.load(sock)
    if old is not None:
        raise UsageError(f"a launch is recorded at {sock}.launch (stop it first: gproc launch --stop)")
    rec = LaunchRecord(sock, names, fanout, ssh or ssh_command(), python or sys.executable)
    # the id names the runtime a host may hold already; its bytes are packed only for a host without it
    rec.runtime = {"mode": ship, "base": runtime_dir, "id": runtime.collect().id if ship != "never" else None}
    stats = asyncio.run(_master_stats(sock))
    keyfile = credential.key_path(key)
    try:
        if stats is None:
            rec.rundir = tempfile.mkdtemp(prefix="gproc-launch-")
            if not os.path.exists(keyfile):
                keyfile = credential.keygen(os.path.join(rec.rundir, "cluster.key"))
            master_addr = _start_master(rec, keyfile, listen, port, debug, with_certs)
        elif not stats.get("listen"):
            raise GprocError(f"the master at {sock} does not listen on TCP: nodes cannot join it")
        else:
            master_addr = stats["listen"]
        try:
            with open(keyfile) as f:
                pem = f.read()
        except OSError as e:
            raise GprocError(f"cannot read the cluster credential {keyfile}: {e.strerror}") from None
        rec.save()
        hosts_tree = tree(names, fanout)
        pin = {}
        if with_certs:
            pem = _issue_all(keyfile, hosts_tree)
            if rec.master:  # the master started here holds the certificate of "master"
                pin = {"parent_name": "master"}
        req = {
            "op": "start",
            ("ca" if with_certs else "key"): pem,
            "parent": address,
            "parent_port": int(master_addr.rpartition(":")[2]),
            "port": port,
            "ssh": rec.ssh,
            "python": rec.python,
            "bin_root": bin_root,
            "debug": debug,
            "hop_timeout": hop_timeout,
            "runtime": rec.runtime,
            **pin,
        }
        rows = asyncio.run(launchagent.fan_out(req, hosts_tree))
        rec.hosts = [r["host"] for r in rows if r["reached"]]  # where --stop has something to look at
        rec.save()
        _wait_joined(sock, rows, join_timeout)
    except BaseException:
        with contextlib.suppress(Exception):
            stop(sock)
        raise
    order = {h: i for i, h in enumerate(names)}
    rows.sort(key=lambda r: order.get(r["host"], len(order)))
    return Outcome(rows, sock, time.monotonic() - t0, bool(rec.master))


def _issue_all(ca: str, subtrees: list[dict[str, Any]]) -> str:
    """Give every host of the tree its certificate and key (``cert``, ``node_key``: PEM); the CA's
    certificate (PEM). Nothing issued stays on this machine's disk."""
    with tempfile.TemporaryDirectory(prefix="gproc-launch-certs-") as d:
        todo = list(subtrees)
        while todo:
            t = todo.pop()
            todo.extend(t["children"])
            key, cert, _ = certs.issue(ca, t["host"], d)
            for field_, path in (("node_key", key), ("cert", cert)):
                with open(path) as f:
                    t[field_] = f.read()
                os.unlink(path)
        with open(os.path.join(d, "ca.crt")) as f:
            return f.read()


def _wait_joined(sock: str, rows: list[dict[str, Any]], timeout: float) -> None:
    """Wait until every started host is up at the master; mark those that never joined."""
    want = {r["host"]: r for r in rows if r["ok"]}
    deadline = time.monotonic() + timeout
    up: set[str] = set()
    while time.monotonic() < deadline:
        try:
            info = asyncio.run(Cluster(sock, timeout=5.0).info())
            up = {n["name"] for n in info["nodes"] if n["state"] == "up"}
        except GprocError:
            pass
        if up >= want.keys():
            return
        time.sleep(0.1)
    for h, r in want.items():
        if h not in up:
            r["ok"] = False
            r["error"] = f"started but did not join the master within {timeout:.0f}s (log on the host: {r.get('log')})"


def stop(socket: str | None = None, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Stop what the launch recorded at ``socket`` started; each host's outcome."""
    sock = socket_path(socket)
    rec = LaunchRecord.load(sock)
    if rec is None:
        raise UsageError(f"no launch recorded at {sock} (nothing to stop)")
    ours = bool(rec.master) and _alive(rec.master)
    if ours:  # the whole tree ends its jobs and exits; the sweep below catches what did not hear it
        with contextlib.suppress(GprocError, OSError):
            asyncio.run(Cluster(sock, timeout=3.0).shutdown())
    req = {
        "op": "stop",
        "ssh": rec.ssh,
        "python": rec.python,
        "hop_timeout": launchagent.DEFAULT_HOP_TIMEOUT,
        "runtime": rec.runtime,
    }
    rows = asyncio.run(launchagent.fan_out(req, tree(rec.hosts, rec.fanout)))
    if rec.master:
        deadline = time.monotonic() + timeout
        while _alive(rec.master) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(rec.master):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(rec.master[0]), signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(int(rec.master[0]), os.WNOHANG)
    if rec.rundir:
        shutil.rmtree(rec.rundir, ignore_errors=True)
    paths = [sock + ".launch"] + ([sock] if rec.master else [])
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return rows
