"""Peer credentials and the per-user connection bound (pure parts of gproc.peers)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
import tempfile

import pytest

from gproc import peers

NOBODY = 65534


def test_peer_ids_are_the_kernels() -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        pid, uid, gid = peers.peer_ids(a)
        assert (uid, gid) == (os.geteuid(), os.getegid())
        assert pid in (0, os.getpid())


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
def test_without_so_peercred_credentials_are_read_or_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The BSD/macOS path (getpeereid through ctypes): the peer's real ids, or PermissionError where
    the C library has no getpeereid (glibc); never this process's own ids taken on trust."""
    monkeypatch.setattr(peers, "IS_LINUX", False)
    folder = tempfile.mkdtemp(prefix="gpt-", dir="/tmp")  # pytest's tmp_path is closed to other users
    path = os.path.join(folder, "s")
    with contextlib.ExitStack() as cleanup, socket.socket(socket.AF_UNIX) as srv:
        cleanup.callback(shutil.rmtree, folder)
        srv.bind(path)
        os.chmod(folder, 0o755)
        os.chmod(path, 0o777)
        srv.listen()
        srv.settimeout(10)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child: connects as nobody and waits to be closed
            try:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                with socket.socket(socket.AF_UNIX) as c:
                    c.connect(path)
                    c.recv(1)
            finally:
                os._exit(0)
        conn, _ = srv.accept()
        try:
            got = peers.peer_ids(conn)
        except PermissionError:
            assert not hasattr(ctypes.CDLL(None), "getpeereid"), "getpeereid exists but was not used"
        else:
            assert got == (0, NOBODY, NOBODY)
        finally:
            conn.close()
            os.waitpid(pid, 0)


def test_client_limit_is_per_user_and_released() -> None:
    lim = peers.ClientLimit(per_user=2)
    assert lim.enter(1000) and lim.enter(1000) and not lim.enter(1000)
    assert lim.enter(1001), "another user is not affected"
    assert all(lim.enter(0) for _ in range(5)), "root is not bounded"
    lim.leave(1000)
    assert lim.enter(1000)
