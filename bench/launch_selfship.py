"""``gproc launch --ssh`` when gproc ships itself: onto N namespace hosts, cold (the runtime moves) and
warm (the hosts hold it), beside the same launch from the venv, in one run on one bed.

Each host of the bed (tests/netbed.py) has its own empty tmpfs where runtimes are kept, so nothing is
shared between hosts through this machine's file system. Per N and fanout, alternating:
``venv``: the hosts run the agent and daemon from this machine's venv (``--ship auto``, they have it);
``cold``: ``--ship always`` into a runtime directory no host has yet (every host receives the runtime,
from its parent in the tree); ``warm``: ``--ship always`` again into that directory (nothing moves).
Each launch is timed as the whole command (master start to every daemon joined), checked with
``gproc ping`` and stopped. Medians of ``--runs``. Needs root (see tests/netbed.py).

    python bench/launch_selfship.py                 # N = 4, 8, 16; fanouts 4 and flat; 3 runs
    python bench/launch_selfship.py --sizes 4 --fanouts 4 --runs 1 --no-write
"""

from __future__ import annotations

import argparse
import json
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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tests.netbed import NetBed, problem

from launch import int_list
from results import machine, write_section

GPROC = [sys.executable, "-m", "gproc"]


def launch(bed: NetBed, n: int, k: int, env: dict[str, str], extra: list[str]) -> tuple[float, int]:
    """(seconds until every daemon joined, runtime bytes moved) for one launch, then stop it."""
    args = ["launch", "--ssh", f"h[1-{n}]", "--fanout", str(k), "--listen", f"{bed.gateway}:0"]
    args += ["--bin-root", "/run/xproc", "--json", *extra]
    t = time.perf_counter()
    r = subprocess.run([*GPROC, *args], env=env, capture_output=True, text=True, timeout=600)
    up = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"launch of {n} at fanout {k} {extra} failed: {r.stdout}{r.stderr}")
    moved = sum(json.loads(line).get("shipped", 0) for line in r.stdout.splitlines())
    p = subprocess.run([*GPROC, "ping", "--json"], env=env, capture_output=True, text=True, timeout=60)
    ok = json.loads(p.stdout)["counts"].get("ok", 0) if p.returncode == 0 else 0
    s = subprocess.run([*GPROC, "launch", "--stop"], env=env, capture_output=True, text=True, timeout=300)
    if ok != n or s.returncode != 0 or any(bed.daemons(h) for h in bed.hosts):
        raise RuntimeError(f"{ok} of {n} answered; stop: {s.stdout}{s.stderr}")
    return up, moved


def report(points: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    out = [
        "## Launch over ssh when gproc ships itself\n",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}  ",
        f"Machine: {meta['machine']}  ",
        f"Runtime: {meta['runtime']['files']:,} files, {meta['runtime']['bytes'] / 2**20:.0f} MiB (the interpreter, "
        "its loader and libraries, the standard library without tests, gproc and its dependencies).  ",
        f"Medians of {meta['runs']} runs, seconds, the whole `gproc launch` command until every daemon joined. "
        "Namespace hosts on one bridge, all on this machine's cores. venv: the hosts run gproc from this "
        "machine's venv; cold: `--ship always` into a runtime directory no host has (each host receives the "
        "runtime from its parent); warm: the same again (the hosts hold it, nothing moves). MiB moved: "
        "runtime bytes all hosts received in the cold launch.\n",
        "| N | fanout | venv | warm | cold | warm / venv | MiB moved (cold) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        shape = " (flat)" if p["k"] >= p["n"] else ""
        out.append(
            f"| {p['n']} | {p['k']}{shape} | {p['venv']:.2f} | {p['warm']:.2f} | {p['cold']:.2f} "
            f"| {p['warm'] / p['venv']:.2f} | {p['moved'] / 2**20:,.0f} |"
        )
    n16 = [p for p in points if p["n"] == 16]
    if n16:
        warm = min(n16, key=lambda p: p["warm"])
        cold = min(n16, key=lambda p: p["cold"])
        out += [
            "",
            f"Targets for 16 hosts: <= 5 s from a warm store: {warm['warm']:.2f} s "
            f"({'met' if warm['warm'] <= 5 else '**not met**'}); <= 15 s when gproc ships itself: "
            f"{cold['cold']:.2f} s ({'met' if cold['cold'] <= 15 else '**not met**'}).",
        ]
    return "\n".join(out) + "\n"


def main() -> int:
    from gproc import runtime

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--sizes", type=int_list, default=[4, 8, 16], help="hosts (default 4,8,16)")
    ap.add_argument("--fanouts", type=int_list, default=[4], help="tree fanouts besides flat (default 4)")
    ap.add_argument("--runs", type=int, default=3, help="repetitions (>= 1)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = ap.parse_args()
    why = problem()
    if why:
        print(f"launch_selfship: cannot build hosts here: {why}", file=sys.stderr)
        return 1
    meta = {
        "command": shlex.join(["python", "bench/launch_selfship.py", *sys.argv[1:]]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(load=True),
        "runs": args.runs,
        "runtime": runtime.describe(runtime.collect()),
    }
    d = tempfile.mkdtemp(prefix="gproc-bench-selfship-")
    env = dict(os.environ, GPROC_MASTER=os.path.join(d, "m.sock"), GPROC_KEY=os.path.join(d, "cluster.key"))
    subprocess.run([*GPROC, "keygen"], env=env, check=True, capture_output=True, timeout=60)
    rtdir = os.path.join(d, "runtimes")  # an empty tmpfs of its own on every host
    os.makedirs(rtdir)
    points: list[dict[str, Any]] = []
    try:
        for n in args.sizes:
            hosts = [f"h{i}" for i in range(1, n + 1)]
            bed = NetBed(hosts, hide={h: [rtdir] for h in hosts})
            try:
                bed.up()
                env["GPROC_SSH"] = shlex.join(bed.ssh_command)
                for k in sorted({n, *(f for f in args.fanouts if f < n)}, reverse=True):
                    got: dict[str, list[float]] = {"venv": [], "cold": [], "warm": [], "moved": []}
                    for i in range(args.runs):
                        fresh = ["--ship", "always", "--runtime-dir", os.path.join(rtdir, f"n{n}k{k}r{i}")]
                        got["venv"].append(launch(bed, n, k, env, ["--ship", "auto"])[0])
                        up, moved = launch(bed, n, k, env, fresh)
                        got["cold"].append(up)
                        got["moved"].append(moved)
                        got["warm"].append(launch(bed, n, k, env, fresh)[0])
                    pt = {"n": n, "k": k, **{m: statistics.median(v) for m, v in got.items()}}
                    print(
                        f"N {n} fanout {k}: venv {pt['venv']:.2f} s, warm {pt['warm']:.2f} s, cold {pt['cold']:.2f} s",
                        file=sys.stderr,
                    )
                    points.append(pt)
            finally:
                bed.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    text = report(points, meta)
    print(text)
    if not args.no_write:
        print(f"written to {write_section('launch_selfship', text)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
