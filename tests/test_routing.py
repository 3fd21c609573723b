"""How a node splits an op's targets among its child links (``Node._buckets``) and keeps its routes.

The split is done two ways (per target through ``route`` for a few targets, set intersections with
each link's ``subtree`` for many); both must give what the per-target rule says, with links that
closed, ranks that moved to another link, ranks detached and ranks never heard of.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gproc import credential
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
    node.route.clear()
    node.subtree.clear()
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
    node.route.clear()
    node.subtree.clear()
    for r in range(2, 10_002):
        node._route_add(r, links[r % 16])  # type: ignore[arg-type]
    buckets, unreachable = node._buckets(set(range(1, 10_005)), True)
    assert unreachable == {10_002, 10_003, 10_004}
    assert sorted(len(rs) for rs in buckets.values()) == [625] * 16
    assert all(all(r % 16 == i for r in buckets[links[i]]) for i in range(16))  # type: ignore[index]
