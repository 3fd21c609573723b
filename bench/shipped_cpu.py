"""Where a shipped launch's CPU goes: CPU of the worker processes, the master and the program starters
per launch of ``/bin/true`` on N local nodes, ``-localbin`` against shipped (gproc's default, files
cached), alternated in one cluster; user and system time of the processes and of their reaped children.

CPU seconds vary less than wall times on a shared machine; the extra CPU of a shipped job in the
worker and the starter is what the private view costs.

    python bench/shipped_cpu.py [--nodes 256] [--runs 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile

import results  # noqa: F401  (the benchmark environment: bytecode written)
from launch import api_launch

KINDS = (("worker", "gproc _worker"), ("master", "gproc m --socket {sock}"), ("starter", "spawnd.py"))


def cpu(sock: str) -> dict[str, list[float]]:
    """Per kind of process: [user, system, children's user, children's system] seconds so far."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for kind, pattern in KINDS:
        total = [0.0] * 4
        pids = subprocess.run(["pgrep", "-f", pattern.format(sock=sock)], capture_output=True, text=True).stdout
        for pid in pids.split():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            for i in range(4):
                total[i] += int(fields[11 + i]) / tick
        out[kind] = total
    return out


async def measure(sock: str, n: int, runs: int) -> None:
    from gproc.client import Cluster

    c = Cluster(sock)
    for localbin in (True, False, True, False):
        await api_launch(c, n, localbin=localbin)
        before = cpu(sock)
        times = [await api_launch(c, n, localbin=localbin) for _ in range(runs)]
        after = cpu(sock)
        per_run = {
            k: [round((a - b) / runs * 1000, 1) for a, b in zip(after[k], before[k], strict=True)] for k in after
        }
        label = "-localbin" if localbin else "shipped"
        wall = statistics.median(times) * 1e3
        print(f"{label:9} wall {wall:.0f} ms; CPU ms per launch [user, sys, children's user, sys]: {per_run}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--nodes", type=int, default=256)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    from gproc import local

    with tempfile.TemporaryDirectory(prefix="gproc-bench-") as tmp:
        sock = os.path.join(tmp, "sock")
        local.up(args.nodes, fanout=16, socket=sock)
        try:
            asyncio.run(measure(sock, args.nodes, args.runs))
        finally:
            local.down(sock, quiet=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
