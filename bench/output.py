"""Output benchmark: what N local nodes write, at the client, gproc against pdsh and clush.

For each N (default 16, 64, 256) and each case, in the same run and on the same machine, every node
runs the same command and the client's output is checked line by line (``output_check``):

* ``seq``: ``seq 1 200000`` (1.3 MB, 200,000 short lines per node);
* ``long``: ``cat`` of 20 lines of 100 KiB, the last one without its newline;
* ``binary``: ``cat`` of 10 MiB of random bytes (invalid UTF-8, NULs, lines of any length);
* ``trickle``: 20 short lines at 10 per second (a log being followed): the rate is the program's, what
  counts is each line's delay behind its schedule (median and worst).

Contenders: ``gproc e '**' CMD`` as a user types it (the ``gproc`` on PATH or ``--gproc``, against a
cluster started with ``gproc up --local N``, timed separately; a warm-up run per program first, so
that the program is already in every node's store), ``pdsh -R exec -f N -w node[0-N-1] CMD`` and
``clush -R exec -f N -w node[0-N-1] CMD`` (one local copy of CMD per name, all at once). Measured per
run: wall time, lines and bytes per second at the client (a line alike on k nodes counts k times),
the client's peak RSS (``wait4``) and CPU, the peak of the summed RSS of the cluster's own processes
(master and node processes, sampled every 0.1 s; not the programs they run), the share of the CPU
that other processes used meanwhile, and the verdict: per node, every line there, in order, byte-exact.
A run that outlives ``--limit`` seconds is stopped (gproc: two SIGINTs, as a user's Ctrl-C; then
SIGKILL) and judged on what arrived by then; gproc's cluster is started again after a run that did not
end with status 0. Clusters and temporary files are removed on any exit, Ctrl-C included.

    python bench/output.py [--sizes 16,64,256] [--cases seq,long,binary,trickle] [--tools gproc,pdsh,clush]
                           [--repeat 1] [--limit 30] [--quick] [--gproc PATH] [--json-out FILE]
                           [--section output] [--no-write]

``--tools`` also takes ``gproc-json`` (``gproc e --json``). ``--quick``: N = 16, smaller outputs, 20 s
limit (under 2 minutes). The markdown table is printed and written into bench/RESULTS.md between the
``--section`` markers; every run's figures go to ``--json-out`` (default bench/output.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil

from launch import ensure_peers, machine_busy_seconds, version
from output_check import Checker, Tally, Verdict
from results import machine, write_section

TOOLS = ("gproc", "gproc-json", "pdsh", "clush")
CASES = ("seq", "long", "binary", "trickle")
SAMPLE_EVERY = 0.1  # seconds between two samples of the daemons' memory
STOP_GRACE = 3.0  # seconds a stopped client gets after each SIGINT
CLIENT_MIB = 100  # issue 17: the client's memory bounded whatever the output size


@dataclass
class Case:
    name: str
    title: str
    argv: list[str]
    expected: bytes
    interval: float = 0.0  # trickle: seconds between a node's lines (read live, each line's arrival timed)


def sizes_of(quick: bool) -> tuple[int, int, int, int]:
    """seq's lines, 100 KiB lines, MiB of binary, trickled lines."""
    return (50_000, 5, 2, 10) if quick else (200_000, 20, 10, 20)


def titles_of(quick: bool) -> dict[str, str]:
    seq_n, long_n, blob_mib, ticks = sizes_of(quick)
    return {
        "seq": f"`seq 1 {seq_n}`",
        "long": f"{long_n} lines of 100 KiB",
        "binary": f"{blob_mib} MiB binary",
        "trickle": f"{ticks} lines at 10/s",
    }


def make_cases(d: str, quick: bool) -> dict[str, Case]:
    """The commands every node runs, their input files written into ``d``, and what each prints."""
    rng = random.Random(17)
    seq_n, long_n, blob_mib, ticks = sizes_of(quick)
    title = titles_of(quick)
    alnum = b"abcdefghijklmnopqrstuvwxyz0123456789"
    long = b"\n".join(bytes(rng.choices(alnum, k=100 * 1024)) for _ in range(long_n))  # no newline at the end
    blob = rng.randbytes(blob_mib * 2**20)
    for name, data in (("long.txt", long), ("blob.bin", blob)):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    script = os.path.join(d, "trickle.pl")
    with open(script, "w") as f:  # one process per node, flushed per line as a log writer is
        f.write('$| = 1; for my $i (1..$ARGV[0]) { print "tick $i\\n"; select(undef, undef, undef, $ARGV[1]) }\n')
    return {
        "seq": Case("seq", title["seq"], ["seq", "1", str(seq_n)], b"".join(b"%d\n" % i for i in range(1, seq_n + 1))),
        "long": Case("long", title["long"], ["cat", os.path.join(d, "long.txt")], long),
        "binary": Case("binary", title["binary"], ["cat", os.path.join(d, "blob.bin")], blob),
        "trickle": Case(
            "trickle",
            title["trickle"],
            ["perl", script, str(ticks), "0.1"],
            b"".join(b"tick %d\n" % i for i in range(1, ticks + 1)),
            interval=0.1,
        ),
    }


# ---- the gproc cluster ---------------------------------------------------------------------------


class Cluster:
    """``gproc up --local N`` with ``GPROC_MASTER`` in a temporary directory; ``down`` always cleans up,
    by ``gproc down`` and then by the processes and run directory its ``.up`` record names."""

    def __init__(self, gproc: str, n: int, tmp: str) -> None:
        self.gproc, self.n = gproc, n
        self.socket = os.path.join(tmp, "g")
        self.env = {**os.environ, "GPROC_MASTER": self.socket}
        self.procs: list[tuple[int, float]] = []
        self.rundir: str | None = None
        self.ups: list[float] = []

    def up(self) -> float:
        t0 = time.perf_counter()
        p = subprocess.run(
            [self.gproc, "up", "--local", str(self.n)], env=self.env, capture_output=True, text=True, timeout=600
        )
        dt = time.perf_counter() - t0
        self._record()
        if p.returncode != 0:
            raise RuntimeError(f"gproc up --local {self.n} failed ({p.returncode}): {p.stderr.strip()[-300:]}")
        self.ups.append(dt)
        return dt

    def _record(self) -> None:
        """The processes and run directory that ``gproc up`` recorded next to the socket, if it did."""
        try:
            with open(self.socket + ".up") as f:
                rec = json.load(f)
            self.procs = [(int(p[0]), float(p[1])) for p in rec["procs"]]
            self.rundir = rec.get("rundir")
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            pass

    def daemons(self) -> list[psutil.Process]:
        """The cluster's own processes: the recorded ones and their descendants of the same program
        (starters), not the programs the nodes run."""
        out = []
        for pid, created in self.procs:
            try:
                p = psutil.Process(pid)
                if abs(p.create_time() - created) > 1:
                    continue
                name = p.name()
                out.append(p)
                out += [c for c in p.children(recursive=True) if c.name() == name]
            except psutil.Error:
                pass
        return out

    def down(self) -> None:
        try:
            subprocess.run([self.gproc, "down"], env=self.env, capture_output=True, timeout=60)
        except subprocess.TimeoutExpired:
            pass
        for pid, created in self.procs:
            try:
                if abs(psutil.Process(pid).create_time() - created) <= 1:
                    os.killpg(pid, signal.SIGKILL)
            except (psutil.Error, ProcessLookupError, PermissionError):
                pass
        if self.rundir and os.path.basename(self.rundir).startswith("gproc-"):
            shutil.rmtree(self.rundir, ignore_errors=True)
        self.procs, self.rundir = [], None

    def restart(self) -> float:
        self.down()
        return self.up()


class Sampler:
    """Peak summed RSS of the cluster's processes (and of the largest one), and their CPU, meanwhile."""

    def __init__(self, cluster: Cluster | None) -> None:
        self.cluster = cluster
        self.peak_sum = self.peak_one = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.cpu0 = self._cpu()

    def _cpu(self) -> float:
        total = 0.0
        for p in self.cluster.daemons() if self.cluster else []:
            try:
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._done.wait(SAMPLE_EVERY):
            rss = []
            for p in self.cluster.daemons() if self.cluster else []:
                try:
                    rss.append(p.memory_info().rss)
                except psutil.Error:
                    pass
            if rss:
                self.peak_sum = max(self.peak_sum, sum(rss))
                self.peak_one = max(self.peak_one, max(rss))

    def __enter__(self) -> Sampler:
        if self.cluster:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def cpu(self) -> float:
        return self._cpu() - self.cpu0


# ---- one run -------------------------------------------------------------------------------------


@dataclass
class Run:
    tool: str
    case: str
    n: int
    wall: float
    rc: int | None
    timed_out: bool
    client_peak_mib: float
    client_cpu: float
    daemons_peak_mib: float | None
    daemon_proc_peak_mib: float | None
    out_bytes: int  # bytes the client wrote on stdout (labels included)
    other_load: float
    verdict: Verdict
    ok: bool
    summary: str
    lag: tuple[float, float] | None = None  # trickle: median and worst delay of a line behind schedule, s
    stderr: str = ""

    written_bytes: int = 0  # what the nodes' commands wrote, all nodes together

    @property
    def lines_per_s(self) -> float:
        """Lines delivered per second: as received, but no more than the nodes wrote (a line cut in two
        is not two lines' worth)."""
        return min(self.verdict.lines, self.verdict.expected_lines * self.verdict.nodes) / self.wall

    @property
    def bytes_per_s(self) -> float:
        """Bytes delivered per second: as received when no line was altered; else the nodes' bytes in the
        share of their lines that arrived (replacement characters, bytes lost after a NUL, say nothing)."""
        v = self.verdict
        if v.exact == v.nodes:
            return min(v.bytes, self.written_bytes) / self.wall
        return self.written_bytes * min(1.0, v.lines / max(1, v.expected_lines * v.nodes)) / self.wall


def tool_argv(tool: str, gproc: str, pdsh: str, clush: str, n: int, argv: list[str]) -> list[str]:
    nodes = f"node[0-{n - 1}]"
    if tool == "gproc":
        return [gproc, "e", "**", *argv]
    if tool == "gproc-json":
        return [gproc, "e", "--json", "**", *argv]
    return [pdsh if tool == "pdsh" else clush, "-R", "exec", "-f", str(n), "-w", nodes, *argv]


def stop(pid: int, gentle: bool) -> tuple[int, resource.struct_rusage]:
    """End a client and reap it (its wait status and usage). gproc (``gentle``): SIGINT twice, as a
    user's Ctrl-C (the job gets SIGINT, then SIGKILL); then SIGKILL to its whole process group."""
    for _ in range(2 if gentle else 0):
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + STOP_GRACE
        while time.monotonic() < deadline:
            got, status, usage = os.wait4(pid, os.WNOHANG)
            if got:
                _kill_group(pid)
                return status, usage
            time.sleep(0.02)
    _kill_group(pid)
    _, status, usage = os.wait4(pid, 0)
    return status, usage


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_once(
    tool: str, argv: list[str], env: dict[str, str], case: Case, n: int, limit: float, tmp: str, cluster: Cluster | None
) -> Run:
    out_path, err_path = os.path.join(tmp, "out"), os.path.join(tmp, "err")
    live = case.interval > 0
    arrivals: list[tuple[float, bytes]] = []
    timed_out = False
    cut = 0
    rc: int | None = None
    usage: resource.struct_rusage | None = None
    hwm = 0  # the client's peak RSS (kB), read while it runs: wait4's would count the fork before exec
    busy0, own0 = machine_busy_seconds(), _own_cpu()
    with open(out_path, "wb") as out, open(err_path, "wb") as err, Sampler(cluster) as sampler:
        t0 = time.perf_counter()
        p = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if live else out, stderr=err, env=env,
            start_new_session=True,
        )  # fmt: skip
        reader = None
        if live:
            assert p.stdout is not None
            pipe = p.stdout

            def read() -> None:
                for raw in pipe:
                    arrivals.append((time.perf_counter(), raw))
                    out.write(raw)

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
        try:
            while True:
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    wall = time.perf_counter() - t0
                    rc, usage = os.waitstatus_to_exitcode(status), ru
                    p.returncode = rc
                    break
                if time.perf_counter() - t0 > limit:
                    wall, timed_out = limit, True
                    out.flush()
                    cut = os.fstat(out.fileno()).st_size  # judged on what arrived within the limit
                    status, usage = stop(p.pid, gentle=tool.startswith("gproc"))
                    p.returncode = os.waitstatus_to_exitcode(status)
                    break
                hwm = max(hwm, peak_rss_kib(p.pid))
                time.sleep(0.005)
        finally:
            if p.returncode is None:  # interrupted: leave nothing running
                stop(p.pid, gentle=False)
                p.returncode = -signal.SIGKILL
        if reader is not None:
            reader.join(10)
        out.flush()
        daemon_cpu = sampler.cpu()
    busy, own = machine_busy_seconds() - busy0, _own_cpu() - own0
    elapsed = time.perf_counter() - t0  # with the stopping of a stopped run
    other = max(0.0, (busy - own - daemon_cpu) / (elapsed * (os.cpu_count() or 1)))
    if timed_out and not live:
        os.truncate(out_path, cut)

    checker = Checker([f"node{i}" for i in range(n)], case.expected)
    lag = None
    if live:
        lags = follow(checker, [a for a in arrivals if a[0] - t0 <= limit], tool == "gproc-json", case.interval)
        lag = (statistics.median(lags), max(lags)) if lags else None
    else:
        with open(out_path, "rb") as f:
            checker.feed_file(f, json_mode=tool == "gproc-json")
    v = checker.verdict()
    with open(err_path, "rb") as f:
        err_tail = f.read()[-400:].decode(errors="replace").strip()
    assert usage is not None
    return Run(
        tool=tool,
        case=case.name,
        n=n,
        wall=wall,
        rc=rc,
        timed_out=timed_out,
        client_peak_mib=hwm / 1024,
        client_cpu=usage.ru_utime + usage.ru_stime,
        daemons_peak_mib=sampler.peak_sum / 2**20 if sampler.peak_sum else None,
        daemon_proc_peak_mib=sampler.peak_one / 2**20 if sampler.peak_one else None,
        out_bytes=os.path.getsize(out_path),
        other_load=other,
        verdict=v,
        ok=v.ok and rc == 0 and not timed_out,
        summary=v.summary(),
        lag=lag,
        written_bytes=n * (len(checker.expected.data) - checker.expected.nlines),
        stderr=err_tail if (rc or timed_out or not v.ok) else "",
    )


def peak_rss_kib(pid: int) -> int:
    """VmHWM of a running process (0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _own_cpu() -> float:
    return sum(
        r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    )


def follow(checker: Checker, arrivals: list[tuple[float, bytes]], json_mode: bool, interval: float) -> list[float]:
    """Feed timed lines to the checker; each line's lag behind its schedule: line j of a node is due
    j x ``interval`` after the earliest start any line implies (arrival - j x interval), so that the
    nodes' start-up skew and the client's batching show, and a late first line does not hide them."""
    implied: list[float] = []
    feed = checker.feed_json if json_mode else checker.feed_labelled
    for ts, raw in arrivals:
        got: list[Tally] = feed(raw)
        implied += [ts - (t.lines - 1) * interval for t in got]
    start = min(implied, default=0.0)
    return [s - start for s in implied]


# ---- the whole benchmark -------------------------------------------------------------------------


@contextmanager
def cleanup_on_term() -> Iterator[None]:
    """SIGTERM runs the same teardown as Ctrl-C."""
    old = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@dataclass
class Plan:
    sizes: list[int]
    cases: list[str]
    tools: list[str]
    repeat: int
    limit: float
    quick: bool
    gproc: str
    pdsh: str = ""
    clush: str = ""
    ups: dict[int, list[float]] = field(default_factory=dict)
    error: str = ""  # why the run ended early, if it did


def bench(plan: Plan) -> tuple[list[Run], dict[str, str]]:
    """Every run, and each case's title."""
    runs: list[Run] = []
    tmp = tempfile.mkdtemp(prefix="gpo-", dir="/tmp")  # short: the master's socket lives here
    cluster: Cluster | None = None
    cases: dict[str, Case] = {}
    try:
        cases = make_cases(tmp, plan.quick)
        for n in plan.sizes:
            cluster = None
            if any(t.startswith("gproc") for t in plan.tools):
                cluster = Cluster(plan.gproc, n, tmp)
                say(f"N={n}: gproc up --local {n} in {cluster.up():.1f} s")
                warm_up(cluster, [cases[c] for c in plan.cases])
            for name in plan.cases:
                case = cases[name]
                for _ in range(plan.repeat):
                    for tool in plan.tools:
                        argv = tool_argv(tool, plan.gproc, plan.pdsh, plan.clush, n, case.argv)
                        gp = tool.startswith("gproc")
                        env = cluster.env if gp and cluster else dict(os.environ)
                        r = run_once(tool, argv, env, case, n, plan.limit, tmp, cluster if gp else None)
                        runs.append(r)
                        say(
                            f"N={n} {name:8} {tool:10} {r.wall:6.1f} s {r.lines_per_s:>10,.0f} lines/s"
                            f" client {r.client_peak_mib:6.1f} MiB rc={r.rc}{' TIMEOUT' if r.timed_out else ''}"
                            f" {r.summary}"
                        )
                        if gp and cluster and (r.rc != 0 or r.timed_out):
                            say(f"  cluster started again in {cluster.restart():.1f} s")
                            warm_up(cluster, [case])
            if cluster:
                plan.ups[n] = cluster.ups
                cluster.down()
                cluster = None
    except (Exception, subprocess.SubprocessError) as e:  # keep what was measured; say why it ended
        plan.error = f"{type(e).__name__}: {e}"
        say(f"output.py: stopped early by {plan.error}")
    finally:
        if cluster:
            cluster.down()
        shutil.rmtree(tmp, ignore_errors=True)
    return runs, {c.name: c.title for c in cases.values()}


def warm_up(cluster: Cluster, cases: list[Case]) -> None:
    """Each program once on every node (tiny output), so that the runs find it in the nodes' stores."""
    done = set()
    for c in cases:
        argv = {"seq": ["seq", "1", "1"], "cat": ["cat", "/dev/null"], "perl": ["perl", "-e", "1"]}[c.argv[0]]
        if argv[0] not in done:
            done.add(argv[0])
            subprocess.run(
                [cluster.gproc, "e", "**", *argv], env=cluster.env, stdin=subprocess.DEVNULL, capture_output=True,
                timeout=120,
            )  # fmt: skip


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---- report --------------------------------------------------------------------------------------


def pick(runs: list[Run]) -> Run:
    """The run of median wall time among repeats."""
    return sorted(runs, key=lambda r: r.wall)[len(runs) // 2]


def rate(x: float) -> str:
    return f"{x / 1e6:.2f} M" if x >= 1e6 else f"{x / 1e3:.0f} k" if x >= 1e3 else f"{x:.0f}"


def verdict_text(group: list[Run], limit: float) -> str:
    worst = min(group, key=lambda r: (r.ok, r.verdict.complete, r.verdict.in_order, r.verdict.exact))
    if all(r.ok for r in group):
        text = "ok"
    else:
        text = worst.summary
        if worst.timed_out:
            text += f"; stopped at {limit:.0f} s"
        elif worst.rc:
            text += f"; exit {worst.rc}"
    if len(group) > 1:
        text += f" ({sum(r.ok for r in group)}/{len(group)} runs ok)"
    return text


def report(plan: Plan, runs: list[Run], meta: dict[str, str], titles: dict[str, str]) -> str:
    groups: dict[tuple[str, int, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.case, r.n, r.tool), []).append(r)
    lines = [
        "## Output: bulk and trickling output of N local nodes (bench/output.py)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}  ",
        f"Machine: {meta['machine']}  ",
        f"gproc: {meta['gproc']}  ",
        f"Peers: {meta['peers']}  ",
        *([f"Tables rendered again from the run's JSON: `{meta['rendered']}`  "] if meta.get("rendered") else []),
        "gproc up --local N: "
        + ", ".join(f"N={n} {', '.join(f'{u:.1f}' for u in ups)} s" for n, ups in plan.ups.items()),
        "",
        "Each node runs the same command; gproc as typed (`gproc e '**' CMD`, live `nodes: line` output), pdsh"
        " and clush as `-R exec -f N -w node[0-N-1] CMD`. *lines/s*, *MB/s*: lines and bytes per second at the"
        " client, every node's copy counted (a line gproc folds for k nodes counts k times), over the wall time"
        " of the command, no more than the nodes wrote (pieces of a cut line, replacement characters do not count"
        " extra; with lines altered, MB/s is the nodes' bytes in the share of lines that arrived); *x pdsh*,"
        " *x clush*: gproc's lines/s over theirs (> 1: gproc faster). *client*: peak"
        " RSS of the command; *daemons*: peak of the summed RSS of the cluster's master and node processes."
        " *verdict*: per node, every line present (complete), in order, byte-exact (`output_check.py`);"
        f" runs stopped at the {plan.limit:.0f} s limit are judged and timed on what arrived by then."
        " *lag*: how late a trickled line arrives behind its schedule (line j due j x 0.1 s after the earliest"
        " start any line implies: the nodes' start-up skew and the client's batching show), median / worst."
        f" *other*: CPU share of processes outside the benchmark (the machine is shared). {plan.repeat} run(s)"
        " per point; figures from the median run by wall time.",
        "",
        *targets(plan, groups, titles),
        "",
        "| case | N | tool | s | lines/s | MB/s | x pdsh | x clush | client MiB | daemons MiB | lag ms med/max | other"
        " | verdict |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in plan.cases:
        for n in plan.sizes:
            peers = {t: pick(groups[(name, n, t)]) for t in ("pdsh", "clush") if (name, n, t) in groups}
            for tool in plan.tools:
                group = groups.get((name, n, tool))
                if not group:
                    continue
                r = pick(group)
                ratios = [
                    f"{r.lines_per_s / peers[t].lines_per_s:.2f}"
                    if tool.startswith("gproc") and t in peers and peers[t].lines_per_s
                    else ""
                    for t in ("pdsh", "clush")
                ]
                daemons = f"{r.daemons_peak_mib:.0f}" if r.daemons_peak_mib else ""
                lag = f"{r.lag[0] * 1000:.0f} / {r.lag[1] * 1000:.0f}" if r.lag is not None else ""
                lines.append(
                    f"| {titles[name]} | {n} | {tool} | {r.wall:.1f} | {rate(r.lines_per_s)} |"
                    f" {r.bytes_per_s / 1e6:.1f} | {ratios[0]} | {ratios[1]} | {r.client_peak_mib:.0f} | {daemons} |"
                    f" {lag} | {r.other_load:.0%} | {verdict_text(group, plan.limit)} |"
                )
    if plan.error:
        lines += ["", f"**The run stopped early**: {plan.error}"]
    problems = [r for r in runs if not r.ok]
    if problems:
        lines += ["", "First deviations seen (up to 3 nodes per run):", ""]
        for r in problems:
            errs = "; ".join(r.verdict.errors)
            tail = f" stderr: `{r.stderr.splitlines()[-1][:200]}`" if r.stderr else ""
            lines.append(f"- {r.case} N={r.n} {r.tool}: {errs or r.summary}{tail}")
    return "\n".join(lines) + "\n"


def targets(plan: Plan, groups: dict[tuple[str, int, str], list[Run]], titles: dict[str, str]) -> list[str]:
    """Issue 17's targets per case and N: throughput at least pdsh's, every run complete (in order, exact),
    the client within 100 MiB."""
    out = [
        "Targets (issue 17): gproc's throughput >= pdsh's, every run complete, in order and byte-exact, client"
        f" <= {CLIENT_MIB} MiB (trickle's pace is the program's: its ratio is not judged).",
        "",
        "| case | N | tool | gproc/pdsh | gproc/clush | complete, in order, exact | client <= 100 MiB |",
        "|---|---:|---|---:|---:|---|---|",
    ]
    for name in plan.cases:
        for n in plan.sizes:
            for tool in (t for t in plan.tools if t.startswith("gproc")):
                group = groups.get((name, n, tool))
                if not group:
                    continue
                r = pick(group)
                cells = []
                for peer in ("pdsh", "clush"):
                    p = groups.get((name, n, peer))
                    x = r.lines_per_s / pick(p).lines_per_s if p and pick(p).lines_per_s else None
                    judged = x is not None and peer == "pdsh" and name != "trickle"  # trickle: the program's pace
                    met = (" met" if x >= 1 else " **not met**") if judged and x is not None else ""
                    cells.append(f"{x:.2f}{met}" if x is not None else "")
                ok = sum(g.ok for g in group)
                mem = max(g.client_peak_mib for g in group)
                cells.append(("yes" if ok == len(group) else "**no**") + f" ({ok}/{len(group)} runs)")
                cells.append(("yes" if mem <= CLIENT_MIB else "**no**") + f" ({mem:.0f} MiB)")
                out.append(f"| {titles[name]} | {n} | {tool} | " + " | ".join(cells) + " |")
    return out


def gproc_source(gproc: str) -> str:
    """Where the measured gproc comes from: its package directory and git commit (``+`` if src/ differs)."""
    try:
        with open(gproc, "rb") as f:
            first = f.readline().decode().strip()
        python = first[2:].strip() if first.startswith("#!") else sys.executable
        code = "import gproc, os; print(os.path.dirname(gproc.__file__))"
        pkg = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60).stdout.strip()
        git = ["git", "-C", pkg]
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "."], capture_output=True, text=True).stdout.strip()
        return f"{gproc} ({pkg}, commit {commit or '?'}{'+' if dirty else ''})"
    except (OSError, UnicodeDecodeError, subprocess.SubprocessError):
        return gproc


def load(path: str) -> tuple[Plan, list[Run], dict[str, str]]:
    """A run kept by ``--json-out``."""
    try:
        with open(path) as f:
            doc = json.load(f)
        plan = Plan(**{**doc["plan"], "ups": {int(k): v for k, v in doc["plan"]["ups"].items()}})
        runs = []
        for r in doc["runs"]:
            lag = tuple(r["lag"]) if r.get("lag") else None
            runs.append(Run(**{**r, "verdict": Verdict(**r["verdict"]), "lag": lag}))
        return plan, runs, doc["meta"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"output.py: cannot read {path}: {e}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--sizes", help="node counts (default 16,64,256; --quick: 16)")
    ap.add_argument("--cases", default=",".join(CASES), help=f"of {', '.join(CASES)}")
    ap.add_argument("--tools", default="gproc,pdsh,clush", help=f"of {', '.join(TOOLS)}")
    ap.add_argument("--repeat", type=int, default=1, help="runs per point (tools alternate)")
    ap.add_argument("--limit", type=float, help="seconds a run may take before it is stopped (default 30; --quick 20)")
    ap.add_argument("--quick", action="store_true", help="N = 16, smaller outputs, 20 s limit")
    ap.add_argument("--gproc", help="the gproc command to measure (default: gproc on PATH)")
    ap.add_argument("--json-out", default=str(Path(__file__).resolve().parent / "output.json"))
    ap.add_argument("--section", default="output", help="RESULTS.md section to write")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md and the JSON alone")
    ap.add_argument("--from-json", metavar="FILE", help="measure nothing: the report of a run --json-out kept")
    args = ap.parse_args()
    if args.from_json:
        plan, runs, meta = load(args.from_json)
        meta["rendered"] = shlex.join(["python", "bench/output.py", *sys.argv[1:]])
        text = report(plan, runs, meta, titles_of(plan.quick))
        print(text)
        if not args.no_write:
            print(f"written to {write_section(args.section, text)}", file=sys.stderr)
        return 0

    def listed(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
        items = [x for x in text.split(",") if x]
        bad = [x for x in items if x not in allowed]
        if bad or not items:
            ap.error(f"{what}: {', '.join(bad) or 'none given'}; choose from {', '.join(allowed)}")
        return items

    try:
        sizes = [int(x) for x in (args.sizes or ("16" if args.quick else "16,64,256")).split(",") if x]
    except ValueError:
        ap.error(f"--sizes: not a list of numbers: {args.sizes!r}")
    if not sizes or min(sizes) < 1:
        ap.error("--sizes: give node counts of at least 1")
    gproc = args.gproc or shutil.which("gproc")
    if not gproc or not os.access(gproc, os.X_OK):
        ap.error(f"no gproc command at {args.gproc or 'PATH'}")
    plan = Plan(
        sizes=sizes,
        cases=listed(args.cases, CASES, "--cases"),
        tools=listed(args.tools, TOOLS, "--tools"),
        repeat=max(1, args.repeat),
        limit=args.limit or (20.0 if args.quick else 30.0),
        quick=args.quick,
        gproc=os.path.abspath(gproc),
    )
    if any(t in ("pdsh", "clush") for t in plan.tools):
        plan.pdsh, plan.clush = ensure_peers()
    meta = {
        "command": shlex.join(["python", "bench/output.py", *sys.argv[1:]]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(load=True) + f", Python {platform.python_version()}",
        "gproc": gproc_source(plan.gproc),
        "peers": f"{version([plan.pdsh, '-V'])}; {version([plan.clush, '--version'])}" if plan.pdsh else "",
    }
    try:
        with cleanup_on_term():
            runs, titles = bench(plan)
    except KeyboardInterrupt:
        say("output.py: interrupted; its clusters are stopped and its temporary files removed")
        return 130
    text = report(plan, runs, meta, titles)
    print(text)
    if not args.no_write:
        print(f"written to {write_section(args.section, text)}", file=sys.stderr)
        doc = {"meta": meta, "plan": asdict(plan), "runs": [asdict(r) for r in runs]}
        Path(args.json_out).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"and {args.json_out}", file=sys.stderr)
    ok = sum(r.ok for r in runs)
    say(f"{ok} of {len(runs)} runs complete, in order and exact")
    return 1 if plan.error else 0


if __name__ == "__main__":
    sys.exit(main())
