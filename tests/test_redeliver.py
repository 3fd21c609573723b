"""An interior node dying mid-job loses nothing of its subtree: its children re-attach (to the
grandparent or a fallback parent) and send their results again; the master counts each once and
reports only the dead node lost. Over memory links on the virtual clock (tests/memlink.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from tests.memlink import Net, run
from tests.test_ops import make_master, stop_all

from gproc import overlay
from gproc import ranks as rankset
from gproc.errors import ProtocolError, RegistrationError
from gproc.master import Master
from gproc.messages import LateMsg
from gproc.overlay import Node, Op
from gproc.services.collect import TRUNCATED, Collector


async def job(op: Op) -> None:
    """Like ``sh -c 'echo start; sleep 3; echo done'``, with ``lines`` more lines first."""
    for i in range(op.body.get("lines", 0)):
        op.emit(("o", 1, i, b"x" * 100 + b"\n"))
    n = op.body.get("lines", 0)
    op.emit(("o", 1, n, b"start\n"))
    await asyncio.sleep(op.body.get("sleep", {}).get(op.node.cfg.name, 3))  # by node name
    op.emit(("o", 1, n + 1, b"done\n"))
    op.emit(("s", 0, ""))


def arm(*nodes: Node) -> None:
    for n in nodes:
        n.handlers["job"] = job


class Results:
    """What a collector passed on, per (key, rank), with how many times."""

    def __init__(self) -> None:
        self.seen: dict[tuple[Any, int], int] = {}
        self.ended = asyncio.Event()

    def emit(self, groups: list[list[Any]]) -> None:
        for key, enc in groups:
            for r in rankset.decode(enc):
                k = (tuple(key), r)
                self.seen[k] = self.seen.get(k, 0) + 1

    def of(self, rank: int) -> dict[tuple[Any, ...], int]:
        return {k: n for (k, r), n in self.seen.items() if r == rank}


async def run_job(master: Master, targets: set[int], body: dict[str, Any]) -> Results:
    res = Results()
    col = Collector(res.emit, res.ended.set, master.cfg.reattach_grace)
    op_id = master.next_op_id()
    master.collectors[op_id] = col
    master.start_op(op_id, "job", {"redeliver": True, **body}, targets, lambda g, end: col.add(g, end))
    return res


async def interior_dies(
    tmp_path: Path, fallback: bool, body: dict[str, Any], **mid_cfg: Any
) -> tuple[Results, Node, list[Node], Node]:
    net = Net()
    master = make_master(net, tmp_path)
    mid = net.node("mid", [master.listen_address], **mid_cfg)  # type: ignore[list-item]
    other = net.node("other", [master.listen_address])  # type: ignore[list-item]
    await net.start(mid)
    await net.start(other)
    await net.attached(mid, other)
    parents = [mid.listen_address, other.listen_address] if fallback else [mid.listen_address]
    leaves = [net.node(f"leaf{i}", parents, listen=False) for i in range(3)]  # type: ignore[misc]
    for lf in leaves:
        await net.start(lf)
    await net.attached(*leaves)
    arm(mid, other, *leaves)
    assert all(master.topo[lf.rank].parent == mid.rank for lf in leaves if lf.rank is not None)
    res = await run_job(master, master.up_ranks(), body)
    await asyncio.sleep(1.0)
    if not mid_cfg:  # every node said "start", and it reached the master
        assert all(res.of(lf.rank or 0).get(("o", 1, body.get("lines", 0), b"start\n")) == 1 for lf in leaves)
    else:  # mid holds its leaves' results
        assert all(res.of(lf.rank or 0) == {} for lf in leaves)
    await mid.stop()
    async with asyncio.timeout(30):
        await res.ended.wait()
    await stop_all(master, [other, *leaves])
    return res, mid, leaves, other


def test_children_of_a_dead_interior_node_deliver_their_results_once(tmp_path: Path) -> None:
    async def go() -> None:
        res, mid, leaves, other = await interior_dies(tmp_path, False, {})
        for lf in leaves:
            assert lf.parent_address != mid.listen_address  # re-attached (to the master)
            assert res.of(lf.rank or 0) == {("o", 1, 0, b"start\n"): 1, ("o", 1, 1, b"done\n"): 1, ("s", 0, ""): 1}
        assert res.of(mid.rank or 0) == {("o", 1, 0, b"start\n"): 1, ("s", 255, "lost"): 1}
        assert res.of(other.rank or 0)[("s", 0, "")] == 1

    run(go())


def test_children_reattach_to_a_fallback_parent_and_deliver_through_it(tmp_path: Path) -> None:
    async def go() -> None:
        res, mid, leaves, other = await interior_dies(tmp_path, True, {})
        for lf in leaves:
            assert lf.parent_address == other.listen_address
            assert res.of(lf.rank or 0) == {("o", 1, 0, b"start\n"): 1, ("o", 1, 1, b"done\n"): 1, ("s", 0, ""): 1}
        assert res.of(mid.rank or 0)[("s", 255, "lost")] == 1

    run(go())


def test_results_the_dead_node_held_are_sent_again(tmp_path: Path) -> None:
    async def go() -> None:
        # the leaves end at 0.5 s; mid, still running, holds what they sent (window, hold, quiet 5 s) and dies at 1 s
        quick = {f"leaf{i}": 0.5 for i in range(3)}
        slow = {"window": 5.0, "hold": 5.0, "quiet": 5.0}
        res, mid, leaves, _other = await interior_dies(tmp_path, False, {"sleep": quick}, **slow)
        for lf in leaves:
            assert res.of(lf.rank or 0) == {("o", 1, 0, b"start\n"): 1, ("o", 1, 1, b"done\n"): 1, ("s", 0, ""): 1}
        assert res.of(mid.rank or 0)[("s", 255, "lost")] == 1

    run(go())


def test_a_full_journal_reports_truncation_with_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(overlay, "JOURNAL_BYTES", 2000)  # 20 lines of 100 bytes fill it

    async def go() -> None:
        res, _mid, leaves, _other = await interior_dies(tmp_path, False, {"lines": 50})
        for lf in leaves:
            got = res.of(lf.rank or 0)
            assert got[("s", 0, TRUNCATED)] == 1 and ("s", 0, "") not in got
            assert got[("o", 1, 51, b"done\n")] == 1  # what came after re-attaching still comes
            assert all(n == 1 for n in got.values())

    run(go())


# ---- the collector alone ------------------------------------------------------------------------


def test_the_collector_holds_lost_ranks_for_the_grace_then_reports_them() -> None:
    async def go() -> None:
        res = Results()
        col = Collector(res.emit, res.ended.set, grace=5.0)
        col.add([[["o", 1, 0, b"a\n"], [1, 3]], [["s", 0, ""], [1, 1]]], False)
        col.add([[["s", 255, "lost"], [2, 3]]], True)
        assert not res.ended.is_set()  # 2 and 3 may still come late
        col.late([[["o", 1, 0, b"a\n"], [2, 2]], [["o", 1, 1, b"b\n"], [2, 2]], [["s", 0, ""], [2, 2]]], [])
        col.late([[["s", 0, ""], [2, 2]]], [])  # the same again: already counted
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await res.ended.wait()
        assert loop.time() - t0 == pytest.approx(5.0)
        assert res.of(2) == {("o", 1, 0, b"a\n"): 1, ("o", 1, 1, b"b\n"): 1, ("s", 0, ""): 1}
        assert res.of(3) == {("o", 1, 0, b"a\n"): 1, ("s", 255, "lost"): 1}
        col.late([[["s", 0, ""], [3, 3]]], [])  # after the end: nothing more
        assert ("s", 0, "") not in res.of(3)

    run(go())


def test_the_collector_drops_late_records_it_cannot_tell_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    import gproc.services.collect as collect

    monkeypatch.setattr(collect, "MAX_LINES", 2)

    async def go() -> None:
        res = Results()
        col = Collector(res.emit, res.ended.set, grace=5.0)
        col.add([[["o", 1, i, b"l\n"], [1, 2]] for i in range(4)], False)  # lines 2 and 3 not indexed
        col.late([[["o", 1, i, b"l\n"], [2, 2]] for i in range(4)] + [[["s", 0, ""], [2, 2]]], [])
        col.add([[["s", 0, ""], [1, 1]]], True)
        await res.ended.wait()
        assert res.of(2) == {**{("o", 1, i, b"l\n"): 1 for i in range(4)}, ("s", 0, TRUNCATED): 1}

    run(go())


def test_the_collector_reports_at_once_a_lost_rank_that_cannot_come_back() -> None:
    async def go() -> None:
        res = Results()
        col = Collector(res.emit, res.ended.set, grace=5.0, may_return=lambda lost: lost - {2})
        col.add([[["s", 0, ""], [1, 1]]], False)
        col.add([[["s", 255, "lost"], [2, 3]]], False)
        assert res.of(2) == {("s", 255, "lost"): 1} and res.of(3) == {}  # 2 at once, 3 held
        col.add([], True)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await res.ended.wait()
        assert loop.time() - t0 == pytest.approx(5.0)
        assert res.of(3) == {("s", 255, "lost"): 1}

    run(go())


@pytest.mark.parametrize(
    "msg",
    [
        {"t": "late", "op": "1", "g": [], "end": False},
        {"t": "late", "op": 1, "g": {}, "end": False},
        {"t": "late", "op": 1, "g": [], "end": 1},
        {"t": "late", "op": 1, "g": [[[], [1, 1]]], "end": False},
        {"t": "late", "op": 1, "g": [[["s", 0, ""], [2, 1]]], "end": False},
        {"t": "late", "op": 1, "g": [[["s", 0, ""], [1]]], "end": False},
        {"t": "late", "op": 1, "g": [], "end": False, "tr": [-1]},
    ],
)
def test_malformed_late_results_are_refused(msg: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        LateMsg.decode(msg)


def test_late_results_round_trip() -> None:
    m = LateMsg(7, [[["o", 1, 0, b"x\n"], [1, 3]]], True, [2])
    assert LateMsg.decode(m.encode()) == m


def test_late_results_relayed_by_a_node_that_loses_its_own_parent_arrive(tmp_path: Path) -> None:
    """master - up - mid - leaves: mid dies; the leaves re-attach to up and send their results again
    through it, and up loses its own parent link just as they arrive (what it relays goes into a
    dead link). Up keeps what it relayed and sends it again once re-attached, so the leaves' results
    are delivered (they used to be dropped: reported lost although every leaf finished)."""

    async def go() -> None:
        net = Net()
        master = make_master(net, tmp_path)
        up = net.node("up", [master.listen_address])  # type: ignore[list-item]
        await net.start(up)
        await net.attached(up)
        # mid holds what the leaves sent (they end at 0.5 s) and dies at 1 s: all of it comes again
        mid = net.node("mid", [up.listen_address], window=5.0, hold=5.0, quiet=5.0)  # type: ignore[list-item]
        await net.start(mid)
        await net.attached(mid)
        leaves = [net.node(f"leaf{i}", [mid.listen_address], listen=False) for i in range(3)]  # type: ignore[list-item]
        for lf in leaves:
            await net.start(lf)
        await net.attached(*leaves)
        arm(up, mid, *leaves)
        res = await run_job(master, master.up_ranks(), {"sleep": {f"leaf{i}": 0.5 for i in range(3)}})
        await asyncio.sleep(1.0)
        assert all(res.of(lf.rank or 0) == {} for lf in leaves)
        relay = up._on_late
        cut: list[int] = []

        def parent_lost_meanwhile(link: Any, msg: dict[str, Any]) -> None:
            if not cut and up.parent is not None:
                cut.append(1)
                up.parent.abort()  # up's parent link dies with this message on its way
            relay(link, msg)

        up._on_late = parent_lost_meanwhile  # type: ignore[method-assign]
        await mid.stop()
        async with asyncio.timeout(60):
            await res.ended.wait()
        assert cut, "no late result passed through up: the test proves nothing"
        for lf in leaves:
            assert lf.parent_address == up.listen_address
            assert res.of(lf.rank or 0) == {("o", 1, 0, b"start\n"): 1, ("o", 1, 1, b"done\n"): 1, ("s", 0, ""): 1}
        assert res.of(mid.rank or 0)[("s", 255, "lost")] == 1
        await stop_all(master, [up, *leaves])

    run(go())


def test_a_refused_reannounce_is_tried_again(tmp_path: Path) -> None:
    """master - mid - leaf: mid's parent link dies and mid re-attaches; the leaf, still attached to
    mid, reannounces itself, and the master refuses the first time (transiently, as when a link up the
    chain is not attached yet). The leaf tries again and is up; it used to give up after one try and
    stay lost in the master's tree for good (found by the chaos suite: seed 21 at 40 nodes)."""

    async def go() -> None:
        net = Net()
        master = make_master(net, tmp_path)
        mid = net.node("mid", [master.listen_address])  # type: ignore[list-item]
        await net.start(mid)
        await net.attached(mid)
        leaf = net.node("leaf", [mid.listen_address], listen=False)  # type: ignore[list-item]
        await net.start(leaf)
        await net.attached(leaf)
        register = master.register
        refused: list[str] = []

        def refuse_once(args: dict[str, Any]) -> dict[str, Any]:
            if args.get("name") == "leaf" and not refused:
                refused.append("attach")
                raise RegistrationError("retry: unknown parent")
            return register(args)

        master.register = refuse_once  # type: ignore[method-assign]
        assert mid.parent is not None and leaf.rank is not None
        mid.parent.abort()
        async with asyncio.timeout(30):
            while master.topo[leaf.rank].state == "up":  # the master saw mid's subtree go
                await asyncio.sleep(0.05)
            while master.topo[leaf.rank].state != "up":
                await asyncio.sleep(0.1)
        assert refused, "the leaf's reannounce was never refused: the test proves nothing"
        assert master.topo[mid.rank or 0].state == "up"
        await stop_all(master, [mid, leaf])

    run(go())
