"""Launch benchmark: ``/bin/true`` on N local nodes, against the spawn floor, pdsh and clush.

For each N (default 64, 256, 1024) it measures, in the same run and on the same machine:

* the spawn floor: N x ``os.posix_spawn("/bin/true")`` from this process, then waitpid on all;
* ``pdsh -R exec`` and ``clush -R exec`` over ``node[0-N-1]`` (each once with ``-f N`` and once with
  its default fanout), the whole command timed;
* for each tree fanout (default 16, 32), on a local cluster started for it (``gproc.local.up``):
  ``gproc e '**' /bin/true`` through the Python API (one ``Cluster.exec`` iterated to its end,
  in-process: the fair comparison with the floor) and as the CLI command (includes the client's
  Python start-up), and the round trip of a no-op request through the tree (``Cluster.ping``);
  the spawn floor is taken again just before ``up`` and after ``down`` for that row's ratio.

Each timing is the median of ``--runs`` (default 5) after one warm-up; pings the median of ``--pings``
(default 20). Every step also reports the share of the CPU that other processes used meanwhile (the
machine may be shared). pdsh and clush are installed from Debian when missing. The table is printed
and written into bench/RESULTS.md between the ``launch`` markers (other sections are kept).

    python bench/launch.py [--sizes 64,256,1024] [--fanouts 16,32] [--runs 5] [--pings 20]
                           [--ref HEAD] [--quiet SECONDS] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from results import machine, write_section

if TYPE_CHECKING:
    from gproc.client import Cluster

PDSH_DEFAULT_FANOUT, CLUSH_DEFAULT_FANOUT = 32, 64
TARGET_FLOOR_RATIO, TARGET_PING_MS = 1.5, 50.0
NOISY = 0.10  # share of the CPU used by other processes above which a verdict is flagged as noisy


@dataclass
class Peers:
    """Wall times (median seconds) of the non-gproc contenders at one N."""

    n: int
    floor: float
    pdsh: dict[int, float] = field(default_factory=dict)  # by -f fanout
    clush: dict[int, float] = field(default_factory=dict)
    other: float = 0.0  # share of the machine's CPU used by other processes meanwhile

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
    floor: float  # the spawn floor again, just before ``up`` and just after ``down``
    ship: float = 0.0  # API launch shipped (the default mode), the program already in every node's store
    other: float = 0.0


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


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


class Load:
    """How much of the machine's CPU other processes used since ``start`` (the benchmark shares it).

    Busy time of the whole machine (/proc/stat) minus the CPU of this process and of every child it
    reaped (the spawned programs, pdsh, clush and the cluster's daemons, all reaped before ``other``).
    """

    def __init__(self) -> None:
        self.start = self._now()

    @staticmethod
    def _now() -> tuple[float, float, float]:
        busy = machine_busy_seconds()
        who = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        own = sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, who))
        return time.monotonic(), busy, own

    def other(self) -> float:
        (t0, b0, o0), (t1, b1, o1) = self.start, self._now()
        return max(0.0, ((b1 - b0) - (o1 - o0)) / max(1e-9, (t1 - t0) * (os.cpu_count() or 1)))


def wait_quiet(limit: float, most: float = 0.1) -> float:
    """Wait up to ``limit`` seconds for other processes to use under ``most`` of the CPU; their share."""
    deadline = time.monotonic() + limit
    share = 0.0
    while True:
        load = Load()
        time.sleep(1.0)
        share = load.other()
        if share < most or time.monotonic() >= deadline:
            return share


# ---- measuring -----------------------------------------------------------------------------------


def samples(fn: Callable[[], float], runs: int) -> list[float]:
    """``runs`` timings after one warm-up call."""
    fn()
    return [fn() for _ in range(runs)]


def median_of(fn: Callable[[], float], runs: int) -> float:
    """Median of ``runs`` calls after one warm-up call."""
    return statistics.median(samples(fn, runs))


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


async def api_launch(c: Cluster, n: int, localbin: bool = True, argv: tuple[str, ...] = ("/bin/true",)) -> float:
    """One ``exec`` of /bin/true on every node, iterated to its end (``localbin``: the node's own
    program, as pdsh and clush run it; else shipped, gproc's default)."""
    from gproc.client import Status

    t0 = time.perf_counter()
    job = await c.exec(list(argv), "**", localbin=localbin)
    statuses = [ev for ev in [e async for e in job] if isinstance(ev, Status)]
    dt = time.perf_counter() - t0
    ok = sum(ev.count for ev in statuses if ev.status == 0)
    if job.exit_status != 0 or ok != n:
        bad = "; ".join(f"{ev.nodes}: {ev.status} {ev.error}" for ev in statuses if ev.status != 0)
        raise RuntimeError(f"exec on {n} nodes: status {job.exit_status}, {ok} succeeded ({bad[-600:]})")
    return dt


async def api_ping(c: Cluster, n: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    r = await c.ping()
    dt = time.perf_counter() - t0
    if r["counts"].get("ok") != n:
        raise RuntimeError(f"ping on {n} nodes: {r}")
    return dt, float(r["seconds"])


async def in_process(sock: str, n: int, runs: int, pings: int) -> tuple[float, float, float, float]:
    """Medians of API launch (-localbin, then shipped: cached after the warm-up), client ping and
    master-timed ping, each after a warm-up."""
    from gproc.client import Cluster

    c = Cluster(sock)
    await api_launch(c, n)
    api = statistics.median([await api_launch(c, n) for _ in range(runs)])
    await api_launch(c, n, localbin=False)
    ship = statistics.median([await api_launch(c, n, localbin=False) for _ in range(runs)])
    await api_ping(c, n)
    samples = [await api_ping(c, n) for _ in range(pings)]
    return api, ship, statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def measure_gproc(n: int, fanout: int, runs: int, pings: int, gproc: str) -> Gproc:
    from gproc import local

    load = Load()
    floor = samples(lambda: spawn_floor(n), runs)  # the ratio's floor is taken around the gproc runs
    with tempfile.TemporaryDirectory(prefix="gproc-bench-") as tmp:
        sock = os.path.join(tmp, "sock")
        t0 = time.perf_counter()
        try:
            local.up(n, fanout=fanout, socket=sock)
            up = time.perf_counter() - t0
            api, ship, ping, ping_master = asyncio.run(in_process(sock, n, runs, pings))
            env = {**os.environ, "GPROC_MASTER": sock}
            cli = median_of(lambda: timed_command([gproc, "e", "-localbin", "**", "/bin/true"], env), runs)
        finally:
            local.down(sock, quiet=True)
    floor += samples(lambda: spawn_floor(n), runs)
    return Gproc(n, fanout, up, api, cli, ping, ping_master, statistics.median(floor), ship, load.other())


def measure_peers(n: int, runs: int, pdsh: str, clush: str) -> Peers:
    load = Load()
    p = Peers(n, median_of(lambda: spawn_floor(n), runs))
    for tool, default, times in ((pdsh, PDSH_DEFAULT_FANOUT, p.pdsh), (clush, CLUSH_DEFAULT_FANOUT, p.clush)):
        for f in sorted({n, default}):
            argv = peer_argv(tool, n, f)
            times[f] = median_of(lambda: timed_command(argv), runs)  # noqa: B023 (called before the loop moves on)
    p.other = load.other()
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
        f"gproc: {meta['source']}  ",
        f"Tools: {meta['tools']}  ",
        f'Medians of {meta["runs"]} runs after a warm-up (pings: {meta["pings"]}); times in ms. "other load": share of'
        " the machine's CPU that processes outside the benchmark used meanwhile (the machine is shared; high"
        f" values mean noisy numbers). Whole run: {meta['other']}.",
        "",
        "Peers. Floor: N x `os.posix_spawn('/bin/true')` from one Python process, then waitpid all."
        " pdsh/clush: `-R exec -f F -w node[0-N-1] /bin/true`, whole command timed, at `-f N` and at the tool's"
        f" default fanout ({PDSH_DEFAULT_FANOUT} for pdsh, {CLUSH_DEFAULT_FANOUT} for clush).",
        "",
        f"| N | spawn floor | pdsh -f N | pdsh -f {PDSH_DEFAULT_FANOUT} | clush -f N | clush -f {CLUSH_DEFAULT_FANOUT}"
        " | other load |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in peers:
        out.append(
            f"| {p.n} | {ms(p.floor)} | {ms(p.pdsh[p.n])} | {ms(p.pdsh[PDSH_DEFAULT_FANOUT])} "
            f"| {ms(p.clush[p.n])} | {ms(p.clush[CLUSH_DEFAULT_FANOUT])} | {p.other:.0%} |"
        )
    out += [
        "",
        "gproc on a local cluster (`gproc.local.up(N, fanout=K)`, started once per row). API: one"
        " `Cluster.exec(['/bin/true'], '**', localbin=True)` iterated to its end, in-process (the fair comparison"
        " with the floor; like pdsh and clush it runs the node's own /bin/true). shipped: the same without"
        " `localbin`, gproc's default: /bin/true, ld.so and libc are shipped (already in every node's store after"
        " the warm-up, so no file bytes move) and staged per job in a private mount namespace."
        " CLI: `gproc e -localbin '**' /bin/true` as a command, client Python start-up included (CLI - API is that"
        " start-up)."
        " floor: the spawn floor again, median of runs just before `up` and just after `down` (so that the ratio"
        " compares runs taken under the same machine load); x floor: gproc / that floor (target <= 1.5 at"
        " N = 1024). pdsh/, clush/: the tool's better fanout / gproc (> 1: gproc is faster). No-op:"
        " `Cluster.ping()` round trip from the client (target <= 50 ms), and as timed inside the master.",
        "",
        "| N | fanout | up (s) | floor | API | shipped | CLI | API x floor | CLI x floor | pdsh/API | clush/API"
        " | pdsh/CLI | clush/CLI | no-op RTT | no-op in master | other load |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_n = {p.n: p for p in peers}
    for g in runs:
        p = by_n[g.n]
        pd, cl = p.best("pdsh"), p.best("clush")
        out.append(
            f"| {g.n} | {g.fanout} | {g.up:.1f} | {ms(g.floor)} | {ms(g.api)} | {ms(g.ship)} | {ms(g.cli)}"
            f" | {g.api / g.floor:.2f} "
            f"| {g.cli / g.floor:.2f} | {pd / g.api:.2f} | {cl / g.api:.2f} | {pd / g.cli:.2f} | {cl / g.cli:.2f} "
            f"| {ms(g.ping)} | {ms(g.ping_master)} | {g.other:.0%} |"
        )
    out += ["", *targets(peers, runs)]
    return "\n".join(out) + "\n"


def targets(peers: list[Peers], runs: list[Gproc]) -> list[str]:
    """Verdict on the issue's targets at the largest N measured (each at its best fanout)."""
    if not runs:
        return []
    n = max(g.n for g in runs)
    p = next(p for p in peers if p.n == n)
    rows = [g for g in runs if g.n == n]
    best = min(rows, key=lambda g: g.api / g.floor)
    cli = min(rows, key=lambda g: g.cli)
    ping = min(rows, key=lambda g: g.ping)

    def verdict(ok: bool, *loads: float) -> str:
        noisy = max(loads) > NOISY
        return ("met" if ok else "**not met**") + (f" (other load up to {max(loads):.0%}: noisy)" if noisy else "")

    ratio = best.api / best.floor
    lines = [
        f"Targets at N = {n} (best fanout):",
        "",
        f"- launch <= {TARGET_FLOOR_RATIO}x spawn floor: API {ms(best.api)} ms = {ratio:.2f}x floor"
        f" {ms(best.floor)} ms (fanout {best.fanout}) — {verdict(ratio <= TARGET_FLOOR_RATIO, best.other)};"
        f" CLI {cli.cli / cli.floor:.2f}x",
    ]
    for tool in ("pdsh", "clush"):
        t = p.best(tool)
        api_ok, cli_ok = verdict(best.api < t, best.other, p.other), verdict(cli.cli < t, cli.other, p.other)
        lines.append(
            f"- faster than {tool} (best {ms(t)} ms): API {ms(best.api)} ms — {api_ok}; CLI {ms(cli.cli)} ms — {cli_ok}"
        )
    ok = ping.ping * 1000 <= TARGET_PING_MS
    lines.append(
        f"- no-op round trip <= {TARGET_PING_MS:.0f} ms: {ms(ping.ping)} ms (fanout {ping.fanout}) — "
        f"{verdict(ok, ping.other)}"
    )
    return lines


# ---- which gproc ---------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent


def rerun_at(ref: str) -> int:
    """Run this benchmark against the committed tree at ``ref`` (src/ is being edited meanwhile)."""
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", f"{ref}^{{commit}}"], capture_output=True, text=True
    ).stdout.strip()
    if not commit:
        sys.exit(f"launch.py: unknown git ref {ref!r}")
    with tempfile.TemporaryDirectory(prefix="gproc-bench-src-") as tmp:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "src"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [os.path.join(tmp, "src"), os.environ.get("PYTHONPATH")])),
            "GPROC_BENCH_SOURCE": f"commit {commit[:12]} ({ref}), run from a git archive",
        }
        child = subprocess.Popen([sys.executable, __file__, *sys.argv[1:]], env=env)
        try:
            return child.wait()
        finally:
            if child.poll() is None:  # interrupted: let the child tear its cluster down
                child.terminate()
                child.wait()


def gproc_source() -> str:
    """Which gproc is measured: the archived commit, or the working tree's commit and whether src is edited."""
    if label := os.environ.get("GPROC_BENCH_SOURCE"):
        return label
    import gproc

    src = Path(gproc.__file__).resolve().parent

    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(src), *a], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short=12", "HEAD")
    if not commit:
        return f"{src} (not in a git checkout)"
    edited = git("status", "--porcelain", "--", ".")
    return f"working tree at commit {commit}" + (" with uncommitted changes in src/" if edited else "")


# ---- main ----------------------------------------------------------------------------------------


def int_list(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--sizes", type=int_list, default=[64, 256, 1024], help="node counts (default 64,256,1024)")
    ap.add_argument("--fanouts", type=int_list, default=[16, 32], help="tree fanouts (default 16,32)")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per measurement, after a warm-up (default 5)")
    ap.add_argument("--pings", type=int, default=20, help="timed no-op round trips per cluster (default 20)")
    ap.add_argument("--ref", help="measure this git commit of src/ (from a git archive), not the working tree")
    ap.add_argument("--quiet", type=float, default=0.0, metavar="S", help="before each step wait up to S seconds "
                    "for other processes to use < 10%% of the CPU (default 0: no wait)")  # fmt: skip
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still runs the clusters' teardown
    if args.runs < 1 or args.pings < 1:
        ap.error("--runs and --pings must be positive")
    if args.ref and "GPROC_BENCH_SOURCE" not in os.environ:
        return rerun_at(args.ref)
    pdsh, clush = ensure_peers()
    gproc = gproc_command()
    meta = {
        "command": shlex.join(["python", "bench/launch.py", *sys.argv[1:]]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "source": gproc_source(),
        "tools": f"{version([pdsh, '-V'])} ({pdsh}), clush {version([clush, '--version']).split()[-1]} ({clush}),"
        f" {version([gproc, '--version'])} on Python {platform.python_version()} ({gproc})",
        "runs": str(args.runs),
        "pings": str(args.pings),
    }
    peers: list[Peers] = []
    results: list[Gproc] = []
    t0, whole = time.perf_counter(), Load()

    def step(what: str) -> None:
        share = wait_quiet(args.quiet) if args.quiet > 0 else None
        note = f" (other load {share:.0%})" if share is not None else ""
        print(f"{what}{note} …", file=sys.stderr, flush=True)

    for n in args.sizes:
        step(f"N={n}: spawn floor, pdsh, clush")
        peers.append(measure_peers(n, args.runs, pdsh, clush))
        for k in args.fanouts:
            step(f"N={n} fanout={k}: gproc")
            results.append(measure_gproc(n, k, args.runs, args.pings, gproc))
    meta["other"] = f"{whole.other():.0%} over {time.perf_counter() - t0:.0f} s"
    print(f"done in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    text = report(peers, results, meta)
    print(text)
    if not args.no_write:
        print(f"written to {write_section('launch', text)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
