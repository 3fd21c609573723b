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


def decode_by_the_rule(intervals: list[object]) -> set[int]:
    """What ``ranks.decode`` must do, interval by interval (its fast path for single ranks skips this)."""
    if len(intervals) % 2:
        raise ValueError("odd")
    out: set[int] = set()
    for a, b in zip(intervals[0::2], intervals[1::2], strict=True):
        if not (isinstance(a, int) and isinstance(b, int)) or a < 0 or b < a or b - a > 10_000_000:
            raise ValueError("bad")
        out.update(range(a, b + 1))
    return out


anything = st.one_of(st.integers(-3, 50), st.booleans(), st.floats(0, 50), st.text(max_size=2), st.none())


@given(st.one_of(st.lists(st.integers(-2, 60), max_size=30), st.lists(anything, max_size=12)))
def test_decoding_any_list_follows_the_rule(intervals: list[object]) -> None:
    try:
        want: set[int] | None = decode_by_the_rule(intervals)
    except (ValueError, TypeError):
        want = None
    try:
        got: set[int] | None = ranks.decode(intervals)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        got = None
    assert got == want


@given(st.lists(st.integers(0, 60), max_size=30).map(lambda xs: [v for x in xs for v in (x, x)]))
def test_single_ranks_decode_to_themselves(intervals: list[int]) -> None:
    assert ranks.decode(intervals) == set(intervals)


def test_contiguous_ranks_cost_two_numbers() -> None:
    assert ranks.encode(range(10_000)) == [0, 9999]


@pytest.mark.parametrize("bad", [5, [[1], [0, 1]], [[["o"], [3, 1]]], [[["o"], [1]]], [[["o", {"x": 1}], [1, 1]]]])
def test_malformed_groups_are_protocol_errors(bad: object) -> None:
    with pytest.raises(ProtocolError):
        Groups().merge_wire(bad)
