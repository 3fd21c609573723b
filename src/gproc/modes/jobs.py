"""``gproc jobs`` (the jobs the master keeps) and ``gproc output JOBID`` (a job's merged output)."""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING

from gproc import client, eventloop
from gproc.errors import UsageError
from gproc.switches import Mode, Parser, add_json, add_socket

if TYPE_CHECKING:
    from gproc.display import Display


def add_display(p: Parser) -> None:
    """How merged output is shown (exec and output)."""
    add_json(p, "JSON Lines: output, status and error records")
    p.add_argument("-b", "--gather", action="store_true", help="gathered like dshbak -c, largest group first")
    p.add_argument(
        "--diff", action="store_true", help="unified diffs against the largest group (nothing when all agree)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="with --diff: also the reference group's output")
    p.add_argument("--window", type=float, default=0.05, metavar="S", help="live: identical lines within S merge")


def _jobs_switches(p: Parser) -> None:
    add_socket(p)
    add_json(p)


async def _jobs(opts: argparse.Namespace) -> int:
    rows = await client.Cluster(opts.socket).jobs()
    if opts.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(box=None, pad_edge=False, show_edge=False)
    for col in ("JOBID", "STATE", "NODES", "OK", "FAILED", "EXIT", "STARTED", "TIME", "COMMAND"):
        t.add_column(col, no_wrap=True)
    now = time.time()
    for r in rows:
        status = "" if r["status"] is None else str(r["status"])
        elapsed = (r["ended"] or now) - r["started"]
        started = time.strftime("%m-%d %H:%M:%S", time.localtime(r["started"]))
        state = r["state"] + (" (batch)" if r["batch"] else "")
        cmd = " ".join(r["argv"])
        t.add_row(
            str(r["id"]), state, str(r["n"]), str(r["ok"]), str(r["failed"]), status, started, f"{elapsed:.1f}s", cmd
        )
    Console(width=200, highlight=False).print(t)
    return 0


def _output_switches(p: Parser) -> None:
    add_socket(p)
    add_display(p)


async def _output(opts: argparse.Namespace, job_id: int) -> int:
    job = await client.Cluster(opts.socket).output(job_id)
    await display(opts).consume(job)
    assert job.exit_status is not None
    return job.exit_status


def display(opts: argparse.Namespace) -> Display:
    """The display the switches of ``add_display`` ask for."""
    from gproc.display import Display

    return Display(json_mode=opts.json, gather=opts.gather, window=opts.window, diff=opts.diff, verbose=opts.verbose)


def _run_output(opts: argparse.Namespace, pos: list[str]) -> int:
    if len(pos) != 1 or not pos[0].lstrip("%").isdigit():
        raise UsageError("usage: gproc output JOBID")
    return eventloop.run(_output(opts, int(pos[0].lstrip("%"))))


def _run_jobs(opts: argparse.Namespace, pos: list[str]) -> int:
    if pos:
        raise UsageError(f"gproc jobs takes no arguments (got {pos[0]!r})")
    return eventloop.run(_jobs(opts))


MODES = (
    Mode(
        ("jobs",),
        ("jobs                            the jobs the master keeps: state, node counts, exit status",),
        _jobs_switches,
        _run_jobs,
    ),
    Mode(
        ("output",),
        ("output JOBID                    a job's merged output (-b, --diff, --json as for exec)",),
        _output_switches,
        _run_output,
        usage="gproc output JOBID [-b | --diff [-v] | --json]",
    ),
)
