"""Stack traces merged into a prefix tree of call paths (STAT's idea): the reducer of ``gproc stack``.

A process's stack is a list of frames from the outermost (``_start``, ``<module>``) to the innermost
(where it waits); a thread each. Merging the stacks of many processes gives a tree whose every node
is a call path, carrying the set of node ranks whose processes went through it and how many
processes did. Its leaves are the *classes*: processes that are in the same place. A hung job of a
thousand processes where one is elsewhere shows two classes, the small one the outlier.

The merge is a union of sets and a sum of counts, path by path: associative and commutative, so the
tree can be merged inside the overlay in any order (tests/test_reduce.py), and what reaches the
master grows with the number of distinct call paths, not with the number of processes. On the wire a
tree is flat (no nesting, whatever the depth of a stack): ``[RANKS, COUNT, [[PARENT, FRAME, RANKS |
nil, COUNT]…]]`` in preorder, ``PARENT`` the index of an earlier entry (-1: the root), ``RANKS`` rank
intervals (``ranks.encode``), nil when they are the parent's (the common case: a path's set shrinks
only where it forks).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gproc import ranks as rankset
from gproc.errors import ProtocolError

MAX_FRAME = 256  # characters of a frame's name
MAX_DEPTH = 256  # frames of one stack kept: both ends of a deeper one, "…" between
MAX_STACKS = 1024  # threads of one process
MAX_CALLS = 200_000  # entries of a tree on the wire
ELIDED = "…"


class Calls:
    """One call path: the ranks whose processes went through it, how many processes, what it calls."""

    __slots__ = ("children", "count", "ranks")

    def __init__(self, ranks: set[int], count: int) -> None:
        self.ranks = ranks
        self.count = count
        self.children: dict[str, Calls] = {}

    def copy(self) -> Calls:
        out = Calls(set(self.ranks), self.count)
        todo = [(self, out)]
        while todo:
            src, dst = todo.pop()
            for frame, c in src.children.items():
                d = dst.children[frame] = Calls(set(c.ranks), c.count)
                todo.append((c, d))
        return out


def trim(frames: list[str]) -> list[str]:
    """A stack cut to ``MAX_DEPTH`` frames (both ends kept) and its names to ``MAX_FRAME``."""
    names = [f[:MAX_FRAME] for f in frames]
    if len(names) > MAX_DEPTH:
        half = (MAX_DEPTH - 1) // 2
        names = [*names[:half], ELIDED, *names[len(names) - (MAX_DEPTH - 1 - half) :]]
    return names


def _rank(x: Any) -> int:
    if not isinstance(x, int) or isinstance(x, bool) or x < 0:
        raise ProtocolError("a rank is a non-negative integer")
    return x


def _ranks(data: Any) -> set[int]:
    if not isinstance(data, list):
        raise ProtocolError("ranks are a list of intervals")
    try:
        return rankset.decode(data)
    except (ValueError, TypeError) as e:
        raise ProtocolError(f"bad rank intervals: {e}") from None


def _count(x: Any) -> int:
    if not isinstance(x, int) or isinstance(x, bool) or x < 0:
        raise ProtocolError("a process count is a non-negative integer")
    return x


class CallTree:
    """The reducer: a sample is ``(rank, stacks)``, one process on node ``rank`` with one stack per
    thread (frames outermost first); the value is the root ``Calls`` (every rank and process that
    answered), whose children are the outermost frames. A process counts once on each path however
    many of its threads share it."""

    name = "calltree"

    def identity(self) -> Calls:
        return Calls(set(), 0)

    def lift(self, sample: Any) -> Calls:
        if not (isinstance(sample, (list, tuple)) and len(sample) == 2 and isinstance(sample[1], (list, tuple))):
            raise ProtocolError("a stack sample is [rank, [stack…]]")
        rank, stacks = _rank(sample[0]), sample[1]
        if len(stacks) > MAX_STACKS:
            raise ProtocolError(f"more than {MAX_STACKS} stacks in one process")
        root = Calls({rank}, 1)
        for stack in stacks:
            if not (isinstance(stack, (list, tuple)) and all(isinstance(f, str) for f in stack)):
                raise ProtocolError("a stack is a list of frame names")
            at = root
            for frame in trim(list(stack)):
                nxt = at.children.get(frame)
                if nxt is None:
                    nxt = at.children[frame] = Calls({rank}, 1)
                at = nxt
        return root

    def merge(self, a: Calls, b: Calls) -> Calls:
        todo = [(a, b)]
        while todo:
            x, y = todo.pop()
            x.ranks |= y.ranks
            x.count += y.count
            for frame, c in y.children.items():
                mine = x.children.get(frame)
                if mine is None:
                    x.children[frame] = c.copy()  # b may be merged elsewhere too: never share its parts
                else:
                    todo.append((mine, c))
        return a

    def encode(self, value: Calls) -> Any:
        entries: list[list[Any]] = []
        todo: list[tuple[int, Calls, str, Calls]] = [
            (-1, value, f, c) for f, c in reversed(sorted(value.children.items()))
        ]
        while todo:
            parent, up, frame, c = todo.pop()
            me = len(entries)
            entries.append([parent, frame, None if c.ranks == up.ranks else rankset.encode(c.ranks), c.count])
            todo.extend((me, c, f, d) for f, d in reversed(sorted(c.children.items())))
        return [rankset.encode(value.ranks), value.count, entries]

    def decode(self, data: Any) -> Calls:
        if not (isinstance(data, list) and len(data) == 3 and isinstance(data[2], list)):
            raise ProtocolError("a call tree is [ranks, count, entries]")
        if len(data[2]) > MAX_CALLS:
            raise ProtocolError(f"a call tree of more than {MAX_CALLS} paths")
        root = Calls(_ranks(data[0]), _count(data[1]))
        nodes: list[Calls] = []
        depth: list[int] = []
        for e in data[2]:
            if not (isinstance(e, list) and len(e) == 4 and isinstance(e[0], int) and isinstance(e[1], str)):
                raise ProtocolError("a call tree entry is [parent, frame, ranks, count]")
            parent, frame, ranks, count = e
            if not -1 <= parent < len(nodes) or isinstance(parent, bool) or len(frame) > MAX_FRAME:
                raise ProtocolError("a call tree entry names a bad parent or a long frame")
            up = root if parent < 0 else nodes[parent]
            d = 1 if parent < 0 else depth[parent] + 1
            if d > MAX_DEPTH or frame in up.children:
                raise ProtocolError("a call tree too deep, or a frame twice under one parent")
            c = up.children[frame] = Calls(set(up.ranks) if ranks is None else _ranks(ranks), _count(count))
            nodes.append(c)
            depth.append(d)
        return root

    def spec(self) -> list[Any]:
        return [self.name]


def classes(value: Calls) -> list[tuple[list[str], set[int], int]]:
    """The leaves: ``(path, ranks, processes)``, the outliers (fewest ranks, then fewest processes)
    first."""
    out: list[tuple[list[str], set[int], int]] = []
    todo: list[tuple[list[str], Calls]] = [([f], c) for f, c in value.children.items()]
    while todo:
        path, c = todo.pop()
        if not c.children:
            out.append((path, c.ranks, c.count))
        todo.extend(([*path, f], d) for f, d in c.children.items())
    return sorted(out, key=lambda x: (len(x[1]), x[2], x[0]))


def walk(value: Calls) -> Iterator[tuple[int, str, Calls]]:
    """``(depth, frame, calls)`` in preorder, the outliers first among siblings."""

    def order(c: Calls) -> list[tuple[str, Calls]]:
        return sorted(c.children.items(), key=lambda x: (len(x[1].ranks), x[1].count, x[0]), reverse=True)

    todo = [(0, f, c) for f, c in order(value)]
    while todo:
        d, frame, c = todo.pop()
        yield d, frame, c
        todo.extend((d + 1, f, x) for f, x in order(c))


__all__ = ["ELIDED", "MAX_DEPTH", "MAX_FRAME", "CallTree", "Calls", "classes", "trim", "walk"]
