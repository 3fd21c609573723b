"""The reducer at the heart of the tree: keyed rank sets, merged by union.

Every reply that travels up the tree is a ``Groups``: a map from a key (an output line, an exit
status, a ``cat`` result …) to the set of node ranks that produced it. Merging is a per-key union, so
it is associative and commutative: any tree shape and any arrival order give the same groups, and the
bytes that reach the master grow with the number of distinct answers, not with the number of nodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from gproc import ranks as rankset
from gproc.errors import ProtocolError

Key = tuple[Any, ...]


def freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    if isinstance(value, (str, bytes, int, float, bool)) or value is None:
        return value
    raise ProtocolError(f"unhashable group key element of type {type(value).__name__}")


class Groups:
    """Ordered map key -> set of ranks (first-seen order is kept for display)."""

    __slots__ = ("_g",)

    def __init__(self) -> None:
        self._g: dict[Key, set[int]] = {}

    def add(self, key: Key, ranks: Iterable[int]) -> None:
        """Add ranks to a key's group."""
        s = self._g.get(key)
        if s is None:
            self._g[key] = set(ranks)
        else:
            s.update(ranks)

    def merge(self, other: Groups) -> None:
        """Union another Groups into this one."""
        for k, s in other._g.items():
            self.add(k, s)

    def merge_wire(self, wire: Any) -> None:
        """Union groups received from the wire; malformed input raises ProtocolError."""
        if not isinstance(wire, list):
            raise ProtocolError("groups must be a list")
        for item in wire:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], list)):
                raise ProtocolError("a group must be [key, ranks]")
            try:
                ranks = rankset.decode(item[1])
            except (ValueError, TypeError) as e:
                raise ProtocolError(f"bad rank set in group: {e}") from None
            self.add(freeze(item[0]), ranks)

    def to_wire(self) -> list[list[Any]]:
        """Encode for the wire: ``[[key…], [a0, b0, …]]`` per group."""
        return [[list(k), rankset.encode(s)] for k, s in self._g.items()]

    def take(self) -> Groups:
        """Return the current content and leave this one empty (used when flushing upward)."""
        out = Groups()
        out._g, self._g = self._g, {}
        return out

    def items(self) -> Iterator[tuple[Key, set[int]]]:
        return iter(self._g.items())

    def __len__(self) -> int:
        return len(self._g)

    def __bool__(self) -> bool:
        return bool(self._g)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Groups) and self._g == other._g

    def __repr__(self) -> str:
        return f"Groups({self._g!r})"
