"""Everything specific to an operating system, in one place.

Process spawning (``posix_spawn`` from the event loop, vfork-fast ``Popen`` where a user switch is
needed or from a thread; a pidfd exit watch on Linux, a waiter thread elsewhere),
private mount namespaces for jobs (Linux, root), peer credentials on Unix sockets, file-descriptor
limits, and the event-loop choice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import functools
import json
import os
import pwd
import re
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from gproc import eventloop, peers, spawnd
from gproc.errors import NamespaceError, StagingError

T = TypeVar("T")

IS_LINUX = sys.platform.startswith("linux")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when installed, else asyncio (``gproc.eventloop.run``)."""
    return eventloop.run(coro)


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard limit (a node daemon holds a socket per link)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


@dataclass(frozen=True)
class PeerCred:
    """Who is at the other end of a Unix socket, as the kernel says."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCred:
    """Kernel credentials of a Unix-socket peer (SO_PEERCRED on Linux, getpeereid elsewhere);
    ``PermissionError`` where they cannot be read, so the caller refuses rather than guesses."""
    return PeerCred(*peers.peer_ids(sock))


_TCP_INFO_BYTES_RECEIVED = 128  # struct tcp_info: tcpi_bytes_received (u64), then segs_out, segs_in (u32)


def tcp_received(sock: Any) -> tuple[int, int] | None:
    """TCP payload bytes and segments a connected socket has received so far (Linux ``TCP_INFO``).

    For a TLS link this counts TLS records as they crossed the network (headers, padding and tags
    included); IP and TCP headers are not counted. None where the kernel does not tell.
    """
    if not IS_LINUX or sock is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 144)
    except (OSError, AttributeError, ValueError):
        return None
    if len(raw) < 144:
        return None
    received, _segs_out, segs_in = struct.unpack_from("<QII", raw, _TCP_INFO_BYTES_RECEIVED)
    return received, segs_in


def user_name(uid: int) -> str:
    """A user's name, or the number where this host does not know it."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def user_groups(uid: int, gid: int) -> list[int]:
    """Supplementary groups a job of ``uid`` switches to (empty if the user is unknown on this node,
    and when the daemon runs as ``uid`` already: then no switch happens and the lookup is wasted)."""
    if uid == os.geteuid():
        return []
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return []
    try:
        return os.getgrouplist(name, gid)
    except OSError:
        return []


@dataclass
class Started:
    """A program just started: its pid and the parent's ends of its pipes (-1: none)."""

    pid: int
    stdin: int
    stdout: int
    stderr: int
    popen: subprocess.Popen[bytes] | None = None  # set when started by Popen (it must not reap again)


class Process:
    """A started program: its pid, non-blocking output pipes, and an awaitable exit status."""

    def __init__(self, started: Started, loop: asyncio.AbstractEventLoop, watch: bool = True) -> None:
        self.pid = started.pid
        self._popen = started.popen
        self.stdout, self.stderr, self.stdin = started.stdout, started.stderr, started.stdin
        self.exited: asyncio.Future[int] = loop.create_future()
        if watch:  # else its parent is a ``Starter``, which reports the status
            self._watch_exit(loop)

    def _set_status(self, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        if not self.exited.done():
            self.exited.set_result(128 - code if code < 0 else code)

    def _reaped(self) -> None:
        if self._popen is not None:
            self._popen.returncode = 0  # reaped here: Popen must not wait for it again

    def _watch_exit(self, loop: asyncio.AbstractEventLoop) -> None:
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is not None:
            try:
                fd = pidfd_open(self.pid)
            except OSError:
                fd = -1
            if fd >= 0:

                def on_exit() -> None:
                    loop.remove_reader(fd)
                    os.close(fd)
                    _, status = os.waitpid(self.pid, 0)
                    self._reaped()
                    self._set_status(status)

                loop.add_reader(fd, on_exit)
                return

        def waiter() -> None:  # portable fallback: one thread blocked in waitpid
            _, status = os.waitpid(self.pid, 0)
            self._reaped()
            loop.call_soon_threadsafe(self._set_status, status)

        threading.Thread(target=waiter, daemon=True).start()

    def signal_group(self, sig: int) -> bool:
        """Signal the process group the program leads (it and everything it forked)."""
        try:
            os.killpg(self.pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def close_stdin(self) -> None:
        """End of input for the program (its stdin pipe is closed)."""
        fd, self.stdin = self.stdin, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close_pipes(self) -> None:
        self.close_stdin()
        for attr in ("stdout", "stderr"):
            fd = getattr(self, attr)
            setattr(self, attr, -1)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


# Signals Python ignores at start-up that a program must get back at their default (as Popen does).
_RESET_SIGNALS = tuple(s for s in (getattr(signal, "SIGPIPE", None), getattr(signal, "SIGXFSZ", None)) if s)


@dataclass
class Command:
    """What to start: arguments, the file to execute (default argv[0]), where and as whom."""

    argv: list[str]
    cwd: str | None
    env: dict[str, str]
    executable: str | None = None
    uid: int | None = None
    gid: int | None = None
    groups: list[int] | None = None
    stdin: bool = False
    make_cwd: bool = False  # create ``cwd`` when missing (as the job's user)

    def switches_user(self) -> bool:
        return self.uid is not None and self.uid != os.geteuid()

    def own_cwd(self) -> str | None:
        """The working directory when no user switch happens (the daemon is the job's user, so it
        may create it itself); None, the daemon's own, when it is missing and cannot be made."""
        if self.cwd is None or not self.make_cwd or os.path.isdir(self.cwd):
            return self.cwd
        try:
            os.makedirs(self.cwd, mode=0o755, exist_ok=True)
        except OSError:
            return None
        return self.cwd

    def _pipes(self) -> tuple[list[int], list[int]]:
        """(parent's ends, child's ends) for stdin (or /dev/null), stdout, stderr; all close-on-exec."""
        mine, theirs = [], []
        if self.stdin:
            r, w = os.pipe()
            mine.append(w)
            theirs.append(r)
        else:
            mine.append(-1)
            theirs.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        for _ in range(2):
            r, w = os.pipe()
            mine.append(r)
            theirs.append(w)
        return mine, theirs

    def popen(self) -> Started:
        """Start with ``subprocess.Popen`` (vfork; any thread; can switch user)."""
        kw: dict[str, Any] = {}
        if self.switches_user():
            # The directory is entered (and made) by the child after it became the user, so a job
            # gets no directory its user could not enter or create itself. (Popen's own ``cwd`` is
            # entered before the switch; ``preexec_fn`` runs after it, at the price of fork for vfork.)
            kw.update(user=self.uid, group=self.gid, extra_groups=self.groups or [])
            kw["preexec_fn"] = functools.partial(_enter_as_user, self.cwd, self.make_cwd)
        else:
            kw["cwd"] = self.own_cwd()
        mine, theirs = self._pipes()
        try:
            p = subprocess.Popen(
                self.argv,
                executable=self.executable,
                stdin=theirs[0],
                stdout=theirs[1],
                stderr=theirs[2],
                env=self.env,
                start_new_session=True,
                close_fds=True,
                **kw,
            )
        except BaseException:
            _close_all(mine)
            raise
        finally:
            _close_all(theirs)
        return Started(p.pid, mine[0], mine[1], mine[2], p)

    def path(self) -> str:
        """The file to execute; a bare name is looked up in the job's PATH, as Popen (execvpe) does."""
        path = self.executable or self.argv[0]
        if "/" not in path:
            found = shutil.which(path, path=self.env.get("PATH", os.defpath))
            if found is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
            path = found
        return path

    def posix_spawn(self, home: str) -> Started:
        """Start with ``os.posix_spawn`` (half Popen's CPU here). Only for the calling user and from
        the event loop's thread: Python 3.11's posix_spawn has no working-directory action, so the
        process changes directory around it and goes back to ``home``; every path the daemon itself
        uses is absolute, and every descriptor it holds is close-on-exec (Python's default)."""
        path = self.path()
        cwd = self.own_cwd()
        mine, theirs = self._pipes()
        actions = [(os.POSIX_SPAWN_DUP2, fd, i) for i, fd in enumerate(theirs)]
        try:
            if cwd is not None:
                os.chdir(cwd)
            try:
                pid = os.posix_spawn(
                    path,
                    self.argv,
                    self.env,
                    file_actions=actions,
                    setsid=True,
                    setsigdef=_RESET_SIGNALS,
                    setsigmask=(),
                )
            finally:
                if cwd is not None:
                    try:
                        os.chdir(home)
                    except OSError:
                        os.chdir("/")
        except BaseException:
            _close_all(mine)
            raise
        finally:
            _close_all(theirs)
        return Started(pid, mine[0], mine[1], mine[2])


def _enter_as_user(cwd: str | None, make: bool) -> None:
    """In the child, after the switch to the job's user: enter ``cwd`` (made first when missing and
    ``make``), else ``/``; never a directory the daemon's own rights reached."""
    if cwd is not None:
        try:
            if make and not os.path.isdir(cwd):
                os.makedirs(cwd, mode=0o755, exist_ok=True)
            os.chdir(cwd)
            return
        except OSError:
            pass
    os.chdir("/")


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


def _process(started: Started, loop: asyncio.AbstractEventLoop, watch: bool = True) -> Process:
    proc = Process(started, loop, watch)
    for fd in (proc.stdout, proc.stderr, proc.stdin):
        if fd >= 0:
            os.set_blocking(fd, False)
    return proc


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where gproc is imported from
# The starter runs isolated (-I -S) and imports gproc only for a private view, from where this one is.
_STARTER_LOADER = (
    "import importlib.util as u, sys\n"
    "sys.path.insert(0, sys.argv[3])\n"
    "s = u.spec_from_file_location('gproc_spawnd', sys.argv[1]); m = u.module_from_spec(s)\n"
    "s.loader.exec_module(m); sys.exit(m.main(int(sys.argv[2])))\n"
)


def starter_argv(fd: int) -> list[str]:
    """The command of a program starter serving the socket ``fd``."""
    return [sys.executable, "-I", "-S", "-c", _STARTER_LOADER, spawnd.__file__, str(fd), _ROOT]


class StarterGone(OSError):
    """The starter process ended or stopped answering; the caller starts the program itself."""


class Starter:
    """The daemon's end of ``gproc.spawnd``: programs started by a small process holding five
    descriptors, so their start does not copy and close the thousands this process holds.

    ``start`` sends the request and waits (at most ``timeout`` seconds) for the pid; exit statuses
    arrive on the same socket and settle each ``Process.exited``. If the starter dies, the programs
    it started and has not reported are given exit status 255 (their end is unknown) and ``start``
    raises ``StarterGone``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self._loop = loop
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._child = subprocess.Popen(
                starter_argv(theirs.fileno()),
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                process_group=0,  # a terminal's Ctrl-C is the daemon's to handle; it ends when we close
            )
        except BaseException:
            self._sock.close()
            raise
        finally:
            theirs.close()
        self._sock.setblocking(False)
        self._seq = 0
        self._procs: dict[int, Process] = {}
        self._waiting: dict[int, tuple[asyncio.Future[Process], list[int], str]] = {}  # start_in_view's
        self._in_flight = 0  # start_in_view requests holding a place
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.alive = True
        loop.add_reader(self._sock.fileno(), self._read_some)

    @property
    def pid(self) -> int:
        return self._child.pid

    def start(self, cmd: Command) -> Process:
        """Start ``cmd`` and return once the starter named its pid (it answers right after
        ``posix_spawn``)."""
        seq, path, mine = self._send(cmd, None)
        try:
            reply = self._reply(seq)
        except BaseException:
            _close_all(mine)
            raise
        return self._started(reply, mine, path)

    async def start_in_view(self, cmd: Command, view: dict[str, Any]) -> Process:
        """Start ``cmd`` in a private view the starter builds first (see ``gproc.privateview``);
        the event loop runs on meanwhile. NamespaceError or StagingError when the view cannot be made."""
        await self._take_slot()  # what the starter's socket holds is bounded
        try:
            seq, path, mine = self._send(cmd, view)
            fut = self._loop.create_future()
            self._waiting[seq] = (fut, mine, path)
            try:
                async with asyncio.timeout(self.timeout):
                    return await fut
            except TimeoutError:
                self.close()
                raise StarterGone(errno.ETIMEDOUT, f"the starter did not answer in {self.timeout:g} s") from None
        finally:
            self._give_slot()

    async def _take_slot(self) -> None:
        """One of ``VIEWS_IN_FLIGHT`` places, first come first served. (asyncio.Semaphore of Python
        3.11 looks at every waiter on each acquire: with a worker's hundreds of nodes starting at
        once that was 3 % of its CPU.)"""
        if self._in_flight < VIEWS_IN_FLIGHT and not self._slot_waiters:
            self._in_flight += 1
            return
        fut = self._loop.create_future()
        self._slot_waiters.append(fut)
        try:
            await fut  # handed a place by _give_slot
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._give_slot()  # it was handed over just as we gave up: pass it on
            raise

    def _give_slot(self) -> None:
        while self._slot_waiters:
            fut = self._slot_waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the place goes to the next waiter as it is
                return
        self._in_flight -= 1

    def _send(self, cmd: Command, view: dict[str, Any] | None) -> tuple[int, str, list[int]]:
        """Send a start request with the program's three descriptors; returns (seq, path, our ends)."""
        if not self.alive:
            raise StarterGone(errno.ECHILD, "the program starter has ended")
        path = cmd.path()
        self._seq += 1
        req: dict[str, Any] = {"s": self._seq, "path": path, "argv": cmd.argv, "env": cmd.env}
        if view is None:
            req["cwd"] = cmd.own_cwd()
        else:  # the directory is in the view, entered there
            req.update(cwd=cmd.cwd, view=view)
        data = json.dumps(req).encode()
        if len(data) > spawnd.MAX_MESSAGE:
            raise StarterGone(errno.E2BIG, "request too large for the program starter")
        mine, theirs = cmd._pipes()
        try:
            self._send_fds(data, theirs)
        except BaseException:
            _close_all(mine)
            raise
        finally:
            _close_all(theirs)
        return self._seq, path, mine

    def _send_fds(self, data: bytes, fds: list[int]) -> None:
        """Send one request; while the socket is full (requests in flight), wait for room, at most
        ``timeout`` seconds (then the starter is taken for stuck)."""
        deadline = time.monotonic() + self.timeout
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLOUT)
        while True:
            try:
                socket.send_fds(self._sock, [data], fds)
                return
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left > 0:
                    poller.poll(left * 1000)
                    continue
                err: OSError = BlockingIOError(errno.ETIMEDOUT, "full")
            except OSError as e:  # closed: it is gone
                err = e
            self.close()
            raise StarterGone(err.errno or errno.EPIPE, "the program starter does not take requests") from err

    def _started(self, reply: dict[str, Any], mine: list[int], path: str) -> Process:
        """The process a reply names, registered for its exit report; or the error it reports."""
        pid = reply.get("pid")
        if not isinstance(pid, int):
            _close_all(mine)
            err = reply.get("errno")
            err = err if isinstance(err, int) else errno.EIO
            text = str(reply.get("error", "cannot start"))
            kind = reply.get("kind")
            if kind == "NamespaceError":
                raise NamespaceError(err, text)
            if kind == "StagingError":
                raise StagingError(text)
            raise OSError(err, text, path)
        proc = _process(Started(pid, mine[0], mine[1], mine[2]), self._loop, watch=False)
        self._procs[pid] = proc
        return proc

    def _settle(self, seq: int, msg: dict[str, Any]) -> None:
        """The answer to a ``start_in_view``: its process is registered at once, before any exit
        report behind the answer is read. One whose caller gave up is ended."""
        fut, mine, path = self._waiting.pop(seq)
        try:
            proc = self._started(msg, mine, path)
        except Exception as e:
            if not fut.done():
                fut.set_exception(e)
            return
        if fut.done():  # cancelled meanwhile: do not leave the program behind
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.close_pipes()
            return
        fut.set_result(proc)

    def _reply(self, seq: int) -> dict[str, Any]:
        """Wait for the answer to request ``seq``, settling the exits that come before it."""
        deadline = time.monotonic() + self.timeout
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        while self.alive:
            msg = self._read_some(stop_at_reply=True)
            if msg is not None and msg.get("s") == seq:
                return msg
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                raise StarterGone(errno.ETIMEDOUT, f"the program starter did not answer in {self.timeout:g} s")
            poller.poll(left * 1000)
        raise StarterGone(errno.ECHILD, "the program starter has ended")

    def _read_some(self, stop_at_reply: bool = False) -> dict[str, Any] | None:
        """Read what waits on the socket, settling exit reports; with ``stop_at_reply``, stop at the
        first other message and return it (an exit report right behind a reply is for the program
        that reply names, which is not registered yet)."""
        while self.alive:
            try:
                data = self._sock.recv(spawnd.MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            if not data:
                self.close()
                break
            try:
                msg = json.loads(data)
            except ValueError:
                continue
            if not isinstance(msg, dict):
                continue
            if "x" in msg:
                proc = self._procs.pop(msg["x"], None)
                if proc is not None and isinstance(msg.get("status"), int):
                    proc._set_status(msg["status"])
            elif isinstance(msg.get("s"), int) and msg["s"] in self._waiting:
                self._settle(msg["s"], msg)
            elif stop_at_reply:
                return msg
        return None

    def close(self) -> None:
        """Stop using the starter (it ends when its socket closes); unreported programs get 255."""
        if not self.alive:
            return
        self.alive = False
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        for proc in self._procs.values():
            if not proc.exited.done():
                proc.exited.set_result(255)
        self._procs.clear()
        for fut, mine, _path in self._waiting.values():
            _close_all(mine)
            if not fut.done():
                fut.set_exception(StarterGone(errno.ECHILD, "the program starter has ended"))
        self._waiting.clear()
        self._child.poll()  # it ends on its own when it sees the socket closed; reaped then or later


# Open descriptors from which a process starts its programs through a Starter. Below, it costs more
# than it saves: per start the starter spends ~225 µs, the daemon as much as before, while a
# descriptor costs the child ~0.1 µs with warm caches and ~0.2 µs on a loaded machine (measured on
# 2-core EPYC: 2,000 descriptors, idle: 833 µs direct vs 888 µs through the starter).
STARTER_ABOVE = 1000
# Open descriptors from which a process builds private views through its starter: more than a daemon
# of one node holds with a few jobs running. The starter spares such a process a thread, a copy of its
# descriptor table and the interpreter lock for every shipped job it starts (2.3-2.5x a -localbin
# launch at 64-256 local nodes in one process, 1.5-1.6x through the starter); for a daemon of one
# node it would be one more process for nothing.
PRIVATE_STARTER_ABOVE = 32
VIEWS_IN_FLIGHT = 16  # private starts a starter is asked for at once (each request is a few KB)
STARTER_RESTARTS = 3  # starters that may die before a process starts all its programs itself


class Spawner:
    """Starts programs from the event loop's thread: ``posix_spawn`` when no user switch is needed,
    ``Popen`` otherwise (and where there is no ``posix_spawn``). A process holding more than
    ``starter_above`` descriptors (one hosting hundreds of nodes) starts them through a ``Starter``
    instead (Linux; None: never)."""

    def __init__(self, starter_above: int | None = STARTER_ABOVE) -> None:
        if starter_above is not None and starter_above < 0:
            starter_above = None
        self.home = os.getcwd()  # where the process goes back to after starting a program elsewhere
        self.starter_above = starter_above if IS_LINUX else None
        self.starter: Starter | None = None
        self._starter_failed = False
        self._fds_checked = -1.0
        self._fds = 0  # descriptors this process held at the last count
        self._deaths = 0

    def start(self, cmd: Command) -> Process:
        loop = asyncio.get_running_loop()
        if not cmd.switches_user() and hasattr(os, "posix_spawn"):
            if self._use_starter(loop):
                assert self.starter is not None
                try:
                    return self.starter.start(cmd)
                except StarterGone:
                    pass  # this one directly; a dead starter is replaced at the next start
            return _process(cmd.posix_spawn(self.home), loop)
        return _process(cmd.popen(), loop)

    async def start_private(self, cmd: Command, view: dict[str, Any], enter: Callable[[], None]) -> Process:
        """Start ``cmd`` in a private mount namespace: built by the starter from ``view`` (the wire
        form of a ``gproc.privateview.PrivateView``) when this process starts through one, else by
        ``enter`` in a thread of this process."""
        loop = asyncio.get_running_loop()
        if not cmd.switches_user() and hasattr(os, "posix_spawn") and self._use_starter(loop, private=True):
            assert self.starter is not None
            try:
                return await self.starter.start_in_view(cmd, view)
            except StarterGone:
                pass
        return await spawn_private(enter, cmd)

    def _use_starter(self, loop: asyncio.AbstractEventLoop, private: bool = False) -> bool:
        """Does this start go through the starter? While the process holds more than
        ``starter_above`` descriptors (``PRIVATE_STARTER_ABOVE`` for a private start: one hosting a
        dozen nodes or more), counted at most once a second (~0.1 µs per descriptor); until starters
        have died ``STARTER_RESTARTS`` times."""
        if self.starter_above is None or self._starter_failed:
            return False
        now = time.monotonic()
        if now - self._fds_checked > 1.0:
            self._fds_checked = now
            try:
                self._fds = len(os.listdir("/proc/self/fd"))
            except OSError:
                self._fds = 0
        if self._fds <= (min(PRIVATE_STARTER_ABOVE, self.starter_above) if private else self.starter_above):
            return False
        if self.starter is not None and self.starter.alive:
            return True
        if self.starter is not None:  # it died: a new one, a few times
            self._deaths += 1
            if self._deaths >= STARTER_RESTARTS:
                self._starter_failed = True
                return False
        try:
            self.starter = Starter(loop)
        except OSError:
            self._starter_failed = True
            return False
        return True

    def close(self) -> None:
        if self.starter is not None:
            self.starter.close()


def spawn(
    argv: list[str],
    *,
    cwd: str | None,
    env: dict[str, str],
    uid: int | None = None,
    gid: int | None = None,
    groups: list[int] | None = None,
    stdin: bool = False,
    executable: str | None = None,
    spawner: Spawner | None = None,
    make_cwd: bool = False,
) -> Process:
    """Start a program in its own session, with piped output (and piped stdin when asked)."""
    cmd = Command(argv, cwd, env, executable, uid, gid, groups, stdin, make_cwd)
    return spawner.start(cmd) if spawner is not None else start(cmd)


def start(cmd: Command) -> Process:
    """Start a ``Command`` with ``Popen`` (see ``spawn``)."""
    return _process(cmd.popen(), asyncio.get_running_loop())


def group_alive(pgid: int) -> bool:
    """Is any process left in this process group?"""
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


# ---- private mount namespaces (Linux) ------------------------------------------------------------


def signal_pending(pid: int) -> bool:
    """Has process ``pid`` a signal waiting to be delivered? (A FUSE server that cannot see the
    kernel's interrupt requests asks this while a read waits, so that a reader killed meanwhile is not
    held until data comes; False where it cannot be told.)"""
    if not IS_LINUX or pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith((b"SigPnd:", b"ShdPnd:")) and int(line.split()[1], 16):
                    return True
    except (OSError, ValueError, IndexError):
        return True  # gone: no one waits any more
    return False


def is_mounted(path: str) -> bool:
    """Is something mounted at ``path`` in this process's mount namespace? Read from the kernel's
    table, never by a call on ``path`` (a FUSE server asking about its own mount would wait on
    itself). True where it cannot be told."""
    if not IS_LINUX:
        return True
    target = os.path.abspath(path)  # not realpath: it would stat the mount itself
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and _unescape(fields[4]) == target:
                    return True
    except OSError:
        return True
    return False


def _unescape(field: bytes) -> str:
    """A mountinfo path: spaces, tabs, newlines and backslashes are octal escapes there."""
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field))


def private_mounts_possible() -> bool:
    """Can jobs get a private mount namespace here (Linux, and root)?"""
    return IS_LINUX and os.geteuid() == 0


async def spawn_built(build: Callable[[], None], cmd: Command) -> Process:
    """Run ``build`` (staging the job's files) and start ``cmd``, in a short-lived thread: staging
    and fork/exec are system calls, so many nodes of one process stage and start side by side
    while the event loop keeps reading its links."""

    def work() -> Started:
        build()
        return cmd.popen()

    return await _in_thread(work, "gproc-stage")


async def spawn_private(enter: Callable[[], None], cmd: Command) -> Process:
    """Start ``cmd`` in the private mount namespace ``enter`` makes for the calling thread (see
    ``gproc.privateview``): in a short-lived thread of its own, so the daemon keeps its own view and
    spawning stays a vfork away."""

    def work() -> Started:
        enter()
        return cmd.popen()

    return await _in_thread(work, "gproc-private-mount")


async def _in_thread(work: Callable[[], Started], name: str) -> Process:
    """Run ``work`` in a new thread (never a pooled one: it may change its mount namespace) and wrap
    the process it started; a process started after the caller gave up is killed."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Started] = loop.create_future()

    def settle(started: Started | None, exc: BaseException | None) -> None:
        if fut.cancelled():  # the daemon gave up waiting (stopping): do not leave the job behind
            if started is not None:
                with contextlib.suppress(OSError):
                    os.killpg(started.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(started.pid, 0)
                _close_all([started.stdin, started.stdout, started.stderr])
                if started.popen is not None:
                    started.popen.returncode = 0
        elif exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(started)  # type: ignore[arg-type]

    def run() -> None:
        try:
            started = work()
        except BaseException as e:
            loop.call_soon_threadsafe(settle, None, e)
        else:
            loop.call_soon_threadsafe(settle, started, None)

    threading.Thread(target=run, name=name, daemon=True).start()
    return _process(await fut, loop)


def install_reload_signal(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Call ``callback`` on SIGHUP (a daemon reads its revoked serials again)."""
    with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, callback)


def install_shutdown_signals(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Call ``callback`` on SIGINT and SIGTERM (a daemon's clean shutdown)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, callback)
        except (NotImplementedError, RuntimeError):
            pass
