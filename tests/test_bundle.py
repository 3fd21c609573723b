"""gproc.bundle: what the client ships, and how the node is told to start it."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gproc.bundle import CHUNK, build
from gproc.elf import load_plan
from gproc.errors import StagingError
from gproc.services.stage import _command
from gproc.store import parse_manifest

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")


def test_program_interpreter_libraries_and_cwd(tmp_path: Path) -> None:
    b = build(["sh", "-c", "true"], path_env="/usr/bin:/bin", cwd=str(tmp_path))
    assert b is not None and b.run is not None
    kinds = {e.path: e.kind for e in b.entries.values()}
    sh = load_plan("/usr/bin/sh")
    assert b.run["exe"] == "/usr/bin/sh" and b.run["interp"] == sh.interp
    assert b.run["head"] == [["sh", False]] and b.run["libs"] == sh.libraries
    for f in sh.files:
        assert kinds[f.path] == ("l" if f.kind == "symlink" else "f"), f
    assert kinds[str(tmp_path)] == "d" and b.cwd == str(tmp_path)
    assert set(b.run["ldso"]) == {"inhibit-cache", "preload", "argv0"}  # glibc 2.33+
    for e in b.entries.values():  # every hash is the file's, and its bytes can be read back
        if e.kind == "f":
            data = b"".join(d for _, d in b.chunks(e.hash))
            assert hashlib.sha256(data).hexdigest() == e.hash and len(data) == e.size
    assert parse_manifest(b.to_wire()["files"])  # what a node accepts


def test_node_command_goes_through_the_shipped_interpreter() -> None:
    b = build(["sh", "-c", "echo hi"], path_env="/usr/bin:/bin", cwd="/")
    assert b is not None
    argv, exe = _command("/V", b.run, ["sh", "-c", "echo hi"])
    assert exe is None and argv[0] == "/V" + b.run["interp"]
    assert argv[argv.index("--argv0") + 1] == "sh" and argv[-3:] == ["/V/usr/bin/sh", "-c", "echo hi"]
    libs = argv[argv.index("--preload") + 1].split(":")
    assert libs == ["/V" + p for p in b.run["libs"]] and "--inhibit-cache" in argv
    assert all(d.startswith("/V/") for d in argv[argv.index("--library-path") + 1].split(":"))
    with pytest.raises(StagingError):
        _command("/V", {**b.run, "exe": "/../../bin/sh"}, ["sh"])


def test_script_runs_as_the_kernel_would(tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh -e\necho hi\n")
    script.chmod(0o755)
    b = build(["./job.sh", "x"], path_env="/usr/bin:/bin", cwd=str(tmp_path))
    assert b is not None and b.run is not None
    assert b.run["head"] == [["/bin/sh", False], ["-e", False], [str(script), True]]
    argv, _ = _command("/V", b.run, ["./job.sh", "x"])
    assert argv[-4:] == ["/V/bin/sh", "-e", f"/V{script}", "x"]
    assert b.entries[str(script)].mode == 0o755


def test_files_directories_and_dir_only(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data/in.txt").write_text("input\n")
    (tmp_path / "data/sub").mkdir()
    (tmp_path / "data/sub/run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "data/sub/run.sh").chmod(0o750)
    (tmp_path / "data/link").symlink_to("in.txt")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/ignored").write_text("not shipped\n")
    b = build(["true"], path_env="/usr/bin:/bin", cwd=str(tmp_path), files=["data", "empty/.", "/etc/hostname"])
    assert b is not None
    e = b.entries
    t = str(tmp_path)
    assert e[f"{t}/data"].kind == "d" and e[f"{t}/data/sub"].kind == "d"
    assert e[f"{t}/data/in.txt"].kind == "f" and e[f"{t}/data/sub/run.sh"].mode == 0o750
    assert e[f"{t}/data/link"].target == "in.txt"
    assert e[f"{t}/empty"].kind == "d" and f"{t}/empty/ignored" not in e
    assert e["/etc/hostname"].kind == "f"


def test_localbin_ships_only_files(tmp_path: Path) -> None:
    assert build(["no-such-program"], localbin=True, cwd=str(tmp_path)) is None
    (tmp_path / "f").write_text("x")
    b = build(["no-such-program"], localbin=True, cwd=str(tmp_path), files=["f"])
    assert b is not None and b.run is None and set(b.entries) == {str(tmp_path / "f"), str(tmp_path)}


def test_errors_before_anything_is_sent(tmp_path: Path) -> None:
    with pytest.raises(StagingError, match="no-such-cmd: command not found"):
        build(["no-such-cmd"], path_env="/usr/bin:/bin")
    with pytest.raises(StagingError, match="missing-file"):
        build(["true"], path_env="/usr/bin:/bin", files=[str(tmp_path / "missing-file")])
    (tmp_path / "d").mkdir()
    (tmp_path / "d/out").symlink_to("../../../../../../../../..")
    with pytest.raises(StagingError, match="outside the bundle root"):
        build(["true"], path_env="/usr/bin:/bin", files=[str(tmp_path / "d")])


@needs_gcc
def test_missing_library_names_it_and_the_directories_searched(tmp_path: Path) -> None:
    (tmp_path / "gone.c").write_text("int gone(void) { return 0; }\n")
    (tmp_path / "main.c").write_text("int gone(void);\nint main(void) { return gone(); }\n")
    cc = ["gcc", "-shared", "-fPIC", "-Wl,-soname,libgone.so.1", "-o", str(tmp_path / "libgone.so.1")]
    subprocess.run([*cc, str(tmp_path / "gone.c")], check=True)
    prog = ["gcc", "-o", str(tmp_path / "prog"), str(tmp_path / "main.c"), str(tmp_path / "libgone.so.1")]
    subprocess.run([*prog, "-Wl,-rpath,$ORIGIN/lib"], check=True)
    (tmp_path / "libgone.so.1").unlink()
    with pytest.raises(StagingError) as err:
        build([str(tmp_path / "prog")], ld_library_path="/opt/nowhere")
    text = str(err.value)
    assert "libgone.so.1 needed by" in text and f"{tmp_path}/lib" in text and "/opt/nowhere" in text


def test_big_files_come_in_chunks(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(os.urandom(2 * CHUNK + 5))
    b = build(["true"], path_env="/usr/bin:/bin", cwd=str(tmp_path), files=["big"])
    assert b is not None
    h = b.entries[str(big)].hash
    assert [(off, len(d)) for off, d in b.chunks(h)] == [(0, CHUNK), (CHUNK, CHUNK), (2 * CHUNK, 5)]
    (tmp_path / "empty").write_bytes(b"")
    b = build(["true"], path_env="/usr/bin:/bin", cwd=str(tmp_path), files=["empty"])
    assert b is not None and list(b.chunks(b.entries[str(tmp_path / "empty")].hash)) == [(0, b"")]


@needs_gcc
def test_origin_relative_libraries_are_named_by_clean_paths(tmp_path: Path) -> None:
    for d in ("bin", "lib"):
        (tmp_path / d).mkdir()
    (tmp_path / "foo.c").write_text("int foo(void) { return 0; }\n")
    (tmp_path / "main.c").write_text("int foo(void);\nint main(void) { return foo(); }\n")
    lib = tmp_path / "lib/libfoo.so.1"
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libfoo.so.1", "-o", lib, tmp_path / "foo.c"], check=True)
    main = ["gcc", "-o", tmp_path / "bin/prog", tmp_path / "main.c", lib, "-Wl,-rpath,$ORIGIN/../lib"]
    subprocess.run(main, check=True)
    b = build(["./bin/prog"], cwd=str(tmp_path))
    assert b is not None and b.run is not None
    assert b.run["libs"][0] == str(lib) and b.run["exe"] == str(tmp_path / "bin/prog")
    argv, _ = _command("/V", b.run, ["./bin/prog"])  # the node accepts every path
    assert f"/V{lib}" in argv[argv.index("--preload") + 1].split(":")
