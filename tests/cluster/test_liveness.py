"""Nodes dying or freezing during a job: reported lost within seconds, never a hang; re-attachment;
Ctrl-C on the master shuts the tree down."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest
from tests.cluster.daemons import Daemon, node, wait_until
from tests.conftest import LocalCluster, json_lines, live_lines, start_cluster, stop_cluster

pytestmark = pytest.mark.cluster


@pytest.fixture
def base() -> Iterator[LocalCluster]:
    c, d = start_cluster(4, 4)
    try:
        yield c
    finally:
        stop_cluster(c, d)


def up_names(c: LocalCluster) -> dict[str, dict[str, object]]:
    r = c.gproc("i", "--json")
    rows = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    return {str(row["name"]): row for row in rows if row["state"] == "up"}


SCRIPT = 'echo started; if [ "$GPROC_NAME" = victim ]; then sleep 60; else sleep 2; echo done; fi'


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP])
def test_node_dying_during_a_job_is_lost_within_5s(base: LocalCluster, how: int) -> None:
    log = os.path.join(base.rundir, "victim.log")
    # the master keeps a selection until the tree changes: the victim joining and dying must both show
    assert base.gproc("e", "**", "true").returncode == 0
    victim = node("victim", "100", base.master_address, base.key, log)
    try:
        wait_until(lambda: "victim" in up_names(base), 20, "victim to register")
        env = {**os.environ, "GPROC_MASTER": base.socket}
        p = subprocess.Popen(
            [sys.executable, "-m", "gproc", "e", "--json", "**", "sh", "-c", SCRIPT],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert p.stdout is not None
        seen = ""
        while "victim" not in seen:  # the victim's "started" line proves its job runs
            line = p.stdout.readline()
            assert line, p.stderr.read() if p.stderr else ""
            seen = line if "victim" in line else seen
        victim.signal(how)
        t0 = time.monotonic()
        out, err = p.communicate(timeout=30)
        elapsed = time.monotonic() - t0
        assert elapsed < 5.0, f"lost node noticed after {elapsed:.1f}s"
        assert p.returncode == 255, err
        recs = [json.loads(x) for x in (seen + out).splitlines() if x.strip()]
        st = {r["nodes"]: r for r in recs if "status" in r}
        assert st["victim"] == {"nodes": "victim", "status": 255, "error": "lost"}
        assert st["node[0-3]"]["status"] == 0
        assert json_lines(recs)["done"] == "node[0-3]"
        # the tree still serves everyone else
        r = base.gproc("e", "**", "echo", "ok")
        assert r.returncode == 0 and live_lines(r.stdout) == {"ok": "node[0-3]"}
    finally:
        victim.end()


def test_children_of_a_lost_interior_node_reattach(base: LocalCluster) -> None:
    logs = base.rundir
    mid = node("mid", "100", base.master_address, base.key, os.path.join(logs, "mid.log"))
    leaves: list[Daemon] = []
    try:
        wait_until(lambda: "mid" in up_names(base), 20, "mid to register")
        mid_addr = str(up_names(base)["mid"]["address"])
        leaves = [
            node(f"leaf{i}", str(200 + i), mid_addr, base.key, os.path.join(logs, f"leaf{i}.log")) for i in range(2)
        ]
        wait_until(lambda: {"leaf0", "leaf1"} <= set(up_names(base)), 20, "leaves to register under mid")
        assert up_names(base)["leaf0"]["parent"] == "mid"
        r = base.gproc("e", "--json", "100/.", "hostname")
        assert r.returncode == 0
        mid.signal(signal.SIGKILL)
        wait_until(
            lambda: (
                up_names(base).get("leaf0", {}).get("parent") == "master"
                and up_names(base).get("leaf1", {}).get("parent") == "master"
            ),
            15,
            "leaves to re-attach",
        )
        r = base.gproc("e", "-w", "leaf[0-1]", "echo", "back")
        assert r.returncode == 0 and live_lines(r.stdout) == {"back": "leaf[0-1]"}
    finally:
        mid.end()
        for lf in leaves:
            lf.end()


def test_ctrl_c_on_master_shuts_the_tree_down(tmpdir_short: str) -> None:
    d = tmpdir_short
    key = os.path.join(d, "key")
    subprocess.run([sys.executable, "-m", "gproc", "keygen", "--key", key], check=True, capture_output=True)
    ready = os.path.join(d, "addr")
    master = Daemon(
        "m",
        "--socket",
        os.path.join(d, "g"),
        "--state",
        os.path.join(d, "st"),
        "--listen",
        "127.0.0.1:0",
        "--key",
        key,
        "--ready-file",
        ready,
        log=os.path.join(d, "m.log"),
    )
    nodes: list[Daemon] = []
    jobs: list[psutil.Process] = []
    try:
        wait_until(lambda: os.path.exists(ready), 20, "master")
        with open(ready) as f:
            addr = f.read().strip()
        nodes = [node(f"n{i}", str(i), addr, key, os.path.join(d, f"n{i}.log")) for i in range(3)]
        env = {**os.environ, "GPROC_MASTER": os.path.join(d, "g")}

        def count() -> int:
            r = subprocess.run([sys.executable, "-m", "gproc", "i", "--json"], capture_output=True, text=True, env=env)
            return sum(1 for x in r.stdout.splitlines() if '"up"' in x)

        wait_until(lambda: count() == 3, 20, "nodes to register")
        job = subprocess.Popen(
            [sys.executable, "-m", "gproc", "e", "**", "sleep", "60"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def sleepers() -> list[psutil.Process]:
            """The job's processes under each node (the shipped sleep runs through its loader)."""
            out = []
            for n in nodes:
                out += [p for p in psutil.Process(n.pid).children(recursive=True) if p.cmdline()[-1:] == ["60"]]
            return out

        wait_until(lambda: len(sleepers()) == 3, 20, "the job to run on every node")
        jobs = sleepers()
        master.signal(signal.SIGINT)
        assert master.wait(10) == 0
        for n in nodes:
            assert n.wait(10) == 0, "a node did not exit after the master's shutdown"
        assert job.wait(10) != 0
        # is_running also checks the start time: a reused pid does not count
        left = [p for p in jobs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not left, f"a job outlived its node: {[p.cmdline() for p in left]}"
    finally:
        for p in jobs:  # what a failure left behind (started by our nodes)
            with contextlib.suppress(psutil.Error):
                p.kill()
        master.end()
        for n in nodes:
            n.end()
