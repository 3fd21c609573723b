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
