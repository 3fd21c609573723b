"""The program starter: a small process that starts programs for a daemon process holding many descriptors.

Starting a program costs its parent work for every descriptor the parent holds: the kernel copies the
descriptor table into the child, and ``exec`` then closes every close-on-exec entry (``dup_fd``,
``filp_flush``). A process hosting 625 nodes of a local cluster holds ~2,000 sockets; on a loaded
10,000-node cluster that came to ~440 µs of a ~1.2 ms /bin/true (``perf``: a fifth of all CPU of a
launch). This process holds five descriptors: the daemon hands it the program's three standard
descriptors over a Unix socket (``SCM_RIGHTS``), it calls ``posix_spawn`` and answers with the pid,
and it reaps its children and reports every exit status.

Messages are JSON datagrams on a ``SOCK_SEQPACKET`` pair:

* daemon to starter: ``{"s": seq, "path": ..., "argv": [...], "env": {...}, "cwd": str | null}`` with
  exactly three descriptors (stdin, stdout, stderr of the program), and optionally ``"view": {...}``:
  the program runs in a private mount namespace holding its shipped files (``gproc.privateview``),
  which this process builds, starts the program in, and leaves;
* starter to daemon: ``{"s": seq, "pid": pid}`` or ``{"s": seq, "errno": n, "error": text, "kind":
  class}``, and ``{"x": pid, "status": waitstatus}`` when a program it started has ended (always after
  its pid).

It imports nothing from gproc until the first private view (the daemon runs it as a file:
``python -I -S -c LOADER FILE FD ROOT``, ROOT being where gproc is imported from) and ends when the
daemon's end of the socket closes. Its children keep running then, as a daemon's own children do
when it dies.
"""

from __future__ import annotations

import array
import contextlib
import errno
import json
import os
import selectors
import signal
import socket
import sys
from typing import Any

MAX_MESSAGE = 256 * 1024  # requests larger than this (huge environments) are started by the daemon itself
MALFORMED = {"errno": errno.EINVAL, "error": "malformed start request"}
# Signals a program must get at their default though this process ignores them (Python ignores the
# first two at start-up; SIGINT is ignored here so a terminal's Ctrl-C reaches only the daemon).
RESET = tuple(s for s in (getattr(signal, n, None) for n in ("SIGPIPE", "SIGXFSZ", "SIGINT", "SIGCHLD")) if s)


class _Views:
    """Private views, made by ``gproc.privateview`` (imported at the first)."""

    def __init__(self) -> None:
        self._builder: Any = None

    def start(self, req: dict[str, Any], fds: list[int]) -> dict[str, object]:
        try:
            if self._builder is None:
                from gproc import privateview

                self._builder = privateview.Builder()
            self._builder.enter(req.get("view"))
        except Exception as e:  # reported by class: the daemon tells a refused namespace from a bad view
            err = getattr(e, "errno", None)
            text = getattr(e, "strerror", None) or str(e)
            return {"errno": err if isinstance(err, int) else errno.EINVAL, "error": text, "kind": type(e).__name__}
        try:
            return _start(req, fds)
        finally:
            self._builder.leave()


def _start(req: dict[str, Any], fds: list[int]) -> dict[str, object]:
    path, argv, env, cwd = req.get("path"), req.get("argv"), req.get("env"), req.get("cwd")
    if not (isinstance(path, str) and isinstance(argv, list) and isinstance(env, dict) and len(fds) == 3):
        return MALFORMED
    actions = [(os.POSIX_SPAWN_DUP2, fd, i) for i, fd in enumerate(fds)]
    try:
        if isinstance(cwd, str):
            os.chdir(cwd)
        try:
            pid = os.posix_spawn(path, argv, env, file_actions=actions, setsid=True, setsigdef=RESET, setsigmask=())
        finally:
            if isinstance(cwd, str):
                os.chdir("/")
    except OSError as e:
        return {"errno": e.errno or errno.EIO, "error": e.strerror or str(e)}
    except (TypeError, ValueError) as e:
        return {"errno": errno.EINVAL, "error": str(e)}
    return {"pid": pid}


def serve(sock: socket.socket) -> None:
    """Answer start requests on ``sock`` until its other end closes."""
    os.chdir("/")
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wake-up byte is written
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    views = _Views()
    while True:
        for key, _ in sel.select():
            if key.fileobj is sock:
                try:
                    data, fds = _receive(sock)
                except InterruptedError:
                    continue
                if not data:
                    return  # the daemon is gone
                try:
                    req = json.loads(data)
                    if not isinstance(req, dict):
                        reply = MALFORMED
                    else:
                        reply = views.start(req, fds) if "view" in req else _start(req, fds)
                    seq = req.get("s") if isinstance(req, dict) else None
                except ValueError:
                    reply, seq = MALFORMED, None
                finally:
                    for fd in fds:
                        with contextlib.suppress(OSError):
                            os.close(fd)
                sock.send(json.dumps({"s": seq, **reply}).encode())
            else:
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    os.read(wake_r, 4096)
        _reap(sock)  # after a SIGCHLD, or one that came while a start was under way


def _receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One request and the descriptors that came with it, close-on-exec (``socket.recv_fds`` of
    Python 3.11 drops its ``flags``, so its descriptors would leak into the next programs)."""
    size = socket.CMSG_SPACE(8 * array.array("i").itemsize)
    data, ancdata, _flags, _addr = sock.recvmsg(MAX_MESSAGE, size, socket.MSG_CMSG_CLOEXEC)
    fds = array.array("i")
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    return data, list(fds)


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock.send(json.dumps({"x": pid, "status": status}).encode())


def main(fd: int) -> int:
    sock = socket.socket(fileno=fd)
    os.set_inheritable(fd, False)  # passed to us open across exec; our programs must not get it
    try:
        serve(sock)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
