"""The call-tree reducer of ``gproc stack``: what the merged tree says (each path's ranks and process
count, the classes with the outliers first), and that its size follows distinct paths, not processes.
That any tree shape and arrival order give the flat result is in tests/test_reduce.py."""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from gproc.calltree import ELIDED, MAX_DEPTH, Calls, CallTree, classes, trim, walk

frames = st.sampled_from(["_start", "main", "a", "b", "pause"])
process = st.tuples(st.integers(0, 30), st.lists(st.lists(frames, max_size=5), max_size=3))


def reduced(samples: list[Any]) -> Calls:
    r = CallTree()
    acc = r.identity()
    for s in samples:
        acc = r.merge(acc, r.lift(s))
    return acc


def paths(value: Calls) -> dict[tuple[str, ...], tuple[set[int], int]]:
    out: dict[tuple[str, ...], tuple[set[int], int]] = {}
    todo = [((f,), c) for f, c in value.children.items()]
    while todo:
        path, c = todo.pop()
        out[path] = (c.ranks, c.count)
        todo.extend(((*path, f), d) for f, d in c.children.items())
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(process, max_size=40))
def test_each_path_carries_the_ranks_and_the_number_of_processes_that_went_through_it(samples: list[Any]) -> None:
    want: dict[tuple[str, ...], tuple[set[int], int]] = {}
    for rank, stacks in samples:
        prefixes = {tuple(s[:i]) for s in stacks for i in range(1, len(s) + 1)}
        for p in prefixes:  # a process counts once on a path, however many of its threads share it
            ranks, n = want.get(p, (set(), 0))
            want[p] = (ranks | {rank}, n + 1)
    got = reduced(samples)
    assert paths(got) == want
    assert got.count == len(samples) and got.ranks == {r for r, _ in samples}


def test_one_rank_elsewhere_is_two_classes_the_outlier_first() -> None:
    main = ["_start", "__libc_start_main", "main"]
    samples = [(r, [[*main, "b" if r == 3 else "a", "pause"]]) for r in range(64)]
    got = classes(reduced(samples))
    assert [(p[-2:], sorted(ranks), n) for p, ranks, n in got] == [
        (["b", "pause"], [3], 1),
        (["a", "pause"], [r for r in range(64) if r != 3], 63),
    ]
    rows = [(d, f, len(c.ranks)) for d, f, c in walk(reduced(samples))]
    assert rows[:4] == [(0, "_start", 64), (1, "__libc_start_main", 64), (2, "main", 64), (3, "b", 1)]


def test_the_encoding_grows_with_distinct_paths_not_processes() -> None:
    r = CallTree()

    def size(n: int, distinct: int) -> int:
        samples = [(i, [["_start", "main", f"f{i * distinct // n}", "pause"]]) for i in range(n)]
        return len(msgpack.packb(r.encode(reduced(samples))))

    assert size(4096, 2) == size(1024, 2)  # nothing per process
    assert size(1024, 2) - size(64, 2) <= 32  # bigger numbers (counts and interval ends) take 3 bytes, not 1
    assert size(64, 8) > size(64, 2) + 6 * len("f0 pause")


def test_deep_stacks_keep_both_ends() -> None:
    deep = [f"f{i}" for i in range(1000)]
    t = trim(deep)
    assert len(t) == MAX_DEPTH and t[0] == "f0" and t[-1] == "f999" and ELIDED in t
    assert trim(["x" * 1000]) == ["x" * 256]
    r = CallTree()
    v = r.lift((0, [deep]))
    assert paths(r.decode(r.encode(v))) == paths(v)


def test_merge_leaves_its_second_argument_alone() -> None:
    r = CallTree()
    b = r.lift((1, [["main", "a"]]))
    before = paths(b)
    a = r.merge(r.lift((2, [["main", "b"]])), b)
    r.merge(a, r.lift((3, [["main", "a"]])))
    assert paths(b) == before
