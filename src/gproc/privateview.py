"""A job's private view: a mount namespace of its own with a fresh tmpfs at binRoot holding the job's
files, each bind-mounted read-only from the store.

``enter`` builds it in the calling thread (``unshare(CLONE_NEWNS)`` applies to the calling thread
only) and the program started next from that thread runs in it. Two callers do that: a short-lived
thread of the node daemon (``platform.spawn_private``), or, in a process hosting many nodes, the
program starter (``gproc.spawnd``), which builds the view, starts the program with ``posix_spawn``
and goes back to its own namespace with ``leave``. The starter holds five descriptors where such a
daemon holds thousands, which every start would copy and close in the kernel, and it runs beside the
daemon's event loop instead of contending for its interpreter lock.

The view is plain data (``PrivateView``: JSON to the starter). The namespace and everything mounted
in it vanish with the job's last process.
"""

from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass
from typing import Any

from gproc.errors import NamespaceError, StagingError
from gproc.store import Entry, Manifests, Placer, View, store_name

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 0x1000, 0x4000, 0x40000


@functools.cache
def libc() -> Any:
    """The C library's handle (one per process: a CDLL object costs ~20 µs to make, per mount)."""
    return ctypes.CDLL(None, use_errno=True)


def check(ret: int, what: str, error: type[OSError] = OSError) -> None:
    """Raise ``error`` with the C library's errno when a call returned non-zero."""
    if ret != 0:
        err = ctypes.get_errno()
        raise error(err, f"{what}: {os.strerror(err)}")


def bind_mount(source: str, target: str) -> None:
    """Bind-mount ``source`` on ``target`` (in the calling thread's mount namespace), read-only, no
    set-id or devices, and executable even when the source's file system is mounted ``noexec``."""
    c, t = libc(), os.fsencode(target)
    check(c.mount(os.fsencode(source), t, None, MS_BIND, None), "bind mount")
    flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
    check(c.mount(None, t, None, flags, None), "remount read-only")


@dataclass
class PrivateView:
    """Where the tmpfs goes (``at``: binRoot), the store directory (``keep``: reached by descriptor
    once the tmpfs hides it), the manifest as the bundle carries it, and the job's user."""

    at: str
    keep: str
    files: Any
    uid: int
    gid: int

    def to_wire(self) -> dict[str, Any]:
        return {"at": self.at, "keep": self.keep, "files": self.files, "uid": self.uid, "gid": self.gid}

    @classmethod
    def from_wire(cls, raw: Any) -> PrivateView:
        if not isinstance(raw, dict):
            raise StagingError("bad private view")
        at, keep, uid, gid = raw.get("at"), raw.get("keep"), raw.get("uid"), raw.get("gid")
        if not (isinstance(at, str) and isinstance(keep, str) and type(uid) is int and type(gid) is int):
            raise StagingError("bad private view")
        return cls(at, keep, raw.get("files"), uid, gid)


def enter(view: PrivateView, entries: list[Entry]) -> None:
    """Give the calling thread a new mount namespace (propagation private) with a fresh tmpfs at
    ``view.at`` and the view built in it. NamespaceError when the namespace or the tmpfs is refused,
    StagingError when the view cannot be built."""
    c = libc()
    check(c.unshare(CLONE_NEWNS), "unshare", NamespaceError)
    private = c.mount(None, b"/", None, MS_REC | MS_PRIVATE, None)
    check(private, "make / private", NamespaceError)
    keep_fd = os.open(view.keep, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)  # before the tmpfs hides it
    try:
        flags = MS_NOSUID | MS_NODEV
        tmpfs = c.mount(b"tmpfs", os.fsencode(view.at), b"tmpfs", flags, b"mode=0700")
        check(tmpfs, f"mount tmpfs on {view.at}", NamespaceError)
        with View(view.at) as v:
            v.build(entries, _bind_placer(keep_fd))
            v.give(view.uid, view.gid)
    finally:
        os.close(keep_fd)


def leave(home_ns: int) -> None:
    """Put the calling thread back into the mount namespace ``home_ns`` (a descriptor of
    ``/proc/self/ns/mnt`` opened before ``enter``); its root and directory become that one's ``/``."""
    check(libc().setns(home_ns, CLONE_NEWNS), "setns", NamespaceError)


def _bind_placer(store_fd: int) -> Placer:
    """Store files are bind-mounted (read-only, no set-id) onto empty files of the tmpfs; their
    source is reached through the store's descriptor, opened before the tmpfs hid the store."""

    def place(e: Entry, dirfd: int, name: str) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        os.close(os.open(name, flags, 0o400, dir_fd=dirfd))
        src = f"/proc/self/fd/{store_fd}/{store_name(e.hash, e.executable)}"
        bind_mount(src, f"/proc/self/fd/{dirfd}/{name}")

    return place


class Builder:
    """The program starter's side: builds views from their wire form (each distinct manifest parsed
    once) and returns to the starter's own namespace after each start."""

    def __init__(self) -> None:
        self.home_ns = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        self._manifests = Manifests()

    def enter(self, raw: Any) -> None:
        """Build the view described by ``raw`` (a ``PrivateView`` on the wire)."""
        view = PrivateView.from_wire(raw)
        entries = self._manifests.parse(view.files)
        try:
            enter(view, entries)
        except BaseException:
            self.leave()
            raise

    def leave(self) -> None:
        leave(self.home_ns)
