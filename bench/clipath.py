"""The default CLI path as a user types it: ``gproc e '**' /bin/true`` (Python start-up included)
against ``-localbin``, ``pdsh -R exec -f 32`` and the spawn floor, on a running local cluster.

Rounds alternate the commands (a shared machine's load then weighs on all alike); medians and minima.
``--before SRC``: also run each gproc command from another checkout's ``src`` (e.g. from
``git archive REF src``), for before/after figures taken in the same minutes.

    gproc up --local 64 --socket /tmp/c64/sock
    python bench/clipath.py --socket /tmp/c64/sock --nodes 64 --rounds 15 [--before /tmp/old/src]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from launch import spawn_floor


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--socket", required=True, help="the cluster's master socket")
    ap.add_argument("--nodes", type=int, required=True, help="how many nodes it has (for pdsh and the floor)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--before", metavar="SRC", help="another checkout's src directory to compare with")
    args = ap.parse_args()
    env = {**os.environ, "GPROC_MASTER": args.socket}
    sources = [("", env)]
    if args.before:
        sources.insert(0, (" (before)", {**env, "PYTHONPATH": args.before}))
    gproc = [sys.executable, "-m", "gproc", "e"]
    cmds: dict[str, tuple[list[str], dict[str, str]]] = {}
    for label, e in sources:
        cmds[f"gproc e '**' /bin/true{label}"] = ([*gproc, "**", "/bin/true"], e)
    for label, e in sources:
        cmds[f"gproc e -localbin '**' /bin/true{label}"] = ([*gproc, "-localbin", "**", "/bin/true"], e)
    cmds["pdsh -R exec -f 32"] = (["pdsh", "-R", "exec", "-f", "32", "-w", f"n[1-{args.nodes}]", "true"], env)
    times: dict[str, list[float]] = {k: [] for k in [*cmds, "spawn floor"]}
    for argv, e in cmds.values():  # warm-up: the program in every node's store, caches filled
        subprocess.run(argv, env=e, stdout=subprocess.DEVNULL, check=True, timeout=600)
    for _ in range(args.rounds):
        for name, (argv, e) in cmds.items():
            t0 = time.perf_counter()
            subprocess.run(argv, env=e, stdout=subprocess.DEVNULL, check=True, timeout=600)
            times[name].append(time.perf_counter() - t0)
        times["spawn floor"].append(spawn_floor(args.nodes))
    print(f"N = {args.nodes}, medians of {args.rounds} alternating rounds (minimum in brackets):")
    for name, got in times.items():
        print(f"  {name:44s} {statistics.median(got) * 1000:7.0f} ms ({min(got) * 1000:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
