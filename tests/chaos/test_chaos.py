"""The fault-injection suite at CI size: 32 nodes in 10 processes (2 of them hosts in network
namespaces when run as root), 8 jobs in flight, 30 seconds of faults. ``bench/chaos.py`` runs the
same code at 256 nodes and 100 jobs. A failure prints its seed: replay it with GPROC_CHAOS_SEED=N."""

from __future__ import annotations

import pytest
from tests.chaos.engine import Plan, run

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]


def test_invariants_hold_under_faults() -> None:
    plan = Plan(seed=Plan.seed_from_env())
    report = run(plan)
    print(report.summary())
    assert sum(report.jobs.values()) >= plan.jobs, report.summary()
    assert report.outcomes.get("delivered", 0) > 0, report.summary()
    assert len(report.faults) > 3, report.summary()
    assert not report.violations, report.summary()


def test_the_schedule_is_the_seeds_alone() -> None:
    """Replaying a seed replays its faults: the same list, the master restarted exactly once, never
    two faults at once on one target."""
    import random

    from tests.chaos.engine import schedule

    procs, hosts = [f"mid{i}" for i in range(4)] + [f"worker{i}" for i in range(4)], ["h0", "h1"]
    plan = Plan(seed=1234)
    a = schedule(plan, random.Random(1234), procs, hosts)
    b = schedule(plan, random.Random(1234), procs, hosts)
    assert [str(f) for f in a] == [str(f) for f in b]
    assert [str(f) for f in a] != [str(f) for f in schedule(plan, random.Random(4321), procs, hosts)]
    assert [f.kind for f in a].count("master") == 1
    busy: dict[str, float] = {}
    for f in a:
        if f.kind != "master":
            assert busy.get(f.target, 0.0) <= f.at, f"{f} overlaps an earlier fault on {f.target}"
            busy[f.target] = f.at + f.hold
    assert {f.kind for f in a} >= {"kill", "stop"}
