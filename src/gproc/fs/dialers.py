"""Connections to the master made as another user, for a mount that root shares with every user.

The master knows a client by the kernel credentials of the process that connected (SO_PEERCRED,
taken at ``connect``), never by what the client says. So for each user who reads the mount, a small
child of the mount process drops to that user once and from then on only connects to the master's
socket on request and hands the connected socket back (SCM_RIGHTS): every request for that user is
then the user's own, with the user's rights on every node, and no one's word is trusted for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from dataclasses import dataclass, field

from gproc import platform
from gproc.client import Dialer
from gproc.errors import ConnectError

DIAL_TIMEOUT = 10.0


@dataclass
class _Helper:
    pid: int
    sock: socket.socket
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Dialers:
    """One connecting child per user (made on first use, ended by ``close``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._helpers: dict[int, _Helper] = {}

    def dialer(self, uid: int, gid: int) -> Dialer:
        """An ``async dial(path) -> socket`` that connects as ``uid`` (``Cluster(dial=…)``)."""

        async def dial(path: str) -> socket.socket:
            helper = self._helpers.get(uid)
            if helper is None:
                helper = self._helpers[uid] = self._start(uid, gid)
            async with helper.lock:
                return await asyncio.to_thread(self._ask, helper)

        return dial

    def _start(self, uid: int, gid: int) -> _Helper:
        groups = platform.user_groups(uid, gid)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # the child: system calls only, then _exit
            code = 1
            try:
                keep = child.fileno()
                os.closerange(3, keep)  # the FUSE device above all: the mount must end with its process
                os.closerange(keep + 1, 1 << 16)
                os.setgroups(groups)
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
                while child.recv(1):
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    try:
                        s.connect(self.path)
                        socket.send_fds(child, [b"ok"], [s.fileno()])
                    except OSError as e:
                        child.send(f"{e.strerror or e}".encode())
                    finally:
                        s.close()
                code = 0
            finally:
                os._exit(code)
        child.close()
        parent.settimeout(DIAL_TIMEOUT)
        return _Helper(pid, parent)

    def _ask(self, helper: _Helper) -> socket.socket:
        try:
            helper.sock.send(b"c")
            msg, fds, _flags, _addr = socket.recv_fds(helper.sock, 1024, 1)
        except OSError as e:
            raise ConnectError(f"cannot reach the master at {self.path} as the user: {e}") from None
        if not fds:
            why = msg.decode(errors="replace") or "the connecting process ended"
            raise ConnectError(f"cannot reach the master at {self.path}: {why}")
        return socket.socket(fileno=fds[0])

    def close(self) -> None:
        """End every helper (each sees its socket close and exits) and reap it."""
        for h in self._helpers.values():
            h.sock.close()
        for h in self._helpers.values():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(h.pid, 0)
        self._helpers.clear()
