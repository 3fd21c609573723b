"""The reducer: merging is associative and commutative, so any tree shape gives the same answer."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gproc import ranks
from gproc.errors import ProtocolError
from gproc.groups import Groups

keys = st.tuples(st.sampled_from(["o", "s"]), st.integers(0, 3), st.binary(max_size=3))
contributions = st.lists(st.tuples(keys, st.integers(1, 200)), min_size=1, max_size=60)


def merged_flat(items: list[tuple[tuple[object, ...], int]]) -> dict[tuple[object, ...], set[int]]:
    out: dict[tuple[object, ...], set[int]] = {}
    for k, r in items:
        out.setdefault(k, set()).add(r)
    return out


def reduce_tree(parts: list[Groups], rng: random.Random) -> Groups:
    """Merge partial results through a random tree, sending each level over the wire."""
    while len(parts) > 1:
        rng.shuffle(parts)
        nxt = []
        while parts:
            fan = rng.randint(1, 4)
            node = Groups()
            for g in parts[:fan]:
                node.merge_wire(g.to_wire())
            nxt.append(node)
            parts = parts[fan:]
        parts = nxt
    return parts[0]


@given(contributions, st.integers(0, 2**32))
def test_any_tree_shape_and_order_gives_flat_result(items: list[tuple[tuple[object, ...], int]], seed: int) -> None:
    rng = random.Random(seed)
    leaves = []
    for k, r in items:
        g = Groups()
        g.add(k, {r})
        leaves.append(g)
    result = reduce_tree(leaves, rng)
    assert dict(result.items()) == merged_flat(items)


@given(st.sets(st.integers(0, 5000)))
def test_rank_intervals_round_trip(rs: set[int]) -> None:
    enc = ranks.encode(rs)
    assert ranks.decode(enc) == rs and ranks.count(enc) == len(rs)
    assert len(enc) <= 2 * len(rs)


def test_contiguous_ranks_cost_two_numbers() -> None:
    assert ranks.encode(range(10_000)) == [0, 9999]


@pytest.mark.parametrize("bad", [5, [[1], [0, 1]], [[["o"], [3, 1]]], [[["o"], [1]]], [[["o", {"x": 1}], [1, 1]]]])
def test_malformed_groups_are_protocol_errors(bad: object) -> None:
    with pytest.raises(ProtocolError):
        Groups().merge_wire(bad)
