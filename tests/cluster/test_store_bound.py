"""A node started with ``--store-max``: shipped files beyond the bound evict the least recently used
ones no job runs from, and a file that cannot fit fails its job with one clear line."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from tests.cluster.daemons import node, wait_until
from tests.conftest import LocalCluster

pytestmark = pytest.mark.cluster

MB = 1 << 20


def up(c: LocalCluster) -> set[str]:
    rows = [json.loads(x) for x in c.gproc("i", "--json").stdout.splitlines() if x.strip()]
    return {str(r["name"]) for r in rows if r["state"] == "up"}


def test_store_max_evicts_and_refuses_cleanly(cluster16: LocalCluster, tmpdir_short: str) -> None:
    log = os.path.join(tmpdir_short, "small.log")
    small = node("small", "300", cluster16.master_address, cluster16.key, log, "--store-max", "1536K")
    store = os.path.join(tmpdir_short, "bin-small", "store")
    files = {}
    for name, size in (("a", MB), ("b", MB), ("big", 3 * MB)):
        files[name] = os.path.join(tmpdir_short, name)
        with open(files[name], "wb") as f:
            f.write(os.urandom(size))
    sha = {n: hashlib.sha256(Path(p).read_bytes()).hexdigest() for n, p in files.items()}
    try:
        wait_until(lambda: "small" in up(cluster16), 20, "the node to register")

        def ship(name: str) -> tuple[int, str, str]:
            r = cluster16.gproc("e", "-w", "small", "-localbin", "-f", files[name], "wc", "-c", files[name], cwd="/")
            return r.returncode, r.stdout, r.stderr

        code, out, err = ship("a")
        assert code == 0, err
        assert os.listdir(store).count(sha["a"] + ".r") == 1
        code, out, err = ship("b")  # a (1 MiB, its job over) makes room for b under the 1.5 MiB bound
        assert code == 0, err
        held = {n.split(".")[0] for n in os.listdir(store) if not n.startswith(".")}
        assert held == {sha["b"]}, held
        code, out, err = ship("big")
        assert code != 0
        lines = [x for x in (out + err).splitlines() if "No space left in the store" in x]
        assert len(lines) == 1 and "--store-max is 1572864" in lines[0], out + err
        assert "Traceback" not in out + err
        held = {n.split(".")[0] for n in os.listdir(store) if not n.startswith(".")}
        assert held == {sha["b"]}, "nothing evicted for a file that cannot fit"
        assert small.alive()
    finally:
        small.end()
