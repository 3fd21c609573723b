"""Every reducer merges associatively and commutatively: any tree shape, any arrival order and any
split of a node's answer into partial replies give what reducing all samples flat gives."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gproc import reduce
from gproc.calltree import Calls, CallTree
from gproc.errors import ProtocolError
from gproc.groups import Groups

N = 40  # nodes of a random tree

ints = st.integers(-(10**12), 10**12)
labels = st.text(max_size=8)
frames = st.sampled_from(["_start", "main", "a", "b", "pause", "poll"])
stacks = st.lists(st.lists(frames, max_size=5), max_size=3)  # a process: a stack per thread
keys = st.tuples(st.sampled_from(["o", "s"]), st.integers(0, 3), st.sampled_from(["", "lost", "x"]))

# (reducer, strategy of one node's sample)
CASES: list[tuple[reduce.Reducer[Any], st.SearchStrategy[Any]]] = [
    (reduce.Sum(), ints),
    (reduce.Min(), st.one_of(ints, st.floats(allow_nan=False, allow_infinity=False))),
    (reduce.Max(), st.one_of(ints, st.floats(allow_nan=False, allow_infinity=False))),
    (reduce.Avg(), ints),
    (reduce.Hist([0, 10, 100, 1000]), st.integers(-50, 5000)),
    (reduce.TopK(5), st.tuples(st.integers(0, 20), labels)),
    (
        reduce.Each([reduce.Max(), reduce.Avg(), reduce.Hist([0, 10]), reduce.TopK(2)]),
        st.tuples(ints, ints, st.integers(-5, 20), st.tuples(st.integers(0, 9), labels)),
    ),
    (CallTree(), st.tuples(st.integers(0, N - 1), stacks)),
    (reduce.GroupsReducer(), st.tuples(keys, st.sets(st.integers(0, N - 1), min_size=1, max_size=3))),
    (
        reduce.Names(),
        st.lists(
            st.tuples(
                st.sampled_from(["a", "b", "c", "dd", "é"]),
                st.sampled_from(list(reduce.KINDS)),
                *[st.integers(0, 3)] * 5,
                st.sampled_from(["", "x"]),
            ),
            max_size=6,
        ),
    ),
]


def wire_trip(data: Any) -> Any:
    return msgpack.unpackb(msgpack.packb(data, use_bin_type=True), raw=False)


def flat(r: reduce.Reducer[Any], samples: list[tuple[int, Any]]) -> Any:
    acc = r.identity()
    for _, s in samples:
        acc = r.merge(acc, r.lift(s))
    return acc


def tree(r: reduce.Reducer[Any], samples: list[tuple[int, Any]], rng: random.Random) -> Any:
    """Each node gets a random parent of lower index (0 is the root); each merges its own samples and
    its children's replies in random order and sends the result up in one to three partial replies,
    each through the wire encoding."""
    parent = [-1] + [rng.randrange(i) for i in range(1, N)]
    own: list[list[Any]] = [[] for _ in range(N)]
    for node, s in samples:
        own[node % N].append(r.lift(s))
    inbox: list[list[Any]] = [[] for _ in range(N)]
    for i in range(N - 1, -1, -1):  # children before parents
        parts = own[i] + inbox[i]
        rng.shuffle(parts)
        cuts = sorted(rng.sample(range(len(parts) + 1), min(2, len(parts) + 1)))
        replies = []
        for a, b in zip([0, *cuts], [*cuts, len(parts)], strict=True):
            acc = r.identity()
            for p in parts[a:b]:
                acc = r.merge(acc, p) if rng.random() < 0.5 else r.merge(p, acc)
            replies.append(acc)
        if i == 0:
            out = r.identity()
            for rep in replies:
                out = r.merge(out, rep)
            return out
        inbox[parent[i]].extend(r.decode(wire_trip(r.encode(rep))) for rep in replies)
    raise AssertionError("unreachable")


def canonical(r: reduce.Reducer[Any], value: Any) -> Any:
    if isinstance(value, Groups):
        return dict(value.items())
    if isinstance(value, Calls):  # every path in full (the encoding leaves out what a parent says)
        out = {(): (sorted(value.ranks), value.count)}
        todo = [((f,), c) for f, c in value.children.items()]
        while todo:
            path, c = todo.pop()
            out[path] = (sorted(c.ranks), c.count)
            todo.extend(((*path, f), d) for f, d in c.children.items())
        return out
    return r.encode(value)


@pytest.mark.parametrize("case", CASES, ids=[c[0].name for c in CASES])
@settings(max_examples=150, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**32))
def test_any_tree_any_order_any_split_gives_the_flat_result(
    case: tuple[reduce.Reducer[Any], st.SearchStrategy[Any]], data: st.DataObject, seed: int
) -> None:
    r, sample = case
    samples = data.draw(st.lists(st.tuples(st.integers(0, N - 1), sample), max_size=60))
    # flat on fresh lifts: merge may reuse its first argument
    assert canonical(r, tree(r, samples, random.Random(seed))) == canonical(r, flat(r, samples))


@pytest.mark.parametrize("case", CASES, ids=[c[0].name for c in CASES])
def test_each_reducer_is_rebuilt_from_its_spec(case: tuple[reduce.Reducer[Any], Any]) -> None:
    r = case[0]
    again = reduce.from_spec(wire_trip(r.spec()))
    assert again.spec() == r.spec() and type(again) is type(r)


def test_values_read_as_expected() -> None:
    h = reduce.Hist([0, 10])
    acc = h.identity()
    for x in (-1, 0, 5, 10, 99):
        acc = h.merge(acc, h.lift(x))
    assert acc == [1, 2, 2]
    a = reduce.Avg()
    assert a.mean(a.merge(a.lift(1), a.lift(4))) == 2.5 and a.mean(a.identity()) is None
    t = reduce.TopK(2)
    assert t.merge(t.merge(t.lift((1, "a")), t.lift((3, "b"))), t.lift((3, "a"))) == [(3, "a"), (3, "b")]
    assert reduce.Min().merge(reduce.Min().identity(), 4) == 4


@pytest.mark.parametrize(
    ("spec", "data"),
    [
        (["sum"], "1"),
        (["sum"], True),
        (["sum"], float("nan")),
        (["min"], [1]),
        (["avg"], [1]),
        (["avg"], [1, -1]),
        (["hist", [0, 10]], [1, 2]),
        (["hist", [0, 10]], [1, 2, -3]),
        (["top", 2], [[1, "a"], [2, "b"], [3, "c"]]),
        (["top", 2], [["x", "a"]]),
        (["groups"], [[["s", 0, ""], [3, 1]]]),
        (["calltree"], [[0, 0], 1]),
        (["calltree"], [[0, 0], 1, [[0, "main", None, 1]]]),  # a parent not yet seen
        (["calltree"], [[0, 0], 1, [[-1, "main", None, 1], [-1, "main", None, 1]]]),  # a frame twice
        (["calltree"], [[0, 0], 1, [[-1, "main", [3], 1]]]),
        (["calltree"], [[0, 0], -1, []]),
    ],
)
def test_malformed_values_are_protocol_errors(spec: list[Any], data: Any) -> None:
    with pytest.raises(ProtocolError):
        reduce.from_spec(spec).decode(data)


@pytest.mark.parametrize(
    "spec", [[], "sum", ["nope"], ["sum", 1], ["hist"], ["hist", []], ["hist", [2, 1]], ["top", 0], ["top", 10**6]]
)
def test_malformed_specs_are_protocol_errors(spec: Any) -> None:
    with pytest.raises(ProtocolError):
        reduce.from_spec(spec)


@settings(max_examples=150, deadline=None)
@given(
    samples=st.lists(st.tuples(st.integers(0, N - 1), st.lists(st.sampled_from("abcdefg"), max_size=4)), max_size=30),
    seed=st.integers(0, 2**32),
)
def test_a_bounded_listing_keeps_the_first_names_and_says_so_exactly(
    samples: list[tuple[int, list[str]]], seed: int
) -> None:
    old, reduce.MAX_NAMES = reduce.MAX_NAMES, 3
    try:
        r = reduce.Names()
        entries = [(node, [[n, "file", 0, 0, 0, 0, 0, ""] for n in names]) for node, names in samples]
        got = tree(r, entries, random.Random(seed))
        assert canonical(r, got) == canonical(r, flat(r, entries))
        union = sorted({n for _, names in samples for n in names})
        assert sorted(got[0]) == union[:3] and got[1] == (len(union) > 3)
    finally:
        reduce.MAX_NAMES = old


def test_a_name_that_is_a_directory_somewhere_is_one() -> None:
    r = reduce.Names()
    a = r.lift([["x", "file", 9, 0o644, 5, 0, 0, ""]])
    b = r.lift([["x", "dir", 0, 0o755, 1, 0, 0, ""], ["y", "link", 0, 0o777, 1, 0, 0, "x"]])
    names, truncated = r.merge(a, b)
    assert names["x"][0] == "dir" and names["y"] == ("link", 0, 0o777, 1, 0, 0, "x") and not truncated
