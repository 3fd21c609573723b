"""Ship benchmark: a 10 MiB program with 5 libraries launched on 256 local nodes.

For each tree shape (default fanout 16: depth 2, and fanout 4: depth 4, the same N), on a local cluster
started for it (``gproc.local.up``), it measures through the Python API:

* first launches of programs no node has (each its own random 10 MiB blob and 5 libraries of its own,
  RPATH ``$ORIGIN/../lib``, plus the C library and ld.so they need; the median of ``--runs``, since a
  shared machine's load varies): wall time, the master's shipping time,
  file bytes read from the client, and bytes carried by every tree link (each node's parent link,
  from the ``counters`` op before and after: min / median / max and the total over all links);
* when the nodes of each depth stored the last file (the monotonic clock is shared on one machine):
  with pipelining the deepest level finishes about a chunk per hop after the first, not a whole
  transfer per level;
* a second launch of the same program: it must move 0 file bytes;
* on the first tree shape, what shipping costs a small program that every node already has:
  ``/bin/true`` launched shipped with ``-p`` (the default), shipped with ``-p=false``, and with
  ``-localbin`` (the node's own, nothing staged), medians of 5 after a warm-up.

The peer, measured in the same run: ``cp`` of the same files into N directories (one ``cp`` per
directory, as a script would). Results are printed and written into bench/RESULTS.md between the
``ship`` markers (other sections are kept).

    python bench/ship.py [--nodes 256] [--fanouts 16,4] [--size-mib 10] [--libs 5] [--procs 4] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ClusterShell.NodeSet import NodeSet

from gproc import local
from gproc.bundle import build
from gproc.client import Cluster, Status
from results import machine, write_section


def make_program(where: Path, size_mib: int, nlibs: int) -> Path:
    """bin/prog (a random blob of ``size_mib`` MiB in .rodata) linked to lib/libbench{i}.so.1."""
    for d in ("bin", "lib", "src"):
        (where / d).mkdir(parents=True, exist_ok=True)
    (where / "src/blob").write_bytes(os.urandom(size_mib << 20))
    libs = []
    for i in range(nlibs):
        src = where / f"src/lib{i}.c"
        pad = os.urandom(8).hex()
        src.write_text(f'const char *bench{i}(void) {{ return "{pad}"; }}\n')
        lib = where / f"lib/libbench{i}.so.1"
        cc = ["gcc", "-shared", "-fPIC", f"-Wl,-soname,libbench{i}.so.1", "-o", str(lib), str(src)]
        subprocess.run(cc, check=True)
        libs.append(str(lib))
    calls = " ".join(f"n += bench{i}()[0];" for i in range(nlibs))
    decls = " ".join(f"const char *bench{i}(void);" for i in range(nlibs))
    (where / "src/main.c").write_text(
        f"#include <stdio.h>\n{decls}\n"
        '__asm__(".section .rodata\\n.global blob\\nblob:\\n.incbin \\"' + str(where / "src/blob") + '\\"\\n.text");\n'
        "extern const char blob[];\n"
        f'int main(void) {{ int n = blob[0]; {calls} printf("ok\\n"); return n < 0; }}\n'
    )
    prog = where / "bin/prog"
    subprocess.run(["gcc", "-O1", "-o", str(prog), str(where / "src/main.c"), *libs, "-Wl,-rpath,$ORIGIN/../lib"],
                   check=True)  # fmt: skip
    return prog


def cp_into_dirs(files: list[str], n: int, tmp: str) -> float:
    """Copy the files into n fresh directories, one cp per directory."""
    dest = Path(tmp, "cp")
    for i in range(n):
        (dest / str(i)).mkdir(parents=True)
    t0 = time.perf_counter()
    for i in range(n):
        subprocess.run(["cp", "--preserve=mode", *files, str(dest / str(i))], check=True)
    dt = time.perf_counter() - t0
    shutil.rmtree(dest)
    return dt


@dataclass
class Launch:
    seconds: float
    ship_seconds: float
    file_bytes: int  # read from the client
    link_bytes: list[int]  # per tree link, measured
    stored_by_level: dict[int, float]  # level -> median seconds after the launch began, last file stored
    ok: int


async def counters(c: Cluster) -> dict[str, dict[str, Any]]:
    r = await c.request("stats", links=True)
    return {name: row for row in r["links"] for name in NodeSet(row["nodes"])}


async def launch(sock: str, prog: Path, levels: dict[str, int], n: int) -> Launch:
    c = Cluster(sock)
    before = await counters(c)
    t0 = time.monotonic()
    job = await c.exec([str(prog)], "**", cwd=str(prog.parent))
    events = [ev async for ev in job]
    dt = time.monotonic() - t0
    after = await counters(c)
    ok = sum(ev.count for ev in events if isinstance(ev, Status) and ev.status == 0)
    if ok != n:
        raise RuntimeError(f"launch: {ok} of {n} nodes ran it: {[e for e in events if isinstance(e, Status)]}")
    per_link = [after[k]["bytes_in"] - before[k]["bytes_in"] for k in after]
    stored: dict[int, list[float]] = {}
    for name, row in after.items():
        if row["stored_at"] and row["stored_at"] != before[name]["stored_at"]:
            stored.setdefault(levels[name], []).append(row["stored_at"] - t0)
    by_level = {lv: statistics.median(ts) for lv, ts in sorted(stored.items())}
    return Launch(dt, float(job.shipped["seconds"]), int(job.shipped["bytes"]), per_link, by_level, ok)


async def true_launches(sock: str, n: int, runs: int = 5) -> dict[str, float]:
    """Median seconds of ``/bin/true`` on every node: shipped (-p, -p=false) and -localbin."""
    c = Cluster(sock)
    out = {}
    modes: tuple[tuple[str, dict[str, Any]], ...] = (
        ("-p", {}),
        ("-p=false", {"private": False}),
        ("-localbin", {"localbin": True}),
    )
    for label, kw in modes:
        times = []
        for _ in range(runs + 1):
            t0 = time.monotonic()
            job = await c.exec(["/bin/true"], "**", **kw)
            events = [ev async for ev in job]
            times.append(time.monotonic() - t0)
            if sum(ev.count for ev in events if isinstance(ev, Status) and ev.status == 0) != n:
                raise RuntimeError(f"/bin/true {label}: {events}")
        out[label] = statistics.median(times[1:])
    return out


def measure(
    n: int, fanout: int, size_mib: int, nlibs: int, procs: int, tmp: str, runs: int, small: bool
) -> tuple[int, Launch, Launch, int, dict[str, float]]:
    """(depth, median first launch of ``runs`` programs no node has, second launch of one of them,
    bundle bytes, /bin/true launches if ``small``) on a fresh cluster of n nodes."""
    progs = [make_program(Path(tmp, f"prog-f{fanout}-{i}"), size_mib, nlibs) for i in range(runs)]
    bundle = build([str(progs[0])], cwd=str(progs[0].parent))
    assert bundle is not None
    sock = os.path.join(tmp, f"g{fanout}")
    try:
        local.up(n, fanout=fanout, socket=sock, procs=procs)
        info = asyncio.run(Cluster(sock).info())
        levels = {row["name"]: row["level"] for row in info["nodes"]}
        firsts = [asyncio.run(launch(sock, prog, levels, n)) for prog in progs]
        first = sorted(firsts, key=lambda f: f.seconds)[len(firsts) // 2]
        second = asyncio.run(launch(sock, progs[-1], levels, n))
        small_launches = asyncio.run(true_launches(sock, n)) if small else {}
    finally:
        local.down(sock, quiet=True)
    return max(levels.values()), first, second, bundle.total_bytes, small_launches


def mib(b: float) -> str:
    return f"{b / 2**20:.2f}"


def report(
    meta: dict[str, str], cp: float, rows: list[tuple[int, int, Launch, Launch, int]], n: int, small: dict[str, float]
) -> str:
    out = [
        f"## Ship: a {meta['size']} MiB program with {meta['libs']} libraries on {n} local nodes",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}  ",
        f"Machine: {meta['machine']}  ",
        f"First launches: the median of {meta['runs']}, each of a program no node has. "
        f"Cluster: `gproc.local.up({n}, fanout=F, procs={meta['procs']})`, every link TLS over loopback,"
        " each node its own store; `-p` (private tmpfs) as root.",
        "",
        f"Bundle: {mib(rows[0][4])} MiB (program, {meta['libs']} libraries, libc, ld.so); after the first program of"
        " a cluster, libc and ld.so are already on every node, so only the new program and its libraries"
        " move (file bytes from the client). Peer: `cp --preserve=mode`"
        f" of the same files into {n} directories, one `cp` per directory: **{cp:.2f} s**.",
        "",
        "| fanout | depth | first launch (s) | of which shipping (s) | /cp | file bytes from client (MiB)"
        " | per link min / median / max (MiB) | all links (MiB) | all links / (N x file bytes) | second launch (s)"
        " | second: file bytes | second: per link max (KiB) |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for fanout, depth, first, second, _ in rows:
        links = sorted(first.link_bytes)
        total = sum(links)
        ratio = total / (n * first.file_bytes)
        out.append(
            f"| {fanout} | {depth} | {first.seconds:.2f} | {first.ship_seconds:.2f} | {first.seconds / cp:.2f}"
            f" | {mib(first.file_bytes)} | {mib(links[0])} / {mib(statistics.median(links))} / {mib(links[-1])}"
            f" | {total / 2**20:.1f} | {ratio:.3f} | {second.seconds:.2f} | {second.file_bytes}"
            f" | {max(second.link_bytes) / 1024:.1f} |"
        )
    out += ["", "When each level had stored the last file (median over its nodes, seconds after the launch began):", ""]
    depth_max = max(d for _, d, *_ in rows)
    out.append("| fanout | " + " | ".join(f"level {i}" for i in range(1, depth_max + 1)) + " | last - first level |")
    out.append("|---:|" + "---:|" * (depth_max + 1))
    for fanout, depth, first, *_ in rows:
        cells = [
            f"{first.stored_by_level[i]:.2f}" if i in first.stored_by_level else "" for i in range(1, depth_max + 1)
        ]
        spread = first.stored_by_level[depth] - first.stored_by_level[1]
        out.append(f"| {fanout} | " + " | ".join(cells) + f" | {spread:.2f} |")
    (_, d2, a, *_), (_, d4, b, *_) = rows[0], rows[-1]
    out += [
        "",
        f"Depth {d2} vs depth {d4} with the same N: first launch {a.seconds:.2f} s vs {b.seconds:.2f} s"
        f" (ratio {b.seconds / a.seconds:.2f}). Every node stores the bundle once and every link carries it once"
        " (all links / (N x file bytes) = 1 plus framing), so the work is the same; a store-and-forward tree would"
        f" add a whole transfer per level, here the deepest level finishes"
        f" {b.stored_by_level[d4] - b.stored_by_level[1]:.2f} s after the first at depth {d4}.",
    ]
    if small:
        out += [
            "",
            f"What shipping costs a small program every node already has: `/bin/true` on the {n} nodes of the"
            f" fanout-{rows[0][0]} tree, medians of 5 after a warm-up: shipped with `-p` {small['-p'] * 1000:.0f} ms,"
            f" shipped with `-p=false` {small['-p=false'] * 1000:.0f} ms, `-localbin` (nothing staged)"
            f" {small['-localbin'] * 1000:.0f} ms. Shipping adds a `have` round trip and, per node, a mount"
            " namespace, a tmpfs and a bind mount per file (`-p`) or a directory of hard links to build and"
            f" remove (`-p=false`): kernel work that here all {n} nodes do on the same cores.",
        ]
    out += [
        "",
        "On one machine every hop's TLS, hashing and writing share the same cores, so the absolute times"
        " measure this host's CPU (and the other jobs running on it), not a network; the ratios and the"
        " bytes per link are what carries over to a real cluster.",
    ]
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--nodes", type=int, default=256)
    ap.add_argument("--fanouts", default="16,4", help="tree fanouts, shallow first (default 16,4: depth 2 and 4)")
    ap.add_argument("--size-mib", type=int, default=10)
    ap.add_argument("--libs", type=int, default=5)
    ap.add_argument("--procs", type=int, default=4, help="node processes of each local cluster")
    ap.add_argument("--runs", type=int, default=3, help="first launches per tree (each a new program); the median")
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = ap.parse_args()
    if shutil.which("gcc") is None:
        sys.exit("ship.py needs gcc")
    meta = {
        "command": shlex.join(["python", "bench/ship.py", *sys.argv[1:]]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(load=True),
        "size": str(args.size_mib),
        "libs": str(args.libs),
        "procs": str(args.procs),
        "runs": str(args.runs),
    }
    fanouts = [int(f) for f in args.fanouts.split(",") if f]
    rows: list[tuple[int, int, Launch, Launch, int]] = []
    true_times: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="gproc-ship-", dir="/tmp") as tmp:
        print("cp baseline …", file=sys.stderr, flush=True)
        prog = make_program(Path(tmp, "prog-cp"), args.size_mib, args.libs)
        bundle = build([str(prog)], cwd=str(prog.parent))
        assert bundle is not None
        sources = sorted({bundle.sources[e.hash] for e in bundle.entries.values() if e.kind == "f"})
        cp = cp_into_dirs(sources, args.nodes, tmp)
        for fanout in fanouts:
            print(f"fanout {fanout}: cluster of {args.nodes} …", file=sys.stderr, flush=True)
            depth, first, second, size, small = measure(
                args.nodes, fanout, args.size_mib, args.libs, args.procs, tmp, args.runs, small=not rows
            )
            print(f"  depth {depth}: first {first.seconds:.2f}s, second {second.seconds:.2f}s", file=sys.stderr)
            rows.append((fanout, depth, first, second, size))
            true_times = true_times or small
    text = report(meta, cp, rows, args.nodes, true_times)
    print(text)
    if not args.no_write:
        print(f"written to {write_section('ship', text)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
