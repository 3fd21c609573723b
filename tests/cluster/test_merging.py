"""Merging inside the tree, end to end: the bytes the master receives do not grow with the number of
nodes for identical output; near-identical output arrives exact; the display formats."""

from __future__ import annotations

import asyncio
import json

import pytest
from ClusterShell.NodeSet import NodeSet
from tests.conftest import LocalCluster, start_cluster, stop_cluster

from gproc import Cluster, Output

pytestmark = pytest.mark.cluster

UNAME = "Linux $GPROC_NAME 6.1.0-18-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01) x86_64 GNU/Linux"


def records(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


async def master_bytes(sock: str, argv: list[str]) -> tuple[int, int, int]:
    """(TCP bytes, frame bytes, reply frames) the master received from the tree for one job.

    The program is launched once before: the measured launch finds it in every node's store (what a
    program costs to ship is `bench/ship.py`'s subject), so only the job's own traffic counts."""
    c = Cluster(sock)
    assert (await c.run(argv, "**"))[0] == 0
    before = await c.stats()
    status, _ = await c.run(argv, "**")
    assert status == 0
    after = await c.stats()
    job = (await c.jobs())[-1]
    assert after["wire_in"] is not None, "TCP_INFO is Linux-only"
    return after["wire_in"] - before["wire_in"], after["bytes_in"] - before["bytes_in"], job["rep_frames"]


def test_identical_output_bytes_at_master_do_not_grow_with_n() -> None:
    """Issue 4: for `echo` of the same line on every node, the TCP bytes the master receives at
    N=512 are within 2x of those at N=32 and under 16 KiB (fanout 32: 32 links at the master in both).
    Heartbeats are set far apart so that only the job's traffic is counted."""
    got = {}
    for n in (32, 512):
        c, d = start_cluster(n, 32, heartbeat=30.0)
        try:
            got[n] = asyncio.run(master_bytes(c.socket, ["echo", "the same line on every node"]))
            r = c.gproc("e", "-b", "--json", "**", "echo", "the same line on every node")
            assert records(r.stdout)[0] == {
                "nodes": f"node[0-{n - 1}]",
                "stream": "stdout",
                "data": "the same line on every node\n",
            }
        finally:
            stop_cluster(c, d)
    print("master bytes (tcp, frames, reply frames):", got)
    (tcp32, payload32, frames32), (tcp512, payload512, frames512) = got[32], got[512]
    assert tcp512 < 16 * 1024, got
    assert tcp512 <= 2 * tcp32, got
    assert payload512 <= 2 * payload32 and frames512 <= 2 * frames32, got


def test_near_identical_lines_arrive_exact(cluster16: LocalCluster) -> None:
    """Lines that differ only by a host name travel as edits of a reference line: decoding is exact."""
    r = cluster16.gproc("e", "--json", "**", "sh", "-c", f'echo "{UNAME}"; echo common')
    assert r.returncode == 0, r.stderr
    out = {str(x["nodes"]): x["data"] for x in records(r.stdout) if x.get("stream") == "stdout"}
    assert out.pop("node[0-15]") == "common"
    assert len(out) == 16
    for name, line in out.items():
        assert line == UNAME.replace("$GPROC_NAME", name)


def test_gathered_output_groups_whole_outputs(cluster16: LocalCluster) -> None:
    script = 'echo a; [ "$GPROC_NAME" = node3 ] && echo b; echo c; true'
    r = cluster16.gproc("e", "-b", "**", "sh", "-c", script)
    assert r.returncode == 0
    assert r.stdout.index("node[0-2,4-15] (15)\n") < r.stdout.index("node3 (1)\n")
    bar = "-" * 19
    assert f"{bar}\nnode[0-2,4-15] (15)\n{bar}\na\nc\n" in r.stdout
    j = records(cluster16.gproc("e", "-b", "--json", "**", "sh", "-c", script).stdout)
    assert {"nodes": "node[0-2,4-15]", "stream": "stdout", "data": "a\nc\n"} in j
    assert {"nodes": "node3", "stream": "stdout", "data": "a\nb\nc\n"} in j
    assert {"nodes": "node[0-15]", "status": 0} in j


def test_diff_shows_other_groups_against_the_largest(cluster16: LocalCluster) -> None:
    script = 'echo a; [ "$GPROC_NAME" = node3 ] && echo b; echo c; true'
    r = cluster16.gproc("e", "--diff", "-v", "**", "sh", "-c", script)  # -v: the largest group too
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert "node[0-2,4-15] (15)" in lines and "a" in lines and "c" in lines
    i = lines.index("--- node[0-2,4-15] (15)")
    assert lines[i + 1] == "+++ node3 (1)"
    assert lines[i + 2].startswith("@@") and "+b" in lines[i + 3 :] and " a" in lines[i + 3 :]


def test_statuses_and_stderr_after_output(cluster16: LocalCluster) -> None:
    r = cluster16.gproc(
        "e", "-b", "-w", "node[0-5]", "sh", "-c", "echo out; echo oops >&2; case $GPROC_NAME in node[35]) exit 1;; esac"
    )
    assert r.returncode == 1
    assert "out" in r.stdout and "oops" not in r.stdout  # stderr groups stay on stderr (clush -b)
    assert r.stderr.index("node[0-5] (6) stderr") < r.stderr.index("oops") < r.stderr.index("node[3,5]: exit 1")
    assert r.stderr.strip().splitlines()[-1] == "node[3,5]: exit 1"


def test_live_lines_identical_within_the_window_print_once(cluster16: LocalCluster) -> None:
    r = cluster16.gproc("e", "--window", "1", "**", "sh", "-c", "echo one; sleep 0.2; echo two")
    assert r.returncode == 0
    assert r.stdout.splitlines() == ["node[0-15]: one", "node[0-15]: two"]


def test_api_events_are_folded_node_sets(cluster16: LocalCluster) -> None:
    async def go() -> list[Output]:
        _, events = await Cluster(cluster16.socket).run(["sh", "-c", 'echo "x${GPROC_RANK}"'], "**")
        return [e for e in events if isinstance(e, Output)]

    outs = asyncio.run(go())
    assert sum(e.count for e in outs) == 16
    assert NodeSet.fromlist([e.nodes for e in outs]) == NodeSet("node[0-15]")
