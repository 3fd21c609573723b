"""How a node splits an op's targets among its child links (``Node._buckets``) and keeps its routes.

The split is done two ways (per target through ``route`` for a few targets, set intersections with
each link's ``subtree`` for many); both must give what the per-target rule says, with links that
closed, ranks that moved to another link, ranks detached and ranks never heard of.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gproc import credential, wire
from gproc import ranks as rankset
from gproc.overlay import Node, NodeConfig


class Link:
    """A child link as ``_buckets`` sees it: hashable, open or closed."""

    def __init__(self, closed: bool) -> None:
        self.closed = closed


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Node:
    tmp: Path = tmp_path_factory.mktemp("routing")
    key = credential.keygen(os.path.join(tmp, "cluster.key"))
    n = Node(NodeConfig(name="n", id="1", key=key, bin_root=os.path.join(tmp, "bin")))
    n.rank = 1
    return n


def reference(node: Node, targets: set[int]) -> tuple[dict[object, set[int]], set[int]]:
    """The rule, target by target."""
    buckets: dict[object, set[int]] = {}
    unreachable: set[int] = set()
    for r in targets:
        if r == node.rank:
            continue
        lk = node.route.get(r)
        if lk is None or lk.closed:
            unreachable.add(r)
        else:
            buckets.setdefault(lk, set()).add(r)
    return buckets, unreachable


def reset(node: Node) -> None:
    node.route.clear()
    node.subtree.clear()
    node._whole.clear()


def shares_are_current(node: Node) -> None:
    """Every frozen share is its link's subtree as it is now, encoded and sorted right."""
    for lk, w in node._whole.items():
        assert w.ranks == node.subtree.get(lk)
        assert rankset.decode(w.encoded()) == w.ranks
        assert w.ordered() == sorted(w.ranks)


routes = st.lists(st.tuples(st.integers(2, 60), st.integers(0, 7)), max_size=80)  # (rank, link), in order


@settings(max_examples=300, deadline=None)
@given(
    routes,
    st.lists(st.booleans(), min_size=8, max_size=8),  # which links are closed
    st.sets(st.integers(2, 60), max_size=10),  # detached ranks
    st.sets(st.integers(1, 70), max_size=70),  # targets: this node (1), known ranks, unknown ones
)
def test_buckets_follow_the_route_of_every_target(
    node: Node, adds: list[tuple[int, int]], closed: list[bool], detached: set[int], targets: set[int]
) -> None:
    links = [Link(c) for c in closed]
    reset(node)
    for rank, i in adds:  # a rank attached again under another link moves there
        node._route_add(rank, links[i])  # type: ignore[arg-type]
    node._detach(detached)
    # the inverse map stays exact
    assert {r: lk for lk, under in node.subtree.items() for r in under} == node.route
    assert all(node.subtree.values())
    got = node._buckets(targets, node.rank in targets)
    assert got == reference(node, targets)
    for lk, rs in got[0].items():  # the op keeps its buckets: they must not be the routing sets
        assert rs is not node.subtree.get(lk)  # type: ignore[call-overload]


def test_a_large_job_is_split_by_subtree(node: Node) -> None:
    links = [Link(False) for _ in range(16)]
    reset(node)
    for r in range(2, 10_002):
        node._route_add(r, links[r % 16])  # type: ignore[arg-type]
    buckets, unreachable = node._buckets(set(range(1, 10_005)), True)
    assert unreachable == {10_002, 10_003, 10_004}
    assert sorted(len(rs) for rs in buckets.values()) == [625] * 16
    assert all(all(r % 16 == i for r in buckets[links[i]]) for i in range(16))  # type: ignore[index]


steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(2, 40), st.integers(0, 3)),  # attach (or move) a rank
        st.tuples(st.just("detach"), st.sets(st.integers(2, 40), max_size=6)),
        st.tuples(st.just("split"), st.sets(st.integers(1, 45), max_size=45)),  # an op's targets
        st.tuples(st.just("all")),  # an op on every rank this node knows (whole subtrees)
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_frozen_subtrees_follow_every_route_change(node: Node, todo: list[tuple[object, ...]]) -> None:
    """Ops on whole subtrees reuse a frozen share per link; attaching, moving or detaching a rank
    between ops must never leave a share behind that no longer is the subtree."""
    links = [Link(False) for _ in range(4)]
    reset(node)
    for step in todo:
        if step[0] == "add":
            node._route_add(step[1], links[step[2]])  # type: ignore[arg-type,index]
        elif step[0] == "detach":
            node._detach(step[1])  # type: ignore[arg-type]
        else:
            targets = set(step[1]) if step[0] == "split" else {1, *node.route}  # type: ignore[call-overload]
            got = node._buckets(targets, 1 in targets)
            assert ({lk: set(rs) for lk, rs in got[0].items()}, got[1]) == reference(node, targets)
            few = len(targets) <= len(node.subtree)  # the per-target path: plain sets
            for lk, rs in got[0].items():
                w = node._whole.get(lk)  # type: ignore[call-overload]
                assert (w is not None and rs is w.ranks) == (rs == node.subtree[lk] and not few)
        shares_are_current(node)


class Wire(Link):
    """A child link that keeps the frames sent down it."""

    def __init__(self) -> None:
        super().__init__(False)
        self.sent: list[dict[str, object]] = []
        self.counter = wire.Counter()

    def send(self, msg: dict[str, object]) -> bool:
        self.sent.append(wire.unpack(wire.pack(msg)[4:]))  # packed as TreeLink does: the frame limit holds
        return True

    def send_frame(self, data: bytes) -> bool:
        return self.send(wire.unpack(data[4:]))


def test_ops_on_whole_subtrees_carry_the_ranks_under_each_link_now(node: Node) -> None:
    """Three ops on every node, a rank attached before the second and one moved before the third:
    each frame down carries the link's subtree as it is then, and the children's "all of them"
    replies come back as exactly the targets."""

    async def go() -> None:
        links = [Wire() for _ in range(3)]
        reset(node)
        for r in range(2, 30):
            node._route_add(r, links[r % 3])  # type: ignore[arg-type]
        for op_id, change in ((100, None), (101, (30, 0)), (102, (4, 2))):
            if change is not None:
                node._route_add(change[0], links[change[1]])  # type: ignore[arg-type]
            got: list[tuple[list[list[object]], bool]] = []
            targets = {1, *node.route}
            node.start_op(op_id, "noop", {}, targets, lambda g, end, got=got: got.append((g, end)))
            for lk in links:
                assert rankset.decode(lk.sent[-1]["tg"]) == node.subtree[lk]  # type: ignore[arg-type,index]
                node._on_rep(lk, {"t": "rep", "op": op_id, "g": [[["s", 0, ""], True]], "end": True})  # type: ignore[arg-type]
            assert got and got[-1][1] is True
            ok: set[int] = set()
            for groups, _ in got:
                for key, rs in groups:
                    assert key == ["s", 0, ""]
                    ok |= rankset.decode(rs)  # type: ignore[arg-type]
            assert ok == targets
            shares_are_current(node)

    asyncio.run(go())


def test_an_op_too_large_for_a_frame_fails_on_those_ranks_and_keeps_the_links(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subtree whose op frame would pass the frame limit (past ~1.7 million nodes under one child)
    gets an error status for its ranks; the links stay up and the other subtrees run it."""

    async def go() -> None:
        links = [Wire() for _ in range(2)]
        reset(node)
        for r in range(2, 400, 2):  # spread ranks: one interval each
            node._route_add(r, links[0])  # type: ignore[arg-type]
        node._route_add(3, links[1])  # type: ignore[arg-type]
        got: list[tuple[list[list[object]], bool]] = []
        monkeypatch.setattr(wire, "MAX_FRAME", 100)  # 199 ranks do not fit, one does
        node.start_op(200, "noop", {}, {1, *node.route}, lambda g, end: got.append((g, end)))
        assert not links[0].sent and len(links[1].sent) == 1 and not links[0].closed
        node._on_rep(links[1], {"t": "rep", "op": 200, "g": [[["s", 0, ""], True]], "end": True})  # type: ignore[arg-type]
        by_key: dict[tuple[object, ...], set[int]] = {}
        for groups, _ in got:
            for key, rs in groups:
                by_key.setdefault(tuple(key), set()).update(rankset.decode(rs))  # type: ignore[arg-type]
        assert got[-1][1] is True
        assert by_key == {("s", 255, "operation too large for one frame"): set(range(2, 400, 2)), ("s", 0, ""): {1, 3}}

    asyncio.run(go())
