"""The command line (``python bench/model``): measure or load costs and points, validate, project,
print the report and write its section of bench/RESULTS.md."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from launch import int_list
from results import machine, write_section

from . import __doc__ as PACKAGE_DOC
from .calibrate import (
    measure,
    wait_quiet,
)
from .parts import (
    BIG_POINT,
    COSTS_JSON,
    FANOUT_JSON,
    PNG,
    POINTS_JSON,
    REPO,
    RESULTS,
    SMALL_POINT,
    Costs,
    MiB,
    load_costs,
    override,
    probes_upto,
)
from .points import Point, load_points
from .report import (
    Findings,
    Row,
    git_commit,
    plot,
    project_fanout_default,
    render,
    validate,
)
from .simulate import (
    LocalRun,
    Net,
    Tree,
    broadcast,
    levels,
    recurrence,
    simulate_cluster,
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=PACKAGE_DOC.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--fanout", type=int, default=None, help="projection fanout (default: gproc.local.up's)")
    ap.add_argument("--fanouts", default="16,32,64", help="further projection fanouts (default 16,32,64)")
    ap.add_argument("--sizes", default="100000,1000000,10000000", help="projection sizes")
    ap.add_argument("--latency", type=float, default=50.0, help="cluster: one-way latency per hop, µs (50)")
    ap.add_argument("--bandwidth", type=float, default=10.0, help="cluster: NIC bandwidth, Gbit/s (10)")
    ap.add_argument("--file-mib", type=float, default=10.0, help="broadcast file size, MiB (10)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="local: cores of the measured machine")
    ap.add_argument("--quantum", type=float, default=4.0, help="local: CPU slice of a process, ms (4)")
    ap.add_argument(
        "--points",
        type=Path,
        default=None,
        help="validate against these measured points (bench/fanout.json) instead of measuring them in this run",
    )
    ap.add_argument("--point-sizes", default="1024,10000", help="validation points measured here: sizes")
    ap.add_argument("--point-fanouts", default="4,8,16,32,64", help="validation points measured here: fanouts")
    ap.add_argument(
        "--probe-starts", type=int, default=3, help="starts of each calibration cluster (medians over them)"
    )
    ap.add_argument(
        "--big-starts",
        type=int,
        default=5,
        help=f"starts of each point and calibration cluster of {BIG_POINT:,} nodes or more (5)",
    )
    ap.add_argument(
        "--probes-upto",
        type=float,
        default=math.inf,
        metavar="N",
        help="leave out the calibration clusters larger than N nodes (when measuring, and from --costs)",
    )
    ap.add_argument("--des-max", type=int, default=10_000, help="cluster: per-node simulation up to this N")
    ap.add_argument("--no-measure", action="store_true", help="use stored default costs instead of measuring")
    ap.add_argument(
        "--costs",
        type=Path,
        help="costs from a file a full run wrote (bench/model_costs.json); measures nothing, validates against "
        "bench/model_points.json (or --points)",
    )
    ap.add_argument("--quick", action="store_true", help="shorter measurements")
    ap.add_argument("--quiet", type=float, default=0.0, metavar="S", help="wait up to S s for a quiet machine first")
    ap.add_argument("--cost", action="append", default=[], metavar="NAME=US", help="override a cost (µs)")
    ap.add_argument("--no-write", action="store_true", help="print only: no RESULTS.md section, no PNG")
    return ap.parse_args(argv)


def costs_and_points(args: argparse.Namespace) -> tuple[Costs, dict[str, float], str, list[Point]]:
    """The costs (measured now, read from ``--costs``, or the stored defaults), extra facts for the
    report, where the costs come from, and the validation points measured in this run (if any)."""
    extra: dict[str, float] = {}
    points: list[Point] = []
    if args.no_measure:
        costs, source = Costs(), "stored defaults / overrides (not measured in this run)"
    elif args.costs:
        costs, extra, source = load_costs(args.costs)
    else:
        source = "measured now"
        if args.quiet > 0:
            print(f"waiting up to {args.quiet:g} s for other processes to use < 10 % of the CPU ...", flush=True)
            print(f"  other load now {wait_quiet(args.quiet):.0%}", flush=True)
        print("measuring costs and validation points ...", flush=True)
        sizes_here, fanouts_here = int_list(args.point_sizes), int_list(args.point_fanouts)
        here = [] if args.points else [(n, k) for n in sizes_here for k in fanouts_here]
        costs, extra, points = measure(
            args.quick, starts=args.probe_starts, points=here, upto=args.probes_upto, big_starts=args.big_starts
        )
    return override(probes_upto(costs, args.probes_upto), args.cost), extra, source, points


def points_to_check(
    args: argparse.Namespace, measured: bool, points: list[Point]
) -> tuple[list[Point], str, list[Point], str]:
    """The points to validate against and where they come from, and a second set (``fanout.json``'s,
    of another hour) when the first was measured in this run."""
    if not measured or args.points:
        default = POINTS_JSON if args.costs and POINTS_JSON.exists() else FANOUT_JSON
        points, source = load_points(args.points or default)
        return points, source, [], ""
    source = (
        f"measured in this run ({machine()}, {datetime.now(UTC):%Y-%m-%d}): each point started "
        f"{args.probe_starts} times ({2 * args.probe_starts} up to {SMALL_POINT:,} nodes, "
        f"{max(args.probe_starts, args.big_starts)} from {BIG_POINT:,}), in turn with the calibration clusters"
    )
    others, other_source = load_points(FANOUT_JSON) if FANOUT_JSON.exists() else ([], "")
    return points, source, others, other_source


def bytes_per_master_link(points: Sequence[Point], costs: Costs) -> tuple[float, int, bool, bool]:
    """Bytes per master link for the projection, at the smallest measured N, where every subtree answers
    well within ``hold`` and sends one reply (larger local clusters answer slowly enough for partial
    replies): the job's own replies when the points have them, else the TCP count with its heartbeats.
    Returns the bytes, that N, whether any point had a figure, whether it was the job's own replies."""
    use_reply = any(p.reply_bytes for p in points)
    sized = [(p, p.reply_bytes if use_reply else p.master_bytes) for p in points]
    small = min((p.n for p, b in sized if b), default=0)
    per_link = [b / min(p.fanout, p.n) for p, b in sized if b and p.n == small]
    link_bytes = statistics.median(per_link) if per_link else costs.echo_rep_wire_bytes
    return link_bytes, small, bool(per_link), use_reply


def cluster_checks(des_max: int, k_main: int, costs: Costs, net: Net) -> list[tuple[int, int, str, float, float]]:
    """The cluster model's per-node simulation against its recurrence where both run."""
    checks: list[tuple[int, int, str, float, float]] = []
    for n in (1024, 10_000):
        if n > des_max:
            continue
        for k in sorted({k_main, 32}):
            tree = Tree.build(n, k)
            for kind in ("exec", "noop"):
                sim = simulate_cluster(tree, kind, costs, net)
                checks.append((n, k, kind, sim, recurrence(n, k, kind, costs, net)))
    return checks


def project(
    fanouts: Sequence[int], sizes: Sequence[int], file_bytes: float, link_bytes: float, costs: Costs, net: Net
) -> tuple[list[tuple[Any, ...]], dict[int, list[tuple[int, float, float]]]]:
    """The projection's table rows (per size and fanout) and its curves for the plot (per fanout)."""
    proj_rows = []
    curves: dict[int, list[tuple[int, float, float]]] = {}
    for k in fanouts:
        curves[k] = [
            (n, recurrence(n, k, "exec", costs, net), recurrence(n, k, "noop", costs, net))
            for n in sorted({int(10 ** (e / 4)) for e in range(12, 29)} | set(sizes))
        ]
        for n in sizes:
            net_only, with_cpu = broadcast(n, k, file_bytes, costs, net)
            proj_rows.append((
                n, k, len(levels(n, k)), recurrence(n, k, "exec", costs, net), recurrence(n, k, "noop", costs, net),
                min(k, n) * link_bytes, n * link_bytes, net_only, with_cpu,
            ))  # fmt: skip
    return proj_rows, curves


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # stopped (a background job ignores SIGINT): unwind, so the cluster being measured is torn down
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t_start = time.perf_counter()
    k_main = args.fanout or project_fanout_default()
    fanouts = sorted({k_main, *(int(x) for x in args.fanouts.split(",") if x)})
    sizes = [int(float(x)) for x in args.sizes.split(",") if x]
    net = Net(args.latency * 1e-6, args.bandwidth * 1e9 / 8)
    quantum = args.quantum * 1e-3

    measured = not (args.no_measure or args.costs)
    costs, extra, cost_source, points = costs_and_points(args)
    points, source, others, other_source = points_to_check(args, measured, points)
    print(f"measured points: {source}")
    memo: dict[tuple[Any, ...], LocalRun] = {}
    rows, local_curve = validate(points, costs, args.cores, quantum, memo)
    other_rows = validate(others, costs, args.cores, quantum, memo)[0] if others else []
    # the same points without the calibration clusters as large as the largest point: how much of the
    # fit at that size the probes there make
    big_n = max((p.n for p in points), default=0)
    below = [q[0] for q in costs.more_probes if q[0] < big_n]
    fewer_rows: list[Row] = []
    if below and any(q[0] >= big_n for q in costs.more_probes):
        fewer_rows = validate(points, probes_upto(costs, max(below)), args.cores, quantum)[0]
    link_bytes, small, link_measured, use_reply = bytes_per_master_link(points, costs)
    proj_rows, curves = project(fanouts, sizes, args.file_mib * MiB, link_bytes, costs, net)

    cmd = "python bench/model" + (" " + " ".join(sys.argv[1:]) if argv is None and sys.argv[1:] else "")
    text = render(
        Findings(
            cmd=cmd, source=source, costs=costs, extra=extra, cost_source=cost_source, net=net, cores=args.cores,
            quantum=quantum, fanouts=fanouts, sizes=sizes, k_main=k_main, points=points, rows=rows,
            fewer_rows=fewer_rows, big_n=big_n, below=below, other_rows=other_rows, other_source=other_source,
            checks=cluster_checks(args.des_max, k_main, costs, net), proj_rows=proj_rows, link_bytes=link_bytes,
            small=small, link_measured=link_measured, use_reply=use_reply, bandwidth=args.bandwidth,
            latency=args.latency, file_mib=args.file_mib,
        )
    )  # fmt: skip
    print("\n" + text)
    print(f"model took {time.perf_counter() - t_start:.1f} s")
    if not args.no_write:
        plot(PNG, curves, local_curve, points)
        write_section("model", text, RESULTS)  # reads RESULTS.md afresh and replaces only this section
        stamp = {"machine": machine(), "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}", "commit": git_commit()}
        if measured and not args.points:  # the points measured here, for `--points` later
            POINTS_JSON.write_text(json.dumps({**stamp, "points": [asdict(p) for p in points]}, indent=1) + "\n")
        if measured:  # and the costs, for `--costs` (the model again without measuring anything)
            COSTS_JSON.write_text(json.dumps({**stamp, "costs": asdict(costs), "extra": extra}, indent=1) + "\n")
        print(f"wrote {PNG.relative_to(REPO)} and the model section of {RESULTS.relative_to(REPO)}")
    return 0
