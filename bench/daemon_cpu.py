"""Daemon CPU per launch and per no-op: what one ``exec`` of /bin/true on every node, and one ping,
cost the daemons of a local cluster in CPU seconds (the master alone, and every daemon).

Wall times on a shared 2-core machine vary 15-40 % from run to run with the other load; CPU seconds
spent by the daemons hardly do, so they compare two versions of the code more finely (what is left:
cache and frequency effects of the other load). ``--ref`` measures a commit (from a git archive)
instead of the working tree; alternate the two to compare.

    python bench/daemon_cpu.py [--nodes 256] [--fanout 16] [--launches 20] [--pings 50] [--ref REV]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent


def cpu(pids: list[int]) -> tuple[float, float]:
    """(CPU seconds of the first pid, of all of them): user + system, the processes themselves."""
    out = []
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out.append(t.user + t.system)
        except psutil.Error:
            out.append(0.0)
    return out[0], sum(out)


async def measure(sock: str, pids: list[int], n: int, launches: int, pings: int) -> dict[str, float]:
    from gproc.client import Cluster, Status

    c = Cluster(sock)

    async def launch() -> None:
        job = await c.exec(["/bin/true"], "**", localbin=True)
        ok = sum(ev.count for ev in [e async for e in job] if isinstance(ev, Status) and ev.status == 0)
        if ok != n:
            raise RuntimeError(f"{ok} of {n} nodes ran /bin/true")

    for _ in range(3):  # warm-up
        await launch()
        await c.ping()
    m0, a0 = cpu(pids)
    for _ in range(launches):
        await launch()
    m1, a1 = cpu(pids)
    for _ in range(pings):
        await c.ping()
    m2, a2 = cpu(pids)
    return {
        "launch master ms": 1000 * (m1 - m0) / launches,
        "launch all ms": 1000 * (a1 - a0) / launches,
        "ping master ms": 1000 * (m2 - m1) / pings,
        "ping all ms": 1000 * (a2 - a1) / pings,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=256)
    ap.add_argument("--fanout", type=int, default=16)
    ap.add_argument("--launches", type=int, default=20)
    ap.add_argument("--pings", type=int, default=50)
    ap.add_argument("--ref", help="measure this git commit of src/ (from a git archive)")
    args = ap.parse_args()
    if args.ref:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--verify", f"{args.ref}^{{commit}}"], capture_output=True, text=True
        ).stdout.strip()
        if not commit:
            sys.exit(f"daemon_cpu.py: unknown git ref {args.ref!r}")
        argv = [a for a in sys.argv[1:] if a not in ("--ref", args.ref) and not a.startswith("--ref=")]
        with tempfile.TemporaryDirectory(prefix="gproc-bench-src-") as tmp:
            git = ["git", "-C", str(REPO), "archive", commit, "src"]
            archive = subprocess.run(git, capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
            env = {**os.environ, "PYTHONPATH": os.path.join(tmp, "src"), "GPROC_BENCH_LABEL": commit[:9]}
            return subprocess.run([sys.executable, __file__, *argv], env=env).returncode

    from gproc import local

    label = os.environ.get("GPROC_BENCH_LABEL", "working tree")
    with tempfile.TemporaryDirectory(prefix="gproc-bench-") as tmp:
        sock = os.path.join(tmp, "sock")
        try:
            local.up(args.nodes, fanout=args.fanout, socket=sock)
            rec = local.UpRecord.load(sock)
            assert rec is not None
            pids = [pid for pid, _ in rec.procs]  # the master first
            r = asyncio.run(measure(sock, pids, args.nodes, args.launches, args.pings))
        finally:
            local.down(sock, quiet=True)
    print(f"{label}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
