"""Pure logic of the scale model (bench/model/): its calibration clusters and how it reads corrections."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from gproc import local
from model import calibrate, parts


@pytest.mark.parametrize("cluster", [parts.PROBE, *parts.PROBES_MORE], ids=lambda q: "/".join(map(str, q)))
def test_calibration_cluster_runs_in_its_processes(cluster: tuple[int, int, int]) -> None:
    # local.up gives each process whole subtrees of the master's children: a cluster with fewer of them
    # than processes runs in fewer, and its correction would sit on the wrong process count's line
    n, k, procs = cluster
    top = sum(1 for p in local.layout(n, k) if p < 0)
    assert top >= procs, f"{n} nodes at fanout {k} run in {top} processes, not {procs}"


def _line(n: float, procs: float) -> tuple[float, float, float, float, float]:
    scale = 1.0 if procs == 4 else 2.0
    return (n, procs, scale * (10 + n / 1000) * 1e-6, scale * (100 + n / 100) * 1e-6, scale * 5e-6)


def test_corrections_on_the_line_by_size_then_linear_in_processes() -> None:
    probes = tuple(_line(n, p) for p in (4.0, 16.0) for n in (1280.0, 5000.0, 10000.0))
    _, _, noop, exec_, prog = _line(parts.PROBE[0], parts.PROBE[2])  # the first probe's are the costs' own
    c = parts.Costs(daemon_extra_noop=noop, daemon_extra_exec=exec_, program_extra=prog, more_probes=probes)
    at4 = c.at(3000, 4)
    assert at4.more_probes == ()
    assert math.isclose(at4.daemon_extra_noop, 13e-6)
    assert math.isclose(at4.daemon_extra_exec, 130e-6)
    at16 = c.at(20000, 16)  # past the largest probe: on the same line
    assert math.isclose(at16.daemon_extra_noop, 2 * 30e-6)
    mid = c.at(3000, 10)  # halfway between the two probed process counts
    assert math.isclose(mid.daemon_extra_noop, (13e-6 + 26e-6) / 2)
    assert math.isclose(mid.program_extra, 7.5e-6)


def test_program_correction_never_makes_a_program_free() -> None:
    c = parts.Costs(program_extra=-1.0, more_probes=((1000.0, 4.0, 0.0, 0.0, -1.0),))
    assert c.at(1000, 4).program == 0.0
    assert c.at(1000, 4).program_extra == -c.child_post


def test_no_probes_leaves_the_costs_alone() -> None:
    c = parts.Costs(daemon_extra_noop=3e-6)
    assert c.at(10000, 16) is c


def test_rounds_start_the_large_ones_more_often() -> None:
    # three shared rounds, then two of the 10,000-node points and calibration clusters alone: the
    # starts of one 10,000-node configuration scatter by up to ±20 %, a median of five holds better
    clusters = [(256, 16, 4), (10000, 16, 4)]
    points = [(1024, 4), (10000, 4), (10000, 16), (1024, 4)]  # a small point twice a round
    rounds = calibrate.plan_rounds(clusters, points, starts=3, big_starts=5)
    assert len(rounds) == 5
    assert rounds[0] == [(256, 16, 4), (1024, 4), (10000, 16, 4), (10000, 4), (10000, 16), (1024, 4)]
    assert rounds[3] == rounds[4] == [(10000, 16, 4), (10000, 4), (10000, 16)]
    starts = [item for r in rounds for item in r]
    assert starts.count((10000, 4)) == starts.count((10000, 16, 4)) == 5
    assert starts.count((1024, 4)) == 6 and starts.count((256, 16, 4)) == 3


def test_rounds_without_big_starts_and_without_anything() -> None:
    assert len(calibrate.plan_rounds([(256, 16, 4)], [(10000, 4)], starts=3, big_starts=0)) == 3
    assert calibrate.plan_rounds([], [], starts=3, big_starts=5) == [[]]
