"""Sets of node ranks as they travel on the wire: a flat list of inclusive intervals.

``[0, 1023]`` is ranks 0..1023; ``[1, 1, 5, 9]`` is ranks 1 and 5..9. Contiguous selections, the
common case, cost a few bytes whatever the number of nodes.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import repeat


def encode(ranks: Iterable[int]) -> list[int]:
    """Fold ranks into a flat interval list ``[a0, b0, a1, b1, ...]`` (sorted, disjoint)."""
    s = ranks if isinstance(ranks, (set, frozenset)) else set(ranks)
    if not s:
        return []
    lo, hi = min(s), max(s)
    if hi - lo + 1 == len(s):  # one interval (a whole job's nodes, a subtree's positions): no sort
        return [lo, hi]
    out: list[int] = []
    for r in sorted(s):
        if out and r == out[-1] + 1:
            out[-1] = r
        else:
            out.extend((r, r))
    return out


def decode(intervals: list[int]) -> set[int]:
    """Expand a flat interval list into a set of ranks (rejects malformed lists with ValueError)."""
    if len(intervals) % 2:
        raise ValueError("rank interval list has odd length")
    starts = intervals[0::2]
    if starts == intervals[1::2] and all(map(isinstance, starts, repeat(int))) and min(starts, default=0) >= 0:
        return set(starts)  # single ranks only (a subtree whose ranks were dealt round-robin): in C
    out: set[int] = set()
    for i in range(0, len(intervals), 2):
        a, b = intervals[i], intervals[i + 1]
        if not (isinstance(a, int) and isinstance(b, int)) or a < 0 or b < a or b - a > 10_000_000:
            raise ValueError(f"bad rank interval {a!r}-{b!r}")
        out.update(range(a, b + 1))
    return out


def count(intervals: list[int]) -> int:
    """Number of ranks in an interval list, without expanding it."""
    return sum(intervals[1::2]) - sum(intervals[0::2]) + len(intervals) // 2
