"""Where one user's rights end on a node: a job's working directory is one its user could enter (and
create) itself, never one the root daemon's rights reached."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ClusterShell.NodeSet  # noqa: F401  (loaded before as_user drops to a user who cannot read root's site-packages)
import pytest
from tests.cluster.daemons import Daemon, wait_until
from tests.cluster.users import NOBODY, as_user, needs_root
from tests.conftest import LocalCluster, start_cluster, stop_cluster

from gproc import Cluster, peers
from gproc import bundle as _bundle  # noqa: F401  (loaded before as_user drops to a user who cannot read root's site-packages)
from gproc.errors import GprocError

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def c2() -> Iterator[LocalCluster]:
    c, d = start_cluster(2, 2)
    os.chmod(os.path.dirname(c.socket), 0o755)  # let another user reach the master's socket
    try:
        yield c
    finally:
        stop_cluster(c, d)


def pwd_as(c: LocalCluster, uid: int, cwds: list[str]) -> dict[str, Any]:
    """What ``pwd`` says for a ``-localbin`` job of ``uid`` asked to start in each of ``cwds``."""

    def run() -> dict[str, Any]:
        async def go() -> dict[str, Any]:
            k, out = Cluster(c.socket), {}
            for cwd in cwds:
                job = await k.exec(["pwd"], include="node1", cwd=cwd, localbin=True)
                async for ev in job:
                    data = getattr(ev, "data", None)
                    if data is not None:
                        out[cwd] = (data.decode() if isinstance(data, bytes) else data).strip()
            return out

        return asyncio.run(go())

    return as_user(uid, run)  # type: ignore[no-any-return]


@needs_root
def test_workdir_is_entered_and_made_as_the_user(c2: LocalCluster) -> None:
    closed = tempfile.mkdtemp(prefix="gpt-closed-", dir="/tmp")  # root's, mode 0700
    open_ = tempfile.mkdtemp(prefix="gpt-open-", dir="/tmp")
    os.chmod(open_, 0o1777)
    try:
        want_made = os.path.join(open_, "made", "deeper")
        got = pwd_as(c2, NOBODY, [closed, os.path.join(closed, "new"), want_made])
        assert "exception" not in got, got
        # a directory the user cannot enter or create is not given to the job: it starts in /
        assert got[closed] == "/" and got[os.path.join(closed, "new")] == "/", got
        assert not os.path.exists(os.path.join(closed, "new")), "root made a directory for another user"
        # one the user may create is made, and is the user's own
        assert got[want_made] == want_made, got
        assert os.stat(want_made).st_uid == NOBODY and os.stat(os.path.join(open_, "made")).st_uid == NOBODY
    finally:
        shutil.rmtree(closed)
        shutil.rmtree(open_)


class Listener:
    """A socket at ``path`` that ``uid`` listens on (a forked child: this Python may be unreadable to
    that user); it reports, per connection, the bytes it got, until one brings ``marker``."""

    def __init__(self, uid: int, path: str) -> None:
        r, w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                os.close(r)
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                self._serve(path, w)
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        self.out = os.fdopen(r)
        assert self.out.readline() == "ready\n"

    @staticmethod
    def _serve(path: str, w: int) -> None:  # pragma: no cover - the child
        s = socket.socket(socket.AF_UNIX)
        s.bind(path)
        s.listen()
        os.write(w, b"ready\n")
        s.settimeout(30)
        while True:
            c, _ = s.accept()
            c.settimeout(30)
            data = b""
            while chunk := c.recv(65536):
                data += chunk
            os.write(w, repr(data).encode() + b"\n")
            if data == b"marker":
                return

    def received(self, path: str) -> list[str]:
        """What it got before our marker (sent now, after the client under test has finished)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            s.sendall(b"marker")
        lines = self.out.read().splitlines()
        _, status = os.waitpid(self.pid, 0)
        self.pid = 0
        assert status == 0 and lines[-1:] == ["b'marker'"], lines
        return lines[:-1]

    def end(self) -> None:
        if self.pid:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        self.out.close()


@needs_root
@pytest.mark.parametrize("owned_by_root", [False, True])
def test_client_sends_nothing_to_another_users_socket(c2: LocalCluster, tmpdir_short: str, owned_by_root: bool) -> None:
    os.chmod(tmpdir_short, 0o1777)  # like /tmp: anyone may bind there
    path = os.path.join(tmpdir_short, "g")
    p = Listener(NOBODY, path)
    try:
        if owned_by_root:  # the file says root, the listening process is still nobody's
            os.chown(path, 0, 0)
        r = c2.gproc("e", "-w", "node1", "true", env={"GPROC_MASTER": path, "SECRET": "x"})
        assert r.returncode != 0 and len(r.stderr.splitlines()) == 1 and "refusing" in r.stderr, r.stderr
        assert "65534" in r.stderr, r.stderr
        got = p.received(path)
    finally:
        p.end()
    # refused by the file's owner before connecting, or by the listener's credentials right after
    assert got == (["b''"] if owned_by_root else []), got


@needs_root
def test_client_refuses_a_socket_in_another_users_directory(c2: LocalCluster, tmpdir_short: str) -> None:
    folder = os.path.join(tmpdir_short, "d")
    os.mkdir(folder)
    os.symlink(c2.socket, os.path.join(folder, "g"))  # root's own master, reached through nobody's directory
    os.chown(folder, NOBODY, NOBODY)
    r = c2.gproc("e", "-w", "node1", "true", env={"GPROC_MASTER": os.path.join(folder, "g")})
    # the symlink resolves to root's socket: trusted; a real socket file in that directory is not
    assert r.returncode == 0, r.stderr
    os.unlink(os.path.join(folder, "g"))
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(os.path.join(folder, "g"))
        r = c2.gproc("e", "-w", "node1", "true", env={"GPROC_MASTER": os.path.join(folder, "g")})
    assert r.returncode != 0 and len(r.stderr.splitlines()) == 1, r.stderr
    assert f"its directory {folder} belongs to uid 65534" in r.stderr, r.stderr


@needs_root
def test_node_refuses_a_socket_directory_another_user_made(c2: LocalCluster, tmpdir_short: str) -> None:
    folder = os.path.join(tmpdir_short, "xproc")
    os.mkdir(folder)
    os.chown(folder, NOBODY, NOBODY)  # made by someone else before the daemon first ran
    sock = os.path.join(folder, "n.sock")
    log = os.path.join(tmpdir_short, "n.log")
    args = ["s", "-myParent=" + c2.master_address, "-myId=100", "--name", "extra", "--key", c2.key]
    d = Daemon(*args, "--node-socket", sock, "--listen", "127.0.0.1:0", f"-binRoot={tmpdir_short}/bin", log=log)
    try:
        wait_until(lambda: "not serving a client socket" in Path(log).read_text(), 20, "the daemon to refuse")
        assert "belongs to uid 65534" in Path(log).read_text()
        assert not os.path.exists(sock)
        assert d.alive(), "the daemon itself keeps running (as a node without a client socket)"
    finally:
        d.end()


@needs_root
def test_a_user_holds_a_bounded_number_of_connections(c2: LocalCluster) -> None:
    def run() -> dict[str, Any]:
        async def go() -> dict[str, Any]:
            held = [socket.socket(socket.AF_UNIX) for _ in range(peers.MAX_CLIENTS_PER_USER)]
            try:
                for s in held:  # silent connections: each is counted from its accept until it closes
                    s.connect(c2.socket)
                await Cluster(c2.socket).info()
                return {"refused": False}
            except GprocError as e:
                refused = str(e)
            finally:
                for s in held:
                    s.close()
            for _ in range(100):  # the master notices the closes as it reads them
                try:
                    await Cluster(c2.socket).info()
                    return {"refused": refused, "again": True}
                except GprocError:
                    await asyncio.sleep(0.05)
            return {"refused": refused, "again": False}

        return asyncio.run(go())

    got = as_user(NOBODY, run)
    assert got.get("refused") and "too many connections" in got["refused"], got
    assert got["again"], "closed connections must no longer count"
    # root is not bounded, and other users are not affected (here: root, while nobody was full)
    assert c2.gproc("i").returncode == 0
