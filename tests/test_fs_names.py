"""The mount's synthetic files as pure functions: ctl commands, class names, errnos, status text."""

from __future__ import annotations

import errno
import os
import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gproc import platform
from gproc.fs import names
from gproc.fs.sources import merged_template, node_template
from gproc.services import fileio


@pytest.mark.parametrize(
    ("text", "sig"),
    [
        (b"kill 9\n", 9),
        (b"kill\n", int(signal.SIGTERM)),
        (b"kill -KILL", 9),
        (b"kill SIGSTOP", int(signal.SIGSTOP)),
        (b"kill usr1", int(signal.SIGUSR1)),
        (b"stop\n", int(signal.SIGSTOP)),
        (b"  cont  \n", int(signal.SIGCONT)),
    ],
)
def test_ctl_commands(text: bytes, sig: int) -> None:
    assert names.parse_ctl(text) == sig


@pytest.mark.parametrize(
    "text", [b"", b"\n", b"kil 9", b"kill 0", b"kill 99", b"kill 9 9", b"kill NOPE", b"stop now", b"\xff", b"9"]
)
def test_bad_ctl_commands(text: bytes) -> None:
    with pytest.raises(names.BadCommand):
        names.parse_ctl(text)


@given(st.binary(max_size=40))
def test_any_write_is_a_signal_or_bad(data: bytes) -> None:
    try:
        sig = names.parse_ctl(data)
    except names.BadCommand:
        return
    assert 0 < sig < signal.NSIG


def test_class_names_are_node_sets_within_a_name_and_unique() -> None:
    assert names.class_name("node[0-62]", set()) == "node[0-62]"
    long = "node[" + ",".join(str(i) for i in range(0, 400, 2)) + "]"
    a = names.class_name(long, set())
    assert len(a.encode()) <= names.NAME_MAX and a.startswith("node[0,2,4")
    assert names.class_name(long, {a}) != a
    assert names.class_name(".", set()) not in (".", "..")


def test_errno_of_a_node_error() -> None:
    assert names.errno_of("/x/y: No such file or directory") == errno.ENOENT
    assert names.errno_of("/x: Permission denied") == errno.EACCES
    assert names.errno_of("something else") == errno.EIO


def test_status_text_reads_as_proc_status() -> None:
    text = names.proc_status({"gpid": 7, "name": "node1", "cmd": "sleep 1"}).decode()
    assert "gpid:\t7\n" in text and "node:\tnode1\n" in text and "cmd:\tsleep 1\n" in text


def test_templates_keep_percent_literal_except_h_in_the_merged_view() -> None:
    assert fileio.node_path(node_template("/a/100%h"), "n1") == "/a/100%h"
    assert fileio.node_path(merged_template("/a/%h/100%"), "n1") == "/a/n1/100%"


def test_a_listing_says_what_the_path_is_then_its_names(tmp_path: os.PathLike[str]) -> None:
    d = str(tmp_path)
    os.mkdir(os.path.join(d, "sub"))
    with open(os.path.join(d, "f"), "w") as f:
        f.write("abc")
    os.symlink("f", os.path.join(d, "l"))
    r = fileio.listdir({"path": d}, [])
    got = {e[0]: e for e in r["entries"]}
    assert got["."][1] == "dir" and got["sub"][1] == "dir" and got["f"][1:3] == ["file", 3]
    assert got["l"][1] == "link" and got["l"][7] == "f"
    assert [e[0] for e in fileio.listdir({"path": d, "names": False}, [])["entries"]] == ["."]
    assert fileio.listdir({"path": os.path.join(d, "l")}, [])["entries"][0][1] == "file"  # followed
    assert "err" in fileio.listdir({"path": os.path.join(d, "nope")}, [])


def test_mount_table_and_pending_signals_are_read_from_the_kernel() -> None:
    if not platform.IS_LINUX:
        pytest.skip("Linux only")
    assert platform.is_mounted("/proc")
    assert not platform.is_mounted("/proc/self")
    assert platform._unescape(rb"/a\040b") == "/a b"
    assert not platform.signal_pending(os.getpid())
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        os.kill(os.getpid(), signal.SIGUSR1)  # held pending by the mask
        assert platform.signal_pending(os.getpid())
        assert signal.sigtimedwait({signal.SIGUSR1}, 5) is not None
        assert not platform.signal_pending(os.getpid())
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
