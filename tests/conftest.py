"""Shared fixtures: real local clusters started through gproc's own API (``gproc up --local``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from gproc import local


@dataclass
class LocalCluster:
    socket: str
    rundir: str
    n: int

    def gproc(
        self,
        *args: str,
        input: bytes | None = None,
        timeout: float = 60,
        check: bool = False,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the gproc CLI against this cluster (from ``cwd``: the jobs start there too)."""
        e = {**os.environ, "GPROC_MASTER": self.socket, **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "gproc", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input.decode() if input is not None else None,
            env=e,
            check=check,
            cwd=cwd,
        )

    @property
    def master_address(self) -> str:
        with open(os.path.join(self.rundir, "master.addr")) as f:
            return f.read().strip()

    @property
    def key(self) -> str:
        return os.path.join(self.rundir, "cluster.key")


@pytest.fixture
def tmpdir_short() -> Iterator[str]:
    """A short temporary directory (Unix socket paths are limited to ~100 bytes)."""
    d = tempfile.mkdtemp(prefix="gpt-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def start_cluster(n: int, fanout: int, **kw: object) -> tuple[LocalCluster, str]:
    d = tempfile.mkdtemp(prefix="gpt-", dir="/tmp")
    sock = os.path.join(d, "g")
    rec = local.up(n, fanout=fanout, socket=sock, **kw)  # type: ignore[arg-type]
    return LocalCluster(sock, rec.rundir, n), d


def stop_cluster(c: LocalCluster, d: str) -> None:
    local.down(c.socket, quiet=True)
    shutil.rmtree(d, ignore_errors=True)
    assert not os.path.exists(c.rundir), "gproc down left its run directory behind"


@pytest.fixture(scope="module")
def c8() -> Iterator[LocalCluster]:
    """Eight nodes in three levels (fanout 2): node6 and node7 are three hops below the master."""
    c, d = start_cluster(8, 2)
    try:
        yield c
    finally:
        stop_cluster(c, d)


@pytest.fixture
def work() -> Iterator[str]:
    """A directory every user may enter (files inside say who may read them)."""
    d = tempfile.mkdtemp(prefix="gpw-", dir="/tmp")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster16() -> Iterator[LocalCluster]:
    """Sixteen nodes, fanout 4: a two-level tree (4 interior nodes, 12 leaves)."""
    c, d = start_cluster(16, 4)
    try:
        yield c
    finally:
        stop_cluster(c, d)


def live_lines(text: str) -> dict[str, str]:
    """``nodes: line`` output as line -> folded node set, unioned over display windows (a line may
    print more than once when nodes answer in different windows; which ones is timing, not truth)."""
    from ClusterShell.NodeSet import NodeSet

    out: dict[str, NodeSet] = {}
    for raw in text.splitlines():
        nodes, sep, line = raw.partition(": ")
        if sep:
            out.setdefault(line, NodeSet()).update(nodes)
    return {k: str(v) for k, v in out.items()}


def json_lines(records: list[dict[str, object]], stream: str = "stdout") -> dict[str, str]:
    """Live ``--json`` output records as data -> folded node set, unioned over windows."""
    from ClusterShell.NodeSet import NodeSet

    out: dict[str, NodeSet] = {}
    for r in records:
        if r.get("stream") == stream:
            out.setdefault(str(r["data"]), NodeSet()).update(str(r["nodes"]))
    return {k: str(v) for k, v in out.items()}
