"""Stack traces of a job's processes (or of gpids), merged inside the tree into a prefix tree of call
paths with node sets (STAT's idea; the reducer is ``calltree.CallTree``): ``gproc stack``.

Node side (``StackService``): the ``stack`` op. The node finds the selected processes in its process
table (``ProcService``: a job's processes, forked ones included, or gpids), keeps those of the
caller (root: any), reads each one's stack with an unwinder from the distribution and gives it to
the op's reducer. Native stacks are read with elfutils' libdw in this process (``gproc.libdw``),
else with ``eu-stack`` (gdb when that is missing too); a Python process is read with ``py-spy
dump`` where py-spy is installed, which gives its Python frames.

=========== ========================================= =============================================
op kind     body                                      keys besides the reduced tree
=========== ========================================= =============================================
``stack``   ``uid``, ``job`` | ``gpids`` (``{rank:    ``["s", CODE, TEXT]`` per node (0 read, 1 none
            [gpid…]}``, each node reads its own)      here, 2 permission denied); ``["g", GPID,
                                                      CODE, TEXT]`` per gpid not read; ``["f",
                                                      TEXT]`` per kind of unwinding failure
=========== ========================================= =============================================

Master side (``MasterStack``): the ``stack`` client request. A job goes to the nodes it runs on, gpids
to the nodes that own them (``MasterProcs``), in one op, so that only the tree's distinct call paths
reach the master, whatever the number of processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from typing import TYPE_CHECKING, Any

import psutil

from gproc import libdw
from gproc import ranks as rankset
from gproc.calltree import Calls, CallTree, classes, walk
from gproc.errors import GprocError, UsageError
from gproc.messages import Body
from gproc.services.base import ClientRequest, MasterApi, ServiceTable, typed, with_ticks
from gproc.services.procs import MasterProcs, ProcService, permitted

if TYPE_CHECKING:
    from gproc.overlay import Link, Node, Op
    from gproc.pids import Proc
    from gproc.platform import PeerCred

UNWIND_TIMEOUT = 20.0  # seconds one unwinder may take on one process
MAX_GPIDS = 100_000  # gpids one request may name
PARALLEL = 4  # unwinders a node runs at once

Stacks = list[list[str]]  # a process: one stack per thread, frames outermost first


class UnwindError(Exception):
    """A process's stack could not be read (the text says why, without the pid: texts are grouped)."""


# ---- reading one process's stack -------------------------------------------------------------------

_EU_FRAME = re.compile(r"#\d+\s+0x([0-9a-f]+)\s*(.*)$")
_EU_BUILD = re.compile(r"\[([0-9a-f]*)\]@0x[0-9a-f]+\+0x([0-9a-f]+)$")
_GDB_FRAME = re.compile(r"#\d+\s+(?:0x[0-9a-f]+ in )?(\S+)(?: \(.*?\))?(?: (?:at|from) (\S+))?")

Place = tuple[str, str]  # where a frame is: (build id, offset in the module), else (module, address)
Frames = list[list[tuple[Place, str, str]]]  # per thread, innermost first: (place, symbol or "", module)


def parse_eu_frames(text: str) -> Frames:
    """``eu-stack -b -m`` output (with ``-q``: no symbols) as frames per thread, innermost first. A
    frame's place is its module's build id and its offset there, the same in every process that maps
    the module (wherever), so a place named once is named for all."""
    threads: Frames = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("TID "):
            threads.append([])
            continue
        b = _EU_BUILD.match(line)
        if b is not None and threads and threads[-1] and b.group(1):
            _, name, module = threads[-1][-1]
            threads[-1][-1] = ((b.group(1), b.group(2)), name, module)
            continue
        m = _EU_FRAME.match(line)
        if m is None or not threads:
            continue
        rest = m.group(2)
        name, _, module = rest.partition(" - ")
        if rest.startswith("- "):  # no symbol, only the module
            name, module = "", rest[2:]
        threads[-1].append(((module.strip(), m.group(1)), name.strip(), module.strip()))
    return [t for t in threads if t]


def _label(name: str, module: str) -> str:
    """A frame's name; without a symbol ``?? (MODULE)``, the file name only (paths differ between nodes)."""
    return name or f"?? ({os.path.basename(module) or '?'})"


def parse_eu_stack(text: str) -> Stacks:
    """``eu-stack -m`` output as stacks, outermost frame first."""
    return [[_label(n, mod) for _, n, mod in reversed(t)] for t in parse_eu_frames(text)]


def parse_gdb(text: str) -> Stacks:
    """``gdb -batch -ex 'thread apply all bt'`` output as stacks, outermost frame first."""
    stacks: Stacks = []
    for line in text.splitlines():
        if line.startswith("Thread "):
            stacks.append([])
            continue
        if not line.startswith("#"):
            continue
        if not stacks:
            stacks.append([])  # a process without threads gdb names
        m = _GDB_FRAME.match(line)
        if m is not None:
            name = m.group(1)
            stacks[-1].append(f"?? ({os.path.basename(m.group(2) or '?')})" if name == "??" else name)
    return [s[::-1] for s in stacks if s]


def parse_py_spy(text: str) -> Stacks:
    """``py-spy dump --json`` output as stacks: ``FUNCTION (FILE)`` per Python frame, outermost
    first; no line numbers, so that processes at different lines of one function are one class."""
    try:
        threads = json.loads(text)
    except ValueError as e:
        raise UnwindError(f"py-spy: unreadable output ({e})") from None
    stacks: Stacks = []
    for t in threads if isinstance(threads, list) else []:
        frames = t.get("frames") if isinstance(t, dict) else None
        if isinstance(frames, list):
            names = [f"{f.get('name', '?')} ({f.get('short_filename') or '?'})" for f in frames if isinstance(f, dict)]
            stacks.append(names[::-1])
    return [s for s in stacks if s]


def is_python(pid: int) -> bool:
    """Does the process run a Python interpreter (its program, or libpython mapped)?"""
    try:
        exe = os.path.basename(psutil.Process(pid).exe())
    except psutil.Error:
        return False
    if re.fullmatch(r"python[0-9.]*", exe):
        return True
    try:
        with open(f"/proc/{pid}/maps") as f:
            return any("libpython" in line for line in f)
    except OSError:
        return False


def _run(argv: list[str], what: str) -> str:
    """An unwinder's output (UnwindError when it fails or outlives ``UNWIND_TIMEOUT``)."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=UNWIND_TIMEOUT, env={"LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        raise UnwindError(f"{what}: no answer in {UNWIND_TIMEOUT:g} s") from None
    except OSError as e:
        raise UnwindError(f"{what}: {e.strerror or e}") from None
    if r.returncode != 0 and not r.stdout.strip():
        first = next((ln for ln in r.stderr.splitlines() if ln.strip()), f"exit status {r.returncode}")
        first = re.sub(r"\b\d{2,}\b", "N", first.strip())  # no pids or addresses: failures are grouped by text
        raise UnwindError(f"{what}: {first[:200]}")
    return r.stdout


class Unnamed:
    """A process's frames as ``eu-stack -q`` found them, to be named."""

    __slots__ = ("frames",)

    def __init__(self, frames: Frames) -> None:
        self.frames = frames


def _some(stacks: Any) -> Any:
    if not stacks:
        raise UnwindError("no frames read (the process ended, or cannot be traced)")
    return stacks


class StackReader:
    """Reads the stacks of a node's processes: Python frames by py-spy for a Python process, native
    frames by libdw in this process (``gproc.libdw``), else by eu-stack (gdb without elfutils).

    With eu-stack, naming the symbols is most of what it costs (``-q`` takes a fifth of the time), and the
    processes of a job run the same program and libraries, mostly in the same few places. So every
    process is unwound with ``-q``; only a process with a place not named before is unwound again
    in full, and the names it gives are kept (by build id and offset) for the next ones."""

    MAX_NAMES = 100_000  # places remembered (forgotten all at once beyond)

    def __init__(self) -> None:
        self.names: dict[Place, str] = {}
        self.symbols: dict[Place, str] = {}  # libdw's: the symbol, "" where the module has none

    def _first(self, pid: int) -> Stacks | Unnamed:
        py_spy, eu_stack, gdb = shutil.which("py-spy"), shutil.which("eu-stack"), shutil.which("gdb")
        if py_spy and is_python(pid):
            return _some(parse_py_spy(_run([py_spy, "dump", "--json", "--pid", str(pid)], "py-spy")))
        dw = libdw.load()
        if isinstance(dw, libdw.Libdw):
            if len(self.symbols) > self.MAX_NAMES:
                self.symbols.clear()
            try:
                frames = dw.frames(pid, self.symbols)
            except libdw.DwError as e:
                raise UnwindError(str(e)) from None
            return [[_label(n, mod) for _, n, mod in reversed(t)] for t in frames]
        if eu_stack:
            return Unnamed(_some(parse_eu_frames(_run([eu_stack, "-q", "-b", "-m", "-p", str(pid)], "eu-stack"))))
        if gdb:
            return _some(parse_gdb(_run([gdb, "-nx", "-batch", "-p", str(pid), "-ex", "thread apply all bt"], "gdb")))
        raise UnwindError("no unwinder: install elfutils (eu-stack) or gdb")

    def _named(self, u: Unnamed) -> Stacks | None:
        """The stacks, if every place is named already."""
        out: Stacks = []
        for t in u.frames:
            names = [self.names.get(place) for place, _, _ in reversed(t)]
            if None in names:
                return None
            out.append([n for n in names if n is not None])
        return out

    def _full(self, pid: int) -> Stacks:
        eu_stack = shutil.which("eu-stack")
        if eu_stack is None:
            raise UnwindError("eu-stack has gone")
        frames: Frames = _some(parse_eu_frames(_run([eu_stack, "-b", "-m", "-p", str(pid)], "eu-stack")))
        if len(self.names) > self.MAX_NAMES:
            self.names.clear()
        for t in frames:
            for place, name, module in t:
                self.names[place] = _label(name, module)
        return [[_label(n, mod) for _, n, mod in reversed(t)] for t in frames]

    async def read(self, pids: list[int]) -> dict[int, Stacks | UnwindError]:
        """Each process's stacks, or why they could not be read (blocking work in worker threads)."""
        gate = asyncio.Semaphore(PARALLEL)
        first: dict[int, Stacks | Unnamed | UnwindError] = {}
        out: dict[int, Stacks | UnwindError] = {}

        async def unwind(pid: int) -> None:
            async with gate:
                try:
                    first[pid] = await asyncio.to_thread(self._first, pid)
                except UnwindError as e:
                    first[pid] = e

        async def name(pid: int, u: Unnamed) -> None:
            async with gate:
                named = self._named(u)  # another process may have taught the names meanwhile
                try:
                    out[pid] = named if named is not None else await asyncio.to_thread(self._full, pid)
                except UnwindError as e:
                    out[pid] = e

        await asyncio.gather(*(unwind(p) for p in pids))
        unnamed = [(p, v) for p, v in first.items() if isinstance(v, Unnamed)]
        out.update((p, v) for p, v in first.items() if not isinstance(v, Unnamed))
        if unnamed:  # the first alone: in a hung job it names the places of most others
            await name(*unnamed[0])
            await asyncio.gather(*(name(p, u) for p, u in unnamed[1:]))
        return out


# ---- op body and client request --------------------------------------------------------------------


class StackBody(Body):
    """The ``stack`` op: the processes of ``job``, or each node's own ``gpids`` (by rank), as ``uid``."""

    uid: int
    job: int | None = None
    gpids: dict[int, list[int]] | None = None


class StackRequest(Body):
    """``stack``: the stacks of ``job``'s processes, or of ``gpids`` (§8)."""

    job: int | None = None
    gpids: list[int] | None = None


# ---- node side -------------------------------------------------------------------------------------


def _alive(p: Proc) -> bool:
    """Is ``p`` still the process the table knows (not ended, its pid not reused)?"""
    if p.exited is not None and p.exited.done():
        return False
    try:
        q = psutil.Process(p.pid)
        if not p.root and abs(q.create_time() - p.created) > 0.01:
            return False
        return q.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class StackService:
    """On every node: the ``stack`` op."""

    def __init__(self, node: Node, procs: ProcService) -> None:
        self.node = node
        self.procs = procs
        self.reader = StackReader()

    def service(self) -> ServiceTable:
        return ServiceTable("stack", ops={"stack": typed(StackBody, self._stack)}, reducers={"stack": CallTree()})

    def _select(self, op: Op, b: StackBody) -> list[Proc] | None:
        """The processes to read (None: the answer is given already)."""
        uid = b.uid
        self.procs.scan()
        job = b.job
        if job is not None:
            procs = [p for p in self.procs.table.of_job(job) if _alive(p)]
            if not procs:
                op.emit(("s", 1, "no such job"))
                return None
            mine = [p for p in procs if permitted(uid, p)]
            if not mine:
                op.emit(("s", 2, "permission denied"))
                return None
            return mine
        gpids = (b.gpids or {}).get(self.node.rank or 0)
        if gpids is None:
            op.emit(("s", 2, "bad stack request"))
            return None
        out: list[Proc] = []
        for g in gpids:
            p = self.procs.table.live.get(g)
            if p is None or not _alive(p):
                op.emit(("g", g, 1, "no such process"))
            elif not permitted(uid, p):
                op.emit(("g", g, 2, "permission denied"))
            else:
                out.append(p)
        return out

    async def _stack(self, op: Op, b: StackBody) -> None:
        procs = self._select(op, b)
        if procs is None:
            return
        rank = self.node.rank or 0
        got = await self.reader.read([p.pid for p in procs])
        for p in procs:
            stacks = got[p.pid]
            if isinstance(stacks, UnwindError):
                op.emit(("f", str(stacks)))
            elif _alive(p):  # the pid still names the process that was selected
                op.give((rank, stacks))
        op.emit(("s", 0, ""))


# ---- master side -----------------------------------------------------------------------------------


class MasterStack:
    """At the master: the ``stack`` client request."""

    def __init__(self, master: MasterApi, procs: MasterProcs) -> None:
        self.m = master
        self.procs = procs

    def service(self) -> ServiceTable:
        return ServiceTable("stack (master)", requests={"stack": ClientRequest(self._stack, body=StackRequest)})

    def _job(self, job: int, cred: PeerCred) -> set[int]:
        """The nodes a job runs on (GprocError for a job that does not exist or is another user's)."""
        row = self.procs.jobs.store.get(job) if 0 <= job < 1 << 63 else None
        if row is None:
            raise GprocError(f"job {job}: no such job")
        if cred.uid not in (0, row["uid"]):
            raise GprocError(f"job {job}: permission denied (another user's job)")
        return self.procs.job_ranks.get(job) or self.m.up_ranks()

    async def _stack(self, link: Link, req: StackRequest, cred: PeerCred) -> None:
        job, gpids = req.job, req.gpids
        errors: dict[str, set[int]] = {}
        unknown: list[int] = []
        if gpids is not None:
            if not 0 < len(gpids) <= MAX_GPIDS:
                raise UsageError("give a job id or gpids")
            if not all(g > 0 for g in gpids):
                raise UsageError("gpids are positive integers")
            gpids = list(dict.fromkeys(gpids))
            jobs = [g for g in gpids if self.procs.is_job_id(g)]
            if jobs and len(gpids) > 1:
                raise UsageError(f"{jobs[0]} is a job id: give one job, or gpids")
            if jobs:
                job = jobs[0]
        if job is not None:
            targets = self._job(job, cred)
            body: dict[str, Any] = {"uid": cred.uid, "job": job}
        elif gpids is not None:
            owners: dict[int, list[int]] = {}
            for g in gpids:
                r = self.procs.table.owner(g)
                if r is None:
                    unknown.append(g)
                else:
                    owners.setdefault(r, []).append(g)
            targets, body = set(owners), {"uid": cred.uid, "gpids": owners}
        else:
            raise UsageError("give a job id or gpids")
        reducer = CallTree()
        tree = reducer.identity()
        lost: list[int] = list(unknown)
        denied: list[int] = []
        if targets:
            request = self.m.request("stack", {**body, "gather": True}, targets, reducer)
            whole = await with_ticks(link, request.wait())  # unwinding many processes takes a while
            if whole is None:  # only when told the client left; it was not
                return
            tree = whole.value if whole.value is not None else tree
            for key, enc in whole.groups:
                ranks = rankset.decode(enc)
                if key[0] == "g":
                    (denied if key[2] == 2 else lost).append(int(key[1]))
                elif key[0] == "f" or (key[0] == "s" and key[1] not in (0, 1)):
                    errors.setdefault(str(key[-1]), set()).update(ranks)
            bytes_in = request.op.bytes_in
        else:
            bytes_in = 0
        if isinstance(job, int) and tree.count == 0 and not errors:
            raise GprocError(f"job {job}: no such job (or nothing of it is running)")
        if gpids is not None and tree.count == 0 and not errors and (denied or lost):
            g = (denied or lost)[0]
            raise GprocError(f"stack {g}: {'permission denied' if denied else 'no such process'}")
        link.send({"t": "ret", "r": self._answer(tree, errors, sorted(lost), sorted(denied), bytes_in)})

    def _answer(
        self, tree: Calls, errors: dict[str, set[int]], lost: list[int], denied: list[int], bytes_in: int
    ) -> dict[str, Any]:
        return {
            "processes": tree.count,
            "nodes": self.m.fold(tree.ranks),
            "tree": [[d, frame, self.m.fold(c.ranks), len(c.ranks), c.count] for d, frame, c in walk(tree)],
            "classes": [
                {"nodes": self.m.fold(ranks), "nnodes": len(ranks), "processes": n, "path": path}
                for path, ranks, n in classes(tree)
            ],
            "errors": [{"nodes": self.m.fold(r), "error": e} for e, r in sorted(errors.items())],
            "no_such": lost,
            "denied": denied,
            "bytes_in": bytes_in,
        }


__all__ = [
    "MasterStack", "StackReader", "StackService", "UnwindError",
    "parse_eu_frames", "parse_eu_stack", "parse_gdb", "parse_py_spy",
]  # fmt: skip
