"""A daemon's configuration from switch values (the CLI passes values; gproc.daemonconfig builds)."""

from __future__ import annotations

import pytest

from gproc import daemonconfig
from gproc.address import Address
from gproc.errors import GprocError, UsageError


def test_node_from_switch_values() -> None:
    cfg = daemonconfig.node(
        parent="10.0.0.1:7000,10.0.0.2",
        node_id="3",
        listen="127.0.0.1:0",
        name="n3",
        key="/k",
        bin_root="/x",
        timing=daemonconfig.Timing(heartbeat=2.0, dead_after=9.0, quiet=0.5, hold=1.0),
    )
    assert cfg.parents == [Address("10.0.0.1", 7000), Address("10.0.0.2", 6666)]
    assert (cfg.id, cfg.name, cfg.listen, cfg.key, cfg.socket) == (
        "3",
        "n3",
        Address("127.0.0.1", 0),
        "/k",
        "/x/n3.sock",
    )
    assert (cfg.heartbeat, cfg.dead_after, cfg.quiet, cfg.hold) == (2.0, 9.0, 0.5, 1.0)
    assert daemonconfig.node(parent="p", node_id="1", name="a", node_socket="none").socket is None
    assert daemonconfig.node(parent="p", node_id="1", port=7001).listen.port == 7001


def test_node_parent_from_the_environment_or_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPROC_PARENT", "up.example:7002")
    assert daemonconfig.node(node_id="1").parents == [Address("up.example", 7002)]
    monkeypatch.delenv("GPROC_PARENT")
    with pytest.raises(UsageError, match="a node needs -myParent"):
        daemonconfig.node(node_id="1")


def test_master_from_switch_values() -> None:
    s = daemonconfig.master(socket_path="/s", listen="127.0.0.1:0", state="/st", gpid_block=128, keep_jobs=5)
    assert (s.socket, s.state_dir, s.cfg.name, s.cfg.id, s.cfg.listen) == (
        "/s",
        "/st",
        "master",
        "0",
        Address("127.0.0.1", 0),
    )
    assert (s.pids.block, s.keep_jobs) == (128, 5)
    assert daemonconfig.master(socket_path="/s", port=7003).cfg.listen == Address("", 7003)  # all interfaces
    with pytest.raises(GprocError, match="block size"):
        daemonconfig.master(socket_path="/s", gpid_block=0)
