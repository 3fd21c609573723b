"""An interior daemon SIGKILLed mid-job: its leaves re-attach (to the grandparent, or to a fallback
parent given in ``-myParent``) and deliver their output and exit statuses; only the dead daemon is
reported lost. Every daemon is its own process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest
from ClusterShell.NodeSet import NodeSet
from tests.cluster.daemons import Daemon, node, wait_until
from tests.cluster.test_liveness import up_names
from tests.conftest import LocalCluster, json_lines, start_cluster, stop_cluster

pytestmark = pytest.mark.cluster
SCRIPT = "sleep 3; echo done"


@pytest.fixture
def master() -> Iterator[LocalCluster]:
    c, d = start_cluster(1, 4)  # the master and node0
    try:
        yield c
    finally:
        stop_cluster(c, d)


def statuses(records: list[dict[str, object]]) -> dict[str, tuple[object, object]]:
    """Node name -> (status, error), from ``--json`` status records."""
    out: dict[str, tuple[object, object]] = {}
    for r in records:
        if "status" in r:
            for name in NodeSet(str(r["nodes"])):
                assert name not in out, f"{name} has two statuses: {out[name]} and {r}"
                out[name] = (r["status"], r.get("error", ""))
    return out


def running_on(name: str) -> bool:
    """Is this test's job running on node ``name`` (its shell, staged, whose GPROC_NAME says so)?"""
    for proc in psutil.process_iter(["cmdline"]):
        if (proc.info["cmdline"] or [])[-2:] == ["-c", SCRIPT]:
            try:
                if proc.environ().get("GPROC_NAME") == name:
                    return True
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    return False


@pytest.mark.parametrize("fallback", [False, True], ids=["grandparent", "fallback"])
def test_leaves_of_a_killed_interior_daemon_deliver_their_results(master: LocalCluster, fallback: bool) -> None:
    logs = master.rundir
    daemons: list[Daemon] = []
    try:
        mids = [node(f"mid{i}", str(100 + i), master.master_address, master.key, f"{logs}/m{i}.log") for i in range(4)]
        daemons += mids
        wait_until(lambda: {f"mid{i}" for i in range(4)} <= set(up_names(master)), 30, "interior daemons")
        addr = {n: str(row["address"]) for n, row in up_names(master).items()}
        for i in range(12):
            parent = addr[f"mid{i // 3}"]
            if fallback:
                parent += "," + addr[f"mid{(i // 3 + 1) % 4}"]  # the next interior daemon
            daemons.append(node(f"leaf{i}", str(200 + i), parent, master.key, os.path.join(logs, f"leaf{i}.log")))
        leaves = NodeSet("leaf[0-11]")
        wait_until(lambda: set(leaves) <= set(up_names(master)), 60, "leaves")
        assert {up_names(master)[f"leaf{i}"]["parent"] for i in range(3)} == {"mid0"}

        env = {**os.environ, "GPROC_MASTER": master.socket}
        p = subprocess.Popen(
            [sys.executable, "-m", "gproc", "e", "--json", "**", "sh", "-c", SCRIPT],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        # the job runs on the victim, and the leaves under it are well into their sleep
        wait_until(lambda: running_on("mid0"), 10, "the job to start on mid0")
        time.sleep(1.0)
        mids[0].signal(signal.SIGKILL)
        out, err = p.communicate(timeout=10)  # a bound on the wait, not a timing assertion
        recs = [json.loads(x) for x in out.splitlines() if x.strip()]
        assert p.returncode == 255, err
        st = statuses(recs)
        assert st.pop("mid0") == (255, "lost")
        everyone = NodeSet.fromlist(["node0", "mid[1-3]", str(leaves)])
        assert st == {name: (0, "") for name in everyone}, st
        assert json_lines(recs) == {"done": str(everyone)}
        rows = up_names(master)
        want = "mid1" if fallback else "master"
        assert {rows[f"leaf{i}"]["parent"] for i in range(3)} == {want}
    finally:
        for d in daemons:
            d.end()
