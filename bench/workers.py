"""Before and after: how many OS processes host a local cluster's nodes (``gproc.local.workers``).

Every program a node daemon starts is forked from the process hosting that node, and the child copies
then closes all of that process's descriptors (~3.5 per node it hosts): the more nodes share a
process, the dearer each start. This starts the same local cluster with each ``--procs`` value in
turn, alternating (``--rounds`` times), and times ``/bin/true`` with ``-localbin`` on every node
(``Cluster.exec``, medians of ``--runs`` after a warm-up) and the no-op round trip, so that the
settings are compared under the same machine load. The spawn floor (N x ``posix_spawn``) is taken
before each cluster too.

    python bench/workers.py [--n 10000] [--fanout 32] [--procs 4,16] [--rounds 2] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

from launch import Load, api_launch, api_ping, gproc_source, int_list, machine_busy_seconds, spawn_floor
from results import machine, publish


async def measure(sock: str, n: int, runs: int, pings: int) -> tuple[float, float, float]:
    """Medians of the launches and no-ops, and the machine's CPU per launch."""
    from gproc.client import Cluster

    c = Cluster(sock, timeout=600)
    await api_launch(c, n)
    launches, cpus = [], []
    for _ in range(runs):
        c0 = machine_busy_seconds()
        launches.append(await api_launch(c, n))
        cpus.append(machine_busy_seconds() - c0)
    await api_ping(c, n)
    ping = statistics.median([(await api_ping(c, n))[0] for _ in range(pings)])
    return statistics.median(launches), ping, statistics.median(cpus)


def one(
    n: int, fanout: int, procs: int | None, runs: int, pings: int, starter_above: int | None = None
) -> dict[str, float]:
    """Start the cluster, measure (floor, up, launch, no-op, other load, machine CPU per launch), stop it."""
    from gproc import local

    floor = statistics.median(spawn_floor(n) for _ in range(3))
    load = Load()
    with tempfile.TemporaryDirectory(prefix="gproc-workers-") as tmp:
        sock = os.path.join(tmp, "sock")
        t0 = time.perf_counter()
        try:
            local.up(
                n, fanout=fanout, socket=sock, procs=procs, timeout=max(120.0, n / 50), starter_above=starter_above
            )
            up = time.perf_counter() - t0
            launch, ping, cpu = asyncio.run(measure(sock, n, runs, pings))
        finally:
            local.down(sock, quiet=True)
    return {"floor": floor, "up": up, "launch": launch, "ping": ping, "other": load.other(), "cpu": cpu}


def medians(got: dict[Any, list[dict[str, float]]]) -> dict[Any, dict[str, float]]:
    """Per setting, the median of each figure over that setting's starts (``one``'s dicts)."""
    return {key: {f: statistics.median(x[f] for x in rs) for f in rs[0]} for key, rs in got.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--fanout", type=int, default=32)
    ap.add_argument("--procs", type=int_list, default=[4, 16], help="process counts to compare (default 4,16)")
    ap.add_argument("--rounds", type=int, default=2, help="times each setting is started, alternating")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pings", type=int, default=10)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from gproc.local import workers

    got: dict[int, list[dict[str, float]]] = {p: [] for p in args.procs}
    for r in range(args.rounds):
        for p in args.procs:
            res = one(args.n, args.fanout, p, args.runs, args.pings)
            print(f"round {r + 1}: procs={p} " + " ".join(f"{k}={v:.3f}" for k, v in res.items()), flush=True)
            got[p].append(res)
    default = workers(args.n, args.fanout)
    out = [
        f"## Worker processes of a local cluster: N = {args.n:,}, fanout {args.fanout}",
        "",
        f"Command: `{shlex.join(['python', 'bench/workers.py', *sys.argv[1:]])}`  ",
        f"Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}  ",
        f"Machine: {machine()}  ",
        f"gproc: {gproc_source()}  ",
        f"Each setting started {args.rounds} times, alternating; per start the median of {args.runs} launches"
        f" of `/bin/true` with `-localbin` on every node and of {args.pings} no-op round trips; the table"
        " gives the median over the starts. floor: N x `posix_spawn` from one process, just before each start."
        f" `gproc.local.workers` chooses {default} here.",
        "",
        "| processes | nodes per process | up (s) | launch (s) | launch / floor | no-op (ms) | other load |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    med = medians(got)
    for p, m in med.items():
        out.append(
            f"| {p}{' (default)' if p == default else ''} | {args.n / p:,.0f} | {m['up']:.1f} | {m['launch']:.2f}"
            f" | {m['launch'] / m['floor']:.2f} | {m['ping'] * 1000:.0f} | {m['other']:.0%} |"
        )
    first, last = args.procs[0], args.procs[-1]
    out += [
        "",
        f"{last} processes against {first}: launch {med[first]['launch'] / med[last]['launch']:.2f}x faster,"
        f" no-op {med[first]['ping'] / med[last]['ping']:.2f}x.",
        "",
    ]
    publish("workers", "\n".join(out), write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
