"""The pure parts of ``gproc launch --slurm``: a node's place and ancestors in the rank tree, which
ancestor it joins when its parent does not listen, and the reasons read from srun's labelled log."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gproc.address import Address
from gproc.errors import UsageError
from gproc.slurmagent import ancestors, pick_parent, place
from gproc.slurmlaunch import failures


def test_ancestors_form_a_k_ary_tree_by_rank() -> None:
    assert ancestors(0, 2) == []
    assert [ancestors(r, 2)[0] for r in range(1, 7)] == [0, 0, 1, 1, 2, 2]
    assert ancestors(13, 3) == [4, 1, 0]
    assert ancestors(5, 16) == [0]
    # every rank's chain ends at rank 0, and each rank has at most k children
    for k in (1, 2, 3, 16):
        kids: dict[int, int] = {}
        for r in range(1, 200):
            chain = ancestors(r, k)
            assert chain[-1] == 0 and all(a < b for a, b in zip(chain[1:], chain, strict=False))
            kids[chain[0]] = kids.get(chain[0], 0) + 1
        assert max(kids.values()) == k


def test_place_is_the_rank_unless_srun_ordered_the_nodes_otherwise() -> None:
    names = ["n1", "n2", "n3"]
    assert place(names, "n2", 1) == 1
    assert place(names, "n3", 0) == 2  # the name's index: every task computes the same tree
    with pytest.raises(UsageError, match="not in the launch's node list"):
        place(names, "other", 0)


def test_a_parent_that_does_not_listen_is_passed_over_for_the_nearest_that_does() -> None:
    with socket.socket() as up, socket.socket() as closed:
        up.bind(("127.0.0.1", 0))
        up.listen()
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        on = Address("127.0.0.1", up.getsockname()[1])
        off = Address("127.0.0.1", closed.getsockname()[1])
        master = Address("127.0.0.1", 1)
        assert pick_parent([on, off, master], 0.2) == [on, off, master]
        assert pick_parent([off, on, master], 0.2) == [on, master]
        assert pick_parent([off, off, master], 0.2) == [master]
        assert pick_parent([master], 0.2) == [master]


def test_failures_read_each_ranks_reason_and_srun_verdict(tmp_path: Path) -> None:
    log = tmp_path / "srun.log"
    log.write_text(
        "0: 2026-12-03 12:00:00 gproc.node WARNING something passing\n"
        "1: gproc slurm agent on n2: [Errno 98] error while attempting to bind on address: address already in use\n"
        "srun: error: n2: task 1: Exited with exit code 1\n"
        "2: \n"
        "srun: error: Timed out waiting for job step to complete\n"
    )
    got = failures(str(log), ["n1", "n2", "n3"])
    assert got["n2"] == (
        "Exited with exit code 1: gproc slurm agent on n2: [Errno 98] error while attempting to bind on address:"
        " address already in use"
    )
    assert got["n1"] == "2026-12-03 12:00:00 gproc.node WARNING something passing"  # only used if n1 failed
    assert "n3" not in got
    assert got[""] == "Timed out waiting for job step to complete"
    assert failures(str(tmp_path / "absent"), ["n1"]) == {}


@pytest.mark.parametrize(
    ("stdin", "env", "msg"),
    [
        (b"not json", {}, "bad request on stdin"),
        (b'{"key": "x"}', {}, "bad request on stdin: not a launch request"),
        (
            b'{"key": "x", "master": ":1", "names": ["n1"], "fanout": 2, "port": 6666}',
            {"SLURMD_NODENAME": "n9", "SLURM_PROCID": "0"},
            "this node (n9) is not in the launch's node list",
        ),
        (
            b'{"key": "x", "master": ":1", "names": ["n1"], "fanout": 2, "port": 6666}',
            {"SLURMD_NODENAME": "n1", "SLURM_PROCID": "0"},
            "no SLURM_LAUNCH_NODE_IPADDR: give the master's address (--address)",
        ),
    ],
)
def test_the_agent_refuses_a_bad_request_in_one_line(stdin: bytes, env: dict[str, str], msg: str) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    r = subprocess.run(
        [sys.executable, "-m", "gproc.slurmagent"], input=stdin, env={**clean, **env}, capture_output=True, timeout=60
    )
    err = r.stderr.decode()
    assert r.returncode in (1, 2) and err.count("\n") == 1 and msg in err, err
