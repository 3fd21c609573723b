"""Process-space benchmark: what gpids cost a process start, master messages, and how fast kill acts.

Measured in one run, on this machine:

* **gpid cost per start.** (a) The bookkeeping a node adds to each start, timed alone: take a gpid
  from the allocator, the two environment variables, the entry in the process table, and the exit
  callback (table update, session probe), on a real ``ProcService``; against (b) a start itself:
  ``platform.spawn('/bin/true')`` (the exec service's vfork + pidfd path) and its exit. The ratio
  a/b is the overhead (target <= 1 %). (c) The same spawns with and without the bookkeeping,
  interleaved in batches, as a check that the difference is lost in the noise of a spawn.
* **Master messages per 10,000 starts.** A local cluster (``--nodes``, fanout 8) runs
  ``gproc e '**' /bin/true`` through the API until 10,000 processes have started; the master's
  persisted count of block requests before and after gives the messages (expected about
  10,000 / block, plus up to one per node), for each ``--blocks`` size.
* **kill taking effect.** One gpid (``sleep 600`` on a leaf of the 64-node cluster): the time for
  ``Cluster.kill`` to return (the owner node has sent the signal) and for the job's exit status to
  reach the client; a whole job of ``--kill-nodes`` nodes (``sleep 600`` everywhere, 1,024 by
  default): ``Cluster.kill(job=…)`` returning once every node has signalled, and the last of the
  exit statuses arriving.

The report is printed and written into bench/RESULTS.md between the ``pids`` markers (other
sections are kept).

    python bench/pids.py [--nodes 64] [--blocks 64,256] [--kill-nodes 1024] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform as pyplatform
import resource
import shlex
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from gproc import local, platform
from gproc.client import Cluster, Output, Status
from gproc.services.procs import ProcService
from launch import int_list
from results import machine, write_section

TARGET_OVERHEAD = 0.01
STARTS = 10_000


# ---- gpid cost per start ---------------------------------------------------------------------------


def fake_node() -> Any:
    """Just enough of a Node for a ProcService: attached, with a master that grants big blocks."""
    node = SimpleNamespace(
        handlers={}, registered=asyncio.Event(), is_master=False, rank=1,
        cfg=SimpleNamespace(name="bench", socket=None), spawn=asyncio.ensure_future,
    )  # fmt: skip
    node.registered.set()
    nxt = [1]

    async def call_up(fn: str, args: dict[str, Any], timeout: float = 15.0) -> Any:
        start = nxt[0]
        nxt[0] += 64 * args["want"]
        return {"r": [[start, 64 * args["want"]]], "block": 64, "low": 64}

    node.call_up = call_up
    return node


class FakeProc:
    """What ``ProcService.started`` needs of a platform.Process."""

    def __init__(self, pid: int, loop: asyncio.AbstractEventLoop) -> None:
        self.pid = pid
        self.exited: asyncio.Future[int] = loop.create_future()


def cpu_now() -> float:
    """CPU seconds used so far by this process and its waited-for children (immune to a busy machine)."""
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


async def bookkeeping(n: int, hooks: bool = True) -> tuple[float, float]:
    """(CPU, wall) seconds per start of the gpid work alone, on a real ProcService: a loop of stand-in
    processes (a future each, resolved as an exit would be) with the gpid hooks, less the same loop
    without them."""
    procs = ProcService(fake_node())
    runner = asyncio.ensure_future(procs.gpids.run())
    loop = asyncio.get_running_loop()
    pid = os.getpgrp()  # a group that exists: the exit callback's probe finds it (signal 0 sends nothing)
    try:
        await procs.allocate()
        c0, w0 = cpu_now(), time.perf_counter()
        for i in range(n):
            p = FakeProc(pid, loop)
            if hooks:
                g = await procs.allocate()
                procs.job_env(g, 0)
                procs.started(g, p, 1, 0, 0)  # type: ignore[arg-type]
            p.exited.set_result(0)
            if i % 1000 == 999:
                await asyncio.sleep(0)  # the exit callbacks run (each exit is a loop turn of its own anyway)
                procs.sessions.clear()
        await asyncio.sleep(0)
        c1, w1 = cpu_now(), time.perf_counter()
        assert not procs.table.live
        return (c1 - c0) / n, (w1 - w0) / n
    finally:
        runner.cancel()


async def gpid_work(n: int) -> tuple[float, float]:
    with_hooks = await bookkeeping(n)
    without = await bookkeeping(n, hooks=False)
    return with_hooks[0] - without[0], with_hooks[1] - without[1]


async def spawns(n: int, with_gpids: bool, procs: ProcService) -> tuple[float, float]:
    """(CPU, wall) seconds per start of ``n`` sequential spawns of /bin/true, waited for."""
    env = dict(os.environ)
    spawner = platform.Spawner()  # as the exec service starts a -localbin program
    c0, w0 = cpu_now(), time.perf_counter()
    for _ in range(n):
        if with_gpids:
            g = await procs.allocate()
            p = platform.spawn(["/bin/true"], cwd=None, env={**env, **procs.job_env(g, 0)}, spawner=spawner)
            procs.started(g, p, 1, os.getuid(), 0)
        else:
            p = platform.spawn(["/bin/true"], cwd=None, env={**env}, spawner=spawner)
        await p.exited
        p.close_pipes()
    return (cpu_now() - c0) / n, (time.perf_counter() - w0) / n


async def start_cost(runs: int) -> dict[str, float]:
    book = [await gpid_work(20_000) for _ in range(runs)]
    procs = ProcService(fake_node())
    runner = asyncio.ensure_future(procs.gpids.run())
    try:
        plain: list[tuple[float, float]] = []
        gp: list[tuple[float, float]] = []
        await spawns(50, True, procs)
        for i in range(max(runs, 5) * 4):  # interleaved batches, alternating which goes first
            first = i % 2 == 0
            a = await spawns(100, first, procs)
            b = await spawns(100, not first, procs)
            (gp if first else plain).append(a)
            (plain if first else gp).append(b)
    finally:
        runner.cancel()

    def med(xs: list[tuple[float, float]], i: int) -> float:
        return statistics.median(x[i] for x in xs)

    return {
        "book_cpu": med(book, 0), "book_wall": med(book, 1), "plain_cpu": med(plain, 0), "plain_wall": med(plain, 1),
        "gpids_cpu": med(gp, 0), "gpids_wall": med(gp, 1),
    }  # fmt: skip


# ---- master messages per 10,000 starts ----------------------------------------------------------------


async def run_until(c: Cluster, n_nodes: int, starts: int) -> int:
    done = 0
    while done < starts:
        job = await c.exec(["/bin/true"], "**")
        ok = sum(ev.count for ev in [e async for e in job] if isinstance(ev, Status) and ev.status == 0)
        if ok != n_nodes:
            raise RuntimeError(f"exec on {n_nodes} nodes: {ok} succeeded")
        done += ok
    return done


def messages(n_nodes: int, block: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gproc-bench-") as tmp:
        sock = os.path.join(tmp, "sock")
        try:
            local.up(n_nodes, fanout=8, socket=sock, gpid_block=block)

            async def go() -> dict[str, Any]:
                c = Cluster(sock)
                while (await c.gpids())["requests"] < n_nodes:  # every node's first request (at attach) done
                    await asyncio.sleep(0.1)
                before = (await c.gpids())["requests"]
                t0 = time.perf_counter()
                done = await run_until(c, n_nodes, STARTS)
                dt = time.perf_counter() - t0
                after = await c.gpids(nodes_stats=True)
                waited = sum(r["waited"] * r["count"] for r in after["nodes"])
                return {"block": block, "starts": done, "initial": before, "during": after["requests"] - before,
                        "seconds": dt, "waited": waited}  # fmt: skip

            return asyncio.run(go())
        finally:
            local.down(sock, quiet=True)


# ---- kill ------------------------------------------------------------------------------------------------


async def timed(aw: Any) -> tuple[Any, float]:
    """The result of ``aw`` and the perf_counter time at which it arrived."""
    r = await aw
    return r, time.perf_counter()


async def kill_one(c: Cluster, node: str, runs: int) -> tuple[float, float]:
    sent: list[float] = []
    took: list[float] = []
    for _ in range(runs + 1):
        job = await c.exec(["sh", "-c", "echo $GPROC_GPID; exec sleep 600"], include=node)
        it = job.events()
        gpid = 0
        seen: list[Any] = []
        async for ev in it:
            seen.append(ev)
            if isinstance(ev, Output):
                gpid = int(ev.data)
                break
        if not gpid:
            raise RuntimeError(f"no gpid from {node}: {seen}")
        t0 = time.perf_counter()
        kill = asyncio.ensure_future(timed(c.kill([gpid], sig=9)))
        async for ev in it:
            if isinstance(ev, Status):
                assert ev.status == 137, ev
        t2 = time.perf_counter()
        r, t1 = await kill
        assert r["results"][0]["code"] == 0, r
        sent.append(t1 - t0)
        took.append(t2 - t0)
    return statistics.median(sent[1:]), statistics.median(took[1:])


async def kill_job(c: Cluster, n: int, runs: int) -> tuple[float, float]:
    sent: list[float] = []
    seen: list[float] = []
    for _ in range(runs):
        job = await c.exec(["sh", "-c", "echo up; exec sleep 600"], "**")
        it = job.events()
        up = 0
        other: list[Any] = []
        async for ev in it:
            if isinstance(ev, Output):
                up += ev.count
                if up == n:
                    break
            else:
                other.append(ev)
        if up != n:
            raise RuntimeError(f"job {job.id}: {up} of {n} processes started; {other}")
        t0 = time.perf_counter()
        kill = asyncio.ensure_future(timed(c.kill(job=job.id, sig=9)))
        killed = 0
        async for ev in it:
            if isinstance(ev, Status):
                assert ev.status == 137, ev
                killed += ev.count
        t2 = time.perf_counter()
        r, t1 = await kill
        assert r["signalled"] == n and killed == n, (r, killed)
        sent.append(t1 - t0)
        seen.append(t2 - t0)
    return statistics.median(sent), statistics.median(seen)


def kills(n_small: int, n_big: int, runs: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="gproc-bench-") as tmp:
        sock = os.path.join(tmp, "sock")
        try:
            local.up(n_small, fanout=8, socket=sock)
            out["one_sent"], out["one_seen"] = asyncio.run(kill_one(Cluster(sock), f"node{n_small - 1}", runs))
        finally:
            local.down(sock, quiet=True)
    with tempfile.TemporaryDirectory(prefix="gproc-bench-") as tmp:
        sock = os.path.join(tmp, "sock")
        try:
            t0 = time.perf_counter()
            local.up(n_big, fanout=32, socket=sock)
            out["up"] = time.perf_counter() - t0
            out["job_sent"], out["job_seen"] = asyncio.run(kill_job(Cluster(sock), n_big, max(3, runs // 2)))
        finally:
            local.down(sock, quiet=True)
    return out


# ---- report ------------------------------------------------------------------------------------------


def us(s: float) -> str:
    return f"{s * 1e6:.1f}"


def ms(s: float) -> str:
    return f"{s * 1000:.1f}" if s < 1 else f"{s * 1000:.0f}"


def report(cost: dict[str, float], msgs: list[dict[str, Any]], k: dict[str, float], meta: dict[str, Any]) -> str:
    overhead = cost["book_cpu"] / cost["plain_cpu"]
    wall = cost["book_wall"] / cost["plain_wall"]
    out = [
        "## Process space: gpid cost, master messages, kill",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}  ",
        f"Machine: {meta['machine']}  ",
        f"gproc on Python {pyplatform.python_version()}; medians of {meta['runs']} runs unless said.",
        "",
        "**gpid cost per process start** (target <= 1 %). Bookkeeping: what a node adds to each start"
        " (a gpid from the allocator, `GPROC_GPID`/`GPROC_PARENT_GPID`, the process-table entry, the exit"
        " callback), timed alone over 20,000 starts on a real `ProcService`. Start: `platform.spawn('/bin/true')`"
        " (the exec service's vfork + pidfd path) and its exit, sequentially, batches of 100 with and without"
        " gpids interleaved. CPU: this process's CPU time plus its children's (what a start costs the node,"
        " whatever else runs on the machine); wall: elapsed time.",
        "",
        "| | bookkeeping per start | start without gpids | bookkeeping / start | start with gpids | difference |",
        "|---|---:|---:|---:|---:|---:|",
        f"| CPU (µs) | {us(cost['book_cpu'])} | {us(cost['plain_cpu'])} | {overhead * 100:.2f} % |"
        f" {us(cost['gpids_cpu'])} | {(cost['gpids_cpu'] / cost['plain_cpu'] - 1) * 100:+.1f} % |",
        f"| wall (µs) | {us(cost['book_wall'])} | {us(cost['plain_wall'])} | {wall * 100:.2f} % |"
        f" {us(cost['gpids_wall'])} | {(cost['gpids_wall'] / cost['plain_wall'] - 1) * 100:+.1f} % |",
        "",
        f"Overhead {overhead * 100:.2f} % of a start's CPU ({wall * 100:.2f} % of its wall time) —"
        f" {'met' if overhead <= TARGET_OVERHEAD else '**not met**'}. The last column compares the interleaved"
        " spawns directly: spawn-time noise on a shared machine, which can have either sign.",
        "",
        f"**Master messages per {STARTS:,} starts**: real `gproc e '**' /bin/true` jobs on a local cluster of"
        f" {meta['nodes']} nodes (fanout 8) until {STARTS:,} processes started; block requests the master"
        ' handled (its persisted counter). "at up": each node\'s first request (two blocks) when it attached.',
        "",
        "| block | nodes | starts | first requests (at attach, 2 blocks each) | requests during the starts"
        " | total | bound starts/block + nodes | starts that waited for a block | starts/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in msgs:
        total = m["initial"] + m["during"]
        bound = m["starts"] / m["block"] + meta["nodes"]
        out.append(
            f"| {m['block']} | {meta['nodes']} | {m['starts']} | {m['initial']} | {m['during']} | {total}"
            f" | {bound:.0f} | {m['waited']} | {m['starts'] / m['seconds']:.0f} |"
        )
    out += [
        "",
        f"**kill taking effect.** One gpid: `sleep 600` on node{meta['nodes'] - 1} (a leaf of the {meta['nodes']}-node"
        " tree), `Cluster.kill([gpid], 9)`; a job: `sleep 600` on every node of a"
        f" {meta['kill_nodes']}-node cluster (fanout 32, up in {k['up']:.0f} s), `Cluster.kill(job=J, sig=9)`."
        ' "signalled": the kill request returned (every node has sent the signal; for a job this includes'
        " each node's scan for processes outside the job's group, made after the group was signalled);"
        ' "exit seen": the last exit status (137) reached the client through the tree, read while the kill'
        " request runs.",
        "",
        "| what | signalled (ms) | exit seen (ms) |",
        "|---|---:|---:|",
        f"| 1 gpid | {ms(k['one_sent'])} | {ms(k['one_seen'])} |",
        f"| job on {meta['kill_nodes']} nodes | {ms(k['job_sent'])} | {ms(k['job_seen'])} |",
    ]
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--nodes", type=int, default=64, help="nodes for the messages and single kill (default 64)")
    ap.add_argument("--blocks", type=int_list, default=[64, 256], help="block sizes (default 64,256)")
    ap.add_argument("--kill-nodes", type=int, default=1024, help="nodes of the job killed at once (default 1024)")
    ap.add_argument("--runs", type=int, default=5, help="repetitions (>= 1)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = ap.parse_args()
    meta = {
        "command": shlex.join(["python", "bench/pids.py", *sys.argv[1:]]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(load=True),
        "runs": args.runs,
        "nodes": args.nodes,
        "kill_nodes": args.kill_nodes,
    }
    t0 = time.perf_counter()
    print("gpid cost per start …", file=sys.stderr, flush=True)
    cost = platform.run(start_cost(args.runs))
    msgs = []
    for b in args.blocks:
        print(f"messages, block {b} …", file=sys.stderr, flush=True)
        msgs.append(messages(args.nodes, b))
    print("kill …", file=sys.stderr, flush=True)
    k = kills(args.nodes, args.kill_nodes, args.runs)
    print(f"done in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    text = report(cost, msgs, k, meta)
    print(text)
    if not args.no_write:
        print(f"written to {write_section('pids', text)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
