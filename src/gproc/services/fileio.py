"""File operations a node does for a user: read, stat, install a copied tree.

They run with the caller's rights: in the daemon (a worker thread) when it already runs as that
user, else in a short-lived forked child that became that user (``forked``), so a user never reads
or writes through the daemon's root rights. Store files reach the child as open descriptors: the
store itself stays closed to users.

Node paths may hold ``%h`` (the node's name, as in clush) and ``%%``; ``node_path`` refuses a name
or a template that would make a path climb (``.``, ``..``, ``/`` in a name; ``..`` in a template).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import posixpath
import secrets
import select
import signal
import stat
import time
from collections.abc import Callable
from typing import Any

import msgpack

MAX_READ = 16 << 20  # bytes of one file ``cat`` brings back (its answer travels up the tree)
COPY_CHUNK = 1 << 20


AGGREGATIONS = ("equiv", "concat", "sum", "min", "max", "avg", "hist")


class PathError(ValueError):
    """A node path that is malformed or would escape (one line, for the user)."""


def check_template(template: str) -> str:
    """A node path as the user gave it: absolute, no ``..``, only ``%h`` and ``%%`` escapes."""
    if not isinstance(template, str) or not template.startswith("/"):
        raise PathError(f"{str(template)[:200]!r}: node paths must be absolute")
    if "\0" in template or len(template) > 4096:
        raise PathError(f"{template[:200]!r}: too long or contains NUL")
    if ".." in template.split("/"):
        raise PathError(f"{template[:200]}: '..' in a node path")
    _expand(template, "x")
    return template


def check_paths(paths: list[str]) -> None:
    """Every node path valid (UsageError naming the first that is not), checked before sending."""
    from gproc.errors import UsageError

    if not paths:
        raise UsageError("no path given")
    for p in paths:
        try:
            check_template(p)
        except PathError as e:
            raise UsageError(str(e)) from None


def _expand(template: str, name: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(template):
        c = template[i]
        if c == "%":
            nxt = template[i + 1 : i + 2]
            if nxt == "h":
                out.append(name)
            elif nxt == "%":
                out.append("%")
            else:
                raise PathError(f"{template[:200]}: unknown escape %{nxt} (only %h and %%)")
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def node_path(template: str, name: str) -> str:
    """``template`` with ``%h`` replaced by this node's name; PathError if that would climb."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise PathError(f"node name {name[:60]!r} cannot be part of a path")
    path = _expand(check_template(template), name)
    if ".." in path.split("/"):
        raise PathError(f"{path[:200]}: '..' in a node path")
    return path


def _err(e: OSError, path: str) -> dict[str, Any]:
    return {"err": f"{path}: {e.strerror or e}"}


# ---- the operations (each takes msgpack-able arguments and returns a msgpack-able answer) ----


def read(args: dict[str, Any], fds: list[int]) -> dict[str, Any]:
    """``{"path", "limit"}`` -> ``{"data"}`` or ``{"err"}``."""
    path, limit = args["path"], min(int(args.get("limit", MAX_READ)), MAX_READ)
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return {"err": f"{path}: not a regular file"}
            # in pieces: /proc/sys files refuse one read of the whole limit (ENOMEM for its buffer)
            parts: list[bytes] = []
            size = 0
            while size <= limit:
                part = f.read1(1 << 16)
                if not part:
                    break
                parts.append(part)
                size += len(part)
            data = b"".join(parts)
    except OSError as e:
        return _err(e, path)
    if len(data) > limit:
        return {"err": f"{path}: larger than {limit} bytes"}
    return {"data": data}


def stat_path(args: dict[str, Any], fds: list[int]) -> dict[str, Any]:
    """``{"path", "hash"}`` -> ``{"type", "size", "mtime", "mode", "owner", "group", "sha256", "target"}``
    (``sha256`` empty when ``hash`` is false)."""
    path = args["path"]
    try:
        st = os.lstat(path)
        kind = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "link"}.get(stat.S_IFMT(st.st_mode), "other")
        digest, target = "", ""
        if kind == "file" and args.get("hash", True):
            h = hashlib.sha256()
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with open(fd, "rb") as f:
                while chunk := f.read(COPY_CHUNK):
                    h.update(chunk)
            digest = h.hexdigest()
        elif kind == "link":
            target = os.readlink(path)
    except OSError as e:
        return _err(e, path)
    return {
        "type": kind,
        "size": st.st_size,
        "mtime": int(st.st_mtime),
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
        "owner": st.st_uid,  # numbers: the caller names them (a forked child stays off NSS locks)
        "group": st.st_gid,
        "sha256": digest,
        "target": target,
    }


def install(args: dict[str, Any], fds: list[int]) -> dict[str, Any]:
    """Write a copied tree at ``dest``: ``{"dest", "items": [[kind, path, mode, mtime_ns, fd index or
    link target]…], "owners": {path: [uid, gid]} or None, "into_dir": as an earlier part decided, or
    None}``; ``fds`` hold the store files, in order.

    Paths are ``/top/…``. ``dest`` an existing directory: each top entry lands inside it; else the
    single top entry becomes ``dest``. Every file and link is written under a temporary name in its
    directory and renamed over the target, so no partial file is ever visible and, on a full disk,
    the old file stays as it was. Directories get their modes and times last."""
    dest, items, owners = args["dest"], args["items"], args.get("owners") or {}
    tops = {p.split("/")[1] for _k, p, *_ in items}
    into_dir = args.get("into_dir")
    try:
        if into_dir is None:
            into_dir = stat.S_ISDIR(os.stat(dest).st_mode)
    except FileNotFoundError:
        into_dir = False
    except OSError as e:
        return _err(e, dest)
    if not into_dir and len(tops) > 1:
        return {"err": f"{dest}: not a directory"}

    def where(p: str) -> str:
        return posixpath.join(dest, p[1:]) if into_dir else dest + p[1 + len(p.split("/")[1]) :]

    dirs: list[tuple[str, int, int, list[int] | None]] = []
    for kind, p, mode, mtime, extra in items:
        target = where(p)
        owner = owners.get(p)
        try:
            if kind == "d":
                try:
                    os.mkdir(target, 0o700)
                except FileExistsError:
                    if not stat.S_ISDIR(os.lstat(target).st_mode):
                        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory") from None
                dirs.append((target, mode, mtime, owner))
            elif kind == "f":
                _atomic(target, functools.partial(_copy_in, fds[extra], mode=mode), mtime, owner)
            else:
                _atomic(target, functools.partial(os.symlink, extra), mtime, owner, link=True)
        except OSError as e:
            return _err(e, target)
    for target, mode, mtime, owner in reversed(dirs):  # deepest first: setting times after their contents
        try:
            if owner is not None:
                os.lchown(target, owner[0], owner[1])
            os.chmod(target, mode)
            os.utime(target, ns=(mtime, mtime))
        except OSError as e:
            return _err(e, target)
    return {"ok": True, "into_dir": into_dir}


def _copy_in(src_fd: int, tmp: str, *, mode: int) -> None:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        offset = 0
        while True:  # in the kernel where it can (copy_file_range), else through user space
            try:
                n = os.copy_file_range(src_fd, fd, COPY_CHUNK, offset, offset)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                n = _copy_slow(src_fd, fd, offset)
            if n == 0:
                break
            offset += n
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _copy_slow(src: int, dst: int, offset: int) -> int:
    data = os.pread(src, COPY_CHUNK, offset)
    view = memoryview(data)
    while view:
        view = view[os.write(dst, view) :]
    return len(data)


def _atomic(target: str, make: Callable[[str], None], mtime: int, owner: list[int] | None, link: bool = False) -> None:
    tmp = posixpath.join(posixpath.dirname(target), f".{posixpath.basename(target)[:200]}.gproc-{secrets.token_hex(4)}")
    try:
        make(tmp)
        if owner is not None:
            os.lchown(tmp, owner[0], owner[1])
        os.utime(tmp, ns=(mtime, mtime), follow_symlinks=not link)
        os.rename(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_range(args: dict[str, Any], fds: list[int]) -> dict[str, Any]:
    """``{"path", "o", "n"}`` -> ``{"data"}`` (at most ``n`` bytes from offset ``o``) or ``{"err"}``."""
    path, offset, n = args["path"], int(args["o"]), min(int(args["n"]), MAX_READ)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return {"err": f"{path}: not a regular file"}
            return {"data": os.pread(fd, n, offset)}
        finally:
            os.close(fd)
    except OSError as e:
        return _err(e, path)


def walk(args: dict[str, Any], fds: list[int]) -> dict[str, Any]:
    """``{"path", "recursive"}`` -> ``{"entries": [[kind, rel, sha256 or link target, size, mode,
    mtime_ns]…]}`` (``rel`` "" for the path itself; directories only with ``recursive``) or ``{"err"}``."""
    top, recursive = args["path"], bool(args.get("recursive"))
    out: list[list[Any]] = []

    def one(path: str, rel: str) -> bool:
        st = os.lstat(path)
        mode, mtime = stat.S_IMODE(st.st_mode), st.st_mtime_ns
        if stat.S_ISREG(st.st_mode):
            h = hashlib.sha256()
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with open(fd, "rb") as f:
                while chunk := f.read(COPY_CHUNK):
                    h.update(chunk)
            out.append(["f", rel, h.hexdigest(), st.st_size, mode, mtime])
        elif stat.S_ISLNK(st.st_mode):
            out.append(["l", rel, os.readlink(path), 0, 0, mtime])
        elif stat.S_ISDIR(st.st_mode):
            out.append(["d", rel, "", 0, mode, mtime])
            return True
        return False

    try:
        if not stat.S_ISREG(os.stat(top).st_mode) and not recursive:
            return {"err": f"{top}: not a regular file (use -r for a directory)"}
        if one(top, ""):
            for here, dirs, names in os.walk(top):
                dirs.sort()
                for name in sorted(dirs + names):
                    p = os.path.join(here, name)
                    one(p, os.path.relpath(p, top))
    except OSError as e:
        return _err(e, getattr(e, "filename", None) or top)
    return {"entries": out}


def _kind(mode: int) -> str:
    return {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "link"}.get(stat.S_IFMT(mode), "other")


def _attrs(name: str, st: os.stat_result, target: str = "") -> list[Any]:
    return [name, _kind(st.st_mode), st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_uid, st.st_gid, target]


MAX_LIST = 65536  # names of one directory a node answers (the first ones in code point order)


def listdir(args: dict[str, Any], fds: list[int]) -> dict[str, Any]:
    """``{"path", "names"}`` -> ``{"entries": [[name, kind, size, mode, mtime_ns, uid, gid, link
    target]…]}``: ``"."`` for the path itself (a symbolic link followed), then, for a directory and
    unless ``names`` is false, each name in it (not followed; at most ``MAX_LIST``); or ``{"err"}``."""
    path = args["path"]
    try:
        out = [_attrs(".", os.stat(path))]
        if out[0][1] != "dir" or args.get("names") is False:
            return {"entries": out}
        with os.scandir(path) as it:
            names = sorted(e.name for e in it)[:MAX_LIST]
        for name in names:
            p = os.path.join(path, name)
            try:
                st = os.lstat(p)
                out.append(_attrs(name, st, os.readlink(p) if stat.S_ISLNK(st.st_mode) else ""))
            except OSError:
                continue  # gone since the listing
    except OSError as e:
        return _err(e, path)
    return {"entries": out}


MAX_LINES = 10_000  # lines one node answers for one path (grep, tail)


def lines(args: dict[str, Any], fds: list[int]) -> dict[str, Any]:
    """``{"path", "pattern", "flags", "invert", "last"}`` -> ``{"lines": [[number, line]…]}``: the
    lines matching ``pattern`` (``re`` syntax; ``invert``: those not matching), or the ``last`` n
    lines (numbered from -n to -1), at most ``MAX_LINES``; or ``{"err"}``."""
    import re

    r = read({"path": args["path"]}, fds)
    if "err" in r:
        return r
    text: list[bytes] = r["data"].splitlines()
    last = args.get("last")
    if last is not None:
        n = min(int(last), MAX_LINES)
        picked = list(enumerate(text[-n:] if n else [], start=-min(n, len(text))))
    else:
        try:
            rx = re.compile(args["pattern"].encode(), re.IGNORECASE if args.get("ignore_case") else 0)
        except re.error as e:
            return {"err": f"bad pattern: {e}"}
        invert = bool(args.get("invert"))
        picked = [(i, ln) for i, ln in enumerate(text, start=1) if (rx.search(ln) is None) == invert][:MAX_LINES]
    return {"lines": [[i, ln] for i, ln in picked]}


OPERATIONS: dict[str, Callable[[dict[str, Any], list[int]], dict[str, Any]]] = {
    "read": read,
    "stat": stat_path,
    "install": install,
    "read_range": read_range,
    "lines": lines,
    "walk": walk,
    "list": listdir,
}


Operation = Callable[[dict[str, Any], list[int]], dict[str, Any]]


def forked(
    uid: int, gid: int, groups: list[int], fn: str | Operation, args: dict[str, Any], fds: list[int], timeout: float
) -> dict[str, Any] | None:
    """Run an operation in a child of this process that switched to ``uid``/``gid``/``groups``
    (a fork, not an exec: the user need not be able to read the Python that runs the daemon). The
    answer comes back as msgpack through a pipe; None when the child failed or took longer than
    ``timeout`` (it is then killed)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only system calls and the operation itself, then _exit
        code = 1
        try:
            os.close(r)
            if os.geteuid() == 0 and uid != 0:  # else it already is that user (isolated for a time limit)
                os.setgroups(groups)
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
            run = OPERATIONS[fn] if isinstance(fn, str) else fn
            data = memoryview(msgpack.packb(run(args, fds), use_bin_type=True))
            while data:
                data = data[os.write(w, data) :]
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        with select.epoll() as ep:
            ep.register(r, select.EPOLLIN)
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not ep.poll(left):
                    os.kill(pid, signal.SIGKILL)
                    break
                chunk = os.read(r, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    if status != 0:
        return None
    answer = msgpack.unpackb(b"".join(chunks), raw=False)
    return answer if isinstance(answer, dict) else None
