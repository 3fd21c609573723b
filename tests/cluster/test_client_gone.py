"""The master goes away while the client sends it files, or in the middle of a message: ``gproc e``
says so in one line and exits 255, never a traceback nor "truncated frame". Found by the chaos suite
(seed 13 at 48 nodes): a master restarted while it asked a client for files; the client took the
broken connection for a file it could not read and wrote an error record on the closed connection,
which uvloop refuses with a RuntimeError."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading

import pytest

from gproc import wire

pytestmark = pytest.mark.cluster


def _frame(s: socket.socket) -> dict[str, object]:
    head = b""
    while len(head) < 4:
        head += s.recv(4 - len(head))
    (n,) = struct.unpack(">I", head)
    body = b""
    while len(body) < n:
        body += s.recv(n - len(body))
    return wire.unpack(body)


def _master_that_hangs_up(listener: socket.socket, big: str) -> None:
    """Take one exec request, ask for the big file, then close (as a master killed at that moment)."""
    conn, _ = listener.accept()
    with conn:
        wire.check_hello(_frame(conn), "client")
        conn.sendall(wire.pack(wire.hello("master", name="master")))
        req = _frame(conn)
        files = req["bundle"]["files"]  # type: ignore[index]
        h = next(e[2] for e in files if e[0] == "f" and e[1].endswith(os.path.basename(big)))
        conn.sendall(wire.pack({"t": "job", "job": 1, "n": 1, "absent": ""}))
        conn.sendall(wire.pack({"t": "want", "h": [h]}))
        conn.shutdown(socket.SHUT_RDWR)


def test_master_gone_while_files_are_sent(tmpdir_short: str) -> None:
    big = os.path.join(tmpdir_short, "big.bin")
    with open(big, "wb") as f:
        f.write(os.urandom(32 << 20))  # far more than the socket buffers take
    path = os.path.join(tmpdir_short, "g")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    t = threading.Thread(target=_master_that_hangs_up, args=(listener, big), daemon=True)
    t.start()
    try:
        r = subprocess.run(
            [sys.executable, "-m", "gproc", "e", "-n", "-f", big, "-w", "node1", "true"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "GPROC_MASTER": path},
        )
    finally:
        t.join(10)
        listener.close()
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 255, r.stderr
    assert r.stderr.count("\n") == 1 and "master" in r.stderr, r.stderr


def _master_that_dies_mid_message(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    with conn:
        wire.check_hello(_frame(conn), "client")
        conn.sendall(wire.pack(wire.hello("master", name="master")))
        _frame(conn)
        conn.sendall(wire.pack({"t": "job", "job": 1, "n": 1, "absent": ""})[:-3])  # and it is killed
        conn.shutdown(socket.SHUT_RDWR)


def test_master_gone_in_the_middle_of_a_message(tmpdir_short: str) -> None:
    """Seen in the chaos run at 256 nodes: a client of a master killed mid-frame said "truncated frame"."""
    path = os.path.join(tmpdir_short, "g")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    t = threading.Thread(target=_master_that_dies_mid_message, args=(listener,), daemon=True)
    t.start()
    try:
        r = subprocess.run(
            [sys.executable, "-m", "gproc", "e", "-n", "-w", "node1", "true"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "GPROC_MASTER": path},
        )
    finally:
        t.join(10)
        listener.close()
    assert r.returncode == 255, r.stderr
    assert r.stderr == "gproc: the master closed the connection\n", r.stderr
