"""``gproc stack`` benchmark: the time to read and merge the stacks of a 1,024-process job, and the
bytes that reach the master as the number of processes grows with the same few call paths.

A local cluster of ``--nodes`` nodes (fanout 8) runs a small C program compiled here: on each node it
forks into ``K`` processes (``K`` = processes / nodes), and each waits in ``pause()`` under one of
``P`` functions ``f0…f{P-1}`` chosen by its place in the job (contiguous blocks), so the job has
exactly ``P`` distinct call paths whatever its size. For each size (64, 256, 1,024 processes with
``P`` = 2; 1,024 with ``P`` = 8) the benchmark measures:

* the time of ``Cluster.stack(job=…)`` (every process unwound on its node, by libdw in the daemon
  unless ``GPROC_NO_LIBDW`` is set for the cluster, then by eu-stack; the stacks
  merged in the tree, the answer at the client), the median of ``--runs``, and once the whole
  ``gproc stack %JOB`` command (Python's start included);
* ``bytes_in``: the reply bytes that reached the master, the same reducer value however many
  processes share the paths;
* as a reference for the unwinder's own share, ``eu-stack`` alone on every process of the job, as
  many at a time as the machine has cores, with symbol names and without (``-q``, what gproc runs
  on each process where libdw cannot be loaded, before naming the places from a per-node table).

    python bench/stack.py [--nodes 64] [--sizes 64,256,1024] [--runs 3] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import psutil

from gproc import local
from gproc.client import Cluster
from results import machine, publish

TARGET = 2.0  # seconds for 1,024 processes

PROGRAM = r"""
#include <stdlib.h>
#include <unistd.h>
#define F(n) __attribute__((noinline)) void f##n(void) { pause(); }
F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7)
static void (*const fs[])(void) = {f0, f1, f2, f3, f4, f5, f6, f7};
int main(int argc, char **argv) {
    int k = atoi(argv[1]), paths = atoi(argv[2]), nodes = atoi(argv[3]);
    int rank = atoi(getenv("GPROC_RANK") ? getenv("GPROC_RANK") : "0"), i = 0;
    while (i + 1 < k && fork() > 0) i++;  /* the parent stays i = k-1 ... the children 0, 1, ... */
    long place = (long)(rank % nodes) * k + i, total = (long)nodes * k;
    fs[place * paths / total]();
    return 0;
}
"""


def leftovers(exe: str) -> None:
    """Kill (by pid) what is left of the program compiled here: processes a job forked outlive their
    job when the tree could not reach them to end it."""
    for p in psutil.process_iter(["pid", "exe"]):
        if p.info["exe"] == exe:
            with contextlib.suppress(psutil.Error):
                p.kill()


def compile_program(d: str) -> str:
    src, exe = os.path.join(d, "waits.c"), os.path.join(d, "waits")
    with open(src, "w") as f:
        f.write(PROGRAM)
    subprocess.run(["gcc", "-O0", "-o", exe, src], check=True)
    return exe


async def wait_asleep(c: Cluster, job: int, n: int, timeout: float = 300.0) -> list[int]:
    """Until ``n`` processes of ``job`` sleep (state S) in the process space: their pids."""
    deadline = time.monotonic() + timeout
    while True:
        rows, _ = await c.ps()
        pids = [r["pid"] for r in rows if r["job"] == job and r["stat"] == "S" and "waits" in r["cmd"]]
        print(f"job {job}: {len(pids)} of {n} processes waiting", file=sys.stderr)
        if len(pids) >= n:
            return pids
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job}: fewer than {n} processes waiting after {timeout:g} s")
        await asyncio.sleep(2.0)


async def wait_up(c: Cluster, timeout: float = 120.0) -> None:
    """Until every node answers a ping (on a saturated machine nodes miss heartbeats and rejoin)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = (await c.ping())["counts"]
        if set(counts) == {"ok"}:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nodes still not all up after {timeout:g} s: {counts}")
        print(f"waiting for the nodes: {counts}", file=sys.stderr)
        await asyncio.sleep(1.0)


def eu_stack_alone(pids: list[int], workers: int, *flags: str) -> float:
    """Seconds for eu-stack run on every pid, ``workers`` at a time (the unwinder's own cost)."""

    def one(pid: int) -> None:
        subprocess.run(["eu-stack", *flags, "-p", str(pid)], capture_output=True, check=False)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, pids))
    return time.perf_counter() - t0


async def one_size(sock: str, exe: str, nodes: int, procs: int, paths: int, runs: int) -> dict[str, Any]:
    c = Cluster(sock, timeout=120)
    k = procs // nodes
    await wait_up(c)
    names = [n["name"] for n in (await c.info())["nodes"]]
    job = await c.exec([exe, str(k), str(paths), str(nodes)], include=",".join(names), localbin=True)
    try:
        jid = job.id
        pids = await wait_asleep(c, jid, procs)
        times, answers = [], []
        for _ in range(runs):
            await wait_up(c)
            t0 = time.perf_counter()
            r = await c.stack(job=jid)
            times.append(time.perf_counter() - t0)
            answers.append(r)
        env = {**os.environ, "GPROC_MASTER": sock}
        await wait_up(c)
        t0 = time.perf_counter()
        cli = subprocess.run([sys.executable, "-m", "gproc", "stack", f"%{jid}"], capture_output=True, env=env)
        cli_s = time.perf_counter() - t0
        alone = eu_stack_alone(pids, os.cpu_count() or 1, "-m")
        quick = eu_stack_alone(pids, os.cpu_count() or 1, "-q", "-b", "-m")
        last = answers[-1]
        return {
            "procs": procs,
            "nodes": nodes,
            "paths": paths,
            "seen": last["processes"],
            "classes": len(last["classes"]),
            "errors": last["errors"],
            "time": statistics.median(times),
            "times": times,
            "cli": cli_s,
            "cli_ok": cli.returncode == 0,
            "bytes": [a["bytes_in"] for a in answers],
            "eu_stack": alone,
            "eu_quick": quick,
        }
    finally:
        await c.kill(job=job.id, sig=9)
        async for _ in job:
            pass


def report(rows: list[dict[str, Any]], cmd: str) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        f"## gproc stack ({when})",
        "",
        f"`{cmd}` on {machine(load=True)}.",
        "",
        "| processes | nodes | call paths | read | classes | `Cluster.stack`: median (min-max) | `gproc stack` command | bytes at the master | eu-stack alone, every process, a core each | the same with `-q` (no names) |",  # noqa: E501
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    cores = os.cpu_count() or 1
    for r in rows:
        out.append(
            f"| {r['procs']} | {r['nodes']} | {r['paths']} | {r['seen']} | {r['classes']} "
            f"| {r['time']:.2f} s ({min(r['times']):.2f}-{max(r['times']):.2f}) "
            f"| {r['cli']:.2f} s{'' if r['cli_ok'] else ' (failed)'} | {r['bytes'][-1]} "
            f"| {r['eu_stack']:.2f} s | {r['eu_quick']:.2f} s |"
        )
    big = [r for r in rows if r["procs"] >= 1024]
    if big:
        r = big[0]
        met = r["time"] <= TARGET and r["seen"] == r["procs"] and not r["errors"]
        verdict = ("met" if met else "not met") + ("" if r["seen"] == r["procs"] else ", not every process read")
        out += [
            "",
            f"1,024 processes: {r['time']:.2f} s against the {TARGET:g} s target "
            f"({verdict} on this machine). eu-stack alone, run on the same "
            f"processes {cores} at a time, takes {r['eu_stack']:.2f} s, or {r['eu_quick']:.2f} s without naming "
            "symbols: gproc reads each process with libdw inside its node daemon (no process start) and names "
            f"each node's places once. Here all 1,024 processes share {cores} cores; on a cluster each node "
            "reads only its own.",
        ]
    same = [r for r in rows if r["paths"] == rows[0]["paths"]]
    if len(same) > 1:
        out.append(
            f"Bytes at the master with {same[0]['paths']} paths: "
            + ", ".join(f"{r['bytes'][-1]} for {r['procs']} processes" for r in same)
            + "; with more paths: "
            + ", ".join(f"{r['bytes'][-1]} for {r['paths']} paths" for r in rows if r["paths"] != same[0]["paths"])
            + "."
        )
    errs = [e for r in rows for e in r["errors"]]
    if errs:
        out.append(f"Unwinding errors: {json.dumps(errs)[:400]}")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=64)
    ap.add_argument("--sizes", default="64,256,1024")
    ap.add_argument("--paths", type=int, default=2)
    ap.add_argument("--more-paths", type=int, default=8, help="a last run at the largest size with this many paths")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    if not shutil.which("gcc") or not shutil.which("eu-stack"):
        sys.exit("bench/stack.py needs gcc and eu-stack")
    sizes = [int(x) for x in a.sizes.split(",")]
    d = tempfile.mkdtemp(prefix="gpb-stack-", dir="/tmp")
    sock = os.path.join(d, "g")
    try:
        exe = compile_program(d)
        # 4 node processes, and a lenient liveness: on a shared 2-core machine a node process busy with a
        # scan of 2,000 processes misses heartbeats, and a node declared dead rejoins only later
        local.up(a.nodes, fanout=8, socket=sock, procs=4, heartbeat=2.0, dead_after=20.0)
        try:
            plan = [(n, a.paths) for n in sizes] + ([(sizes[-1], a.more_paths)] if a.more_paths else [])
            rows = [asyncio.run(one_size(sock, exe, a.nodes, n, p, a.runs)) for n, p in plan]
        finally:
            local.down(sock, quiet=True)
    finally:
        leftovers(os.path.join(d, "waits"))
        shutil.rmtree(d, ignore_errors=True)
    cmd = "python bench/stack.py " + " ".join(sys.argv[1:])
    publish("stack", report(rows, cmd.strip()), write=not a.no_write)


if __name__ == "__main__":
    main()
