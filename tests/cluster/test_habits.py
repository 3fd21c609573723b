"""The habits of pdsh and clush users, through the CLI on a real local cluster (issue 17): shell command
lines, repeated -w/-x, names given as tree paths, -b and --diff as clush shows them, programs that
cannot run failing as in a shell, GPROC_RANK, and the README's Python API example."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from tests.conftest import LocalCluster, start_cluster, stop_cluster


@pytest.fixture(scope="module")
def c4() -> Iterator[LocalCluster]:
    """Four nodes, fanout 2."""
    c, d = start_cluster(4, 2)
    try:
        yield c
    finally:
        stop_cluster(c, d)


def one_line(stderr: str) -> str:
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    return stderr


def test_one_argument_with_shell_metacharacters_runs_in_sh(c4: LocalCluster) -> None:
    r = c4.gproc("e", "**", "echo a; echo b | tr b c")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["node[0-3]: a", "node[0-3]: c"]
    r = c4.gproc("e", "-localbin", "-w", "node1", "echo $GPROC_NAME")  # the node's own sh
    assert (r.returncode, r.stdout) == (0, "node1: node1\n"), r.stderr
    r = c4.gproc("e", "-w", "node1", "echo", "a;b")  # several arguments: no shell
    assert (r.returncode, r.stdout) == (0, "node1: a;b\n"), r.stderr
    r = c4.gproc("e", "-w", "node1", "--", "echo a; echo b")  # '--': the program of that name
    assert r.returncode == 127 and "echo a; echo b: command not found" in one_line(r.stderr)


def test_repeated_w_and_x_accumulate(c4: LocalCluster) -> None:
    r = c4.gproc("e", "--json", "-w", "node0", "-w", "node2", "-w", "node3", "-x", "node2", "-x", "node9", "true")
    assert r.returncode == 0, r.stderr
    (status,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert status == {"nodes": "node[0,3]", "status": 0}


def test_node_name_as_tree_path_hints_w(c4: LocalCluster) -> None:
    r = c4.gproc("e", "node3", "true")
    assert r.returncode == 1 and "matched no node" in r.stderr and "-w 'node3'" in one_line(r.stderr)
    r = c4.gproc("e", "node[0-3]", "true")
    assert r.returncode == 2 and "node names go with -w: -w 'node[0-3]'" in one_line(r.stderr)
    r = c4.gproc("e", "-i", "node[0-3]", input=b"true\n")
    assert r.returncode == 2 and "-w 'node[0-3]'" in one_line(r.stderr)
    r = c4.gproc("e", "nosuchname", "true")  # no hint when no node has that name either
    assert r.returncode == 1 and "-w" not in one_line(r.stderr)


def test_gathered_stderr_groups_stay_on_stderr(c4: LocalCluster) -> None:
    r = c4.gproc("e", "-b", "**", "echo out; echo err >&2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["-" * 15, "node[0-3] (4)", "-" * 15, "out"]
    assert r.stderr.splitlines() == ["-" * 20, "node[0-3] (4) stderr", "-" * 20, "err"]


def test_diff_prints_only_differences(c4: LocalCluster) -> None:
    r = c4.gproc("e", "--diff", "**", "echo same")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    odd = 'echo same; [ "$GPROC_NAME" = node2 ] && echo extra; true'
    r = c4.gproc("e", "--diff", "**", odd)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["--- node[0-1,3] (3)", "+++ node2 (1)", "@@ -1 +1,2 @@", " same", "+extra"]
    r = c4.gproc("e", "--diff", "-v", "**", odd)  # -v: the reference group too, first
    assert r.stdout.splitlines()[:5] == ["-" * 15, "node[0-1,3] (3)", "-" * 15, "same", "--- node[0-1,3] (3)"]


def test_programs_that_cannot_run_fail_as_in_a_shell(c4: LocalCluster, tmpdir_short: str) -> None:
    script = os.path.join(tmpdir_short, "job.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\necho ran\n")
    os.chmod(script, 0o644)
    for args, status, text in (
        ((tmpdir_short,), 126, f"{tmpdir_short}: Is a directory"),
        ((script,), 126, f"{script}: Permission denied"),
        ((os.path.join(tmpdir_short, "absent"),), 127, "No such file or directory"),
        (("no-such-command",), 127, "no-such-command: command not found"),
        (("-r", os.path.join(tmpdir_short, "no-root"), "ls"), 127, "the root does not exist"),
        (("-localbin", script), 126, "Permission denied"),
        (("-localbin", tmpdir_short), 126, ""),
        (("-localbin", "no-such-command"), 127, "No such file or directory"),
    ):
        r = c4.gproc("e", *args[:-1], "-w", "node1", args[-1])
        assert r.returncode == status and text in one_line(r.stderr), (args, r.returncode, r.stderr)
        assert r.stdout == ""


def test_gproc_rank_is_the_rank_gproc_i_shows(c4: LocalCluster) -> None:
    """GPROC_RANK is the node's rank in the tree (1..N, the master 0), as ``gproc i`` shows it; on a
    local cluster it is not derived from the name (nodeK often has rank K+1, not always)."""
    ranks = {r["name"]: str(r["rank"]) for r in map(json.loads, c4.gproc("i", "--json").stdout.splitlines())}
    r = c4.gproc("e", "**", "echo $GPROC_NAME $GPROC_RANK")
    assert r.returncode == 0, r.stderr
    seen = dict(line.split(": ", 1)[1].split() for line in r.stdout.splitlines())
    assert seen == ranks and len(seen) == 4 and "0" not in seen.values()


# The README's Python API example (issue 17: it indexed ps rows of a job that had already ended).
API_EXAMPLE = """\
import asyncio
from gproc import Cluster, Output, Status

async def main():
    c = Cluster()                                   # $GPROC_MASTER or /tmp/g
    job = await c.exec(["uname", "-r"], nodes="**")  # files=, root=, localbin=, private= as -f -r …
    async for ev in job:                            # merged in the tree
        if isinstance(ev, Output):
            print(ev.nodes, ev.stream, ev.data)
        else:
            print(ev.nodes, "status", ev.status, ev.error)
    print("exit", job.exit_status, "shipped", job.shipped)  # files, bytes, link_bytes, seconds
    print(await c.ping(), await c.info())
    b = await c.exec(["sleep", "300"], "**", batch=True)   # detached: b.id names the job
    while not (rows := [r for r in (await c.ps())[0] if r["job"] == b.id]):  # the process space
        await asyncio.sleep(0.1)                    # until the job's processes have started
    await c.kill([rows[0]["gpid"]], sig=15)         # one process, by gpid
    print(await c.wait([rows[0]["gpid"]]))          # its exit status: 143 (128 + SIGTERM)
    await c.kill(job=b.id)                          # the rest of the job
    print(await c.wait(job=b.id), await c.jobs())   # the job's status; the jobs the master keeps
    async for ev in await c.output(b.id):           # a job's stored output, as events
        print(ev)
    status, events = await c.run(["wc", "-c"], "**", stdin=b"x" * 1000)   # bytes or an async iterable
    print(status, events)

asyncio.run(main())
"""


def test_readme_python_api_example_runs(c4: LocalCluster) -> None:
    r = subprocess.run(
        [sys.executable, "-c", API_EXAMPLE],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "GPROC_MASTER": c4.socket},
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[1] == "node[0-3] status 0 " and out[2].startswith("exit 0 shipped")
    assert "'code': 143" in out[4]  # the one process killed by gpid
    assert out[5].startswith("{'job': ") and "'status': 143" in out[5]
    assert out[-1].startswith("0 [Output(nodes='node[0-3]', count=4, stream='stdout', lineno=0, data=b'1000\\n')")
