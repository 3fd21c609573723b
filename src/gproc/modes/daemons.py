"""``gproc m`` (the master), ``gproc s`` (a node daemon) and ``_worker`` (many nodes of a local cluster).

A daemon that cannot start (a port in use, a socket directory it cannot write) says so in one line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from gproc import client, eventloop
from gproc.errors import GprocError, UsageError
from gproc.switches import Mode, Parser, add_debug, add_identity, add_key, add_liveness, add_socket, size

if TYPE_CHECKING:  # the daemon code loads only in daemon modes: client commands start faster
    from gproc.daemonconfig import Timing


def _common(p: Parser) -> None:
    add_key(p)
    add_identity(p)
    add_debug(p)
    p.add_argument("--port", type=int, metavar="PORT", help="-cmdport: the TCP port (default 6666)")
    p.add_argument("--listen", metavar="HOST:PORT", help="listen here (instead of -myAddress and -cmdport)")
    p.add_argument("--address", metavar="EXPR", help="-myAddress: address to listen on (a postfix expression)")
    p.add_argument("--name", help="the daemon's name (default: the host name; master: 'master')")
    p.add_argument("--bin-root", default="/tmp/xproc", metavar="DIR", help="-binRoot: where shipped files go")
    add_liveness(p)
    p.add_argument("--quiet", type=float, metavar="S", help="an op's replies are sent after S quiet seconds")
    p.add_argument("--hold", type=float, metavar="S", help="an op's replies are held at most S seconds")
    p.add_argument(
        "--config",
        metavar="FILE",
        help="settings no switch gives (else $GPROC_CONFIG, else /etc/gproc/gproc.toml when it exists)",
    )
    p.add_argument("--print-unit", action="store_true", help="print a systemd unit running this daemon, and exit")


def _timing(opts: argparse.Namespace) -> Timing:
    from gproc import daemonconfig

    return daemonconfig.Timing(opts.heartbeat, opts.dead_after, opts.quiet, opts.hold)


def _configured(opts: argparse.Namespace, mode: str) -> bool:
    """Fill the switches not given from the configuration file; True when only a unit is to be printed."""
    from gproc import config

    config.apply(opts, getattr(opts, "given", ()), mode, opts.config)
    if opts.print_unit:
        print(config.unit(mode, opts.config), end="")
    return bool(opts.print_unit)


def _ready_file(p: Parser) -> None:
    p.add_argument("--ready-file", metavar="FILE", help="written with the TCP address once listening")


def _master_switches(p: Parser) -> None:
    add_socket(p)
    _common(p)
    p.add_argument("--state", metavar="DIR", help="the master's state (ranks, jobs)")
    p.add_argument(
        "--revoked",
        metavar="FILE",
        help="revoked certificate serials (gproc keygen --revoke), read at start and on SIGHUP",
    )
    _ready_file(p)
    p.add_argument("--gpid-block", type=int, metavar="N", help="gpids per block (default 64)")
    p.add_argument("--collect-every", type=float, metavar="S", help="seconds between block collections")
    p.add_argument("--keep-jobs", type=int, default=1000, metavar="N", help="jobs whose output is kept")
    p.add_argument("--keep-bytes", type=size, default=1 << 30, metavar="SIZE", help="job output kept (500M, 2G)")


def _node_switches(p: Parser) -> None:
    p.add_argument("--parent", metavar="EXPR", help="-myParent: the parent's address(es), or a postfix expression")
    p.add_argument("--id", metavar="EXPR", help="-myId: the node's id (default: the host's number)")
    p.add_argument(
        "--parent-name",
        metavar="NAME[,NAME]",
        help="with --cert: the name(s) the configured parents' certificates must hold (e.g. master)",
    )
    p.add_argument("--node-socket", metavar="PATH", help="the relayed client socket ('none': no socket)")
    p.add_argument(
        "--store-max",
        type=size,
        metavar="SIZE",
        help="bound of the shipped-file store: least recently used files no job runs from are removed;"
        ' a file that does not fit is refused with "No space left in the store"',
    )
    _ready_file(p)
    _common(p)


def _started(run: Callable[[], int], what: str) -> int:
    """Run a daemon; an OS error while it starts (bind, socket directory, state) is one line."""
    try:
        return run()
    except OSError as e:
        raise GprocError(
            f"{what} cannot start: {e.strerror or e}" + (f": {e.filename}" if e.filename else "")
        ) from None


def _master(opts: argparse.Namespace, pos: list[str]) -> int:
    from gproc import daemon, daemonconfig

    if pos:
        raise UsageError(f"gproc m takes no arguments (got {pos[0]!r})")
    if _configured(opts, "master"):
        return 0
    s = daemonconfig.master(
        socket_path=client.socket_path(opts.socket),
        port=opts.port,
        listen=opts.listen,
        address=opts.address,
        name=opts.name,
        state=opts.state,
        key=opts.key,
        cert=opts.cert,
        ca=opts.ca,
        revoked=opts.revoked,
        bin_root=opts.bin_root,
        ready_file=opts.ready_file,
        timing=_timing(opts),
        gpid_block=opts.gpid_block,
        collect_every=opts.collect_every,
        keep_jobs=opts.keep_jobs,
        keep_bytes=opts.keep_bytes,
    )
    daemon.setup_logging(opts.debug)
    serve = daemon.serve_master(
        s.cfg, s.socket, s.state_dir, s.ready_file, s.pids, keep_jobs=s.keep_jobs, keep_bytes=s.keep_bytes
    )
    return _started(lambda: eventloop.run(serve), "the master")


def _node(opts: argparse.Namespace, pos: list[str]) -> int:
    from gproc import daemon, daemonconfig

    if pos:
        raise UsageError(f"gproc s takes no arguments (got {pos[0]!r})")
    if _configured(opts, "node"):
        return 0
    cfg = daemonconfig.node(
        parent=opts.parent,
        node_id=opts.id,
        address=opts.address,
        listen=opts.listen,
        port=opts.port,
        name=opts.name,
        key=opts.key,
        cert=opts.cert,
        ca=opts.ca,
        parent_name=opts.parent_name,
        bin_root=opts.bin_root,
        node_socket=opts.node_socket,
        store_max=opts.store_max,
        timing=_timing(opts),
    )
    daemon.setup_logging(opts.debug)
    return _started(lambda: eventloop.run(daemon.serve_node(cfg, opts.ready_file)), f"node {cfg.name}")


def _worker(opts: argparse.Namespace, pos: list[str]) -> int:
    from gproc import daemon

    if len(pos) != 1:
        raise UsageError("_worker takes a spec file")
    daemon.setup_logging(opts.debug)
    return _started(lambda: daemon.serve_many_file(pos[0]), "the worker")


MODES = (
    Mode(
        ("m", "master"),
        ("m | master                      start the master (client socket -defaultMasterUDS, TCP -cmdport)",),
        _master_switches,
        _master,
        usage="gproc m [switches]",
        description="Start the master: rank 0 of the tree, server of the client socket.",
    ),
    Mode(
        ("s", "node", "slave", "worker"),
        ("s | node | slave | worker       start a node daemon (-myParent, -myId, -myAddress)",),
        _node_switches,
        _node,
        usage="gproc s [switches]",
        description="Start a node daemon; it attaches to its parent (-myParent) and serves its children.",
    ),
    Mode(("_worker",), (), add_debug, _worker, usage="gproc _worker SPEC.json"),
)
