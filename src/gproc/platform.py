"""Everything specific to an operating system, in one place.

Process spawning (vfork-fast ``Popen`` with a pidfd exit watch on Linux, a waiter thread elsewhere),
peer credentials on Unix sockets, file-descriptor limits, and the event-loop choice.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import resource
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
    """Supplementary groups of a user (empty if the user is unknown on this node)."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return []
    try:
        return os.getgrouplist(name, gid)
    except OSError:
        return []


class Process:
    """A started program: its pid, non-blocking output pipes, and an awaitable exit status."""

    def __init__(self, popen: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self.pid = popen.pid
        self._popen = popen
        self.stdout = popen.stdout.fileno() if popen.stdout else -1
        self.stderr = popen.stderr.fileno() if popen.stderr else -1
        self.stdin = popen.stdin.fileno() if popen.stdin else -1
        self.exited: asyncio.Future[int] = loop.create_future()
        self._watch_exit(loop)

    def _set_status(self, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        if not self.exited.done():
            self.exited.set_result(128 - code if code < 0 else code)

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
                    self._popen.returncode = 0
                    self._set_status(status)

                loop.add_reader(fd, on_exit)
                return

        def waiter() -> None:  # portable fallback: one thread blocked in waitpid
            _, status = os.waitpid(self.pid, 0)
            self._popen.returncode = 0
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
        f = self._popen.stdin
        if f is not None:
            self.stdin = -1
            try:
                f.close()
            except OSError:
                pass

    def close_pipes(self) -> None:
        for f in (self._popen.stdout, self._popen.stderr, self._popen.stdin):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass


def spawn(
    argv: list[str],
    *,
    cwd: str | None,
    env: dict[str, str],
    uid: int | None = None,
    gid: int | None = None,
    groups: list[int] | None = None,
    stdin: bool = False,
) -> Process:
    """Start a program in its own session, with piped output (and piped stdin when asked)."""
    loop = asyncio.get_running_loop()
    kw: dict[str, Any] = {}
    if uid is not None and uid != os.geteuid():
        kw.update(user=uid, group=gid, extra_groups=groups or [])
    popen = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
        start_new_session=True,
        close_fds=True,
        **kw,
    )
    proc = Process(popen, loop)
    for fd in (proc.stdout, proc.stderr, proc.stdin):
        if fd >= 0:
            os.set_blocking(fd, False)
    return proc


def install_shutdown_signals(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Call ``callback`` on SIGINT and SIGTERM (a daemon's clean shutdown)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, callback)
        except (NotImplementedError, RuntimeError):
            pass
