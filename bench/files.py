"""Files benchmark (issue 21), every tool side by side in one run on one machine.

Each case starts a local cluster (``gproc.local.up``, fanout 16) whose nodes each have their own
directory ``DIR/NODE`` (``%h`` for gproc; for the peers, an sshd of the benchmark's own on loopback
whose forced command enters the node's directory: ``bench/sshpeers.py``).

- ``--cp N:MiB,…``: a file of fresh random bytes (no node has it in its store) copied to every node
  by ``Cluster.group('**').cp``; by N ``cp`` processes started at once (every byte written N times,
  no network: the floor on one machine); by pdcp and by ``clush --copy``, each at the best of
  ``--peer-fanouts``. Then a tree of ``--tree-files`` small files (1 KiB each, 100 per directory)
  the same ways (``-r``) on the first case's N.
- ``--sync N:MiB``: the file on every node, 1 MiB of it changed at an unaligned offset here, then
  ``gproc sync`` (time, the largest number of bytes any tree link carried, from the links' own
  counters, and signature bytes at the master) against ``rsync -a --no-whole-file`` (rsync's delta
  algorithm; locally it would copy whole files) run to each destination at once.
- ``stat --agg sum`` and ``cat --agg hist`` of a per-node file at every cp case's N: reply bytes at the
  master and time, against a no-op (``ping``).
- ``--gather N:MiB``: one identical file on N nodes gathered here: bytes that crossed the master's
  links (its own frame counters) against the file's size.

Medians of ``--runs``.

    python bench/files.py [--cp 64:1,64:64,256:1,256:16,16:256] [--sync 16:256] [--gather 64:64]
                          [--tree-files 10000] [--peer-fanouts 16,64] [--runs 1] [--no-write]
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
from collections.abc import Callable
from functools import partial
from typing import Any

from ClusterShell.NodeSet import NodeSet

from gproc import local
from gproc.client import Cluster
from results import machine, publish
from sshpeers import Peers

MiB = 1 << 20
CLUSH = "/usr/bin/clush"


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_all(argvs: list[list[str]], **kw: Any) -> None:
    procs = [subprocess.Popen(a, **kw) for a in argvs]
    bad = [p.args for p in procs if p.wait() != 0]
    if bad:
        raise SystemExit(f"failed: {bad[0]!r}")


def check(statuses: list[Any], what: str) -> None:
    bad = [s for s in statuses if s.status]
    if bad:
        raise SystemExit(f"{what} failed: {bad}")


def random_file(path: str, size: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
        f.write(os.urandom(size % MiB))


def make_tree(top: str, files: int) -> None:
    for i in range(files):
        d = os.path.join(top, f"d{i // 100:03d}")
        if i % 100 == 0:
            os.makedirs(d)
        with open(os.path.join(d, f"f{i % 100:02d}"), "wb") as f:
            f.write(os.urandom(1024))


def clear(dirs: list[str], name: str) -> None:
    for d in dirs:
        p = os.path.join(d, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        elif os.path.lexists(p):
            os.unlink(p)


class Case:
    """A local cluster of ``n`` nodes, their directories, and (with ``peers``) the sshd for pdcp/clush."""

    def __init__(self, n: int, peers: bool) -> None:
        self.n = n
        self.work = tempfile.mkdtemp(prefix="gbf-", dir="/tmp")
        self.rec = local.up(n, fanout=16, socket=os.path.join(self.work, "g"))
        self.names = [f"node{i}" for i in range(n)]
        self.dirs = [os.path.join(self.work, "d", name) for name in self.names]
        for d in self.dirs:
            os.makedirs(d)
        try:
            self.peers = Peers(self.names, dict(zip(self.names, self.dirs, strict=True))).start() if peers else None
        except BaseException:
            local.down(self.rec.socket, quiet=True)
            shutil.rmtree(self.work, ignore_errors=True)
            raise

    def close(self) -> None:
        try:
            if self.peers is not None:
                self.peers.stop()
        finally:
            local.down(self.rec.socket, quiet=True)
            shutil.rmtree(self.work, ignore_errors=True)

    def dest(self, name: str) -> str:
        return os.path.join(self.work, "d", "%h", name)

    def gproc_cp(self, src: str, name: str, recursive: bool = False) -> float:
        async def go() -> None:
            check(await Cluster(self.rec.socket).group("**").cp([src], self.dest(name), recursive=recursive), "cp")

        return timed(lambda: asyncio.run(go()))

    def parallel_cp(self, src: str, name: str, recursive: bool = False) -> float:
        flags = ["-a"] if recursive else ["--preserve=mode,timestamps"]
        return timed(lambda: run_all([["cp", *flags, src, os.path.join(d, name)] for d in self.dirs]))

    def pdcp(self, src: str, name: str, fanout: int, recursive: bool = False) -> float:
        assert self.peers is not None
        argv = ["pdcp", "-R", "ssh", "-f", str(fanout), *(["-r"] if recursive else []), "-p",
                "-w", str(NodeSet.fromlist(self.names)), src, name]  # fmt: skip
        return timed(lambda: run_all([argv], env=self.peers.env() if self.peers else None))

    def clush(self, src: str, name: str, fanout: int, recursive: bool = False) -> float:
        assert self.peers is not None
        argv = [CLUSH, "-f", str(fanout), "-o", f"-F {self.peers.config}", "-w", str(NodeSet.fromlist(self.names)),
                "-p", "--copy", src, "--dest", name]  # fmt: skip
        return timed(lambda: run_all([argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # its progress


def best(times: dict[int, float]) -> tuple[float, int]:
    fanout = min(times, key=lambda f: times[f])
    return times[fanout], fanout


def copy_rows(c: Case, src: str, label: str, a: argparse.Namespace, recursive: bool) -> list[str]:
    """gproc cp, parallel cp, pdcp and clush --copy of ``src`` to every node's directory."""
    g_t, c_t = [], []
    peer: dict[str, dict[int, list[float]]] = {"pdcp": {}, "clush": {}}
    fanouts = [f for f in (int(x) for x in a.peer_fanouts.split(",")) if f <= c.n] or [c.n]
    for run in range(a.runs):
        g_t.append(c.gproc_cp(src, f"g{run}", recursive))
        clear(c.dirs, f"g{run}")
        c_t.append(c.parallel_cp(src, f"c{run}", recursive))
        clear(c.dirs, f"c{run}")
        if c.peers is not None:
            for f in fanouts:
                for tool, name in (("pdcp", f"p{run}"), ("clush", f"s{run}")):
                    if recursive:  # both copy a directory into an existing one
                        for d in c.dirs:
                            os.makedirs(os.path.join(d, name))
                    copy = c.pdcp if tool == "pdcp" else c.clush
                    peer[tool].setdefault(f, []).append(copy(src, name, f, recursive))
                    clear(c.dirs, name)
    g, cp = statistics.median(g_t), statistics.median(c_t)
    cells = [f"{g:.2f} s", f"{cp:.2f} s ({cp / g:.2f})"]
    for tool in ("pdcp", "clush"):
        if peer[tool]:
            t, f = best({f: statistics.median(v) for f, v in peer[tool].items()})
            cells.append(f"{t:.2f} s at -f {f} ({t / g:.2f})")
        else:
            cells.append("-")
    return [f"| {c.n} | {label} | " + " | ".join(cells) + " |"]


def agg_rows(c: Case, runs: int) -> list[str]:
    """``stat --agg sum`` and ``cat --agg hist`` against ping: reply bytes at the master, time."""
    for i, d in enumerate(c.dirs):
        with open(os.path.join(d, "num"), "w") as f:
            f.write(f"{i}\n")

    async def go() -> list[str]:
        cl = Cluster(c.rec.socket)
        g = cl.group("**")
        await cl.ping()
        out = []
        for what in ("stat", "cat"):
            ts, ps, rep = [], [], 0
            for _ in range(max(runs, 5)):
                t0 = time.perf_counter()
                if what == "stat":
                    (res,) = await g.stat(c.dest("num"), agg="sum")
                else:
                    (res,) = await g.cat(c.dest("num"), agg="hist", edges=[1, 10, 100, 1000])
                ts.append(time.perf_counter() - t0)
                rep = res.rep_bytes
                t0 = time.perf_counter()
                await cl.ping()
                ps.append(time.perf_counter() - t0)
            t, p = statistics.median(ts), statistics.median(ps)
            label = "stat --agg sum" if what == "stat" else "cat --agg hist"
            out.append(f"| {c.n} | {label} | {rep} | {t * 1000:.1f} ms | {p * 1000:.1f} ms | {t / p:.2f} |")
        return out

    return asyncio.run(go())


def link_counters(sock: str) -> dict[str, int]:
    async def go() -> dict[str, Any]:
        return dict(await Cluster(sock).request("stats", links=True))

    return {n: row["bytes_in"] for row in asyncio.run(go())["links"] for n in NodeSet(row["nodes"])}


def sync_rows(c: Case, size: int, runs: int) -> list[str]:
    """gproc sync against parallel rsync, after 1 MiB of a ``size`` file changed."""
    src = os.path.join(c.work, "sync-src")
    random_file(src, size)
    asyncio.run(_cp_quiet(c, src, "s"))
    run_all([["cp", "-a", src, os.path.join(d, "r")] for d in c.dirs])
    rows = []
    for run in range(runs):
        with open(src, "r+b") as f:
            f.seek(size // 3 + 12345 + run * 2 * MiB)
            f.write(os.urandom(MiB))
        os.utime(src, ns=(time.time_ns() + run, time.time_ns() + run))
        before = link_counters(c.rec.socket)
        g = Cluster(c.rec.socket).group("**")
        t0 = time.perf_counter()
        check(asyncio.run(g.sync(src, c.dest("s"))), "sync")
        gt = time.perf_counter() - t0
        after = link_counters(c.rec.socket)
        per_link = max(after[n] - before[n] for n in after)
        rt = timed(lambda: run_all([["rsync", "-a", "--no-whole-file", src, os.path.join(d, "r")] for d in c.dirs]))
        rows.append(
            f"| {c.n} | {size // MiB} MiB | {gt:.2f} s | {per_link / MiB:.2f} MiB | {g.synced['sig_bytes']} |"
            f" {g.shipped.get('bytes', 0) / MiB:.2f} MiB | {rt:.2f} s ({rt / gt:.2f}) |"
        )
        print(rows[-1], flush=True)
    return rows


async def _cp_quiet(c: Case, src: str, name: str) -> None:
    check(await Cluster(c.rec.socket).group("**").cp([src], c.dest(name)), "cp")


def gather_rows(c: Case, size: int) -> list[str]:
    same = os.path.join(c.work, "same")
    random_file(same, size)
    for d in c.dirs:
        shutil.copyfile(same, os.path.join(d, "same"))
    out = os.path.join(c.work, "gathered")

    async def go() -> tuple[int, float]:
        cl = Cluster(c.rec.socket)
        before = (await cl.stats())["bytes_in"]
        t0 = time.perf_counter()
        check(await cl.group("**").gather([c.dest("same")], out), "gather")
        dt = time.perf_counter() - t0
        return (await cl.stats())["bytes_in"] - before, dt

    crossed, dt = asyncio.run(go())
    shutil.rmtree(out)
    return [f"| {c.n} | {size // MiB} MiB | {crossed / MiB:.2f} MiB ({crossed / size:.3f} x) | {dt:.2f} s |"]


def attempt(rows: Callable[[], list[str]], n: int, what: str) -> list[str]:
    """The rows of one measurement, or one row saying why it failed (the run goes on)."""
    try:
        return rows()
    except SystemExit as e:
        return [f"| {n} | {what} | failed: {str(e)[:200]} |"]


def pairs(text: str) -> list[tuple[int, int]]:
    return [(int(n), int(m)) for n, m in (x.split(":") for x in text.split(",") if x)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cp", default="64:1,64:64,256:1,256:16,16:256", help="N:MiB cases of cp")
    ap.add_argument("--sync", default="16:256", help="N:MiB cases of sync")
    ap.add_argument("--gather", default="64:64", help="N:MiB cases of gather")
    ap.add_argument("--tree-files", type=int, default=10000)
    ap.add_argument("--peer-fanouts", default="16,64")
    ap.add_argument("--no-peers", action="store_true", help="skip pdcp and clush --copy")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    started = f"`python bench/files.py {' '.join(sys.argv[1:])}` on {machine(load=True)}"
    cp_rows = ["| N | what | gproc cp | parallel cp (gproc speed / cp's) | pdcp (its time / gproc's) | "
               "clush --copy (its time / gproc's) |", "|---:|---|---:|---:|---:|---:|"]  # fmt: skip
    agg = ["| N | op | reply bytes at the master | time | ping | time / ping |", "|---:|---|---:|---:|---:|---:|"]
    sync = ["| N | file | gproc sync | most bytes on one tree link | signature bytes at the master | "
            "bytes from the client | parallel rsync (its time / gproc's) |",
            "|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    gather = ["| N | identical file | crossed the master's links | time |", "|---:|---:|---:|---:|"]
    by_n: dict[int, list[int]] = {}
    for n, mib in pairs(a.cp):
        by_n.setdefault(n, []).append(mib)
    tree_n = next(iter(by_n), 16)
    for n, sizes in by_n.items():
        c = Case(n, peers=not a.no_peers)
        try:
            for mib in sizes:
                src = os.path.join(c.work, "src")
                random_file(src, mib * MiB)
                cp_rows += attempt(partial(copy_rows, c, src, f"{mib} MiB file", a, False), n, f"{mib} MiB")
                print(cp_rows[-1], flush=True)
                os.unlink(src)
            if n == tree_n and a.tree_files:
                top = os.path.join(c.work, "tree")
                make_tree(top, a.tree_files)
                label = f"{a.tree_files} files of 1 KiB"
                cp_rows += attempt(partial(copy_rows, c, top, label, a, True), n, label)
                print(cp_rows[-1], flush=True)
                shutil.rmtree(top)
            agg += attempt(partial(agg_rows, c, a.runs), n, "stat/cat --agg")
            print(*agg[-2:], sep="\n", flush=True)
        finally:
            c.close()
    for n, mib in pairs(a.sync):
        c = Case(n, peers=False)
        try:
            sync += attempt(partial(sync_rows, c, mib * MiB, a.runs), n, f"{mib} MiB")
        finally:
            c.close()
    for n, mib in pairs(a.gather):
        c = Case(n, peers=False)
        try:
            gather += attempt(partial(gather_rows, c, mib * MiB), n, f"{mib} MiB")
            print(gather[-1], flush=True)
        finally:
            c.close()
    text = "\n".join([started, "", "cp: times, and each peer's ratio to gproc (higher: gproc faster)", "",
                      *cp_rows, "", "sync: 1 MiB of the file changed", "", *sync, "", *agg, "",
                      *gather, ""])  # fmt: skip
    publish("files", text, write=not a.no_write)


if __name__ == "__main__":
    main()
