"""A job's results at the master, each counted once, whichever way it came.

Results come up the tree (``add``) and, after an interior node died, late (``late``): its children
re-attach under another parent and send again everything they had sent up for the job, then the rest
(``overlay.Upward``). A result's identity is the job's op, the rank and, for an output record, its
stream and line number (a rank's status: there is one), so whatever reached the master by both ways
is passed on once.

Ranks the tree reports ``lost`` that may come back (``may_return``: at the master, those under
another lost rank, and those that re-attached since the job started) are held for ``grace`` seconds
before they are reported lost for good: a rank whose status arrives meanwhile was not lost. The
others (the dead node itself) are reported lost at once. The job ends once the tree ended and no
rank is held.

Bounded: the index of line identities holds at most ``MAX_LINES`` (stream, line) entries per job.
Past it a late record whose line is not indexed cannot be told from one already shown: it is dropped
and its rank's status says why (as for ranks whose node could not keep all its output).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from gproc import ranks as rankset

MAX_LINES = 100_000
TRUNCATED = "output may be incomplete: records were not kept for redelivery after re-attaching"
LOST = ["s", 255, "lost"]

Out = list[list[Any]]  # [[key, rank intervals], …]


class Collector:
    """One job's results at the master: ``emit`` gets every result once, ``finish`` is called once."""

    def __init__(
        self,
        emit: Callable[[Out], None],
        finish: Callable[[], None],
        grace: float,
        may_return: Callable[[set[int]], set[int]] = lambda lost: lost,
    ) -> None:
        self.emit = emit
        self.may_return = may_return
        self._finish = finish
        self.grace = grace
        self.status: set[int] = set()  # ranks whose status was passed on
        self.lost: set[int] = set()  # held: reported lost, may yet deliver late
        self.gone: set[int] = set()  # lost for good: what they send late is not shown
        self.truncated: set[int] = set()  # ranks whose late delivery misses records
        self.finished = False
        self._tree_ended = False
        self._late_seen = False  # once anything is late, every record is checked against the index
        self._lines: dict[tuple[Any, Any], list[list[int]]] = {}  # (stream, line) -> rank intervals
        self._sets: dict[tuple[Any, Any], set[int]] = {}  # the same, expanded (only once checked)
        self._overflow = False
        self._timer: asyncio.TimerHandle | None = None

    def add(self, groups: Out, end: bool) -> None:
        """Results up the tree (``end``: the tree has answered for every rank)."""
        out = self._accept(groups, late=False)
        if out:
            self.emit(out)
        if end:
            self._tree_ended = True
            self._maybe_finish()

    def late(self, groups: Out, truncated: list[int]) -> None:
        """Results from a node that re-attached: what the master already has is dropped."""
        if self.finished:
            return
        self._late_seen = True
        self.truncated.update(r for r in truncated if r not in self.status)
        out = self._accept(groups, late=True)
        if out:
            self.emit(out)
        self._maybe_finish()

    def _accept(self, groups: Out, late: bool) -> Out:
        out: Out = []
        for key, enc in groups:
            kind = key[0]
            if kind == "s" and len(key) == 3:
                ranks = rankset.decode(enc) - self.status
                if key[1] == 255 and key[2] == "lost":
                    held = self.may_return(ranks) if ranks else ranks
                    self._hold(held)
                    ranks -= held
                    self.gone |= ranks
                if not ranks:
                    continue
                self.status |= ranks
                self.lost -= ranks
                cut = ranks & self.truncated
                if cut:
                    ranks -= cut
                    out.append(
                        [[key[0], key[1], f"{key[2]}; {TRUNCATED}" if key[2] else TRUNCATED], rankset.encode(cut)]
                    )
                if ranks:
                    out.append([key, enc if not cut and len(ranks) == rankset.count(enc) else rankset.encode(ranks)])
            elif kind == "o" and len(key) == 4:
                ident = (key[1], key[2])
                if not self._late_seen and not self.lost:  # the common case: nothing can be twice yet
                    self._index(ident, enc)
                    out.append([key, enc])
                    continue
                seen = self._seen(ident)
                if seen is None:  # not indexed (past MAX_LINES)
                    if late:
                        self.truncated.update(r for r in rankset.decode(enc) if r not in self.status)
                        continue
                    out.append([key, enc])
                    continue
                ranks = rankset.decode(enc) - seen - self.gone
                if ranks:
                    seen |= ranks
                    out.append([key, rankset.encode(ranks)])
            else:
                out.append([key, enc])
        return out

    def _index(self, ident: tuple[Any, Any], enc: list[int]) -> None:
        entry = self._lines.get(ident)
        if entry is not None:
            entry.append(enc)
        elif len(self._lines) < MAX_LINES:
            self._lines[ident] = [enc]
        else:
            self._overflow = True

    def _seen(self, ident: tuple[Any, Any]) -> set[int] | None:
        s = self._sets.get(ident)
        if s is not None:
            return s
        encs = self._lines.pop(ident, None)
        if encs is None and self._overflow:
            return None
        if encs is None and len(self._sets) >= MAX_LINES:
            self._overflow = True
            return None
        s = self._sets[ident] = set()
        for e in encs or ():
            s |= rankset.decode(e)
        return s

    def _hold(self, ranks: set[int]) -> None:
        new = ranks - self.lost
        if not new:
            return
        self.lost |= new
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self.grace, self._give_up)

    def _give_up(self) -> None:
        """The grace is over: what is still held is lost for good."""
        self._timer = None
        if self.lost and not self.finished:
            gone, self.lost = self.lost, set()
            self.status |= gone
            self.gone |= gone
            self.emit([[LOST, rankset.encode(gone)]])
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self._tree_ended and not self.lost and not self.finished:
            self.finished = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._finish()
