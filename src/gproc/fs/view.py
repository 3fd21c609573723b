"""The mount's file system (pyfuse3 over libfuse 3): paths to what ``Sources`` reads.

```
DIR/nodes/NAME/PATH        PATH on node NAME (listed and read through the tree when asked)
DIR/all/PATH               a directory on any node: the union of the names in it
DIR/all/PATH/NODESET       a file: one entry per set of nodes with identical contents
DIR/all/PATH/.errors       … and the nodes that could not read it, with why
DIR/proc/GPID/status|cmdline|stdout|ctl      processes of the single process space
DIR/jobs/ID/status|output  jobs the master keeps
```
Inodes are handed out per path and forgotten when the kernel forgets them. Every file is
``direct_io``: a read returns what the cluster says, whatever size a ``stat`` showed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyfuse3
from ClusterShell.NodeSet import NodeSet, NodeSetParseError

from gproc import platform
from gproc.client import DirEntry, FileAnswer, Listing, Output
from gproc.display import labelled
from gproc.errors import ConnectError, GprocError
from gproc.fs.names import JOB_FILES, PROC_FILES, BadCommand, errno_of, job_status, parse_ctl, proc_status
from gproc.fs.sources import Sources, User, user_id

Path = tuple[str, ...]
TOP = ("nodes", "all", "proc", "jobs")
STREAM_LIMIT = 64 << 20  # bytes of a followed output one open file keeps (older bytes are dropped)
ERRORS = ".errors"  # in a file's class directory: the nodes that could not read it
INTERRUPT_POLL = 0.5  # seconds between looks for a signal to a reader that waits for output


@dataclass(frozen=True)
class Node:
    """What a path is: ``kind`` "dir", "file" or "link", and its attributes."""

    kind: str
    size: int = 0
    mode: int = 0o555
    uid: int = -1  # -1: the caller's
    gid: int = -1
    mtime: int = 0
    target: str = ""


DIR = Node("dir")


def _fail(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


def _entry_node(e: DirEntry) -> Node:
    kind = e.kind if e.kind in ("dir", "link") else "file"
    return Node(kind, e.size, e.mode & 0o7777, e.uid, e.gid, e.mtime, e.target)


def _errors(answers: list[FileAnswer]) -> pyfuse3.FUSEError:
    """The errno of the first node set's error (EIO when there is none to name)."""
    return _fail(errno_of(answers[0].error) if answers else errno.EIO)


@dataclass
class Stream:
    """An open file whose bytes arrive while it is read (a job's output, followed to its end)."""

    data: bytearray = field(default_factory=bytearray)
    dropped: int = 0  # bytes before ``data``
    done: bool = False
    error: str = ""
    more: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > STREAM_LIMIT:
            cut = len(self.data) - STREAM_LIMIT
            del self.data[:cut]
            self.dropped += cut
        self.more.set()

    async def read(self, off: int, size: int, reader: int) -> bytes:
        """Bytes from ``off`` once there are any (b"" at the end); EINTR when the reading process
        ``reader`` got a signal meanwhile (pyfuse3 passes no interrupts on)."""
        while off >= self.dropped + len(self.data) and not self.done:
            self.more.clear()
            try:
                await asyncio.wait_for(self.more.wait(), INTERRUPT_POLL)
            except TimeoutError:
                if platform.signal_pending(reader):
                    raise _fail(errno.EINTR) from None
        if self.error and off >= self.dropped + len(self.data):
            raise _fail(errno.EIO)
        start = max(off - self.dropped, 0)
        return bytes(self.data[start : start + size])


@dataclass
class Handle:
    """An open file: its bytes, a stream, or a process to signal."""

    data: bytes = b""
    stream: Stream | None = None
    gpid: int = 0
    who: User = (0, 0)
    pid: int = 0  # the process that opened it


class ClusterFS(pyfuse3.Operations):
    """The mount's operations. ``timeout``: seconds the kernel may keep names and attributes (0 in
    a mount shared by users: what one may see is not what another may)."""

    enable_writeback_cache = False

    def __init__(self, sources: Sources, timeout: float) -> None:
        super().__init__()
        self.src = sources
        self.timeout = timeout
        self.paths: dict[int, Path] = {pyfuse3.ROOT_INODE: ()}
        self.inodes: dict[Path, int] = {(): pyfuse3.ROOT_INODE}
        self.lookups: dict[int, int] = {}
        self.next_ino = pyfuse3.ROOT_INODE + 1
        self.handles: dict[int, Handle] = {}
        self.dirs: dict[int, list[tuple[str, Path, Node]]] = {}
        self.next_fh = 1
        self.started = time.time_ns()

    # ---- inodes ----

    def _ino(self, path: Path) -> int:
        ino = self.inodes.get(path)
        if ino is None:
            ino = self.inodes[path] = self.next_ino
            self.paths[ino] = path
            self.next_ino += 1
        return ino

    def _path(self, ino: int) -> Path:
        try:
            return self.paths[ino]
        except KeyError:
            raise _fail(errno.ENOENT) from None

    def _looked_up(self, ino: int) -> None:
        self.lookups[ino] = self.lookups.get(ino, 0) + 1

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            left = self.lookups.get(ino, 0) - n
            if left > 0:
                self.lookups[ino] = left
                continue
            self.lookups.pop(ino, None)
            path = self.paths.pop(ino, None)
            if path is not None and ino != pyfuse3.ROOT_INODE:
                self.inodes.pop(path, None)

    def _attrs(self, path: Path, node: Node, who: User) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = self._ino(path)
        a.generation = 0
        a.entry_timeout = a.attr_timeout = self.timeout
        kind = {"dir": stat.S_IFDIR, "link": stat.S_IFLNK}.get(node.kind, stat.S_IFREG)
        a.st_mode = kind | node.mode
        a.st_nlink = 2 if node.kind == "dir" else 1
        a.st_uid = who[0] if node.uid < 0 else node.uid
        a.st_gid = who[1] if node.gid < 0 else node.gid
        a.st_size = node.size
        a.st_blksize = 4096
        a.st_blocks = (node.size + 511) // 512
        a.st_atime_ns = a.st_ctime_ns = a.st_mtime_ns = node.mtime or self.started
        return a

    # ---- what a path is ----

    @staticmethod
    def _remote(parts: Path) -> str:
        return "/" + "/".join(parts)

    async def _listing(self, who: User, node: str | None, parts: Path, names: bool = True) -> Listing:
        try:
            return await self.src.listing(who, node, self._remote(parts), names)
        except ConnectError:
            raise _fail(errno.ENOTCONN) from None
        except GprocError:
            raise _fail(errno.EIO) from None

    async def _merged_is_dir(self, who: User, parts: Path) -> bool:
        """Is ``all/PARTS`` a directory (the union view) rather than a file (its classes)?"""
        listing = await self._listing(who, None, parts, names=False)
        me = listing.entries.get(".")
        if me is None:
            e = _errors(listing.errors)
            # a name under a file's path: on the nodes "not a directory", here a name that a
            # directory (of classes) does not hold
            raise _fail(errno.ENOENT) if e.errno == errno.ENOTDIR else e
        return me.kind == "dir"

    async def _classes(self, who: User, parts: Path) -> dict[str, bytes]:
        try:
            classes, errors = await self.src.classes(who, self._remote(parts))
        except ConnectError:
            raise _fail(errno.ENOTCONN) from None
        except GprocError:
            raise _fail(errno.EIO) from None
        if not classes and errors:
            raise _errors(errors)
        if errors:  # the nodes left out, and why (hidden from a shell's *)
            classes = {**classes, ERRORS: b"".join(f"{a.nodes}: {a.error}\n".encode() for a in errors)}
        return classes

    async def _procs(self, who: User) -> dict[int, dict[str, Any]]:
        try:
            return await self.src.procs(who)
        except GprocError:
            raise _fail(errno.EIO) from None

    async def _jobs(self, who: User) -> dict[int, dict[str, Any]]:
        try:
            return await self.src.jobs(who)
        except GprocError:
            raise _fail(errno.EIO) from None

    async def _proc(self, who: User, name: str) -> dict[str, Any]:
        if not name.isdigit():
            raise _fail(errno.ENOENT)
        row = (await self._procs(who)).get(int(name))
        if row is None:  # started since the cached answer?
            self.src.forget(who, "ps")
            row = (await self._procs(who)).get(int(name))
        if row is None:
            raise _fail(errno.ENOENT)
        return row

    async def _job(self, who: User, name: str) -> dict[str, Any]:
        if not name.isdigit():
            raise _fail(errno.ENOENT)
        rec = (await self._jobs(who)).get(int(name))
        if rec is None:
            self.src.forget(who, "jobs")
            rec = (await self._jobs(who)).get(int(name))
        if rec is None:
            raise _fail(errno.ENOENT)
        return rec

    async def node(self, path: Path, who: User) -> Node:
        """What ``path`` is for ``who`` (FUSEError ENOENT when nothing)."""
        if len(path) <= 1:
            if not path or path[0] in TOP:
                return DIR
            raise _fail(errno.ENOENT)
        top, rest = path[0], path[1:]
        if top == "nodes":
            if rest[0] not in await self._node_names(who):
                raise _fail(errno.ENOENT)
            if len(rest) == 1:
                return DIR
            listing = await self._listing(who, rest[0], rest[1:-1])
            e = listing.entries.get(rest[-1])
            if e is None or rest[-1] == ".":
                if "." not in listing.entries:
                    raise _errors(listing.errors)
                raise _fail(errno.ENOENT)
            return _entry_node(e)
        if top == "all":
            parent = rest[:-1]
            if parent and await self._may_be_class(rest[-1], who) and not await self._merged_is_dir(who, parent):
                data = (await self._classes(who, parent)).get(rest[-1])
                if data is None:
                    raise _fail(errno.ENOENT)
                return Node("file", len(data), 0o444)
            if rest[-1] == ".":
                raise _fail(errno.ENOENT)
            await self._merged_is_dir(who, rest)  # there on some node (else ENOENT, or why not)
            return DIR
        if top == "proc":
            row = await self._proc(who, rest[0])
            owner = user_id(str(row.get("user", "")), 0)
            if len(rest) == 1:
                return Node("dir", 0, 0o555, owner, -1)
            if len(rest) > 2 or rest[1] not in PROC_FILES:
                raise _fail(errno.ENOENT)
            if rest[1] == "ctl":
                return Node("file", 0, 0o200, owner, -1)
            size = len(self._proc_file(row, rest[1])) if rest[1] != "stdout" else 0
            return Node("file", size, 0o444, owner, -1)
        if top == "jobs":
            rec = await self._job(who, rest[0])
            owner = int(rec.get("uid", who[0]))
            if len(rest) == 1:
                return Node("dir", 0, 0o555, owner, -1)
            if len(rest) > 2 or rest[1] not in JOB_FILES:
                raise _fail(errno.ENOENT)
            size = len(job_status(rec)) if rest[1] == "status" else 0
            return Node("file", size, 0o444, owner, -1)
        raise _fail(errno.ENOENT)

    async def _node_names(self, who: User) -> set[str]:
        try:
            return set(await self.src.node_names(who))
        except GprocError:
            raise _fail(errno.EIO) from None

    @staticmethod
    def _proc_file(row: dict[str, Any], name: str) -> bytes:
        if name == "status":
            return proc_status(row)
        return (str(row.get("cmd", "")) + "\n").encode()

    async def children(self, path: Path, who: User) -> list[tuple[str, Node]]:
        """The entries of the directory ``path`` (ENOTDIR when it is not one)."""
        node = await self.node(path, who)
        if node.kind != "dir":
            raise _fail(errno.ENOTDIR)
        if not path:
            return [(n, DIR) for n in TOP]
        top, rest = path[0], path[1:]
        if top == "nodes" and not rest:
            return [(n, DIR) for n in sorted(await self._node_names(who))]
        if top == "nodes":
            listing = await self._listing(who, rest[0], rest[1:])
            return [(n, _entry_node(e)) for n, e in sorted(listing.entries.items()) if n != "."]
        if top == "all":
            if rest and not await self._merged_is_dir(who, rest):
                return [(n, Node("file", len(d), 0o444)) for n, d in (await self._classes(who, rest)).items()]
            listing = await self._listing(who, None, rest)
            return [(n, DIR) for n in sorted(listing.entries) if n != "."]
        if top == "proc" and not rest:
            return [(str(g), DIR) for g in sorted(await self._procs(who))]
        if top == "jobs" and not rest:
            return [(str(j), DIR) for j in sorted(await self._jobs(who))]
        names = PROC_FILES if top == "proc" else JOB_FILES
        return [(n, await self.node((*path, n), who)) for n in names]

    # ---- the operations ----

    @staticmethod
    def _who(ctx: Any) -> User:
        return (int(ctx.uid), int(ctx.gid))

    async def getattr(self, inode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        path, who = self._path(inode), self._who(ctx)
        return self._attrs(path, await self.node(path, who), who)

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        parent, who = self._path(parent_inode), self._who(ctx)
        text = os.fsdecode(name)
        if text == ".":
            path = parent
        elif text == "..":
            path = parent[:-1]
        else:
            path = (*parent, text)
        if await self._surely_a_directory(path, who):
            attrs = self._attrs(path, DIR, who)
            attrs.attr_timeout = 0  # whether it exists at all: getattr asks (stat, test -e are exact)
        else:
            attrs = self._attrs(path, await self.node(path, who), who)
        self._looked_up(attrs.st_ino)
        return attrs

    async def _surely_a_directory(self, path: Path, who: User) -> bool:
        """Can a lookup of ``all/…`` answer "a directory" without asking the nodes? Every name of the
        merged view is a directory (of names, or of a file's classes) except a class, and a class is
        named by a node set: a name that cannot be one is a directory if it is anything, and whether
        it is anything is asked by ``getattr``, ``opendir`` and ``open`` (``stat``, ``test -e``, ``ls``
        stay exact) but not at every level of a path walk."""
        return len(path) >= 2 and path[0] == "all" and not await self._may_be_class(path[-1], who)

    async def _may_be_class(self, name: str, who: User) -> bool:
        """Could ``name`` be a class of a file in the merged view (a node set of the selection)?"""
        if name in (".", "..", ERRORS) or "~" in name:
            return True
        try:
            return set(NodeSet(name)) <= await self._node_names(who)
        except (ValueError, NodeSetParseError):
            return False

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        node = await self.node(self._path(inode), self._who(ctx))
        if node.kind != "link":
            raise _fail(errno.EINVAL)
        return os.fsencode(node.target)

    async def opendir(self, inode: int, ctx: Any) -> int:
        path, who = self._path(inode), self._who(ctx)
        entries = [(n, (*path, n), node) for n, node in await self.children(path, who)]
        fh = self.next_fh
        self.next_fh += 1
        self.dirs[fh] = entries
        self.handles[fh] = Handle(who=who)
        return fh

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        who = self.handles[fh].who
        entries = self.dirs.get(fh, [])
        for i in range(start_id, len(entries)):
            name, path, node = entries[i]
            attrs = self._attrs(path, node, who)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attrs, i + 1):
                return
            self._looked_up(attrs.st_ino)

    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)
        self.handles.pop(fh, None)

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        path, who = self._path(inode), self._who(ctx)
        node = await self.node(path, who)
        if node.kind != "file":
            raise _fail(errno.EISDIR if node.kind == "dir" else errno.EINVAL)
        writing = flags & os.O_ACCMODE != os.O_RDONLY
        is_ctl = path[0] == "proc" and path[-1] == "ctl"
        if writing != is_ctl:
            raise _fail(errno.EACCES)
        h = Handle(who=who, pid=int(ctx.pid))
        top, rest = path[0], path[1:]
        if is_ctl:
            h.gpid = int(rest[0])
        elif top == "nodes":
            a = await self.src.read(who, rest[0], self._remote(rest[1:]))
            if a.kind != "data":
                raise _fail(errno_of(a.error))
            h.data = a.data
        elif top == "all":
            data = (await self._classes(who, rest[:-1])).get(rest[-1])
            if data is None:
                raise _fail(errno.ENOENT)
            h.data = data
        elif top == "proc" and rest[1] == "stdout":
            row = await self._proc(who, rest[0])
            h.stream = self._follow(who, int(row.get("job") or 0), str(row.get("name", "")))
        elif top == "proc":
            h.data = self._proc_file(await self._proc(who, rest[0]), rest[1])
        elif rest[1] == "status":
            h.data = job_status(await self._job(who, rest[0]))
        else:
            h.stream = self._follow(who, int(rest[0]), None)
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = h
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

    def _follow(self, who: User, job: int, node: str | None) -> Stream:
        """A job's output as it comes: one node's stdout (``node``), or everyone's, labelled."""
        s = Stream()

        async def run() -> None:
            from ClusterShell.NodeSet import NodeSet

            try:
                if not job:
                    return
                events = await self.src.cluster(who).output(job)
                async for ev in events:
                    if not isinstance(ev, Output):
                        continue
                    if node is None:
                        s.add(labelled(ev.nodes, ev.data))
                    elif ev.stream == "stdout" and node in NodeSet(ev.nodes):
                        s.add(ev.data)
            except GprocError as e:
                s.error = str(e)
            finally:
                s.done = True
                s.more.set()

        s.task = asyncio.ensure_future(run())
        return s

    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self.handles[fh]
        if h.stream is not None:
            return await h.stream.read(off, size, h.pid)
        return h.data[off : off + size]

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self.handles[fh]
        if not h.gpid:
            raise _fail(errno.EBADF)
        try:
            sig = parse_ctl(buf)
        except BadCommand:
            raise _fail(errno.EINVAL) from None
        try:
            r = await self.src.cluster(h.who).kill([h.gpid], sig=sig)
        except GprocError:
            raise _fail(errno.EIO) from None
        code = r["results"][0]["code"] if r.get("results") else 255
        if code:
            raise _fail({1: errno.ESRCH, 2: errno.EPERM}.get(code, errno.EIO))
        return len(buf)

    async def setattr(
        self, inode: int, attr: pyfuse3.EntryAttributes, fields: Any, fh: int | None, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        """Only what a shell's ``>`` does to ``ctl``: truncate it (nothing to truncate)."""
        path, who = self._path(inode), self._who(ctx)
        node = await self.node(path, who)
        only_size = fields.update_size and not any(
            getattr(fields, f) for f in ("update_mode", "update_uid", "update_gid", "update_atime", "update_mtime")
        )
        if not (path[0] == "proc" and path[-1] == "ctl" and only_size):
            raise _fail(errno.EPERM)
        return self._attrs(path, node, who)

    async def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if h is not None and h.stream is not None and h.stream.task is not None:
            h.stream.task.cancel()
            with contextlib.suppress(BaseException):
                await h.stream.task

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_namemax = 255
        return s
