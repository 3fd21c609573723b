"""Running a command on a node: spawn it, stream its output lines up, report its exit status.

Output travels as groups keyed ``("o", stream, lineno, data)`` (records of whole lines, see
``OutputReader``) so that identical output from many nodes merges into one record on the way up;
the exit status is ``("s", status, error)``: 128+N for a signal, 255 with a reason when the command
could not start.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gproc import platform
from gproc.errors import StagingError
from gproc.messages import Body
from gproc.services.base import ServiceTable, typed

if TYPE_CHECKING:
    from gproc.overlay import Node, Op
    from gproc.services.procs import ProcService
    from gproc.services.stage import StageService
    from gproc.services.stdin import StdinService

STDOUT, STDERR = 1, 2
READ_SIZE = 64 * 1024  # a pipe read; live output goes up one record per read
SPLIT_LINES = 16  # a read of at most this many lines goes up one record per line
BLOCK = 64 * 1024  # gathered output is cut into records of about this size
MAX_LINE = 1 << 20  # a line longer than this goes up in pieces (frames stay far below wire.MAX_FRAME)
HELD_POLL = 0.05  # how often a held job looks whether its client caught up
EXIT_GRACE = 2.0  # how long output pipes are read after the command exited (background children)
CANNOT_RUN = (errno.EACCES, errno.EISDIR, errno.ENOEXEC, errno.EPERM, errno.ENOTDIR)  # exit 126, as a shell


class ExecBody(Body):
    """The ``exec`` op: run ``argv`` as ``uid``/``gid`` (§5, §6)."""

    argv: list[str]
    env: dict[str, str]
    uid: int
    gid: int
    job: int  # the job id (not the op's id): ``signal`` and ``hold`` name the job by it
    cwd: str | None = None
    timeout: float | None = None
    nnodes: int = 1
    gather: bool = False
    pgpid: int = 0  # the gpid of the process that started the job (0: a client)
    stdin: bool = False
    redeliver: bool = False
    bundle: dict[str, Any] | None = None  # what to stage (None: the node's own program, -localbin)


class SignalBody(Body):
    """The ``signal`` op: ``sig`` to every process of ``job`` on this node."""

    job: int
    sig: int


class HoldBody(Body):
    """The ``hold`` op: stop (``on``) or resume reading ``job``'s output."""

    job: int
    on: bool


class SpawnGate:
    """Lets a few program starts through per event-loop turn.

    Many nodes may share one process; a job on all of them would otherwise start every program in one
    loop iteration (a second or more of fork/exec) and starve heartbeats. One gate per process, shared
    by its nodes, spreads the starts over turns so the loop reads its sockets in between.
    """

    def __init__(self, per_turn: int = 8, starter_above: int | None = platform.STARTER_ABOVE) -> None:
        self.per_turn = per_turn
        self.spawner = platform.Spawner(starter_above)  # how the nodes of this process start programs
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._pump: asyncio.Task[None] | None = None

    async def wait(self) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        if self._pump is None or self._pump.done():
            self._pump = asyncio.ensure_future(self._run())
        await fut

    async def _run(self) -> None:
        while self._waiting:
            for _ in range(self.per_turn):
                if not self._waiting:
                    break
                fut = self._waiting.popleft()
                if not fut.done():
                    fut.set_result(None)
            await asyncio.sleep(0)


class ExecService:
    """The jobs a node runs, by job id; handlers for ``exec`` and ``signal`` ops."""

    def __init__(
        self, node: Node, gate: SpawnGate, procs: ProcService, stdin: StdinService, stage: StageService
    ) -> None:
        self.node = node
        self.gate = gate
        self.procs = procs
        self.stdin = stdin
        self.stage = stage
        self.jobs: dict[int, platform.Process] = {}
        self.held: set[int] = set()  # jobs whose output is not read: their client is slow (``hold``)

    def service(self) -> ServiceTable:
        return ServiceTable(
            "exec",
            ops={"exec": typed(ExecBody, self.run), "signal": typed(SignalBody, self.signal),
                 "hold": typed(HoldBody, self.hold)},
            stop=self.kill_all,
        )  # fmt: skip

    def kill_all(self) -> None:
        for proc in self.jobs.values():
            proc.signal_group(signal.SIGKILL)

    def signal(self, op: Op, b: SignalBody) -> None:
        if not 0 <= b.sig < 65:
            op.emit(("s", 2, "bad signal request"))
            return
        proc = self.jobs.get(b.job)
        op.emit(("s", 0 if proc is not None and proc.signal_group(b.sig) else 1, ""))

    def hold(self, op: Op, b: HoldBody) -> None:
        """Stop (``on``) or resume reading a job's output: the master holds a job whose client does not
        keep up, so the programs block on their full pipes instead of output piling up anywhere."""
        job = b.job
        if b.on:  # even before the job's program started here; the master always releases what it held
            self.held.add(job)
        else:
            self.held.discard(job)
        op.emit(("s", 0, ""))

    async def run(self, op: Op, b: ExecBody) -> None:
        argv, cwd, env, uid, gid = b.argv, b.cwd, b.env, b.uid, b.gid
        if not argv:
            op.emit(("s", 255, "bad command"))
            return
        euid = os.geteuid()
        if euid != 0 and uid != euid:
            op.emit(("s", 255, f"node daemon runs as uid {euid} and cannot run jobs for uid {uid}"))
            return
        node = self.node
        job, parent = b.job, b.pgpid
        gpid = await self.procs.allocate()  # from the node's block: waits only if it holds none
        env = {
            **env,
            "GPROC_NAME": node.cfg.name,
            "GPROC_RANK": str(node.rank),
            "GPROC_JOBID": str(job),
            "GPROC_NNODES": str(b.nnodes),
            **self.procs.job_env(gpid, parent),
        }
        want_stdin = b.stdin
        await self.gate.wait()
        try:
            if b.bundle is None:  # -localbin without files: the node's own program, as the seed
                workdir = cwd if cwd is not None and cwd.startswith("/") else None
                groups = platform.user_groups(uid, gid)
                proc = platform.spawn(
                    argv,
                    cwd=workdir,
                    env=env,
                    uid=uid,
                    gid=gid,
                    groups=groups,
                    stdin=want_stdin,
                    spawner=self.gate.spawner,
                    make_cwd=True,  # the client's directory, made as the job's user when missing
                )
            else:
                proc = await self.stage.start(
                    job, b.bundle, argv, env, uid, gid, stdin=want_stdin, spawner=self.gate.spawner
                )
        except StagingError as e:
            op.emit(("s", 255, f"staging failed: {e}"))
            return
        except OSError as e:
            # the node's own program (-localbin) that cannot start ends as in a shell (127 not found,
            # 126 cannot run); a shipped one that cannot start is the node's failure (255)
            own = b.bundle is None
            code = 255 if not own else 127 if e.errno == errno.ENOENT else 126 if e.errno in CANNOT_RUN else 255
            op.emit(("s", code, f"cannot run {argv[0]}: {e.strerror or e}"))
            return
        except (ValueError, TypeError) as e:
            op.emit(("s", 255, f"cannot run {argv[0]}: {e}"))
            return
        self.jobs[job] = proc
        self.procs.started(gpid, proc, job, uid, parent, argv)
        if want_stdin:
            self.stdin.attach(op, proc)
        output: OutputReader | None = None
        try:
            output = OutputReader(op, [(proc.stdout, STDOUT), (proc.stderr, STDERR)], lambda: job in self.held)
            status, error = await self._wait(proc, b.timeout)
            self.stdin.detach(op.id)
            await output.finished(EXIT_GRACE)
            output.stop()  # a background child may still hold a pipe: what it said so far goes first
            op.emit(("s", status, error))
        finally:
            if output is not None:
                output.stop()
            self.stdin.detach(op.id)
            self.jobs.pop(job, None)
            self.held.discard(job)
            if not proc.exited.done():
                proc.signal_group(signal.SIGKILL)
            proc.close_pipes()

    @staticmethod
    async def _wait(proc: platform.Process, timeout: Any) -> tuple[int, str]:
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            return await proc.exited, ""
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(proc.exited), ""
        except TimeoutError:
            proc.signal_group(signal.SIGTERM)
            try:
                async with asyncio.timeout(2.0):
                    return await asyncio.shield(proc.exited), "timeout"
            except TimeoutError:
                proc.signal_group(signal.SIGKILL)
                return await proc.exited, "timeout"


@dataclass
class _Pipe:
    """One output pipe being read: its stream, output not sent yet, lines sent so far."""

    stream: int
    carry: bytes = b""
    lineno: int = 0


class OutputReader:
    """Reads a program's output pipes to their ends and emits their bytes as records of whole lines,
    from reader callbacks on the event loop rather than a task per pipe: a launch on a thousand nodes
    of one process starts two thousand pipes at once.

    A record is ``("o", stream, lineno, data)``: ``data`` is one or more whole lines (bulk output goes
    one record per read: a record per line costs the tree and the client about fifteen times more),
    or a piece of a line longer than ``MAX_LINE`` (its data does not end in a newline; the client
    joins the pieces), or the end of the output when it lacks a newline; ``lineno`` is the number of
    its first line (a piece counts as a line). Live, a read of a few lines (``SPLIT_LINES``) goes one
    record per line, so that lines all nodes print alike merge whatever else each prints. A gathering
    op (``-b``) sends nothing before the end anyway, so its records are cut where only the bytes
    decide (``_cut``): identical outputs give identical records on every node and merge into one,
    whatever their size.

    While the way up is congested, or the job is held because its client is slow, the pipes are not
    read (the program blocks on a full pipe): the callbacks stop and one task waits for both to clear."""

    def __init__(self, op: Op, pipes: list[tuple[int, int]], held: Callable[[], bool] | None = None) -> None:
        self.op = op
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self._open: dict[int, _Pipe] = {}  # by descriptor: the pipes not at their end
        self._resume: asyncio.Task[None] | None = None
        self._reading = True  # readers are registered (not while waiting for the way up to drain)
        self._held = held or (lambda: False)
        self._gather = op.gather
        for fd, stream in pipes:
            if fd >= 0:
                self._open[fd] = _Pipe(stream)
                self.loop.add_reader(fd, self._readable, fd)
        if not self._open:
            self.done.set_result(None)

    def _readable(self, fd: int) -> None:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._end(fd)
            return
        pipe = self._open[fd]
        carry = pipe.carry + data if pipe.carry else data
        if self._gather:
            carry = self._cut(pipe, carry, False)
        else:
            nl = carry.rfind(b"\n")
            if nl >= 0:
                whole = carry[: nl + 1] if nl + 1 < len(carry) else carry
                carry = carry[nl + 1 :]
                if whole.count(b"\n") <= SPLIT_LINES:
                    for line in whole[:-1].split(b"\n"):  # newlines only (a \r stays in its line)
                        self._record(pipe, line + b"\n")
                else:
                    self._record(pipe, whole)
            while len(carry) > MAX_LINE:
                self._record(pipe, carry[:MAX_LINE])
                carry = carry[MAX_LINE:]
        pipe.carry = carry
        self.check_flow()

    def _record(self, pipe: _Pipe, data: bytes) -> None:
        """Send ``data`` up as the pipe's next record, numbered by its first line."""
        self.op.emit(("o", pipe.stream, pipe.lineno, data))
        pipe.lineno += data.count(b"\n") or 1  # a piece of a line counts as one

    def _cut(self, pipe: _Pipe, buf: bytes, end: bool) -> bytes:
        """Emit records of ``buf`` at places only its bytes decide (the last line end within ``BLOCK``
        bytes, else the first after, else ``MAX_LINE``); returns what is left (all of it at the end)."""
        while len(buf) >= BLOCK:
            nl = buf.rfind(b"\n", 0, BLOCK)
            if nl < 0:
                nl = buf.find(b"\n", BLOCK, MAX_LINE)
            if nl >= 0:
                cut = nl + 1
            elif len(buf) >= MAX_LINE:
                cut = MAX_LINE
            else:
                break  # the line ends later
            self._record(pipe, buf[:cut])
            buf = buf[cut:]
        if end and buf:
            self._record(pipe, buf)
            return b""
        return buf

    def check_flow(self) -> None:
        """Stop reading while the way up is congested or the job is held."""
        if self._reading and (self.op.congested or self._held()):
            self._reading = False
            for f in self._open:
                self.loop.remove_reader(f)
            self._resume = asyncio.ensure_future(self._after_drain())

    async def _after_drain(self) -> None:
        while True:
            await self.op.backpressure()
            if not self._held():
                break
            await asyncio.sleep(HELD_POLL)
        self._resume = None
        self._reading = True
        for f in self._open:
            self.loop.add_reader(f, self._readable, f)

    def _end(self, fd: int) -> None:
        """The pipe is at its end (or given up): what is left of its last line goes up."""
        if self._reading:
            self.loop.remove_reader(fd)
        pipe = self._open.pop(fd)
        if self._gather:
            self._cut(pipe, pipe.carry, True)
        elif pipe.carry:
            self._record(pipe, pipe.carry)
        pipe.carry = b""
        if not self._open and not self.done.done():
            self.done.set_result(None)

    async def finished(self, grace: float) -> None:
        """Wait until every pipe ended, for at most ``grace`` seconds of reading (a background child
        may hold one open). Time while the pipes are not read (the job held, the way up congested)
        does not count: what the program wrote before it exited waits in its pipes and must go up."""
        left = grace
        while left > 0:
            start = self.loop.time()
            try:
                async with asyncio.timeout(min(left, HELD_POLL * 2)):
                    await asyncio.shield(self.done)
                return
            except TimeoutError:
                pass
            if self._reading:
                left -= self.loop.time() - start

    def stop(self) -> None:
        """Stop reading (before the pipes are closed); idempotent."""
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        for fd in list(self._open):
            self._end(fd)
