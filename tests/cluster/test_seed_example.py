"""The seed README's "Example usage", as written, on one machine.

A master with hostname ``master`` and 64 nodes with hostnames ``slave0``..``slave63``, each daemon in its
own UTS + mount namespace (its own hostname, a private /etc/hosts giving every name its own loopback
address), all on the default port 6666 when it is free. Slaves 0-3 hang under the master, every other
slave under ``slave(N % 4)``, all configured only by the seed's postfix switches.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from ClusterShell.NodeSet import NodeSet
from tests.cluster.netns import Daemons, as_host, pick_port, unshare_problem, write_hosts

from gproc import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.root, pytest.mark.timeout(180)]

N = 64
SLAVES = [f"slave{i}" for i in range(N)]
ALL = NodeSet(f"slave[0-{N - 1}]")
UNDER_SLAVE1 = NodeSet.fromlist(["slave1", *(f"slave{i}" for i in range(4, N) if i % 4 == 1)])
HOSTS = {"master": "127.0.10.1", **{name: f"127.0.20.{i}" for i, name in enumerate(SLAVES)}}
GPROC = [sys.executable, "-m", "gproc"]
# the README's switches, verbatim
FIRST_LEVEL = ["-myParent=master", "-myId=hostname hostbase", "-myAddress=hostname"]
LEAF = ["-myParent=slave hostname hostbase 4 % strcat", "-myId=hostname hostbase", "-myAddress=hostname"]
UP_WITHIN = 60.0


@dataclass
class SeedCluster:
    socket: str
    port: int
    daemons: Daemons
    startup: float  # seconds from the first daemon started to all 64 registered

    def gproc(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """The gproc CLI, outside every namespace, talking to the master's Unix socket."""
        env = {**os.environ, "GPROC_MASTER": self.socket}
        return subprocess.run([*GPROC, *args], capture_output=True, text=True, timeout=timeout, env=env)


def _up_count(sock: str) -> int:
    async def count() -> int:
        info = await Cluster(sock).info()
        return sum(1 for r in info["nodes"] if r["state"] == "up")

    try:
        return asyncio.run(count())
    except Exception:  # master not listening yet
        return 0


@pytest.fixture(scope="module")
def seed_cluster() -> Iterator[SeedCluster]:
    problem = unshare_problem()
    if problem:
        pytest.skip(f"seed example needs per-daemon namespaces: {problem}")
    tmp = tempfile.mkdtemp(prefix="gps-", dir="/tmp")  # short: the master's Unix socket lives here
    daemons = Daemons(tmp)
    try:
        hosts = os.path.join(tmp, "hosts")
        write_hosts(hosts, HOSTS)
        port = pick_port(list(HOSTS.values()), 6666)
        port_args = [] if port == 6666 else [f"-cmdport={port}"]
        key = os.path.join(tmp, "key")
        subprocess.run([*GPROC, "keygen", "--key", key], check=True, capture_output=True, timeout=30)
        sock = os.path.join(tmp, "g")
        common = ["--key", key, f"-binRoot={tmp}/xproc", *port_args]  # client sockets and staged files go there

        t0 = time.monotonic()
        master = [*GPROC, "m", "-myAddress=master", f"-defaultMasterUDS={sock}", "--state", f"{tmp}/state"]
        daemons.start("master", as_host("master", hosts, [*master, *common]))
        for i, name in enumerate(SLAVES):  # the first level first; the rest retry until their parent is up
            daemons.start(name, as_host(name, hosts, [*GPROC, "s", *(FIRST_LEVEL if i < 4 else LEAF), *common]))

        up = 0
        while time.monotonic() - t0 < UP_WITHIN:
            up = _up_count(sock)
            if up >= N or daemons.dead():
                break
            time.sleep(0.25)
        startup = time.monotonic() - t0
        if up < N:
            logs = daemons.report([*daemons.dead(), "master", "slave5"])
            pytest.fail(f"{up} of {N} nodes up after {startup:.1f}s\n{logs}")
        yield SeedCluster(sock, port, daemons, startup)
    finally:
        daemons.stop(first=["master"])
        shutil.rmtree(tmp, ignore_errors=True)


def _records(r: subprocess.CompletedProcess[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(output records, status records) of ``gproc e --json``."""
    recs = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    return [x for x in recs if "stream" in x], [x for x in recs if "status" in x]


def _covered(recs: list[dict[str, Any]]) -> tuple[NodeSet, int]:
    """The union of the records' node sets, and how many node-lines they stand for."""
    union, lines = NodeSet(), 0
    for x in recs:
        ns = NodeSet(x["nodes"])
        union.update(ns)
        lines += len(ns)
    return union, lines


def test_tree_has_the_readme_shape(seed_cluster: SeedCluster) -> None:
    r = seed_cluster.gproc("i", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in map(json.loads, r.stdout.splitlines())}
    assert NodeSet.fromlist(rows) == ALL
    for i, name in enumerate(SLAVES):
        row = rows[name]
        want_parent, want_level = ("master", 1) if i < 4 else (f"slave{i % 4}", 2)
        assert (row["parent"], row["level"], row["id"], row["state"]) == (want_parent, want_level, str(i), "up"), row
        assert row["address"] == f"{name}:{seed_cluster.port}", row
    text = seed_cluster.gproc("i").stdout
    assert f"{N} nodes up, 0 lost" in text, text


def test_date_on_every_node(seed_cluster: SeedCluster) -> None:
    r = seed_cluster.gproc("e", "--json", "./.", "/bin/date")
    assert r.returncode == 0, r.stderr
    out, status = _records(r)
    assert _covered(out) == (ALL, N), r.stdout  # 64 dates, one from each slave
    assert all(x["stream"] == "stdout" and x["data"] for x in out), r.stdout
    assert _covered(status) == (ALL, N) and {x["status"] for x in status} == {0}, r.stdout


def test_date_on_slave1_and_its_children(seed_cluster: SeedCluster) -> None:
    r = seed_cluster.gproc("e", "--json", "1/.", "/bin/date")
    assert r.returncode == 0, r.stderr
    out, status = _records(r)
    assert len(UNDER_SLAVE1) == 16
    assert _covered(out) == (UNDER_SLAVE1, 16), r.stdout
    assert _covered(status) == (UNDER_SLAVE1, 16) and {x["status"] for x in status} == {0}, r.stdout


def test_each_daemon_has_its_own_hostname(seed_cluster: SeedCluster) -> None:
    r = seed_cluster.gproc("e", "--json", "1/.", "hostname")
    assert r.returncode == 0, r.stderr
    out, _ = _records(r)
    assert _covered(out) == (UNDER_SLAVE1, 16), r.stdout
    for x in out:  # distinct output per node: one record each, naming the node it came from
        assert x["nodes"] == x["data"], x


def test_started_in_bounded_time(seed_cluster: SeedCluster) -> None:
    assert seed_cluster.startup < UP_WITHIN
    assert not seed_cluster.daemons.dead(), seed_cluster.daemons.report()
