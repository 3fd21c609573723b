"""The gpid block table, a node's allocator and its request loop (pure logic, no cluster).

Property tests drive the master's ``BlockTable`` and nodes' ``BlockAllocator`` through random grants,
allocations, collections and master restarts (the SQLite file closed and opened again) and check
that no gpid is ever given to two processes and that the table routes every gpid to its node.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import sqlite3
import tempfile
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gproc.errors import GprocError
from gproc.pids import BlockAllocator, BlockTable, GpidSource, NoGpidError, PidConfig, ProcTable
from gproc.psview import cpu_time, forest, table


def open_table(path: str, cfg: PidConfig) -> tuple[sqlite3.Connection, BlockTable]:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")  # the model commits thousands of grants; durability is not tested here
    return db, BlockTable(db, cfg)


class Cluster:
    """A model: one master table and nodes that allocate as process starts would."""

    def __init__(self, path: str, cfg: PidConfig, nodes: int) -> None:
        self.path, self.cfg = path, cfg
        self.db, self.table = open_table(path, cfg)
        self.nodes = {r: BlockAllocator() for r in range(1, nodes + 1)}
        self.messages = {r: 0 for r in self.nodes}
        self.taken = {r: 0 for r in self.nodes}
        self.assigned: dict[int, int] = {}  # gpid -> rank that gave it to a process

    def refill(self, rank: int) -> None:
        a = self.nodes[rank]
        want = a.want()
        if want:
            self.messages[rank] += 1
            a.add(self.table.grant(rank, want), self.cfg.block, self.cfg.block)

    def start(self, rank: int, n: int) -> None:
        a = self.nodes[rank]
        for _ in range(n):
            if not a.reserve:
                self.refill(rank)  # only after a collection that kept nothing: this start waits
            g = a.take()
            assert g is not None
            self.refill(rank)  # as GpidSource: asked right after a take leaves the reserve low
            assert g not in self.assigned, f"gpid {g} given twice"
            self.assigned[g] = rank
            self.taken[rank] += 1

    def collect(self, rank: int, keep: int) -> None:
        for start, end in self.nodes[rank].collect(keep):
            assert self.table.release(rank, start, end)

    def restart(self) -> None:
        self.db.close()
        self.db, self.table = open_table(self.path, self.cfg)

    def check(self) -> None:
        for g, rank in self.assigned.items():
            assert self.table.owner(g) == rank, f"gpid {g} routes to {self.table.owner(g)}, not {rank}"
        rows = list(self.table.blocks())
        for (s1, n1, _), (s2, _, _) in itertools.pairwise(rows):
            assert s1 + n1 <= s2, "blocks overlap"
        pool = self.table.pool
        for s, n in pool:
            assert self.table.owner(s) is None and self.table.owner(s + n - 1) is None, "pooled range is granted"
            assert s + n <= self.table.frontier
        for (s1, n1), (s2, _) in itertools.pairwise(pool):
            assert s1 + n1 < s2, "pool ranges overlap or were not merged"
        for rank, a in self.nodes.items():
            for n, e in a.held():
                assert self.table.owner(n) == rank and self.table.owner(e - 1) == rank, "a node holds gpids not its own"


ops = st.lists(
    st.one_of(
        st.tuples(st.just("start"), st.integers(1, 4), st.integers(0, 300)),
        st.tuples(st.just("collect"), st.integers(1, 4), st.integers(0, 20)),
        st.tuples(st.just("restart"), st.just(0), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, block=st.sampled_from([1, 3, 16, 64]))
def test_no_gpid_twice_across_grants_collections_and_restarts(ops: list[tuple[str, int, int]], block: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        c = Cluster(os.path.join(d, "m.db"), PidConfig(block=block), 4)
        for kind, rank, n in ops:
            if kind == "start":
                c.start(rank, n)
            elif kind == "collect":
                c.collect(rank, n)
            else:
                c.restart()
            c.check()
        c.restart()
        c.check()
        c.db.close()


@settings(max_examples=100, deadline=None)
@given(counts=st.lists(st.integers(0, 700), min_size=1, max_size=8), block=st.sampled_from([1, 7, 64, 256]))
def test_messages_at_most_starts_over_block_plus_nodes(counts: list[int], block: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        c = Cluster(os.path.join(d, "m.db"), PidConfig(block=block), len(counts))
        for rank, k in enumerate(counts, 1):
            c.refill(rank)  # the first request, when the node attaches
            c.start(rank, k)
            assert c.messages[rank] <= max(1, math.ceil(k / block))
        assert sum(c.messages.values()) <= sum(counts) / block + len(counts)
        assert c.table.requests == sum(c.messages.values())
        c.db.close()


def test_collection_gives_back_tails_and_regrants_them_first(tmp_path: Any) -> None:
    c = Cluster(str(tmp_path / "m.db"), PidConfig(block=10), 2)
    c.refill(1)
    c.refill(2)
    assert c.nodes[1].held() == [(1, 21)] and c.nodes[2].held() == [(21, 41)]
    c.start(1, 3)
    c.collect(1, 2)  # not idle: it started processes since the last round
    assert c.nodes[1].held() == [(4, 21)]
    c.collect(1, 2)  # idle now: keeps 2, gives back the rest
    assert c.nodes[1].held() == [(4, 6)] and c.table.pool == [(6, 15)]
    assert c.table.owner(3) == 1 and c.table.owner(6) is None and c.table.collected == 15
    c.start(2, 25)  # node 2 runs out of its first grant and is given the pooled range first
    assert c.table.owner(6) == 2
    c.restart()
    c.check()
    assert c.table.stats()["collected"] == 15
    c.db.close()


def test_release_refuses_what_the_node_does_not_hold(tmp_path: Any) -> None:
    db, t = open_table(str(tmp_path / "m.db"), PidConfig(block=10))
    ((start, size),) = t.grant(5, 1)
    assert not t.release(6, start + 5, start + size)  # another node's block
    assert not t.release(5, start + 5, start + size - 1)  # not the block's tail
    assert not t.release(5, 10_000, 10_010)  # nothing granted there
    assert t.release(5, start + 5, start + size)
    assert not t.release(5, start + 5, start + size)  # twice
    db.close()


def test_exhausted_space(tmp_path: Any) -> None:
    db, t = open_table(str(tmp_path / "m.db"), PidConfig(block=10, gpid_max=25))
    assert t.grant(1, 2) == [(1, 20)]
    assert t.grant(2, 1) == [(21, 5)]  # what is left
    with pytest.raises(NoGpidError):
        t.grant(3, 1)
    assert t.release(1, 11, 21)
    assert t.grant(3, 1) == [(11, 10)]
    db.close()


def test_bad_config() -> None:
    with pytest.raises(GprocError):
        PidConfig(block=0)
    with pytest.raises(GprocError):
        PidConfig(block=64, gpid_max=10)


def test_allocator_keeps_order_and_wants() -> None:
    a = BlockAllocator()
    assert a.want() == 2 and a.take() is None
    a.add([(100, 3), (200, 2)], block=4, low=4)
    assert [a.take() for _ in range(5)] == [100, 101, 102, 200, 201]
    assert a.take() is None and a.want() == 2
    a.add([(300, 4)], 4, 4)
    assert a.want() == 0
    a.take()
    assert a.want() == 1


def test_source_never_waits_while_the_master_answers() -> None:
    """Starts never wait: the request goes out at the low-water mark, a block ahead."""

    async def go() -> None:
        attached = asyncio.Event()
        attached.set()
        granted = iter(range(1, 10**6, 8))
        asked: list[int] = []

        async def request(want: int) -> dict[str, Any]:
            asked.append(want)
            await asyncio.sleep(0)  # one hop of latency
            return {"r": [[next(granted), 8] for _ in range(want)], "block": 8, "low": 8}

        src = GpidSource(request, attached)
        runner = asyncio.ensure_future(src.run())
        try:
            while src.alloc.reserve == 0:
                await asyncio.sleep(0)
            got = []
            for _ in range(1000):
                got.append(await src.take())
                await asyncio.sleep(0)  # a start yields to the loop
            assert src.waited == 0
            assert len(set(got)) == 1000
            assert asked[0] == 2 and set(asked[1:]) == {1}
            assert len(asked) <= 1000 / 8 + 1
        finally:
            runner.cancel()

    asyncio.run(go())


def test_source_waits_then_fails_without_a_master() -> None:
    async def go() -> None:
        attached = asyncio.Event()

        async def request(want: int) -> dict[str, Any]:
            raise AssertionError("never attached: never asked")

        src = GpidSource(request, attached, wait_limit=0.05)
        runner = asyncio.ensure_future(src.run())
        try:
            with pytest.raises(NoGpidError):
                await src.take()
            assert src.waited == 1
        finally:
            runner.cancel()

    asyncio.run(go())


def test_source_retries_after_a_failed_request() -> None:
    async def go() -> None:
        attached = asyncio.Event()
        attached.set()
        calls = 0

        async def request(want: int) -> dict[str, Any]:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise GprocError("lost the parent")
            return {"r": [[1, 4 * want]], "block": 4, "low": 4}

        src = GpidSource(request, attached)
        runner = asyncio.ensure_future(src.run())
        try:
            assert await src.take() == 1
            assert src.failures == 1
        finally:
            runner.cancel()

    asyncio.run(go())


def test_collected_source_asks_again_only_when_used() -> None:
    async def go() -> None:
        attached = asyncio.Event()
        attached.set()
        asked: list[int] = []

        async def request(want: int) -> dict[str, Any]:
            asked.append(want)
            base = 1 + 100 * len(asked)
            return {"r": [[base, 4 * want]], "block": 4, "low": 4}

        src = GpidSource(request, attached)
        runner = asyncio.ensure_future(src.run())
        try:
            await src.take()
            for _ in range(5):
                await asyncio.sleep(0)
            src.collect(0)  # a round: not idle yet
            assert src.collect(1) == [(103, 109)]
            for _ in range(5):
                await asyncio.sleep(0)
            assert asked == [2]  # idle after collection: no request
            assert await src.take() == 102
            for _ in range(5):
                await asyncio.sleep(0)
            assert asked == [2, 2]
        finally:
            runner.cancel()

    asyncio.run(go())


def test_proc_table_bounds_ended() -> None:
    from gproc.pids import Proc

    t = ProcTable(keep_ended=3)
    for g in range(1, 6):
        t.add(Proc(g, 1000 + g, job=g, parent=0, uid=0, root=True))
        t.end(g, g)
    assert list(t.ended) == [3, 4, 5] and t.status(5) is not None and t.status(5).status == 5  # type: ignore[union-attr]
    assert t.status(1) is None and 1 not in t.job_root and t.job_root[5] == 5
    assert not t.live and not t.by_pid


def test_forest_crosses_nodes_and_survives_cycles() -> None:
    def row(g: int, parent: int, name: str = "n0") -> dict[str, Any]:
        return {"gpid": g, "parent_gpid": parent, "name": name, "pid": g, "user": "u", "stat": "S", "cpu": 0.0,
                "rss": 1, "time": 61.0, "job": 1, "cmd": f"c{g}"}  # fmt: skip

    rows = [row(5, 0), row(9, 5, "n1"), row(7, 5), row(8, 9, "n2"), row(20, 21), row(21, 20), row(30, 99)]
    out = forest(rows)
    assert [(r["gpid"], r["depth"]) for r in out] == [(5, 0), (7, 1), (9, 1), (8, 2), (30, 0), (20, 0), (21, 1)]
    text = table(out, with_forest=True)
    assert text.splitlines()[0].split() == ["GPID", "NAME", "PID", "USER", "STAT", "%CPU", "RSS", "TIME", "JOB", "CMD"]
    assert " \\_ c9" in text and "     \\_ c8" in text and "1:01" in text
    assert cpu_time(3725) == "1:02:05"
