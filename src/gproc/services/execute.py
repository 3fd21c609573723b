"""Running a command on a node: spawn it, stream its output lines up, report its exit status.

Output travels as groups keyed ``("o", stream, lineno, data)`` so that identical lines from many nodes
merge into one record on the way up; the exit status is ``("s", status, error)``: 128+N for a signal,
255 with a reason when the command could not start.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gproc import platform
from gproc.errors import StagingError
from gproc.services.base import ServiceTable

if TYPE_CHECKING:
    from gproc.overlay import Node, Op
    from gproc.services.procs import ProcService
    from gproc.services.stage import StageService
    from gproc.services.stdin import StdinService

STDOUT, STDERR = 1, 2
MAX_LINE = 64 * 1024
EXIT_GRACE = 2.0  # how long output pipes are read after the command exited (background children)


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

    def service(self) -> ServiceTable:
        return ServiceTable("exec", ops={"exec": self.run, "signal": self.signal}, stop=self.kill_all)

    def kill_all(self) -> None:
        for proc in self.jobs.values():
            proc.signal_group(signal.SIGKILL)

    async def signal(self, op: Op) -> None:
        job, sig = op.body.get("job"), op.body.get("sig")
        if not isinstance(job, int) or not isinstance(sig, int) or not 0 <= sig < 65:
            op.emit(("s", 2, "bad signal request"))
            return
        proc = self.jobs.get(job)
        op.emit(("s", 0 if proc is not None and proc.signal_group(sig) else 1, ""))

    async def run(self, op: Op) -> None:
        b = op.body
        argv, cwd, env = b.get("argv"), b.get("cwd"), b.get("env")
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            op.emit(("s", 255, "bad command"))
            return
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            op.emit(("s", 255, "bad environment"))
            return
        uid, gid = b.get("uid"), b.get("gid")
        if not isinstance(uid, int) or not isinstance(gid, int):
            op.emit(("s", 255, "request carries no user"))
            return
        euid = os.geteuid()
        if euid != 0 and uid != euid:
            op.emit(("s", 255, f"node daemon runs as uid {euid} and cannot run jobs for uid {uid}"))
            return
        node = self.node
        job = b["job"] if isinstance(b.get("job"), int) else op.id  # a job id, not the op's
        parent = b["pgpid"] if isinstance(b.get("pgpid"), int) else 0
        gpid = await self.procs.allocate()  # from the node's block: waits only if it holds none
        env = {
            **env,
            "GPROC_NAME": node.cfg.name,
            "GPROC_RANK": str(node.rank),
            "GPROC_JOBID": str(job),
            "GPROC_NNODES": str(b.get("nnodes", 1)),
            **self.procs.job_env(gpid, parent),
        }
        want_stdin = b.get("stdin") is True
        await self.gate.wait()
        try:
            if b.get("bundle") is None:  # -localbin without files: the node's own program, as the seed
                workdir = self._workdir(cwd, uid, gid)
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
                )
            else:
                proc = await self.stage.start(job, b["bundle"], argv, env, uid, gid, stdin=want_stdin)
        except StagingError as e:
            op.emit(("s", 255, f"staging failed: {e}"))
            return
        except OSError as e:
            op.emit(("s", 255, f"cannot run {argv[0]}: {e.strerror or e}"))
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
            output = OutputReader(op, [(proc.stdout, STDOUT), (proc.stderr, STDERR)])
            status, error = await self._wait(proc, b.get("timeout"))
            self.stdin.detach(op.id)
            await output.finished(EXIT_GRACE)
            output.stop()  # a background child may still hold a pipe: what it said so far goes first
            op.emit(("s", status, error))
        finally:
            if output is not None:
                output.stop()
            self.stdin.detach(op.id)
            self.jobs.pop(job, None)
            if not proc.exited.done():
                proc.signal_group(signal.SIGKILL)
            proc.close_pipes()

    @staticmethod
    def _workdir(cwd: Any, uid: int, gid: int) -> str | None:
        """The client's working directory, created on the node when missing; else the home of binRoot."""
        if not isinstance(cwd, str) or not cwd.startswith("/"):
            return None
        if os.path.isdir(cwd):
            return cwd
        try:
            os.makedirs(cwd, mode=0o755)
            if os.geteuid() == 0:
                os.chown(cwd, uid, gid)
            return cwd
        except OSError:
            return None

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
    """One output pipe being read: its stream, the start of a line not ended yet, lines so far."""

    stream: int
    carry: bytes = b""
    lineno: int = 0


class OutputReader:
    """Reads a program's output pipes to their ends and emits one group per line (long lines are cut
    at 64 KiB), from reader callbacks on the event loop rather than a task per pipe: a launch on
    a thousand nodes of one process starts two thousand pipes at once.

    While the way up is congested the pipes are not read (the program blocks on a full pipe): the
    callbacks stop and one task waits for the parent link to drain."""

    def __init__(self, op: Op, pipes: list[tuple[int, int]]) -> None:
        self.op = op
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self._open: dict[int, _Pipe] = {}  # by descriptor: the pipes not at their end
        self._resume: asyncio.Task[None] | None = None
        self._reading = True  # readers are registered (not while waiting for the way up to drain)
        for fd, stream in pipes:
            if fd >= 0:
                self._open[fd] = _Pipe(stream)
                self.loop.add_reader(fd, self._readable, fd)
        if not self._open:
            self.done.set_result(None)

    def _readable(self, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._end(fd)
            return
        op, pipe = self.op, self._open[fd]
        stream, carry, lineno = pipe.stream, pipe.carry + data, pipe.lineno
        start = 0
        while True:
            nl = carry.find(b"\n", start)
            if nl < 0:
                break
            op.emit(("o", stream, lineno, carry[start : nl + 1]))
            lineno += 1
            start = nl + 1
        carry = carry[start:]
        while len(carry) >= MAX_LINE:
            op.emit(("o", stream, lineno, carry[:MAX_LINE]))
            lineno += 1
            carry = carry[MAX_LINE:]
        pipe.carry, pipe.lineno = carry, lineno
        if op.congested and self._reading:
            self._reading = False
            for f in self._open:
                self.loop.remove_reader(f)
            self._resume = asyncio.ensure_future(self._after_drain())

    async def _after_drain(self) -> None:
        await self.op.backpressure()
        self._resume = None
        self._reading = True
        for f in self._open:
            self.loop.add_reader(f, self._readable, f)

    def _end(self, fd: int) -> None:
        """The pipe is at its end (or given up): what is left of its last line goes up."""
        if self._reading:
            self.loop.remove_reader(fd)
        pipe = self._open.pop(fd)
        if pipe.carry:
            self.op.emit(("o", pipe.stream, pipe.lineno, pipe.carry))
        if not self._open and not self.done.done():
            self.done.set_result(None)

    async def finished(self, grace: float) -> None:
        """Wait until every pipe ended, at most ``grace`` seconds (a background child may hold one)."""
        try:
            async with asyncio.timeout(grace):
                await asyncio.shield(self.done)
        except TimeoutError:
            pass

    def stop(self) -> None:
        """Stop reading (before the pipes are closed); idempotent."""
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        for fd in list(self._open):
            self._end(fd)
