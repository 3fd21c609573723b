"""stdin: broadcast to every process of the job, once per tree link, with flow control that keeps
every daemon's memory bounded; ``-n`` gives EOF at once."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import threading
import time

import psutil
import pytest
from tests.conftest import LocalCluster

from gproc import Cluster, Output, local, wire
from gproc.client import Connection
from gproc.errors import GprocError

pytestmark = pytest.mark.cluster


def records(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_stdin_reaches_every_process(cluster16: LocalCluster) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)

    async def go() -> list[tuple[str, bytes]]:
        status, events = await Cluster(cluster16.socket).run(["sha256sum"], "**", stdin=data)
        assert status == 0
        return [(e.nodes, e.data) for e in events if isinstance(e, Output)]

    assert asyncio.run(go()) == [("node[0-15]", f"{hashlib.sha256(data).hexdigest()}  -\n".encode())]
    r = cluster16.gproc("e", "**", "cat", input=b"line one\nline two\n")
    assert r.returncode == 0 and r.stdout == "node[0-15]: line one\nnode[0-15]: line two\n"


def test_stdin_crosses_each_tree_link_once(cluster16: LocalCluster) -> None:
    """16 nodes, fanout 4: the master has 4 links; 2 MiB of input costs it ~8 MiB, not 32."""
    size = 2 * 1024 * 1024

    async def go() -> tuple[int, int]:
        c = Cluster(cluster16.socket)
        before = await c.stats()
        status, events = await c.run(["wc", "-c"], "**", stdin=b"x" * size)
        assert status == 0
        assert [e.data for e in events if isinstance(e, Output)] == [f"{size}\n".encode()]
        after = await c.stats()
        return after["bytes_out"] - before["bytes_out"], after["links"]

    sent, links = asyncio.run(go())
    assert links == 4
    assert links * size <= sent < links * size * 1.05


def test_no_stdin_switch_gives_eof_at_once(cluster16: LocalCluster) -> None:
    t0 = time.monotonic()
    r = cluster16.gproc("e", "-n", "--json", "-w", "node[0-3]", "cat", input=b"never read\n")
    assert r.returncode == 0 and not [x for x in records(r.stdout) if "stream" in x]
    assert time.monotonic() - t0 < 30


def test_processes_that_stop_reading_do_not_hold_the_others(cluster16: LocalCluster) -> None:
    """head -c 5 exits at once on some nodes; the others still get all of the input."""
    script = "case $GPROC_NAME in node[0-7]) head -c 5 >/dev/null; echo short;; *) wc -c;; esac"
    r = cluster16.gproc("e", "--json", "**", "sh", "-c", script, input=b"y" * (8 * 1024 * 1024))
    assert r.returncode == 0, r.stderr
    out = {str(x["nodes"]): x["data"] for x in records(r.stdout) if "stream" in x}
    assert out == {"node[0-7]": "short", "node[8-15]": str(8 * 1024 * 1024)}


def test_100_mib_stdin_streams_with_bounded_memory(cluster16: LocalCluster) -> None:
    """100 MiB of stdin to 16 nodes: no daemon process (the master, the process hosting the 16
    nodes) grows by 64 MiB or more while it streams."""
    rec = local.UpRecord.load(cluster16.socket)
    assert rec is not None
    procs = [psutil.Process(pid) for pid, _ in rec.procs]
    base = [p.memory_info().rss for p in procs]
    peak = list(base)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for i, p in enumerate(procs):
                try:
                    peak[i] = max(peak[i], p.memory_info().rss)
                except psutil.Error:
                    pass
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        source = subprocess.Popen(["head", "-c", "100M", "/dev/zero"], stdout=subprocess.PIPE)
        env = {**os.environ, "GPROC_MASTER": cluster16.socket}
        r = subprocess.run(
            [sys.executable, "-m", "gproc", "e", "--json", "**", "wc", "-c"],
            stdin=source.stdout,
            capture_output=True,
            text=True,
            env=env,
            timeout=240,
        )
        assert source.stdout is not None
        source.stdout.close()
        source.wait(10)
    finally:
        done.set()
        sampler.join()
    assert r.returncode == 0, r.stderr
    out = [x for x in records(r.stdout) if "stream" in x]
    assert out == [{"nodes": "node[0-15]", "stream": "stdout", "data": str(100 * 1024 * 1024)}]
    growth = [(p - b) / 2**20 for b, p in zip(base, peak, strict=True)]
    print(f"RSS growth (MiB) of the master and the node process: {growth}")
    assert max(growth) < 64, f"daemon RSS growth in MiB: {growth}"


def test_input_sent_after_the_job_ended_does_not_cost_its_answer(cluster16: LocalCluster) -> None:
    """A client still sending input when its job has already ended (stdin's end racing a job that
    fails at once) still gets the job's statuses: the master half-closes and reads to the end
    instead of closing on it, which made the client's write fail and hid the answer (EPIPE)."""

    async def go() -> tuple[int | None, list[object]]:
        c = Cluster(cluster16.socket, timeout=30)
        job = await c.exec(["sh", "-c", "exit 3"], "**", localbin=True, stdin=True)
        deadline = time.monotonic() + 30
        while not any(j["id"] == job.id and j["state"] == "done" for j in await c.jobs()):
            assert time.monotonic() < deadline, "the job never ended"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the master has sent the job's end and left the connection
        await job.feed(b"late input\n")
        events = [ev async for ev in job]
        return job.exit_status, events

    status, events = asyncio.run(go())
    assert status == 3, events


@pytest.mark.parametrize("via", ["master", "node"])
def test_client_sending_past_its_window_is_held_back(cluster16: LocalCluster, via: str) -> None:
    """A raw client starts a job whose processes never read stdin and blasts 200 MiB of input
    without waiting for acknowledgements: the master stops reading it (or, relayed by a node's
    socket, refuses it), so its sends block or fail long before 200 MiB, and the master's memory
    stays bounded."""
    rec = local.UpRecord.load(cluster16.socket)
    assert rec is not None
    master = psutil.Process(rec.procs[0][0])
    sock = cluster16.socket if via == "master" else os.path.join(cluster16.rundir, "n", "2.sock")
    total, chunk = 200 << 20, os.urandom(1 << 20)  # chunks up to 1 MiB are taken, 8 in flight
    before = peak = master.memory_info().rss

    async def go() -> tuple[int, str]:
        nonlocal peak
        conn = await Connection.open(sock)
        req: wire.Message = {"t": "req", "fn": "exec", "argv": ["sleep", "30"], "nodes": None, "w": "node[0-3]"}
        conn.send({**req, "x": None, "env": dict(os.environ), "cwd": "/", "stdin": True})
        sent, how = 0, "all sent"
        try:
            for seq in range(1, total // len(chunk) + 1):
                conn.send({"t": "in", "seq": seq, "d": chunk, "eof": False})
                try:
                    await asyncio.wait_for(conn.drain(), 5.0)
                except TimeoutError:
                    how = "blocked"
                    break
                except OSError:
                    how = "refused"
                    break
                sent += len(chunk)
                peak = max(peak, master.memory_info().rss)
            await asyncio.sleep(1.0)  # let whatever the master still reads settle in its memory
            peak = max(peak, master.memory_info().rss)
            if via == "node":  # the node reads and drops what follows the refusal; the client is told
                try:
                    while True:
                        await conn.receive(timeout=30.0)
                except GprocError as e:  # an error line is raised as what it says
                    how = f"refused: {e}"
        finally:
            conn.close()
        return sent, how

    sent, how = asyncio.run(go())
    grown = (peak - before) / 2**20
    print(f"{how} after {sent >> 20} MiB; master grew {grown:.1f} MiB")
    if via == "master":
        assert how == "blocked", f"the master took {sent >> 20} MiB of unacknowledged input ({how})"
    else:
        assert "input window" in how, how
    assert grown < 64, f"master grew {grown:.1f} MiB"
