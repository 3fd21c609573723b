"""A whole cluster on this machine: ``gproc up --local N [--fanout K]`` and ``gproc down``.

One master process and a few worker processes, each hosting whole subtrees of node daemons (many
``Node`` objects on one event loop), all linked by real TLS over loopback TCP. The cluster's files
(credential, logs, master state, each node's client socket ``n/INDEX.sock``) live in one temporary
directory that ``down`` removes; a small ``<socket>.up`` file next to the master's socket records what
to stop. ``restart_master`` kills the master and starts it again on the same address and state, as a
master crash and restart would (nodes re-attach by themselves).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from gproc import credential
from gproc.client import Cluster, socket_path
from gproc.errors import ConnectError, GprocError, UsageError


def layout(n: int, fanout: int) -> list[int]:
    """Parent index of each of ``n`` nodes (-1: the master) in a tree ``fanout`` wide.

    Levels fill in turn (``fanout`` nodes, then ``fanout²`` …) and within a level children are dealt
    round-robin to the level above, as the seed's ``hostbase % 4`` rule does for two levels.
    """
    if fanout < 1:
        raise UsageError("fanout must be at least 1")
    parents: list[int] = []
    prev_start, prev_size, start, size = -1, 0, 0, fanout
    while start < n:
        count = min(size, n - start)
        for j in range(count):
            parents.append(-1 if prev_size == 0 else prev_start + j % prev_size)
        prev_start, prev_size, start, size = start, count, start + count, count * fanout
    return parents


def liveness(n: int, heartbeat: float | None = None, dead_after: float | None = None) -> tuple[float, float]:
    """Heartbeat and dead-after for a local cluster of ``n`` nodes (explicit values win).

    Up to 256 nodes: the daemons' defaults (1 s, 3.5 s: a node killed or frozen is lost within 5 s).
    Larger local clusters pack hundreds or thousands of nodes into each event loop on a few cores, and
    one loop turn that forwards and stores file chunks for all of them can take several seconds (seen:
    4-7 s at 1,024 nodes, 256 per process, 2 cores), during which none of them can answer a ping:
    such clusters get a window that such turns fit in. A real cluster, one node per machine, keeps
    the defaults."""
    hb = heartbeat if heartbeat is not None else (1.0 if n <= 256 else 2.0 if n <= 2048 else 5.0)
    dead = dead_after if dead_after is not None else (max(3.5, hb * 3.5) if n <= 256 else max(20.0, hb * 6))
    return hb, dead


LINK_RECV_BUFFER = 64 * 1024  # SO_RCVBUF of every link of a local cluster's nodes (NodeConfig.recv_buffer)
NODES_PER_WORKER = 640  # at most this many nodes share a process in large local clusters (see workers)


def workers(n: int, fanout: int, cores: int | None = None) -> int:
    """How many OS processes host the ``n`` nodes of a local cluster (each takes whole top subtrees).

    At least one per 256 nodes up to twice the cores (fewer loops than that leave cores idle while a
    loop waits for a program start); past that one per ``NODES_PER_WORKER`` nodes. That bound first
    came from program starts (each copied and closed all of its process's descriptors: 10,000 nodes,
    fanout 32, 4 processes 15.2 s, 16 processes 10.3 s); since a process holding over
    ``platform.STARTER_ABOVE`` descriptors starts programs through a starter, 4 processes launch
    /bin/true on 10,000 nodes 1.14x faster than 16 (``bench/workers.py``), but 16 answer the no-op
    1.16x faster, and a process's peak memory in a first shipped launch grows with its nodes (~0.5-0.7
    MiB each, ``bench/shipscale.py``; a process of 2,500 nodes was once lost in that launch, most
    likely killed for memory as 625-node ones were with 512 KiB chunks). Never more than the master's
    children."""
    cores = cores or os.cpu_count() or 1
    top = min(fanout, n)
    return max(1, min(top, max(min(math.ceil(n / 256), 2 * cores), math.ceil(n / NODES_PER_WORKER))))


@dataclass
class UpRecord:
    """What ``down`` needs: the run directory and the processes (pid, start time) we started."""

    socket: str
    rundir: str
    procs: list[tuple[int, float]]
    nodes: int
    master_argv: list[str] = field(default_factory=list)

    def save(self) -> None:
        tmp = self.socket + ".up.tmp"
        with open(tmp, "w") as f:
            json.dump(self.__dict__, f)
        os.replace(tmp, self.socket + ".up")

    @classmethod
    def load(cls, sock: str) -> UpRecord | None:
        try:
            with open(sock + ".up") as f:
                d = json.load(f)
        except (OSError, ValueError):
            return None
        return cls(d["socket"], d["rundir"], [tuple(p) for p in d["procs"]], d["nodes"], d.get("master_argv", []))


def _start(argv: list[str], log: str) -> tuple[int, float]:
    with open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as out:
        p = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, close_fds=True
        )
    return p.pid, psutil.Process(p.pid).create_time()


def up(
    n: int,
    *,
    fanout: int = 16,
    socket: str | None = None,
    procs: int | None = None,
    prefix: str = "node",
    ipv6: bool = False,
    key: str | None = None,
    heartbeat: float | None = None,
    dead_after: float | None = None,
    timeout: float | None = None,
    debug: int = 0,
    gpid_block: int | None = None,
    collect_every: float | None = None,
    master_args: list[str] | None = None,
    node_config: dict[str, Any] | None = None,
    starter_above: int | None = None,
    certs: bool = False,
) -> UpRecord:
    """Start a master and ``n`` nodes on loopback; return once every node is registered.

    ``gpid_block`` and ``collect_every`` set the master's gpid block size and collection period;
    ``master_args`` are extra switches for the master (``["--keep-jobs", "10"]``); ``node_config``
    sets ``NodeConfig`` fields of every node (``{"hold": 1.0, "edits": False}``); ``starter_above``:
    open descriptors from which a worker process starts programs through ``platform.Starter``
    (default ``platform.STARTER_ABOVE``; -1: never); ``certs``: every node and the master get their own
    certificate from the cluster credential (per-node identity, ``gproc.certs``) instead of sharing it."""
    if n < 1:
        raise UsageError("a local cluster needs at least one node")
    if fanout < 1:
        raise UsageError(f"--fanout must be at least 1 (got {fanout})")
    if procs is not None and procs < 1:
        raise UsageError(f"--procs must be at least 1 (got {procs})")
    sock = socket_path(socket)
    if len(os.fsencode(os.path.abspath(sock))) > MAX_SOCKET_PATH:
        raise UsageError(f"socket path {sock} is longer than {MAX_SOCKET_PATH} bytes (a Unix socket's limit)")
    old = UpRecord.load(sock)
    if old is not None and any(_alive(p) for p in old.procs):
        raise UsageError(f"a local cluster already runs at {sock} (run 'gproc down' first)")
    if old is not None:
        _cleanup_files(old)
    made = _make_socket_dir(sock)
    try:
        rundir = tempfile.mkdtemp(prefix="gproc-local-")
    except OSError as e:
        _remove_dirs(made)
        raise GprocError(f"cannot create the cluster's run directory: {e.strerror}") from None
    os.chmod(rundir, 0o711)  # jobs of any user reach the nodes' binRoots below it; nothing is listable
    rec = UpRecord(sock, rundir, [], n)
    try:
        keyfile = key or credential.keygen(os.path.join(rundir, "cluster.key"))
        certdir = os.path.join(rundir, "certs")
        identity = ["--key", keyfile]
        if certs:
            identity = ["--cert", _issue(keyfile, "master", certdir), "--revoked", os.path.join(rundir, "revoked")]
        host = "::1" if ipv6 else "127.0.0.1"
        hb, dead = liveness(n, heartbeat, dead_after)
        py = [sys.executable, "-m", "gproc"]
        ready = os.path.join(rundir, "master.addr")
        rec.master_argv = [
            *py,
            "m",
            "--socket",
            sock,
            "--state",
            os.path.join(rundir, "state"),
            *identity,
            "--ready-file",
            ready,
            "--debug",
            str(debug),
            "--heartbeat",
            str(hb),
            "--dead-after",
            str(dead),
            *(master_args or []),
        ]
        if gpid_block is not None:
            rec.master_argv += ["--gpid-block", str(gpid_block)]
        if collect_every is not None:
            rec.master_argv += ["--collect-every", str(collect_every)]
        listen = ["--listen", f"[{host}]:0" if ipv6 else f"{host}:0"]
        rec.procs.append(_start([*rec.master_argv, *listen], os.path.join(rundir, "master.log")))
        rec.save()
        master_addr = _wait_file(ready, 30.0, rec)
        parents = layout(n, fanout)
        has_kids = {p for p in parents if p >= 0}
        top = [i for i, p in enumerate(parents) if p < 0]
        nworkers = min(procs, len(top)) if procs else workers(n, fanout)
        owner: list[int] = [0] * n
        for i, p in enumerate(parents):
            owner[i] = top.index(i) % nworkers if p < 0 else owner[p]
        for w in range(nworkers):
            spec: dict[str, Any] = {
                "key": keyfile,
                "master": master_addr,
                "host": host,
                "heartbeat": hb,
                "dead_after": dead,
                # a first shipped launch left a 640-node worker at 0.52 GB with the system's receive
                # buffers (TLS keeps buffers as large as the reads), 0.32 GB with 64 KiB
                "config": {"recv_buffer": LINK_RECV_BUFFER, **(node_config or {})},
                **({} if starter_above is None else {"starter_above": starter_above}),
                "bin_root": os.path.join(rundir, "bin"),  # each node its own binRoot (and store)
                "nodes": [
                    {
                        "index": i,
                        "name": f"{prefix}{i}",
                        "id": str(i),
                        "parent": parents[i],
                        "listen": i in has_kids,
                        "socket": os.path.join(rundir, "n", f"{i}.sock"),
                        **({"cert": _issue(keyfile, f"{prefix}{i}", certdir)} if certs else {}),
                    }
                    for i in range(n)
                    if owner[i] == w
                ],
            }
            path = os.path.join(rundir, f"worker{w}.json")
            with open(path, "w") as f:
                json.dump(spec, f)
            rec.procs.append(
                _start([*py, "_worker", path, "--debug", str(debug)], os.path.join(rundir, f"worker{w}.log"))
            )
            rec.save()
        wait_nodes(sock, n, timeout if timeout is not None else 60.0 + n / 20, rec)
        return rec
    except BaseException as e:  # leave nothing behind: processes, run directory, socket directories
        kept = _keep_logs(rundir)
        _stop(rec)
        _remove_dirs(made)
        if isinstance(e, OSError):
            raise GprocError(f"cannot start the local cluster: {e.strerror or e}") from None
        if isinstance(kept, str) and isinstance(e, GprocError):
            raise GprocError(f"{str(e).replace(rundir, kept)}; logs kept in {kept}") from None
        raise


def _issue(ca: str, name: str, out: str) -> str:
    from gproc import certs

    return certs.issue(ca, name, out)[1]


MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL


def _make_socket_dir(sock: str) -> list[str]:
    """Create the directory the master's socket goes in, when missing (as ``mkdir -p``); return the
    directories created, deepest first, so that a failed ``up`` removes them again."""
    made: list[str] = []
    d = os.path.dirname(os.path.abspath(sock))
    while not os.path.isdir(d) and not os.path.lexists(d):
        made.append(d)
        d = os.path.dirname(d)
    for path in reversed(made):
        try:
            os.mkdir(path, 0o755)  # every user's client reaches the master's socket
        except OSError as e:
            _remove_dirs([p for p in made if os.path.isdir(p) and p != path])
            raise GprocError(f"cannot create {path} for the master's socket: {e.strerror}") from None
    parent = os.path.dirname(os.path.abspath(sock))
    if not os.path.isdir(parent):
        raise GprocError(f"cannot put the master's socket in {parent}: not a directory")
    return made


def _remove_dirs(made: list[str]) -> None:
    for path in made:  # deepest first; only while empty
        try:
            os.rmdir(path)
        except OSError:
            pass


def _keep_logs(rundir: str) -> str | None:
    """Copy a failed cluster's logs out of its run directory (which ``down`` removes)."""
    logs = [f for f in os.listdir(rundir) if f.endswith(".log")] if os.path.isdir(rundir) else []
    if not logs:
        return None
    dest = tempfile.mkdtemp(prefix="gproc-failed-")
    for f in logs:
        shutil.copy(os.path.join(rundir, f), dest)
    return dest


def restart_master(socket: str | None = None, timeout: float = 60.0) -> UpRecord:
    """Kill the local cluster's master (SIGKILL, as a crash) and start it again with the same state,
    socket and TCP address; return once every node is registered again."""
    sock = socket_path(socket)
    rec = UpRecord.load(sock)
    if rec is None or not rec.master_argv:
        raise UsageError(f"no restartable local cluster recorded at {sock}")
    ready = os.path.join(rec.rundir, "master.addr")
    with open(ready) as f:
        addr = f.read().strip()
    old = rec.procs[0]
    if _alive(old):
        os.killpg(old[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(old) and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        os.waitpid(old[0], os.WNOHANG)  # reap it when this process started it
    except ChildProcessError:
        pass
    os.unlink(ready)
    rec.procs[0] = _start([*rec.master_argv, "--listen", addr], os.path.join(rec.rundir, "master.log"))
    rec.save()
    _wait_file(ready, 30.0, rec)
    wait_nodes(sock, rec.nodes, timeout, rec)
    return rec


def _wait_file(path: str, timeout: float, rec: UpRecord) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            pass
        if not _alive(rec.procs[0]):
            raise GprocError(f"the master did not start (see {os.path.join(rec.rundir, 'master.log')})")
        time.sleep(0.02)
    raise GprocError("the master did not start in time")


def wait_nodes(sock: str, n: int, timeout: float, rec: UpRecord | None = None) -> int:
    """Wait until ``n`` nodes are up; returns how many are."""

    async def count() -> int:
        return int((await Cluster(sock).stats())["nodes_up"])

    deadline = time.monotonic() + timeout
    got = 0
    while time.monotonic() < deadline:
        try:
            got = asyncio.run(count())
        except GprocError:
            got = 0
        if got >= n:
            return got
        if rec is not None and not all(_alive(p) for p in rec.procs):
            raise GprocError(f"a daemon of the local cluster died (logs in {rec.rundir})")
        time.sleep(0.2)
    raise GprocError(f"only {got} of {n} nodes registered within {timeout:.0f}s")


def _alive(proc: tuple[int, float]) -> bool:
    """Is this still the process we started (same pid and start time), and not a zombie?"""
    pid, created = proc
    try:
        p = psutil.Process(pid)
        return abs(p.create_time() - created) < 0.01 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def down(socket: str | None = None, quiet: bool = False, timeout: float = 10.0) -> bool:
    """Stop the local cluster at ``socket``: ask the tree to shut down, then end what remains."""
    sock = socket_path(socket)
    rec = UpRecord.load(sock)
    if rec is None:
        if quiet:
            return False
        raise UsageError(f"no local cluster recorded at {sock}")
    _stop(rec, timeout)
    return True


def _stop(rec: UpRecord, timeout: float = 10.0) -> None:
    """Ask the tree to shut down, end the processes that remain, remove the cluster's files."""
    try:
        asyncio.run(Cluster(rec.socket, timeout=3.0).shutdown())
    except (GprocError, ConnectError, OSError):
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in rec.procs):
        time.sleep(0.05)
    for p in rec.procs:
        if _alive(p):
            try:
                os.killpg(p[0], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    for p in rec.procs:  # reap what we started when we are its parent (up() in this process)
        try:
            os.waitpid(p[0], os.WNOHANG)
        except ChildProcessError:
            pass
    _cleanup_files(rec)


def _cleanup_files(rec: UpRecord) -> None:
    shutil.rmtree(rec.rundir, ignore_errors=True)
    for path in (rec.socket, rec.socket + ".up"):
        try:
            os.unlink(path)
        except OSError:
            pass
