"""Files benchmark: ``gproc cp`` against a parallel ``cp`` into the same per-node directories, and
``stat --agg sum`` against a no-op round trip.

For each N (a local cluster, ``gproc.local.up``, fanout 16) and each file size: a file of fresh random
bytes (no node has it in its store) copied to ``DIR/%h/f`` on every node with ``Cluster.group('**').cp``
(in-process API), and the same file copied into the same N directories by N ``cp`` processes started
at once (the floor on one machine: every byte written N times, no network). Medians of ``--runs``.
Then ``stat --agg sum`` of a file on every node: its time against ``Cluster.ping()`` and the reply bytes
at the master (one value per child link, whatever N).

pdcp and ``clush --copy`` need a remote shell to each node (pdcp has no ``exec`` module; clush's
``--copy`` over ``-R exec`` does not copy), so on a one-machine cluster they are not measured here.

    python bench/files.py [--nodes 16,64] [--sizes-mib 1,16] [--runs 3] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from gproc import local
from gproc.client import Cluster
from results import machine, publish


def parallel_cp(src: str, dests: list[str]) -> float:
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["cp", src, d]) for d in dests]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"cp failed: {p.args!r}")
    return time.perf_counter() - t0


async def gproc_cp(sock: str, src: str, dest: str) -> float:
    t0 = time.perf_counter()
    statuses = await Cluster(sock).group("**").cp([src], dest)
    dt = time.perf_counter() - t0
    bad = [s for s in statuses if s.status]
    if bad:
        raise SystemExit(f"gproc cp failed: {bad}")
    return dt


async def stat_vs_ping(sock: str, path: str, runs: int) -> tuple[float, float, int]:
    c = Cluster(sock)
    g = c.group("**")
    await g.stat(path, agg="sum")
    await c.ping()
    st, pg, rep = [], [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        (res,) = await g.stat(path, agg="sum")
        st.append(time.perf_counter() - t0)
        rep = res.rep_bytes
        t0 = time.perf_counter()
        await c.ping()
        pg.append(time.perf_counter() - t0)
    return statistics.median(st), statistics.median(pg), rep


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", default="16,64")
    ap.add_argument("--sizes-mib", default="1,16")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    rows = ["| N | size | gproc cp | parallel cp | gproc throughput / cp's |", "|---:|---:|---:|---:|---:|"]
    stat_rows = ["| N | stat --agg sum | ping | reply bytes at the master |", "|---:|---:|---:|---:|"]
    for n in [int(x) for x in a.nodes.split(",")]:
        work = tempfile.mkdtemp(prefix="gbf-", dir="/tmp")
        rec = local.up(n, fanout=16, socket=os.path.join(work, "g"))
        try:
            dirs = [os.path.join(work, "d", f"node{i}") for i in range(n)]
            for d in dirs:
                os.makedirs(d)
            for size in [int(x) for x in a.sizes_mib.split(",")]:
                g_times, c_times = [], []
                for run in range(a.runs):
                    src = os.path.join(work, f"src{size}-{run}")
                    with open(src, "wb") as f:
                        f.write(os.urandom(size << 20))
                    g_times.append(asyncio.run(gproc_cp(rec.socket, src, os.path.join(work, "d", "%h", f"g{run}"))))
                    c_times.append(parallel_cp(src, [os.path.join(d, f"c{run}") for d in dirs]))
                    for d in dirs:
                        for name in (f"g{run}", f"c{run}"):
                            os.unlink(os.path.join(d, name))
                    os.unlink(src)
                g, c = statistics.median(g_times), statistics.median(c_times)
                rows.append(f"| {n} | {size} MiB | {g * 1000:.0f} ms | {c * 1000:.0f} ms | {c / g:.2f} |")
                print(rows[-1], flush=True)
            target = os.path.join(work, "d", "%h", "s")
            for i, d in enumerate(dirs):
                with open(os.path.join(d, "s"), "wb") as f:
                    f.write(b"x" * i)
            s, p, rep = asyncio.run(stat_vs_ping(rec.socket, target, max(a.runs, 5)))
            stat_rows.append(f"| {n} | {s * 1000:.1f} ms | {p * 1000:.1f} ms ({s / p:.2f} x) | {rep} |")
            print(stat_rows[-1], flush=True)
        finally:
            local.down(rec.socket, quiet=True)
            shutil.rmtree(work, ignore_errors=True)
    cmd = "python bench/files.py " + " ".join(sys.argv[1:])
    text = "\n".join(
        [f"`{cmd}` on {machine(load=True)}", "", *rows, "", *stat_rows, "",
         "pdcp and clush --copy need a remote shell per node: not measured on a one-machine cluster."]
    )  # fmt: skip
    publish("files", text, write=not a.no_write)


if __name__ == "__main__":
    main()
