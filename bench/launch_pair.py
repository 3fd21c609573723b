"""Launch and no-op of two versions of gproc, paired: both clusters up at once, launches alternating
between them, so each pair of measurements meets the same load of a shared machine.

Each version runs in a driver process of its own (its code from a git archive of ``--ref``, or the
working tree for ``.``) with its own local cluster (``gproc.local.up``); the driver answers ``launch``
(one ``Cluster.exec(['/bin/true'], '**', localbin=True)`` iterated to its end, the API launch of
bench/launch.py) and ``ping`` with the seconds it took. Rounds alternate which version goes first.
Printed: each version's median, and the median over rounds of the ratio B / A with its spread.

    python bench/launch_pair.py --a 6abeed3 --b . [--nodes 256] [--fanout 16] [--rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def serve(n: int, fanout: int) -> int:
    """The driver: a cluster of this process's gproc, launches and pings on request (stdin)."""
    from gproc import local
    from gproc.client import Cluster, Status

    async def launch(c: Cluster) -> float:
        t0 = time.perf_counter()
        job = await c.exec(["/bin/true"], "**", localbin=True)
        ok = sum(ev.count for ev in [e async for e in job] if isinstance(ev, Status) and ev.status == 0)
        dt = time.perf_counter() - t0
        if ok != n:
            raise RuntimeError(f"{ok} of {n} nodes ran /bin/true")
        return dt

    async def ping(c: Cluster) -> float:
        t0 = time.perf_counter()
        await c.ping()
        return time.perf_counter() - t0

    async def loop(sock: str) -> None:
        c = Cluster(sock)
        for _ in range(3):
            await launch(c)
            await ping(c)
        print("ready", flush=True)
        for line in sys.stdin:
            what = line.strip()
            if what == "quit":
                return
            print(await (launch(c) if what == "launch" else ping(c)), flush=True)

    with tempfile.TemporaryDirectory(prefix="gproc-pair-") as tmp:
        sock = os.path.join(tmp, "sock")
        try:
            local.up(n, fanout=fanout, socket=sock)
            asyncio.run(loop(sock))
        finally:
            local.down(sock, quiet=True)
    return 0


class Driver:
    def __init__(self, ref: str, tmp: str, n: int, fanout: int) -> None:
        env = dict(os.environ)
        self.label = ref
        if ref != ".":
            commit = subprocess.run(
                ["git", "-C", str(REPO), "rev-parse", "--verify", f"{ref}^{{commit}}"], capture_output=True, text=True
            ).stdout.strip()
            if not commit:
                sys.exit(f"launch_pair.py: unknown git ref {ref!r}")
            src = os.path.join(tmp, commit)
            os.makedirs(src, exist_ok=True)
            git = ["git", "-C", str(REPO), "archive", commit, "src"]
            archive = subprocess.run(git, capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", src], input=archive.stdout, check=True)
            env["PYTHONPATH"] = os.path.join(src, "src")
            self.label = commit[:9]
        argv = [sys.executable, __file__, "--serve", "--nodes", str(n), "--fanout", str(fanout)]
        self.p = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ready(self) -> None:
        assert self.p.stdout is not None
        if self.p.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{self.label}: the driver did not start")

    def ask(self, what: str) -> float:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write(what + "\n")
        self.p.stdin.flush()
        return float(self.p.stdout.readline())

    def close(self) -> None:
        if self.p.poll() is None and self.p.stdin is not None:
            self.p.stdin.write("quit\n")
            self.p.stdin.close()
        self.p.wait(60)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", default="HEAD", help="the first version: a git ref, or . for the working tree")
    ap.add_argument("--b", default=".", help="the second version")
    ap.add_argument("--nodes", type=int, default=256)
    ap.add_argument("--fanout", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.nodes, args.fanout)
    with tempfile.TemporaryDirectory(prefix="gproc-pair-src-") as tmp:
        drivers = [Driver(args.a, tmp, args.nodes, args.fanout), Driver(args.b, tmp, args.nodes, args.fanout)]
        try:
            for d in drivers:
                d.ready()
            for what in ("launch", "ping"):
                times: list[list[float]] = [[], []]
                for i in range(args.rounds):
                    order = (0, 1) if i % 2 == 0 else (1, 0)
                    for k in order:
                        times[k].append(drivers[k].ask(what))
                ratios = sorted(b / a for a, b in zip(times[0], times[1], strict=True))
                q = len(ratios) // 4
                print(
                    f"{what} ({args.nodes} nodes, fanout {args.fanout}, {args.rounds} rounds): "
                    f"{drivers[0].label} {1000 * statistics.median(times[0]):.1f} ms, "
                    f"{drivers[1].label} {1000 * statistics.median(times[1]):.1f} ms; "
                    f"{drivers[1].label}/{drivers[0].label} median of ratios {statistics.median(ratios):.3f} "
                    f"(quartiles {ratios[q]:.3f}-{ratios[-q - 1]:.3f}), "
                    f"{drivers[1].label} faster in {sum(r < 1 for r in ratios)} of {len(ratios)}",
                    flush=True,
                )
        finally:
            for d in drivers:
                d.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
