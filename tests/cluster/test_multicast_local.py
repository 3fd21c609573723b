"""``gproc cp --multicast`` where multicast cannot go (a local cluster on loopback): every node gets
the files through the tree, and the answer says so."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from tests.conftest import LocalCluster

pytestmark = pytest.mark.cluster


def test_without_a_multicast_link_the_tree_brings_the_files(cluster16: LocalCluster, tmpdir_short: str) -> None:
    src = os.path.join(tmpdir_short, "src")
    data = os.urandom(300_000)
    with open(src, "wb") as f:
        f.write(data)
    dest = os.path.join(tmpdir_short, "dest")
    os.mkdir(dest)
    r = cluster16.gproc("cp", "--multicast", "--json", "-w", "node[1-3]", src, f"{dest}/%h")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    summary = rows[-1]["multicast"]
    assert summary["via"] == {"tree": "node[1-3]"}, summary
    want = hashlib.sha256(data).hexdigest()
    for n in (1, 2, 3):
        with open(os.path.join(dest, f"node{n}"), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == want


def test_bad_multicast_switches_are_one_line_and_exit_2(cluster16: LocalCluster, tmpdir_short: str) -> None:
    for args in (["--multicast", "--rate", "fast"], ["--multicast", "--fec", "0,1"], ["--rate", "10M"]):
        r = cluster16.gproc("cp", *args, "**", "/etc/hostname", f"{tmpdir_short}/x")
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
