"""Merge benchmark: bytes the master receives for a job's output, against N, and stdin streaming.

On one local cluster of the largest N (fanout 32, ``gproc.local.up``), for each N it runs on
``node[0-N-1]`` (the first N nodes of a local cluster form exactly the tree of an N-node cluster:
levels fill in the same order) each of these outputs:

* ``identical``: ``echo`` of the same line on every node;
* ``date``: ``date`` (nearly identical: the seconds differ between nodes that start apart);
* ``uname``: a ``uname -a`` line with the node's name in it (nearly identical, one spot differs);
* ``hostname``: the node's name (all distinct; the local nodes share one host, so ``$GPROC_NAME``
  stands for ``hostname``).

and reports, as the median of ``--runs``: the reply frames and their payload bytes (frames as gproc
reads them), the bytes **on the wire** (TCP payload received by the master, from the kernel's
``TCP_INFO``: TLS records with their headers and tags; IP/TCP headers not counted), and the ratio to
**unmerged**: what the master would receive if every node sent its own reply (its lines and status,
one frame) over its own TLS link, computed exactly from the job's output. Heartbeats are set 30 s
apart so that only the job's traffic is counted. With ``--compare-edits`` a second cluster with
near-identical-line edits turned off gives the wire bytes without them.

``--stdin-mib M`` streams M MiB of stdin to ``wc -c`` on 16 nodes (fanout 4) and reports the time and
the peak RSS growth of every daemon process.

    python bench/merge.py [--sizes 32,64,128,256,512,1024] [--runs 3] [--compare-edits] [--stdin-mib 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgpack
import psutil
from ClusterShell.NodeSet import NodeSet

from gproc import local
from gproc.client import Cluster, Output, Status
from results import machine, write_section

TLS_RECORD = 22  # TLS 1.3 AES-GCM: 5-byte header + content type + 16-byte tag per record (one per frame)
FANOUT = 32

WORKLOADS: dict[str, list[str]] = {
    "identical": ["echo", "the same line on every node, merged into one record"],
    "date": ["date"],
    "uname": ["sh", "-c", 'echo "$(uname -s) $GPROC_NAME $(uname -r) $(uname -v) $(uname -m) GNU/Linux"'],
    "hostname": ["sh", "-c", "echo $GPROC_NAME"],
}


@dataclass
class Run:
    frames: int
    payload: int
    wire: int
    other_frames: int  # frames that were not this job's replies (should be 0)
    unmerged: int
    records: int  # output records the client got


def unmerged_bytes(events: list[Any], job: int) -> int:
    """Wire bytes if each node sent its own reply (lines + status in one frame) straight to the master."""
    per_node: dict[str, list[list[Any]]] = {}
    lineno: dict[tuple[str, str], int] = {}
    for ev in events:
        for name in NodeSet(ev.nodes):
            if isinstance(ev, Output):
                stream = 1 if ev.stream == "stdout" else 2
                key = ["o", stream, ev.lineno, ev.data]
                lineno[(name, ev.stream)] = ev.lineno
            else:
                assert isinstance(ev, Status)
                key = ["s", ev.status, ev.error]
            per_node.setdefault(name, []).append(key)
    total = 0
    for i, keys in enumerate(per_node.values()):
        rank = i + 1
        msg = {"t": "rep", "op": job, "g": [[k, [rank, rank]] for k in keys], "end": True}
        total += 4 + len(msgpack.packb(msg, use_bin_type=True)) + TLS_RECORD
    return total


async def measure(sock: str, argv: list[str], n: int) -> Run:
    c = Cluster(sock)
    before = await c.stats()
    job = await c.exec(argv, None, include=f"node[0-{n - 1}]")
    events = [ev async for ev in job]
    after = await c.stats()
    row = next(r for r in await c.jobs() if r["id"] == job.id)
    frames = after["frames_in"] - before["frames_in"]
    return Run(
        frames=row["rep_frames"],
        payload=row["rep_bytes"],
        wire=after["wire_in"] - before["wire_in"],
        other_frames=frames - row["rep_frames"],
        unmerged=unmerged_bytes(events, job.id),
        records=sum(1 for e in events if isinstance(e, Output)),
    )


def median_run(runs: list[Run]) -> Run:
    runs = sorted(runs, key=lambda r: r.wire)
    return runs[len(runs) // 2]


def bench_cluster(sizes: list[int], runs: int, config: dict[str, Any], names: list[str]) -> dict[tuple[str, int], Run]:
    d = tempfile.mkdtemp(prefix="gpb-", dir="/tmp")
    sock = os.path.join(d, "g")
    out: dict[tuple[str, int], Run] = {}
    try:
        t0 = time.perf_counter()
        local.up(max(sizes), fanout=FANOUT, socket=sock, heartbeat=30.0, node_config=config)
        print(f"  {max(sizes)} nodes up in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
        for name in names:
            for n in sizes:
                asyncio.run(measure(sock, WORKLOADS[name], n))  # warm-up
                out[(name, n)] = median_run([asyncio.run(measure(sock, WORKLOADS[name], n)) for _ in range(runs)])
                r = out[(name, n)]
                print(f"  {name:9} N={n:5}: {r.frames} frames, {r.wire} B on the wire", file=sys.stderr, flush=True)
    finally:
        local.down(sock, quiet=True)
        shutil.rmtree(d, ignore_errors=True)
    return out


def bench_stdin(mib: int) -> dict[str, Any]:
    """``mib`` MiB of stdin to ``wc -c`` on 16 nodes: seconds, and peak RSS growth per daemon process."""
    d = tempfile.mkdtemp(prefix="gpb-", dir="/tmp")
    sock = os.path.join(d, "g")
    try:
        rec = local.up(16, fanout=4, socket=sock)
        procs = [psutil.Process(pid) for pid, _ in rec.procs]
        base = [p.memory_info().rss for p in procs]
        peak = list(base)
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                for i, p in enumerate(procs):
                    try:
                        peak[i] = max(peak[i], p.memory_info().rss)
                    except psutil.Error:
                        pass
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        t0 = time.perf_counter()
        try:
            src = subprocess.Popen(["head", "-c", f"{mib}M", "/dev/zero"], stdout=subprocess.PIPE)
            env = {**os.environ, "GPROC_MASTER": sock}
            r = subprocess.run(
                [sys.executable, "-m", "gproc", "e", "-b", "**", "wc", "-c"],
                stdin=src.stdout,
                capture_output=True,
                text=True,
                env=env,
            )
            src.wait()
        finally:
            done.set()
            sampler.join()
        secs = time.perf_counter() - t0
        ok = r.returncode == 0 and str(mib * 2**20) in r.stdout and "node[0-15] (16)" in r.stdout
        return {
            "mib": mib,
            "seconds": secs,
            "ok": ok,
            "growth": [(p - b) / 2**20 for b, p in zip(base, peak, strict=True)],
            "base": [b / 2**20 for b in base],
        }
    finally:
        local.down(sock, quiet=True)
        shutil.rmtree(d, ignore_errors=True)


def report(
    sizes: list[int],
    res: dict[tuple[str, int], Run],
    no_edits: dict[tuple[str, int], Run],
    stdin: dict[str, Any] | None,
    meta: dict[str, str],
) -> str:
    lines = [
        "## Merging in the tree: bytes the master receives (bench/merge.py)",
        "",
        f"`{meta['command']}` — {meta['date']}, {meta['machine']}, Python {meta['python']}.",
        f"One local cluster of {max(sizes)} nodes, fanout {FANOUT}; each N runs on `node[0-N-1]` (the tree of an",
        "N-node cluster); median of the runs by wire bytes. *frames*, *payload*: the job's reply frames and",
        "their bytes as read by the master; *wire*: TCP payload the master received during the job (TLS records,",
        "from TCP_INFO); *unmerged*: wire bytes if every node sent its own reply over its own link (computed from",
        "the job's output); *records*: output records the client got.",
        "",
    ]
    head = "| output | N | frames | payload B | wire B | unmerged B | wire/unmerged | records |"
    sep = "|---|---:|---:|---:|---:|---:|---:|---:|"
    if no_edits:
        head += " wire B without edits |"
        sep += "---:|"
    lines += [head, sep]
    for name in WORKLOADS:
        for n in sizes:
            r = res.get((name, n))
            if r is None:
                continue
            row = (
                f"| {name} | {n} | {r.frames} | {r.payload} | {r.wire} | {r.unmerged} |"
                f" {r.wire / r.unmerged:.3f} | {r.records} |"
            )
            if no_edits:
                ne = no_edits.get((name, n))
                row += f" {ne.wire if ne else ''} |"
            lines.append(row)
    lines.append("")
    ident = {n: res[("identical", n)] for n in sizes if ("identical", n) in res}
    if 32 in ident and 512 in ident:
        a, b = ident[32].wire, ident[512].wire
        verdict = "met" if b <= 2 * a and b < 16 * 1024 else "NOT met"
        lines.append(
            f"Target (issue 4): identical output at N=512 within 2x of N=32 and under 16 KiB: "
            f"{b} B vs {a} B ({b / a:.2f}x): **{verdict}**."
        )
    others = sum(r.other_frames for r in res.values())
    lines.append(f"Frames other than the jobs' replies during the measurements: {others}.")
    if no_edits and ("uname", max(sizes)) in res and ("uname", max(sizes)) in no_edits:
        n = max(sizes)
        w, wo = res[("uname", n)].wire, no_edits[("uname", n)].wire
        lines.append(f"Near-identical lines as edits, `uname` at N={n}: {w} B with, {wo} B without ({wo / w:.1f}x).")
    if stdin is not None:
        g = ", ".join(f"{x:.1f}" for x in stdin["growth"])
        lines += [
            "",
            f"stdin: {stdin['mib']} MiB to `wc -c` on 16 nodes (fanout 4): {stdin['seconds']:.1f} s"
            f" ({stdin['mib'] / stdin['seconds']:.0f} MiB/s to every node), output correct: {stdin['ok']};"
            f" peak RSS growth of the daemon processes (master, then node processes): {g} MiB.",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--sizes", default="32,64,128,256,512,1024", help="node counts")
    ap.add_argument("--runs", type=int, default=3, help="measured runs per point, after a warm-up")
    ap.add_argument("--compare-edits", action="store_true", help="also measure with line edits turned off")
    ap.add_argument("--stdin-mib", type=int, default=0, help="also stream this many MiB of stdin to 16 nodes")
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = ap.parse_args()
    sizes = sorted(int(x) for x in args.sizes.split(",") if x)
    meta = {
        "command": shlex.join(["python", "bench/merge.py", *sys.argv[1:]]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "python": platform.python_version(),
    }
    print("with edits …", file=sys.stderr)
    res = bench_cluster(sizes, args.runs, {}, list(WORKLOADS))
    no_edits: dict[tuple[str, int], Run] = {}
    if args.compare_edits:
        print("without edits …", file=sys.stderr)
        no_edits = bench_cluster(sizes, args.runs, {"edits": False}, ["date", "uname", "hostname"])
    stdin = bench_stdin(args.stdin_mib) if args.stdin_mib else None
    text = report(sizes, res, no_edits, stdin, meta)
    print(text)
    if not args.no_write:
        print(f"written to {write_section('merge', text)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
