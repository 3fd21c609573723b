"""Mount benchmark: ``ls DIR/nodes`` and ``cat DIR/all/PATH/*`` through ``gproc mount`` on N local nodes,
against the client API calls they make (the floor: the same request without FUSE and a process).

For each N (a local cluster, ``gproc.local.up``, fanout 16), a mount (``gproc mount -f``, as a user
would run it) and, per run, wall time of:
- ``ls DIR/nodes`` (``--cache 0`` mount: every listing asks the master) against ``select`` through
  the API;
- ``cat DIR/all/D/%h/fRUN/*``: a small file that node0 holds differently from the rest, so two
  classes, six levels deep (each level one request through the tree: the first look at a path asks
  every node what it is); a fresh file each run after the cache's time, so nothing is cached;
  against ``Group.cat`` of the same path (one request);
- ``cat DIR/all/etc/hostname/*``: one class, two levels, cold as well.
Medians of ``--runs``.

    python bench/mount.py [--nodes 1024] [--runs 5] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from gproc import local
from gproc.client import Cluster
from results import machine, publish

TARGET_LS, TARGET_CAT = 0.5, 1.0
CACHE = 2.0  # the mount's cache time for the cat runs (its default)


def timed(argv: list[str]) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, check=True).stdout
    return time.perf_counter() - t0, out


async def api_select(sock: str) -> float:
    t0 = time.perf_counter()
    await Cluster(sock).request("select", nodes="**")
    return time.perf_counter() - t0


async def api_ping(sock: str) -> float:
    t0 = time.perf_counter()
    await Cluster(sock).ping()
    return time.perf_counter() - t0


async def api_cat(sock: str, path: str) -> float:
    t0 = time.perf_counter()
    await Cluster(sock).group("**").cat(path)
    return time.perf_counter() - t0


def mount(sock: str, where: str, cache: float) -> subprocess.Popen[bytes]:
    env = {**os.environ, "GPROC_MASTER": sock}
    p = subprocess.Popen([sys.executable, "-m", "gproc", "mount", "-f", "--cache", str(cache), where], env=env)
    deadline = time.monotonic() + 120
    while not os.path.ismount(where):
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            raise SystemExit("the mount did not come up")
        time.sleep(0.05)
    return p


def unmount(p: subprocess.Popen[bytes], where: str) -> None:
    subprocess.run(["fusermount3", "-u", where], check=False)
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def one(n: int, runs: int) -> list[str]:
    work = tempfile.mkdtemp(prefix="gbm-", dir="/tmp")
    rec = local.up(n, fanout=16, socket=os.path.join(work, "g"))
    rows: list[str] = []
    try:
        data = os.path.join(work, "d")
        for i in range(n):
            os.makedirs(os.path.join(data, f"node{i}"))
            for run in range(runs + 1):
                with open(os.path.join(data, f"node{i}", f"f{run}"), "w") as f:
                    f.write("odd\n" if i == 0 else "1.5 2.0 1.8 3/512 4242\n")
        # ls: a mount that caches nothing, so each ls asks the master
        where = os.path.join(work, "mnt0")
        os.mkdir(where)
        p = mount(rec.socket, where, 0.0)
        try:
            timed(["ls", os.path.join(where, "nodes")])
            ls, sel = [], []
            for _ in range(runs):
                dt, out = timed(["ls", os.path.join(where, "nodes")])
                if len(out.split()) != n:
                    raise SystemExit(f"ls listed {len(out.split())} nodes, not {n}")
                ls.append(dt)
                sel.append(asyncio.run(api_select(rec.socket)))
        finally:
            unmount(p, where)
        # cat: the default cache, cold each run (a fresh file; the cache's time passed since the last)
        where = os.path.join(work, "mnt")
        os.mkdir(where)
        p = mount(rec.socket, where, CACHE)
        try:
            merged = os.path.join(where, "all", data.lstrip("/"), "%h")
            timed(["sh", "-c", f"cat '{merged}/f{runs}'/*"])
            cat, api, host, ping = [], [], [], []
            for run in range(runs):
                time.sleep(CACHE + 0.5)
                dt, out = timed(["sh", "-c", f"cat '{merged}/f{run}'/*"])
                if sorted(out.decode().splitlines()) != ["1.5 2.0 1.8 3/512 4242", "odd"]:
                    why = timed(["sh", "-c", f"ls -a '{merged}/f{run}'; cat '{merged}/f{run}/.errors' 2>&1 || true"])[1]
                    raise SystemExit(f"cat gave {out[:200]!r}; the class directory: {why[:2000]!r}")
                cat.append(dt)
                api.append(asyncio.run(api_cat(rec.socket, os.path.join(data, "%h", f"f{run}"))))
                ping.append(asyncio.run(api_ping(rec.socket)))
                time.sleep(CACHE + 0.5)
                host.append(timed(["sh", "-c", f"cat {where}/all/etc/hostname/*"])[0])
        finally:
            unmount(p, where)
        ls_m, sel_m, cat_m, api_m, host_m, ping_m = (statistics.median(x) for x in (ls, sel, cat, api, host, ping))
        met = {True: "yes", False: "NO"}
        rows.append(f"| {n} | `ls DIR/nodes` | {ls_m * 1000:.0f} ms | {sel_m * 1000:.0f} ms (select) "
                    f"| {TARGET_LS * 1000:.0f} ms | {met[ls_m <= TARGET_LS]} |")  # fmt: skip
        rows.append(f"| {n} | `cat DIR/all/PATH/*` (2 classes) | {cat_m * 1000:.0f} ms | {api_m * 1000:.0f} ms "
                    f"(Group.cat) | {TARGET_CAT * 1000:.0f} ms | {met[cat_m <= TARGET_CAT]} |")  # fmt: skip
        rows.append(f"| {n} | `cat DIR/all/etc/hostname/*` (1 class) | {host_m * 1000:.0f} ms "
                    f"| {ping_m * 1000:.0f} ms (ping) | {TARGET_CAT * 1000:.0f} ms "
                    f"| {met[host_m <= TARGET_CAT]} |")  # fmt: skip
        for r in rows:
            print(r, flush=True)
    finally:
        local.down(rec.socket, quiet=True)
        shutil.rmtree(work, ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", default="1024")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    rows = ["| N | what | through the mount | the API call alone | target | met |", "|---:|---|---:|---:|---:|---|"]
    for n in [int(x) for x in a.nodes.split(",")]:
        rows += one(n, a.runs)
    cmd = "python bench/mount.py " + " ".join(sys.argv[1:])
    text = "\n".join(
        [f"`{cmd}` on {machine(load=True)}; medians of {a.runs} runs, wall time of the `ls`/`sh -c cat` "
         "process", "", *rows, ""]
    )  # fmt: skip
    publish("mount", text, write=not a.no_write)


if __name__ == "__main__":
    main()
