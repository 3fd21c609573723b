"""Cluster-wide process ids (gpids) handed out in blocks: the master's table, a node's allocator.

This is the blocked pid allocation of seeds/004 without its kernel patch (SPEC §7). The master owns
the gpid space ``[1, gpid_max]`` and grants each node *blocks* of consecutive gpids; a node numbers the
processes it starts from its blocks without asking anyone, holding one spare block so that it asks for
the next one long before the current runs out. Routing by gpid (``kill``, ``wait``) needs only the
block table: the block holding a gpid names the rank that numbered it.

* ``BlockTable`` (master): the grants in SQLite, written before a grant is answered, so a restarted
  master never grants a gpid again. *Collection* takes back what a node has not used: the node cuts
  its ranges after what it has handed out (plus a small reserve) and returns the tails; the used head of
  a range stays granted to the node (its gpids, alive or ended, keep routing there) and the tails go
  to a pool that is granted again before fresh space. A gpid is given to at most one process, ever.
* ``BlockAllocator`` (node, synchronous): ranges in use order, the low-water rule, collection.
* ``GpidSource`` (node, asyncio): the allocator plus the one request in flight to the master.
* ``ProcTable`` (node): gpid <-> local process, and the exit statuses of ended ones, bounded.

Message bound: a node's first request asks for two blocks, each later one for one, sent when fewer
than one block is left; so a node that hands out ``k`` gpids sends at most ``max(1, ceil(k / block))``
requests and the master handles at most ``starts / block + nodes`` of them. A node whose reserve was
collected and that starts processes again pays at most one request more.
"""

from __future__ import annotations

import asyncio
import bisect
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from gproc.errors import GprocError

FIRST_GPID = 1
DEFAULT_BLOCK = 64
DEFAULT_GPID_MAX = 2**31 - 1
MAX_WANT = 4  # blocks one request may ask for


class NoGpidError(GprocError):
    """No gpid could be had: the space is exhausted or the master cannot be reached."""

    exit_status = 255


@dataclass
class PidConfig:
    """The master's settings for the gpid space."""

    block: int = DEFAULT_BLOCK  # gpids per block
    gpid_max: int = DEFAULT_GPID_MAX  # the largest gpid
    collect_every: float = 600.0  # seconds between collection rounds (0: only on demand or when low)
    keep: int = 8  # gpids a collected node keeps, so its next start does not wait

    def __post_init__(self) -> None:
        if self.block < 1:
            raise GprocError("gpid block size must be at least 1")
        if self.gpid_max < FIRST_GPID + self.block:
            raise GprocError("gpid space smaller than one block")
        if self.keep < 0:
            raise GprocError("keep must not be negative")


# ---- the master's block table ---------------------------------------------------------------------


class BlockTable:
    """Granted blocks ``(start, size, owner rank)``, the pool of collected ranges, the fresh frontier.

    Rows never overlap; every gpid below the frontier is either in one block or in the pool. All of it
    is in SQLite (the master's ``master.db``) and mirrored in memory for ``owner()`` lookups.
    """

    def __init__(self, db: sqlite3.Connection, cfg: PidConfig | None = None) -> None:
        self.db = db
        self.cfg = cfg or PidConfig()
        db.execute(
            "CREATE TABLE IF NOT EXISTS gpid_blocks"
            " (start INTEGER PRIMARY KEY, size INTEGER NOT NULL, owner INTEGER NOT NULL, granted REAL)"
        )
        db.execute("CREATE TABLE IF NOT EXISTS gpid_pool (start INTEGER PRIMARY KEY, size INTEGER NOT NULL)")
        db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
        self._starts: list[int] = []
        self._rows: dict[int, tuple[int, int]] = {}  # start -> (size, owner)
        for start, size, owner in db.execute("SELECT start, size, owner FROM gpid_blocks ORDER BY start"):
            self._starts.append(start)
            self._rows[start] = (size, owner)
        self.pool: list[tuple[int, int]] = []
        self._reload_pool()
        self.frontier = self._meta("gpid_next", FIRST_GPID)
        self.requests = self._meta("gpid_requests", 0)  # block requests handled, ever (across restarts)
        self.collected = self._meta("gpid_collected", 0)  # gpids returned by collection, ever

    def _meta(self, key: str, default: int) -> int:
        row = self.db.execute("SELECT v FROM meta WHERE k=?", (key,)).fetchone()
        return int(row[0]) if row else default

    def _set_meta(self, key: str, value: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def _begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    # -- granting --

    def free(self) -> int:
        """gpids that can still be granted (pool and fresh space)."""
        return sum(s for _, s in self.pool) + max(0, self.cfg.gpid_max + 1 - self.frontier)

    def grant(self, owner: int, want: int = 1, *, count: bool = True) -> list[tuple[int, int]]:
        """Grant ``want`` blocks' worth of gpids to ``owner``: pooled ranges first, then fresh space.

        Returns ``[(start, size), …]`` totalling ``want * block`` (less only when the space runs out;
        ``NoGpidError`` when nothing is left). Committed to SQLite before it returns. ``count``: a
        node's request (counted in ``requests``), not the master taking ids for its own jobs.
        """
        want = max(1, min(int(want), MAX_WANT))
        need = want * self.cfg.block
        out: list[tuple[int, int]] = []
        self._begin()
        try:
            if count:
                self.requests += 1
                self._set_meta("gpid_requests", self.requests)
            while need and self.pool:
                start, size = self.pool[0]
                take = min(size, need)
                self.db.execute("DELETE FROM gpid_pool WHERE start=?", (start,))
                if take < size:
                    self.pool[0] = (start + take, size - take)
                    self.db.execute("INSERT INTO gpid_pool VALUES (?, ?)", (start + take, size - take))
                else:
                    self.pool.pop(0)
                out.append((start, take))
                need -= take
            if need:
                take = min(need, self.cfg.gpid_max + 1 - self.frontier)
                if take > 0:
                    out.append((self.frontier, take))
                    self.frontier += take
                    self._set_meta("gpid_next", self.frontier)
            now = time.time()
            for start, size in out:
                self.db.execute("INSERT INTO gpid_blocks VALUES (?, ?, ?, ?)", (start, size, owner, now))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            self._reload_pool()
            self.frontier = self._meta("gpid_next", FIRST_GPID)
            self.requests = self._meta("gpid_requests", 0)
            raise
        for start, size in out:
            bisect.insort(self._starts, start)
            self._rows[start] = (size, owner)
        if not out:
            raise NoGpidError("the gpid space is exhausted")
        return out

    def _reload_pool(self) -> None:
        self.pool = [(int(s), int(n)) for s, n in self.db.execute("SELECT start, size FROM gpid_pool ORDER BY start")]

    # -- collection --

    def release(self, owner: int, start: int, end: int) -> bool:
        """Take back ``[start, end)``, the unused tail of a block ``owner`` holds. False if it is not."""
        row = self._row_at(start)
        if row is None or end <= start:
            return False
        bstart, bsize, bowner = row
        if bowner != owner or bstart + bsize != end:
            return False
        self._begin()
        try:
            if start == bstart:
                self.db.execute("DELETE FROM gpid_blocks WHERE start=?", (bstart,))
            else:
                self.db.execute("UPDATE gpid_blocks SET size=? WHERE start=?", (start - bstart, bstart))
            pool = self._pool_add(start, end - start)
            self.collected += end - start
            self._set_meta("gpid_collected", self.collected)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.pool = pool
        if start == bstart:
            del self._rows[bstart]
            self._starts.pop(bisect.bisect_left(self._starts, bstart))
        else:
            self._rows[bstart] = (start - bstart, bowner)
        return True

    def _pool_add(self, start: int, size: int) -> list[tuple[int, int]]:
        """Insert a range into the pool (SQL inside the caller's transaction), merging neighbours."""
        pool = list(self.pool)
        i = bisect.bisect_left(pool, (start, 0))
        end = start + size
        if i < len(pool) and pool[i][0] == end:  # merge with the next range
            end += pool[i][1]
            self.db.execute("DELETE FROM gpid_pool WHERE start=?", (pool[i][0],))
            pool.pop(i)
        if i > 0 and pool[i - 1][0] + pool[i - 1][1] == start:  # and with the previous one
            start = pool[i - 1][0]
            self.db.execute("DELETE FROM gpid_pool WHERE start=?", (start,))
            pool.pop(i - 1)
            i -= 1
        self.db.execute("INSERT INTO gpid_pool VALUES (?, ?)", (start, end - start))
        pool.insert(i, (start, end - start))
        return pool

    # -- lookups --

    def _row_at(self, gpid: int) -> tuple[int, int, int] | None:
        i = bisect.bisect_right(self._starts, gpid) - 1
        if i < 0:
            return None
        start = self._starts[i]
        size, owner = self._rows[start]
        return (start, size, owner) if gpid < start + size else None

    def owner(self, gpid: int) -> int | None:
        """The rank that numbered (or may number) ``gpid``; None if no block holds it."""
        row = self._row_at(gpid)
        return row[2] if row else None

    def blocks(self) -> Iterator[tuple[int, int, int]]:
        """Every granted block as ``(start, size, owner)``, in gpid order."""
        for s in self._starts:
            size, owner = self._rows[s]
            yield s, size, owner

    def stats(self) -> dict[str, Any]:
        return {
            "block": self.cfg.block,
            "gpid_max": self.cfg.gpid_max,
            "blocks": len(self._starts),
            "granted": sum(s for s, _ in self._rows.values()),
            "pool": sum(s for _, s in self.pool),
            "frontier": self.frontier,
            "free": self.free(),
            "requests": self.requests,
            "collected": self.collected,
        }


# ---- a node's allocator -----------------------------------------------------------------------------


class BlockAllocator:
    """A node's granted ranges, used in order. Synchronous; ``GpidSource`` adds the asking.

    The node holds its current range and about one spare block: when fewer than ``low`` gpids are
    left it wants more (two blocks when it has none, else one).
    """

    def __init__(self) -> None:
        self.ranges: list[list[int]] = []  # [next, end) each, in use order
        self.block = 0  # learnt from the first grant
        self.low = 0
        self.taken = 0  # gpids handed out, ever
        self.since_collect = 0  # handed out since the last collection round
        self.reserve = 0  # gpids in hand

    def take(self) -> int | None:
        """The next gpid, or None when the reserve is empty."""
        if not self.reserve:
            return None
        r = self.ranges[0]
        g = r[0]
        r[0] += 1
        if r[0] == r[1]:
            self.ranges.pop(0)
        self.reserve -= 1
        self.taken += 1
        self.since_collect += 1
        return g

    def want(self) -> int:
        """How many blocks to ask for now (0: enough in hand)."""
        if not self.block:
            return 2
        reserve = self.reserve
        if reserve >= self.low:
            return 0
        return max(1, min(MAX_WANT, (self.low + self.block - reserve) // self.block))

    def add(self, ranges: list[tuple[int, int]], block: int, low: int) -> None:
        """Ranges granted by the master, ``(start, size)`` each, used after those in hand."""
        self.block, self.low = block, max(1, min(low, block))
        for start, size in ranges:
            if size > 0:
                self.ranges.append([start, start + size])
                self.reserve += size

    def collect(self, keep: int) -> list[tuple[int, int]]:
        """Give back everything beyond the next ``keep`` gpids if nothing was handed out since the
        last round (the node is idle): returns the released ``[start, end)`` tails. Resets the round."""
        idle = self.since_collect == 0
        self.since_collect = 0
        if not idle:
            return []
        released: list[tuple[int, int]] = []
        kept: list[list[int]] = []
        for n, e in self.ranges:
            cut = min(e, n + keep)
            keep -= cut - n
            if cut > n:
                kept.append([n, cut])
            if cut < e:
                released.append((cut, e))
        self.ranges = kept
        self.reserve = sum(e - n for n, e in kept)
        return released

    def held(self) -> list[tuple[int, int]]:
        return [(n, e) for n, e in self.ranges]


Request = Callable[[int], Awaitable[dict[str, Any]]]
"""Asks the master for blocks: ``want`` -> ``{"r": [[start, size]…], "block": B, "low": L}``."""


class GpidSource:
    """A node's gpids as process starts need them: never waits while the reserve lasts, and keeps at
    most one request to the master in flight (``run`` is that request loop, owned by the node)."""

    def __init__(self, request: Request, attached: asyncio.Event, wait_limit: float = 30.0) -> None:
        self.alloc = BlockAllocator()
        self._request = request
        self._attached = attached
        self._need = asyncio.Event()
        self._need.set()  # the first blocks are fetched as soon as the node is attached
        self._changed = asyncio.Event()
        self.wait_limit = wait_limit
        self.requests = 0  # requests sent to the master
        self.failures = 0
        self.waited = 0  # starts that found the reserve empty and waited
        self.error = ""

    def take_nowait(self) -> int | None:
        a = self.alloc
        g = a.take()
        if a.reserve < a.low or not a.block:
            self._need.set()
        return g

    async def take(self) -> int:
        """A gpid for a process about to start; waits only when the reserve is empty."""
        g = self.take_nowait()
        if g is not None:
            return g
        self.waited += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_limit
        while True:
            changed = self._changed
            left = deadline - loop.time()
            if left <= 0:
                raise NoGpidError(f"no gpid available ({self.error or 'the master did not answer in time'})")
            try:
                async with asyncio.timeout(left):
                    await changed.wait()
            except TimeoutError:
                continue
            g = self.take_nowait()
            if g is not None:
                return g

    def collect(self, keep: int) -> list[tuple[int, int]]:
        released = self.alloc.collect(keep)
        if released:
            self._need.clear()  # idle: ask again only when a start needs it
        return released

    def _notify(self) -> None:
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    async def run(self) -> None:
        """The request loop: whenever the reserve is low and the node attached, ask for blocks."""
        delay = 0.1
        while True:
            await self._need.wait()
            await self._attached.wait()
            want = self.alloc.want()
            if not want:
                self._need.clear()
                continue
            try:
                self.requests += 1
                r = await self._request(want)
                ranges = [(int(s), int(n)) for s, n in r["r"]]
                self.alloc.add(ranges, int(r["block"]), int(r["low"]))
                self.error, delay = "", 0.1
            except asyncio.CancelledError:
                raise
            except (GprocError, TimeoutError, KeyError, TypeError, ValueError) as e:
                self.failures += 1
                self.error = str(e) or type(e).__name__
                self._notify()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self._notify()
            if not self.alloc.want():
                self._need.clear()


# ---- a node's processes --------------------------------------------------------------------------


@dataclass(slots=True)
class Proc:
    """A process in the space on this node."""

    gpid: int
    pid: int
    job: int
    parent: int  # gpid of the process that started it (0: started from outside the space)
    uid: int
    root: bool  # started by gproc (a job's process) rather than forked by one
    created: float = 0.0  # psutil create_time of forked processes (pid reuse check)
    exited: asyncio.Future[int] | None = None  # roots: their exit status
    argv: list[str] | None = None  # roots: the command as the user gave it


@dataclass(slots=True)
class Ended:
    gpid: int
    job: int
    status: int | None  # None: a forked process whose status only its parent saw
    uid: int


class ProcTable:
    """Live processes by gpid and pid; ended ones (for ``wait``) kept up to ``keep_ended``."""

    def __init__(self, keep_ended: int = 65536) -> None:
        self.live: dict[int, Proc] = {}
        self.by_pid: dict[int, int] = {}
        self.ended: OrderedDict[int, Ended] = OrderedDict()
        self.job_root: dict[int, int] = {}  # job -> gpid of its process here
        self.keep_ended = keep_ended

    def add(self, p: Proc) -> None:
        self.live[p.gpid] = p
        self.by_pid[p.pid] = p.gpid
        if p.root:
            self.job_root[p.job] = p.gpid

    def end(self, gpid: int, status: int | None) -> None:
        p = self.live.pop(gpid, None)
        if p is None:
            return
        if self.by_pid.get(p.pid) == gpid:
            del self.by_pid[p.pid]
        self.ended[gpid] = Ended(gpid, p.job, status, p.uid)
        while len(self.ended) > self.keep_ended:
            _, old = self.ended.popitem(last=False)
            if self.job_root.get(old.job) == old.gpid:
                del self.job_root[old.job]

    def status(self, gpid: int) -> Ended | None:
        return self.ended.get(gpid)

    def of_job(self, job: int) -> list[Proc]:
        return [p for p in self.live.values() if p.job == job]
