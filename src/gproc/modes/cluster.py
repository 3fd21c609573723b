"""``gproc up --local N``, ``gproc down`` and ``gproc keygen``: a cluster on this machine, its credential."""

from __future__ import annotations

import argparse
import time

from gproc import client
from gproc.errors import UsageError
from gproc.modes import launch as launch_mode
from gproc.switches import Mode, Parser, add_debug, add_key, add_liveness, add_socket


def _up_switches(p: Parser) -> None:
    add_socket(p)
    p.add_argument("--local", type=int, metavar="N", help="this many nodes on this machine (required)")
    p.add_argument("--fanout", type=int, default=16, metavar="K", help="children per node (default 16)")
    p.add_argument("--procs", type=int, metavar="P", help="OS processes hosting the nodes")
    p.add_argument("--prefix", default="node", help="node names: PREFIX0, PREFIX1 … (default node)")
    p.add_argument("--ipv6", action="store_true", help="link the nodes over ::1")
    add_key(p)
    p.add_argument("--certs", action="store_true", help="give every node its own certificate (per-node identity)")
    add_liveness(p)
    p.add_argument("--timeout", type=float, metavar="S", help="give up when the nodes are not all up by then")
    add_debug(p)
    p.add_argument("--gpid-block", type=int, metavar="N", help="gpids per block (default 64)")
    p.add_argument("--collect-every", type=float, metavar="S", help="seconds between block collections")


def _no_args(mode: str, pos: list[str]) -> None:
    if pos:
        raise UsageError(f"gproc {mode} takes no arguments (got {pos[0]!r})")


def _up(opts: argparse.Namespace, pos: list[str]) -> int:
    from gproc import local

    _no_args("up", pos)
    if not opts.local:
        raise UsageError("only local clusters for now: gproc up --local N")
    t0 = time.monotonic()
    rec = local.up(
        opts.local,
        fanout=opts.fanout,
        socket=opts.socket,
        procs=opts.procs,
        prefix=opts.prefix,
        ipv6=opts.ipv6,
        key=opts.key,
        heartbeat=opts.heartbeat,
        dead_after=opts.dead_after,
        timeout=opts.timeout,
        debug=opts.debug,
        gpid_block=opts.gpid_block,
        collect_every=opts.collect_every,
        certs=opts.certs,
    )
    print(
        f"{rec.nodes} nodes up in {time.monotonic() - t0:.1f}s "
        f"(fanout {opts.fanout}, {len(rec.procs) - 1} node processes); master socket {rec.socket}"
    )
    if rec.socket != client.DEFAULT_SOCKET:
        print(f"export GPROC_MASTER={rec.socket}")
    return 0


def _down(opts: argparse.Namespace, pos: list[str]) -> int:
    from gproc import local

    _no_args("down", pos)
    if launch_mode.recorded(opts.socket):
        return launch_mode.stop(opts.socket)
    local.down(opts.socket)
    print("local cluster stopped")
    return 0


def _keygen_switches(p: Parser) -> None:
    add_key(p)
    p.add_argument("--force", action="store_true", help="replace an existing credential or certificate")
    p.add_argument(
        "--node", metavar="NAME", help="issue a certificate for node NAME, signed by the credential (the CA)"
    )
    p.add_argument(
        "--out", default=".", metavar="DIR", help="where --node writes NAME.key, NAME.crt, ca.crt (default .)"
    )
    p.add_argument("--days", type=float, default=825, metavar="N", help="a node certificate's life (default 825)")
    p.add_argument("--ca", metavar="FILE", help="also write the CA's certificate (public) to FILE")
    p.add_argument("--revoke", metavar="CERT", help="add CERT's serial to the revoked-serials file")
    p.add_argument(
        "--revoked",
        default="/etc/gproc/revoked",
        metavar="FILE",
        help="the revoked-serials file (default /etc/gproc/revoked)",
    )


def _keygen(opts: argparse.Namespace, pos: list[str]) -> int:
    from gproc import certs, credential

    _no_args("keygen", pos)
    ca = credential.key_path(opts.key)
    if opts.revoke:
        serial = certs.revoke(opts.revoke, opts.revoked)
        print(f"serial {certs.serial_text(serial)} added to {opts.revoked}; send the master SIGHUP")
        return 0
    if opts.node:
        if opts.days <= 0:
            raise UsageError("--days must be positive")
        key, cert, _ = certs.issue(ca, opts.node, opts.out, days=opts.days, force=opts.force)
        print(f"certificate for {opts.node} written to {cert}, its key to {key}")
    else:
        print(f"cluster credential written to {credential.keygen(ca, force=opts.force)}")
    if opts.ca:
        print(f"CA certificate written to {certs.export_ca(ca, opts.ca)}")
    return 0


MODES = (
    Mode(
        ("up",),
        ("up --local N [--fanout K]       start a master and N nodes on this machine",),
        _up_switches,
        _up,
        usage="gproc up --local N [--fanout K] [switches]",
        description="Start a master and N node daemons on this machine, linked by TLS over loopback;\n"
        "returns once every node is registered. The socket's directory is created when missing.",
    ),
    Mode(("down",), ("down                            stop the local cluster",), add_socket, _down),
    Mode(
        ("keygen",),
        ("keygen [--key FILE]             make the cluster credential (the CA); --node NAME: a node certificate",),
        _keygen_switches,
        _keygen,
        usage="gproc keygen [--key FILE] [--force] [--node NAME [--out DIR] [--days N]] [--ca FILE]\n"
        "       gproc keygen --revoke CERT [--revoked FILE]",
    ),
)
