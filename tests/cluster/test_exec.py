"""gproc e against a real local cluster, driven through the CLI and the Python API."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from ClusterShell.NodeSet import NodeSet
from tests.cluster.daemons import Daemon, node, wait_until
from tests.conftest import LocalCluster, json_lines, live_lines, start_cluster, stop_cluster

from gproc import Cluster, Output, Status

pytestmark = pytest.mark.cluster
ALL16 = NodeSet("node[0-15]")


def records(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_info_shows_every_level(cluster16: LocalCluster) -> None:
    r = cluster16.gproc("i", "--json", check=True)
    rows = records(r.stdout)
    assert len(rows) == 16
    assert {row["level"] for row in rows} == {1, 2}
    by_name = {row["name"]: row for row in rows}
    assert by_name["node0"]["parent"] == "master" and by_name["node0"]["level"] == 1
    assert by_name["node4"]["parent"] == "node0" and by_name["node4"]["level"] == 2
    assert all(row["state"] == "up" for row in rows)
    assert len({row["rank"] for row in rows}) == 16
    text = cluster16.gproc("i", check=True).stdout
    assert "node15" in text and "LEVEL" in text


def test_identical_output_is_one_record(cluster16: LocalCluster) -> None:
    r = cluster16.gproc("e", "--json", "**", "echo", "same")
    assert r.returncode == 0, r.stderr
    recs = records(r.stdout)
    assert json_lines(recs) == {"same": "node[0-15]"}
    assert [x for x in recs if "status" in x] == [{"nodes": "node[0-15]", "status": 0}]


def test_distinct_output_and_env(cluster16: LocalCluster) -> None:
    r = cluster16.gproc("e", "--json", "./.", "sh", "-c", 'echo "$GPROC_NAME $GPROC_RANK $GPROC_NNODES"')
    assert r.returncode == 0, r.stderr
    lines = {x["nodes"]: x["data"] for x in records(r.stdout) if "stream" in x}
    assert len(lines) == 16
    for name, data in lines.items():
        n, rank, nn = str(data).split()
        assert n == name and nn == "16" and int(rank) >= 1


def test_tree_path_selects_interior_and_children(cluster16: LocalCluster) -> None:
    r = cluster16.gproc("e", "--json", "1/.", "hostname")
    st = [x for x in records(r.stdout) if "status" in x]
    assert NodeSet(st[0]["nodes"]) == NodeSet("node[1,5,9,13]")


def test_stdout_stderr_and_exit_status(cluster16: LocalCluster) -> None:
    r = cluster16.gproc(
        "e", "-w", "node[0-3]", "sh", "-c", 'echo out; echo err >&2; [ "$GPROC_NAME" = node2 ] && exit 7; exit 0'
    )
    assert r.returncode == 7
    assert live_lines(r.stdout) == {"out": "node[0-3]"} and live_lines(r.stderr)["err"] == "node[0-3]"
    assert "node2: exit 7" in r.stderr
    g = cluster16.gproc("e", "-b", "-w", "node[0-3]", "sh", "-c", "echo a; echo b")
    assert g.returncode == 0
    assert "node[0-3] (4)" in g.stdout and "a\nb\n" in g.stdout


def test_a_job_gets_only_its_own_descriptors_the_cwd_and_default_signals(cluster16: LocalCluster, tmp_path) -> None:
    # the nodes' daemons hold hundreds of sockets: none may leak into a job, in either way of starting
    # it (-localbin: posix_spawn from the event loop; shipped: Popen from a staging thread); the job
    # starts in the client's directory, and SIGPIPE is back at its default (Python ignores it)
    script = "ls /proc/self/fd | sort -n | tr '\\n' ' '; pwd; grep SigIgn /proc/self/status"
    for mode in (["-localbin"], []):
        r = cluster16.gproc("e", "--json", *mode, "-w", "node[0-3]", "sh", "-c", script, cwd=str(tmp_path))
        assert r.returncode == 0, (mode, r.stderr)
        lines = json_lines(records(r.stdout))
        fds = {line: nodes for line, nodes in lines.items() if line.startswith("0 1 2 3 /")}
        assert NodeSet.fromlist(list(fds.values())) == NodeSet("node[0-3]"), (mode, lines)
        # -localbin: the client's directory itself; shipped: the same path inside the job's view
        assert all(line.endswith(str(tmp_path)) for line in fds), (mode, lines)
        if mode:
            assert list(fds) == ["0 1 2 3 " + str(tmp_path)], lines
        sigign = [line for line in lines if line.startswith("SigIgn:")]
        assert len(sigign) == 1 and int(sigign[0].split()[1], 16) & (1 << (signal.SIGPIPE - 1)) == 0, (mode, lines)


def test_big_output_arrives_whole_through_a_congested_link(cluster16: LocalCluster) -> None:
    # a leaf under a separate interior daemon prints 24 MB in 400 lines; the interior daemon is
    # frozen for 1.5 s meanwhile, so the leaf's link to it fills (far past its 1 MiB high-water
    # mark) and the leaf stops reading the program's pipe until the link drains: nothing may be lost
    logs = cluster16.rundir
    mid = node("mid", "100", cluster16.master_address, cluster16.key, os.path.join(logs, "mid.log"))
    leaf: Daemon | None = None
    try:
        wait_until(lambda: "mid" in up_rows(cluster16), 20, "mid to register")
        mid_addr = str(up_rows(cluster16)["mid"]["address"])
        leaf = node("leaf", "200", mid_addr, cluster16.key, os.path.join(logs, "leaf.log"))
        wait_until(lambda: "leaf" in up_rows(cluster16), 20, "leaf to register")
        script = "head -c 24000000 /dev/zero | tr '\\0' a | fold -w 60000; echo end >&2"

        async def go() -> tuple[int, list[object]]:
            c = Cluster(cluster16.socket, timeout=120)
            job = await c.exec(["sh", "-c", script], include="leaf", localbin=True)
            events = []
            async with asyncio.timeout(60):  # a leaf that never reads its pipe again would hang here
                async for ev in job:
                    if not events:  # the first output is here: the leaf is streaming
                        mid.signal(signal.SIGSTOP)
                        await asyncio.sleep(1.5)
                        mid.signal(signal.SIGCONT)
                    events.append(ev)
            return job.exit_status or 0, events

        status, events = asyncio.run(go())
        assert status == 0
        out = [e for e in events if isinstance(e, Output) and e.stream == "stdout"]
        assert all(str(e.nodes) == "leaf" for e in out)
        assert sum(len(e.data) for e in out) == 24000000 + 399 and len(out) == 400  # no newline after the last
        assert [e.data for e in events if isinstance(e, Output) and e.stream == "stderr"] == [b"end\n"]
    finally:
        mid.signal(signal.SIGCONT)
        mid.end()
        if leaf is not None:
            leaf.end()


def up_rows(c: LocalCluster) -> dict[str, dict[str, object]]:
    rows = records(c.gproc("i", "--json").stdout)
    return {str(row["name"]): row for row in rows if row["state"] == "up"}


def test_signal_status_is_128_plus_n(cluster16: LocalCluster) -> None:
    r = cluster16.gproc("e", "-w", "node3", "sh", "-c", "kill -TERM $$")
    assert r.returncode == 128 + signal.SIGTERM


def test_gathered_groups_largest_first(cluster16: LocalCluster) -> None:
    r = cluster16.gproc("e", "-b", "**", "sh", "-c", "case $GPROC_NAME in node1|node2) echo odd;; *) echo even;; esac")
    assert r.returncode == 0
    assert r.stdout.index("node[0,3-15] (14)") < r.stdout.index("node[1-2] (2)")


def test_unknown_program_is_127_with_reason(cluster16: LocalCluster) -> None:
    # -localbin runs the node's own program: each node that lacks it says why (127, as a shell)
    r = cluster16.gproc("e", "--json", "-localbin", "-w", "node[0-1]", "/nonexistent/prog")
    assert r.returncode == 127
    st = [x for x in records(r.stdout) if "status" in x]
    assert st[0]["status"] == 127 and "No such file" in str(st[0]["error"])
    # shipping it (the default): the client has nothing to ship and says so before sending anything
    r = cluster16.gproc("e", "--json", "-w", "node[0-1]", "/nonexistent/prog")
    assert r.returncode == 127 and r.stdout == ""
    assert r.stderr == "gproc: /nonexistent/prog: No such file or directory\n"


def test_bad_selection_is_one_line_exit_2(cluster16: LocalCluster) -> None:
    for spec in ("3-1", "a-b", "1,,2"):
        r = cluster16.gproc("e", spec, "true")
        assert r.returncode == 2, (spec, r.stderr)
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr and spec in r.stderr
    r = cluster16.gproc("e", "99", "true")
    assert r.returncode == 1 and "matched no node" in r.stderr


def test_absent_names_reported_rest_run(cluster16: LocalCluster) -> None:
    r = cluster16.gproc("e", "--json", "-w", "node[14-17]", "true")
    assert r.returncode == 255
    st = {x["nodes"]: x for x in records(r.stdout) if "status" in x}
    assert st["node[14-15]"]["status"] == 0
    assert st["node[16-17]"]["status"] == 255 and st["node[16-17]"]["error"] == "absent"


def test_timeout_ends_the_job(cluster16: LocalCluster) -> None:
    t0 = time.monotonic()
    r = cluster16.gproc("e", "--json", "--timeout", "1", "-w", "node[0-3]", "sleep", "30")
    assert time.monotonic() - t0 < 15
    st = [x for x in records(r.stdout) if "status" in x]
    assert st and st[0]["error"] == "timeout" and r.returncode == 128 + signal.SIGTERM


def test_ctrl_c_interrupts_job_on_every_node(cluster16: LocalCluster) -> None:
    env = {**os.environ, "GPROC_MASTER": cluster16.socket}
    p = subprocess.Popen(
        [sys.executable, "-m", "gproc", "e", "--json", "**", "sh", "-c", "echo started; sleep 30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert p.stdout is not None
    first = p.stdout.readline()
    assert "started" in first
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=20)
    assert time.monotonic() - t0 < 10
    st = [x for x in records(out) if "status" in x]
    assert st == [{"nodes": "node[0-15]", "status": 128 + signal.SIGINT}], (out, err)
    assert p.returncode == 128 + signal.SIGINT


def test_two_jobs_run_at_once(cluster16: LocalCluster) -> None:
    """A node runs many jobs at once: a long job does not hold up a short one."""
    env = {**os.environ, "GPROC_MASTER": cluster16.socket}
    long = subprocess.Popen(
        [sys.executable, "-m", "gproc", "e", "**", "sleep", "4"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        r = cluster16.gproc("e", "**", "echo", "quick")
        assert r.returncode == 0 and live_lines(r.stdout) == {"quick": "node[0-15]"}
        assert time.monotonic() - t0 < 3.5 and long.poll() is None
    finally:
        assert long.wait(timeout=20) == 0


def test_python_api(cluster16: LocalCluster) -> None:
    async def go() -> None:
        c = Cluster(cluster16.socket)
        status, events = await c.run(["sh", "-c", "echo x; exit 3"], "**")
        assert status == 3
        outs = [e for e in events if isinstance(e, Output)]  # live: one record per window the nodes answered in
        assert {(e.stream, e.data) for e in outs} == {("stdout", b"x\n")} and sum(e.count for e in outs) == 16
        assert NodeSet.fromlist([e.nodes for e in outs]) == NodeSet("node[0-15]")
        sts = [e for e in events if isinstance(e, Status)]
        assert [(s.nodes, s.status) for s in sts] == [("node[0-15]", 3)]
        p = await c.ping()
        assert p["counts"] == {"ok": 16}

    asyncio.run(go())


def test_stdin_not_a_terminal_gives_eof(cluster16: LocalCluster) -> None:
    r = cluster16.gproc("e", "-w", "node0", "cat", input=b"")
    assert r.returncode == 0


def test_ipv6_local_cluster() -> None:
    c, d = start_cluster(4, 2, ipv6=True)
    try:
        assert "[::1]" in c.master_address
        r = c.gproc("e", "--json", "**", "echo", "v6")
        assert r.returncode == 0
        assert json_lines(records(r.stdout)) == {"v6": "node[0-3]"}
        rows = records(c.gproc("i", "--json").stdout)
        assert any(row["address"].startswith("[::1]:") for row in rows)
    finally:
        stop_cluster(c, d)


def test_gathered_identical_output_reaches_master_once(cluster16: LocalCluster) -> None:
    """With -b the tree holds results until the end: one record for all nodes, however they are spread."""

    async def go() -> list[object]:
        c = Cluster(cluster16.socket)
        job = await c.exec(["sh", "-c", "sleep 0.$((GPROC_RANK % 5)); echo same"], "**", gather=True)
        return [ev async for ev in job]

    events = asyncio.run(go())
    assert [(e.nodes, e.data) for e in events if isinstance(e, Output)] == [("node[0-15]", b"same\n")]
    assert [(e.nodes, e.status) for e in events if isinstance(e, Status)] == [("node[0-15]", 0)]
