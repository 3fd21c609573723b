"""Calibration on real local clusters: what their daemons spend beyond the parts (per-node
corrections by size and process count), the validation points measured in turn with them, and the
rounds that order those starts."""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any

import fanout
from launch import machine_busy_seconds

from .measure import (
    cpu_now,
    echo_reply_bytes,
    measure_parts,
)
from .parts import (
    BIG_POINT,
    PROBE,
    PROBES_MORE,
    SMALL_POINT,
    Costs,
)
from .points import Point
from .simulate import (
    Tree,
    simulate_local,
)


def probe_predicted(c: Costs, n: int, k: int, procs: int) -> dict[str, float]:
    """What the parts predict for the probe's cluster: worker, program and master CPU per op."""
    tree = Tree.build(n, k)
    out = {}
    for kind in ("noop", "exec"):
        run = simulate_local(tree, kind, c, 2, heartbeat=1e9, workers=procs)
        programs = run.cpu.get("programs", 0.0) + run.cpu.get("descriptors at fork (child)", 0.0)
        others = run.cpu.get("master", 0.0) + run.cpu.get("heartbeats", 0.0)
        out[f"{kind}_worker"] = run.busy - programs - others  # the vfork child's CPU counts as the program's
        out[f"{kind}_programs"] = programs
        fixed = c.master_exec_fixed if kind == "exec" else c.master_ping_fixed
        out[f"{kind}_master"] = run.cpu.get("master", 0.0) - fixed  # the master's parts without its fixed cost
    return out


def measure_daemon(n: int, k: int, procs: int, pings: int, launches: int) -> dict[str, float]:
    """Real daemons: a local cluster of ``n`` nodes in ``procs`` worker processes (``gproc.local.up``); CPU
    of the workers (and of their programs) per no-op and per launch of /bin/true, idle heartbeats
    subtracted; the master's and this client's CPU per op; wall times."""
    import psutil

    from gproc import local
    from gproc.client import Cluster, Status

    def cpu_of(ps: list[psutil.Process]) -> tuple[float, float]:
        """CPU of these processes and of their reaped children; a worker's starter (platform.Starter,
        never reaped while the cluster runs) counts with its worker, its programs with the programs."""
        own = kids = 0.0
        for p in ps:
            t = p.cpu_times()
            own += t.user + t.system
            kids += t.children_user + t.children_system
            for st in p.children():
                if any("gproc_spawnd" in a for a in st.cmdline()):
                    t = st.cpu_times()
                    own += t.user + t.system
                    kids += t.children_user + t.children_system
        return own, kids

    async def ops(sock: str, workers: list[psutil.Process], master: list[psutil.Process]) -> dict[str, float]:
        c = Cluster(sock, timeout=120)
        await c.ping()
        job = await c.exec(["/bin/true"], "**", localbin=True)
        [e async for e in job]
        w0, m0, t0 = cpu_of(workers), cpu_of(master), time.perf_counter()
        await asyncio.sleep(1.0)
        w1, m1, t1 = cpu_of(workers), cpu_of(master), time.perf_counter()
        idle, m_idle = (w1[0] - w0[0]) / (t1 - t0), (m1[0] - m0[0]) / (t1 - t0)

        async def one(kind: str) -> tuple[float, ...]:
            """(worker, programs, master + client CPU, wall) of one op, idle heartbeats subtracted."""
            w0, m0 = cpu_of(workers), cpu_of(master)[0]
            c0, t0 = time.process_time(), time.perf_counter()  # this client's own CPU: the op alone
            if kind == "noop":
                r = await c.ping()
                assert r["counts"].get("ok") == n, r
            else:
                job = await c.exec(["/bin/true"], "**", localbin=True)
                ok = sum(e.count for e in [e async for e in job] if isinstance(e, Status) and e.status == 0)
                assert ok == n, ok
            c1, t1 = time.process_time(), time.perf_counter()
            w1, m1 = cpu_of(workers), cpu_of(master)[0]
            wall = t1 - t0
            return w1[0] - w0[0] - idle * wall, w1[1] - w0[1], m1 - m0 - m_idle * wall + c1 - c0, wall

        # each figure the median over its ops: one op disturbed by the machine (a cluster torn down
        # before, another process) moves a sum or a mean by up to 2x here, a median hardly
        noops = [await one("noop") for _ in range(pings)]
        execs = [await one("exec") for _ in range(launches)]

        def med(rows: list[tuple[float, ...]], i: int) -> float:
            return statistics.median(r[i] for r in rows)

        return {
            "noop_worker": med(noops, 0),
            "exec_worker": med(execs, 0),
            "exec_programs": med(execs, 1),
            "noop_master": med(noops, 2),
            "exec_master": med(execs, 2),
            "idle_worker": idle,
            "noop_wall": med(noops, 3),
            "exec_wall": med(execs, 3),
        }

    wait_quiet(20.0)  # the kernel may still be tearing down the cluster measured before
    with tempfile.TemporaryDirectory(prefix="gproc-model-") as tmp:
        sock = os.path.join(tmp, "sock")
        rec = local.up(n, fanout=k, socket=sock, procs=procs)
        try:
            workers = [psutil.Process(pid) for pid, _ in rec.procs[1:]]
            got = asyncio.run(ops(sock, workers, [psutil.Process(rec.procs[0][0])]))
            return {**got, "workers": float(len(workers))}  # what local.up ran, not what was asked
        finally:
            local.down(sock, quiet=True)


def machine_busy() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process and its children)."""
    return machine_busy_seconds(), cpu_now()


def other_load(since: tuple[float, float], wall: float) -> float:
    """Share of the machine's CPU that other processes used since ``since`` (``wall`` seconds ago)."""
    busy, own = machine_busy()
    return max(0.0, (busy - since[0]) - (own - since[1])) / (wall * (os.cpu_count() or 1))


def wait_quiet(limit: float, share: float = 0.1) -> float:
    """Wait up to ``limit`` seconds for a second in which other processes use less than ``share`` of
    the machine; returns the last second's share."""
    deadline = time.monotonic() + limit
    while True:
        b0 = machine_busy()
        time.sleep(1.0)
        load = other_load(b0, 1.0)
        if load < share or time.monotonic() >= deadline:
            return load


def measure_point(n: int, k: int, quick: bool) -> fanout.Point | None:
    """One start of a validation point, measured as ``bench/fanout.py`` measures it (its ``measure``:
    launches of /bin/true with ``-localbin``, pings, in ``gproc.local.workers``' processes); None when
    that start failed (said on stderr)."""
    wait_quiet(20.0)
    try:
        return fanout.measure(n, k, 2 if quick else 3, 5 if quick else 10, 0, False, None)
    except Exception as e:  # one lost start must not lose the whole run
        print(f"  point N={n} fanout={k}: this start failed ({type(e).__name__}: {e})", file=sys.stderr, flush=True)
        return None


def point_of(runs: list[fanout.Point]) -> Point:
    """One validation point from its starts: ``fanout.combine``'s medians, each start's figures kept."""
    q = fanout.combine(runs)
    la, na = q.launch_all, q.noop_all
    return Point(
        q.n, q.fanout, q.launch_s, q.noop_s, None, q.master_bytes, q.other, q.procs,
        launch_all=tuple(la) if la and na else None, noop_all=tuple(na) if la and na else None,
        reply_bytes=q.reply_bytes,
    )  # fmt: skip


def interleave(a: Sequence[Any], b: Sequence[Any]) -> list[Any]:
    """a0 b0 a1 b1 ... then the rest of the longer one."""
    out: list[Any] = []
    for i in range(max(len(a), len(b))):
        out.extend(x[i] for x in (a, b) if i < len(x))
    return out


def plan_rounds(
    clusters: Sequence[tuple[int, int, int]], points: Sequence[tuple[int, int]], starts: int, big_starts: int
) -> list[list[Any]]:
    """What each round starts, in order: calibration clusters and points in turn, all of them in the
    first ``starts`` rounds, only those of ``BIG_POINT`` nodes or more in the rounds after, up to
    ``big_starts`` (one round, empty, when there is nothing to start: the parts are still measured)."""
    if not (clusters or points):
        return [[]]
    out = []
    for r in range(max(starts, big_starts)):
        big = r >= starts
        out.append(
            interleave(
                [c for c in clusters if not big or c[0] >= BIG_POINT],
                [q for q in points if not big or q[0] >= BIG_POINT],
            )
        )
    return out


def measure(
    quick: bool,
    probe: bool = True,
    starts: int = 3,
    points: Sequence[tuple[int, int]] = (),
    upto: float = math.inf,
    big_starts: int = 0,
) -> tuple[Costs, dict[str, float], list[Point]]:
    """Measure every cost and, when ``points`` are given, the validation points (N, fanout) themselves.

    ``starts`` rounds; each round measures the parts, then starts every calibration cluster once and
    every validation point once, one after the other in turn (calibration, point, calibration, ...), so
    that both see the machine as it is during the same minutes: this VM's speed drifts by ~20 % over an
    hour, which moved the model's error against points measured in another hour by as much. Each
    figure is the median over its rounds; calibration clusters larger than ``upto`` nodes are skipped.
    Points and calibration clusters of ``BIG_POINT`` nodes or more are started in ``big_starts``
    rounds when that is more than ``starts`` (the rounds past ``starts`` hold only them).
    Returns the costs, extra facts for the report and the measured points."""
    from gproc import credential

    more_probes = [q for q in PROBES_MORE if q[0] <= upto]
    clusters = [PROBE, *more_probes] if probe else []
    for n, k, procs in clusters:  # before an hour of measuring: local.up runs min(procs, fanout) processes
        if min(n, k) < procs:
            raise ValueError(f"calibration cluster {n} nodes at fanout {k} cannot have {procs} processes")
    parts_runs: list[dict[str, float]] = []
    real_runs: dict[tuple[int, int, int], list[dict[str, float]]] = {c: [] for c in clusters}
    point_runs: dict[tuple[int, int], list[fanout.Point]] = {q: [] for q in points}
    # small points twice a round: their starts scatter by up to ±20 % (a fifth of the tolerance is
    # most of it) and one costs ~10 s, against ~90 s for a 10,000-node start
    twice = [q for q in points if q[0] <= SMALL_POINT]
    b0, w0 = machine_busy(), time.perf_counter()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gproc-model-") as tmp:
        key = credential.keygen(os.path.join(tmp, "cluster.key"))
        rounds = plan_rounds(clusters, [*points, *twice], starts, big_starts)
        for r, items in enumerate(rounds):
            wait_quiet(20.0)
            parts_runs.append(measure_parts(key, quick))
            for item in items:
                print(f"  round {r + 1}/{len(rounds)}: {'calibration' if len(item) == 3 else 'point'} {item} "
                      f"[{time.perf_counter() - t0:.0f} s]", flush=True)  # fmt: skip
                if len(item) == 3:
                    n, k, procs = item
                    real_runs[item].append(measure_daemon(n, k, procs, 10 if quick else 30, 3 if quick else 5))
                else:
                    n, k = item
                    got = measure_point(n, k, quick)
                    if got is not None:
                        point_runs[item].append(got)
    vals = {key: statistics.median(run[key] for run in parts_runs) for key in parts_runs[0]}
    vals["echo_rep_wire_bytes"] = echo_reply_bytes()
    names = {f.name for f in fields(Costs)}
    zero: dict[str, Any] = {"daemon_extra_noop": 0.0, "daemon_extra_exec": 0.0, "program_extra": 0.0}  # parts alone
    costs = Costs(**{**zero, **{k: v for k, v in vals.items() if k in names}})
    extra = {k: v for k, v in vals.items() if k not in names}
    real_of = {
        c: {key: statistics.median(run[key] for run in runs) for key in runs[0]} for c, runs in real_runs.items()
    }
    if probe:
        n, k, procs = PROBE
        real = real_of[PROBE]
        parts = probe_predicted(costs, n, k, procs)
        costs = replace(
            costs,
            daemon_extra_noop=(real["noop_worker"] - parts["noop_worker"]) / n,
            daemon_extra_exec=(real["exec_worker"] - parts["exec_worker"]) / n,
            program_extra=(real["exec_programs"] - parts["exec_programs"]) / n,
            master_exec_fixed=max(0.0, real["exec_master"] - parts["exec_master"]),
            master_ping_fixed=max(0.0, real["noop_master"] - parts["noop_master"]),
        )
        extra.update({f"probe_{key}": v for key, v in real.items()})
        more = []
        for n2, k2, procs2 in more_probes:
            real2 = real_of[(n2, k2, procs2)]
            ran = int(real2["workers"])
            parts2 = probe_predicted(replace(costs, **zero), n2, k2, ran)
            more.append(
                (
                    float(n2),
                    float(ran),
                    (real2["noop_worker"] - parts2["noop_worker"]) / n2,
                    (real2["exec_worker"] - parts2["exec_worker"]) / n2,
                    (real2["exec_programs"] - parts2["exec_programs"]) / n2,
                )
            )
            extra.update({f"probe_{n2}_{procs2}p_{key}": v for key, v in real2.items()})
        costs = replace(costs, more_probes=tuple(more))
        tree = Tree.build(n, k)
        for kind in ("noop", "exec"):
            run = simulate_local(tree, kind, costs, os.cpu_count() or 1, workers=procs)
            extra[f"model_{kind}_wall"] = run.seconds
        extra.update({f"parts_{key}": v for key, v in parts.items()})
    took = time.perf_counter() - t0
    extra["measure_s"] = took
    extra["other_load"] = other_load(b0, time.perf_counter() - w0)
    measured = [point_of(runs) for runs in point_runs.values() if runs]
    return costs, extra, measured
