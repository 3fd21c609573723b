"""Merging output inside the tree: how a reply's groups travel on a tree link (child -> parent).

Logically a reply is a ``Groups`` (key -> rank set) and merging is a per-key union (``groups``). On a
tree link two encodings make it small without changing what it means:

* **Positions, not ranks.** A rank set is written as intervals of positions in the sorted target list
  the parent gave this child for the op, and ``true`` is "all of them": the same line from a whole
  subtree costs the same bytes whether the subtree holds one node or a million.
* **Near-identical lines as edits.** An output line that differs a little from an earlier line of the
  same stream and line number in the same reply (a timestamp, a host name) travels as
  ``["d", REF, PREFIX, SUFFIX, MIDDLE]``: the key at position REF of this reply, its data replaced by
  ``ref[:PREFIX] + MIDDLE + ref[len(ref) - SUFFIX:]``. It is used only when it is smaller.

Both are exact: decoding gives back the very groups that were encoded, so the reducer is still a
per-key union, associative and commutative whatever the tree's shape and the arrival order
(tests/test_merge.py checks this over random trees).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence, Set
from typing import Any

from gproc import ranks as rankset
from gproc.errors import ProtocolError
from gproc.groups import Groups, Key, freeze

MIN_EDIT_LINE = 6  # shorter lines always travel whole (an edit cannot be much smaller)


def positions(ranks: set[int], base: Sequence[int]) -> list[int] | bool:
    """Intervals of the positions of ``ranks`` in the sorted list ``base`` (ranks must be in base);
    True when ranks are all of base."""
    if len(ranks) == len(base):
        return True
    pos = []
    for r in ranks:
        i = bisect_left(base, r)
        if i >= len(base) or base[i] != r:
            raise ValueError(f"rank {r} is not among the op's targets")
        pos.append(i)
    return rankset.encode(pos)


def ranks_at(intervals: Any, base: Sequence[int], whole: Set[int] | None = None) -> Set[int]:
    """The ranks at the given position intervals of ``base`` (ProtocolError when out of range);
    ``whole``, when given, is the set of all of ``base`` (returned as is for "all positions")."""
    if intervals is True:
        return set(base) if whole is None else whole
    if not isinstance(intervals, list):
        raise ProtocolError("rank positions must be a list (or true)")
    k = len(base)
    try:
        pos = rankset.decode(intervals)
    except (ValueError, TypeError) as e:
        raise ProtocolError(f"bad rank positions: {e}") from None
    if pos and max(pos) >= k:
        raise ProtocolError("rank position beyond the op's targets")
    return {base[p] for p in pos}


def _common_prefix(a: bytes, b: bytes) -> int:
    """Length of the longest common prefix (binary search over C-level slice comparisons)."""
    ma, mb = memoryview(a), memoryview(b)
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ma[:mid] == mb[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_suffix(a: bytes, b: bytes, limit: int) -> int:
    ma, mb = memoryview(a), memoryview(b)
    la, lb = len(a), len(b)
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ma[la - mid :] == mb[lb - mid :]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _int_size(v: int) -> int:
    """Bytes msgpack takes for a non-negative int."""
    return 1 if v < 128 else 2 if v < 256 else 3 if v < 65536 else 5 if v < 1 << 32 else 9


def _bin_size(n: int) -> int:
    return n + (2 if n < 256 else 3 if n < 65536 else 5)


def edit(
    ref: bytes, data: bytes, ref_index: int = 0, stream: int = 1, lineno: int = 0
) -> tuple[int, int, bytes] | None:
    """``(prefix, suffix, middle)`` turning ``ref`` into ``data``, or None when the line written whole
    (``["o", stream, lineno, data]``) is no bigger than the edit (``["d", ref_index, p, s, middle]``)."""
    p = _common_prefix(ref, data)
    s = _common_suffix(ref, data, min(len(ref), len(data)) - p)
    middle = data[p : len(data) - s]
    whole = _int_size(stream) + _int_size(lineno) + _bin_size(len(data))
    edited = _int_size(ref_index) + _int_size(p) + _int_size(s) + _bin_size(len(middle))
    return (p, s, middle) if edited < whole else None


def apply_edit(ref: bytes, prefix: int, suffix: int, middle: bytes) -> bytes:
    return ref[:prefix] + middle + ref[len(ref) - suffix :]


def pack(groups: Groups, base: Sequence[int] | None, edits: bool = True) -> list[list[Any]]:
    """Encode groups for a ``rep``: rank positions in ``base`` (absolute ranks when None), and
    near-identical output lines as edits of the first line with the same stream and line number."""
    out: list[list[Any]] = []
    refs: dict[tuple[Any, Any], tuple[int, bytes]] = {}
    for key, ranks in groups.items():
        rs: list[int] | bool = positions(ranks, base) if base is not None else rankset.encode(ranks)
        if edits and len(key) == 4 and key[0] == "o" and isinstance(key[3], bytes) and len(key[3]) >= MIN_EDIT_LINE:
            line = (key[1], key[2])
            ref = refs.get(line)
            if ref is None:
                refs[line] = (len(out), key[3])
            else:
                e = edit(ref[1], key[3], ref[0], key[1], key[2]) if isinstance(key[1], int) else None
                if e is not None:
                    out.append([["d", ref[0], *e], rs])
                    continue
        out.append([list(key), rs])
    return out


def unpack_into(groups: Groups, wire: Any, base: Sequence[int] | None, whole: Set[int] | None = None) -> None:
    """Decode a ``rep``'s groups (as ``pack`` wrote them) and union them into ``groups``; ``whole``
    is the set of all of ``base`` when the caller has it (the targets it sent: not copied again).

    Malformed input raises ProtocolError (which closes that one link)."""
    if not isinstance(wire, list):
        raise ProtocolError("groups must be a list")
    keys: list[Key] = []
    for item in wire:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], list) and item[0]):
            raise ProtocolError("a group must be [key, ranks]")
        raw = item[0]
        key: Key = _undo_edit(raw, keys) if raw[0] == "d" else freeze(raw)
        keys.append(key)
        rs: Set[int]
        if base is None:
            try:
                rs = rankset.decode(item[1])
            except (ValueError, TypeError) as e:
                raise ProtocolError(f"bad rank set in group: {e}") from None
        else:
            rs = ranks_at(item[1], base, whole)
        groups.add(key, rs)


def _undo_edit(raw: list[Any], keys: list[Key]) -> Key:
    if len(raw) != 5:
        raise ProtocolError("an edited line is [d, ref, prefix, suffix, middle]")
    _, ref_i, p, s, middle = raw
    if not (isinstance(ref_i, int) and 0 <= ref_i < len(keys)):
        raise ProtocolError("edited line refers to no earlier line")
    ref = keys[ref_i]
    if not (len(ref) == 4 and ref[0] == "o" and isinstance(ref[3], bytes)):
        raise ProtocolError("edited line refers to something that is not an output line")
    data = ref[3]
    if not (isinstance(p, int) and isinstance(s, int) and isinstance(middle, bytes)):
        raise ProtocolError("bad line edit")
    if p < 0 or s < 0 or p + s > len(data):
        raise ProtocolError("line edit out of range")
    return ("o", ref[1], ref[2], apply_edit(data, p, s, middle))
