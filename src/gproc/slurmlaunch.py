"""``gproc launch --slurm``: inside a Slurm allocation, one node daemon per allocated node with ``srun``.

Uses the master at the client socket, or starts one here (the machine ``salloc``/``sbatch`` runs the
command on). One ``srun`` step, one task per node, runs ``python -m gproc.slurmagent`` everywhere at
once; each task becomes its node's daemon, named by its Slurm node name, with its parent computed
from ``SLURM_PROCID`` as a tree ``fanout`` wide (``slurmagent``). The step starts while the master
does; once the master listens, the request (its address, the node list and the cluster credential)
goes in the step's stdin, which srun hands to every task: never on a command line, in an environment
or in a file. srun runs detached for as long as the daemons do (its log, labelled by rank, is where
a failed node's reason is read); the launch returns once every node joined the master, or reports
those that did not. A node srun cannot start a task on fails the whole step (Slurm's rule): the
step goes again without it.

``gproc launch --stop`` (``stop``) shuts the tree down through the master when the launch started
it, waits for the step to end, and otherwise ends it: ``scancel`` of the step, then srun itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import psutil
from ClusterShell.NodeSet import NodeSet, NodeSetException

from gproc import credential, launch
from gproc.client import Cluster, socket_path
from gproc.errors import GprocError, UsageError

DEFAULT_PORT = 6666
STEP_NAME = "gproc-daemons"
_WILDCARD = ("", "0.0.0.0", "::", "[::]")


def allocation() -> tuple[str, list[str]]:
    """(job id, node names) of the allocation this runs in."""
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("SLURM_JOBID")
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not job or not nodelist:
        raise UsageError("not inside a Slurm allocation (run it under salloc or sbatch)")
    try:
        names = list(NodeSet(nodelist))
    except NodeSetException as e:
        raise UsageError(f"bad SLURM_JOB_NODELIST {nodelist!r}: {e}") from None
    if shutil.which("srun") is None:
        raise GprocError("no srun here (Slurm's client commands are needed)")
    return job, names


def _srun_argv(n: int, python: str) -> list[str]:
    return [
        "srun", f"--nodes={n}", f"--ntasks={n}", "--ntasks-per-node=1",
        "--input=all",  # the request (and the credential in it) to every task
        "--label",  # a rank's lines are told apart in the log: a failed node's reason
        "--kill-on-bad-exit=0",  # one failed daemon leaves the others running
        "--overlap",  # the daemons hold no CPUs the allocation's own steps wait for
        f"--job-name={STEP_NAME}",
        python, "-m", "gproc.slurmagent",
    ]  # fmt: skip


def launch_slurm(
    *,
    fanout: int = 16,
    socket: str | None = None,
    key: str | None = None,
    listen: str | None = None,
    address: str | None = None,
    port: int = DEFAULT_PORT,
    bin_root: str | None = None,
    python: str | None = None,
    debug: int = 0,
    wait: float | None = None,
    join_timeout: float = 60.0,
) -> launch.Outcome:
    """Start a daemon on every node of this allocation; return once they joined (or the time is up).

    ``listen``: where a master started here listens (default every address, a free port); ``address``:
    the master's host as the nodes reach it (default: its listening address, or, when that is every
    address, the address srun ran at); ``port``: the nodes' port (and a new master's); ``wait``: how
    long a node waits for its parent to listen before it joins an ancestor (default: a third of
    ``join_timeout``, at most 20 s)."""
    t0 = time.monotonic()
    if fanout < 1:
        raise UsageError(f"--fanout must be at least 1 (got {fanout})")
    if port == 0:
        raise UsageError("--slurm needs a fixed --port: a node reaches its parent at its name and that port")
    job, names = allocation()
    sock = socket_path(socket)
    if launch.LaunchRecord.load(sock) is not None:
        raise UsageError(f"a launch is recorded at {sock}.launch (stop it first: gproc launch --stop)")
    py = python or sys.executable
    rec = launch.LaunchRecord(sock, names, fanout, [], py, rundir=tempfile.mkdtemp(prefix="gproc-launch-"))
    rec.slurm = {"job": job, "step_name": STEP_NAME}
    keyfile = credential.key_path(key)
    try:
        stats = asyncio.run(launch._master_stats(sock))
        if stats is not None and not stats.get("listen"):
            raise GprocError(f"the master at {sock} does not listen on TCP: nodes cannot join it")
        if stats is None and not os.path.exists(keyfile):
            keyfile = credential.keygen(os.path.join(rec.rundir, "cluster.key"))
        try:
            with open(keyfile) as f:
                pem = f.read()
        except OSError as e:
            raise GprocError(f"cannot read the cluster credential {keyfile}: {e.strerror}") from None
        # the step starts while the master does: its tasks start Python and wait for the request
        srun = _start_step(rec, len(names), [], os.path.join(rec.rundir, "srun-0.log"))
        if stats is None:
            # a free port unless told: under sbatch this runs on the first node, where a daemon takes ``port``
            master_addr = launch._start_master(rec, keyfile, listen or "0.0.0.0:0", port, debug)
        else:
            master_addr = str(stats["listen"])
        host, _, mport = master_addr.rpartition(":")
        host = address or ("" if host in _WILDCARD else host)
        req = {"key": pem, "master": f"{host}:{mport}", "fanout": fanout, "port": port, "bin_root": bin_root}
        req |= {"debug": debug, "wait": min(20.0, join_timeout / 3) if wait is None else wait}
        dead: dict[str, str] = {}  # nodes srun could not start a task on: the step goes again without them
        for attempt in range(3):
            live = [n for n in names if n not in dead]
            log = os.path.join(rec.rundir, f"srun-{attempt}.log")
            if attempt:
                srun = _start_step(rec, len(live), sorted(dead), log)
            _send(srun, {**req, "names": live})
            rows = _wait_joined(sock, live, srun, log, join_timeout)
            refused = unreachable(log)
            if srun.poll() is None or not refused or not set(live) - set(refused):
                break
            dead.update(refused)
        rows = [r for r in rows if r["host"] not in dead]  # the last attempt may have found more
        rows += [{"host": n, "ok": False, "rank": None, "error": why} for n, why in dead.items()]
        order = {n: i for i, n in enumerate(names)}
        rows.sort(key=lambda r: order[r["host"]])
    except BaseException:
        with contextlib.suppress(Exception):
            stop(sock)
        raise
    return launch.Outcome(rows, sock, time.monotonic() - t0, bool(rec.master))


def _start_step(rec: launch.LaunchRecord, n: int, exclude: list[str], log: str) -> subprocess.Popen[bytes]:
    """srun running the agent on ``n`` nodes (``exclude`` left out), waiting for the request (``_send``)."""
    argv = _srun_argv(n, rec.python)
    if exclude:
        argv[1:1] = [f"--exclude={NodeSet.fromlist(exclude)}"]
    with open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as out:
        srun = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=out,
            start_new_session=True,  # outlives this command; stopped by --stop or the allocation's end
        )
    rec.slurm["srun"] = [srun.pid, psutil.Process(srun.pid).create_time()]
    rec.save()
    return srun


def _send(srun: subprocess.Popen[bytes], req: dict[str, Any]) -> None:
    """The request, credential included, to every task: srun's stdin is theirs (``--input=all``).

    Written from a thread: srun reads it once the tasks run, and a request larger than a pipe holds
    (thousands of node names) would otherwise hold the launch past its timeout while the step waits."""
    stdin = srun.stdin
    assert stdin is not None

    def write() -> None:
        with contextlib.suppress(BrokenPipeError, ValueError):
            stdin.write(json.dumps(req).encode())
            stdin.close()

    threading.Thread(target=write, name="srun-stdin", daemon=True).start()


def _up(sock: str) -> set[str]:
    try:
        info = asyncio.run(Cluster(sock, timeout=5.0).info())
    except GprocError:
        return set()
    return {n["name"] for n in info["nodes"] if n["state"] == "up"}


def _wait_joined(
    sock: str, names: list[str], srun: subprocess.Popen[bytes], log: str, timeout: float
) -> list[dict[str, Any]]:
    """Each node's outcome once all joined, srun ended, or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    up: set[str] = set()
    while time.monotonic() < deadline:
        up = _up(sock)
        if up >= set(names) or srun.poll() is not None:
            break
        time.sleep(0.1)
    if srun.poll() is not None:
        up = _up(sock)
    reasons = failures(log, names)
    rows = []
    for i, n in enumerate(names):
        row: dict[str, Any] = {"host": n, "ok": n in up, "rank": i}
        if n not in up:
            row["error"] = reasons.get(n) or (
                f"srun ended: {reasons['']}" if "" in reasons and srun.poll() is not None
                else f"did not join the master within {timeout:.0f}s (srun's log: {log})"
            )  # fmt: skip
        rows.append(row)
    return rows


_EXITED = re.compile(r"srun: error: (\S+): tasks? ([\d,-]+): (.*)")
_REFUSED = re.compile(r"srun: error: Task launch for \S+ failed on node (\S+): (.*)")


def unreachable(log: str) -> dict[str, str]:
    """Nodes srun could not start a task on (their slurmd is down: srun then fails the whole step)."""
    try:
        with open(log, errors="replace") as f:
            found = (_REFUSED.match(ln.strip()) for ln in f)
            return {m.group(1): f"srun could not start a task there: {m.group(2)}" for m in found if m}
    except OSError:
        return {}


def failures(log: str, names: list[str]) -> dict[str, str]:
    """Why nodes failed, from srun's labelled log: a rank's own last line (its daemon's or agent's
    error) with srun's verdict on it; key "" holds srun's own last error."""
    last: dict[int, str] = {}
    verdict: dict[str, str] = {}
    srun_err = ""
    try:
        with open(log, errors="replace") as f:
            lines = f.read()[-200_000:].splitlines()
    except OSError:
        lines = []
    for ln in lines:
        rank, sep, text = ln.partition(": ")
        if sep and rank.strip().isdigit():
            if text.strip():
                last[int(rank)] = text.strip()
            continue
        m = _EXITED.match(ln.strip())
        if m:
            verdict[m.group(1)] = m.group(3)
        elif ln.startswith(("srun: error: ", "srun: fatal: ")):
            srun_err = ln.split(": ", 2)[2].strip()
    out = {"": srun_err} if srun_err else {}
    for i, n in enumerate(names):
        parts = [p for p in (verdict.get(n), last.get(i)) if p]
        if parts:
            out[n] = ": ".join(parts)
    return out


def _step_ids(job: str) -> list[str]:
    """This launch's steps of ``job`` still known to Slurm."""
    try:
        r = subprocess.run(
            ["squeue", "--steps", f"--jobs={job}", "--noheader", "--format=%i %j"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [f.split()[0] for f in r.stdout.splitlines() if len(f.split()) == 2 and f.split()[1] == STEP_NAME]


def stop(socket: str | None = None, grace: float = 10.0) -> list[dict[str, Any]]:
    """Stop what the Slurm launch recorded at ``socket`` started; each node's outcome."""
    sock = socket_path(socket)
    rec = launch.LaunchRecord.load(sock)
    if rec is None or not rec.slurm:
        raise UsageError(f"no Slurm launch recorded at {sock} (nothing to stop)")
    srun: list[float] = rec.slurm.get("srun") or []
    if rec.master and launch._alive(rec.master):  # the tree ends its jobs and exits; so does the step
        with contextlib.suppress(GprocError, OSError):
            asyncio.run(Cluster(sock, timeout=3.0).shutdown())
    ended_by = "shutdown"

    def running() -> bool:
        return bool(srun) and launch._alive(srun)

    deadline = time.monotonic() + grace
    while running() and time.monotonic() < deadline:
        time.sleep(0.05)
    if running():
        ended_by = "scancel"
        for step in _step_ids(rec.slurm["job"]):
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(["scancel", "--quiet", step], capture_output=True, timeout=30)
        deadline = time.monotonic() + grace
        while running() and time.monotonic() < deadline:
            time.sleep(0.05)
    if running():
        ended_by = "kill"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(srun[0]), signal.SIGKILL)
    left = _step_ids(rec.slurm["job"])
    why = f"the step {', '.join(left)} is still running" if left else ""
    rows = [
        {"host": h, "ok": not left, "reached": True, "stopped": None if ended_by == "shutdown" else ended_by}
        | ({"error": why} if why else {})
        for h in rec.hosts
    ]
    rec.hosts = []  # nothing for the ssh sweep of launch.stop: it ends the master and removes the files
    rec.save()
    launch.stop(sock)
    return rows
