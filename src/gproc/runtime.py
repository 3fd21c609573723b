"""gproc's own runtime, for hosts that have no usable Python: what ``gproc launch`` ships there.

A runtime is a directory that runs gproc on any Linux host of the same machine type with nothing
but a C library's kernel interface and ``/bin/sh``: the Python interpreter this process runs on, its
ELF loader and every shared library it and its extension modules need (found as the loader would,
with ``gproc.elf``), the standard library, and gproc with the packages it depends on::

    bin/python          a /bin/sh wrapper: runs bin/python3.X through lib/ld.so --library-path lib
    bin/python3.X       the interpreter
    lib/ld.so           the ELF loader (also under its own name), lib/lib*.so* the libraries
    lib/python3.X/      the standard library (no tests, no tkinter/idle), lib-dynload,
                        site-packages/ gproc and its dependencies
    gproc-runtime.json  {"id", "python"}

The wrapper starts the interpreter through the shipped loader, so no library of the host is used,
and passes ``--argv0`` so that ``sys.executable`` is the wrapper: every interpreter gproc starts in
turn (the daemon, its starter) runs the same way. The interpreter finds its standard library next to
itself (its prefix is the runtime directory), so no environment variable is needed either.

The runtime's ``id`` is the SHA-256 of its manifest (every file's name, mode and content hash, every
symbolic link's target): a host that holds ``<base>/<id>`` holds exactly these bytes and receives
nothing. Collecting and hashing is cached per user (``$XDG_CACHE_HOME/gproc/runtime.json``), keyed
by the identities (inode, size, times) of the sources, so a launch from an unchanged install pays a
directory walk, not a hash of 100 MB. A runtime running gproc ships itself as it is (its directory).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, cast

from gproc import elf
from gproc.errors import GprocError

MARK = "gproc-runtime.json"
VERSION = 2  # of the cache and layout
# the standard library's parts no daemon needs: tests (a third of it), GUIs, installers
_SKIP_STDLIB = {
    "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data", "site-packages",
    "dist-packages", "venv", "__phello__", "distutils",
}  # fmt: skip
# nor the static library kept for building extensions, Tk (and X11 with it), the C API's test modules
_SKIP_FILE = re.compile(r"(^|/)(config-[^/]*/.*|[^/]*\.a|_tkinter[^/]*\.so|_test[^/]*\.so|xx[^/]*\.so)$")
_PYC = re.compile(r"\.cpython-\d+\.pyc$")  # the plain byte code (the -O/-OO variants are not used)

WRAPPER = """#!/bin/sh
# gproc's shipped Python: started through its own loader with its own libraries, never the host's
case $0 in /*) ;; *) echo "gproc runtime: run $0 by its absolute path" >&2; exit 127 ;; esac
d=${0%/*/*}
exec "$d/lib/ld.so" --library-path "$d/lib" --argv0 "$0" "$d/bin/@PY@" "$@"
"""


@dataclass(frozen=True)
class Entry:
    """One member: its name in the runtime, where its bytes are here (None: ``data``), its mode."""

    name: str
    source: str | None
    mode: int
    link: str | None = None  # a symbolic link's target
    data: bytes | None = None
    sha256: str = ""


@dataclass
class Runtime:
    id: str
    python: str  # "3.11"
    entries: list[Entry]

    @property
    def size(self) -> int:
        return sum(
            len(e.data) if e.data is not None else os.path.getsize(e.source or "") for e in self.entries if not e.link
        )


def running() -> str | None:
    """The directory of the runtime this process runs from, or None (a normal install)."""
    d = sys.base_prefix
    return d if os.path.isfile(os.path.join(d, MARK)) else None


def default_base() -> str:
    """Where runtimes are kept on a host, as a shell word the remote ``sh`` expands."""
    return "${XDG_CACHE_HOME:-$HOME/.cache}/gproc/runtime"


# ---- collecting --------------------------------------------------------------------------------------


def _walk(top: str, skip: set[str] | None = None) -> Iterator[str]:
    """Regular files and symlinks under top, sorted, byte code only where it is the plain kind."""
    for dirpath, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if not (skip and dirpath == top and d in skip))
        for f in sorted(files):
            if f.endswith(".pyc") and not _PYC.search(f):
                continue
            yield os.path.join(dirpath, f)


def _requirements() -> list[importlib.metadata.Distribution]:
    """gproc's distribution's dependencies, transitively, for this interpreter (extras left out)."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = list(importlib.metadata.distribution("gproc").requires or [])
    while todo:
        try:
            req = Requirement(todo.pop())
        except InvalidRequirement:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        key = canonicalize_name(req.name)
        if key in seen:
            continue
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            raise GprocError(f"cannot ship gproc: its dependency {req.name} is not installed here") from None
        seen[key] = dist
        todo += dist.requires or []
    return [seen[k] for k in sorted(seen)]


def _sources() -> list[tuple[str, str]]:
    """(name in the runtime, path here) of every file but the libraries, in a fixed order."""
    ver = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    out = [(f"bin/{ver}", exe)]
    stdlib = sysconfig.get_paths()["stdlib"]
    if sys.base_prefix != sys.prefix:  # a venv: the base interpreter's library
        stdlib = os.path.join(sys.base_prefix, "lib", ver)
    for path in _walk(stdlib, _SKIP_STDLIB):
        rel = os.path.relpath(path, stdlib)
        if not _SKIP_FILE.search(rel):
            out.append((f"lib/{ver}/{rel}", path))
    site = f"lib/{ver}/site-packages"
    for dist in _requirements():
        base = str(dist.locate_file(""))
        for rel in sorted(str(f) for f in dist.files or []):
            path = os.path.normpath(os.path.join(base, rel))
            if rel.startswith("..") or (rel.endswith(".pyc") and not _PYC.search(rel)) or not os.path.lexists(path):
                continue
            out.append((f"{site}/{rel}", path))
    pkg = os.path.dirname(os.path.abspath(__file__))  # gproc itself, also from an editable install
    for path in _walk(pkg):
        out.append((f"{site}/gproc/{os.path.relpath(path, pkg)}", path))
    return out


def _identity(path: str) -> list[int]:
    st = os.lstat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode]


def _is_elf(path: str) -> bool:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"
    return False


def _libraries(objects: list[str]) -> tuple[str, list[tuple[str, str | None, str | None]]]:
    """(the loader's path, [(name in lib/, path here or None, symlink target or None)]) for the ELF
    closure of ``objects``, as the loader resolves it on this machine."""
    interp = ""
    libs: dict[str, tuple[str | None, str | None]] = {}
    for obj in objects:
        files = elf.closure(obj)
        real = {os.path.realpath(f.source): f for f in files if f.kind in ("library", "interpreter")}
        for f in files:
            if f.kind == "interpreter":
                interp = os.path.realpath(f.source)
            elif f.kind == "library":
                libs.setdefault(os.path.basename(f.path), (os.path.realpath(f.source), None))
            elif f.kind == "symlink" and ".so" in os.path.basename(f.path):
                target = real.get(os.path.realpath(f.source))
                name = os.path.basename(f.path)
                if target is not None and os.path.basename(target.path) != name:
                    libs.setdefault(name, (None, os.path.basename(target.path)))
    if not interp:
        raise GprocError(f"cannot ship gproc: {objects[0]} has no ELF interpreter (a static Python is not supported)")
    rows = [(name, src, link) for name, (src, link) in sorted(libs.items())]
    return interp, rows


def _sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _manifest_id(entries: list[Entry]) -> str:
    h = hashlib.sha256()
    for e in entries:
        h.update(json.dumps([e.name, e.mode & 0o7777, e.link, e.sha256]).encode() + b"\n")
    return h.hexdigest()


def _cache_path() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gproc", "runtime.json")


def _without_debug(path: str, store: str) -> str:
    """``path`` without its debugging sections (``strip --strip-debug``, binutils, where installed):
    libpython and the extension modules carry as much debug data as code (22 of 28 MiB). The copy
    is kept in ``store`` under the original's hash; the original where strip is missing or fails."""
    strip = shutil.which("strip")
    if strip is None:
        return path
    out = os.path.join(store, _sha(path))
    if os.path.exists(out):
        return out
    os.makedirs(store, exist_ok=True)
    tmp = f"{out}.{os.getpid()}"
    r = subprocess.run([strip, "--strip-debug", "-o", tmp, path], capture_output=True, timeout=120)
    if r.returncode != 0:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return path
    os.replace(tmp, out)
    return out


def _entry(name: str, source: str, hashes: dict[str, str]) -> Entry:
    st = os.lstat(source)
    if stat.S_ISLNK(st.st_mode):
        return Entry(name, source, 0o777, link=os.readlink(source))
    digest = hashes.get(source) or _sha(source)
    return Entry(name, source, stat.S_IMODE(st.st_mode) | 0o444, sha256=digest)


def collect(cache: str | None = None) -> Runtime:
    """The runtime of this process's interpreter and gproc (see the module's doc)."""
    here = running()
    if here is not None:
        return _from_dir(here)
    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    sources = _sources()
    key = hashlib.sha256(json.dumps([VERSION, [(n, p, _identity(p)) for n, p in sources]]).encode()).hexdigest()
    path = cache or _cache_path()
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        with open(path) as f:
            got = json.load(f)
        if got["key"] == key:
            entries = [Entry(**e) for e in got["entries"]]
            if all(e.source is None or os.path.lexists(e.source) for e in entries):
                return Runtime(got["id"], ver, [_with_wrapper(e, ver) for e in entries])
    objects = [p for n, p in sources if (n.endswith(".so") or n.startswith("bin/")) and _is_elf(p)]
    interp, libs = _libraries(objects)
    hashes: dict[str, str] = {}
    store = os.path.join(os.path.dirname(path), "runtime-objects")
    elves = set(objects)
    entries = [_entry(n, _without_debug(p, store) if p in elves else p, hashes) for n, p in sources]
    entries.append(_entry("lib/ld.so", interp, hashes))
    for name, src, link in libs:
        if link:
            entries.append(Entry(f"lib/{name}", None, 0o777, link=link))
        else:
            entries.append(_entry(f"lib/{name}", _without_debug(src or "", store), hashes))
    wrapper = WRAPPER.replace("@PY@", f"python{ver}").encode()
    entries.append(Entry("bin/python", None, 0o555, data=wrapper, sha256=hashlib.sha256(wrapper).hexdigest()))
    entries.sort(key=lambda e: e.name)
    rt = Runtime(_manifest_id(entries), ver, entries)
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".runtime.")
        with os.fdopen(fd, "w") as f:
            rows = [{**e.__dict__, "data": None} for e in entries]
            json.dump({"key": key, "id": rt.id, "entries": rows}, f)
        os.replace(tmp, path)
    return rt


def _with_wrapper(e: Entry, ver: str) -> Entry:
    """The cache keeps no file contents: the wrapper script is made again."""
    if e.name != "bin/python":
        return e
    return Entry(e.name, None, e.mode, data=WRAPPER.replace("@PY@", f"python{ver}").encode(), sha256=e.sha256)


def _from_dir(top: str) -> Runtime:
    """A runtime that is running: its own directory, as it was received."""
    with open(os.path.join(top, MARK)) as mf:
        mark = json.load(mf)
    entries = []
    for dirpath, dirs, files in os.walk(top):
        dirs.sort()
        links: list[str] = [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]
        for f in sorted([*files, *links]):
            path = os.path.join(dirpath, f)
            name = os.path.relpath(path, top)
            if name == MARK or (name.endswith(".pyc") and not _PYC.search(name)):
                continue
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                entries.append(Entry(name, path, 0o777, link=os.readlink(path)))
            elif stat.S_ISREG(st.st_mode):
                entries.append(Entry(name, path, stat.S_IMODE(st.st_mode)))
    entries.sort(key=lambda e: e.name)
    return Runtime(str(mark["id"]), str(mark["python"]), entries)


# ---- shipping ----------------------------------------------------------------------------------------


def pack(rt: Runtime, out: IO[bytes], gz: bool = False) -> None:
    """Write the runtime as a tar stream, gzip-compressed (fastest level: the link, not the CPU, is
    what it saves) when ``gz``; its last member is the mark, so a host that has the mark has the rest."""
    if gz:
        with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1, mtime=0) as z:
            pack(rt, cast(IO[bytes], z))
        return
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for e in rt.entries:
            info = tarfile.TarInfo(e.name)
            info.mode = e.mode
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if e.link is not None:
                info.type = tarfile.SYMTYPE
                info.linkname = e.link
                tar.addfile(info)
            elif e.data is not None:
                info.size = len(e.data)
                tar.addfile(info, _bytes(e.data))
            else:
                st = os.stat(e.source or "")
                info.size = st.st_size
                info.mtime = int(st.st_mtime)  # byte code checks its source's mtime
                with open(e.source or "", "rb") as f:
                    tar.addfile(info, f)
        mark = json.dumps({"id": rt.id, "python": rt.python}).encode()
        info = tarfile.TarInfo(MARK)
        info.size = len(mark)
        info.mode = 0o444
        tar.addfile(info, _bytes(mark))


def _bytes(data: bytes) -> IO[bytes]:
    import io

    return io.BytesIO(data)


def packed(top: str) -> str:
    """Where a host keeps the compressed stream it received a runtime in (``<base>/<id>.tar.gz``): a
    host that ships on to its children sends that file as it is instead of packing it again."""
    return os.path.normpath(top) + ".tar.gz"


def unpack_script(base: str, rid: str, gz: bool = False, keep: bool = False) -> str:
    """The shell text a host runs to receive a runtime on stdin (after one line it hands on): into a
    private temporary directory, renamed into place when complete (two launches at once both work).
    ``keep`` (with ``gz``): also keep the stream as it came (``packed``), with ``tee``."""
    untar = f'tar -x {"-z " if gz else ""}-f - -C "$t"'
    if gz and keep:
        untar = f'tee "$t.tar.gz" | {untar} && mv "$t.tar.gz" "$d.tar.gz"'
    return (
        f'b={base}; d="$b/{rid}"; t="$b/.{rid}.$$"; mkdir -p "$b" && rm -rf "$t" && mkdir -m 700 "$t" && '
        f'IFS= read -r req && {untar} && chmod 755 "$t" && '
        f'{{ [ -e "$d/{MARK}" ] || rm -rf "$d"; mv -T "$t" "$d" 2>/dev/null || rm -rf "$t"; }} && '
        f'printf "%s\\n" "$req" | '
    )


def describe(rt: Runtime) -> dict[str, Any]:
    return {"id": rt.id, "python": rt.python, "files": len(rt.entries), "bytes": rt.size}
