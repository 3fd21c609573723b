"""The node-spec parser: a tree path and ``-w``/``-x`` hostlists, resolved against a small tree.

The input is ``SPEC\\0INCLUDE\\0EXCLUDE`` (a part left out is not given). Allowed: NodeSpecError (does
not parse) and NoMatchError (parsed, matched nothing)."""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from common import text

from gproc import nodespec
from gproc.errors import NodeSpecError, NoMatchError

# the seed's shape: slave0..3 under the master, slaveN under slave(N % 4), ids = N
EDGES: dict[Hashable, list[tuple[str, Hashable]]] = {"master": []}
for _n in range(16):
    EDGES.setdefault("master" if _n < 4 else f"slave{_n % 4}", []).append((str(_n), f"slave{_n}"))


class Tree:
    def children(self, node: Hashable) -> Iterable[tuple[str, Hashable]]:
        return EDGES.get(node, [])


def one(data: bytes) -> None:
    parts: list[str | None] = [*text(data).split("\0", 2)]
    parts += [None] * (3 - len(parts))
    spec, include, exclude = (p if p else None for p in parts)
    try:
        sel, absent = nodespec.select(spec, include, exclude, Tree(), "master", str)
    except (NodeSpecError, NoMatchError):
        return
    assert sel and sel <= {f"slave{n}" for n in range(16)}, sel
    assert all(isinstance(a, str) for a in absent)
