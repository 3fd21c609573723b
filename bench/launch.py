"""Launch benchmark: ``/bin/true`` on N local nodes, against the spawn floor, pdsh and clush.

For each N (default 64, 256, 1024) it measures, in the same run and on the same machine:

* the spawn floor: N x ``os.posix_spawn("/bin/true")`` from this process, then waitpid on all;
* ``pdsh -R exec`` and ``clush -R exec`` over ``node[0-N-1]`` (each once with ``-f N`` and once with
  its default fanout), the whole command timed;
* for each tree fanout (default 16, 32), on a local cluster started for it (``gproc.local.up``):
  ``gproc e '**' /bin/true`` through the Python API (one ``Cluster.exec`` iterated to its end,
  in-process: the fair comparison with the floor) and as the CLI command (includes the client's
  Python start-up), and the round trip of a no-op request through the tree (``Cluster.ping``).

Each timing is the median of ``--runs`` (>= 5) after one warm-up; pings the median of ``--pings``
(>= 20). pdsh and clush are installed from Debian when missing. The table is printed and written
into bench/RESULTS.md between the ``launch`` markers (other sections are kept).

    python bench/launch.py [--sizes 64,256,1024] [--fanouts 16,32] [--runs 5] [--pings 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from gproc import local
from gproc.client import Cluster, Status

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
BEGIN, END = "<!-- launch:begin -->", "<!-- launch:end -->"
PDSH_DEFAULT_FANOUT, CLUSH_DEFAULT_FANOUT = 32, 64
TARGET_FLOOR_RATIO, TARGET_PING_MS = 1.5, 50.0


@dataclass
class Peers:
    """Wall times (median seconds) of the non-gproc contenders at one N."""

    n: int
    floor: float
    pdsh: dict[int, float] = field(default_factory=dict)  # by -f fanout
    clush: dict[int, float] = field(default_factory=dict)

    def best(self, tool: str) -> float:
        times = self.pdsh if tool == "pdsh" else self.clush
        return min(times.values()) if times else float("nan")


@dataclass
class Gproc:
    """gproc at one (N, fanout): medians in seconds."""

    n: int
    fanout: int
    up: float
    api: float
    cli: float
    ping: float  # client round trip
    ping_master: float  # as timed inside the master


# ---- tools ---------------------------------------------------------------------------------------


def ensure_peers() -> tuple[str, str]:
    """Paths of pdsh and clush, installing Debian's pdsh and clustershell when one is missing."""
    if not (shutil.which("pdsh") and _clush()):
        cmd = ["apt-get", "install", "-y", "-q", "pdsh", "clustershell"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL, check=True)
            subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)
    pdsh, clush = shutil.which("pdsh"), _clush()
    if not (pdsh and clush):
        sys.exit("launch.py: pdsh or clush is still missing after apt-get install")
    return pdsh, clush


def _clush() -> str | None:
    """Debian's /usr/bin/clush when present (a pip ClusterShell may also put one on PATH)."""
    return "/usr/bin/clush" if os.access("/usr/bin/clush", os.X_OK) else shutil.which("clush")


def gproc_command() -> str:
    """The gproc script of this interpreter (not a pyenv shim, which adds its own start-up)."""
    here = Path(sys.executable).parent / "gproc"
    return str(here) if here.exists() else (shutil.which("gproc") or "gproc")


def version(argv: list[str]) -> str:
    p = subprocess.run(argv, capture_output=True, text=True)
    out = (p.stdout + p.stderr).strip().splitlines()
    return out[0] if out else "?"


def machine() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} CPUs ({model}), {mem:.0f} GiB, {platform.system()} {platform.release()}"


# ---- measuring -----------------------------------------------------------------------------------


def median_of(fn: Callable[[], float], runs: int) -> float:
    """Median of ``runs`` calls after one warm-up call."""
    fn()
    return statistics.median(fn() for _ in range(runs))


def spawn_floor(n: int) -> float:
    """N posix_spawn of /bin/true from this process, then wait for all of them."""
    env = dict(os.environ)
    t0 = time.perf_counter()
    pids = [os.posix_spawn("/bin/true", ["/bin/true"], env) for _ in range(n)]
    for pid in pids:
        os.waitpid(pid, 0)
    return time.perf_counter() - t0


def timed_command(argv: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=600)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed ({p.returncode}): {p.stderr.decode()[-500:]}")
    return dt


def peer_argv(tool: str, n: int, fanout: int) -> list[str]:
    return [tool, "-R", "exec", "-f", str(fanout), "-w", f"node[0-{n - 1}]", "/bin/true"]


async def api_launch(c: Cluster, n: int) -> float:
    """One ``exec`` of /bin/true on every node, iterated to its end."""
    t0 = time.perf_counter()
    job = await c.exec(["/bin/true"], "**")
    ok = sum(ev.count for ev in [e async for e in job] if isinstance(ev, Status) and ev.status == 0)
    dt = time.perf_counter() - t0
    if job.exit_status != 0 or ok != n:
        raise RuntimeError(f"exec on {n} nodes: status {job.exit_status}, {ok} succeeded")
    return dt


async def api_ping(c: Cluster, n: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    r = await c.ping()
    dt = time.perf_counter() - t0
    if r["counts"].get("ok") != n:
        raise RuntimeError(f"ping on {n} nodes: {r}")
    return dt, float(r["seconds"])


async def in_process(sock: str, n: int, runs: int, pings: int) -> tuple[float, float, float]:
    """Medians of API launch, client ping and master-timed ping, each after a warm-up."""
    c = Cluster(sock)
    await api_launch(c, n)
    api = statistics.median([await api_launch(c, n) for _ in range(runs)])
    await api_ping(c, n)
    samples = [await api_ping(c, n) for _ in range(pings)]
    return api, statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def measure_gproc(n: int, fanout: int, runs: int, pings: int, gproc: str) -> Gproc:
    with tempfile.TemporaryDirectory(prefix="gproc-bench-") as tmp:
        sock = os.path.join(tmp, "sock")
        t0 = time.perf_counter()
        try:
            local.up(n, fanout=fanout, socket=sock)
            up = time.perf_counter() - t0
            api, ping, ping_master = asyncio.run(in_process(sock, n, runs, pings))
            env = {**os.environ, "GPROC_MASTER": sock}
            cli = median_of(lambda: timed_command([gproc, "e", "**", "/bin/true"], env), runs)
        finally:
            local.down(sock, quiet=True)
    return Gproc(n, fanout, up, api, cli, ping, ping_master)


def measure_peers(n: int, runs: int, pdsh: str, clush: str) -> Peers:
    p = Peers(n, median_of(lambda: spawn_floor(n), runs))
    for f in sorted({n, PDSH_DEFAULT_FANOUT}):
        p.pdsh[f] = median_of(lambda f=f: timed_command(peer_argv(pdsh, n, f)), runs)
    for f in sorted({n, CLUSH_DEFAULT_FANOUT}):
        p.clush[f] = median_of(lambda f=f: timed_command(peer_argv(clush, n, f)), runs)
    return p


# ---- report --------------------------------------------------------------------------------------


def ms(s: float) -> str:
    return f"{s * 1000:.0f}" if s >= 0.1 else f"{s * 1000:.1f}"


def report(peers: list[Peers], runs: list[Gproc], meta: dict[str, str]) -> str:
    out = [
        "## Launch: `/bin/true` on N local nodes",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}  ",
        f"Machine: {meta['machine']}  ",
        f"Tools: {meta['tools']}  ",
        f"Medians of {meta['runs']} runs after a warm-up (pings: {meta['pings']}); times in ms.",
        "",
        "Peers (same run). Floor: N x `os.posix_spawn('/bin/true')` from one Python process, then waitpid all."
        " pdsh/clush: `-R exec -f F -w node[0-N-1] /bin/true`, whole command timed, at `-f N` and at the tool's"
        f" default fanout ({PDSH_DEFAULT_FANOUT} for pdsh, {CLUSH_DEFAULT_FANOUT} for clush).",
        "",
        "| N | spawn floor | pdsh -f N | pdsh -f 32 | clush -f N | clush -f 64 |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for p in peers:
        out.append(
            f"| {p.n} | {ms(p.floor)} | {ms(p.pdsh[p.n])} | {ms(p.pdsh[PDSH_DEFAULT_FANOUT])} "
            f"| {ms(p.clush[p.n])} | {ms(p.clush[CLUSH_DEFAULT_FANOUT])} |"
        )
    out += [
        "",
        "gproc on a local cluster (`gproc.local.up(N, fanout=K)`). API: one `Cluster.exec(['/bin/true'], '**')`"
        " iterated to its end, in-process. CLI: `gproc e '**' /bin/true` as a command (client Python start-up"
        " included). Ratios: gproc / floor (target <= 1.5 at N = 1024) and best peer (lower fanout-choice of the"
        " two) / gproc (> 1: gproc is faster). No-op: `Cluster.ping()` round trip from the client"
        " (target <= 50 ms), and as timed inside the master.",
        "",
        "| N | fanout | up (s) | API | CLI | API/floor | CLI/floor | pdsh/API | clush/API | pdsh/CLI | clush/CLI"
        " | no-op RTT | no-op in master |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_n = {p.n: p for p in peers}
    for g in runs:
        p = by_n[g.n]
        pd, cl = p.best("pdsh"), p.best("clush")
        out.append(
            f"| {g.n} | {g.fanout} | {g.up:.1f} | {ms(g.api)} | {ms(g.cli)} | {g.api / p.floor:.2f} "
            f"| {g.cli / p.floor:.2f} | {pd / g.api:.2f} | {cl / g.api:.2f} | {pd / g.cli:.2f} | {cl / g.cli:.2f} "
            f"| {ms(g.ping)} | {ms(g.ping_master)} |"
        )
    out += ["", *targets(peers, runs)]
    return "\n".join(out) + "\n"


def targets(peers: list[Peers], runs: list[Gproc]) -> list[str]:
    """Verdict on the issue's targets at the largest N measured."""
    if not runs:
        return []
    n = max(g.n for g in runs)
    p = next(p for p in peers if p.n == n)
    lines = [f"Targets at N = {n} (best fanout):", ""]
    best = min((g for g in runs if g.n == n), key=lambda g: g.api)
    ping = min(g.ping for g in runs if g.n == n)
    cli = min(g.cli for g in runs if g.n == n)

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    ratio = best.api / p.floor
    lines.append(
        f"- launch <= {TARGET_FLOOR_RATIO}x spawn floor: API {ms(best.api)} ms = {ratio:.2f}x "
        f"floor {ms(p.floor)} ms — {verdict(ratio <= TARGET_FLOOR_RATIO)}"
    )
    for tool in ("pdsh", "clush"):
        t = p.best(tool)
        lines.append(
            f"- faster than {tool} (best {ms(t)} ms): API {ms(best.api)} ms — {verdict(best.api < t)}; "
            f"CLI {ms(cli)} ms — {verdict(cli < t)}"
        )
    lines.append(
        f"- no-op round trip <= {TARGET_PING_MS:.0f} ms: {ms(ping)} ms — {verdict(ping * 1000 <= TARGET_PING_MS)}"
    )
    return lines


def write_section(text: str, path: Path = RESULTS) -> None:
    """Replace the launch section of RESULTS.md (or append it), keeping every other section."""
    section = f"{BEGIN}\n{text}{END}\n"
    old = path.read_text() if path.exists() else "# gproc benchmark results\n\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        new = head + section + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + "\n\n" + section
    path.write_text(new)


# ---- main ----------------------------------------------------------------------------------------


def int_list(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--sizes", type=int_list, default=[64, 256, 1024], help="node counts (default 64,256,1024)")
    ap.add_argument("--fanouts", type=int_list, default=[16, 32], help="tree fanouts (default 16,32)")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per measurement, after a warm-up (>= 5)")
    ap.add_argument("--pings", type=int, default=20, help="timed no-op round trips per cluster (>= 20)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = ap.parse_args()
    if args.runs < 1 or args.pings < 1:
        ap.error("--runs and --pings must be positive")
    pdsh, clush = ensure_peers()
    gproc = gproc_command()
    meta = {
        "command": shlex.join(["python", "bench/launch.py", *sys.argv[1:]]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "tools": f"{version([pdsh, '-V'])} ({pdsh}), clush {version([clush, '--version']).split()[-1]} ({clush}),"
        f" {version([gproc, '--version'])} on Python {platform.python_version()} ({gproc})",
        "runs": str(args.runs),
        "pings": str(args.pings),
    }
    peers: list[Peers] = []
    results: list[Gproc] = []
    t0 = time.perf_counter()
    for n in args.sizes:
        print(f"N={n}: spawn floor, pdsh, clush …", file=sys.stderr, flush=True)
        peers.append(measure_peers(n, args.runs, pdsh, clush))
        for k in args.fanouts:
            print(f"N={n} fanout={k}: gproc …", file=sys.stderr, flush=True)
            results.append(measure_gproc(n, k, args.runs, args.pings, gproc))
    print(f"done in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    text = report(peers, results, meta)
    print(text)
    if not args.no_write:
        write_section(text)
        print(f"written to {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
