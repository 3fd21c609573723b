"""Fault injection: jobs of every kind users run, while a seeded schedule kills, freezes and restarts
daemon processes, restarts the master once and degrades or cuts network links; then the invariants.

Invariants checked at the end (each violation is one line of ``Report.violations``):
* every job ended: each client call returned within its bound, and the master lists no job running;
* every selected node's result is delivered (its output line and a status) or reported with a
  reason (a status with an error: lost, absent, the master restarted …); no node reported twice;
* no gpid given twice (the gpids the jobs' processes saw, and those ``ps`` listed);
* the master's SQLite state passes ``PRAGMA integrity_check``;
* no daemon process exceeded ``rss_mb`` resident memory;
* nothing hangs: every wait is bounded, and once the faults end every node is up again and runs a job.

The schedule comes from ``random.Random(seed)``; the seed is printed first, and
``GPROC_CHAOS_SEED=N`` replays it (the same faults at the same times against the same jobs; the
machine's timing still varies).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psutil
from ClusterShell.NodeSet import NodeSet
from tests.chaos.bed import Bed

from gproc.client import Cluster, Output, Status
from gproc.errors import ConnectError, GprocError


@dataclass
class Plan:
    seed: int
    nodes: int = 32
    interior: int = 4
    per_worker: int = 6
    hosts: int = 2
    jobs: int = 8  # jobs in flight at once
    seconds: float = 30.0  # how long faults are injected
    rss_mb: float = 400.0  # bound of any daemon process's resident memory
    fault_every: float = 2.5  # mean seconds between faults
    job_bound: float = 120.0  # the longest any client call may take before it counts as a hang
    select_max: int = 0  # most nodes a -w selection names (0: a third of them)
    everyone: float = 0.3  # share of jobs that run on every node (**)

    @staticmethod
    def seed_from_env() -> int:
        text = os.environ.get("GPROC_CHAOS_SEED")
        return int(text) if text else random.SystemRandom().randrange(1, 2**31)


@dataclass
class Fault:
    at: float
    kind: str  # kill | stop | netem | cut | master
    target: str
    hold: float
    loss: float = 0.0
    delay_ms: int = 0

    def __str__(self) -> str:
        extra = f" loss {self.loss}% delay {self.delay_ms}ms" if self.kind == "netem" else ""
        return f"t={self.at:5.1f}s {self.kind:6} {self.target:9} for {self.hold:4.1f}s{extra}"


def schedule(plan: Plan, rng: random.Random, procs: list[str], hosts: list[str]) -> list[Fault]:
    """The faults, from the seed alone: never two at once on one target; the master once, mid-run."""
    faults = [Fault(rng.uniform(0.35, 0.6) * plan.seconds, "master", "master", 0.0)]
    busy: dict[str, float] = {}
    t = 0.0
    while True:
        t += rng.expovariate(1.0 / plan.fault_every)
        if t >= plan.seconds * 0.9:
            break
        kinds = ["kill", "stop", "stop"] + (["netem", "cut"] if hosts else [])
        kind = rng.choice(kinds)
        pool = hosts if kind in ("netem", "cut") else procs
        free = [p for p in pool if busy.get(p, 0.0) <= t]
        if not free:
            continue
        target = rng.choice(free)
        hold = rng.choice([rng.uniform(0.5, 2.5), rng.uniform(4.0, 10.0)])  # shorter and longer than dead-after
        busy[target] = t + hold + 1.0
        f = Fault(t, kind, target, hold)
        if kind == "netem":
            f.loss, f.delay_ms = rng.choice([1.0, 5.0, 20.0]), rng.choice([10, 50, 200])
        faults.append(f)
    return sorted(faults, key=lambda f: f.at)


@dataclass
class Report:
    seed: int
    plan: Plan
    faults: list[Fault] = field(default_factory=list)
    jobs: dict[str, int] = field(default_factory=dict)  # kind -> jobs run
    outcomes: dict[str, int] = field(default_factory=dict)  # delivered | reason -> node results
    gpids: int = 0
    max_rss_mb: dict[str, float] = field(default_factory=dict)  # process kind -> largest seen
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    logs: str = ""  # where the daemons' logs were kept (a run with violations)
    netem: bool = True  # False: the kernel has no sch_netem, "netem" faults were token-bucket slow links
    processes: str = ""  # what processes the nodes ran in

    def count(self, key: str, n: int = 1) -> None:
        self.outcomes[key] = self.outcomes.get(key, 0) + n

    def summary(self) -> str:
        jobs = ", ".join(f"{k} {v}" for k, v in sorted(self.jobs.items()))
        outs = ", ".join(f"{k}: {v}" for k, v in sorted(self.outcomes.items(), key=lambda kv: -kv[1]))
        rss = ", ".join(f"{k} {v:.0f}" for k, v in sorted(self.max_rss_mb.items()))
        faults: dict[str, int] = {}
        for f in self.faults:
            faults[f.kind] = faults.get(f.kind, 0) + 1
        return (
            f"seed {self.seed}: {self.plan.nodes} nodes, {self.plan.jobs} jobs in flight,"
            f" {self.plan.seconds:.0f}s of faults"
            f" ({', '.join(f'{k} {v}' for k, v in sorted(faults.items()))}), {self.seconds:.0f}s in all\n"
            f"jobs: {sum(self.jobs.values())} ({jobs})\nnode results: {outs}\n"
            f"distinct gpids seen: {self.gpids}; largest RSS (MiB): {rss}\n"
            + (
                f"VIOLATIONS ({len(self.violations)}):\n  " + "\n  ".join(self.violations)
                if self.violations
                else "every invariant held"
            )
        )


class Chaos:
    """One run: the bed, the schedule, the jobs and the bookkeeping the invariants need."""

    def __init__(self, plan: Plan, bed: Bed, log: Callable[[str], None]) -> None:
        self.plan, self.bed, self.log = plan, bed, log
        self.rng = random.Random(plan.seed)
        self.report = Report(plan.seed, plan)
        self.gpids: dict[int, tuple[str, int]] = {}  # gpid -> (node, job)
        self.restarts: list[tuple[float, float]] = []  # master down .. up again (monotonic)
        self.faulting = True
        self.gathers = 0
        self.workdir = os.path.join(bed.dir, "work")
        os.makedirs(self.workdir, exist_ok=True)
        self.env = {**os.environ, "GPROC_MASTER": bed.socket}

    def fail(self, text: str) -> None:
        self.report.violations.append(text)
        self.log("VIOLATION " + text)

    # ---- faults ----

    async def inject(self, faults: list[Fault]) -> None:
        start = time.monotonic()
        pending: list[asyncio.Task[None]] = []
        for f in faults:
            await asyncio.sleep(max(0.0, start + f.at - time.monotonic()))
            self.log(f"fault {f}")
            pending.append(asyncio.ensure_future(self.apply(f)))
        await asyncio.sleep(max(0.0, start + self.plan.seconds - time.monotonic()))
        await asyncio.gather(*pending)

    async def apply(self, f: Fault) -> None:
        bed = self.bed
        if f.kind == "master":
            self.restarts.append((time.monotonic(), float("inf")))
            m = bed.procs["master"]
            await asyncio.to_thread(m.kill)
            await asyncio.sleep(0.5)
            m.start()
            await asyncio.to_thread(self._wait_master)
            self.restarts[-1] = (self.restarts[-1][0], time.monotonic())
            return
        if f.kind == "kill":
            p = bed.procs[f.target]
            await asyncio.to_thread(p.kill)
            await asyncio.sleep(f.hold)
            if not p.alive():
                p.start()
        elif f.kind == "stop":
            p = bed.procs[f.target]
            p.signal(signal.SIGSTOP)
            await asyncio.sleep(f.hold)
            p.signal(signal.SIGCONT)
        elif f.kind == "netem":
            kind = await asyncio.to_thread(bed.netem, f.target, f.loss, f.delay_ms)
            if kind != "netem":
                self.log(f"  (no netem in this kernel: {f.target} gets {kind})")
                self.report.netem = False
            await asyncio.sleep(f.hold)
            await asyncio.to_thread(bed.clear_netem, f.target)
        elif f.kind == "cut":
            await asyncio.to_thread(bed.set_link, f.target, False)
            await asyncio.sleep(f.hold)
            await asyncio.to_thread(bed.set_link, f.target, True)

    def _wait_master(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(GprocError, OSError):
                asyncio.run(Cluster(self.bed.socket, timeout=3).stats())
                return
            time.sleep(0.1)
        self.fail("the restarted master did not answer within 60s")

    async def sample_rss(self) -> None:
        while True:
            for p in list(self.bed.procs.values()):
                if not p.alive():
                    continue
                with contextlib.suppress(psutil.Error):
                    mb = psutil.Process(p.pid).memory_info().rss / 2**20
                    if mb > self.report.max_rss_mb.get(p.kind, 0.0):
                        self.report.max_rss_mb[p.kind] = mb
                    if mb > self.plan.rss_mb:
                        self.fail(f"{p.name} (pid {p.pid}) resident {mb:.0f} MiB > {self.plan.rss_mb:.0f} MiB")
            await asyncio.sleep(1.0)

    # ---- jobs ----

    def restarted_during(self, t0: float, t1: float) -> bool:
        return any(a <= t1 and t0 <= b + 5.0 for a, b in self.restarts)

    def selection(self) -> tuple[str | None, str | None, set[str] | None]:
        """(tree path, -w names, the names selected when known)."""
        names = self.bed.names()
        if self.rng.random() < self.plan.everyone:
            return "**", None, None
        most = self.plan.select_max or max(1, len(names) // 3)
        pick = self.rng.sample(names, self.rng.randint(1, min(most, len(names))))
        return None, str(NodeSet.fromlist(pick)), set(pick)

    def seen_gpid(self, gpid: int, node: str, job: int) -> None:
        had = self.gpids.setdefault(gpid, (node, job))
        if had != (node, job):
            self.fail(f"gpid {gpid} given twice: {had[0]} in job {had[1]} and {node} in job {job}")

    def check_results(
        self, what: str, job: int, nnodes: int, want: set[str] | None, events: list[Output | Status],
        expect: Callable[[str, bytes, int], str | None],
    ) -> None:  # fmt: skip
        """Every selected node once: a status with an error (a reason), or its output and a status that
        ``expect(node, stdout, status)`` accepts (it returns what is wrong, or None)."""
        out: dict[str, list[tuple[int, bytes]]] = {}
        st: dict[str, Status] = {}
        for ev in events:
            for name in NodeSet(ev.nodes):
                if isinstance(ev, Status):
                    if name in st:
                        self.fail(f"{what} job {job}: {name} reported twice ({st[name]} and {ev})")
                    st[name] = ev
                elif ev.stream == "stdout":
                    out.setdefault(name, []).append((ev.lineno, ev.data))
        got = set(st)
        if want is not None and got != want:
            self.fail(f"{what} job {job}: no result for {sorted(want - got)[:5]}, unasked {sorted(got - want)[:5]}")
        if want is None and len(got) != nnodes:
            self.fail(f"{what} job {job}: {nnodes} nodes selected, {len(got)} results")
        for name, s in st.items():
            if s.error:
                self.report.count(s.error.split(" (")[0] if s.error.startswith("lost") else s.error)
                continue
            data = b"".join(d for _, d in sorted(out.get(name, []), key=lambda x: x[0]))
            first = data.split(b"\n", 1)[0].split()
            if len(first) == 2 and first[0] == name.encode() and first[1].isdigit():
                self.seen_gpid(int(first[1]), name, job)
            wrong = expect(name, data, s.status)
            if wrong is not None:
                self.fail(f"{what} job {job} on {name}: {wrong}")
            else:
                self.report.count("delivered")

    async def lost_master(self, kind: str, e: ConnectError, t0: float, started: bool) -> None:
        """The client lost the master: expected across its restart; before the job started, a master
        too busy to take a connection in 10 s (a clean error to the user, counted); else a violation."""
        if self.restarted_during(t0, time.monotonic()):
            self.report.count("client: master restarted")
            await asyncio.sleep(1.0)  # not a storm of refused connections while it is down
        elif not started:
            self.report.count("client: master busy (no answer in 10s)")
        else:
            self.fail(f"{kind} job: the client lost the master with no restart: {e}")

    def refused(self, e: GprocError) -> None:
        """A job the master would not start (its nodes are all down or absent): a reason, not a loss."""
        text = str(e)
        self.report.count("refused: " + ("matched no node" if "matched no" in text else text[:50]))

    async def bounded(self, what: str, coro: Awaitable[Any]) -> Any:
        try:
            async with asyncio.timeout(self.plan.job_bound):
                return await coro
        except TimeoutError:
            self.fail(f"{what}: no end within {self.plan.job_bound:.0f}s (a hang)")
            return None

    async def attached(self, kind: str) -> None:
        """An exec whose client stays attached: plain output, stdin, a shipped script."""
        path, w, want = self.selection()
        sleep = self.rng.choice(["0", "0.5", "2", "5"])
        data = b""
        if kind == "stdin":
            data = self.rng.randbytes(self.rng.choice([10, 5000, 200_000])).hex().encode()[: 1 << 18] + b"\n"
            argv = ["sh", "-c", f'echo "$GPROC_NAME $GPROC_GPID"; sleep {sleep}; cat']
        elif kind == "ship":
            script = os.path.join(self.workdir, f"prog{self.rng.randrange(1 << 30)}.sh")
            with open(script, "w") as f:
                f.write(f'#!/bin/sh\n# {self.rng.random()}\necho "$GPROC_NAME $GPROC_GPID"\n')
                f.write(f"sleep {sleep}\necho shipped\n")
            os.chmod(script, 0o755)
            argv = [script]
        else:
            argv = ["sh", "-c", f'echo "$GPROC_NAME $GPROC_GPID"; sleep {sleep}; echo end']
        tail = {"stdin": data, "ship": b"shipped\n", "out": b"end\n"}[kind]

        def expect(name: str, out: bytes, status: int) -> str | None:
            want_out = f"{name} ".encode()
            if status != 0:
                return f"status {status}"
            if not out.startswith(want_out) or not out.endswith(tail) or out.count(b"\n") != 1 + tail.count(b"\n"):
                return f"output {out[:80]!r}…{out[-40:]!r}"
            return None

        t0 = time.monotonic()
        cl = Cluster(self.bed.socket, timeout=10)
        started = False
        try:
            job = await cl.exec(argv, path, include=w, cwd=self.workdir, stdin=data if kind == "stdin" else None)
            started = True
            events = [ev async for ev in job]
        except ConnectError as e:
            await self.lost_master(kind, e, t0, started)
            return
        except GprocError as e:
            self.refused(e)
            return
        self.check_results(kind, job.id, job.nnodes, want, events, expect)

    async def gathered(self) -> None:
        """``gproc e -b --json`` through the command line: results gathered in the tree."""
        path, w, want = self.selection()
        args = ["-w", w] if w else [path or "**"]
        t0 = time.monotonic()
        p = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gproc", "e", "-b", "--json", *args, "sh", "-c", 'echo "$GPROC_NAME $GPROC_GPID"',
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=self.env, cwd=self.workdir,
        )  # fmt: skip
        try:
            out, err = await p.communicate()
        finally:
            if p.returncode is None:
                p.kill()
                await p.wait()
        text = err.decode(errors="replace").strip()
        if p.returncode not in (0, 255) or (p.returncode == 255 and not out):
            if "master" in text and self.restarted_during(t0, time.monotonic()):
                self.report.count("client: master restarted")
                return
            if "cannot reach the master" in text or "does not answer" in text:
                self.report.count("client: master busy (no answer in 10s)")
                return
            if p.returncode == 1 and "matched" in text:
                self.report.count("refused: matched no node")
                return
            self.fail(f"gproc e -b exited {p.returncode}: {text[-200:]}")
            return
        events: list[Output | Status] = []
        for line in out.decode().splitlines():
            r = json.loads(line)
            if "status" in r:
                events.append(Status(r["nodes"], 0, int(r["status"]), str(r.get("error", ""))))
            elif r.get("stream") == "stdout":
                events.append(Output(r["nodes"], 0, "stdout", 1, r["data"].encode()))
        nn = sum(len(NodeSet(e.nodes)) for e in events if isinstance(e, Status))

        def expect(name: str, data: bytes, status: int) -> str | None:
            ok = status == 0 and data.startswith(f"{name} ".encode()) and data.count(b"\n") == 1
            return None if ok else f"status {status}, output {data[:60]!r}"

        self.gathers -= 1  # the command line prints no job id: a number of its own, apart from the master's
        self.check_results("gather", self.gathers, nn, want, events, expect)

    async def detached(self) -> None:
        """``--batch``: started, left to the master, then waited for and its output read back."""
        path, w, want = self.selection()
        t0 = time.monotonic()
        cl = Cluster(self.bed.socket, timeout=10)
        sleep = self.rng.choice(["0", "1", "3"])
        try:
            job = await cl.exec(["sh", "-c", f'echo "$GPROC_NAME $GPROC_GPID"; sleep {sleep}'], path, include=w,
                                cwd=self.workdir, batch=True)  # fmt: skip
        except ConnectError as e:
            await self.lost_master("batch", e, t0, False)  # a batch job has its id once exec returned
            return
        except GprocError as e:
            self.refused(e)
            return
        for _ in range(5):  # the master may be restarting: ask again
            try:
                res = await cl.wait(job=job.id)
                if res.get("state") == "running":
                    continue
                replay = await cl.output(job.id)
                events = [ev async for ev in replay]
                break
            except ConnectError:
                await asyncio.sleep(2)
        else:
            self.fail(f"batch job {job.id}: never read back")
            return

        def expect(name: str, data: bytes, status: int) -> str | None:
            ok = status == 0 and data.startswith(f"{name} ".encode()) and data.count(b"\n") == 1
            return None if ok else f"status {status}, output {data[:60]!r}"

        self.check_results("batch", job.id, job.nnodes, want, events, expect)

    async def procs(self) -> None:
        """A long job found with ``ps``, one gpid killed, then the whole job, then ``wait``."""
        path, w, want = self.selection()
        if want is not None and len(want) > 8:
            want = set(sorted(want)[:8])
            w = str(NodeSet.fromlist(want))
        t0 = time.monotonic()
        cl = Cluster(self.bed.socket, timeout=10)
        started = False
        try:
            job = await cl.exec(["sh", "-c", 'echo "$GPROC_NAME $GPROC_GPID"; exec sleep 60'], path, include=w,
                                cwd=self.workdir)  # fmt: skip
            started = True
            events: list[Output | Status] = []
            it = job.events()
            mine: list[int] = []
            async for ev in it:
                events.append(ev)
                if isinstance(ev, Output):
                    for ln in ev.data.split(b"\n"):
                        if ln.strip():
                            mine.append(int(ln.split()[1]))
                if len(mine) >= 1:
                    break
            rows, _ = await cl.ps(path, include=w)
            for r in rows:
                if r.get("job") == job.id:
                    self.seen_gpid(int(r["gpid"]), str(r["name"]), job.id)
            termed = False  # the SIGTERM reached the process (else its sleep may run out: status 0)
            if mine:
                sent = await cl.kill(mine[:1], sig=signal.SIGTERM)
                termed = any(r.get("code") == 0 for r in sent.get("results", []))
            signalled: set[str] = set()
            with contextlib.suppress(GprocError):  # refused when nothing of it runs any more
                killed = await cl.kill(job=job.id, sig=signal.SIGKILL)
                signalled = set(NodeSet(str(killed.get("nodes", ""))))
            events += [ev async for ev in it]
            if mine:
                res = await cl.wait(mine[:1])
                for r in res.get("results", []):
                    if r["code"] not in ((143, 137, 255, -2) if termed else (0, 143, 137, 255, -2)):
                        self.fail(f"procs job {job.id}: wait gave {r}")
        except ConnectError as e:
            await self.lost_master("procs", e, t0, started)
            return
        except GprocError as e:
            self.refused(e)
            return

        def expect(name: str, data: bytes, status: int) -> str | None:
            # a node the kill did not reach then (frozen, cut off) may let its sleep run out
            codes = (143, 137) if name in signalled else (0, 143, 137)
            ok = status in codes and data.startswith(f"{name} ".encode())
            return None if ok else f"status {status}, output {data[:60]!r}"

        self.check_results("procs", job.id, job.nnodes, want, events, expect)

    async def one_job(self) -> None:
        kind = self.rng.choice(["out", "out", "stdin", "ship", "gather", "batch", "procs"])
        self.report.jobs[kind] = self.report.jobs.get(kind, 0) + 1
        if kind in ("out", "stdin", "ship"):
            coro: Awaitable[None] = self.attached(kind)
        elif kind == "gather":
            coro = self.gathered()
        elif kind == "batch":
            coro = self.detached()
        else:
            coro = self.procs()
        await self.bounded(f"{kind} job", coro)

    async def jobs_while_faulting(self) -> None:
        async def lane() -> None:
            while self.faulting:
                await self.one_job()

        await asyncio.gather(*(lane() for _ in range(self.plan.jobs)))

    # ---- the end ----

    async def final(self) -> None:
        """Faults over: every node up again and running a job; no job left running; the gpids."""
        names = set(self.bed.names())
        deadline = time.monotonic() + 60 + len(names) / 4
        have: set[str] = set()
        while time.monotonic() < deadline:
            have = await asyncio.to_thread(self.bed.up_names)
            if names <= have:
                break
            await asyncio.sleep(0.5)
        else:
            self.fail(f"after the faults, not up again: {sorted(names - have)[:10]}")
        cl = Cluster(self.bed.socket, timeout=10)
        res = await self.bounded("final job", cl.run(["sh", "-c", 'echo "$GPROC_NAME $GPROC_GPID"'], "**",
                                                     cwd=self.workdir))  # fmt: skip
        if res is not None:
            status, events = res
            got = [s for s in events if isinstance(s, Status)]
            ok = sum(s.count for s in got if s.status == 0 and not s.error)
            if status != 0 or ok != len(names):
                self.fail(f"final job on every node: status {status}, {ok} of {len(names)} ran: {got[:4]}")
            self.check_results("final", -1, len(names), None, events, lambda n, d, s: None)
        deadline = time.monotonic() + 30
        running: list[Any] = []
        while time.monotonic() < deadline:
            running = [j for j in await cl.jobs() if j["state"] == "running"]
            if not running:
                break
            await asyncio.sleep(1)
        for j in running:
            self.fail(f"job {j['id']} ({' '.join(j['argv'])[:40]}) still running after the faults")
        self.report.gpids = len(self.gpids)

    def check_state(self) -> None:
        db = os.path.join(self.bed.state, "master.db")
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                rows = con.execute("PRAGMA integrity_check").fetchall()
            finally:
                con.close()
        except sqlite3.DatabaseError as e:  # damaged past what the check can walk
            rows = [(str(e),)]
        if rows != [("ok",)]:
            self.fail(f"master.db integrity_check: {rows[:5]}")

    async def run(self) -> Report:
        start = time.monotonic()
        procs = [p.name for p in self.bed.procs.values() if p.kind in ("mid", "worker", "host")]
        hosts = [p.name for p in self.bed.procs.values() if p.kind == "host"]
        faults = schedule(self.plan, random.Random(self.plan.seed), procs, hosts)
        self.report.faults = faults
        sampler = asyncio.ensure_future(self.sample_rss())
        try:
            jobs = asyncio.ensure_future(self.jobs_while_faulting())
            await self.inject(faults)
            self.faulting = False
            await asyncio.to_thread(self.bed.heal)
            await jobs
            await self.final()
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        self.report.seconds = time.monotonic() - start
        return self.report


def run(plan: Plan, log: Callable[[str], None] | None = None) -> Report:
    """Build the bed, run the chaos, check the invariants, remove everything; the report."""
    say = log or (lambda s: print(s, file=sys.stderr, flush=True))
    say(f"chaos seed {plan.seed} (replay: GPROC_CHAOS_SEED={plan.seed})")
    bed = Bed(plan.nodes, plan.interior, plan.per_worker, plan.hosts)
    try:
        bed.up()
        say(f"bed up: {len(bed.names())} nodes in {len(bed.procs)} processes under {bed.dir}")
        if bed.no_hosts is not None:
            say(f"no hosts in network namespaces, so no link faults: {bed.no_hosts}")
        chaos = Chaos(plan, bed, say)
        kinds = [p.kind for p in bed.procs.values()]
        chaos.report.processes = (
            f"{len(kinds)} processes: the master, {kinds.count('mid')} interior daemons (gproc s),"
            f" {kinds.count('worker')} workers of up to {plan.per_worker} nodes whose top nodes attach to an"
            f" interior daemon with another as fallback, {kinds.count('host')} daemons in network namespaces"
        )
        report = asyncio.run(chaos.run())
        with contextlib.suppress(GprocError, OSError):
            asyncio.run(Cluster(bed.socket, timeout=5).shutdown())
        m = bed.procs["master"]
        if m.popen is not None:
            with contextlib.suppress(Exception):
                m.popen.wait(10)
        m.kill()
        chaos.check_state()
        if report.violations:
            report.logs = keep_logs(bed.dir)
            say(f"logs kept in {report.logs}")
        return report
    finally:
        bed.close()


def keep_logs(rundir: str) -> str:
    """Copy the daemons' logs out of the bed's directory (which ``close`` removes) for a failed run."""
    dest = tempfile.mkdtemp(prefix="gproc-chaos-logs-")
    for f in os.listdir(rundir):
        if f.endswith(".log"):
            shutil.copy(os.path.join(rundir, f), dest)
    return dest
