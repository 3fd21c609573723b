"""What ``gproc sync`` does on a node, as the caller (run through ``files.as_user``).

``signatures``: for each file of the source tree, whether the node's copy is the same by size and
mtime (rsync's quick check), missing, or an old version, with that version's block signatures
(``gproc.blocks``) and its identity (device, inode, size, mtime, ctime), so that ``patch`` can
tell it did not change in between. ``patch``: DEST made the source tree: directories made, links and
files written under a temporary name and renamed over (a file from its old version's blocks,
copied inside the kernel, and the received pieces, handed over as descriptors), with ``delete``
everything else under DEST removed, directories' modes and times set last.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import shutil
import stat
from typing import Any

from gproc import blocks
from gproc.services.fileio import _atomic, _err


def _ident(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _sigs(fd: int, size: int, block: int) -> bytes:
    parts: list[bytes] = []
    buf = bytearray(block)
    view = memoryview(buf)
    offset = 0
    while offset < size:
        n = os.preadv(fd, [view], offset)
        if n == 0:
            break
        parts.append(hashlib.sha256(view[:n]).digest()[: blocks.SIG_BYTES])
        offset += n
    return b"".join(parts)


def signatures(args: dict[str, Any], fds: list[int]) -> dict[str, Any]:
    """``{"dest", "files": [[rel, size, mtime_ns]…]}`` -> ``{"files": [[rel, state, ident, sigs]…]}``
    with state ``"="`` (same size and mtime), ``"n"`` (missing, or not a regular file) or ``"v"``
    (an old version: ``sigs`` cut at the new size's block size); or ``{"err"}``."""
    dest = args["dest"]
    out: list[list[Any]] = []
    for rel, size, mtime in args["files"]:
        path = dest + rel
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                out.append([rel, "n", [], b""])
                continue
            return _err(e, path)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                out.append([rel, "n", [], b""])
            elif st.st_size == size and st.st_mtime_ns == mtime:
                out.append([rel, "=", _ident(st), b""])
            else:
                out.append([rel, "v", _ident(st), _sigs(fd, st.st_size, blocks.block_size(size))])
        except OSError as e:
            return _err(e, path)
        finally:
            os.close(fd)
    return {"files": out}


def patch(args: dict[str, Any], fds: list[int]) -> dict[str, Any]:
    """``{"dest", "items": [[kind, rel, mode, mtime_ns, how, size]…], "delete": keep-list or None,
    "finish": bool}``; ``fds`` the received pieces. ``how`` for a file: None (the same by quick
    check: its mode set), ``["w", fd]`` (the whole file received) or ``["b", ident, [[k, x, n]…]]``
    (runs: ``k`` "o" copies ``n`` bytes from offset ``x`` of the old version, "s" a piece, ``x``
    its descriptor); for a link the target. With ``finish``: directories' modes and times, after
    what ``delete`` (the rels to keep) removes. -> ``{"ok"}`` or ``{"err"}``."""
    dest, items = args["dest"], args["items"]
    force = args.get("delete") is not None
    dirs: list[tuple[str, int, int]] = []
    for kind, rel, mode, mtime, how, size in items:
        target = dest + rel
        try:
            if kind == "d":
                _make_dir(target, force)
                dirs.append((target, mode, mtime))
                continue
            _clear_dir(target, force and rel != "")  # DEST itself, a directory, is never removed for a file
            if kind == "l":
                with contextlib.suppress(OSError):
                    if os.readlink(target) == how:
                        os.utime(target, ns=(mtime, mtime), follow_symlinks=False)
                        continue
                _atomic(target, functools.partial(_symlink, how), mtime, None, link=True)
            elif how is None:
                st = os.lstat(target)
                if not stat.S_ISREG(st.st_mode) or st.st_size != size or st.st_mtime_ns != mtime:
                    return {"err": f"{target}: changed during sync (run it again)"}
                if stat.S_IMODE(st.st_mode) != mode:
                    os.chmod(target, mode)
            else:
                _atomic(target, functools.partial(_build, target=target, how=how, mode=mode, fds=fds), mtime, None)
        except OSError as e:
            return _err(e, target)
    if not args.get("finish"):
        return {"ok": True}
    keep = args.get("delete")
    try:
        if keep is not None:
            _delete(dest, "", set(keep))
    except OSError as e:
        return _err(e, getattr(e, "filename", None) or dest)
    for target, mode, mtime in reversed(sorted(dirs)):  # deepest first: after their contents changed
        try:
            os.chmod(target, mode)
            os.utime(target, ns=(mtime, mtime))
        except OSError as e:
            return _err(e, target)
    return {"ok": True}


def _make_dir(target: str, force: bool) -> None:
    try:
        os.mkdir(target, 0o700)
    except FileExistsError:
        st = os.lstat(target)
        if stat.S_ISDIR(st.st_mode):
            return
        if not force:
            raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory (use --delete)") from None
        os.unlink(target)
        os.mkdir(target, 0o700)


def _clear_dir(target: str, force: bool) -> None:
    """A directory where a file or link goes: removed with ``--delete``, else an error."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.lstat(target).st_mode):
            if not force:
                raise IsADirectoryError(errno.EISDIR, "is a directory (sync makes DEST a copy of SRC)")
            shutil.rmtree(target)


def _symlink(to: str, tmp: str) -> None:
    os.symlink(to, tmp)


def _build(tmp: str, *, target: str, how: list[Any], mode: int, fds: list[int]) -> None:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if how[0] == "w":
            _copy(fds[how[1]], 0, fd, 0, os.fstat(fds[how[1]]).st_size)
        else:
            _, ident, runs = how
            old = -1
            try:
                if any(k == "o" for k, _x, _n in runs):
                    old = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
                    if _ident(os.fstat(old)) != ident:
                        raise OSError(errno.ESTALE, "changed during sync (run it again)")
                offset = 0
                for k, x, n in runs:
                    _copy(old if k == "o" else fds[x], x if k == "o" else 0, fd, offset, n)
                    offset += n
                os.ftruncate(fd, offset)
            finally:
                if old >= 0:
                    os.close(old)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _copy(src: int, src_off: int, dst: int, dst_off: int, n: int) -> None:
    """``n`` bytes from ``src`` to ``dst``: inside the kernel where it can (copy_file_range)."""
    end = src_off + n
    while src_off < end:
        try:
            done = os.copy_file_range(src, dst, end - src_off, src_off, dst_off)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            data = os.pread(src, min(end - src_off, 1 << 20), src_off)
            done = os.pwrite(dst, data, dst_off) if data else 0
        if done == 0:
            raise OSError(errno.EIO, "a source ended early")
        src_off += done
        dst_off += done


def _delete(dest: str, rel: str, keep: set[str]) -> None:
    """Remove what lies under ``dest + rel`` and is not kept (links are removed, never followed)."""
    with os.scandir(dest + rel) as it:
        for entry in it:
            r = f"{rel}/{entry.name}"
            if r in keep:
                if entry.is_dir(follow_symlinks=False):
                    _delete(dest, r, keep)
            elif entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
