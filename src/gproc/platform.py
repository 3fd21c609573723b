"""Everything specific to an operating system, in one place.

Process spawning (``posix_spawn`` from the event loop, vfork-fast ``Popen`` where a user switch is
needed or from a thread; a pidfd exit watch on Linux, a waiter thread elsewhere),
private mount namespaces for jobs (Linux, root), peer credentials on Unix sockets, file-descriptor
limits, and the event-loop choice.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import pwd
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

IS_LINUX = sys.platform.startswith("linux")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when installed (faster sockets and TLS), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


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
    """Kernel credentials of a Unix-socket peer (SO_PEERCRED on Linux, getpeereid elsewhere)."""
    if IS_LINUX:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", raw)
        return PeerCred(pid, uid, gid)
    getpeereid = getattr(os, "getpeereid", None)  # BSD/macOS via a tiny ctypes shim is future work
    if getpeereid is None:
        return PeerCred(0, os.getuid(), os.getgid())
    uid, gid = getpeereid(sock.fileno())
    return PeerCred(0, uid, gid)


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

    def __init__(self, started: Started, loop: asyncio.AbstractEventLoop) -> None:
        self.pid = started.pid
        self._popen = started.popen
        self.stdout, self.stderr, self.stdin = started.stdout, started.stderr, started.stdin
        self.exited: asyncio.Future[int] = loop.create_future()
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
        if self.uid is not None and self.uid != os.geteuid():
            kw.update(user=self.uid, group=self.gid, extra_groups=self.groups or [])
        mine, theirs = self._pipes()
        try:
            p = subprocess.Popen(
                self.argv,
                executable=self.executable,
                stdin=theirs[0],
                stdout=theirs[1],
                stderr=theirs[2],
                cwd=self.cwd,
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

    def posix_spawn(self, home: str) -> Started:
        """Start with ``os.posix_spawn`` (half Popen's CPU here). Only for the calling user and from
        the event loop's thread: Python 3.11's posix_spawn has no working-directory action, so the
        process changes directory around it and goes back to ``home``; every path the daemon itself
        uses is absolute, and every descriptor it holds is close-on-exec (Python's default)."""
        path = self.executable or self.argv[0]
        if "/" not in path:  # as Popen (and execvpe) look it up: in the job's PATH
            found = shutil.which(path, path=self.env.get("PATH", os.defpath))
            if found is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
            path = found
        mine, theirs = self._pipes()
        actions = [(os.POSIX_SPAWN_DUP2, fd, i) for i, fd in enumerate(theirs)]
        try:
            if self.cwd is not None:
                os.chdir(self.cwd)
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
                if self.cwd is not None:
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


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


def _process(started: Started, loop: asyncio.AbstractEventLoop) -> Process:
    proc = Process(started, loop)
    for fd in (proc.stdout, proc.stderr, proc.stdin):
        if fd >= 0:
            os.set_blocking(fd, False)
    return proc


class Spawner:
    """Starts programs from the event loop's thread: ``posix_spawn`` when no user switch is needed,
    ``Popen`` otherwise (and where there is no ``posix_spawn``)."""

    def __init__(self) -> None:
        self.home = os.getcwd()  # where the process goes back to after starting a program elsewhere

    def start(self, cmd: Command) -> Process:
        loop = asyncio.get_running_loop()
        same_user = cmd.uid is None or cmd.uid == os.geteuid()
        if same_user and hasattr(os, "posix_spawn"):
            return _process(cmd.posix_spawn(self.home), loop)
        return _process(cmd.popen(), loop)


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
) -> Process:
    """Start a program in its own session, with piped output (and piped stdin when asked)."""
    cmd = Command(argv, cwd, env, executable, uid, gid, groups, stdin)
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

_CLONE_NEWNS = 0x00020000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 1, 2, 4, 32, 0x1000, 0x4000, 0x40000


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


class NamespaceError(OSError):
    """A private mount namespace could not be set up (no privilege, or not supported here)."""


def _check(ret: int, what: str, error: type[OSError] = OSError) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise error(err, f"{what}: {os.strerror(err)}")


def private_mounts_possible() -> bool:
    """Can jobs get a private mount namespace here (Linux, and root)?"""
    return IS_LINUX and os.geteuid() == 0


def bind_mount(source: str, target: str) -> None:
    """Bind-mount ``source`` on ``target`` (in the calling thread's mount namespace), read-only, no
    set-id or devices, and executable even when the source's file system is mounted ``noexec``."""
    libc, t = _libc(), os.fsencode(target)
    _check(libc.mount(os.fsencode(source), t, None, _MS_BIND, None), "bind mount")
    flags = _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV
    _check(libc.mount(None, t, None, flags, None), "remount read-only")


async def spawn_built(build: Callable[[], None], cmd: Command) -> Process:
    """Run ``build`` (staging the job's files) and start ``cmd``, in a short-lived thread: staging
    and fork/exec are system calls, so many nodes of one process stage and start side by side
    while the event loop keeps reading its links."""

    def work() -> Started:
        build()
        return cmd.popen()

    return await _in_thread(work, "gproc-stage")


async def spawn_private(tmpfs_at: str, keep: str, build: Callable[[int], None], cmd: Command) -> Process:
    """Start ``cmd`` in a new mount namespace (propagation private) with a fresh tmpfs at ``tmpfs_at``,
    filled by ``build`` first. ``build`` gets a descriptor of directory ``keep`` opened in the new
    namespace before the tmpfs hid it (a bind mount's source must belong to the caller's namespace).
    The tmpfs and everything mounted in it vanish with the job's last process.

    The namespace is made by a short-lived thread of its own (``unshare(CLONE_NEWNS)`` applies to the
    calling thread only), so the daemon keeps its own view and spawning stays a vfork away.
    """

    def work() -> Started:
        libc = _libc()
        _check(libc.unshare(_CLONE_NEWNS), "unshare", NamespaceError)
        _check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "make / private", NamespaceError)
        keep_fd = os.open(keep, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            tmpfs = libc.mount(b"tmpfs", os.fsencode(tmpfs_at), b"tmpfs", _MS_NOSUID | _MS_NODEV, b"mode=0700")
            _check(tmpfs, f"mount tmpfs on {tmpfs_at}", NamespaceError)
            build(keep_fd)
        finally:
            os.close(keep_fd)
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


def install_shutdown_signals(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Call ``callback`` on SIGINT and SIGTERM (a daemon's clean shutdown)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, callback)
        except (NotImplementedError, RuntimeError):
            pass
