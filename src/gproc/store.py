"""A node's content-addressed store under binRoot, bundle manifests, and the safe building of a job's view.

Every shipped file is known by the SHA-256 of its bytes. A node keeps what it received in
``binRoot/store/<hash>.r`` (mode 0444) or ``<hash>.x`` (0555, for files shipped executable), written
under ``store/.tmp`` and renamed into place only after its hash was verified, so a store file is
always whole and right. Store files are owned by the daemon and read-only: one job can never alter
what another job runs.

A job's *view* mirrors the client's paths under a root directory (``binRoot/jobs/<job>`` or, with
``-p``, a private tmpfs at binRoot): directories, symbolic links and files linked (or bind-mounted)
from the store. Nothing is ever written outside that root:

- a manifest path is absolute and normal (no ``.``, ``..``, empty or over-long component, no NUL),
  and no entry lies inside a file or a symbolic link of the manifest;
- the view is built with ``openat``-style calls that never follow a symbolic link (``O_NOFOLLOW``
  on every directory), so even a tampered tree cannot redirect a write;
- symbolic links are recreated relative: an absolute target becomes relative to the link's directory
  (so it means the view's copy, never the node's file), and a target that would climb above the
  view's root, directly or through other links of the manifest, is refused.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import posixpath
import re
import shutil
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gproc.errors import StagingError

HASH_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_PATH = 4096
MAX_NAME = 255
MAX_ENTRIES = 200_000
MAX_SIZE = 1 << 46
MAX_LINK_HOPS = 40  # the kernel's ELOOP limit
STALE_TMP = 3600.0  # partial files older than this (a master that died mid-transfer) are removed


def file_hash(path: str) -> tuple[str, int]:
    """SHA-256 (hex) and size of a file."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


# ---- manifests ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One entry of a bundle manifest: a file (``f``), a symbolic link (``l``) or a directory (``d``)."""

    kind: str
    path: str
    hash: str = ""
    size: int = 0
    mode: int = 0
    target: str = ""

    def to_wire(self) -> list[Any]:
        if self.kind == "f":
            return ["f", self.path, self.hash, self.size, self.mode]
        if self.kind == "l":
            return ["l", self.path, self.target]
        return ["d", self.path, self.mode]

    @property
    def executable(self) -> bool:
        return bool(self.mode & 0o111)


def check_path(path: Any, what: str = "path") -> str:
    """A manifest path: absolute, normal, bounded; StagingError otherwise."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise StagingError(f"bad {what} {str(path)[:80]!r}: not an absolute path")
    if len(path) > MAX_PATH or "\0" in path:
        raise StagingError(f"bad {what} {path[:80]!r}: too long or contains NUL")
    if path == "/":
        return path
    for part in path[1:].split("/"):
        if part in ("", ".", ".."):
            raise StagingError(f"bad {what} {path[:200]!r}: '.', '..' or empty component")
        try:
            if len(os.fsencode(part)) > MAX_NAME:
                raise StagingError(f"bad {what} {path[:200]!r}: component longer than {MAX_NAME} bytes")
        except UnicodeError:
            raise StagingError(f"bad {what} {path[:200]!r}: not encodable") from None
    return path


def _int(v: Any, lo: int, hi: int, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise StagingError(f"bad {what} {str(v)[:40]!r}")
    return v


def parse_manifest(raw: Any) -> list[Entry]:
    """Validate a manifest from the wire (see docs/protocol.md); StagingError names the first problem.

    Symbolic links come back with their targets made relative and checked not to escape the root.
    """
    if not isinstance(raw, list) or len(raw) > MAX_ENTRIES:
        raise StagingError("bad manifest: not a list, or too many entries")
    entries: dict[str, Entry] = {}
    for item in raw:
        if not isinstance(item, list) or not item or not isinstance(item[0], str):
            raise StagingError("bad manifest entry")
        kind = item[0]
        if kind == "f" and len(item) == 5:
            h = item[2]
            if not isinstance(h, str) or not HASH_RE.match(h):
                raise StagingError(f"bad hash {str(h)[:80]!r}")
            e = Entry("f", check_path(item[1]), h, _int(item[3], 0, MAX_SIZE, "size"), _int(item[4], 0, 0o7777, "mode"))
        elif kind == "l" and len(item) == 3:
            t = item[2]
            if not isinstance(t, str) or not t or len(t) > MAX_PATH or "\0" in t:
                raise StagingError(f"bad link target {str(t)[:80]!r}")
            e = Entry("l", check_path(item[1]), target=t)
        elif kind == "d" and len(item) == 3:
            e = Entry("d", check_path(item[1]), mode=_int(item[2], 0, 0o7777, "mode"))
        else:
            raise StagingError(f"bad manifest entry of kind {kind[:10]!r}")
        if e.path == "/" and e.kind != "d":
            raise StagingError("bad manifest: only a directory may be at /")
        old = entries.get(e.path)
        if old is not None and old != e:
            raise StagingError(f"conflicting manifest entries for {e.path[:200]}")
        entries[e.path] = e
    for e in entries.values():  # nothing may lie inside a file or a link of the manifest
        parent = posixpath.dirname(e.path)
        while parent != "/" and e.path != "/":
            above = entries.get(parent)
            if above is not None and above.kind != "d":
                raise StagingError(f"{e.path[:200]} lies inside {'a link' if above.kind == 'l' else 'a file'}")
            parent = posixpath.dirname(parent)
    links = {p: _relative_target(e) for p, e in entries.items() if e.kind == "l"}
    for path, target in links.items():
        if _escapes(links, posixpath.dirname(path), target):
            raise StagingError(f"link {path[:200]} -> {entries[path].target[:200]} points outside the bundle root")
    return [Entry("l", e.path, target=links[e.path]) if e.kind == "l" else e for e in entries.values()]


class Manifests:
    """Parsed manifests by content: every node of a job, and every job of a program, carries the same
    one, which ``parse_manifest`` checks in ~40 µs (8 entries); its ``repr`` (a few µs: it is plain
    decoded data) is the key. The ``kept`` most recently used are kept."""

    def __init__(self, kept: int = 64) -> None:
        self.kept = kept
        self._parsed: OrderedDict[str, list[Entry]] = OrderedDict()

    def parse(self, raw: Any) -> list[Entry]:
        """``parse_manifest(raw)``, from the cache when the same manifest was parsed lately."""
        key = repr(raw)
        entries = self._parsed.get(key)
        if entries is None:
            entries = self._parsed[key] = parse_manifest(raw)
            if len(self._parsed) > self.kept:
                self._parsed.popitem(last=False)
        else:
            self._parsed.move_to_end(key)
        return entries


def _relative_target(e: Entry) -> str:
    """An absolute target made relative to the link's directory: it then means the view's copy."""
    if not e.target.startswith("/"):
        return e.target
    return posixpath.relpath(posixpath.normpath(e.target), posixpath.dirname(e.path))


def _escapes(links: dict[str, str], start: str, target: str) -> bool:
    """Would the kernel, resolving ``target`` from directory ``start`` of the view, climb above the
    view's root (following the manifest's links, as they will be on disk)? Loops count as escapes."""
    parts = target.split("/")[::-1]
    cur = "/" if target.startswith("/") else start
    hops = 0
    while parts:
        name = parts.pop()
        if name in ("", "."):
            continue
        if name == "..":
            if cur == "/":
                return True
            cur = posixpath.dirname(cur)
            continue
        nxt = posixpath.join(cur, name)
        t = links.get(nxt)
        if t is None:
            cur = nxt
            continue
        hops += 1
        if hops > MAX_LINK_HOPS:
            return True
        if t.startswith("/"):
            cur = "/"
        parts += t.split("/")[::-1]
    return False


# ---- the store ----------------------------------------------------------------------------------


def store_name(h: str, executable: bool) -> str:
    """The store file of content ``h`` in one mode (files shipped executable are kept apart)."""
    return f"{h}.{'x' if executable else 'r'}"


@dataclass
class Incoming:
    """A file being received: its temp file, running hash and next expected offset."""

    hash: str
    size: int
    executable: bool
    fd: int
    tmp: str
    sha: Any
    offset: int = 0
    touched: float = 0.0
    reserved: int = 0  # bytes counted against the store's bound until it is stored or dropped


@dataclass
class Held:
    """A file in a bounded store: its size, when a job last used it, whose job brought it (-1: not
    known yet, e.g. received for a job that has not started)."""

    size: int
    used: float
    uid: int = -1


class Store:
    """The content-addressed store of one node (see the module docstring).

    With ``max_bytes`` the store holds at most that many bytes: room for a new file is made by
    removing the least recently used files no running job uses (``pin``); when that is not enough,
    the file is refused with ``No space left in the store``. Each file is charged to the user whose
    job first used it (``usage``)."""

    def __init__(self, bin_root: str, max_bytes: int | None = None) -> None:
        self.root = os.path.abspath(bin_root)
        self.dir = os.path.join(self.root, "store")
        self.tmp = os.path.join(self.dir, ".tmp")
        self.jobs = os.path.join(self.root, "jobs")
        self.max_bytes = max_bytes
        self._ready = False
        self._held: dict[str, Held] = {}  # by store file name (bounded stores only)
        self._pins: dict[object, set[str]] = {}  # store file names each running job (or transfer) uses
        self._reserved = 0

    def ensure(self) -> None:
        """Create binRoot and its store; refuse a binRoot another user could tamper with."""
        if self._ready:
            return
        euid = os.geteuid()
        try:
            os.makedirs(os.path.dirname(self.root), 0o755, exist_ok=True)
        except OSError as e:
            raise StagingError(f"cannot create {os.path.dirname(self.root)}: {e.strerror}") from None
        for d, mode in ((self.root, 0o755), (self.dir, 0o711), (self.tmp, 0o700), (self.jobs, 0o711)):
            try:
                os.mkdir(d, mode)
            except FileExistsError:
                pass
            except OSError as e:
                raise StagingError(f"cannot create {d}: {e.strerror}") from None
            st = os.lstat(d)
            if not stat.S_ISDIR(st.st_mode):
                raise StagingError(f"{d} is not a directory")
            if st.st_uid != euid:
                raise StagingError(f"{d} belongs to uid {st.st_uid}, not to this daemon: refusing to stage there")
            if st.st_mode & 0o022:
                perms = oct(stat.S_IMODE(st.st_mode))[2:]
                raise StagingError(f"{d} is writable by others (mode {perms}): refusing to stage there")
        now = time.time()
        with contextlib.suppress(OSError):
            for name in os.listdir(self.tmp):
                p = os.path.join(self.tmp, name)
                with contextlib.suppress(OSError):
                    if now - os.lstat(p).st_mtime > STALE_TMP:
                        os.unlink(p)
        if self.max_bytes is not None:
            self._held = self._scan()
        self._ready = True

    # ---- the bound ----

    def _scan(self) -> dict[str, Held]:
        """The files already here, by the time they were stored (the best guess of their last use)."""
        held: dict[str, Held] = {}
        with os.scandir(self.dir) as it:
            for e in it:
                h, _, kind = e.name.partition(".")
                if HASH_RE.match(h) and kind in ("r", "x"):
                    with contextlib.suppress(OSError):
                        st = e.stat(follow_symlinks=False)
                        if stat.S_ISREG(st.st_mode):
                            held[e.name] = Held(st.st_size, st.st_mtime)
        return held

    def used_bytes(self) -> int:
        return sum(f.size for f in self._held.values()) + self._reserved

    def usage(self) -> dict[int, int]:
        """Bytes of the store charged to each uid (-1: files no started job has used yet)."""
        out: dict[int, int] = {}
        for f in self._held.values():
            out[f.uid] = out.get(f.uid, 0) + f.size
        return out

    def pin(self, key: object, names: Iterable[str], uid: int | None = None) -> None:
        """Files ``key`` (a running job, a transfer) uses: never evicted while pinned; charged to
        ``uid`` when no one's yet."""
        mine = self._pins.setdefault(key, set())
        now = time.time()
        for n in names:
            mine.add(n)
            f = self._held.get(n)
            if f is not None:
                f.used = now
                if uid is not None and f.uid < 0:
                    f.uid = uid

    def unpin(self, key: object) -> None:
        self._pins.pop(key, None)

    def touch(self, names: Iterable[str]) -> None:
        now = time.time()
        for n in names:
            f = self._held.get(n)
            if f is not None:
                f.used = now

    def _make_room(self, size: int, what: str) -> None:
        """Evict least recently used, unpinned files until ``size`` more bytes fit; else refuse."""
        limit = self.max_bytes
        if limit is None:
            return
        used = self.used_bytes()
        if used + size <= limit:
            return
        if size > limit:
            raise StagingError(f"No space left in the store for {what}: {size} bytes, --store-max is {limit}")
        pinned = set().union(*self._pins.values()) if self._pins else set()
        victims = sorted((f.used, n) for n, f in self._held.items() if n not in pinned)
        kept = used - sum(self._held[n].size for _, n in victims)
        if kept + size > limit:  # evicting would not do: nothing is evicted
            raise StagingError(
                f"No space left in the store for {what} ({size} bytes): --store-max is {limit} bytes"
                f" and {kept} are used by running jobs and transfers"
            )
        try:
            dirfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise StagingError(f"cannot open the store: {e.strerror}") from None
        try:
            for _, n in victims:
                if used + size <= limit:
                    break
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(n, dir_fd=dirfd)
                used -= self._held.pop(n).size
        finally:
            os.close(dirfd)

    def _stored(self, name: str, size: int) -> None:
        if self.max_bytes is not None:
            self._held[name] = Held(size, time.time())

    def name(self, h: str, executable: bool) -> str:
        return store_name(h, executable)

    def path(self, h: str, executable: bool) -> str:
        return os.path.join(self.dir, self.name(h, executable))

    def has(self, h: str, size: int) -> bool:
        """Is this content here (in either mode)? A file of the wrong size does not count."""
        for x in (False, True):
            try:
                if os.stat(self.path(h, x)).st_size == size:
                    return True
            except OSError:
                pass
        return False

    def ensure_variant(self, h: str, size: int, executable: bool) -> str:
        """Path of the store file for this content and mode, copying the other mode's file if needed."""
        want = self.path(h, executable)
        with contextlib.suppress(OSError):
            if os.stat(want).st_size == size:
                return want
        other = self.path(h, not executable)
        try:
            if os.stat(other).st_size != size:
                raise FileNotFoundError
        except OSError:
            raise StagingError(f"file {h[:16]}… is not in the store (not received)") from None
        self._make_room(size, f"a copy of {h[:16]}…")
        tmp = os.path.join(self.tmp, f"{self.name(h, executable)}.{os.getpid()}.{time.monotonic_ns()}")
        try:
            shutil.copyfile(other, tmp)
            os.chmod(tmp, 0o555 if executable else 0o444)
            os.replace(tmp, want)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StagingError(f"cannot copy {h[:16]}… in the store: {e.strerror}") from None
        self._stored(self.name(h, executable), size)
        return want

    # ---- receiving ----

    def begin(self, h: str, size: int, executable: bool, tag: str) -> Incoming:
        self.ensure()
        self._make_room(size, f"file {h[:16]}…")
        tmp = os.path.join(self.tmp, f"{h}.{tag}.{time.monotonic_ns()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as e:
            self._ready = False  # binRoot may have been removed under us: check (and recreate) it next time
            raise StagingError(f"cannot write in the store: {e.strerror}") from None
        inc = Incoming(h, size, executable, fd, tmp, hashlib.sha256(), touched=time.monotonic())
        if self.max_bytes is not None:
            inc.reserved = size
            self._reserved += size
        return inc

    def _unreserve(self, inc: Incoming) -> None:
        self._reserved -= inc.reserved
        inc.reserved = 0

    def write(self, inc: Incoming, offset: int, data: bytes) -> bool:
        """Append one chunk; True once the file is complete, verified and in the store."""
        if offset != inc.offset or offset + len(data) > inc.size:
            raise StagingError(f"chunk of {inc.hash[:16]}… out of order (offset {offset}, expected {inc.offset})")
        try:
            view = memoryview(data)
            while view:
                n = os.write(inc.fd, view)
                view = view[n:]
        except OSError as e:
            raise StagingError(f"cannot write {inc.hash[:16]}… in the store: {e.strerror}") from None
        inc.sha.update(data)
        inc.offset += len(data)
        inc.touched = time.monotonic()
        if inc.offset < inc.size:
            return False
        if inc.sha.hexdigest() != inc.hash:
            raise StagingError(f"file {inc.hash[:16]}… arrived corrupted (hash mismatch)")
        self.seal(inc)
        return True

    def seal(self, inc: Incoming) -> None:
        """Put a complete, verified file into the store (``write``'s last chunk; multicast: a file
        written at offsets, then read back and its hash verified by the caller)."""
        try:
            os.fchmod(inc.fd, 0o555 if inc.executable else 0o444)
            os.close(inc.fd)
            inc.fd = -1
            os.replace(inc.tmp, self.path(inc.hash, inc.executable))
        except OSError as e:
            raise StagingError(f"cannot store {inc.hash[:16]}…: {e.strerror}") from None
        self._unreserve(inc)
        self._stored(self.name(inc.hash, inc.executable), inc.size)

    def abort(self, inc: Incoming) -> None:
        self._unreserve(inc)
        if inc.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(inc.fd)
            inc.fd = -1
        with contextlib.suppress(OSError):
            os.unlink(inc.tmp)


# ---- views --------------------------------------------------------------------------------------

Placer = Callable[[Entry, int, str], None]
"""Puts a store file at ``name`` in the open directory ``dirfd`` (hard link, copy or bind mount)."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class View:
    """Builds a job's view under an existing, empty root directory, never following a link."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._fds: dict[str, int] = {}

    def __enter__(self) -> View:
        try:
            self._fds["/"] = os.open(self.root, _DIR_FLAGS)
        except OSError as e:
            raise StagingError(f"cannot open {self.root}: {e.strerror}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

    def dir(self, path: str) -> int:
        """An open directory of the view, created (mode 0755) along with its parents when missing."""
        fd = self._fds.get(path)
        if fd is not None:
            return fd
        parent = self.dir(posixpath.dirname(path))
        name = posixpath.basename(path)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            try:
                os.mkdir(name, 0o755, dir_fd=parent)
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            except OSError as e:
                raise StagingError(f"cannot create directory {path[:200]}: {e.strerror}") from None
        except OSError as e:  # ELOOP / ENOTDIR: a link or a file is in the way
            raise StagingError(f"cannot stage under {path[:200]}: {e.strerror}") from None
        self._fds[path] = fd
        return fd

    def build(self, entries: Iterable[Entry], place: Placer) -> None:
        """Create every entry (directories first, so their modes are set once)."""
        ordered = sorted(entries, key=lambda e: (e.kind != "d", e.path.count("/"), e.path))
        for e in ordered:
            if e.kind == "d":
                fd = self.dir(e.path)
                if e.path != "/":
                    os.fchmod(fd, (e.mode & 0o777) | 0o700)
                continue
            parent = self.dir(posixpath.dirname(e.path))
            name = posixpath.basename(e.path)
            try:
                if e.kind == "l":
                    os.symlink(e.target, name, dir_fd=parent)
                else:
                    place(e, parent, name)
            except FileExistsError:
                raise StagingError(f"{e.path[:200]} exists twice in the bundle") from None
            except OSError as err:
                raise StagingError(f"cannot stage {e.path[:200]}: {err.strerror}") from None

    def give(self, uid: int, gid: int, root_mode: int = 0o700) -> None:
        """Hand every directory of the view to the job's user (by open descriptor: no path race)."""
        os.fchmod(self._fds["/"], root_mode)
        if uid == os.geteuid() and gid == os.getegid():
            return
        for fd in self._fds.values():
            os.fchown(fd, uid, gid)


def link_placer(store: Store) -> Placer:
    """Hard-link store files into the view (copy when the view is on another file system)."""

    def place(e: Entry, dirfd: int, name: str) -> None:
        src = store.path(e.hash, e.executable)
        try:
            os.link(src, name, dst_dir_fd=dirfd, follow_symlinks=False)
        except OSError as err:
            if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dirfd)
            with open(fd, "wb") as out, open(src, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
                os.fchmod(out.fileno(), 0o555 if e.executable else 0o444)

    return place


def remove_tree(path: str) -> None:
    """Remove a job's directory (symlink-safe: never follows a link the job may have planted)."""
    shutil.rmtree(path, ignore_errors=True)
