"""gproc.elf: the program + interpreter + library closure, checked against ldd and built fixtures."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foreign_root import ForeignRootUnavailable, arm64_root
from gproc.elf import BundleFile, closure, find_program, loader_platform
from gproc.errors import CannotExecute, CommandNotFound, StagingError

PROGRAMS = [
    "/bin/ls", "/bin/bash", "/usr/bin/python3.11", os.path.realpath(sys.executable), "/usr/bin/ssh",
    "/usr/bin/curl", "/usr/bin/git", "/usr/bin/gpg", "/usr/bin/perl", "/bin/tar", "/bin/gzip",
    "/usr/bin/find", "/bin/grep", "/bin/sed", "/usr/bin/awk", "/usr/bin/openssl", "/bin/ps",
    "/usr/bin/top", "/usr/bin/less", "/usr/bin/vim.tiny", "/bin/nano", "/usr/bin/wget", "/usr/bin/apt",
    "/usr/bin/gdb", "/usr/bin/file", "/usr/bin/sqlite3", "/usr/bin/make", "/usr/bin/xz", "/usr/bin/dpkg",
    "/usr/bin/ssh-keygen", "/usr/bin/strace", "/usr/bin/node",
]  # fmt: skip
HOST_TRIPLET = "/lib/x86_64-linux-gnu"
x86_64_debian = pytest.mark.skipif(
    platform.machine() != "x86_64" or not os.path.exists(f"{HOST_TRIPLET}/libc.so.6"),
    reason="needs an x86_64 Debian-style (multiarch) host",
)
MULTIARCH = f"{platform.machine()}-linux-gnu"
# every name glibc's loader may substitute for $PLATFORM on this kind of machine: the kernel's
# AT_PLATFORM, or a CPU name glibc picks itself (sysdeps/x86/cpu-features.c: some Intel CPUs)
PLATFORM_NAMES = {"x86_64": ("x86_64", "haswell", "xeon_phi"), "aarch64": ("aarch64",)}.get(platform.machine(), ())
multiarch_host = pytest.mark.skipif(
    not PLATFORM_NAMES or not os.path.exists(f"/lib/{MULTIARCH}/libc.so.6"),
    reason="needs an x86_64 or aarch64 Debian-style (multiarch) host",
)
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")


def ldd(prog: str, llp: str | None = None) -> set[str] | None:
    """Real paths ldd resolves for prog (interpreter included); None if ldd fails or misses one."""
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    if llp is not None:
        env["LD_LIBRARY_PATH"] = llp
    out = subprocess.run(["ldd", prog], capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0 or "not found" in out.stdout:
        return None
    paths = set()
    for line in out.stdout.splitlines():
        m = re.search(r"=>\s+(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(0x", line)
        if m:
            paths.add(os.path.realpath(m.group(1)))
    return paths


def loaded(files: list[BundleFile]) -> set[str]:
    """Real paths of the interpreter and libraries of a closure."""
    return {os.path.realpath(f.source) for f in files if f.kind in ("interpreter", "library")}


def by_kind(files: list[BundleFile], kind: str) -> list[BundleFile]:
    return [f for f in files if f.kind == kind]


# --- this machine's programs against ldd --------------------------------------------------------


def test_closure_matches_ldd_for_system_programs() -> None:
    compared, diffs = [], []
    for prog in PROGRAMS:
        expected = ldd(prog) if os.path.isfile(prog) else None
        if expected is None:
            continue
        got = loaded(closure(prog, ld_library_path=None))
        compared.append(prog)
        if got != expected:
            diffs.append(f"{prog}: missing {sorted(expected - got)}, extra {sorted(got - expected)}")
    assert not diffs, "\n".join(diffs)
    assert len(compared) >= 20, f"only {len(compared)} programs compared: {compared}"


@pytest.mark.parametrize("prog", ["/bin/ls", "/usr/bin/python3", "/usr/bin/curl"])
def test_recreated_bundle_reproduces_every_path(tmp_path: Path, prog: str) -> None:
    """Symlink entries + files laid out elsewhere make the program's and ldd's paths resolve."""
    if not os.path.exists(prog):
        pytest.skip(f"{prog} absent")
    files = closure(prog)
    assert files[0].kind == "program" and os.path.samefile(files[0].source, prog)
    assert len({f.path for f in files}) == len(files)
    for f in files:
        dest = tmp_path / f.path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        real_parent = os.path.join(os.path.realpath(tmp_path), os.path.dirname(f.path).lstrip("/"))
        assert os.path.realpath(dest.parent) == real_parent.rstrip("/")
        if f.kind == "symlink":
            assert f.link_target == os.readlink(f.source)
            os.symlink(f.link_target or "", dest)
        else:
            assert not os.path.islink(f.source) and f.link_target is None
            dest.write_text(f.path)
    out = subprocess.run(["ldd", prog], capture_output=True, text=True, check=True).stdout
    wanted = [prog, *re.findall(r"(?:=>\s+|^\s*)(/\S+)\s+\(0x", out, re.M)]
    for path in wanted:
        real = closure_path(tmp_path, path)
        assert real.read_text() == os.path.realpath(path), path


def closure_path(root: Path, path: str) -> Path:
    """Follow `path` inside the recreated tree `root` (absolute links re-rooted)."""
    cur = root
    parts = path.strip("/").split("/")
    for _ in range(100):
        if not parts:
            return cur
        name = parts.pop(0)
        nxt = cur / name
        if name == "..":
            cur = cur.parent
        elif nxt.is_symlink():
            target = os.readlink(nxt)
            cur = root if target.startswith("/") else cur
            parts = [p for p in target.split("/") if p] + parts
        else:
            cur = nxt
    raise AssertionError("symlink loop")


def test_python_closure_is_fast() -> None:
    prog = os.path.realpath(sys.executable)
    start = time.perf_counter()
    closure(prog)
    assert time.perf_counter() - start < 1.0


# --- programs built here: $ORIGIN, RPATH vs LD_LIBRARY_PATH vs RUNPATH, missing libraries ------


def gcc(*args: str | Path) -> None:
    subprocess.run(["gcc", *map(str, args)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/prog_{rpath,runpath,plain,missing,dst} and their libraries under one directory."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    d = tmp_path_factory.mktemp("built")
    for sub in ("src", "lib", "alt", "bin", "dst/bin"):
        (d / sub).mkdir(parents=True)
    (d / "src/baz.c").write_text("int baz(void) { return 41; }\n")
    (d / "src/foo.c").write_text("int baz(void);\nint foo(void) { return baz() + 1; }\n")
    (d / "src/foo2.c").write_text("int foo(void) { return 42; }\n")
    (d / "src/main.c").write_text("int foo(void);\nint main(void) { return foo() == 42 ? 0 : 1; }\n")
    lib, so = d / "lib", ["-shared", "-fPIC"]
    gcc(*so, "-Wl,-soname,libbaz.so.1", "-o", lib / "libbaz.so.1", d / "src/baz.c")
    gcc(*so, "-Wl,-soname,libfoo.so.1", "-o", lib / "libfoo.so.1.0.0", d / "src/foo.c", lib / "libbaz.so.1")
    os.symlink("libfoo.so.1.0.0", lib / "libfoo.so.1")
    (d / "baz").mkdir()
    shutil.copy(lib / "libbaz.so.1", d / "baz/libbaz.so.1")
    gcc(*so, "-Wl,-soname,libfoo.so.1", "-o", d / "alt/libfoo.so.1", d / "src/foo2.c")
    gcc(*so, "-Wl,-soname,libgone.so.1", "-o", lib / "libgone.so.1", d / "src/foo2.c")
    main, link = d / "src/main.c", f"-Wl,-rpath-link,{lib}"
    rpath = "-Wl,-rpath,$ORIGIN/../lib"
    gcc("-o", d / "bin/prog_rpath", main, lib / "libfoo.so.1", link, "-Wl,--disable-new-dtags", rpath)
    gcc("-o", d / "bin/prog_runpath", main, lib / "libfoo.so.1", link, "-Wl,--enable-new-dtags", rpath)
    gcc("-o", d / "bin/prog_plain", main, d / "alt/libfoo.so.1")
    gcc("-o", d / "bin/prog_missing", main, lib / "libgone.so.1", rpath)
    (lib / "libgone.so.1").unlink()
    for name in PLATFORM_NAMES:  # one copy per name the loader may use: it picks the one it means
        (d / "dst/lib" / MULTIARCH / name).mkdir(parents=True)
        shutil.copy(d / "alt/libfoo.so.1", d / "dst/lib" / MULTIARCH / name / "libfoo.so.1")
    gcc("-o", d / "dst/bin/prog", main, d / "alt/libfoo.so.1", "-Wl,-rpath,$ORIGIN/../$LIB/${PLATFORM}")
    return d


def libfoo(files: list[BundleFile]) -> str:
    (found,) = [f for f in by_kind(files, "library") if "libfoo" in f.path]
    return os.path.realpath(found.source)


def test_rpath_with_origin(built: Path) -> None:
    files = closure(str(built / "bin/prog_rpath"))
    assert libfoo(files) == str(built / "lib/libfoo.so.1.0.0")
    assert loaded(files) == ldd(str(built / "bin/prog_rpath"))
    # libbaz (needed by libfoo, which has no RPATH) is found through the program's RPATH
    assert str(built / "lib/libbaz.so.1") in loaded(files)
    # the symlink chain: libfoo.so.1 -> libfoo.so.1.0.0, both arrive
    (link,) = [f for f in by_kind(files, "symlink") if f.path.endswith("/libfoo.so.1")]
    assert link.link_target == "libfoo.so.1.0.0"
    assert link.path == str(built / "lib/libfoo.so.1")


def test_rpath_beats_ld_library_path(built: Path) -> None:
    prog, alt = str(built / "bin/prog_rpath"), str(built / "alt")
    files = closure(prog, ld_library_path=alt)
    assert libfoo(files) == str(built / "lib/libfoo.so.1.0.0")
    assert loaded(files) == ldd(prog, llp=alt)


def test_ld_library_path_beats_runpath(built: Path) -> None:
    prog, alt = str(built / "bin/prog_runpath"), str(built / "alt")
    files = closure(prog, ld_library_path=str(built / "baz"))  # libfoo via RUNPATH, libbaz via LLP
    assert libfoo(files) == str(built / "lib/libfoo.so.1.0.0")
    assert loaded(files) == ldd(prog, llp=str(built / "baz"))
    files = closure(prog, ld_library_path=f"/nonexistent;{alt}")
    assert libfoo(files) == str(built / "alt/libfoo.so.1")
    assert loaded(files) == ldd(prog, llp=alt)


def test_runpath_applies_only_to_direct_needs(built: Path) -> None:
    """libbaz is needed by libfoo, not by the program: the program's RUNPATH does not apply."""
    prog = str(built / "bin/prog_runpath")
    assert ldd(prog) is None  # ld.so agrees: libbaz.so.1 => not found
    with pytest.raises(StagingError, match=r"libbaz\.so\.1 needed by .*/lib/libfoo\.so\.1 not found"):
        closure(prog)
    files = closure(prog, ld_library_path=str(built / "lib"))
    assert loaded(files) == ldd(prog, llp=str(built / "lib"))


def test_missing_library_names_lib_and_searched_dirs(built: Path) -> None:
    prog = str(built / "bin/prog_missing")
    with pytest.raises(StagingError) as err:
        closure(prog, ld_library_path="/nonexistent/llp")
    msg = str(err.value)
    assert msg.startswith(f"libgone.so.1 needed by {prog} not found (searched: ")
    for d in (f"{built}/bin/../lib", "/nonexistent/llp", "/etc/ld.so.cache", "/usr/lib"):
        assert d in msg


@needs_gcc
def test_origin_of_a_library_is_where_it_was_found(tmp_path: Path) -> None:
    """lib/libqux.so.1 -> ../real/libqux.so.1 with RPATH $ORIGIN/deps: glibc searches lib/deps."""
    for sub in ("lib/deps", "real/deps", "bin"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "dep.c").write_text("int dep(void) { return 1; }\n")
    (tmp_path / "qux.c").write_text("int dep(void);\nint qux(void) { return dep(); }\n")
    (tmp_path / "m.c").write_text("int qux(void);\nint main(void) { return qux(); }\n")
    dep, qux = tmp_path / "lib/deps/libdep.so.1", tmp_path / "real/libqux.so.1"
    gcc("-shared", "-fPIC", "-Wl,-soname,libdep.so.1", "-o", dep, tmp_path / "dep.c")
    gcc(
        "-shared",
        "-fPIC",
        "-Wl,-soname,libqux.so.1",
        "-o",
        qux,
        tmp_path / "qux.c",
        dep,
        "-Wl,-rpath,$ORIGIN/deps",
    )
    os.symlink("../real/libqux.so.1", tmp_path / "lib/libqux.so.1")
    prog = tmp_path / "bin/m"
    gcc("-o", prog, tmp_path / "m.c", qux, f"-Wl,-rpath-link,{dep.parent}", "-Wl,-rpath,$ORIGIN/../lib")
    files = closure(str(prog))
    assert str(dep) in loaded(files) and str(qux) in loaded(files)
    assert loaded(files) == ldd(str(prog))


@multiarch_host
def test_lib_and_platform_tokens(built: Path) -> None:
    """$LIB and $PLATFORM as this machine's loader expands them (its CPU may make $PLATFORM
    ``haswell`` where the kernel says x86_64): the same copy of libfoo as ldd, among all candidates."""
    prog = str(built / "dst/bin/prog")
    files = closure(prog)
    found = Path(libfoo(files))
    assert found.parent.parent == built / "dst/lib" / MULTIARCH and found.parent.name in PLATFORM_NAMES
    assert loaded(files) == ldd(prog)


def test_loader_platform_is_what_the_loader_says(tmp_path: Path) -> None:
    """From --list-diagnostics where the loader has it, else the AT_PLATFORM line of --help."""
    loader = tmp_path / "ld.so"
    help_text = (
        "Legacy HWCAP subdirectories under library search path directories:\n"
        "  haswell (AT_PLATFORM; supported, searched)\n  tls (supported, searched)\n"
    )
    loader.write_text(f"#!/bin/sh\n[ \"$1\" = --help ] && printf '{help_text}' && exit 0\nexit 127\n")
    loader.chmod(0o755)
    assert loader_platform(str(loader)) == "haswell"
    loader.write_text('#!/bin/sh\n[ "$1" = --list-diagnostics ] && echo \'dl_platform="xeon_phi"\' && exit 0\nexit 1\n')
    assert loader_platform(str(loader)) == "xeon_phi"
    loader.write_text("#!/bin/sh\nexit 1\n")
    assert loader_platform(str(loader)) is None


def test_wrong_machine_candidate_is_skipped(built: Path, tmp_path: Path) -> None:
    """A same-named library of another machine is passed over, as ld.so does."""
    data = bytearray((built / "alt/libfoo.so.1").read_bytes())
    data[18:20] = (183).to_bytes(2, "little" if data[5] == 1 else "big")  # EM_AARCH64
    (tmp_path / "libfoo.so.1").write_bytes(bytes(data))
    llp = f"{tmp_path}:{built / 'alt'}"
    files = closure(str(built / "bin/prog_plain"), ld_library_path=llp)
    assert libfoo(files) == str(built / "alt/libfoo.so.1")
    assert loaded(files) == ldd(str(built / "bin/prog_plain"), llp=llp)


# --- scripts, PATH lookup, rejects ---------------------------------------------------------------


def test_find_program(tmp_path: Path) -> None:
    (tmp_path / "ls").write_text("not executable")
    assert find_program("ls", f"{tmp_path}:/usr/bin:/bin") in ("/usr/bin/ls", "/bin/ls")
    assert find_program("/bin/sh", None) == "/bin/sh"
    with pytest.raises(StagingError, match="no-such-cmd"):
        find_program("no-such-cmd", "/usr/bin:/bin")
    with pytest.raises(CommandNotFound, match="No such file or directory"):
        find_program("/nonexistent/prog", "/usr/bin")


def test_find_program_fails_as_a_shell_does(tmp_path: Path) -> None:
    """Not found: 127; a directory or a file without execute permission: 126 (what sh says)."""
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    for cmd, kind, text in (
        (str(tmp_path), CannotExecute, "Is a directory"),
        (str(script), CannotExecute, "Permission denied"),
        (str(tmp_path / "absent"), CommandNotFound, "No such file or directory"),
        ("no-such-cmd", CommandNotFound, "command not found"),
    ):
        with pytest.raises(kind, match=text) as caught:
            find_program(cmd, "/usr/bin:/bin")
        assert caught.value.exit_status == (126 if kind is CannotExecute else 127)
    script.chmod(0o755)
    assert find_program(str(script), None) == str(script)
    with pytest.raises(CommandNotFound, match="the root does not exist"):
        find_program("ls", "/bin", root=str(tmp_path / "no-root"))
    with pytest.raises(CommandNotFound, match="the root is not a directory"):
        find_program("ls", "/bin", root=str(script))


def test_script_brings_interpreter_closure(tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#! /bin/sh -e\necho hi\n")
    files = closure(str(script))
    assert files[0] == BundleFile(str(script), str(script), "program")
    (interp,) = by_kind(files, "script-interpreter")
    assert os.path.samefile(interp.source, "/bin/sh")
    assert loaded(files) == ldd("/bin/sh")


def test_env_script_resolves_command_through_path(tmp_path: Path) -> None:
    pydir = os.path.dirname(os.path.realpath(sys.executable))
    script = tmp_path / "job.py"
    script.write_text("#!/usr/bin/env python3\nprint('hi')\n")
    files = closure(str(script), path_env=f"{pydir}:/usr/bin:/bin")
    interps = {os.path.realpath(f.source) for f in by_kind(files, "script-interpreter")}
    python = os.path.realpath(os.path.join(pydir, "python3"))
    assert interps == {os.path.realpath("/usr/bin/env"), python}
    assert loaded(files) == (ldd("/usr/bin/env") or set()) | (ldd(python) or set())


def test_script_interpreter_missing(tmp_path: Path) -> None:
    script = tmp_path / "job"
    script.write_text("#!/usr/bin/env no-such-interpreter-xyz\n")
    with pytest.raises(StagingError, match="no-such-interpreter-xyz"):
        closure(str(script))


def test_not_elf_nor_script_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("hello\n")
    with pytest.raises(StagingError, match="neither an ELF executable nor"):
        closure(str(tmp_path / "data"))
    (tmp_path / "short").write_bytes(Path("/bin/ls").read_bytes()[:200])
    with pytest.raises(StagingError, match="malformed ELF"):
        closure(str(tmp_path / "short"))
    with pytest.raises(StagingError, match="no such file"):
        closure(str(tmp_path / "absent"))


# --- -r ROOT -------------------------------------------------------------------------------------


@x86_64_debian
@needs_gcc
def test_root_never_escapes_to_host(built: Path, tmp_path: Path) -> None:
    """A hand-made x86_64 root: absolute links re-rooted, '..' clamped, ld.so.conf includes read."""
    root = tmp_path / "root"
    for sub in ("usr/bin", "lib/x86_64-linux-gnu", "opt/mylib", "etc/ld.so.conf.d", "wrong"):
        (root / sub).mkdir(parents=True)
    shutil.copy(built / "bin/prog_plain", root / "usr/bin/prog")
    with pytest.raises(StagingError, match=r"interpreter /lib64/ld-linux-x86-64\.so\.2 .* not found"):
        closure("/usr/bin/prog", root=str(root))
    for name in ("ld-linux-x86-64.so.2", "libc.so.6"):
        shutil.copy(os.path.realpath(f"{HOST_TRIPLET}/{name}"), root / "lib/x86_64-linux-gnu" / name)
    os.symlink("/lib/x86_64-linux-gnu", root / "lib64")  # absolute: must mean ROOT/lib/...
    os.symlink("../../../../../../../../usr/lib/x86_64-linux-gnu", root / "escape")  # clamps at ROOT
    with pytest.raises(StagingError) as err:
        closure("/usr/bin/prog", root=str(root), ld_library_path="/escape")
    assert "libfoo.so.1 needed by /usr/bin/prog not found" in str(err.value)
    assert "/etc/ld.so.cache" not in str(err.value)  # ROOT has none: ld.so.conf dirs instead
    shutil.copy(built / "alt/libfoo.so.1", root / "opt/mylib/libfoo.so.1")
    (root / "etc/ld.so.conf").write_text("# test\ninclude ld.so.conf.d/*.conf\n")
    (root / "etc/ld.so.conf.d/my.conf").write_text("/opt/mylib/\n")
    bad = bytearray(Path(f"{HOST_TRIPLET}/libc.so.6").read_bytes())
    bad[18:20] = (183).to_bytes(2, "little")  # same name, EM_AARCH64: skipped
    (root / "wrong/libc.so.6").write_bytes(bytes(bad))
    files = closure("/usr/bin/prog", root=str(root), ld_library_path="/escape:/wrong")
    assert all(f.source == f"{root}{f.path}" for f in files)
    assert {f.path for f in files if f.kind != "symlink"} == {
        "/usr/bin/prog",
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "/opt/mylib/libfoo.so.1",
        "/lib/x86_64-linux-gnu/libc.so.6",
    }
    assert BundleFile("/lib64", f"{root}/lib64", "symlink", "/lib/x86_64-linux-gnu") in files


@pytest.fixture(scope="session")
def arm64() -> str:
    try:
        return arm64_root()
    except ForeignRootUnavailable as exc:
        pytest.skip(f"cannot build the arm64 root (apt-get download/dpkg -x): {exc}")


def test_foreign_arm64_root(arm64: str) -> None:
    prog = find_program("ls", "/usr/bin:/bin", root=arm64)
    files = closure(prog, root=arm64, ld_library_path="/usr/lib/x86_64-linux-gnu")
    for f in files:
        assert f.source == arm64 + f.path and os.path.lexists(f.source), f
        if f.kind != "symlink":
            with open(f.source, "rb") as stream:
                elf = ELFFile(stream)
                assert (elf["e_machine"], elf.elfclass) == ("EM_AARCH64", 64), f
    (interp,) = by_kind(files, "interpreter")
    assert os.path.samefile(interp.source, os.path.join(arm64, "lib/ld-linux-aarch64.so.1"))
    assert any(f.path == "/lib/ld-linux-aarch64.so.1" and f.kind == "symlink" for f in files)
    names = {os.path.basename(f.path) for f in files}
    assert {"libc.so.6", "libselinux.so.1", "libpcre2-8.so.0"} <= names
    assert not any(f.source.startswith(("/lib/", "/usr/")) for f in files)


# --- robustness ----------------------------------------------------------------------------------

SAMPLE = Path("/bin/true").read_bytes() if os.path.exists("/bin/true") else b"\x7fELF"
mutations = st.lists(
    st.tuples(st.one_of(st.integers(0, 127), st.integers(0, len(SAMPLE) - 1)), st.integers(0, 255)),
    max_size=12,
)


def mutate(edits: list[tuple[int, int]]) -> bytes:
    data = bytearray(SAMPLE)
    for pos, value in edits:
        data[pos] = value
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=2048), st.builds(mutate, mutations), st.binary().map(b"#!".__add__)))
def test_arbitrary_bytes_give_result_or_staging_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "prog")
        with open(path, "wb") as f:
            f.write(data)
        try:
            files = closure(path)
        except StagingError:
            return
        assert files[0].path == path


def _ld_cache(entries: list[tuple[int, str, str, int]]) -> bytes:
    """A new-format ld.so.cache: (flags, name, path, hwcap) entries, strings sharing tails as
    ldconfig stores them (a name that ends a path is not stored again)."""
    import struct

    strings = b""
    offsets: dict[str, int] = {}
    header = 48 + 24 * len(entries)

    def place(s: str) -> int:
        nonlocal strings
        if s not in offsets:
            found = strings.find(s.encode() + b"\0")
            if found < 0:
                found = len(strings)
                strings += s.encode() + b"\0"
            offsets[s] = header + found
        return offsets[s]

    for _, _, path, _ in entries:  # paths first, so names can be their tails
        place(path)
    table = b"".join(struct.pack("<iIIIQ", f, place(name), place(path), 0, hw) for f, name, path, hw in entries)
    head = b"glibc-ld.so.cache1.1" + struct.pack("<IIB3xI12x", len(entries), len(strings), 2, 0)
    return head + table + strings


def test_ld_cache_lookup_in_order_with_shared_tails() -> None:
    from gproc.elf import LdCache

    data = _ld_cache([
        (0x303, "libxlibc.so.6", "/lib/x86_64-linux-gnu/libxlibc.so.6", 0),  # "libc.so.6" is stored in it
        (0x303, "libm.so.6", "/lib/x86_64-linux-gnu/libm.so.6", 0),
        (0x303, "libc.so.6", "/opt/first/libc.so.6", 0),
        (0x303, "libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6", 0),
        (0x303, "libc.so.6", "/lib/hwcap/libc.so.6", 1 << 40),  # an hwcap entry: not a baseline one
        (0x000, "libold.so.1", "/lib/libold.so.1", 0),  # not libc6 ELF
    ])  # fmt: skip
    c = LdCache(data)
    assert c.get("libc.so.6", []) == ["/opt/first/libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6"]
    assert c.get("libxlibc.so.6", []) == ["/lib/x86_64-linux-gnu/libxlibc.so.6"]
    assert c.get("libm.so.6", []) == ["/lib/x86_64-linux-gnu/libm.so.6"]
    assert c.get("libold.so.1", []) == [] and c.get("x86_64-linux-gnu", ["none"]) == ["none"]
    assert c and not LdCache(b"") and not LdCache(b"glibc-ld.so.cache1.1 truncated")
