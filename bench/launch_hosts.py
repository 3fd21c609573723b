"""``gproc launch --ssh`` onto N namespace hosts (tests/netbed.py): flat and as a tree, per-hop cost, projection.

For each N, a bed of N hosts (network namespaces on a bridge, each with its own sshd) is built once;
then for each fanout (N: flat, every host started by the launching machine; and the tree fanouts) the
whole ``gproc launch`` command is timed (it starts a master, returns when every host's daemon has
joined it) and checked with ``gproc ping`` (every node answers), then ``gproc launch --stop`` is
timed. Medians of ``--runs``. A three-parameter model, ``t = t0 + sum over the tree's levels of (hop
+ k_level * child)`` (t0: master start and the client's own start; hop: one ssh login, agent and
daemon start; child: what one more concurrent child costs its parent), is fitted to all points by
least squares and projects a tree launch to 10,000 hosts. Needs root (see tests/netbed.py).

    python bench/launch_hosts.py                    # N = 4, 8, 16; fanouts N and 2, 4; 3 runs (~3 min)
    python bench/launch_hosts.py --sizes 4,8 --fanouts 2 --runs 1 --no-write
    python bench/launch_hosts.py --slurm --sizes 4,8 --fanouts 2   # gproc launch --slurm under salloc
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tests.netbed import NetBed, problem

from launch import int_list
from results import machine, write_section

GPROC = [sys.executable, "-m", "gproc"]


def levels(n: int, k: int) -> list[int]:
    """How many children the busiest starter of each level of the tree starts (level 1: the launcher)."""
    out, placed, width = [], 0, 1
    while placed < n:
        kids = min(width * k, n - placed)
        out.append(min(k, kids))
        placed += kids
        width = kids
    return out


def one(bed: NetBed, n: int, k: int, env: dict[str, str]) -> dict[str, float]:
    args = ["launch", "--ssh", f"h[1-{n}]", "--fanout", str(k), "--listen", f"{bed.gateway}:0"]
    args += ["--bin-root", "/run/xproc"]
    t = time.perf_counter()
    r = subprocess.run([*GPROC, *args], env=env, capture_output=True, text=True, timeout=300)
    up = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"launch of {n} at fanout {k} failed: {r.stdout}{r.stderr}")
    p = subprocess.run([*GPROC, "ping", "--json"], env=env, capture_output=True, text=True, timeout=60)
    ok = json.loads(p.stdout)["counts"].get("ok", 0) if p.returncode == 0 else 0
    t = time.perf_counter()
    s = subprocess.run([*GPROC, "launch", "--stop"], env=env, capture_output=True, text=True, timeout=300)
    stop = time.perf_counter() - t
    if ok != n or s.returncode != 0:
        raise RuntimeError(f"{ok} of {n} answered; stop: {s.stdout}{s.stderr}")
    if any(bed.daemons(h) for h in bed.hosts):
        raise RuntimeError("daemons left after --stop")
    return {"up": up, "stop": stop}


def ssh_floor(bed: NetBed, n: int, runs: int) -> dict[str, float]:
    """Peers: one ssh login running ``true`` (on h1), and pdsh running ``true`` on all N hosts over ssh
    at fanout N (one login each, nothing started: a floor for any launch over ssh)."""
    env = dict(os.environ, PDSH_SSH_ARGS_APPEND=f"-F {bed.ssh_config}")
    one, pdsh = [], []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([*bed.ssh_command, "h1", "true"], check=True, capture_output=True, timeout=60)
        one.append(time.perf_counter() - t)
        if shutil.which("pdsh"):
            t = time.perf_counter()
            argv = ["pdsh", "-R", "ssh", "-f", str(n), "-w", f"h[1-{n}]", "true"]
            subprocess.run(argv, env=env, check=True, capture_output=True, timeout=120)
            pdsh.append(time.perf_counter() - t)
    return {"ssh": statistics.median(one), "pdsh": statistics.median(pdsh) if pdsh else math.nan}


def fit(points: list[dict[str, Any]]) -> tuple[float, float, float]:
    """(t0, hop, child) in seconds, least squares over every point's median launch time."""
    rows = [[1.0, len(levels(p["n"], p["k"])), sum(levels(p["n"], p["k"]))] for p in points]
    sol = np.linalg.lstsq(np.array(rows), np.array([p["up"] for p in points]), rcond=None)[0]
    return float(sol[0]), float(sol[1]), float(sol[2])


def model(n: int, k: int, t0: float, hop: float, child: float) -> float:
    lv = levels(n, k)
    return t0 + len(lv) * hop + sum(lv) * child


def report(points: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    t0, hop, child = fit(points)
    out = [
        "## Launch over ssh: `gproc launch --ssh` onto N namespace hosts\n",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}  ",
        f"Machine: {meta['machine']}  ",
        f"Medians of {meta['runs']} runs; times in seconds. Hosts: network namespaces on a bridge, each with "
        "its own sshd (tests/netbed.py), all on this machine's cores: every daemon and agent of a launch "
        "starts on the same 2 CPUs, so a host's start costs more the more start at once (unlike real machines). "
        "up: the whole `gproc launch` command (starts a master, returns when every daemon joined it; every "
        "node then answered `gproc ping`). Daemons from the venv (no self-shipping yet). flat: fanout N. "
        "Peers, same bed, same run: ssh: one `ssh h1 true`; pdsh: `pdsh -R ssh -f N -w h[1-N] true` (one "
        "login per host, nothing started: a floor for any launch over ssh); x pdsh: up / pdsh.\n",
        "| N | fanout | levels | up | stop | model | ssh | pdsh | x pdsh |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        shape = " (flat)" if p["k"] >= p["n"] else ""
        out.append(
            f"| {p['n']} | {p['k']}{shape} | {len(levels(p['n'], p['k']))} | {p['up']:.2f} | {p['stop']:.2f} "
            f"| {model(p['n'], p['k'], t0, hop, child):.2f} | {p['ssh']:.2f} | {p['pdsh']:.2f} "
            f"| {p['up'] / p['pdsh']:.1f} |"
        )
    proj = [(n, k, model(n, k, t0, hop, child), len(levels(n, k))) for n in (1000, 10_000) for k in (16, 32)]
    out += [
        "",
        f"Fit (t = t0 + levels x hop + sum of per-level children x child): t0 {t0:.2f} s, "
        f"hop {hop:.2f} s, child {child:.3f} s.",
        *(
            [f"The fit is not meaningful (t0 {t0:.2f} s < 0 or child < 0): CPU contention dominates these points."]
            if t0 < 0 or child < 0
            else []
        ),
        "Projection: " + "; ".join(f"{n:,} hosts at fanout {k}: {t:.1f} s ({lv} levels)" for n, k, t, lv in proj) + ".",
        "",
    ]
    n16 = [p for p in points if p["n"] == 16]
    if n16:
        best = min(n16, key=lambda p: p["up"])
        met = "met" if best["up"] <= 5.0 else "**not met**"
        out.append(f"Target: 16 hosts up in <= 5 s from a warm store: {best['up']:.2f} s (fanout {best['k']}) — {met}.")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--sizes", type=int_list, default=[4, 8, 16], help="hosts (default 4,8,16)")
    ap.add_argument("--fanouts", type=int_list, default=[2, 4], help="tree fanouts besides flat (default 2,4)")
    ap.add_argument("--runs", type=int, default=3, help="repetitions (>= 1)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    ap.add_argument("--slurm", action="store_true", help="gproc launch --slurm under salloc on a Slurm bed instead")
    args = ap.parse_args()
    why = problem()
    if why:
        print(f"launch_hosts: cannot build hosts here: {why}", file=sys.stderr)
        return 1
    meta = {
        "command": shlex.join(["python", "bench/launch_hosts.py", *sys.argv[1:]]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(load=True),
        "runs": args.runs,
    }
    if args.slurm:
        return slurm_main(args, meta)
    d = tempfile.mkdtemp(prefix="gproc-bench-launch-")
    env = dict(os.environ, GPROC_MASTER=os.path.join(d, "m.sock"), GPROC_KEY=os.path.join(d, "cluster.key"))
    subprocess.run([*GPROC, "keygen"], env=env, check=True, capture_output=True, timeout=60)
    points: list[dict[str, Any]] = []
    try:
        for n in args.sizes:
            bed = NetBed([f"h{i}" for i in range(1, n + 1)])
            try:
                bed.up()
                env["GPROC_SSH"] = shlex.join(bed.ssh_command)
                floor = ssh_floor(bed, n, args.runs)
                for k in sorted({n, *(f for f in args.fanouts if f < n)}, reverse=True):
                    runs = []
                    for _ in range(args.runs):
                        runs.append(one(bed, n, k, env))
                    pt = {"n": n, "k": k, **floor, **{m: statistics.median(r[m] for r in runs) for m in ("up", "stop")}}
                    print(f"N {n} fanout {k}: up {pt['up']:.2f} s, stop {pt['stop']:.2f} s", file=sys.stderr)
                    points.append(pt)
            finally:
                bed.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    if len(points) < 3:
        print("launch_hosts: need at least 3 points to fit the model", file=sys.stderr)
        return 1
    text = report(points, meta)
    print(text)
    if not args.no_write:
        print(f"written to {write_section('launch_hosts', text)}", file=sys.stderr)
    return 0


# ---- under Slurm: `gproc launch --slurm` inside `salloc -N N` on the Slurm bed (tests/slurmbed.py) ----

# what salloc runs: times (s) of srun's floor, the launch, a ping of every node and the stop, one per line
SLURM_RUN = """
t() { date +%s.%N; }
a=$(t); srun -N "$N" --ntasks-per-node=1 true; b=$(t)
gproc launch --slurm --fanout "$K" --listen "$LISTEN" --bin-root /run/xproc >&2 || exit 1; c=$(t)
gproc ping --json > "$OUT/ping"; d=$(t)
gproc launch --stop >&2 || exit 1; e=$(t)
echo "$a $b $c $d $e"
"""


def one_slurm(bed: Any, n: int, k: int, env: dict[str, str]) -> dict[str, float]:
    env = {**env, "N": str(n), "K": str(k), "LISTEN": f"{bed.net.gateway}:0"}
    t = time.perf_counter()
    r = subprocess.run(
        ["salloc", "-N", str(n), "sh", "-c", SLURM_RUN], env=env, capture_output=True, text=True, timeout=300
    )
    whole = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"salloc -N {n} ... launch --slurm at fanout {k} failed: {r.stdout}{r.stderr}")
    a, b, c, d, e = map(float, r.stdout.split()[-5:])
    with open(os.path.join(env["OUT"], "ping")) as f:
        ok = json.load(f)["counts"].get("ok", 0)
    if ok != n or any(p for h in bed.nodes for p in bed.net.daemons(h) if p not in _slurmd_pids(bed, h)):
        raise RuntimeError(f"{ok} of {n} answered, or daemons left after --stop")
    return {"srun": b - a, "up": c - b, "ping": d - c, "stop": e - d, "salloc": whole - (e - a)}


def _slurmd_pids(bed: Any, host: str) -> set[int]:
    return {p.pid for w, p in bed.procs.items() if w == f"slurmd {host}"}


def slurm_report(points: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    out = [
        "## Launch under Slurm: `gproc launch --slurm` inside `salloc -N N`\n",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}  ",
        f"Machine: {meta['machine']}  ",
        f"Medians of {meta['runs']} runs; times in seconds. Nodes: tests/slurmbed.py, Debian's Slurm 22.05 "
        "(slurmctld on the bridge, a slurmd in each network-namespace host of tests/netbed.py, all on this "
        "machine's 2 CPUs). up: the whole `gproc launch --slurm` command inside the allocation (starts a "
        "master, one srun step of a task per node, returns when every daemon joined; every node then "
        "answered `gproc ping`). srun: `srun -N N --ntasks-per-node=1 true` in the same allocation just "
        "before (the floor of any launch through srun); x srun: up / srun. stop: `gproc launch --stop`. "
        "salloc: the rest of the `salloc` command (granting and releasing the allocation).\n",
        "| N | fanout | up | srun | x srun | stop | salloc |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        shape = " (flat)" if p["k"] >= p["n"] else ""
        out.append(
            f"| {p['n']} | {p['k']}{shape} | {p['up']:.2f} | {p['srun']:.2f} | {p['up'] / p['srun']:.1f} "
            f"| {p['stop']:.2f} | {p['salloc']:.2f} |"
        )
    return "\n".join(out) + "\n"


def slurm_main(args: argparse.Namespace, meta: dict[str, Any]) -> int:
    from tests.slurmbed import problem as slurm_problem
    from tests.slurmbed import slurmbed

    why = slurm_problem()
    if why:
        print(f"launch_hosts: cannot build a Slurm bed here: {why}", file=sys.stderr)
        return 1
    d = tempfile.mkdtemp(prefix="gproc-bench-slurm-")
    points: list[dict[str, Any]] = []
    try:
        for n in args.sizes:
            with slurmbed([f"h{i}" for i in range(1, n + 1)]) as bed:
                env = dict(bed.env, GPROC_MASTER=os.path.join(d, "m.sock"), GPROC_KEY=os.path.join(d, "k"), OUT=d)
                env["PATH"] = os.path.dirname(sys.executable) + ":" + env.get("PATH", "/usr/bin:/bin")
                if not os.path.exists(env["GPROC_KEY"]):
                    subprocess.run([*GPROC, "keygen"], env=env, check=True, capture_output=True, timeout=60)
                for k in sorted({n, *(f for f in args.fanouts if f < n)}, reverse=True):
                    runs = [one_slurm(bed, n, k, env) for _ in range(args.runs)]
                    pt = {"n": n, "k": k, **{m: statistics.median(r[m] for r in runs) for m in runs[0]}}
                    print(f"N {n} fanout {k}: up {pt['up']:.2f} s, srun {pt['srun']:.2f} s", file=sys.stderr)
                    points.append(pt)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    text = slurm_report(points, meta)
    print(text)
    if not args.no_write:
        print(f"written to {write_section('launch_slurm', text)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
