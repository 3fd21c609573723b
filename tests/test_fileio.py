"""Node paths (``%h``) and the install that writes copied trees (gproc.services.fileio)."""

from __future__ import annotations

import os
import posixpath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gproc.services import fileio
from gproc.services.fileio import PathError, check_template, install, node_path

PARTS = st.sampled_from(["a", "b", "..", ".", "%h", "%%", "x%hy", "", "%", "%q"])


NAMES = st.one_of(
    st.sampled_from(["..", ".", "../..", "a/../b", "node0", "%h"]), st.text(alphabet="ab./-_%", max_size=6)
)


@given(st.lists(PARTS, max_size=6), NAMES)
def test_a_node_name_never_makes_a_path_climb(parts: list[str], name: str) -> None:
    template = "/" + "/".join(parts)
    try:
        path = node_path(template, name)
    except PathError:
        return
    assert ".." not in path.split("/")
    assert path.startswith("/")
    assert posixpath.normpath(path).count("/") >= 1
    if "%h" in template.replace("%%", ""):
        assert name in path


@pytest.mark.parametrize("name", ["..", ".", "a/b", ""])
def test_names_that_would_climb_are_refused(name: str) -> None:
    with pytest.raises(PathError):
        node_path("/tmp/%h/f", name)


def test_templates() -> None:
    assert node_path("/t/%h/f%%", "node3") == "/t/node3/f%"
    for bad in ("t/%h", "/t/../x", "/t/%z", "/t/%"):
        with pytest.raises(PathError):
            check_template(bad)


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def test_install_replaces_atomically_and_keeps_the_old_file_on_failure(tmp_path: str) -> None:
    src = os.path.join(tmp_path, "src")
    with open(src, "w") as f:
        f.write("new\n")
    dest = os.path.join(tmp_path, "dest")
    with open(dest, "w") as f:
        f.write("old\n")
    fd = os.open(src, os.O_RDONLY)
    try:
        item = ["f", "/src", 0o600, 1_000_000_000_000_000_000, 0]
        assert install({"dest": dest, "items": [item]}, [fd]) == {"ok": True, "into_dir": False}
        assert read(dest) == "new\n" and os.stat(dest).st_mtime_ns == 1_000_000_000_000_000_000
        bad = os.open(os.path.join(tmp_path, "src"), os.O_WRONLY)  # reading it fails half way in
        try:
            r = install({"dest": dest, "items": [["f", "/src", 0o600, 0, 0]]}, [bad])
        finally:
            os.close(bad)
        assert "err" in r and read(dest) == "new\n"
        assert sorted(os.listdir(tmp_path)) == ["dest", "src"]  # no temporary file left behind
    finally:
        os.close(fd)


def test_cat_reads_proc_files_whole() -> None:
    """/proc and /proc/sys files say size 0 and refuse one huge read (ENOMEM): they read in pieces."""
    for path in ("/proc/sys/kernel/pid_max", "/proc/loadavg", "/proc/self/status"):
        got = fileio.read({"path": path}, [])
        assert "data" in got, got
        assert got["data"] and got["data"].endswith(b"\n"), (path, got)
    with open("/proc/sys/kernel/pid_max", "rb") as f:
        assert fileio.read({"path": "/proc/sys/kernel/pid_max"}, [])["data"] == f.read()
