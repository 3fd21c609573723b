"""What ``gproc e`` ships: the program, its ELF interpreter and libraries, ``-f`` files, the working directory.

The client builds the bundle (``build``) before anything is sent, so a program or library that
cannot be found is reported at once, naming what was searched. The manifest lists every entry once
with its SHA-256, size and mode (see ``gproc.store.Entry``); the bytes stay here until the master
asks for the files some node lacks (``want``), and are read with the caller's own rights.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from gproc import elf
from gproc.errors import StagingError
from gproc.filefacts import FileFacts
from gproc.store import Entry, file_hash, parse_manifest

# Bytes per data frame, and per ``put`` op down the tree. Every daemon holds a few chunks per link in
# flight (TLS buffers, copies on the way through): 512 KiB chunks took 1.9-3.6 MiB per node of a
# 640-node local worker and ran a 10,000-node cluster out of memory; 128 KiB took 0.86 MiB and
# shipped as fast (2,560 nodes: 15.5 s vs 16.8 s for 5.6 GB over the links).
CHUNK = 128 * 1024
LDSO_OPTIONS = ("inhibit-cache", "preload", "argv0")  # ld.so options used when the interpreter has them


@dataclass
class Bundle:
    """A manifest, where to read each distinct file here, and how the node starts the program."""

    entries: dict[str, Entry] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # hash -> a local path holding those bytes
    run: dict[str, Any] | None = None
    cwd: str | None = None
    private: bool = True
    _hashes: dict[str, tuple[str, int]] = field(default_factory=dict)  # local path -> (hash, size)
    facts: FileFacts | None = None  # hashes of unchanged files from earlier runs

    def to_wire(self) -> dict[str, Any]:
        return {
            "files": [e.to_wire() for e in self.entries.values()],
            "cwd": self.cwd,
            "run": self.run,
            "private": self.private,
        }

    @property
    def total_bytes(self) -> int:
        """Bytes of the distinct files (what a node that has none of them receives)."""
        sizes = {e.hash: e.size for e in self.entries.values() if e.kind == "f"}
        return sum(sizes.values())

    def add(self, e: Entry) -> None:
        old = self.entries.get(e.path)
        if old is not None and old != e:
            raise StagingError(f"{e.path}: shipped twice with different contents")
        self.entries[e.path] = e

    def add_file(self, path: str, source: str) -> None:
        """A regular file, hashed (once per local path) and remembered as the source of its bytes."""
        try:
            st = os.stat(source)
            if source not in self._hashes:
                self._hashes[source] = self._hash(source, st)
        except OSError as e:
            raise StagingError(f"cannot read {source}: {e.strerror}") from None
        h, size = self._hashes[source]
        self.sources.setdefault(h, source)
        self.add(Entry("f", path, h, size, stat.S_IMODE(st.st_mode)))

    def _hash(self, source: str, st: os.stat_result) -> tuple[str, int]:
        known = self.facts.get(source, "sha256") if self.facts is not None else None
        if isinstance(known, list) and len(known) == 2:
            return str(known[0]), int(known[1])
        h, size = file_hash(source)
        if self.facts is not None:
            self.facts.put(source, "sha256", [h, size], st)
        return h, size

    def add_links(self, links: Iterable[elf.BundleFile]) -> None:
        for link in links:
            assert link.link_target is not None
            self.add(Entry("l", link.path, target=link.link_target))

    def chunks(self, h: str) -> Iterator[tuple[int, bytes]]:
        """The bytes of one file as (offset, data) chunks; at least one chunk, even for an empty file."""
        size = next(e.size for e in self.entries.values() if e.hash == h)
        with open(self.sources[h], "rb") as f:
            offset = 0
            while True:
                data = f.read(min(CHUNK, size - offset))
                yield offset, data
                offset += len(data)
                if not data or offset >= size:
                    break
        if offset != size:
            raise StagingError(f"{self.sources[h]} changed while it was being shipped")


def build(
    argv: list[str],
    *,
    root: str = "/",
    path_env: str | None = None,
    ld_library_path: str | None = None,
    files: Iterable[str] = (),
    cwd: str | None = None,
    localbin: bool = False,
    private: bool = True,
    facts: FileFacts | None = None,
) -> Bundle | None:
    """The bundle for running ``argv``; None when there is nothing to ship (``-localbin`` and no files).

    CMD (argv[0]) is found in ``path_env`` unless it has a '/', everything of the program inside
    ``root``; ``files`` are ``-f`` paths here (relative to ``cwd``), directories with their contents
    unless written ``dir/.``. Raises StagingError naming what could not be found or read.
    ``facts``: what earlier runs learnt of unchanged files (default: the user's cache, kept updated).
    """
    files = [f for f in files if f]
    if localbin and not files:
        return None
    facts = facts if facts is not None else FileFacts.load()
    b = Bundle(private=private, facts=facts)
    base = cwd or _getcwd()
    if not localbin:
        cmd = argv[0]
        if root == "/" and base:  # relative names are relative to the client's working directory
            cmd = os.path.join(base, cmd) if "/" in cmd else cmd
            if path_env is not None:
                path_env = ":".join(os.path.join(base, d) for d in path_env.split(":"))
        prog = elf.find_program(cmd, path_env, root)
        plan = elf.load_plan(prog, root, ld_library_path, path_env, argv0=argv[0], facts=facts)
        for f in plan.files:
            if f.kind == "symlink":
                b.add_links([f])
            else:
                b.add_file(f.path, f.source)

        def clean(path: str) -> str:
            """A bundle path as a node accepts it: no '.' or empty component, no '..' (real path then)."""
            parts = [p for p in path.split("/") if p not in ("", ".")]
            return elf.locate(path, root)[0] if ".." in parts else "/" + "/".join(parts)

        b.run = {
            "exe": clean(plan.exe),
            "interp": clean(plan.interp) if plan.interp else None,
            "head": [[clean(text) if is_path else text, is_path] for text, is_path in plan.argv_head],
            "libs": [clean(p) for p in plan.libraries],
            "ldso": _ldso_options(elf.locate(plan.interp, root)[0], root) if plan.interp else [],
            "machine": elf.machine(plan.exe, root),
        }
    for item in files:
        _add_path(b, os.path.join(base, item) if base else item)
    if base:
        try:
            real, links = elf.locate(base)
            b.add_links(links)
            b.add(Entry("d", real, mode=stat.S_IMODE(os.stat(real).st_mode)))
        except (StagingError, OSError):
            real = base  # the working directory is created on the node even if it is not here
            b.add(Entry("d", real, mode=0o755))
        b.cwd = real
    parse_manifest([e.to_wire() for e in b.entries.values()])  # refuse here what a node would refuse
    facts.save()
    return b


def _getcwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:
        return None


def _add_path(b: Bundle, path: str) -> None:
    """One ``-f`` item: a file, a directory with everything under it, or (``dir/.``) the directory only."""
    only_dir = path.endswith("/.") or path == "."
    real, links = elf.locate(path)
    b.add_links(links)
    try:
        st = os.stat(real)
    except OSError as e:
        raise StagingError(f"{path}: {e.strerror}") from None
    if stat.S_ISREG(st.st_mode):
        b.add_file(real, real)
        return
    if not stat.S_ISDIR(st.st_mode):
        raise StagingError(f"{path}: neither a file nor a directory")
    b.add(Entry("d", real, mode=stat.S_IMODE(st.st_mode)))
    if only_dir:
        return
    for top, dirs, names in os.walk(real):
        for name in sorted(dirs + names):
            p = os.path.join(top, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                b.add(Entry("l", p, target=os.readlink(p)))
            elif stat.S_ISDIR(st.st_mode):
                b.add(Entry("d", p, mode=stat.S_IMODE(st.st_mode)))
            elif stat.S_ISREG(st.st_mode):
                b.add_file(p, p)
            # sockets, fifos and devices are not shipped


def _ldso_options(interp: str, root: str) -> list[str]:
    """Options the shipped ELF interpreter understands (glibc 2.33+ has all; musl lacks the cache)."""
    host = interp if root == "/" else os.path.join(os.path.abspath(root), interp.lstrip("/"))
    try:
        with open(host, "rb") as f:
            text = f.read()
    except OSError as e:
        raise StagingError(f"cannot read {interp}: {e.strerror}") from None
    return [opt for opt in LDSO_OPTIONS if opt.encode() in text]
