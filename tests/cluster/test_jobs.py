"""Batch sessions: ``gproc e --batch`` returns a job id; ``jobs``, ``output``, ``wait``; the master
keeps output and statuses across a restart, within a retention limit."""

from __future__ import annotations

import asyncio
import difflib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from tests.cluster.daemons import Daemon, node, wait_until
from tests.conftest import LocalCluster, start_cluster, stop_cluster

from gproc import local
from gproc.services.jobs import RESTARTED, JobStore

pytestmark = pytest.mark.cluster


def records(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def jobs(c: LocalCluster) -> dict[int, dict[str, object]]:
    r = c.gproc("jobs", "--json")
    assert r.returncode == 0, r.stderr
    return {int(str(x["id"])): x for x in records(r.stdout)}


def test_batch_job_runs_detached(cluster16: LocalCluster) -> None:
    script = 'sleep 1; echo "done $GPROC_NAME"; echo common; [ "$GPROC_NAME" = node5 ] && exit 3; exit 0'
    t0 = time.monotonic()
    r = cluster16.gproc("e", "--batch", "**", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    job = int(r.stdout.strip())
    row = jobs(cluster16)[job]
    assert time.monotonic() - t0 < 5 and row["batch"] is True and row["n"] == 16
    assert row["state"] == "running" or row["ok"] == 15
    text = cluster16.gproc("jobs").stdout
    assert str(job) in text and "STATE" in text and "sleep 1" in text
    w = cluster16.gproc("wait", str(job))
    assert w.returncode == 3, w.stderr
    row = jobs(cluster16)[job]
    assert (row["state"], row["status"], row["ok"], row["failed"]) == ("done", 3, 15, 1)
    # the stored output, in every format
    gathered = cluster16.gproc("output", "-b", str(job))
    assert gathered.returncode == 3
    assert "node[0-15] (16)" not in gathered.stdout and "node5 (1)\n" in gathered.stdout
    out = records(cluster16.gproc("output", "--json", str(job)).stdout)
    assert {"nodes": "node[0-15]", "stream": "stdout", "data": "common"} in out
    assert {"nodes": "node5", "status": 3} in out and {"nodes": "node[0-4,6-15]", "status": 0} in out
    lines = [x for x in out if x.get("stream") == "stdout" and x["data"] != "common"]
    assert sorted(str(x["data"]) for x in lines) == sorted(f"done node{i}" for i in range(16))
    diff = cluster16.gproc("output", "--diff", str(job)).stdout
    # every node's output differs (its name): each other node's as a diff to node0's (the reference
    # group itself only with -v, as clush --diff)
    ref = ["done node0\n", "common\n"]
    want = ""
    for i in range(1, 16):
        want += "".join(difflib.unified_diff(ref, [f"done node{i}\n", "common\n"], "node0 (1)", f"node{i} (1)"))
    assert diff == want
    verbose = cluster16.gproc("output", "--diff", "-v", str(job)).stdout
    assert verbose == "---------------\nnode0 (1)\n---------------\n" + "".join(ref) + want
    live = cluster16.gproc("output", str(job))
    assert "node[0-15]: common" in live.stdout and "node5: exit 3" in live.stderr


def test_output_follows_a_running_job(cluster16: LocalCluster) -> None:
    r = cluster16.gproc("e", "--batch", "-w", "node[0-3]", "sh", "-c", "echo first; sleep 2; echo second")
    job = r.stdout.strip()
    time.sleep(0.5)
    out = cluster16.gproc("output", job)
    assert out.returncode == 0
    assert out.stdout.splitlines() == ["node[0-3]: first", "node[0-3]: second"]


def test_unknown_job_and_bad_usage(cluster16: LocalCluster) -> None:
    r = cluster16.gproc("output", "999999")
    assert r.returncode == 1 and "no job 999999" in r.stderr and r.stderr.count("\n") == 1
    assert cluster16.gproc("wait", "abc").returncode == 2
    r = cluster16.gproc("e", "--batch", "--json", "-w", "node1", "true")
    assert records(r.stdout)[0]["n"] == 1


def test_retention_keeps_the_newest_jobs() -> None:
    c, d = start_cluster(2, 2, master_args=["--keep-jobs", "3"])
    try:
        ids = []
        for i in range(5):
            r = c.gproc("e", "--batch", "**", "echo", str(i))
            ids.append(int(r.stdout))
            assert c.gproc("wait", r.stdout.strip()).returncode == 0
        assert sorted(jobs(c)) == ids[2:]
        assert c.gproc("output", str(ids[0])).returncode == 1
        assert sorted(os.listdir(os.path.join(c.rundir, "state", "jobs"))) == sorted(f"{i}.out" for i in ids[2:])
        assert c.gproc("output", str(ids[4])).stdout == "node[0-1]: 4\n"
    finally:
        stop_cluster(c, d)


def test_job_store_bounds_bytes(tmp_path: object) -> None:
    """A job's output stops being stored beyond keep_bytes (statuses still are); old jobs go first."""
    import sqlite3

    async def go() -> None:
        db = sqlite3.connect(":memory:", isolation_level=None)
        store = JobStore(db, os.path.join(str(tmp_path), "jobs"), keep_jobs=100, keep_bytes=10_000)
        for job in (1, 2, 3):
            rec = store.start(job, 0, ["x"], "n[0-1]", 2, True, "")
            for i in range(100):
                rec.add([[["o", 1, i, b"z" * 200], "n[0-1]", 2]])
            rec.add([[["s", 0, ""], "n[0-1]", 2]])
            rec.finish(0, 0)
            assert store.get(job) is not None and store.get(job)["truncated"]  # type: ignore[index]
            assert any(g[0][0] == "s" for out in store.records(job) for g in out)
        kept = [r["id"] for r in store.list(None)]
        assert kept[-1] == 3 and len(kept) < 3
        total = sum(os.path.getsize(store.path(j)) for j in kept)
        assert total <= 2 * 10_000 + 1000

    asyncio.run(go())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_jobs_survive_a_master_restart(tmpdir_short: str) -> None:
    d = tmpdir_short
    key = os.path.join(d, "key")
    subprocess.run([sys.executable, "-m", "gproc", "keygen", "--key", key], check=True, capture_output=True)
    sock, state, port = os.path.join(d, "g"), os.path.join(d, "st"), _free_port()
    env = {**os.environ, "GPROC_MASTER": sock}

    def master() -> Daemon:
        args = ["m", "--socket", sock, "--state", state, "--listen", f"127.0.0.1:{port}", "--key", key]
        return Daemon(*args, log=os.path.join(d, "m.log"))

    def gproc(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gproc", *args], capture_output=True, text=True, env=env)

    def up() -> int:
        return sum(1 for x in records(gproc("i", "--json").stdout) if x["state"] == "up")

    m = master()
    nodes: list[Daemon] = []
    try:
        nodes = [node(f"n{i}", str(i), f"127.0.0.1:{port}", key, os.path.join(d, f"n{i}.log")) for i in range(3)]
        wait_until(lambda: up() == 3, 30, "nodes to register")
        done = gproc("e", "--batch", "**", "sh", "-c", 'echo "out of $GPROC_NAME"; exit 4').stdout.strip()
        assert gproc("wait", done).returncode == 4
        running = gproc("e", "--batch", "-w", "n[0-1]", "sh", "-c", "echo begun; sleep 3").stdout.strip()
        rows = {int(x["id"]): x for x in records(gproc("jobs", "--json").stdout)}
        assert rows[int(running)]["state"] == "running"
        m.signal(signal.SIGKILL)  # a crash: running jobs go on, the master forgets them
        assert m.wait(10) is not None
        m = master()
        wait_until(lambda: up() == 3, 30, "nodes to re-register with the new master")
        rows = {int(x["id"]): x for x in records(gproc("jobs", "--json").stdout)}
        assert rows[int(done)]["state"] == "done" and rows[int(done)]["status"] == 4
        assert rows[int(running)]["state"] == "lost" and rows[int(running)]["status"] == 255
        out = records(gproc("output", "--json", done).stdout)
        assert sorted(str(x["data"]) for x in out if "stream" in x) == [f"out of n{i}" for i in range(3)]
        assert {"nodes": "n[0-2]", "status": 4} in out
        assert gproc("wait", done).returncode == 4
        lost = records(gproc("output", "--json", running).stdout)
        assert {"nodes": "n[0-1]", "status": 255, "error": RESTARTED} in lost
        w = gproc("wait", running)
        assert w.returncode == 255 and "master" in w.stderr
        assert gproc("e", "**", "true").returncode == 0  # and the restarted master works
    finally:
        m.end()
        for n in nodes:
            n.end()


def test_output_follower_that_does_not_read_holds_no_memory(cluster16: LocalCluster) -> None:
    """A raw ``output`` client follows a running batch job and never reads while the job writes
    200 MB: the master's memory stays bounded (it used to queue every record for the follower), the
    job ends, and a client that does read then gets the whole output."""
    from gproc.client import Cluster, Connection, Output

    master = local.UpRecord.load(cluster16.socket)
    assert master is not None
    master_pid = master.procs[0][0]
    size = 200 * 10**6
    script = f"sleep 1; head -c {size} /dev/zero | tr '\\0' x | fold -w 99"
    r = cluster16.gproc("e", "--batch", "-w", "node5", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    job = int(r.stdout.strip())

    async def go() -> tuple[int, int]:
        conn = await Connection.open(cluster16.socket)
        conn.send({"t": "req", "fn": "output", "job": job})  # and never read
        before = _rss_kib(master_pid)
        peak = 0
        cl = Cluster(cluster16.socket, timeout=10)
        waiting = asyncio.ensure_future(cl.wait(job=job))
        async with asyncio.timeout(240):  # a bound on the wait, not a timing assertion
            while not waiting.done():
                peak = max(peak, _rss_kib(master_pid) - before)
                await asyncio.sleep(0.2)
        assert (await waiting)["status"] == 0
        conn.close()
        got = 0
        async with asyncio.timeout(240):
            async for ev in await cl.output(job):
                if isinstance(ev, Output):
                    got += len(ev.data)
        return peak, got

    peak, got = asyncio.run(go())
    print(f"master grew at most {peak} KiB while its follower read nothing; {got} bytes replayed")
    assert got == size + size // 99  # every line of 99 and its newline
    assert peak < 100 * 1024, f"the master grew {peak} KiB for a follower that reads nothing"


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")
