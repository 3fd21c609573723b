"""The fault-injection suite at full size: tests/chaos/ (the same code) with more nodes, jobs and time.

Default: 256 nodes (16 interior daemons, workers of 16 nodes, 4 hosts in network namespaces as
root), 100 jobs in flight, 120 seconds of faults. Prints the seed first (replay with
``GPROC_CHAOS_SEED=N`` or ``--seed N``), then each fault, then the counts and the invariants; with
``--write`` the report goes into bench/RESULTS.md between the ``chaos`` markers. Exit status 1 when an
invariant broke.

    python bench/chaos.py [--nodes 256] [--jobs 100] [--seconds 120] [--seed N] [--write]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.chaos: the same code as the suite
sys.path.insert(0, str(Path(__file__).resolve().parent))
from tests.chaos.engine import Plan, Report, run

from results import machine, write_section


def notes(report: Report) -> str:
    """What the counts mean, for the reader of RESULTS.md."""
    p = report.plan
    text = report.processes + "."
    if not report.netem:
        text += ' This kernel has no `sch_netem`: the "netem" faults were token-bucket slow links (`tbf`).'
    text += (
        ' "master busy": clients that gave up before their job started because no answer came within'
        f" 10 s (one clean line each): the master and this driver ({p.jobs} jobs in one event loop) share"
        " the cores with every node, and which of them was too slow was not measured. CI runs the same"
        " code at 32 nodes, 8 jobs in flight, 30 s of faults (`tests/chaos/`, about 45 s)."
    )
    return textwrap.fill(text, 100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=256)
    ap.add_argument("--interior", type=int, default=16, help="single-node daemon processes under the master")
    ap.add_argument("--per-worker", type=int, default=16, help="nodes per worker process")
    ap.add_argument("--hosts", type=int, default=4, help="daemons in network namespaces (root only)")
    ap.add_argument("--jobs", type=int, default=100, help="jobs in flight at once")
    ap.add_argument("--seconds", type=float, default=120.0, help="how long faults are injected")
    ap.add_argument("--fault-every", type=float, default=2.0, help="mean seconds between faults")
    ap.add_argument("--rss-mb", type=float, default=400.0, help="bound of any daemon's resident memory")
    ap.add_argument("--job-bound", type=float, default=300.0, help="seconds after which a job counts as hung")
    ap.add_argument("--select-max", type=int, default=16, help="most nodes one -w selection names")
    ap.add_argument("--everyone", type=float, default=0.05, help="share of jobs on every node (**)")
    ap.add_argument("--seed", type=int, help="default: $GPROC_CHAOS_SEED, else random")
    ap.add_argument("--write", action="store_true", help="write the report into bench/RESULTS.md")
    a = ap.parse_args()
    plan = Plan(
        seed=a.seed if a.seed is not None else Plan.seed_from_env(),
        nodes=a.nodes,
        interior=a.interior,
        per_worker=a.per_worker,
        hosts=a.hosts,
        jobs=a.jobs,
        seconds=a.seconds,
        rss_mb=a.rss_mb,
        fault_every=a.fault_every,
        job_bound=a.job_bound,
        select_max=a.select_max,
        everyone=a.everyone,
    )
    load = os.getloadavg()[0]
    report = run(plan)
    text = report.summary()
    print(text)
    if a.write:
        cmd = "python bench/chaos.py " + shlex.join(sys.argv[1:])
        write_section(
            "chaos",
            f"## Fault injection (bench/chaos.py)\n\n`{cmd}` on {datetime.now(UTC):%Y-%m-%d}, {machine()},"
            f" load {load:.1f} at start:\n\n```\n{text}\n```\n\n{notes(report)}\n",
        )
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
