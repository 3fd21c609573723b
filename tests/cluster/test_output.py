"""`gproc e` output on a real local cluster: complete and in order per node, byte-exact, whole lines
of any length, lossless JSON, and back-pressure from a client that stops reading (issue 17)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from ClusterShell.NodeSet import NodeSet
from tests.conftest import LocalCluster, start_cluster, stop_cluster

from gproc import Cluster, Output, Status, local, wire
from gproc.client import Connection

pytestmark = pytest.mark.cluster
LINES = 200000


def run(c: LocalCluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    """The CLI with its output as bytes."""
    env = {**os.environ, "GPROC_MASTER": c.socket}
    return subprocess.run(
        [sys.executable, "-m", "gproc", *args], capture_output=True, timeout=timeout, env=env, check=False
    )


def per_node_live(out: bytes) -> dict[str, list[bytes]]:
    """Live ``nodes: line`` output as each node's lines, in the order printed."""
    lines: dict[str, list[bytes]] = {}
    names: dict[bytes, list[str]] = {}
    for raw in out.split(b"\n")[:-1]:
        label, sep, line = raw.partition(b": ")
        assert sep, raw[:80]
        if label not in names:
            names[label] = list(NodeSet(label.decode()))
        for name in names[label]:
            lines.setdefault(name, []).append(line)
    return lines


def per_node_json(out: bytes) -> tuple[dict[str, bytes], dict[str, int]]:
    """Live ``--json`` output as each node's exact bytes (lines joined again), and its status."""
    data: dict[str, list[bytes]] = {}
    status: dict[str, int] = {}
    names: dict[str, list[str]] = {}
    for raw in out.splitlines():
        rec = json.loads(raw)
        if rec["nodes"] not in names:
            names[rec["nodes"]] = list(NodeSet(rec["nodes"]))
        for name in names[rec["nodes"]]:
            if "status" in rec:
                status[name] = rec["status"]
                continue
            line = rec["data"].encode() if "data" in rec else base64.b64decode(rec["data_b64"])
            data.setdefault(name, []).extend((line, b"" if rec.get("newline") is False else b"\n"))
    return {name: b"".join(parts) for name, parts in data.items()}, status


def gathered(out: bytes) -> dict[str, bytes]:
    """``-b`` output as each group's label and its bytes (headers between bars)."""
    groups: dict[str, bytes] = {}
    parts = out.split(b"\n")
    i = 0
    while i < len(parts) - 1:
        assert parts[i].startswith(b"---") and parts[i + 2].startswith(b"---"), parts[i][:80]
        label = parts[i + 1].decode()
        j = i + 3
        while j < len(parts) - 1 and not (
            parts[j].startswith(b"---") and j + 2 < len(parts) and parts[j + 2].startswith(b"---")
        ):
            j += 1
        groups[label] = b"\n".join(parts[i + 3 : j]) + b"\n"
        i = j
    return groups


def _first_difference(got: list[bytes], want: list[bytes]) -> int:
    return next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))


def _read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    return int(text) if text else None


def test_bulk_output_complete_and_in_order_per_node(cluster16: LocalCluster) -> None:
    """seq 1 200000 on 16 nodes (two levels): every node's lines 1..200000, each once, in order, live
    and in JSON; identical output merges (fewer printed lines than 16 x 200000)."""
    expect = [str(i).encode() for i in range(1, LINES + 1)]
    r = run(cluster16, "e", "**", "seq", "1", str(LINES))
    assert r.returncode == 0, r.stderr
    lines = per_node_live(r.stdout)
    assert sorted(lines) == sorted(f"node{i}" for i in range(16))
    for name, got in lines.items():
        assert got == expect, f"{name}: {len(got)} lines, first wrong at {_first_difference(got, expect)}"
    assert r.stdout.count(b"\n") < 16 * LINES, "identical output no longer merges"
    # output that differs on every node: nothing merges, each node's order still holds
    r = run(cluster16, "e", "--json", "**", "sh", "-c", f'seq 1 {LINES} | sed "s/^/$GPROC_NAME /"')
    assert r.returncode == 0, r.stderr
    data, status = per_node_json(r.stdout)
    assert status == {f"node{i}": 0 for i in range(16)}
    for name, got in data.items():
        assert got == b"".join(b"%s %d\n" % (name.encode(), i) for i in range(1, LINES + 1)), name


def test_bulk_output_through_the_api_in_order(cluster16: LocalCluster) -> None:
    """The Python API's events: each node's records come in lineno order and join to its output."""

    async def go() -> tuple[int, list[Output | Status]]:
        return await Cluster(cluster16.socket, timeout=60).run(["seq", "1", str(LINES)], "**")

    status, events = asyncio.run(go())
    assert status == 0
    got: dict[str, list[tuple[int, bytes]]] = {}
    for ev in events:
        if isinstance(ev, Output):
            for name in NodeSet(ev.nodes):
                got.setdefault(name, []).append((ev.lineno, ev.data))
    want = b"".join(b"%d\n" % i for i in range(1, LINES + 1))
    assert len(got) == 16
    for name, records in got.items():
        numbers = [n for n, _ in records]
        assert numbers == sorted(numbers), f"{name}: records out of order"
        assert b"".join(d for _, d in records) == want, name


@pytest.mark.parametrize("newline", [True, False])
def test_long_line_stays_whole(cluster16: LocalCluster, newline: bool) -> None:
    """A 100 KB line (and a 3 MB one, sent up in pieces), with or without a trailing newline: whole in
    live, -b and --json output, with one label at its start."""
    end = "; echo" if newline else ""
    script = f"head -c 100000 /dev/zero | tr '\\0' x; echo; head -c 3000000 /dev/zero | tr '\\0' y{end}"
    want = b"x" * 100000 + b"\n" + b"y" * 3000000 + (b"\n" if newline else b"")
    sel = ("-w", "node[3-5]")
    r = run(cluster16, "e", *sel, "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    lines = per_node_live(r.stdout)
    assert lines == {f"node{i}": [b"x" * 100000, b"y" * 3000000] for i in (3, 4, 5)}
    r = run(cluster16, "e", "--json", *sel, "sh", "-c", script)
    data, status = per_node_json(r.stdout)
    assert data == {f"node{i}": want for i in (3, 4, 5)} and set(status.values()) == {0}
    r = run(cluster16, "e", "-b", *sel, "sh", "-c", script)
    assert gathered(r.stdout) == {"node[3-5] (3)": want if newline else want + b"\n"}
    r = run(cluster16, "e", "-b", "--json", *sel, "sh", "-c", script)
    recs = [json.loads(x) for x in r.stdout.splitlines()]
    assert {"nodes": "node[3-5]", "stream": "stdout", "data": want.decode()} in recs


def test_invalid_utf8_is_byte_exact(cluster16: LocalCluster, tmpdir_short: str) -> None:
    """Random bytes (invalid UTF-8, no final newline): live output is them with labels at line
    starts; -b gives them whole; --json gives them back through data_b64."""
    blob = random.Random(17).randbytes(3000) + b"a\xffb\n\x80\xfe"
    path = os.path.join(tmpdir_short, "blob")
    with open(path, "wb") as f:
        f.write(blob)
    r = run(cluster16, "e", "-w", "node[1-2]", "cat", path)
    assert r.returncode == 0, r.stderr
    lines = per_node_live(r.stdout)
    assert lines == {n: blob.split(b"\n") for n in ("node1", "node2")}
    r = run(cluster16, "e", "-w", "node1", "cat", path)
    assert r.stdout == b"".join(b"node1: " + line + b"\n" for line in blob.split(b"\n"))
    r = run(cluster16, "e", "--json", "-w", "node[1-2]", "cat", path)
    data, _ = per_node_json(r.stdout)
    assert data == {"node1": blob, "node2": blob}
    assert b"data_b64" in r.stdout and b"\\ufffd" not in r.stdout
    r = run(cluster16, "e", "-b", "-w", "node[1-2]", "cat", path)
    assert gathered(r.stdout) == {"node[1-2] (2)": blob + b"\n"}
    r = run(cluster16, "e", "-b", "--json", "-w", "node[1-2]", "cat", path)
    rec = json.loads(r.stdout.splitlines()[0])
    assert rec["nodes"] == "node[1-2]" and base64.b64decode(rec["data_b64"]) == blob


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _written(pid: int) -> int:
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    raise AssertionError(f"no wchar for {pid}")


@pytest.fixture
def pidfile(tmpdir_short: str) -> Iterator[str]:
    yield os.path.join(tmpdir_short, "pid")


@pytest.mark.parametrize("via", ["master", "node"])
def test_client_that_stops_reading_holds_its_job(cluster16: LocalCluster, pidfile: str, via: str) -> None:
    """A raw client starts `yes` on a leaf and never reads: the producer blocks on its pipe (its
    written byte count stops growing) and the master's memory stays bounded, both for a client of the
    master's socket and one relayed by a node's socket. Closing the client ends the job."""
    master = local.UpRecord.load(cluster16.socket)
    assert master is not None
    master_pid = master.procs[0][0]
    sock = cluster16.socket if via == "master" else os.path.join(cluster16.rundir, "n", "2.sock")
    before = _rss_kib(master_pid)
    script = f"echo $$ > {pidfile}; exec yes 0123456789012345678901234567890123456789"

    async def go() -> tuple[int, int, int]:
        conn = await Connection.open(sock)
        req: wire.Message = {"t": "req", "fn": "exec", "argv": ["sh", "-c", script], "nodes": None, "w": "node5"}
        conn.send({**req, "x": None, "env": dict(os.environ), "cwd": "/", "stdin": False})
        deadline = time.monotonic() + 30
        while (pid := _read_pid(pidfile)) is None:
            assert time.monotonic() < deadline, "the job never started"
            await asyncio.sleep(0.05)
        last, still = _written(pid), 0
        while still < 2:  # two looks a second apart with nothing written: blocked
            assert time.monotonic() < deadline, f"the producer never stopped: {_written(pid)} bytes written"
            await asyncio.sleep(1.0)
            now = _written(pid)
            still, last = (still + 1, now) if now == last else (0, now)
        grown = _rss_kib(master_pid) - before
        conn.close()
        return pid, last, grown

    pid, written, grown = asyncio.run(go())
    print(f"producer blocked after {written} bytes; master grew {grown} KiB")
    assert written > 1 << 20, "the producer wrote little: the test proves nothing"
    assert grown < 100 * 1024, f"master grew {grown} KiB while its client read nothing"
    deadline = time.monotonic() + 15
    while os.path.exists(f"/proc/{pid}"):  # the client went away: its job ends (SIGTERM)
        assert time.monotonic() < deadline, "the job outlived its client"
        time.sleep(0.1)


def test_node_flooding_a_slow_client_is_not_lost(cluster16: LocalCluster) -> None:
    """Every node floods output for longer than a node may stay silent (3.5 s) to a client that reads
    slowly, so the job is held and released again and again: no node is reported lost, every node's
    output arrives whole and in order, every status is 0."""
    n = 100000
    script = f'seq 1 {n} | sed "s/^/$GPROC_NAME /"'

    async def go() -> tuple[int, list[Output | Status], float]:
        t0 = time.monotonic()
        job = await Cluster(cluster16.socket, timeout=60).exec(["sh", "-c", script], "**")
        events: list[Output | Status] = []
        async for ev in job:
            events.append(ev)
            if isinstance(ev, Output) and time.monotonic() - t0 < 8:
                await asyncio.sleep(len(ev.data) / 2e6)  # a slow reader (2 MB/s) for the first seconds
        assert job.exit_status is not None
        return job.exit_status, events, time.monotonic() - t0

    status, events, seconds = asyncio.run(go())
    statuses = {name: (ev.status, ev.error) for ev in events if isinstance(ev, Status) for name in NodeSet(ev.nodes)}
    assert statuses == {f"node{i}": (0, "") for i in range(16)}, statuses
    assert status == 0
    assert seconds > 5, "the client was not slow enough to hold the job past the liveness limit"
    got: dict[str, list[tuple[int, bytes]]] = {}
    for ev in events:
        if isinstance(ev, Output):
            for name in NodeSet(ev.nodes):
                got.setdefault(name, []).append((ev.lineno, ev.data))
    for name, records in got.items():
        want = b"".join(b"%s %d\n" % (name.encode(), i) for i in range(1, n + 1))
        assert b"".join(d for _, d in records) == want, name


@pytest.fixture
def flat8() -> Iterator[LocalCluster]:
    """Eight nodes right under the master, in one process."""
    c, d = start_cluster(8, 16)
    try:
        yield c
    finally:
        stop_cluster(c, d)


def test_output_left_in_pipes_while_held_still_arrives(flat8: LocalCluster) -> None:
    """The client reads nothing until well after the programs exited. The first part of their output
    (different on every node, so nothing merges) fills the client's buffers and the job is held; a
    second later each node reads one more line, sees the hold and stops reading; the last part (less
    than a pipe holds) then waits in the pipe when the program exits. Once the client reads, every
    node's output is complete (it used to be dropped 2 s after the exit, with status 0)."""
    first = 'seq 1 40000 | sed "s/^/$GPROC_NAME /"'  # 4 MB in all: fills the client, then held
    script = f"{first}; sleep 1; echo x; sleep 0.5; head -c 60000 /dev/zero | tr '\\0' z; echo"
    nodes = [f"node{i}" for i in range(8)]

    async def go() -> tuple[int, list[Output | Status]]:
        job = await Cluster(flat8.socket, timeout=60).exec(["sh", "-c", script], "**", localbin=True)
        await asyncio.sleep(6)  # the programs have long exited; the job is held with output unread
        events = [ev async for ev in job]
        assert job.exit_status is not None
        return job.exit_status, events

    status, events = asyncio.run(go())
    assert status == 0
    got: dict[str, list[tuple[int, bytes]]] = {}
    for ev in events:
        if isinstance(ev, Output):
            for name in NodeSet(ev.nodes):
                got.setdefault(name, []).append((ev.lineno, ev.data))
    assert sorted(got) == nodes
    short = {}
    for name, records in got.items():
        data = b"".join(d for _, d in sorted(records))
        want = b"".join(b"%s %d\n" % (name.encode(), i) for i in range(1, 40001)) + b"x\n" + b"z" * 60000 + b"\n"
        if data != want:
            short[name] = len(want) - len(data)
    assert not short, f"output incomplete (bytes missing per node): {short}"
