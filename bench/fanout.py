"""Fan-out and scale benchmark: launch, no-op and wire-up against the tree's fanout, up to 10,000 nodes.

For each N (default 1024 and 10000) and fanout (default 4, 8, 16, 32, 64) it starts a local cluster
(``gproc.local.up(N, fanout=K)``) and measures:

* ``up``: from the call until every node is registered (tree wire-up, TLS handshakes included);
* memory: resident set of the node daemon processes (and of their starters) after the launches,
  beyond what an idle daemon process costs, per node (the ``serve_many`` processes host many nodes
  each; the baseline is one such process before any node starts in it, measured here);
* launch: ``Cluster.exec(['/bin/true'], '**', localbin=True)`` iterated to its end, every one of the
  N exit statuses counted; and shipped (gproc's default, the program already in every store);
* no-op: ``Cluster.ping()`` round trip through the whole tree;
* bytes at the master for one job whose output is identical on every node (``echo``): TCP payload
  received from its children (TLS included, from TCP_INFO) and frame bytes; and how many output
  records reached the client (1 = merged into one record).

Medians of ``--runs`` after a warm-up (pings: ``--pings``). Results go to ``bench/fanout.json`` (read
by ``bench/model``) and into bench/RESULTS.md between the ``fanout`` markers.

    python bench/fanout.py [--sizes 1024,10000] [--fanouts 4,8,16,32,64] [--runs 3] [--pings 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

import psutil

from launch import Load, api_launch, api_ping, gproc_source, int_list
from results import machine, publish

HERE = Path(__file__).resolve().parent
JSON = HERE / "fanout.json"
TLS_RECORD_OVERHEAD = 22  # TLS 1.3 record: 5 header + 16 AEAD tag + 1 content type
SHIP_FANOUT = 32  # above 2,048 nodes the shipped launch is measured at this fanout only


@dataclass
class Point:
    n: int
    fanout: int
    depth: int
    up_s: float
    kib_per_node: float  # resident memory per node daemon beyond the processes' baseline
    launch_s: float  # -localbin
    launch_ship_s: float | None  # measured at N <= 2048, and at the default fanout above
    noop_s: float
    noop_master_s: float
    master_bytes: int | None  # TCP payload the master received for one identical-output job
    master_frame_bytes: int
    records: int  # output records the client got for identical output on every node
    ok: int  # exit statuses 0 counted in the last launch
    other: float  # share of the CPU other processes used meanwhile
    procs: int = 0  # node processes of the cluster (0: not recorded, runs before gproc.local.workers)
    starts: int = 1  # clusters started for this point; the figures above are medians over them
    launch_all: list[float] | None = None  # each start's launch (its median of --runs)
    noop_all: list[float] | None = None  # each start's no-op (its median of --pings)
    reply_bytes: int | None = None  # the identical-output job's own reply frames at the master, TLS included


def combine(runs: list[Point]) -> Point:
    """One point from several starts of the same cluster: medians (exit statuses: the fewest counted)."""
    if len(runs) == 1:
        return runs[0]

    def med(name: str) -> Any:
        vals = [getattr(r, name) for r in runs if getattr(r, name) is not None]
        return statistics.median(vals) if vals else None

    first = runs[0]
    return Point(
        first.n, first.fanout, first.depth, round(med("up_s"), 2), round(med("kib_per_node"), 1), med("launch_s"),
        med("launch_ship_s"), med("noop_s"), med("noop_master_s"), med("master_bytes"), med("master_frame_bytes"),
        max(r.records for r in runs), min(r.ok for r in runs), round(med("other"), 3), first.procs, len(runs),
        [r.launch_s for r in runs], [r.noop_s for r in runs], med("reply_bytes"),
    )  # fmt: skip


def depth_of(n: int, fanout: int) -> int:
    from gproc.local import layout

    parents = layout(n, fanout)
    depth = [0] * n
    for i, p in enumerate(parents):
        depth[i] = 1 if p < 0 else depth[p] + 1
    return max(depth)


def idle_daemon_rss() -> int:
    """Resident bytes of a Python process that imported the node daemon and runs an idle event loop:
    what a ``serve_many`` process costs before it hosts any node."""
    code = (
        "import sys, asyncio, gproc.daemon, gproc.overlay, gproc.platform\n"
        "async def main():\n"
        "    print('ready', flush=True); await asyncio.sleep(30)\n"
        "gproc.platform.run(main())\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        p.stdout.readline()
        time.sleep(0.3)
        return int(psutil.Process(p.pid).memory_info().rss)
    finally:
        p.kill()
        p.wait()


async def identical_output(sock: str, n: int) -> tuple[int | None, int, int, int | None]:
    """(TCP bytes, frame bytes, records at the client, reply bytes) for one gathered ``echo`` on every
    node. The first two count everything the master's links received meanwhile, heartbeat pongs too
    (at 1,024 nodes one 34 B pong per link in most jobs); the last the job's own reply frames (the
    job store's ``rep_bytes``) with one TLS record each."""
    from gproc.client import Cluster, Output

    c = Cluster(sock)
    argv = ["echo", "the same line on every node"]
    await c.run(argv, "**", localbin=True, gather=True)  # warm-up
    before = await c.stats()
    job = await c.exec(argv, "**", localbin=True, gather=True)
    records = sum(1 for ev in [e async for e in job] if isinstance(ev, Output))
    after = await c.stats()
    tcp = None if after["wire_in"] is None else after["wire_in"] - before["wire_in"]
    row = next((r for r in await c.jobs() if r.get("id") == job.id), None)
    reply = None
    if row is not None and row.get("rep_frames"):
        reply = int(row["rep_bytes"]) + TLS_RECORD_OVERHEAD * int(row["rep_frames"])
    return tcp, after["bytes_in"] - before["bytes_in"], records, reply


class Timings(TypedDict):
    """Medians of one start: launch (-localbin), launch shipped (None: not measured), no-op, its master part."""

    launch: float
    ship: float | None
    ping: float
    ping_master: float


async def in_process(sock: str, n: int, runs: int, pings: int, ship: bool) -> Timings:
    from gproc.client import Cluster

    c = Cluster(sock, timeout=600)
    await api_launch(c, n)
    launch = statistics.median([await api_launch(c, n) for _ in range(runs)])
    shipped = None
    if ship:
        await api_launch(c, n, localbin=False)
        shipped = statistics.median([await api_launch(c, n, localbin=False) for _ in range(runs)])
    await api_ping(c, n)
    got = [await api_ping(c, n) for _ in range(pings)]
    return Timings(
        launch=launch,
        ship=shipped,
        ping=statistics.median(g[0] for g in got),
        ping_master=statistics.median(g[1] for g in got),
    )


def measure(n: int, fanout: int, runs: int, pings: int, baseline: int, ship: bool, procs: int | None) -> Point:
    from gproc import local

    load = Load()
    with tempfile.TemporaryDirectory(prefix="gproc-fanout-") as tmp:
        sock = os.path.join(tmp, "sock")
        t0 = time.perf_counter()
        try:
            rec = local.up(n, fanout=fanout, socket=sock, timeout=max(120.0, n / 50), procs=procs)
            up = time.perf_counter() - t0
            workers = [psutil.Process(pid) for pid, _ in rec.procs[1:]]
            r = asyncio.run(in_process(sock, n, runs, pings, ship))
            # after the launches: each worker holding many descriptors has its starter by then
            # (platform.Starter, a child process), whose memory counts with its nodes
            starters = [c for w in workers for c in w.children() if any("gproc_spawnd" in a for a in c.cmdline())]
            rss = sum(w.memory_info().rss for w in workers + starters)
            kib = (rss - baseline * len(workers)) / n / 1024
            tcp, frames, records, reply = asyncio.run(identical_output(sock, n))
        finally:
            local.down(sock, quiet=True)
    return Point(
        n, fanout, depth_of(n, fanout), round(up, 2), round(kib, 1), r["launch"], r["ship"], r["ping"],
        r["ping_master"], tcp, frames, records, n, round(load.other(), 3), len(workers),
        reply_bytes=reply,
    )  # fmt: skip


def each(values: list[float] | None, scale: float, fmt: str) -> str:
    """' (a, b, c)': every start's figure, when there were several."""
    if not values or len(values) < 2:
        return ""
    return " (" + ", ".join(fmt.format(v * scale) for v in values) + ")"


def report(points: list[Point], meta: dict[str, str]) -> str:
    out = [
        "## Fan-out and scale: local clusters up to 10,000 nodes",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}  ",
        f"Machine: {meta['machine']}  ",
        f"gproc: {meta['source']}  ",
        f"Medians of {meta['runs']} runs after a warm-up (pings: {meta['pings']}), and over {meta['starts']} starts"
        " of each cluster (launch and no-op: every start's in brackets); times in seconds. All nodes of"
        " a row run on this machine's 2 cores (many node daemons per OS process, each with its own TLS links),"
        " so a launch's time is mostly CPU shared by all nodes, unlike on a real cluster. up: `local.up` until"
        " every node is registered. KiB/node: resident memory of the node processes beyond an idle daemon"
        f" process ({meta['baseline']} MiB each), per node. launch: `/bin/true` with `localbin=True` on every"
        " node, all N exit statuses counted; shipped: the default mode (program cached). master bytes: TCP"
        " payload the master received for one `echo` with identical output everywhere (`-b`), and the output"
        " records the client got for it; reply bytes: that job's own reply frames at the master (the job"
        " store's rep_bytes, one TLS record each), without the heartbeats that arrived meanwhile.",
        "",
        "| N | fanout | depth | procs | up | KiB/node | launch | shipped | no-op | no-op in master"
        " | master bytes (TCP) | frame bytes | reply bytes | records | other load |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        ship = "" if p.launch_ship_s is None else f"{p.launch_ship_s:.2f}"
        out.append(
            f"| {p.n} | {p.fanout} | {p.depth} | {p.procs or '?'} | {p.up_s:.1f} | {p.kib_per_node:.0f}"
            f" | {p.launch_s:.2f}{each(p.launch_all, 1, '{:.2f}')}"
            f" | {ship} | {p.noop_s * 1000:.0f} ms{each(p.noop_all, 1000, '{:.0f}')} | {p.noop_master_s * 1000:.0f} ms"
            f" | {p.master_bytes if p.master_bytes is not None else '?'} | {p.master_frame_bytes}"
            f" | {p.reply_bytes if p.reply_bytes is not None else '?'} | {p.records}"
            f" | {p.other:.0%} |"
        )
    out.append("")
    for n in sorted({p.n for p in points}):
        rows = [p for p in points if p.n == n]
        best_l = min(rows, key=lambda p: p.launch_s)
        best_p = min(rows, key=lambda p: p.noop_s)
        out.append(
            f"- N = {n}: fastest launch at fanout {best_l.fanout} with {best_l.procs} processes"
            f" ({best_l.launch_s:.2f} s), fastest no-op at fanout {best_p.fanout} with {best_p.procs} processes"
            f" ({best_p.noop_s * 1000:.0f} ms)."
        )
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--sizes", type=int_list, default=[1024, 10000])
    ap.add_argument("--fanouts", type=int_list, default=[4, 8, 16, 32, 64])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--starts", type=int, default=1, help="clusters started per point (medians over them; shipped: first only)"
    )
    ap.add_argument("--pings", type=int, default=10)
    ap.add_argument("--procs", type=int, help="node processes per cluster (default: gproc.local.workers' choice)")
    ap.add_argument("--no-ship", action="store_true", help="measure only -localbin launches, not shipped ones")
    ap.add_argument("--no-write", action="store_true", help="print only; leave fanout.json and RESULTS.md alone")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    baseline = idle_daemon_rss()
    meta = {
        "command": shlex.join(["python", "bench/fanout.py", *sys.argv[1:]]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "source": gproc_source(),
        "runs": str(args.runs),
        "pings": str(args.pings),
        "starts": str(args.starts),
        "baseline": f"{baseline / 2**20:.1f}",
    }
    from gproc.local import workers

    def procs_of(n: int, f: int) -> int:
        return min(args.procs, f, n) if args.procs else workers(n, f)

    measured = {(n, f, procs_of(n, f)) for n in args.sizes for f in args.fanouts}
    old = json.loads(JSON.read_text()).get("points", []) if JSON.exists() and not args.no_write else []
    points = [Point(**q) for q in old if (q["n"], q["fanout"], q.get("procs", 0)) not in measured]  # kept
    for n in args.sizes:
        for f in args.fanouts:
            print(f"N={n} fanout={f} procs={procs_of(n, f)} …", file=sys.stderr, flush=True)
            # the first shipped launch moves ~2 MB to every node: minutes at 10,000 nodes on 2 cores
            ship = not args.no_ship and (n <= 2048 or f == SHIP_FANOUT)
            starts = []
            for i in range(args.starts):  # the shipped launch on the first start only: minutes at 10,000 nodes
                starts.append(measure(n, f, args.runs, args.pings, baseline, ship and i == 0, procs_of(n, f)))
                print(json.dumps(asdict(starts[-1])), file=sys.stderr, flush=True)
            p = combine(starts)
            points.append(p)
            points.sort(key=lambda q: (q.n, q.fanout, q.procs))
            if not args.no_write:  # keep what was measured so far
                JSON.write_text(json.dumps({**meta, "points": [asdict(q) for q in points]}, indent=1) + "\n")
    publish("fanout", report(points, meta), write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
