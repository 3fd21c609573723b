"""The ``gproc launch`` mode: parses its switches, prints each host's outcome (``--json``: one line each)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gproc import launch
from gproc.errors import UsageError


def run(opts: argparse.Namespace, pos: list[str]) -> int:
    """``gproc launch --ssh HOSTS [--fanout K] [--ssh-command CMD]`` or ``gproc launch --stop``."""
    if pos:
        raise UsageError(f"launch takes no arguments (got {' '.join(pos)!r}); hosts go in --ssh HOSTS")
    if opts.stop:
        return stop(opts)
    if not opts.ssh:
        raise UsageError("usage: gproc launch --ssh HOSTS [--fanout K] [--ssh-command CMD]  or  gproc launch --stop")
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
    )
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


def stop(opts: argparse.Namespace) -> int:
    rows = launch.stop(opts.socket)
    failed = [r for r in rows if not r["ok"]]
    if opts.json:
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
