"""``gproc mount DIR [NODES]`` and ``gproc umount DIR``: the cluster as a file system (SPEC §9)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

from gproc import client
from gproc.errors import GprocError, UsageError
from gproc.switches import Mode, Parser, add_selection, add_socket

READY_TIMEOUT = 60.0


def _mount_switches(p: Parser) -> None:
    add_socket(p)
    add_selection(p)
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground until unmounted")
    p.add_argument("--cache", type=float, default=2.0, metavar="S",
                   help="seconds a listing or a read of the merged view is reused (default 2)")  # fmt: skip
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)


def _mount(opts: argparse.Namespace, pos: list[str]) -> int:
    if not pos or len(pos) > 2:
        raise UsageError("usage: gproc mount DIR [NODES]")
    mountpoint = os.path.abspath(pos[0])
    nodes = opts.path if opts.path else (pos[1] if len(pos) > 1 else None)
    if nodes is None and not opts.include:
        nodes = "**"
    client.check_selection(nodes, opts.include, opts.exclude)
    if opts.cache < 0:
        raise UsageError("--cache cannot be negative")
    if not opts.foreground:
        return _background(opts, pos)
    from gproc.fs import serve

    def ready() -> None:
        if opts.ready_fd is not None:  # started by _background: say so, then leave the terminal
            os.write(opts.ready_fd, b"ok")
            os.close(opts.ready_fd)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.close(null)

    socket = client.socket_path(opts.socket)
    return serve(mountpoint, socket, nodes, opts.include, opts.exclude, opts.cache, ready)


def _background(opts: argparse.Namespace, pos: list[str]) -> int:
    """Start the mount in a session of its own; return once it is mounted (or with its error)."""
    r, w = os.pipe()
    argv = [sys.executable, "-m", "gproc", "mount", "--foreground", "--ready-fd", str(w), "--cache", str(opts.cache)]
    for flag, value in (("--socket", opts.socket), ("-w", opts.include), ("-x", opts.exclude), ("--path", opts.path)):
        if value:
            argv += [flag, value]
    proc = subprocess.Popen([*argv, "--", *pos], pass_fds=(w,), stdin=subprocess.DEVNULL, start_new_session=True)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        said = f.read(2)
    if said == b"ok":
        return 0
    try:
        return proc.wait(READY_TIMEOUT) or 1
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise GprocError("the mount did not start") from None


def _umount(opts: argparse.Namespace, pos: list[str]) -> int:
    if len(pos) != 1:
        raise UsageError("usage: gproc umount DIR")
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise GprocError("fusermount3 not found (Debian: apt-get install fuse3)")
    r = subprocess.run([tool, "-u", pos[0]], capture_output=True, text=True)
    if r.returncode:
        raise GprocError(f"umount {pos[0]}: {r.stderr.strip().removeprefix(tool + ': ') or 'failed'}")
    return 0


MODES = (
    Mode(
        ("mount",),
        ("mount DIR [NODES]               the cluster as files: nodes/NAME/…, all/PATH, proc/GPID, jobs/ID",),
        _mount_switches,
        _mount,
        usage="gproc mount DIR [NODES] [-w NODESET] [-x NODESET] [-f] [--cache S]",
        short=(("f", "--foreground"),),
        description="Mount the cluster at DIR (FUSE): nodes/NAME/PATH is PATH on node NAME; all/PATH is a\n"
        "directory on every node (the union of names) or, for a file, one entry per set of nodes with\n"
        "identical contents; proc/GPID/{status,cmdline,stdout,ctl} your processes (write 'kill 9',\n"
        "'stop' or 'cont' to ctl); jobs/ID/{status,output}. Returns once mounted (-f: stays).\n"
        "Ends with 'gproc umount DIR' or when the master goes away.",
    ),
    Mode(
        ("umount",),
        ("umount DIR                      unmount what gproc mount mounted",),
        lambda p: None,
        _umount,
        usage="gproc umount DIR",
    ),
)
