"""Unix-socket peers: who is at the other end (the kernel's word), whether a socket path can be
trusted before anything is sent to it, and how many connections each user may hold.

Peer credentials come from ``SO_PEERCRED`` on Linux and ``getpeereid(3)`` (``LOCAL_PEERCRED``) on
BSD and macOS; where neither can be read, callers get ``PermissionError`` and refuse the peer.
"""

from __future__ import annotations

import os
import socket
import struct
import sys

IS_LINUX = sys.platform.startswith("linux")
MAX_CLIENTS_PER_USER = 256  # concurrent client connections one uid may hold to one daemon (root: no bound)


def peer_ids(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of a connected Unix-socket peer; pid 0 where the kernel does not tell."""
    if IS_LINUX:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", raw)
        return pid, uid, gid
    return (0, *_getpeereid(sock.fileno()))


def _getpeereid(fd: int) -> tuple[int, int]:
    import ctypes  # only where there is no SO_PEERCRED: BSD, macOS

    try:
        fn = ctypes.CDLL(None, use_errno=True).getpeereid
    except (OSError, AttributeError):
        raise PermissionError("the peer's credentials cannot be read on this system") from None
    uid, gid = ctypes.c_uint32(), ctypes.c_uint32()
    if fn(fd, ctypes.byref(uid), ctypes.byref(gid)) != 0:
        err = ctypes.get_errno()
        raise PermissionError(err, f"cannot read the peer's credentials: {os.strerror(err)}")
    return uid.value, gid.value


def untrusted_path(path: str, trusted: set[int]) -> str | None:
    """Why ``path`` (a socket or directory) must not be used: it, or a directory above it, belongs
    to a uid outside ``trusted`` (who could then put their own socket there); None when all is owned
    by ``trusted`` uids, or the path does not exist (connecting then fails on its own)."""
    real = os.path.realpath(path)
    here = real
    while True:
        try:
            owner = os.stat(here).st_uid
        except FileNotFoundError:
            owner = None
        except OSError as e:
            return f"cannot check who owns {here}: {e.strerror or e}"
        if owner is not None and owner not in trusted:
            what = "it" if here == real else f"its directory {here}"
            return f"refusing {path}: {what} belongs to uid {owner} (only root's or your own are trusted)"
        if here == "/":
            return None
        here = os.path.dirname(here)


def untrusted_peer(sock: socket.socket, path: str, trusted: set[int]) -> str | None:
    """Why the process listening at the other end of a connected socket is not to be talked to."""
    try:
        uid = peer_ids(sock)[1]
    except OSError as e:
        return f"refusing {path}: cannot tell who serves it ({e.strerror or e})"
    if uid not in trusted:
        return f"refusing {path}: it is served by uid {uid} (only root's or your own are trusted)"
    return None


class ClientLimit:
    """Counts open client connections per uid: a user may hold ``per_user`` at once (root any)."""

    def __init__(self, per_user: int = MAX_CLIENTS_PER_USER) -> None:
        self.per_user = per_user
        self._open: dict[int, int] = {}

    def enter(self, uid: int) -> bool:
        n = self._open.get(uid, 0)
        if uid != 0 and n >= self.per_user:
            return False
        self._open[uid] = n + 1
        return True

    def leave(self, uid: int) -> None:
        n = self._open.get(uid, 0) - 1
        if n > 0:
            self._open[uid] = n
        else:
            self._open.pop(uid, None)
