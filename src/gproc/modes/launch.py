"""``gproc launch --ssh HOSTS``: start daemons on machines over ssh, as a tree; ``--slurm``: on the
nodes of the Slurm allocation this runs in, with srun; ``--stop`` undoes either.

Prints each host's outcome (``--json``: one line each). ``gproc down`` stops a launch too (``stop``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gproc.errors import UsageError
from gproc.switches import Mode, Parser, add_debug, add_json, add_key, add_socket

USAGE = (
    "usage: gproc launch --ssh HOSTS [--fanout K] [--ssh-command CMD]  or  gproc launch --slurm [--fanout K]"
    "  or  gproc launch --stop"
)


def _switches(p: Parser) -> None:
    p.add_argument("--ssh", metavar="HOSTS", help="the hosts (a host list: node[1-16],head)")
    p.add_argument("--slurm", action="store_true", help="inside a Slurm allocation: a daemon per node with srun")
    p.add_argument("--ssh-command", metavar="CMD", help="how to reach a host (default $GPROC_SSH, else ssh)")
    p.add_argument("--fanout", type=int, default=16, metavar="K", help="children per host (default 16)")
    p.add_argument("--stop", action="store_true", help="stop what the recorded launch started")
    add_json(p, "one JSON object per host")
    add_socket(p)
    add_key(p)
    p.add_argument(
        "--certs",
        action="store_true",
        help="each host its own certificate, issued by the credential (the CA), which stays here",
    )
    p.add_argument("--listen", metavar="HOST:PORT", help="the master listens here (instead of --address/--port)")
    p.add_argument("--address", metavar="EXPR", help="the master's address the hosts reach (a postfix expression)")
    p.add_argument("--port", type=int, metavar="PORT", help="the daemons' TCP port (default 6666)")
    p.add_argument("--bin-root", default="/tmp/xproc", metavar="DIR", help="-binRoot on every host")
    p.add_argument("--timeout", type=float, metavar="S", help="give up on hosts not joined by then (30 s; --slurm 60)")
    p.add_argument(
        "--ship",
        choices=("auto", "always", "never"),
        default="auto",
        help="gproc's own runtime to hosts without Python with gproc (auto), to every host, or never",
    )
    p.add_argument("--runtime-dir", metavar="DIR", help="where hosts keep shipped runtimes (~/.cache/gproc/runtime)")
    p.add_argument("--config", metavar="FILE", help="settings no switch gives ([launch] table; hosts = HOSTS)")
    add_debug(p)


def _launch(opts: argparse.Namespace, pos: list[str]) -> int:
    from gproc import config, launch

    if pos:
        raise UsageError(f"launch takes no arguments (got {' '.join(pos)!r}); hosts go in --ssh HOSTS")
    config.apply(opts, getattr(opts, "given", ()), "launch", opts.config)
    if opts.stop:
        return stop(opts.socket, opts.json)
    if opts.slurm and opts.ssh:
        raise UsageError("--slurm and --ssh exclude each other")
    if opts.slurm:
        return _report(opts, _slurm(opts))
    if not opts.ssh:
        raise UsageError(USAGE)
    out = launch.launch(
        opts.ssh,
        fanout=opts.fanout,
        ssh=launch.ssh_command(opts.ssh_command),
        socket=opts.socket,
        key=opts.key,
        listen=opts.listen,
        address=opts.address,
        port=opts.port if opts.port is not None else 6666,
        bin_root=opts.bin_root,
        debug=opts.debug,
        join_timeout=opts.timeout if opts.timeout is not None else 30.0,
        ship=opts.ship,
        runtime_dir=opts.runtime_dir,
        with_certs=opts.certs,
    )
    return _report(opts, out)


def _report(opts: argparse.Namespace, out: Any) -> int:
    up = len(out.rows) - len(out.failed)
    if opts.json:
        _json_rows(out.rows)
    else:
        _print_failures(out.failed)
        master = "started a master" if out.started_master else "joined the running master"
        print(
            f"{up} of {len(out.rows)} hosts up in {out.seconds:.1f}s (fanout {opts.fanout}, {master}); "
            f"master socket {out.socket}"
        )
    return 255 if out.failed else 0


def _slurm(opts: argparse.Namespace) -> Any:
    from gproc import slurmlaunch

    return slurmlaunch.launch_slurm(
        fanout=opts.fanout,
        socket=opts.socket,
        key=opts.key,
        listen=opts.listen,
        address=opts.address,
        port=opts.port if opts.port is not None else 6666,
        bin_root=opts.bin_root,
        debug=opts.debug,
        join_timeout=opts.timeout if opts.timeout is not None else 60.0,
    )


def recorded(socket: str | None) -> bool:
    """A launch is recorded beside the master's socket (so ``gproc down`` stops it)."""
    from gproc import client, launch

    return launch.LaunchRecord.load(client.socket_path(socket)) is not None


def stop(socket: str | None, as_json: bool = False) -> int:
    """Stop the recorded launch: every host's daemon, then the master it started."""
    from gproc import client, launch, slurmlaunch

    rec = launch.LaunchRecord.load(client.socket_path(socket))
    rows = slurmlaunch.stop(socket) if rec is not None and rec.slurm else launch.stop(socket)
    failed = [r for r in rows if not r["ok"]]
    if as_json:
        _json_rows(rows)
    else:
        _print_failures(failed)
        ended = sum(1 for r in rows if r.get("stopped"))
        print(
            f"launch stopped: no daemon left on {len(rows) - len(failed)} of {len(rows)} hosts"
            f" ({ended} still running after the tree's shutdown were ended)"
        )
    return 255 if failed else 0


def _json_rows(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        print(json.dumps({k: v for k, v in r.items() if k != "log" or not r["ok"]}))


def _print_failures(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        print(f"gproc: {r['host']}: {r['error']}", file=sys.stderr)


MODES = (
    Mode(
        ("launch",),
        (
            "launch --ssh HOSTS [--fanout K] start daemons on HOSTS (a hostlist) over ssh, as a tree; a master",
            "                                here unless one runs (--ssh-command CMD or $GPROC_SSH, --json)",
            "launch --slurm [--fanout K]     inside a Slurm allocation: a daemon on every node with srun",
            "launch --stop | down            stop what launch started (down: else the local cluster)",
        ),
        _switches,
        _launch,
        usage="gproc launch --ssh HOSTS [--fanout K] [switches] | gproc launch --slurm [switches] | ... --stop",
        description="Start a node daemon on each host over ssh, as a tree (each host starts its children),\n"
        "or with --slurm on each node of this Slurm allocation (one srun step),\n"
        "under the running master, or a master started here; returns once every daemon joined.",
    ),
)
