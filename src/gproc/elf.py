"""The files a program needs on a node: itself, its ELF interpreter and its shared-library closure.

Libraries are resolved as glibc's ld.so (2.36) does, reading ELF files with pyelftools (never ``ldd``).
For each DT_NEEDED name, in breadth-first load order:

1. a name already loaded (by the name it was requested as, its path or its DT_SONAME) is reused;
   the interpreter counts as loaded, so ``ld-linux-*.so`` needs resolve to PT_INTERP;
2. a name with a ``/`` is a path; otherwise the directories searched are: DT_RPATH of the needing
   object, then of its loader, and so on up to the program (only when the needing object has no
   DT_RUNPATH; an object with DT_RUNPATH has its DT_RPATH ignored), ``LD_LIBRARY_PATH`` (``:`` or
   ``;``), the needing object's own DT_RUNPATH, ``/etc/ld.so.cache`` (or, when ROOT has no cache, the
   directories of ``/etc/ld.so.conf`` and its ``include`` globs), then the default directories; the
   last two are skipped for an object flagged DF_1_NODEFLIB;
3. a candidate is accepted only if it is an ELF file of the program's class, byte order and machine.

``$ORIGIN`` is the directory of the program's real path, and for a library the directory of the path
it was found at (as glibc does); ``$PLATFORM`` is what the program's own loader substitutes on this
machine when ROOT is ``/`` (glibc names some CPUs, e.g. ``haswell`` on Intel with AVX2, where the
auxiliary vector says ``x86_64``: its ``--list-diagnostics`` or ``--help`` tells), else the machine name
(x86_64, aarch64, i686, ...);
``$LIB`` and the default directories follow the root's layout: with a Debian multiarch directory
(``/lib/<triplet>``) ``$LIB`` is ``lib/<triplet>`` and the defaults are ``/lib/<triplet>``,
``/usr/lib/<triplet>``, ``/lib``, ``/usr/lib`` (Debian's ld.so); otherwise ``$LIB`` is ``lib64`` (64-bit)
or ``lib`` and the defaults are ``/lib64``, ``/usr/lib64`` (64-bit), ``/lib``, ``/usr/lib``.
``glibc-hwcaps`` and legacy hwcap subdirectories are not searched: they hold optional CPU-specific
copies of libraries that also exist in the plain directory, and the baseline copy runs on any node.

Every path is looked up inside ROOT: symlinks are followed component by component as the kernel
does, an absolute target restarts at ROOT and ``..`` never climbs above it. Each symlink met on the
way becomes a ``symlink`` entry (its location with real parent directories, and its target text),
so recreating the entries under a node's binRoot reproduces every path the program uses.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from gproc.errors import CannotExecute, CommandNotFound, StagingError
from gproc.filefacts import FileFacts

__all__ = ["BundleFile", "LoadPlan", "closure", "find_program", "load_plan", "locate", "machine"]

_MAX_SYMLINKS = 40  # as the kernel's ELOOP limit
_MAX_SCRIPT_DEPTH = 4  # as the kernel's BINPRM_MAX_RECURSION
_SHEBANG_MAX = 256  # as the kernel's BINPRM_BUF_SIZE
_DF_1_NODEFLIB = 0x800
_STRING_TAGS = {"DT_NEEDED": "needed", "DT_RPATH": "rpath", "DT_RUNPATH": "runpath", "DT_SONAME": "soname"}
_CACHE_MAGIC = b"glibc-ld.so.cache1.1"
_TRIPLETS: dict[tuple[int, int], str] = {  # (e_machine, EI_CLASS) -> Debian multiarch triplet
    (62, 2): "x86_64-linux-gnu", (62, 1): "x86_64-linux-gnux32", (3, 1): "i386-linux-gnu",
    (183, 2): "aarch64-linux-gnu", (40, 1): "arm-linux-gnueabihf", (21, 2): "powerpc64le-linux-gnu",
    (22, 2): "s390x-linux-gnu", (243, 2): "riscv64-linux-gnu",
}  # fmt: skip
_PLATFORMS = {62: "x86_64", 3: "i686", 183: "aarch64", 40: "v7l", 21: "ppc64le", 22: "s390x", 243: "riscv64"}
_DST = re.compile(r"\$(?:\{(ORIGIN|LIB|PLATFORM)\}|(ORIGIN|LIB|PLATFORM)(?=/|$))")

Ident = tuple[int, int, int]  # (EI_CLASS, EI_DATA, e_machine)


@dataclass(frozen=True)
class BundleFile:
    """One file of a bundle: where the program sees it (inside ROOT) and where to read it here."""

    path: str
    source: str
    kind: str  # 'program' | 'interpreter' | 'library' | 'symlink' | 'script-interpreter'
    link_target: str | None = None


@dataclass(frozen=True)
class LoadPlan:
    """How to start a program from its shipped files, as the kernel and ld.so would.

    ``exe`` is the ELF file that is finally loaded (the program, or for a ``#!`` script the last
    interpreter of the chain) and ``interp`` its PT_INTERP (None for a static executable).
    ``argv_head`` is the start of the argument vector the kernel builds: ``(text, is_path)`` pairs,
    where ``is_path`` marks a path inside the bundle (a script handed to its interpreter); the
    user's arguments after argv[0] follow it. ``libraries`` are the paths ld.so finds the libraries
    under (its ``l_name``), in load order.
    """

    files: list[BundleFile]
    exe: str
    interp: str | None
    argv_head: list[tuple[str, bool]]
    libraries: list[str]


@dataclass
class _Launch:
    """How one executable of a ``#!`` chain starts (see ``LoadPlan``)."""

    exe: str
    interp: str | None
    argv: list[tuple[str, bool]]
    libraries: list[str]


@dataclass
class _Obj:
    """What the loader needs from one ELF file."""

    ident: Ident
    etype: str
    interp: str | None = None
    needed: list[str] = field(default_factory=list)
    rpath: list[str] = field(default_factory=list)
    runpath: list[str] | None = None
    soname: str | None = None
    nodeflib: bool = False

    def fact(self) -> list[Any]:
        return [list(self.ident), self.etype, self.interp, self.needed, self.rpath, self.runpath, self.soname,
                self.nodeflib]  # fmt: skip

    @classmethod
    def from_fact(cls, fact: Any) -> _Obj:
        ident, etype, interp, needed, rpath, runpath, soname, nodeflib = fact
        return cls((ident[0], ident[1], ident[2]), etype, interp, needed, rpath, runpath, soname, nodeflib)


@dataclass
class _Loaded:
    """An object of one program's link map."""

    obj: _Obj
    path: str  # the name the loader found it under (glibc's l_name); '' for the program
    real: str
    origin: str
    names: set[str]
    loader: _Loaded | None = None


def _host_machine() -> str:
    m = os.uname().machine
    return {"arm64": "aarch64", "amd64": "x86_64"}.get(m, m)


_DL_PLATFORM = re.compile(r'^dl_platform="([^"\n]+)"$', re.M)  # ld.so --list-diagnostics (glibc >= 2.33)
_HELP_PLATFORM = re.compile(r"^\s+(\S+) \(AT_PLATFORM[;)]", re.M)  # ld.so --help (glibc >= 2.33)


def loader_platform(interp: str) -> str | None:
    """The ``$PLATFORM`` a glibc dynamic loader substitutes on this machine, as it says itself: its
    ``dl_platform`` (which glibc may set from the CPU, e.g. ``haswell``, over the kernel's AT_PLATFORM);
    None when it does not say (another C library, an older glibc)."""
    for option, pattern in (("--list-diagnostics", _DL_PLATFORM), ("--help", _HELP_PLATFORM)):
        try:
            r = subprocess.run([interp, option], capture_output=True, text=True, timeout=10, env={"LC_ALL": "C"})
        except (OSError, subprocess.SubprocessError, ValueError):
            return None
        m = pattern.search(r.stdout) if r.returncode == 0 else None
        if m is not None:
            return m.group(1)
    return None


def _names(*names: str | None) -> set[str]:
    return {n for n in names if n}


def _ident(host: str) -> Ident | None:
    """Class, byte order and machine of an ELF file, None if it is not one (or unreadable)."""
    try:
        with open(host, "rb") as f:
            head = f.read(20)
    except (OSError, ValueError):
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
        return None
    (machine,) = struct.unpack_from("<H" if head[5] == 1 else ">H", head, 18)
    return head[4], head[5], machine


def _parse(host: str, shown: str) -> _Obj:
    """Read PT_INTERP and the dynamic section of an ELF file (StagingError if malformed)."""
    # imported here: pyelftools takes longer to import than the rest of the client, and a program
    # whose facts are known (gproc.filefacts) needs none of it
    from elftools.elf.dynamic import DynamicSegment
    from elftools.elf.elffile import ELFFile
    from elftools.elf.segments import InterpSegment

    ident = _ident(host)
    if ident is None:
        raise StagingError(f"{shown}: not an ELF file")
    strings: dict[str, list[str]] = {}
    try:
        with open(host, "rb") as f:
            elf = ELFFile(f)
            obj = _Obj(ident, str(elf["e_type"]))
            for seg in elf.iter_segments():
                if isinstance(seg, InterpSegment):
                    obj.interp = seg.get_interp_name()
                elif isinstance(seg, DynamicSegment):
                    for tag in seg.iter_tags():
                        kind = tag.entry.d_tag
                        if kind in _STRING_TAGS:
                            strings.setdefault(kind, []).append(str(getattr(tag, _STRING_TAGS[kind])))
                        elif kind == "DT_FLAGS_1":
                            obj.nodeflib = bool(tag.entry.d_val & _DF_1_NODEFLIB)
    except Exception as exc:  # pyelftools raises many kinds of errors on malformed input
        raise StagingError(f"{shown}: malformed ELF file ({type(exc).__name__}: {exc})")
    obj.needed = strings.get("DT_NEEDED", [])
    obj.soname = strings.get("DT_SONAME", [None])[0]
    if "DT_RUNPATH" in strings:  # RUNPATH present: RPATH ignored
        obj.runpath = [d for text in strings["DT_RUNPATH"] if text for d in text.split(":")]
    else:
        obj.rpath = [d for text in strings.get("DT_RPATH", []) if text for d in text.split(":")]
    return obj


class _Tree:
    """Path lookups inside a root directory, following symlinks without ever leaving it."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self._memo: dict[str, tuple[str, list[tuple[str, str]]] | None] = {}

    def host(self, path: str) -> str:
        """Where a path inside the root is on this machine."""
        return path if self.root == "/" else self.root + path

    def absolute(self, path: str) -> str:
        """A path made absolute (relative to the working directory, or to the root under -r)."""
        if path.startswith("/"):
            return path
        return (os.getcwd() if self.root == "/" else "") + "/" + path

    def resolve(self, path: str) -> tuple[str, list[tuple[str, str]]] | None:
        """Real path of an absolute path and the (link, target) symlinks met; None on a loop."""
        if path not in self._memo:
            self._memo[path] = self._walk(path)
        return self._memo[path]

    def _walk(self, path: str) -> tuple[str, list[tuple[str, str]]] | None:
        parts, cur, links = path.split("/")[::-1], "/", []
        while parts:
            name = parts.pop()
            if name in ("", "."):
                continue
            if name == "..":
                cur = posixpath.dirname(cur)
                continue
            nxt = posixpath.join(cur, name)
            try:
                target = os.readlink(self.host(nxt))
            except (OSError, ValueError):  # not a link, or absent: absence shows up later
                cur = nxt
                continue
            links.append((nxt, target))
            if len(links) > _MAX_SYMLINKS:
                return None
            cur = "/" if target.startswith("/") else cur
            parts += target.split("/")[::-1]
        return cur, links

    def real_file(self, path: str) -> str | None:
        """Real path of a regular file inside the root, None if there is none there."""
        found = self.resolve(path)
        return found[0] if found and os.path.isfile(self.host(found[0])) else None


def machine(path: str, root: str = "/") -> str | None:
    """The machine an ELF file inside root is built for, as ``uname -m`` names it (None if not ELF)."""
    tree = _Tree(root)
    real = tree.real_file(tree.absolute(path))
    ident = _ident(tree.host(real)) if real is not None else None
    return _PLATFORMS.get(ident[2], f"machine {ident[2]}") if ident is not None else None


def find_program(cmd: str, path_env: str | None, root: str = "/") -> str:
    """Path (inside root) of CMD: itself when it has a '/', else its first executable match in PATH."""
    tree = _Tree(root)
    if root != "/" and not os.path.isdir(root):
        raise CommandNotFound(
            f"-r {root}: the root {'is not a directory' if os.path.exists(root) else 'does not exist'}"
        )
    if "/" in cmd:
        found = tree.resolve(tree.absolute(cmd))
        host = tree.host(found[0]) if found else None
        if host is not None and os.path.isdir(host):
            raise CannotExecute(f"{cmd}: Is a directory")
        if host is None or not os.path.isfile(host):
            raise CommandNotFound(f"{cmd}: No such file or directory")
        if not os.access(host, os.X_OK):
            raise CannotExecute(f"{cmd}: Permission denied")
        return tree.absolute(cmd)
    dirs = (path_env if path_env is not None else "/bin:/usr/bin").split(":")
    for d in dirs:
        cand = tree.absolute(posixpath.join(d or ".", cmd))
        real = tree.real_file(cand)
        if real is not None and os.access(tree.host(real), os.X_OK):
            return cand
    raise CommandNotFound(f"{cmd}: command not found (searched PATH: {', '.join(dirs)})")


def _shebang(head: bytes, shown: str) -> tuple[str, str]:
    """Interpreter and optional argument of a '#!' line, read as Linux does."""
    line = head[2:].split(b"\n", 1)[0].strip(b" \t")
    interp, _, arg = line.replace(b"\t", b" ").partition(b" ")
    if not interp or b"\0" in line:
        raise StagingError(f"{shown}: bad '#!' line")
    return os.fsdecode(interp), os.fsdecode(arg.strip(b" "))


def _env_command(arg: str) -> str | None:
    """The command ``env`` runs for a ``#!/usr/bin/env ARG`` line (options and VAR=value skipped)."""
    words = iter(arg.split())
    for word in words:
        if word in ("-u", "-C", "--unset", "--chdir"):
            next(words, None)
        elif not word.startswith("-") and "=" not in word:
            return word
    return None


class _Closure:
    """One closure computation: the files found so far and per-call caches."""

    def __init__(
        self, root: str, ld_library_path: str | None, path_env: str | None, facts: FileFacts | None = None
    ) -> None:
        self.tree = _Tree(root)
        self.facts = facts
        self.llp = ld_library_path
        self.path_env = path_env
        self.files: dict[str, BundleFile] = {}
        self.objs: dict[str, _Obj] = {}
        self._cache: LdCache | None = None
        self._conf_dirs: list[str] | None = None
        self._layouts: dict[Ident, tuple[str, list[str]]] = {}
        self._platforms: dict[str, str | None] = {}  # by interpreter (host path): the $PLATFORM it uses
        self._interp: str | None = None  # the program's loader, when it is this machine's to ask

    def add(self, path: str, kind: str) -> str:
        """Record a file and the symlinks leading to it; return its real path."""
        found = self.tree.resolve(path)
        if found is None or not os.path.isfile(self.tree.host(found[0])):
            raise StagingError(f"{path}: no such file" if found else f"{path}: too many symbolic links")
        real, links = found
        self.files.setdefault(real, BundleFile(real, self.tree.host(real), kind))
        for link, target in links:
            self.files.setdefault(link, BundleFile(link, self.tree.host(link), "symlink", target))
        return real

    def parse(self, real: str, shown: str) -> _Obj:
        if real not in self.objs:
            self.objs[real] = self._parse_known(self.tree.host(real), shown)
        return self.objs[real]

    def _parse_known(self, host: str, shown: str) -> _Obj:
        """``_parse``, or what it said of the file last time when it has not changed since."""
        if self.facts is None:
            return _parse(host, shown)
        known = self.facts.get(host, "elf")
        if known is not None:
            try:
                return _Obj.from_fact(known)
            except (TypeError, ValueError, IndexError):
                pass  # a cache written by something else: read the file
        try:
            st = os.stat(host)
        except OSError:
            return _parse(host, shown)  # it says what is wrong
        obj = _parse(host, shown)
        self.facts.put(host, "elf", obj.fact(), st)
        return obj

    def executable(self, path: str, kind: str, argv0: str, depth: int = 0) -> _Launch:
        """Add a program: an ELF executable with its closure, or a script with its interpreter.

        Returns how it starts (see ``LoadPlan``), ``argv0`` being what the program is called by.
        """
        real = self.add(path, kind)
        try:
            with open(self.tree.host(real), "rb") as f:
                head = f.read(_SHEBANG_MAX)
        except OSError as exc:
            raise StagingError(f"{path}: cannot read ({exc.strerror})")
        if head.startswith(b"#!"):
            if depth >= _MAX_SCRIPT_DEPTH:
                raise StagingError(f"{path}: too many levels of '#!' interpreters")
            interp, arg = _shebang(head, path)
            if self.tree.real_file(self.tree.absolute(interp)) is None:
                raise StagingError(f"interpreter {interp} of {path} not found")
            launch = self.executable(self.tree.absolute(interp), "script-interpreter", interp, depth + 1)
            cmd = _env_command(arg) if posixpath.basename(interp) == "env" else None
            if cmd is not None:  # run the command env would find in PATH directly: the shipped copy
                found = find_program(cmd, self.path_env, self.tree.root)
                launch = self.executable(found, "script-interpreter", cmd, depth + 1)
            elif arg:
                launch.argv.append((arg, False))
            launch.argv.append((path, True))
            return launch
        if _ident(self.tree.host(real)) is not None:
            libraries: list[str] = []
            pt_interp = self.elf_program(path, real, libraries)
            return _Launch(path, pt_interp, [(argv0, False)], libraries)
        raise StagingError(f"{path}: neither an ELF executable nor a '#!' script")

    def elf_program(self, path: str, real: str, libraries: list[str]) -> str | None:
        """Add PT_INTERP and the DT_NEEDED closure of an ELF executable, in ld.so's load order;
        return PT_INTERP and append the paths the libraries are found under to ``libraries``."""
        main = self.parse(real, path)
        if main.etype not in ("ET_EXEC", "ET_DYN"):
            raise StagingError(f"{path}: not an executable ELF file ({main.etype})")
        prog = _Loaded(main, "", real, posixpath.dirname(real), _names(main.soname))
        loaded = [prog]
        if main.interp is not None:
            ipath = self.tree.absolute(main.interp)
            if self.tree.real_file(ipath) is None:
                raise StagingError(f"interpreter {main.interp} of {path} not found")
            ireal = self.add(ipath, "interpreter")
            interp = self.parse(ireal, main.interp)
            if interp.ident != main.ident:
                raise StagingError(f"interpreter {main.interp} of {path} is of another ELF class or machine")
            loaded.append(_Loaded(interp, ipath, ireal, "", _names(main.interp, interp.soname)))
            if self.tree.root == "/" and _PLATFORMS.get(main.ident[2]) == _host_machine():
                self._interp = self.tree.host(ireal)
        llp = (self.llp or "").replace(";", ":")
        env = _Env(main.ident, self._dirs(llp.split(":") if llp else [], prog), self.layout(main.ident)[1])
        queue = [prog]
        for who in queue:  # grows while iterated: breadth-first, as _dl_map_object_deps
            for name in who.obj.needed:
                if any(name in lo.names or name == lo.path for lo in loaded):
                    continue
                found, lib_real = self.search(name, who, env, path)
                same = next((lo for lo in loaded if lo.real == lib_real), None)
                if same is not None:  # the same file under another name
                    same.names.add(name)
                    continue
                self.add(found, "library")
                obj = self.parse(lib_real, found)
                new = _Loaded(obj, found, lib_real, posixpath.dirname(found), _names(name, obj.soname), who)
                loaded.append(new)
                queue.append(new)
                libraries.append(found)
        return main.interp

    def _dirs(self, items: list[str], owner: _Loaded) -> list[str]:
        """Directories of RPATH/RUNPATH/LD_LIBRARY_PATH items, DSTs expanded; '' is the working dir."""
        out = []
        for item in items:
            d = self._expand(item, owner)
            d = d.rstrip("/") or d[:1]
            if d.startswith("/"):
                out.append(d)
            elif self.tree.root == "/":  # relative entries are relative to the working directory
                out.append(posixpath.join(os.getcwd(), d).rstrip("/"))
        return out

    def _expand(self, text: str, owner: _Loaded) -> str:
        """Expand $ORIGIN, $LIB and $PLATFORM (also in ${...} form) for an object."""
        machine = owner.obj.ident[2]
        values = {"ORIGIN": owner.origin, "LIB": self.layout(owner.obj.ident)[0]}
        if "PLATFORM" in text:
            values["PLATFORM"] = self._platform(machine)
        return _DST.sub(lambda m: values[m.group(1) or m.group(2)], text)

    def _platform(self, machine: int) -> str:
        interp = self._interp
        if interp is not None and interp not in self._platforms:
            self._platforms[interp] = loader_platform(interp)
        said = self._platforms.get(interp) if interp is not None else None
        return said or _PLATFORMS.get(machine, str(machine))

    def layout(self, ident: Ident) -> tuple[str, list[str]]:
        """$LIB and the default library directories for an ELF class/machine in this root."""
        if ident not in self._layouts:
            triplet = _TRIPLETS.get((ident[2], ident[0]))
            if triplet and any(self._isdir(f"{d}/{triplet}") for d in ("/lib", "/usr/lib")):
                multi = [f"/lib/{triplet}", f"/usr/lib/{triplet}", "/lib", "/usr/lib"]
                self._layouts[ident] = (f"lib/{triplet}", multi)
            elif ident[0] == 2:
                self._layouts[ident] = ("lib64", ["/lib64", "/usr/lib64", "/lib", "/usr/lib"])
            else:
                self._layouts[ident] = ("lib", ["/lib", "/usr/lib"])
        return self._layouts[ident]

    def accept(self, env: _Env, path: str) -> str | None:
        """Real path of a candidate library if it is an ELF file of the program's identity."""
        real = self.tree.real_file(path)
        return real if real is not None and _ident(self.tree.host(real)) == env.ident else None

    def _isdir(self, path: str) -> bool:
        found = self.tree.resolve(path)
        return found is not None and os.path.isdir(self.tree.host(found[0]))

    def search(self, name: str, who: _Loaded, env: _Env, prog: str) -> tuple[str, str]:
        """Path and real path of a DT_NEEDED name as ld.so finds it for `who`."""
        shown = who.path or prog
        if "/" in name:
            path = self.tree.absolute(self._expand(name, who))
            if (real := self.accept(env, path)) is not None:
                return path, real
            raise StagingError(f"{name} needed by {shown} not found")
        searched: dict[str, None] = {}
        for where, candidate in self._candidates(name, who, env):
            searched[where] = None
            if candidate is not None and (real := self.accept(env, candidate)) is not None:
                return candidate, real
        raise StagingError(f"{name} needed by {shown} not found (searched: {', '.join(searched)})")

    def _candidates(self, name: str, who: _Loaded, env: _Env) -> Iterator[tuple[str, str | None]]:
        """(where, path) pairs to try for a library name, in ld.so's order."""
        dirs: list[str] = []
        if who.obj.runpath is None:
            chain: _Loaded | None = who
            while chain is not None:
                dirs += self._dirs(chain.obj.rpath, chain)
                chain = chain.loader
        dirs += env.llp + self._dirs(who.obj.runpath or [], who)
        yield from ((d, posixpath.join(d, name)) for d in dirs)
        if who.obj.nodeflib:
            return
        cache = self.cache()
        if cache:
            yield "/etc/ld.so.cache", None
            yield from (("/etc/ld.so.cache", path) for path in cache.get(name, []))
        dirs = ([] if cache else self.conf_dirs()) + env.defaults
        yield from ((d, posixpath.join(d, name)) for d in dirs)

    def cache(self) -> LdCache:
        """ROOT's /etc/ld.so.cache (new format, baseline entries); empty (false) if none."""
        if self._cache is None:
            try:
                with open(self.tree.host("/etc/ld.so.cache"), "rb") as f:
                    self._cache = LdCache(f.read())
            except OSError:
                self._cache = LdCache(b"")
        return self._cache

    def conf_dirs(self) -> list[str]:
        """Directories of ROOT's /etc/ld.so.conf, with its includes, in order."""
        if self._conf_dirs is None:
            self._conf_dirs = []
            self._read_conf("/etc/ld.so.conf", 0)
        return self._conf_dirs

    def _read_conf(self, path: str, depth: int) -> None:
        found = self.tree.real_file(path)
        if found is None or depth > 10 or self._conf_dirs is None:
            return
        try:
            with open(self.tree.host(found), encoding="utf-8", errors="replace") as f:
                lines = [line.split("#", 1)[0].strip() for line in f]
        except OSError:
            return
        for line in lines:
            words = line.split()
            if len(words) > 1 and words[0] == "include":
                for pattern in words[1:]:
                    pattern = posixpath.join(posixpath.dirname(path), pattern)
                    for inc in self._glob(pattern):
                        self._read_conf(inc, depth + 1)
            elif line and words[0] != "hwcap":
                self._conf_dirs.append(line.split("=", 1)[0].rstrip("/") or "/")

    def _glob(self, pattern: str) -> list[str]:
        """Files matching a glob whose last component only has wildcards, inside the root, sorted."""
        folder, base = posixpath.split(pattern)
        found = self.tree.resolve(folder)
        try:
            names = os.listdir(self.tree.host(found[0])) if found else []
        except OSError:
            return []
        return [posixpath.join(folder, n) for n in sorted(fnmatch.filter(names, base)) if n[:1] != "."]


@dataclass
class _Env:
    """Search settings of one program's link map: its ELF identity, LD_LIBRARY_PATH, defaults."""

    ident: Ident
    llp: list[str]
    defaults: list[str]


class LdCache:
    """An ld.so.cache (new format): ``get(name)`` gives a library name's paths in ld.so's lookup
    order (baseline entries). Names are looked up in the string table when asked for, not decoded
    all at once: parsing the ~1,300 entries of a Debian cache into a map took 3.7 ms, most of a
    cached ``gproc e``'s client work."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._entries: list[tuple[int, int]] = []  # (key, value) string offsets from the table's start
        self._start = start = data.find(_CACHE_MAGIC)
        if start < 0 or len(data) < start + 48:
            return
        endian = "<" if data[start + 28] != 3 else ">"  # flags: 2 = little endian, 3 = big endian
        (nlibs,) = struct.unpack_from(endian + "I", data, start + 20)
        n = min(nlibs, (len(data) - start - 48) // 24)
        table = data[start + 48 : start + 48 + 24 * n]
        self._entries = [
            (key, value)
            for flags, key, value, _, hwcap in struct.iter_unpack(endian + "iIIIQ", table)
            if flags & 0xFF == 3 and hwcap == 0 and key < len(data) and value < len(data)  # FLAG_ELF_LIBC6
        ]

    def __bool__(self) -> bool:
        return bool(self._entries)

    def get(self, name: str, default: list[str]) -> list[str]:
        """The paths of library ``name``, in the cache's order (``default`` when it has none)."""
        data, start, want = self._data, self._start, os.fsencode(name) + b"\0"
        keys: set[int] = set()  # offsets where a string reading exactly ``name`` starts (strings share tails)
        at = data.find(want, start)
        while at >= 0:
            keys.add(at - start)
            at = data.find(want, at + 1)
        paths = [self._string(value) for key, value in self._entries if key in keys]
        return paths or default

    def _string(self, off: int) -> str:
        end = self._data.find(b"\0", self._start + off)
        return os.fsdecode(self._data[self._start + off : end])


def load_plan(
    program: str,
    root: str = "/",
    ld_library_path: str | None = None,
    path_env: str | None = None,
    argv0: str = "",
    facts: FileFacts | None = None,
) -> LoadPlan:
    """The files to ship for `program` (a path inside root) and how ld.so would start it.

    ``path_env`` (default: this process's PATH) is used to find ``#!/usr/bin/env CMD`` commands.
    Raises StagingError for a missing library (its name and the directories searched), a file that
    is neither ELF nor a '#!' script, or an interpreter/library of another ELF class or machine.
    ``facts``: what earlier runs learnt of unchanged files (their ELF headers are not read again).
    """
    work = _Closure(root, ld_library_path, os.environ.get("PATH") if path_env is None else path_env, facts)
    launch = work.executable(work.tree.absolute(program), "program", argv0 or program)
    return LoadPlan(list(work.files.values()), launch.exe, launch.interp, launch.argv, launch.libraries)


def closure(
    program: str, root: str = "/", ld_library_path: str | None = None, path_env: str | None = None
) -> list[BundleFile]:
    """Files to ship for `program` (a path inside root): the program first, then in load order.

    See ``load_plan`` (this is its ``files``).
    """
    return load_plan(program, root, ld_library_path, path_env).files


def locate(path: str, root: str = "/") -> tuple[str, list[BundleFile]]:
    """Real path of `path` inside root and the symlinks met on the way there, as bundle entries.

    Raises StagingError when the path does not exist or loops.
    """
    tree = _Tree(root)
    found = tree.resolve(tree.absolute(path))
    if found is None:
        raise StagingError(f"{path}: too many symbolic links")
    real, links = found
    if not os.path.lexists(tree.host(real)):
        raise StagingError(f"{path}: no such file or directory")
    return real, [BundleFile(link, tree.host(link), "symlink", target) for link, target in links]
