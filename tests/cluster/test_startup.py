"""The first step cannot crash (issue 17): ``gproc up`` makes the socket's directory or says in one line
why it cannot, leaves no process or directory behind when it fails, and a daemon that cannot start
says so in one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest


def gproc(*args: str, env: dict[str, str] | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gproc", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def one_line(stderr: str) -> str:
    assert stderr.startswith("gproc: ") and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    return stderr


def processes_mentioning(text: str) -> list[psutil.Process]:
    """Processes whose command line holds ``text`` (a path unique to one test)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if any(text in part for part in p.info["cmdline"] or []):
            found.append(p)
    return found


@pytest.fixture
def leftovers(tmpdir_short: str) -> Iterator[str]:
    """The test's directory; afterwards, any process still naming it is a leak (ended, by pid)."""
    yield tmpdir_short
    left = processes_mentioning(tmpdir_short)
    for p in left:
        p.kill()  # by pid: only processes this test's cluster started name its directory
    assert not left, f"processes left behind: {[p.info['cmdline'] for p in left]}"


def test_up_makes_the_socket_directory(leftovers: str) -> None:
    sock = os.path.join(leftovers, "my", "cluster", "g")
    env = {"GPROC_MASTER": sock}
    r = gproc("up", "--local", "2", "--fanout", "2", env=env)
    try:
        assert r.returncode == 0, r.stderr
        assert os.path.isdir(os.path.dirname(sock)) and stat_mode(os.path.dirname(sock)) == 0o755
        assert gproc("e", "**", "true", env=env).returncode == 0
    finally:
        assert gproc("down", env=env).returncode == 0


def stat_mode(path: str) -> int:
    return os.stat(path).st_mode & 0o777


def test_failed_up_leaves_nothing_behind(leftovers: str) -> None:
    """A cluster whose nodes are not all up in time (--timeout 0): everything it started is stopped and
    the directories it made are gone; only the logs it names remain."""
    tmp = os.path.join(leftovers, "tmp")
    os.mkdir(tmp)
    sock = os.path.join(leftovers, "new", "g")
    r = gproc("up", "--local", "3", "--timeout", "0", env={"GPROC_MASTER": sock, "TMPDIR": tmp})
    assert r.returncode == 1 and "only 0 of 3 nodes registered" in one_line(r.stderr)
    kept = r.stderr.rstrip().rsplit(" ", 1)[1]
    assert os.path.dirname(kept) == tmp and "master.log" in os.listdir(kept)
    assert os.listdir(tmp) == [os.path.basename(kept)]  # the run directory is gone, the logs kept
    assert not os.path.exists(os.path.join(leftovers, "new"))
    assert processes_mentioning(leftovers) == []


@pytest.mark.parametrize(("where", "text"), [("file/g", "not a directory"), ("file/sub/g", "cannot create")])
def test_up_says_why_it_cannot_make_the_directory(leftovers: str, where: str, text: str) -> None:
    open(os.path.join(leftovers, "file"), "w").close()
    r = gproc("up", "--local", "2", env={"GPROC_MASTER": os.path.join(leftovers, where)})
    assert r.returncode == 1 and text in one_line(r.stderr)
    assert sorted(os.listdir(leftovers)) == ["file"]


def test_up_refuses_a_socket_path_too_long(leftovers: str) -> None:
    r = gproc("up", "--local", "2", env={"GPROC_MASTER": os.path.join(leftovers, "x" * 120, "g")})
    assert r.returncode == 2 and "longer than 107 bytes" in one_line(r.stderr)
    assert os.listdir(leftovers) == []


def test_daemon_whose_port_is_taken_says_one_line(leftovers: str) -> None:
    key = os.path.join(leftovers, "key")
    assert gproc("keygen", "--key", key).returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        addr = f"127.0.0.1:{taken.getsockname()[1]}"
        node = ["s", "-myParent=127.0.0.1:1", "--listen", addr, "--key", key, "--node-socket", "none"]
        master = ["m", "--listen", addr, "--key", key, "--socket", os.path.join(leftovers, "g")]
        for args in (node, [*master, "--state", os.path.join(leftovers, "state")]):
            r = gproc(*args, timeout=30)
            assert r.returncode == 1 and "cannot start" in one_line(r.stderr), r.stderr
            assert "address already in use" in r.stderr
    r = gproc("_worker", os.path.join(leftovers, "absent.json"))
    assert r.returncode == 1 and "No such file or directory" in one_line(r.stderr)
