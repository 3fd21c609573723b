"""``gproc mount``: a real FUSE mount of a real local cluster, read and written with plain file calls."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest
from tests.cluster.users import NOBODY, as_user, needs_root
from tests.conftest import LocalCluster, start_cluster, stop_cluster

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse: FUSE is not available here"),
    pytest.mark.skipif(shutil.which("fusermount3") is None, reason="fusermount3 missing (Debian package fuse3)"),
]

MOUNT_WAIT = 60.0


class Mount:
    """``gproc mount -f`` in a process of its own, unmounted and ended by ``close``."""

    def __init__(self, c: LocalCluster, where: str, *args: str) -> None:
        self.dir = where
        env = {**os.environ, "GPROC_MASTER": c.socket}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gproc", "mount", "-f", where, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + MOUNT_WAIT
        while not os.path.ismount(where):
            if self.proc.poll() is not None:
                said = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise AssertionError(f"gproc mount ended: {said}")
            if time.monotonic() > deadline:
                self.close()
                raise AssertionError("the mount did not come up")
            time.sleep(0.05)

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    def close(self) -> None:
        if os.path.ismount(self.dir):
            subprocess.run(["fusermount3", "-u", self.dir], capture_output=True, timeout=30)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(10)
            subprocess.run(["fusermount3", "-u", "-z", self.dir], capture_output=True, timeout=30)
            raise AssertionError("the mount process did not end when unmounted") from None
        finally:
            if self.proc.stderr is not None:
                self.proc.stderr.close()


@pytest.fixture(scope="module")
def c4() -> Iterator[LocalCluster]:
    c, d = start_cluster(4, 4)
    os.chmod(os.path.dirname(c.socket), 0o755)  # another user reaches the master (and the mount) too
    try:
        yield c
    finally:
        stop_cluster(c, d)


@pytest.fixture(scope="module")
def mnt(c4: LocalCluster) -> Iterator[Mount]:
    where = os.path.join(os.path.dirname(c4.socket), "mnt")
    os.mkdir(where)
    m = Mount(c4, where)
    try:
        yield m
    finally:
        m.close()
    assert not os.path.ismount(where)


def batch(c: LocalCluster, node: str, script: str) -> tuple[int, int]:
    """Start ``sh -c script`` on ``node`` as a batch job: (job id, gpid of its shell)."""
    r = c.gproc("e", "--batch", "-w", node, "--", "sh", "-c", script, check=True)
    job = int(r.stdout.strip())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = [json.loads(line) for line in c.gproc("ps", "--json", check=True).stdout.splitlines()]
        mine = [r for r in rows if r["job"] == job and r["parent_gpid"] == 0]
        if mine:
            return job, int(mine[0]["gpid"])
        time.sleep(0.1)
    raise AssertionError(f"job {job} never showed in ps")


def test_nodes_lists_every_node_and_reads_their_files(mnt: Mount) -> None:
    assert sorted(os.listdir(mnt.path())) == ["all", "jobs", "nodes", "proc"]
    assert sorted(os.listdir(mnt.path("nodes"))) == ["node0", "node1", "node2", "node3"]
    with open("/etc/hostname", "rb") as f:
        here = f.read()
    with open(mnt.path("nodes", "node2", "etc", "hostname"), "rb") as f:
        assert f.read() == here
    assert "hostname" in os.listdir(mnt.path("nodes", "node2", "etc"))
    with pytest.raises(FileNotFoundError):
        os.stat(mnt.path("nodes", "node9"))
    with pytest.raises(FileNotFoundError):
        os.stat(mnt.path("nodes", "node1", "etc", "no-such-file"))


def test_a_file_that_differs_is_one_entry_per_class(mnt: Mount) -> None:
    d = tempfile.mkdtemp(prefix="gpt-mnt-", dir="/tmp")
    try:
        for i in range(4):
            os.mkdir(os.path.join(d, f"node{i}"))
            with open(os.path.join(d, f"node{i}", "conf"), "w") as f:
                f.write("odd\n" if i == 3 else "same\n")
        merged = mnt.path("all", d.lstrip("/"))
        assert sorted(os.listdir(merged)) == ["node0", "node1", "node2", "node3"]  # the union of names
        classes = mnt.path("all", d.lstrip("/"), "%h", "conf")
        assert sorted(os.listdir(classes)) == ["node3", "node[0-2]"]
        with open(os.path.join(classes, "node[0-2]")) as f:
            assert f.read() == "same\n"
        with open(os.path.join(classes, "node3")) as f:
            assert f.read() == "odd\n"
        assert not os.path.exists(os.path.join(classes, ".errors"))
        for nowhere in (mnt.path("all", d.lstrip("/"), "nope"), os.path.join(classes, "nope"), mnt.path("all", "nope")):
            with pytest.raises(FileNotFoundError):
                os.stat(nowhere)
            with pytest.raises(FileNotFoundError):
                os.listdir(nowhere)
        os.unlink(os.path.join(d, "node1", "conf"))
        time.sleep(2.5)  # the mount's cache time
        assert sorted(os.listdir(classes)) == [".errors", "node3", "node[0,2]"]
        with open(os.path.join(classes, ".errors")) as f:
            assert f.read() == f"node1: {d}/%h/conf: No such file or directory\n"
    finally:
        shutil.rmtree(d)


def test_kill_9_through_ctl_ends_the_process(c4: LocalCluster, mnt: Mount) -> None:
    _job, gpid = batch(c4, "node1", "sleep 300")
    ctl = mnt.path("proc", str(gpid), "ctl")
    subprocess.run(["sh", "-c", f"echo kill 9 > {ctl}"], check=True, timeout=30)
    r = c4.gproc("wait", str(gpid), timeout=60)
    assert r.returncode == 137, r.stderr


def test_bad_writes_to_ctl_get_einval(c4: LocalCluster, mnt: Mount) -> None:
    _job, gpid = batch(c4, "node2", "sleep 300")
    ctl = mnt.path("proc", str(gpid), "ctl")
    try:
        for bad in (b"bogus\n", b"kill 99\n", b"kill 9 9\n", b"\xff\n"):
            fd = os.open(ctl, os.O_WRONLY)
            try:
                with pytest.raises(OSError) as e:
                    os.write(fd, bad)
                assert e.value.errno == errno.EINVAL, bad
            finally:
                os.close(fd)
        assert os.path.exists(mnt.path("proc", str(gpid))), "a bad write signalled the process"
    finally:
        c4.gproc("kill", "-9", str(gpid))


def test_stdout_follows_the_output_to_the_end(c4: LocalCluster, mnt: Mount) -> None:
    job, gpid = batch(c4, "node0", "echo one; sleep 3; echo two; sleep 2")  # alive while a loaded machine looks
    with open(mnt.path("proc", str(gpid), "stdout"), "rb") as f:
        assert f.read() == b"one\ntwo\n"  # returns only once the job has ended
    with open(mnt.path("jobs", str(job), "output"), "rb") as f:
        assert f.read() == b"node0: one\nnode0: two\n"
    with open(mnt.path("jobs", str(job), "status")) as f:
        assert "state:\tdone" in f.read()


@needs_root
def test_another_user_sees_none_of_roots_processes(c4: LocalCluster, mnt: Mount) -> None:
    _job, gpid = batch(c4, "node3", "sleep 300")
    try:
        assert str(gpid) in os.listdir(mnt.path("proc"))
        proc_dir = mnt.path("proc")

        def look() -> dict[str, object]:
            try:
                os.stat(os.path.join(proc_dir, str(gpid)))
                seen = True
            except FileNotFoundError:
                seen = False
            return {"listed": os.listdir(proc_dir), "stat": seen}

        got = as_user(NOBODY, look)
        assert got == {"listed": [], "stat": False}, got
    finally:
        c4.gproc("kill", "-9", str(gpid))


def test_the_mount_ends_when_the_master_goes_away() -> None:
    c, d = start_cluster(1, 1)
    where = tempfile.mkdtemp(prefix="gpt-mnt-", dir="/tmp")
    try:
        m = Mount(c, where)
        try:
            assert os.listdir(m.path("nodes")) == ["node0"]
            stop_cluster(c, d)
            m.proc.wait(30)
            assert not os.path.ismount(where)
        finally:
            m.close()
    finally:
        stop_cluster(c, d) if os.path.exists(d) else None
        os.rmdir(where)
