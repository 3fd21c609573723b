"""``gproc stack`` on a real local cluster: a job whose rank 3 waits in another function than the
others shows exactly two classes, the outlier first (native frames by eu-stack, Python frames by
py-spy); another user's processes cannot be read; unknown jobs and bad arguments are one line."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from tests.cluster.daemons import wait_until
from tests.cluster.users import NOBODY, as_user, needs_root
from tests.conftest import LocalCluster, start_cluster, stop_cluster

from gproc import Cluster
from gproc.errors import GprocError

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(not shutil.which("gcc") or not shutil.which("eu-stack"), reason="needs gcc and eu-stack"),
]

C_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
__attribute__((noinline)) void in_a(void) { pause(); }
__attribute__((noinline)) void in_b(void) { pause(); }
int main(void) {
    const char *r = getenv("GPROC_RANK");
    if (r && atoi(r) == 3) in_b(); else in_a();
    return 0;
}
"""

PY_PROGRAM = """
import os, time
def in_a():
    time.sleep(600)
def in_b():
    time.sleep(600)
(in_b if os.environ.get("GPROC_RANK") == "3" else in_a)()
"""


@pytest.fixture(scope="module")
def c8() -> Iterator[LocalCluster]:
    c, d = start_cluster(8, 2)
    os.chmod(os.path.dirname(c.socket), 0o755)  # let another user reach the master's socket
    try:
        yield c
    finally:
        stop_cluster(c, d)


@pytest.fixture(scope="module")
def progs() -> Iterator[dict[str, str]]:
    d = tempfile.mkdtemp(prefix="gpt-stack-", dir="/tmp")
    os.chmod(d, 0o755)
    try:
        with open(os.path.join(d, "waits.c"), "w") as f:
            f.write(C_PROGRAM)
        subprocess.run(["gcc", "-O0", "-o", os.path.join(d, "waits"), os.path.join(d, "waits.c")], check=True)
        with open(os.path.join(d, "waits.py"), "w") as f:
            f.write(PY_PROGRAM)
        yield {"c": os.path.join(d, "waits"), "py": os.path.join(d, "waits.py")}
    finally:
        shutil.rmtree(d)


class Running:
    """A job left running by ``gproc e`` (its id read from its first line), killed at the end."""

    def __init__(self, c: LocalCluster, nodes: str, argv: list[str], count: int) -> None:
        self.c = c
        env = {**os.environ, "GPROC_MASTER": c.socket}
        cmd = "echo job=$GPROC_JOBID; exec " + " ".join(argv)
        self.p = subprocess.Popen(
            [sys.executable, "-m", "gproc", "e", "-localbin", "-w", nodes, "sh", "-c", cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.p.stdout is not None
        m = re.search(r"job=(\d+)", self.p.stdout.readline())
        assert m, "the job said no id"
        self.job = int(m.group(1))

        def asleep() -> bool:  # every process of the job waits in pause (state S), none still starting
            r = c.gproc("ps", "--json")
            rows = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
            mine = [x for x in rows if x["job"] == self.job and x["stat"] == "S" and argv[-1] in x["cmd"]]
            return len(mine) == count

        wait_until(asleep, 30, f"the {count} processes of job {self.job} to wait")

    def rows(self) -> list[dict[str, Any]]:
        r = self.c.gproc("ps", "--json")
        return [x for x in (json.loads(y) for y in r.stdout.splitlines() if y.strip()) if x["job"] == self.job]

    def end(self) -> None:
        self.c.gproc("kill", f"%{self.job}")
        try:
            self.p.wait(15)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(5)
        for s in (self.p.stdout, self.p.stderr):
            if s is not None:
                s.close()


def stack_json(c: LocalCluster, *args: str) -> dict[str, Any]:
    r = c.gproc("stack", "--json", *args)
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def rank_node(c: LocalCluster, rank: int) -> str:
    async def go() -> dict[str, Any]:
        return await Cluster(c.socket).info()

    return next(n["name"] for n in asyncio.run(go())["nodes"] if n["rank"] == rank)


def test_one_rank_in_another_function_is_two_classes_the_outlier_first(c8: LocalCluster, progs: dict[str, str]) -> None:
    job = Running(c8, "node[0-7]", [progs["c"]], 8)
    try:
        r = stack_json(c8, f"%{job.job}")
        odd = rank_node(c8, 3)
        assert r["processes"] == 8 and r["nodes"] == "node[0-7]"
        got = [(x["path"][-2:], x["nodes"], x["processes"]) for x in r["classes"]]
        rest = ",".join(n for n in (f"node{i}" for i in range(8)) if n != odd)
        assert len(got) == 2, r["classes"]
        assert got[0][0][0] == "in_b" and got[0][1:] == (odd, 1)  # the outlier first
        assert got[1][0][0] == "in_a" and got[1][2] == 7
        from ClusterShell.NodeSet import NodeSet

        assert NodeSet(got[1][1]) == NodeSet(rest)
        assert r["classes"][0]["path"][:3] == r["classes"][1]["path"][:3]  # one tree, forked below main
        # the printed tree: in_b above in_a, each with its node set
        text = c8.gproc("stack", str(job.job))  # a bare job id names the job
        assert text.returncode == 0, text.stderr
        lines = text.stdout.splitlines()
        assert lines[0] == "8 processes on node[0-7], 2 classes"
        b = next(i for i, ln in enumerate(lines) if ln.strip().startswith("in_b"))
        a = next(i for i, ln in enumerate(lines) if ln.strip().startswith("in_a"))
        assert b < a and lines[b].endswith(f"1 on {odd}") and lines[a].split(" on ")[0].endswith("7")
        # gpids select processes: two of them, from two nodes, are one class
        gpids = sorted(x["gpid"] for x in job.rows() if x["name"] != odd)[:2]
        r = stack_json(c8, *map(str, gpids))
        assert r["processes"] == 2 and [x["path"][-2] for x in r["classes"]] == ["in_a"]
    finally:
        job.end()


@pytest.mark.skipif(not shutil.which("py-spy"), reason="needs py-spy")
def test_python_frames_through_py_spy(c8: LocalCluster, progs: dict[str, str]) -> None:
    job = Running(c8, "node[1-4]", ["/usr/bin/python3", progs["py"]], 4)
    try:
        r = stack_json(c8, f"%{job.job}")
        got = [(x["path"], x["nodes"], x["processes"]) for x in r["classes"]]
        assert got == [
            (["<module> (waits.py)", "in_b (waits.py)"], rank_node(c8, 3), 1),
            (["<module> (waits.py)", "in_a (waits.py)"], got[1][1], 3),
        ], got
    finally:
        job.end()


@needs_root
def test_a_user_cannot_read_another_users_stacks(c8: LocalCluster, progs: dict[str, str]) -> None:
    job = Running(c8, "node[1-2]", [progs["c"]], 2)  # root's
    try:
        gpid = job.rows()[0]["gpid"]

        def attempt() -> dict[str, Any]:
            async def go() -> dict[str, Any]:
                out: dict[str, Any] = {}
                for name, call in (("job", {"job": job.job}), ("gpid", {"gpids": [gpid]})):
                    try:
                        out[name] = await Cluster(c8.socket).stack(**call)
                    except GprocError as e:
                        out[name] = {"error": str(e)}
                return out

            return asyncio.run(go())

        got = as_user(NOBODY, attempt)
        assert got["job"] == {"error": f"job {job.job}: permission denied (another user's job)"}, got
        assert got["gpid"] == {"error": f"stack {gpid}: permission denied"}, got
        assert stack_json(c8, str(gpid))["processes"] == 1  # root reads it
    finally:
        job.end()


def test_bad_input_is_one_line(c8: LocalCluster) -> None:
    for args, status, text in (
        (["%999999"], 1, "gproc: job 999999: no such job"),
        (["job:77"], 1, "gproc: job 77: no such job"),
        (["987654"], 1, "gproc: stack 987654: no such process"),
        (["abc"], 2, "gproc: not a gpid or job id: 'abc'"),
        ([], 2, "gproc: give at least one gpid or job id"),
        (["%1", "%2"], 2, "gproc: give one job id (or gpids)"),
    ):
        r = c8.gproc("stack", *args)
        assert r.returncode == status and r.stdout == "", (args, r)
        assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith(text), (args, r.stderr)


def test_the_daemons_survive_malformed_stack_requests(c8: LocalCluster) -> None:
    async def go() -> list[str]:
        k, out = Cluster(c8.socket), []
        for args in ({"gpids": "x"}, {"gpids": [-1]}, {"gpids": [True]}, {"job": "x"}, {}, {"gpids": []}):
            try:
                await k.request("stack", **args)
                out.append("answered")
            except GprocError as e:
                out.append(type(e).__name__)
        return out

    assert asyncio.run(go()) == ["UsageError"] * 6
    assert c8.gproc("ps").returncode == 0
