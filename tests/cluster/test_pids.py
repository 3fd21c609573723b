"""The single process space (SPEC §7) on real local clusters: gpids, ps, kill, wait, jobs starting jobs
from inside the tree, a master restart, and the allocation stress test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from tests.cluster.daemons import wait_until
from tests.cluster.users import as_user
from tests.conftest import LocalCluster, start_cluster, stop_cluster

from gproc import Cluster, local
from gproc import bundle as _bundle  # noqa: F401  (loaded before as_user drops to a user who cannot read root's site-packages)
from gproc import ranks as rankset

pytestmark = pytest.mark.cluster


def api(c: LocalCluster, fn: Callable[[Cluster], Any]) -> Any:
    async def go() -> Any:
        return await fn(Cluster(c.socket))

    return asyncio.run(go())


def ps(c: LocalCluster, *args: str) -> list[dict[str, Any]]:
    r = c.gproc("ps", "--json", *args)
    assert r.returncode == 0, r.stderr
    return [json.loads(x) for x in r.stdout.splitlines() if x.strip()]


def background(c: LocalCluster, *args: str) -> subprocess.Popen[str]:
    """``gproc e`` left running (ended by the test through kill, or killed in its cleanup)."""
    env = {**os.environ, "GPROC_MASTER": c.socket}
    return subprocess.Popen(
        [sys.executable, "-m", "gproc", "e", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(p: subprocess.Popen[str], timeout: float = 20) -> tuple[int, str, str]:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise
    return p.returncode, out, err


def rows_where(c: LocalCluster, pred: Callable[[dict[str, Any]], bool], n: int = 1) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []

    def ready() -> bool:
        got[:] = [r for r in ps(c) if pred(r)]
        return len(got) >= n

    wait_until(ready, 20, f"{n} matching ps rows")
    return got


def routed(c: LocalCluster) -> dict[str, int]:
    """kill/wait ops each node has run so far."""
    r = api(c, lambda k: k.gpids(nodes_stats=True))
    out: dict[str, int] = {}
    for row in r["nodes"]:
        from ClusterShell.NodeSet import NodeSet

        for name in NodeSet(row["nodes"]):
            out[name] = row["routed"]
    return out


def test_each_start_gets_its_own_gpid_from_its_nodes_block(c8: LocalCluster) -> None:
    seen: dict[int, str] = {}
    for _ in range(2):
        r = c8.gproc("e", "--json", "**", "sh", "-c", 'echo "$GPROC_GPID $GPROC_PARENT_GPID $GPROC_MASTER"')
        assert r.returncode == 0, r.stderr
        for rec in map(json.loads, r.stdout.splitlines()):
            if "stream" in rec:
                g, parent, sock = rec["data"].split()
                assert int(g) not in seen and parent == "0"
                assert sock.endswith(".sock") and sock != c8.socket  # the node's own client socket
                seen[int(g)] = rec["nodes"]
    assert len(seen) == 16
    table = api(c8, lambda k: k.gpids(blocks=True))["table"]
    for g, node in seen.items():
        owner = [name for start, size, name in table if start <= g < start + size]
        assert owner == [node], (g, node, owner)


def test_ps_shows_jobs_and_what_they_fork(c8: LocalCluster) -> None:
    p = background(c8, "-w", "node3", "sh", "-c", "sleep 60 & sleep 61 & wait")
    try:
        rows = rows_where(c8, lambda r: r["name"] == "node3" and r["cmd"] in ("sleep 60", "sleep 61"), 2)
        root = next(r for r in ps(c8) if r["gpid"] == rows[0]["parent_gpid"])
        assert root["cmd"] == "sh -c sleep 60 & sleep 61 & wait" and root["parent_gpid"] == 0
        assert {r["parent_gpid"] for r in rows} == {root["gpid"]} and {r["job"] for r in rows} == {root["job"]}
        for r in [root, *rows]:
            assert r["user"] == pwd.getpwuid(os.geteuid()).pw_name
            assert r["pid"] > 0 and r["stat"] in "RSD" and r["rss"] > 0
            assert set(r) == {"gpid", "parent_gpid", "name", "pid", "user", "stat", "cpu", "rss", "time", "job", "cmd"}
        text = c8.gproc("ps").stdout
        assert text.splitlines()[0].split() == [
            "GPID",
            "NAME",
            "PID",
            "USER",
            "STAT",
            "%CPU",
            "RSS",
            "TIME",
            "JOB",
            "CMD",
        ]
        forest = c8.gproc("ps", "--forest", "-w", "node3").stdout
        assert re.search(r"sh -c sleep 60 & sleep 61 & wait\n.*\\_ sleep 60\n.*\\_ sleep 61", forest), forest
        assert ps(c8, "-w", "node[0-2]") == [] or all(r["name"] != "node3" for r in ps(c8, "-w", "node[0-2]"))
        r = c8.gproc("kill", f"%{root['job']}")
        assert r.returncode == 0, r.stderr
        assert finish(p)[0] == 128 + signal.SIGTERM
        wait_until(lambda: not [r for r in ps(c8) if r["job"] == root["job"]], 10, "the job's forked sleeps to go")
    finally:
        p.kill()
        p.wait()


def test_kill_reaches_only_the_owner_and_wait_gives_128_plus_n(c8: LocalCluster) -> None:
    p = background(c8, "-w", "node5", "sleep", "60")
    try:
        (row,) = rows_where(c8, lambda r: r["name"] == "node5" and r["cmd"] == "sleep 60")
        g = row["gpid"]
        before = routed(c8)
        r = c8.gproc("kill", "-USR1", str(g))
        assert r.returncode == 0, r.stderr
        r = c8.gproc("wait", str(g))
        assert r.returncode == 128 + signal.SIGUSR1, r.stderr
        after = routed(c8)
        assert {n: after[n] - before[n] for n in after if after[n] != before[n]} == {"node5": 2}  # no broadcast
        assert finish(p)[0] == 128 + signal.SIGUSR1
        r = c8.gproc("wait", "--json", str(g))  # once more, long after it ended
        assert r.returncode == 128 + signal.SIGUSR1
        assert json.loads(r.stdout) == {"gpid": g, "status": 128 + signal.SIGUSR1, "name": "node5"}
        r = c8.gproc("kill", "-9", str(g))
        assert r.returncode == 1 and "no such process" in r.stderr
        r = c8.gproc("wait", "1999999999")
        assert r.returncode == 127 and "no such process" in r.stderr
        r = c8.gproc("kill", "-NOSUCH", str(g))
        assert r.returncode == 2 and "unknown signal" in r.stderr
    finally:
        p.kill()
        p.wait()


def test_kill_and_wait_a_job_on_every_node(c8: LocalCluster) -> None:
    p = background(c8, "**", "sh", "-c", "echo job=$GPROC_JOBID; sleep 60 & sleep 60")
    try:
        assert p.stdout is not None
        m = re.search(r"job=(\d+)", p.stdout.readline())
        assert m, "no job id"
        job = m.group(1)
        rows_where(c8, lambda r: str(r["job"]) == job and r["cmd"] == "sleep 60", 16)
        r = c8.gproc("kill", "--json", f"job:{job}")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["signalled"] == 8
        r = c8.gproc("wait", "--json", f"%{job}")
        assert r.returncode == 128 + signal.SIGTERM
        assert [json.loads(x) for x in r.stdout.splitlines()] == [
            {"job": int(job), "state": "done", "status": 128 + signal.SIGTERM}
        ]
        assert c8.gproc("wait", job).returncode == 128 + signal.SIGTERM  # a bare job id: one number space
        assert finish(p)[0] == 128 + signal.SIGTERM
        wait_until(lambda: not [r for r in ps(c8) if str(r["job"]) == job], 10, "every process of the job to go")
        r = c8.gproc("kill", "--json", f"%{job}")
        assert r.returncode == 1, (r.stdout, r.stderr, ps(c8))
        r = c8.gproc("kill", job)  # a bare job id is recognised as one
        assert r.returncode == 1 and f"job {job}: no such job" in r.stderr, r.stderr
    finally:
        p.kill()
        p.wait()


def test_inside_a_job_e_ps_kill_wait_work_and_lineage_crosses_nodes(c8: LocalCluster) -> None:
    victim = background(c8, "-w", "node2", "sleep", "60")
    nested = background(c8, "-w", "node6", "sh", "-c", "gproc e -w node1 sleep 50")
    try:
        (v,) = rows_where(c8, lambda r: r["name"] == "node2" and r["cmd"] == "sleep 60")
        # node7 is three hops below the master: its socket relays ps, kill and wait up the tree
        script = f"gproc ps --json -w node2 | grep -c 'sleep 60'; gproc kill -KILL {v['gpid']}; gproc wait {v['gpid']}"
        r = c8.gproc("e", "-w", "node7", "sh", "-c", script + '; echo "rc=$?"')
        assert r.returncode == 0, r.stdout + r.stderr
        assert "node7: 1" in r.stdout and "node7: rc=137" in r.stdout, r.stdout
        assert finish(victim)[0] == 137
        # a job started from a job on node6 runs on node1 with the starting process as its parent
        (leaf,) = rows_where(c8, lambda r: r["name"] == "node1" and r["cmd"] == "sleep 50")
        rows = {r["gpid"]: r for r in ps(c8)}
        cli = rows[leaf["parent_gpid"]]
        assert cli["name"] == "node6" and "gproc e -w node1 sleep 50" in cli["cmd"]
        top = rows[cli["parent_gpid"]]
        assert top["name"] == "node6" and top["parent_gpid"] == 0 and top["cmd"].startswith("sh -c gproc e")
        forest = [(r["gpid"], r["depth"]) for r in ps(c8, "--forest")]
        i = forest.index((top["gpid"], 0))
        assert forest[i + 1 : i + 3] == [(cli["gpid"], 1), (leaf["gpid"], 2)]
        r = c8.gproc("e", "-w", "node1", "sh", "-c", "echo $GPROC_PARENT_GPID")  # not from a job: no parent
        assert "node1: 0" in r.stdout
        # ending the outer job ends its gproc client, and with it the nested job (as for any client)
        assert c8.gproc("kill", f"%{top['job']}").returncode == 0
        finish(nested)
        wait_until(lambda: not [r for r in ps(c8) if r["job"] == leaf["job"]], 15, "the nested job to end")
    finally:
        for p in (victim, nested):
            p.kill()
            p.wait()


def test_node_socket_survives_garbage(c8: LocalCluster) -> None:
    import socket
    import struct

    from tests.cluster.rawpeer import messages, read_to_close

    from gproc import wire

    sock = os.path.join(c8.rundir, "n", "7.sock")
    for payload in (
        os.urandom(100),
        struct.pack(">I", 0xFFFFFFFF),
        wire.pack(wire.hello("client")) + wire.pack({"t": "nonsense"}),
        wire.pack(wire.hello("client")) + wire.pack({"t": "req", "fn": "kill", "gpids": "x"}),
    ):
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        s.sendall(payload)
        got = messages(read_to_close(s))  # the node closes it (a timeout here fails the test)
        s.close()
        errors = [m for m in got if m.get("t") == "error"]
        assert len(errors) == 1, got
        if payload.startswith(wire.pack(wire.hello("client"))):  # past the hello: the request's own check
            assert [m["t"] for m in got] == ["hello", "error"] and "version" not in errors[0]["msg"], got
    r = c8.gproc("i", "--json", env={"GPROC_MASTER": sock})  # the same node still relays
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 8, r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_users_see_and_signal_only_their_own(c8: LocalCluster) -> None:
    os.chmod(os.path.dirname(c8.socket), 0o755)  # let another user reach the master's socket
    nobody = 65534
    p = background(c8, "-w", "node4", "sleep", "60")
    try:
        (mine,) = rows_where(c8, lambda r: r["name"] == "node4" and r["cmd"] == "sleep 60")

        def other_user() -> Any:
            async def go() -> Any:
                k = Cluster(c8.socket)
                rows, _ = await k.ps(include="node4")
                killed = await k.kill([mine["gpid"]], sig=9)
                job = await k.exec(["sh", "-c", "echo $GPROC_GPID; exec sleep 30"], include="node4", cwd="/tmp")
                own = 0
                async for ev in job:
                    if hasattr(ev, "data"):
                        own = int(ev.data)
                        assert (await k.kill([own], sig=15))["results"][0]["code"] == 0
                waited = await k.wait([mine["gpid"], own])
                return {"rows": rows, "killed": killed, "waited": waited, "status": job.exit_status, "own": own}

            return asyncio.run(go())

        got = as_user(nobody, other_user)
        assert "exception" not in got, got
        row = next(r for r in got["rows"] if r["gpid"] == mine["gpid"])
        assert row["cmd"] == "[sleep]" and row["user"] == "root"  # seen, but not its arguments
        assert got["killed"]["results"][0]["code"] == 2 and "permission" in got["killed"]["results"][0]["error"]
        assert got["status"] == 128 + signal.SIGTERM  # its own job, killed by itself through its gpid
        codes = {res["gpid"]: res["code"] for res in got["waited"]["results"]}
        assert codes == {mine["gpid"]: -3, got["own"]: 128 + signal.SIGTERM}
        assert [r for r in ps(c8) if r["gpid"] == mine["gpid"]], "root's process must still run"
    finally:
        os.chmod(os.path.dirname(c8.socket), 0o700)
        p.kill()
        p.wait()
        c8.gproc("kill", "-9", str(mine["gpid"]))


def test_master_restart_keeps_blocks_and_routes() -> None:
    c, d = start_cluster(6, 2)
    p = None
    try:
        p = background(c, "-w", "node5", "sh", "-c", "echo $GPROC_GPID; exec sleep 60")
        assert p.stdout is not None
        g = int(p.stdout.readline().split(":")[1])
        before = api(c, lambda k: k.gpids(blocks=True))
        local.restart_master(c.socket)  # SIGKILL, then the same state, socket and address
        after = api(c, lambda k: k.gpids(blocks=True))
        assert after["table"] == before["table"] and after["requests"] == before["requests"]
        assert [r["gpid"] for r in ps(c) if r["cmd"] == "sleep 60"] == [g]
        assert c.gproc("kill", str(g)).returncode == 0
        assert c.gproc("wait", str(g)).returncode == 128 + signal.SIGTERM
        r = c.gproc("e", "--json", "**", "sh", "-c", "echo $GPROC_GPID")
        new = [int(x["data"]) for x in map(json.loads, r.stdout.splitlines()) if "data" in x]
        assert len(set(new)) == 6 and g not in new
        finish(p)
    finally:
        if p is not None:
            p.kill()
            p.wait()
        stop_cluster(c, d)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_stopping_the_nodes_ends_what_a_finished_job_left_in_its_session() -> None:
    """A job's program has ended, its background processes run on (as after a shell script's end).
    `gproc down` ends them with the nodes; a process that called setsid has left the job and stays."""
    c, d = start_cluster(2, 2)
    left: list[int] = []
    escaped: list[int] = []
    try:
        line = "sleep 300 & echo $!; (sleep 300 & echo $!); setsid sleep 300 & echo s$!"
        r = c.gproc("e", "--json", "**", "sh", "-c", line)
        assert r.returncode == 0, r.stderr
        pids = [str(x["data"]).strip() for x in map(json.loads, r.stdout.splitlines()) if "data" in x]
        left = [int(p) for p in pids if not p.startswith("s")]
        escaped = [int(p[1:]) for p in pids if p.startswith("s")]
        assert len(left) == 4 and len(escaped) == 2, pids
        assert all(alive(p) for p in left + escaped)
    finally:
        stop_cluster(c, d)
        try:
            wait_until(lambda: not any(alive(p) for p in left), 10.0, "the job's leftovers end with the nodes")
            assert all(alive(p) for p in escaped), "a process that left its job's session was killed"
        finally:
            for p in left + escaped:  # what the test started, by pid, also when it failed
                if alive(p):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p, signal.SIGKILL)


STARTS, NODES, BLOCK = 100_000, 64, 64


def test_stress_100000_starts_over_64_nodes_with_collection_and_master_restart() -> None:
    """What is real here and what is not.

    Real: a local cluster of 64 node daemons (TLS tree, fanout 8), each node's own ``GpidSource`` and
    ``BlockAllocator``, every block request travelling up the tree to the master, the master's
    ``BlockTable`` in SQLite, a collection round through the tree, and a master crash (SIGKILL) and
    restart in the middle, with the nodes re-attaching by themselves. 3 x 64 process starts are real
    ``gproc e`` jobs. The rest of the 100,000 starts are the ``allocate`` op: each node takes gpids
    from its allocator exactly as its exec service does for a start (``await take()``, yielding to
    the loop after each), without spawning a process (100,000 spawns would take minutes on 2 cores).

    Checked: no gpid is given twice, every gpid lies in a block the master's table gives to the node
    that used it (after the restart too), and the master handled at most starts/block + nodes block
    requests (its counter is in SQLite, so it spans both master lifetimes).
    """
    c, d = start_cluster(NODES, 8, gpid_block=BLOCK)
    used: dict[int, str] = {}
    starts = 0

    def take(nodes: str, gpids: list[int]) -> None:
        for g in gpids:
            assert g not in used, f"gpid {g} given twice ({used[g]} and {nodes})"
            used[g] = nodes

    def real_starts() -> None:
        nonlocal starts
        r = c.gproc("e", "--json", "**", "sh", "-c", "echo $GPROC_GPID")
        assert r.returncode == 0, r.stderr
        for x in map(json.loads, r.stdout.splitlines()):
            if "data" in x:
                take(x["nodes"], [int(x["data"])])
                starts += 1

    def drill(n: int, include: str) -> None:
        nonlocal starts
        r = api(c, lambda k: k.allocate(n, include=include))
        assert not r["errors"], r["errors"]
        for row in r["nodes"]:
            gpids = sorted(rankset.decode(row["gpids"]))
            assert len(gpids) == n
            take(row["name"], gpids)
            starts += n

    try:
        busy, idle = "node[0-47]", "node[48-63]"
        drill(900, busy)  # the first part: 48 nodes busy, 16 idle since they attached
        collected = api(c, lambda k: k.collect())
        assert collected["released"] == 16 * (2 * BLOCK - 8)  # the idle nodes gave back all but 8 each
        real_starts()
        local.restart_master(c.socket)
        real_starts()
        real_starts()
        rest = STARTS - starts
        per_idle = 1150
        per_busy = (rest - 16 * per_idle) // 48
        drill(per_busy, busy)
        drill(per_idle, idle)  # the collected nodes start again
        drill(STARTS - starts, "node0")  # the remainder, so that the total is exactly 100,000
        assert starts == STARTS and len(used) == STARTS
        info = api(c, lambda k: k.gpids(blocks=True))
        owner = {}
        for start, size, name in info["table"]:
            for g in range(start, start + size):
                owner[g] = name
        for g, name in used.items():
            assert owner.get(g) == name, f"gpid {g} used on {name}, the table says {owner.get(g)}"
        assert info["collected"] >= collected["released"]
        assert info["requests"] <= STARTS / BLOCK + NODES, info
        print(f"\n{STARTS} starts on {NODES} nodes, block {BLOCK}: {info['requests']} block requests "
              f"(bound {STARTS / BLOCK + NODES:.0f}), {info['collected']} gpids collected")  # fmt: skip
    finally:
        stop_cluster(c, d)
