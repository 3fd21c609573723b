"""Reducers: how the answers of many nodes become one answer on the way up the tree.

A reducer is a commutative monoid with a wire encoding: ``identity()``, ``merge(a, b)`` (associative
and commutative), ``lift(sample)`` (one node's answer as a value) and ``encode``/``decode`` (msgpack-able
values; ``decode`` raises ProtocolError on malformed input, which closes only that link). Because the
merge is associative and commutative, every interior node can merge its children's partial replies
in any order and any grouping and the master gets what merging all samples flat would give
(tests/test_reduce.py checks this over random trees).

An op names its reducer on the wire by ``spec()`` (``["sum"]``, ``["hist", [0, 10, 100]]`` …) and each
node rebuilds it with ``from_spec``. Numeric reducers reach the master in O(1) bytes whatever the
number of nodes; ``groups`` (keyed rank sets, the reducer of output and exit statuses) grows with the
number of distinct answers. Sums of floats are subject to rounding (addition of floats is not exactly
associative); sums of integers are exact.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable
from itertools import pairwise
from typing import Any, Generic, Protocol, TypeVar

from gproc.calltree import CallTree
from gproc.errors import ProtocolError
from gproc.groups import Groups, Key

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

MAX_BUCKETS = 4096  # a histogram's edges, bounded: its counts travel in every reply
MAX_TOP = 1024  # a top-k's k, bounded for the same reason
MAX_LABEL = 256  # bytes of a top-k entry's label
MAX_PARTS = 256  # an each-reducer's parts (not nested)
MAX_NAMES = 65536  # a directory listing's names (the first ones in byte order are kept)
MAX_NAME = 1024  # bytes of a name in a listing (Linux allows 255)
MAX_TARGET = 4096  # bytes of a symbolic link's target in a listing


class Reducer(Protocol[T]):
    """What a service gives ``Node.request`` to have replies reduced inside the tree."""

    name: str

    def identity(self) -> T:
        """The value that changes nothing when merged (the answer of no node)."""
        ...

    def lift(self, sample: Any) -> T:
        """One node's answer as a value (ProtocolError when it is not a valid sample)."""
        ...

    def merge(self, a: T, b: T) -> T:
        """``a`` and ``b`` combined; may reuse ``a`` (callers never use it again)."""
        ...

    def encode(self, value: T) -> Any:
        """The value as msgpack-able data."""
        ...

    def decode(self, data: Any) -> T:
        """The inverse of ``encode``; ProtocolError on malformed data."""
        ...

    def spec(self) -> list[Any]:
        """How the op names this reducer on the wire (``from_spec`` rebuilds it)."""
        ...


def _number(x: Any) -> int | float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or (isinstance(x, float) and not math.isfinite(x)):
        raise ProtocolError(f"not a finite number: {str(x)[:40]!r}")
    return x


class GroupsReducer:
    """Keyed rank sets merged by union: output lines, exit statuses, ``ps`` rows (``groups.Groups``).

    Inside an op the tree carries groups with rank positions and line edits (``merge.pack``); this is
    the plain encoding, for groups that are a value of their own."""

    name = "groups"

    def identity(self) -> Groups:
        return Groups()

    def lift(self, sample: Any) -> Groups:
        """``(key, ranks)``."""
        key, ranks = sample
        g = Groups()
        g.add(tuple(key), ranks)
        return g

    def merge(self, a: Groups, b: Groups) -> Groups:
        a.merge(b)
        return a

    def encode(self, value: Groups) -> Any:
        return value.to_wire()

    def decode(self, data: Any) -> Groups:
        g = Groups()
        g.merge_wire(data)
        return g

    def spec(self) -> list[Any]:
        return [self.name]


class _Scalar(Generic[T]):
    name = ""

    def encode(self, value: T) -> Any:
        return value

    def spec(self) -> list[Any]:
        return [self.name]


class Sum(_Scalar[int | float]):
    """The sum of numbers (bytes used, files counted)."""

    name = "sum"

    def identity(self) -> int | float:
        return 0

    def lift(self, sample: Any) -> int | float:
        return _number(sample)

    def merge(self, a: int | float, b: int | float) -> int | float:
        return a + b

    def decode(self, data: Any) -> int | float:
        return _number(data)


class _Extreme(_Scalar[int | float | None]):
    largest = False

    def identity(self) -> int | float | None:
        return None  # no node answered

    def lift(self, sample: Any) -> int | float | None:
        return _number(sample)

    def merge(self, a: int | float | None, b: int | float | None) -> int | float | None:
        if a is None:
            return b
        if b is None:
            return a
        return max(a, b) if self.largest else min(a, b)

    def decode(self, data: Any) -> int | float | None:
        return None if data is None else _number(data)


class Min(_Extreme):
    """The smallest number (None when no node answered)."""

    name = "min"


class Max(_Extreme):
    """The largest number (None when no node answered)."""

    name = "max"
    largest = True


class Avg:
    """The mean, carried as ``(sum, count)`` so that it merges exactly; ``mean`` gives the answer."""

    name = "avg"

    def identity(self) -> tuple[int | float, int]:
        return (0, 0)

    def lift(self, sample: Any) -> tuple[int | float, int]:
        return (_number(sample), 1)

    def merge(self, a: tuple[int | float, int], b: tuple[int | float, int]) -> tuple[int | float, int]:
        return (a[0] + b[0], a[1] + b[1])

    def encode(self, value: tuple[int | float, int]) -> Any:
        return [value[0], value[1]]

    def decode(self, data: Any) -> tuple[int | float, int]:
        if not (isinstance(data, list) and len(data) == 2 and isinstance(data[1], int) and data[1] >= 0):
            raise ProtocolError("an average is [sum, count]")
        return (_number(data[0]), data[1])

    @staticmethod
    def mean(value: tuple[int | float, int]) -> float | None:
        return value[0] / value[1] if value[1] else None

    def spec(self) -> list[Any]:
        return [self.name]


class Hist:
    """Counts per fixed bucket: ``edges`` e0 < e1 < … make buckets (-inf, e0), [e0, e1), …, [en, inf)."""

    name = "hist"

    def __init__(self, edges: list[int | float]) -> None:
        if not edges or len(edges) > MAX_BUCKETS:
            raise ProtocolError(f"a histogram needs 1 to {MAX_BUCKETS} bucket edges")
        edges = [_number(e) for e in edges]
        if any(b <= a for a, b in pairwise(edges)):
            raise ProtocolError("histogram edges must increase")
        self.edges = edges

    def identity(self) -> list[int]:
        return [0] * (len(self.edges) + 1)

    def lift(self, sample: Any) -> list[int]:
        counts = self.identity()
        counts[bisect_right(self.edges, _number(sample))] += 1
        return counts

    def merge(self, a: list[int], b: list[int]) -> list[int]:
        for i, n in enumerate(b):
            a[i] += n
        return a

    def encode(self, value: list[int]) -> Any:
        return value

    def decode(self, data: Any) -> list[int]:
        n = len(self.edges) + 1
        if not (isinstance(data, list) and len(data) == n):
            raise ProtocolError(f"a histogram has {n} counts")
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in data):
            raise ProtocolError("histogram counts are non-negative integers")
        return list(data)

    def spec(self) -> list[Any]:
        return [self.name, list(self.edges)]


Entry = tuple[int | float, str]


class TopK:
    """The ``k`` largest ``(score, label)`` samples (``top``'s busiest processes); ties by label."""

    name = "top"

    def __init__(self, k: int) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or not 0 < k <= MAX_TOP:
            raise ProtocolError(f"top-k needs 1 <= k <= {MAX_TOP}")
        self.k = k

    def identity(self) -> list[Entry]:
        return []

    def _entry(self, x: Any) -> Entry:
        if not (isinstance(x, (list, tuple)) and len(x) == 2 and isinstance(x[1], str) and len(x[1]) <= MAX_LABEL):
            raise ProtocolError("a top-k entry is [score, label]")
        return (_number(x[0]), x[1])

    def lift(self, sample: Any) -> list[Entry]:
        return [self._entry(sample)]

    def merge(self, a: list[Entry], b: list[Entry]) -> list[Entry]:
        return sorted(a + b, key=lambda e: (-e[0], e[1]))[: self.k]

    def encode(self, value: list[Entry]) -> Any:
        return [[s, lab] for s, lab in value]

    def decode(self, data: Any) -> list[Entry]:
        if not isinstance(data, list) or len(data) > self.k:
            raise ProtocolError(f"a top-{self.k} is a list of at most {self.k} entries")
        return sorted((self._entry(x) for x in data), key=lambda e: (-e[0], e[1]))

    def spec(self) -> list[Any]:
        return [self.name, self.k]


class Each:
    """Several reducers side by side over samples that are lists, one item per reducer (a node's
    metrics reduced by min, max, avg, hist and top-k in one op); the value is the list of values."""

    name = "each"

    def __init__(self, parts: list[Reducer[Any]]) -> None:
        if not parts or len(parts) > MAX_PARTS:
            raise ProtocolError(f"an each-reducer has 1 to {MAX_PARTS} parts")
        self.parts = parts

    def identity(self) -> list[Any]:
        return [r.identity() for r in self.parts]

    def lift(self, sample: Any) -> list[Any]:
        if not (isinstance(sample, (list, tuple)) and len(sample) == len(self.parts)):
            raise ProtocolError(f"an each-sample has {len(self.parts)} items")
        return [r.lift(x) for r, x in zip(self.parts, sample, strict=True)]

    def merge(self, a: list[Any], b: list[Any]) -> list[Any]:
        return [r.merge(x, y) for r, x, y in zip(self.parts, a, b, strict=True)]

    def encode(self, value: list[Any]) -> Any:
        return [r.encode(x) for r, x in zip(self.parts, value, strict=True)]

    def decode(self, data: Any) -> list[Any]:
        if not (isinstance(data, list) and len(data) == len(self.parts)):
            raise ProtocolError(f"an each-value has {len(self.parts)} items")
        return [r.decode(x) for r, x in zip(self.parts, data, strict=True)]

    def spec(self) -> list[Any]:
        return [self.name, [r.spec() for r in self.parts]]


KINDS = {"dir": 3, "file": 2, "link": 1, "other": 0}  # which kind a name shown by several nodes takes

Attrs = tuple[str, int, int, int, int, int, str]  # kind, size, mode, mtime, uid, gid, link target
Listing = tuple[dict[str, Attrs], bool]  # names -> attributes; truncated


class Names:
    """The union of directory listings (``gproc mount``'s merged view): each name once, with the
    attributes of one node that has it, chosen by an order (a directory first, then the greatest
    attributes) so that any tree gives the same; at most ``MAX_NAMES`` names, the first in code
    point order, and a flag that says some were left out (exact: set iff the union is larger).

    A sample is a list of ``[name, kind, size, mode, mtime, uid, gid, target]``."""

    name = "names"

    def identity(self) -> Listing:
        return ({}, False)

    @staticmethod
    def _entry(x: Any) -> tuple[str, Attrs]:
        if not (isinstance(x, (list, tuple)) and len(x) == 8):
            raise ProtocolError("a listing entry is [name, kind, size, mode, mtime, uid, gid, target]")
        name, kind, *nums, target = x
        if not (isinstance(name, str) and 0 < len(name) <= MAX_NAME and kind in KINDS):
            raise ProtocolError(f"bad name or kind in a listing: {str(name)[:40]!r}")
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in nums):
            raise ProtocolError("listing attributes are integers")
        if not (isinstance(target, str) and len(target) <= MAX_TARGET):
            raise ProtocolError("bad link target in a listing")
        return name, (kind, *nums, target)

    @staticmethod
    def _order(a: Attrs) -> tuple[int, Attrs]:
        return (KINDS[a[0]], a)

    def _bounded(self, names: dict[str, Attrs], truncated: bool) -> Listing:
        if len(names) <= MAX_NAMES:
            return (names, truncated)
        keep = sorted(names)[:MAX_NAMES]
        return ({n: names[n] for n in keep}, True)

    def lift(self, sample: Any) -> Listing:
        if not isinstance(sample, (list, tuple)):
            raise ProtocolError("a listing is a list of entries")
        names: dict[str, Attrs] = {}
        for x in sample:
            name, attrs = self._entry(x)
            old = names.get(name)
            names[name] = attrs if old is None else max(old, attrs, key=self._order)
        return self._bounded(names, False)

    def merge(self, a: Listing, b: Listing) -> Listing:
        names = a[0]
        for name, attrs in b[0].items():
            old = names.get(name)
            names[name] = attrs if old is None else max(old, attrs, key=self._order)
        return self._bounded(names, a[1] or b[1])

    def encode(self, value: Listing) -> Any:
        return [[[n, *a] for n, a in sorted(value[0].items())], value[1]]

    def decode(self, data: Any) -> Listing:
        if not (isinstance(data, list) and len(data) == 2 and isinstance(data[1], bool) and isinstance(data[0], list)):
            raise ProtocolError("a listing value is [entries, truncated]")
        if len(data[0]) > MAX_NAMES:
            raise ProtocolError(f"a listing has at most {MAX_NAMES} names")
        names, truncated = self.lift(data[0])
        return (names, truncated or data[1])

    def spec(self) -> list[Any]:
        return [self.name]


def from_spec(spec: Any) -> Reducer[Any]:
    """The reducer an op names (ProtocolError for an unknown or malformed one)."""
    if not isinstance(spec, list) or not spec or not isinstance(spec[0], str):
        raise ProtocolError("a reducer is [name, parameters…]")
    name, args = spec[0], spec[1:]
    simple: dict[str, Callable[[], Reducer[Any]]] = {
        "groups": GroupsReducer,
        "sum": Sum,
        "min": Min,
        "max": Max,
        "avg": Avg,
        "calltree": CallTree,
        "names": Names,
    }
    if name in simple and not args:
        return simple[name]()
    if name == "hist" and len(args) == 1 and isinstance(args[0], list):
        return Hist(args[0])
    if name == "top" and len(args) == 1:
        return TopK(args[0])
    if name == "each" and len(args) == 1 and isinstance(args[0], list) and 0 < len(args[0]) <= MAX_PARTS:
        if any(isinstance(a, list) and a[:1] == ["each"] for a in args[0]):
            raise ProtocolError("each-reducers do not nest")
        return Each([from_spec(a) for a in args[0]])
    raise ProtocolError(f"unknown reducer {str(spec)[:60]}")


__all__ = ["Avg", "Each", "GroupsReducer", "Hist", "Key", "Max", "Min", "Names", "Reducer", "Sum", "TopK", "from_spec"]
