"""The single process space (SPEC §7): gpids for every process a node starts or a job forks, and
``ps``, ``kill``, ``wait`` and block collection over the tree.

Node side (``ProcService``, one per ``Node``): the node's ``GpidSource`` (blocks from the master), its
``ProcTable``, the hooks ``ExecService`` calls around a spawn, and the op handlers:

=========== ==================================== ===============================================
op kind     body                                 keys (one group per distinct key)
=========== ==================================== ===============================================
``ps``      ``uid``                              ``["p", GPID, PARENT, PID, USER, STAT, CPU, RSS,
                                                 TIME, JOB, CMD]`` per process
``kill``    ``sig``, ``uid``, ``gpids`` | ``job`` ``["g", GPID, CODE, TEXT]`` per gpid; for a job
                                                 ``["s", CODE, TEXT]`` (0 signalled, 1 none here)
``wait``    ``uid``, ``gpids`` | ``job``         ``["w", GPID, STATUS, TEXT]``; for a job
                                                 ``["j", STATUS]`` (-1: not here)
``collect`` ``keep``                             ``["c", START, END]`` per range given back
``allocate`` ``n``, ``interval``                 ``["a", INTERVALS, WAITED]`` (benchmarks, stress tests)
``pidstat`` ``{}``                               ``["n", TAKEN, REQUESTS, WAITED, RESERVE, LIVE, ROUTED]``
=========== ==================================== ===============================================

Processes a job forks are found lazily, when ``ps``, ``kill`` of a job or a relayed request needs
them: the members of the job's session (every job starts in a session of its own), numbered from the
node's current block as they are first seen.

Master side (``MasterProcs``): the ``BlockTable``, the upward call ``blocks``, client requests ``ps``,
``kill``, ``wait``, ``collect``, ``gpids`` and ``allocate``, and the collection rounds. A gpid's
owner is read from the block table and only that rank receives the op: no broadcast.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
import psutil

from gproc import platform
from gproc import ranks as rankset
from gproc.errors import GprocError, RegistrationError, UsageError
from gproc.messages import Body, Selected
from gproc.pids import MAX_WANT, BlockTable, GpidSource, NoGpidError, PidConfig, Proc, ProcTable
from gproc.services.base import ClientRequest, MasterApi, Role, ServiceTable, typed, typed_call, with_ticks
from gproc.services.jobs import JobService

if TYPE_CHECKING:
    import sqlite3

    from gproc.overlay import Handler, Link, Node, Op
    from gproc.platform import PeerCred

NO_STATUS, NO_SUCH, DENIED = -1, -2, -3  # wait results that are not exit statuses
MAX_CMD = 1024
STAT = {
    psutil.STATUS_RUNNING: "R",
    psutil.STATUS_SLEEPING: "S",
    psutil.STATUS_DISK_SLEEP: "D",
    psutil.STATUS_STOPPED: "T",
    psutil.STATUS_TRACING_STOP: "t",
    psutil.STATUS_ZOMBIE: "Z",
    psutil.STATUS_DEAD: "X",
    psutil.STATUS_IDLE: "I",
    psutil.STATUS_WAKING: "W",
    psutil.STATUS_PARKED: "P",
}


def permitted(uid: int, p: Proc) -> bool:
    """May user ``uid`` act on process ``p`` (signal it, wait for it, read its stack)? Root, or its owner."""
    return uid in (0, p.uid)


# ---- op bodies, replies and client requests ---------------------------------------------------------


class PsBody(Body):
    """The ``ps`` op: the processes of the space on this node, as ``uid`` may see them."""

    uid: int


class KillBody(Body):
    """The ``kill`` op: ``sig`` to ``gpids`` of this node, or to every process of ``job``."""

    sig: int
    uid: int
    job: int | None = None
    gpids: list[int] = []


class WaitBody(Body):
    """The ``wait`` op: the exit statuses of ``gpids`` of this node, once they ended."""

    uid: int
    gpids: list[int]


class CollectBody(Body):
    """The ``collect`` op: give back the gpid blocks held beyond ``keep`` (if idle since last time)."""

    keep: int = 8


class AllocateBody(Body):
    """The ``allocate`` op: hand out ``n`` gpids, ``interval`` seconds apart (drills)."""

    n: int
    interval: float = 0.0


class PsRow(msgspec.Struct, array_like=True):
    """One process in a ``ps`` reply: the key ``["p", GPID, PARENT, PID, USER, STAT, CPU, RSS, TIME,
    JOB, CMD]`` (an array, so that identical rows of many nodes merge as one group)."""

    tag: str
    gpid: int
    parent: int
    pid: int
    user: str
    stat: str
    cpu: float
    rss: int
    time: float
    job: int
    cmd: str


class BlocksCall(Body):
    """The ``blocks`` upward call: gpid blocks for ``rank``, about ``want`` of them."""

    rank: int
    want: int = 1


class PidStat(msgspec.Struct, array_like=True):
    """One node's allocator in a ``pidstat`` reply: the key ``["n", TAKEN, REQUESTS, WAITED, RESERVE,
    LIVE, ROUTED]`` (nodes with equal counts merge)."""

    tag: str
    taken: int
    requests: int
    waited: int
    reserve: int
    live: int
    routed: int


class KillRequest(Body):
    """``kill``: ``sig`` to the processes ``gpids``, or to every process of ``job`` (§8)."""

    sig: int = 15
    job: int | None = None
    gpids: list[int] | None = None


class WaitRequest(Body):
    """``wait``: the exit statuses of ``gpids``, or of ``job`` (§8)."""

    job: int | None = None
    gpids: list[int] | None = None


class GpidsRequest(Body):
    """``gpids``: the block table's counters; ``blocks``: every block; ``nodes_stats``: each node's."""

    blocks: bool = False
    nodes_stats: bool = False


class CollectRequest(Selected):
    """``collect``: a collection round now on the selected nodes (all by default)."""

    keep: int | None = None


class AllocateRequest(Selected, kw_only=True):
    """``allocate``: each selected node hands out ``n`` gpids (stress tests, benchmarks)."""

    n: int
    interval: float = 0.0


# ---- node side -------------------------------------------------------------------------------------


class ProcService:
    """A node's part of the process space."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.table = ProcTable()
        self.gpids = GpidSource(self._ask, node.registered)
        self.sessions: dict[int, int] = {}  # session id (= pid of a job's process) -> its gpid
        self.socket_path: str | None = None  # set once the node's client socket listens
        self.routed = 0  # kill and wait ops run here (tests check that only a gpid's owner sees them)

    def service(self) -> ServiceTable:
        ops: dict[str, Handler] = {
            "ps": typed(PsBody, self._ps),
            "kill": typed(KillBody, self._kill),
            "wait": typed(WaitBody, self._wait),
            "collect": typed(CollectBody, self._collect),
            "allocate": typed(AllocateBody, self._allocate),
            "pidstat": typed(Body, self._pidstat),
        }
        return ServiceTable("procs", ops=ops, start=self.start, stop=self.end_leftovers)

    def end_leftovers(self) -> None:
        """The node stops: what its jobs forked and left running in their sessions (a background
        process of a job whose program has ended) is killed, as the jobs' own programs are. Only
        processes found in the jobs' sessions a moment ago, and still the same (start time), are
        killed; a process that called setsid has left its job and is left alone."""
        self.scan()
        for p in list(self.table.live.values()):
            if p.root:
                continue  # a job's own program: ended with its job (ExecService)
            try:
                if abs(psutil.Process(p.pid).create_time() - p.created) < 0.01:
                    os.kill(p.pid, signal.SIGKILL)
            except (psutil.Error, OSError):
                continue

    async def start(self) -> None:
        """Fetch blocks as soon as the node is attached (the master's ids come from its own table)."""
        if not self.node.is_master:
            self.node.spawn(self.gpids.run())

    async def _ask(self, want: int) -> dict[str, Any]:
        r = await self.node.call_up("blocks", {"rank": self.node.rank, "want": want})
        if not isinstance(r, dict):
            raise GprocError("bad answer to a block request")
        return r

    # -- hooks for ExecService --

    async def allocate(self) -> int:
        """A gpid for a process about to start (waits only if the node holds none)."""
        g = self.gpids.take_nowait()
        return g if g is not None else await self.gpids.take()

    def job_env(self, gpid: int, parent: int) -> dict[str, str]:
        env = {"GPROC_GPID": str(gpid), "GPROC_PARENT_GPID": str(parent)}
        if self.socket_path:
            env["GPROC_MASTER"] = self.socket_path  # gproc inside the job talks to this node
        return env

    def started(
        self, gpid: int, proc: platform.Process, job: int, uid: int, parent: int, argv: list[str] | None = None
    ) -> None:
        """A job's process is running: it is in the space until it exits. ``argv``: the command the
        user gave (a shipped program runs as ``BINROOT/…/ld.so … PROG ARGS``; ps shows ``argv``)."""
        pid = proc.pid
        self.table.add(Proc(gpid, pid, job, parent, uid, True, 0.0, proc.exited, argv))
        self.sessions[pid] = gpid

        def on_exit(f: asyncio.Future[int]) -> None:
            self.table.end(gpid, None if f.cancelled() or f.exception() else f.result())
            try:
                os.killpg(pid, 0)  # something it forked is still in its group: keep looking there
            except (ProcessLookupError, PermissionError):
                if self.sessions.get(pid) == gpid:
                    del self.sessions[pid]

        proc.exited.add_done_callback(on_exit)

    # -- finding what jobs forked --

    def scan(self) -> None:
        """Number the processes the jobs here forked: the members of their sessions (each job runs in a
        session of its own; a process that calls setsid leaves its job, as it leaves a login session).

        One ``getsid`` per process on the machine; only members are read further."""
        if not self.sessions:
            return
        members: list[tuple[float, int, int, int]] = []  # (created, pid, ppid, sid)
        by_pid = self.table.by_pid
        for pid in psutil.pids():
            try:
                sid = os.getsid(pid)
            except OSError:
                continue
            if sid not in self.sessions:
                continue
            g = by_pid.get(pid)
            if g is not None and self.table.live[g].root:
                continue
            try:
                p = psutil.Process(pid)
                with p.oneshot():
                    if p.status() == psutil.STATUS_ZOMBIE:
                        continue  # it has ended (its parent, or an init that is slow to reap, holds its status)
                    members.append((p.create_time(), pid, p.ppid(), sid))
            except psutil.Error:
                continue
        seen: set[int] = set()
        for created, pid, ppid, sid in sorted(members):  # parents before children
            g = by_pid.get(pid)
            if g is not None:
                if abs(self.table.live[g].created - created) < 0.01:
                    seen.add(g)
                    continue
                self.table.end(g, None)  # that pid was reused
            try:
                uid = psutil.Process(pid).uids().real
            except psutil.Error:
                continue
            g = self.gpids.take_nowait()
            if g is None:
                continue  # numbered at the next look, once the node holds gpids again
            root = self.table.live.get(self.sessions[sid])
            parent = by_pid.get(ppid) or self.sessions[sid]
            job = root.job if root is not None else self._ended_job(self.sessions[sid])
            self.table.add(Proc(g, pid, job, parent, uid, root=False, created=created))
            seen.add(g)
        for g, q in list(self.table.live.items()):
            if not q.root and g not in seen:
                self.table.end(g, None)
        live = {sid for *_, sid in members}
        for sid, g in list(self.sessions.items()):
            if sid not in live and g not in self.table.live:
                del self.sessions[sid]

    def _ended_job(self, gpid: int) -> int:
        e = self.table.status(gpid)
        return e.job if e is not None else 0

    def caller_gpid(self, pid: int) -> int:
        """The gpid of a local process (a client of this node's socket), or 0 if not in the space."""
        if pid <= 0:
            return 0
        if pid not in self.table.by_pid:
            self.scan()
        return self.table.by_pid.get(pid, 0)

    # -- ops --

    def _row(self, p: Proc, uid: int) -> tuple[Any, ...] | None:
        if p.exited is not None and p.exited.done():
            return None
        try:
            ps = psutil.Process(p.pid)
            with ps.oneshot():
                created = ps.create_time()
                if not p.root and abs(created - p.created) > 0.01:
                    return None
                puid = ps.uids().real
                stat = STAT.get(ps.status(), "?")
                t = ps.cpu_times()
                cpu_s = t.user + t.system
                rss = ps.memory_info().rss // 1024
                name = ps.name()
                try:
                    argv = ps.cmdline()
                except psutil.AccessDenied:
                    argv = []
        except psutil.Error:
            return None
        if p.argv and argv and argv[0].startswith(self.node.cfg.bin_root.rstrip("/") + "/"):
            argv, name = p.argv, os.path.basename(p.argv[0])  # still the shipped program gproc started
        cmd = " ".join(argv) if argv and uid in (0, puid) else f"[{name}]"
        elapsed = max(time.time() - created, 1e-6)
        cpu = round(min(100.0 * cpu_s / elapsed, 100.0 * (os.cpu_count() or 1)), 1)
        user = platform.user_name(puid)
        row = PsRow("p", p.gpid, p.parent, p.pid, user, stat, cpu, rss, round(cpu_s, 2), p.job, cmd[:MAX_CMD])
        return msgspec.structs.astuple(row)

    def _ps(self, op: Op, b: PsBody) -> None:
        uid = b.uid
        self.scan()
        for p in sorted(self.table.live.values(), key=lambda q: q.gpid):
            row = self._row(p, uid)
            if row is not None:
                op.emit(row)
        op.emit(("s", 0, ""))

    def _signal(self, p: Proc, sig: int, uid: int) -> tuple[int, str]:
        if not permitted(uid, p):
            return 2, "permission denied"
        if p.exited is not None and p.exited.done():
            return 1, "no such process"
        try:
            if not p.root:
                q = psutil.Process(p.pid)
                if abs(q.create_time() - p.created) > 0.01 or q.status() == psutil.STATUS_ZOMBIE:
                    return 1, "no such process"
            os.kill(p.pid, sig)
        except (ProcessLookupError, psutil.NoSuchProcess):
            return 1, "no such process"
        except (PermissionError, psutil.AccessDenied):
            return 2, "permission denied"
        return 0, ""

    def _kill(self, op: Op, b: KillBody) -> Awaitable[None] | None:
        self.routed += 1
        sig, uid = b.sig, b.uid
        if not 0 <= sig < 65:
            op.emit(("s", 2, "bad kill request"))
            return None
        if b.job is not None:
            return self._kill_job(op, b.job, sig, uid)
        for g in b.gpids:
            q = self.table.live.get(g)
            code, text = (1, "no such process") if q is None else self._signal(q, sig, uid)
            op.emit(("g", g, code, text))
        op.emit(("s", 0, ""))
        return None

    async def _kill_job(self, op: Op, job: int, sig: int, uid: int) -> None:
        op.emit(await self._kill_job_here(job, sig, uid))

    async def _kill_job_here(self, job: int, sig: int, uid: int) -> tuple[str, int, str]:
        """Signal the job's process group at once (all it forked, unless something left the group),
        then the other members of its session, found by a scan."""
        sent = 0
        g = self.table.job_root.get(job)
        root = self.table.live.get(g) if g is not None else None
        group = root.pid if root is not None and root.exited is not None and not root.exited.done() else -1
        if root is not None and uid not in (0, root.uid):
            return ("s", 2, "permission denied")
        if group > 0:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, sig)
                sent += 1
            await asyncio.sleep(0)  # nodes sharing this loop signal their groups before anyone scans
        self.scan()
        procs = [p for p in self.table.of_job(job) if not p.root]
        if not sent and not procs:
            return ("s", 1, "no such job")
        if root is None and uid not in (0, procs[0].uid):
            return ("s", 2, "permission denied")
        for p in procs:
            try:
                if os.getpgid(p.pid) == group:
                    continue  # signalled with the group
            except OSError:
                continue
            sent += self._signal(p, sig, uid)[0] == 0
        return ("s", 0, "") if sent else ("s", 1, "no such job")

    async def _wait_for(self, gpid: int, uid: int) -> tuple[int, str]:
        """(exit status, note) of a gpid of this node, once it has ended."""
        p = self.table.live.get(gpid)
        if p is None:
            e = self.table.status(gpid)
            if e is None:
                return NO_SUCH, "no such process"
            if uid not in (0, e.uid):
                return DENIED, "permission denied"
            return (NO_STATUS, "exit status unknown (not started by gproc)") if e.status is None else (e.status, "")
        if uid not in (0, p.uid):
            return DENIED, "permission denied"
        if p.exited is not None:
            return await asyncio.shield(p.exited), ""
        await _process_gone(p.pid, p.created)
        self.table.end(gpid, None)
        return NO_STATUS, "exit status unknown (not started by gproc)"

    async def _wait(self, op: Op, b: WaitBody) -> None:
        self.routed += 1
        uid, gpids = b.uid, b.gpids
        for g, (status, text) in zip(
            gpids, await asyncio.gather(*(self._wait_for(g, uid) for g in gpids)), strict=True
        ):
            op.emit(("w", g, status, text))
        op.emit(("s", 0, ""))

    def _collect(self, op: Op, b: CollectBody) -> None:
        for start, end in self.gpids.collect(b.keep if b.keep >= 0 else 8):
            op.emit(("c", start, end))
        op.emit(("s", 0, ""))

    async def _allocate(self, op: Op, b: AllocateBody) -> None:
        """Hand out ``n`` gpids through the allocator exactly as ``n`` process starts would."""
        n, interval = b.n, b.interval
        if not 0 <= n <= 10_000_000:
            op.emit(("s", 2, "bad allocate request"))
            return
        got: list[int] = []
        waited = self.gpids.waited
        for _ in range(n):
            got.append(await self.gpids.take())
            await asyncio.sleep(interval)  # a start yields to the loop; so does this
        op.emit(("a", tuple(rankset.encode(got)), self.gpids.waited - waited))
        op.emit(("s", 0, ""))

    def _pidstat(self, op: Op, b: Body) -> None:
        g = self.gpids
        row = PidStat("n", g.alloc.taken, g.requests, g.waited, g.alloc.reserve, len(self.table.live), self.routed)
        op.emit(msgspec.structs.astuple(row))
        op.emit(("s", 0, ""))


async def _process_gone(pid: int, created: float) -> None:
    """Return once a process that is not our child has exited (pidfd where there is one, else polling)."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is not None:
        try:
            fd = pidfd_open(pid)
        except OSError:
            return
        try:
            if abs(psutil.Process(pid).create_time() - created) > 0.01:
                return
        except psutil.Error:
            os.close(fd)
            return
        loop = asyncio.get_running_loop()
        gone = loop.create_future()

        def readable() -> None:
            if not gone.done():
                gone.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await gone
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        return
    while True:
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - created) > 0.01 or p.status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.Error:
            return
        await asyncio.sleep(0.25)


# ---- master side -----------------------------------------------------------------------------------

Sink = Callable[[list[list[Any]], bool], None]


MASTER_RANK = 0  # the master's rank: owner of the blocks its job ids come from


class MasterProcs:
    """The master's part: the block table, routing by gpid, and the client requests."""

    JOBS_REMEMBERED = 10_000
    LOW_ROUND = 10.0

    def __init__(self, master: MasterApi, cfg: PidConfig, db: sqlite3.Connection, jobs: JobService) -> None:
        self.m = master
        self.cfg = cfg
        self.jobs = jobs
        self.table = BlockTable(db, cfg)
        self.job_ranks: OrderedDict[int, set[int]] = OrderedDict()
        self._loop: asyncio.Task[Any] | None = None
        self._collecting: asyncio.Task[Any] | None = None
        self._last_round = 0.0
        self._ids: list[tuple[int, int]] = []  # the master's job ids

    def service(self) -> ServiceTable:
        return ServiceTable(
            "procs (master)",
            calls={"blocks": typed_call(BlocksCall, self._blocks)},
            requests={
                "ps": ClientRequest(self._ps, body=Selected),
                "kill": ClientRequest(self._kill, body=KillRequest),
                "wait": ClientRequest(self._wait, body=WaitRequest),
                "gpids": ClientRequest(self._gpids, body=GpidsRequest),
                "collect": ClientRequest(self._collect, Role.OWNER, "collect gpid blocks", CollectRequest),
                "allocate": ClientRequest(self._allocate, Role.OWNER, "drill the gpid allocator", AllocateRequest),
            },
        )

    def next_id(self) -> int:
        """A new job id. Ids come from the gpid space, in blocks owned by the
        master (rank 0), so a number names a process or a job, never both (``gproc wait N``,
        ``gproc kill N``), and no id is used twice, across master restarts too."""
        if not self._ids:
            self._ids = self.table.grant(MASTER_RANK, MAX_WANT, count=False)
        start, size = self._ids[0]
        if size > 1:
            self._ids[0] = (start + 1, size - 1)
        else:
            self._ids.pop(0)
        return start

    def is_job_id(self, n: int) -> bool:
        """Whether ``n`` was handed out by ``next_id`` (and so is not a process's gpid)."""
        return self.table.owner(n) == MASTER_RANK

    def job_started(self, job: int, ranks: set[int]) -> None:
        """Remember where a job runs, so that ``kill``/``wait`` of a job id reach only those nodes."""
        self.job_ranks[job] = set(ranks)
        while len(self.job_ranks) > self.JOBS_REMEMBERED:
            self.job_ranks.popitem(last=False)

    # -- blocks --

    async def _blocks(self, args: BlocksCall) -> dict[str, Any]:
        rank, want = args.rank, args.want
        if rank not in self.m.topo:
            raise RegistrationError("bad block request")
        if self._loop is None and self.cfg.collect_every > 0:
            self._loop = self.m.spawn(self._collect_loop())
        ranges = self.table.grant(rank, want)
        if self.table.free() < 4 * self.cfg.block * max(1, len(self.m.topo)):
            self.collect_soon()
        return {"r": [list(r) for r in ranges], "block": self.cfg.block, "low": self.cfg.block}

    def collect_soon(self) -> None:
        """A round now (the space runs low), unless one runs or ran in the last ``LOW_ROUND`` seconds."""
        idle = self._collecting is None or self._collecting.done()
        if idle and time.monotonic() - self._last_round > self.LOW_ROUND:
            self._collecting = self.m.spawn(self.collect())

    async def _collect_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.collect_every)
            with contextlib.suppress(GprocError):
                await self.collect()

    async def collect(self, targets: set[int] | None = None, keep: int | None = None) -> dict[str, Any]:
        """A collection round: nodes idle since the last round give back what they hold beyond ``keep``."""
        targets = self.m.up_ranks() if targets is None else targets
        self._last_round = time.monotonic()
        released = [0, 0]

        def on_groups(groups: list[list[Any]]) -> None:
            for key, enc in groups:
                if key[0] != "c":
                    continue
                ranks = rankset.decode(enc)
                if len(ranks) == 1 and self.table.release(next(iter(ranks)), int(key[1]), int(key[2])):
                    released[0] += int(key[2]) - int(key[1])
                    released[1] += 1

        body = CollectBody(keep=self.cfg.keep if keep is None else keep)
        await self._run_op("collect", body.wire(), targets, on_groups)
        return {"nodes": len(targets), "released": released[0], "ranges": released[1]}

    async def _run_op(
        self, kind: str, body: dict[str, Any], targets: set[int], on_groups: Callable[[list[list[Any]]], None]
    ) -> None:
        """The op through the tree, each part of its reply handed to ``on_groups`` as it comes."""
        async for part in self.m.request(kind, body, targets):
            if part.groups:
                on_groups(part.groups)

    # -- client requests --

    def _targets(self, req: Selected) -> set[int]:
        if req.selects:
            return self.m.selection(req)[0]
        return self.m.up_ranks()

    def _name(self, enc: list[int]) -> str:
        return self.m.fold_intervals(enc)

    async def _ps(self, link: Link, req: Selected, cred: PeerCred) -> None:
        """Every process in the space on the selected nodes, streamed as ``rows`` then ``end``."""
        targets = self._targets(req)
        errors: dict[str, set[int]] = {}
        batch: list[dict[str, Any]] = []

        def on_groups(groups: list[list[Any]]) -> None:
            for key, enc in groups:
                if key[0] == "p":
                    try:
                        p = msgspec.convert(key, PsRow)
                    except msgspec.ValidationError as e:
                        errors.setdefault(f"malformed ps row: {e}", set()).update(rankset.decode(enc))
                        continue
                    batch.append(
                        {
                            "gpid": p.gpid, "parent_gpid": p.parent, "name": self._name(enc), "pid": p.pid,
                            "user": p.user, "stat": p.stat, "cpu": p.cpu, "rss": p.rss, "time": p.time,
                            "job": p.job, "cmd": p.cmd,
                        }
                    )  # fmt: skip
                elif key[0] == "s" and key[1] != 0:
                    errors.setdefault(str(key[2]), set()).update(rankset.decode(enc))
            if len(batch) >= 500:
                link.send({"t": "rows", "rows": batch[:]})
                batch.clear()

        await self._run_op("ps", PsBody(uid=cred.uid).wire(), targets, on_groups)
        if batch:
            link.send({"t": "rows", "rows": batch})
        link.send({"t": "end", "errors": [{"nodes": self.m.fold(r), "error": e} for e, r in errors.items()]})

    @staticmethod
    def _gpid_list(req: KillRequest | WaitRequest) -> list[int]:
        gpids = req.gpids
        if not gpids or not all(g > 0 for g in gpids):
            raise UsageError("give gpids (positive integers) or a job id")
        return list(dict.fromkeys(gpids))

    def _by_owner(self, gpids: list[int]) -> tuple[dict[int, list[int]], list[int]]:
        owners: dict[int, list[int]] = {}
        unknown: list[int] = []
        for g in gpids:
            r = self.table.owner(g)
            if r is None:
                unknown.append(g)
            else:
                owners.setdefault(r, []).append(g)
        return owners, unknown

    async def _per_gpid(
        self, kind: str, body: KillBody | WaitBody, gpids: list[int], tag: str, missing: int
    ) -> dict[int, dict[str, Any]]:
        """Send ``kind`` to the owner of each gpid (one op per owner rank, in parallel); a gpid in no
        block gets ``missing`` ("no such process") without any message."""
        owners, unknown = self._by_owner(gpids)
        out = {g: {"gpid": g, "code": missing, "error": "no such process", "name": ""} for g in unknown}

        async def one(rank: int, gs: list[int]) -> None:
            node = self.m.topo[rank].name if rank in self.m.topo else str(rank)

            def on_groups(groups: list[list[Any]]) -> None:
                for key, _ in groups:
                    if key[0] == tag and key[1] in gs:
                        out[key[1]] = {"gpid": key[1], "code": key[2], "error": key[3], "name": node}
                    elif key[0] == "s" and key[1] != 0:
                        for g in gs:
                            out.setdefault(g, {"gpid": g, "code": 255, "error": str(key[2]), "name": node})

            await self._run_op(kind, msgspec.structs.replace(body, gpids=gs).wire(), {rank}, on_groups)

        await asyncio.gather(*(one(r, gs) for r, gs in owners.items()))
        return out

    async def _kill(self, link: Link, req: KillRequest, cred: PeerCred) -> None:
        sig, job = req.sig, req.job
        if not 0 <= sig < 65:
            raise UsageError(f"bad signal {sig!r}")
        if job is not None:
            link.send({"t": "ret", "r": await self._kill_job(job, sig, cred.uid)})
            return
        gpids = self._gpid_list(req)
        procs = [g for g in gpids if not self.is_job_id(g)]
        out = await self._per_gpid("kill", KillBody(sig=sig, uid=cred.uid), procs, "g", 1) if procs else {}
        for g in gpids:
            if g not in out:  # a job id given where a gpid goes: signal the job
                try:
                    r = await self._kill_job(g, sig, cred.uid)
                    err = "; ".join(f"{e['nodes']}: {e['error']}" for e in r["errors"])
                    out[g] = {"gpid": g, "code": 0 if r["signalled"] else 1, "error": err, "name": f"job {g}"}
                except GprocError as e:
                    out[g] = {"gpid": g, "code": 1, "error": str(e), "name": f"job {g}"}
        link.send({"t": "ret", "r": {"results": [out[g] for g in gpids]}})

    async def _kill_job(self, job: int, sig: int, uid: int) -> dict[str, Any]:
        """Signal every process of a job on the nodes it runs on."""
        ranks = self.job_ranks.get(job) or self.m.up_ranks()
        res: dict[tuple[int, str], set[int]] = {}

        def on_groups(groups: list[list[Any]]) -> None:
            for key, enc in groups:
                if key[0] == "s":
                    res.setdefault((int(key[1]), str(key[2])), set()).update(rankset.decode(enc))

        await self._run_op("kill", KillBody(job=job, sig=sig, uid=uid).wire(), ranks, on_groups)
        hit = res.get((0, ""), set())
        other = [{"nodes": self.m.fold(r), "error": e} for (c, e), r in res.items() if c not in (0, 1)]
        if not hit and not other:
            raise GprocError(f"job {job}: no such job (or nothing of it is running)")
        return {"job": job, "nodes": self.m.fold(hit), "signalled": len(hit), "errors": other}

    async def _wait(self, link: Link, req: WaitRequest, cred: PeerCred) -> None:
        """Exit statuses once the processes have ended; ticks while waiting; abandoned if the client goes."""
        job = req.job
        gpids: list[int] = [] if job is not None else self._gpid_list(req)
        jobs = [g for g in gpids if self.is_job_id(g)]
        if jobs and len(gpids) > 1:
            raise UsageError(f"{jobs[0]} is a job id: wait for one job, or for gpids")
        if job is not None or jobs:  # the job's exit status as `gproc e` gives it, from the job store
            await self.jobs.wait(link, job if job is not None else jobs[0], cred)
            return
        gone = asyncio.ensure_future(link.receive())
        try:
            waiting = self._per_gpid("wait", WaitBody(uid=cred.uid, gpids=[]), gpids, "w", NO_SUCH)
            result = await with_ticks(link, waiting, gone)
        finally:
            gone.cancel()
        if result is None:
            return  # the client left (or sent something it should not): stop waiting for it
        link.send({"t": "ret", "r": {"results": [result[g] for g in gpids]}})

    async def _collect(self, link: Link, req: CollectRequest, cred: PeerCred) -> None:
        keep = req.keep
        r = await self.collect(self._targets(req), keep if keep is not None and keep >= 0 else None)
        link.send({"t": "ret", "r": r})

    async def _gpids(self, link: Link, req: GpidsRequest, cred: PeerCred) -> None:
        """The block table: counters, and with ``blocks`` every block and its owner's name."""
        r: dict[str, Any] = self.table.stats()
        if req.blocks:
            names = {rank: row.name for rank, row in self.m.topo.items()}
            r["table"] = [[s, n, names.get(o, str(o))] for s, n, o in self.table.blocks()]
        if req.nodes_stats:
            per: list[dict[str, Any]] = []

            def on_groups(groups: list[list[Any]]) -> None:
                for key, enc in groups:
                    if key[0] == "n":
                        try:
                            n = msgspec.convert(key, PidStat)
                        except msgspec.ValidationError:
                            continue  # a node's malformed row: not counted
                        per.append(
                            {"nodes": self._name(enc), "count": rankset.count(enc), "taken": n.taken,
                             "requests": n.requests, "waited": n.waited, "reserve": n.reserve, "live": n.live,
                             "routed": n.routed}
                        )  # fmt: skip

            await self._run_op("pidstat", {}, self.m.up_ranks(), on_groups)
            r["nodes"] = per
        link.send({"t": "ret", "r": r})

    async def _allocate(self, link: Link, req: AllocateRequest, cred: PeerCred) -> None:
        """Make each selected node hand out ``n`` gpids as process starts would (stress tests, bench)."""
        n, interval = req.n, req.interval
        if n < 0:
            raise UsageError("allocate needs a count n")
        targets = self._targets(req)
        got: list[dict[str, Any]] = []
        errors: dict[str, set[int]] = {}

        def on_groups(groups: list[list[Any]]) -> None:
            for key, enc in groups:
                if key[0] == "a":
                    got.append({"name": self._name(enc), "gpids": list(key[1]), "waited": key[2]})
                elif key[0] == "s" and key[1] != 0:
                    errors.setdefault(str(key[2]), set()).update(rankset.decode(enc))

        await self._run_op("allocate", AllocateBody(n=n, interval=interval).wire(), targets, on_groups)
        link.send(
            {
                "t": "ret",
                "r": {"nodes": got, "errors": [{"nodes": self.m.fold(r), "error": e} for e, r in errors.items()]},
            }
        )


__all__ = ["DENIED", "NO_STATUS", "NO_SUCH", "MasterProcs", "NoGpidError", "ProcService", "permitted"]
