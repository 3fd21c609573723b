"""Validation points: a real local cluster's launch and no-op as ``bench/fanout.py`` measures them,
and reading them back from ``bench/fanout.json`` or ``bench/model_points.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .parts import (
    REPO,
)

# Used while bench/fanout.json does not exist: an earlier, noisier run (10,000-node values very rough).
# (n, fanout, launch_s, noop_s)
PROVISIONAL: tuple[tuple[int, int, float, float], ...] = (
    (1024, 16, 0.92, 0.10),
    (1024, 32, 1.3, 0.15),
    (10000, 32, 30.0, 1.5),
)


@dataclass(frozen=True)
class Point:
    n: int
    fanout: int
    launch_s: float
    noop_s: float
    launch_ship_s: float | None = None
    master_bytes: int | None = None
    other: float | None = None  # share of the machine's CPU that other processes used meanwhile
    procs: int | None = None  # node processes of the measured cluster (None: gproc.local.workers' choice)
    launch_all: tuple[float, ...] | None = None  # each start's figure, when there were several
    noop_all: tuple[float, ...] | None = None
    reply_bytes: int | None = None  # the identical-output job's own reply frames at the master, TLS included


def load_points(path: Path) -> tuple[list[Point], str]:
    """Points of bench/fanout.json (or the provisional ones) and where they come from."""
    if path.exists():
        d = json.loads(path.read_text())
        pts = [
            Point(
                int(p["n"]),
                int(p["fanout"]),
                float(p["launch_s"]),
                float(p["noop_s"]),
                p.get("launch_ship_s"),
                p.get("master_bytes"),
                p.get("other"),
                p.get("procs") or None,
                tuple(p["launch_all"]) if p.get("launch_all") else None,
                tuple(p["noop_all"]) if p.get("noop_all") else None,
                p.get("reply_bytes"),
            )
            for p in d.get("points", [])
            if p.get("launch_s") is not None and p.get("noop_s") is not None
        ]
        where = path.resolve()
        name = where.relative_to(REPO) if where.is_relative_to(REPO) else where
        return pts, f"{name} ({d.get('machine', '?')}, {d.get('date', '?')})"
    pts = [Point(n, k, launch, noop) for n, k, launch, noop in PROVISIONAL]
    return pts, "provisional numbers (bench/fanout.json not written yet; 10,000-node values very rough)"
