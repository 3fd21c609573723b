"""``gproc web`` at scale: the tree page's first full render in headless chromium, and the bytes that
reach the master for one ``/metrics`` scrape, against the number of nodes.

For each N of ``--nodes`` a local cluster (``gproc.local.up(N, fanout)``) and a ``gproc web`` process:

* **/metrics**: one scrape (HTTP GET by aiohttp): its body in bytes, its wall time, and the bytes that
  reached the master for the same request (``Cluster.metrics()['bytes_in']``, the snapshot the scrape
  renders). Target: master bytes independent of N.
* **first full render** (for N in ``--render``): a fresh tab of headless chromium (the tests' DevTools
  driver) opens the page; the time from navigation start (``performance.now()`` in the page) until the
  tree summary says all N nodes are up, the page's first full answer from the server-sent events.
  Target <= 1 s at 1,024 nodes.
* **gproc top's cost on the daemons** (for N in ``--top``): the CPU time of the cluster's processes
  (master, workers and their children, from /proc) over ``--top-seconds`` idle, then over as long
  again while a client asks what ``gproc top`` asks every second (``metrics`` and ``proctop`` of every
  node). The difference per refresh, per node, and as a share of one core per 1,000 nodes. On a
  local cluster every node reads the same machine's /proc (proctop lists all its processes), so the
  per-node figure is what one real node would spend. Target: <= 1 % of a core per 1,000 nodes.

The report is printed and written into bench/RESULTS.md between the ``web`` markers.

    python bench/web.py [--nodes 64,256,1024] [--render 1024] [--top 1024] [--fanout 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime

import aiohttp
import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository: tests' drivers

from tests.cluster.test_watch import Chromium, Web, tab
from tests.conftest import LocalCluster, start_cluster, stop_cluster

from gproc import client, local
from launch import int_list
from results import machine, write_section


async def scrape(c: LocalCluster, base: str) -> tuple[int, float, int]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        t0 = time.perf_counter()
        async with s.get(base + "metrics") as r:
            body = await r.read()
            assert r.status == 200, body[:200]
        took = time.perf_counter() - t0
    snap = await client.Cluster(c.socket).metrics()
    return len(body), took, int(snap["bytes_in"])


async def render(browser: Chromium, url: str, n: int, shots: str) -> float:
    async with tab(browser, url, shots, f"tree-{n}") as t:
        done = f"document.getElementById('tree-summary').textContent.includes('{n} nodes up')"
        await t.wait_for(done, f"{n} nodes up", deadline=120)
        return float(await t.js("performance.now()")) / 1000


def cluster_cpu(c: LocalCluster) -> float:
    """CPU seconds used so far by the cluster's processes and their live children."""
    rec = local.UpRecord.load(c.socket)
    assert rec is not None, "no record of the local cluster"
    total = 0.0
    for pid, _ in rec.procs:
        try:
            p = psutil.Process(pid)
            for q in [p, *p.children(recursive=True)]:
                t = q.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            continue
    return total


async def top_cost(c: LocalCluster, seconds: float) -> tuple[float, float, int]:
    """(idle CPU s, CPU s while refreshing once a second as gproc top does, refreshes)."""
    k = client.Cluster(c.socket)
    await k.metrics()  # the first proctop on a node reads every process's start; not a refresh's cost
    await k.proctop(10)
    t0 = cluster_cpu(c)
    await asyncio.sleep(seconds)
    idle = cluster_cpu(c) - t0
    t0, refreshes = cluster_cpu(c), 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        tick = time.monotonic()
        await k.metrics()
        await k.proctop(10)
        refreshes += 1
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    return idle, cluster_cpu(c) - t0, refreshes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int_list, default=[64, 256, 1024])
    ap.add_argument("--render", type=int_list, default=[1024])
    ap.add_argument("--top", type=int_list, default=[], help="N at which to measure gproc top's cost")
    ap.add_argument("--top-seconds", type=float, default=20.0)
    ap.add_argument("--fanout", type=int, default=16)
    opts = ap.parse_args()
    rows = []
    tops: list[tuple[int, float, float, int]] = []
    for n in opts.nodes:
        c, d = start_cluster(n, opts.fanout)
        w = browser = None
        shots = tempfile.mkdtemp(prefix="gpt-shots-")
        try:
            w = Web(c)
            body, took, master = asyncio.run(scrape(c, w.base))
            first = top = None
            if n in opts.render:
                browser = Chromium()
                first = asyncio.run(render(browser, w.url, n, shots))
                browser.stop()
                browser = None
            if n in opts.top:
                top = asyncio.run(top_cost(c, opts.top_seconds))
        finally:
            if browser is not None:
                browser.stop()
            if w is not None:
                w.stop()
            stop_cluster(c, d)
        if not os.listdir(shots):
            shutil.rmtree(shots)
        rows.append((n, body, took, master, first))
        if top is not None:
            tops.append((n, *top))
        print(n, body, f"{took:.3f}", master, first, top, file=sys.stderr)
    cmd = "python bench/web.py " + " ".join(sys.argv[1:])
    text = (
        f"## gproc web: tree page render and /metrics bytes ({datetime.now(UTC):%Y-%m-%d})\n\n"
        f"`{cmd}` on {machine(load=True)}; local clusters, fanout {opts.fanout}.\n\n"
        "| N | /metrics body (B) | scrape (s) | bytes at the master | first full tree render (s) |\n"
        "|---|---|---|---|---|\n"
        + "".join(
            f"| {n} | {body} | {took:.3f} | {master} | {'-' if first is None else f'{first:.2f}'} |\n"
            for n, body, took, master, first in rows
        )
        + "\nbytes at the master: `Cluster.metrics()['bytes_in']` for the snapshot a scrape renders (each"
        " interior node reduces its subtree). Render: `performance.now()` in the page when the tree"
        " summary first says N nodes up (past 256 nodes the page shows counts per level).\n"
    )
    if tops:
        text += (
            f"\n`gproc top`'s cost on the daemons ({opts.top_seconds:g} s idle, then {opts.top_seconds:g} s"
            " refreshing once a second: `metrics` and `proctop` of every node, as `gproc top` asks):\n\n"
            "| N | CPU s idle | CPU s refreshing | refreshes | CPU ms per refresh | per node (ms) |"
            " % of a core per 1,000 nodes |\n|---|---|---|---|---|---|---|\n"
        )
        for n, idle, busy, k in tops:
            per = (busy - idle) / max(k, 1)
            text += (
                f"| {n} | {idle:.2f} | {busy:.2f} | {k} | {per * 1000:.0f} | {per * 1000 / n:.2f} |"
                f" {(busy - idle) / opts.top_seconds / (n / 1000) * 100:.1f} |\n"
            )
    print(text)
    print(f"written to {write_section('web', text)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
