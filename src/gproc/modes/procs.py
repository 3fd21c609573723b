"""The single process space: ``gproc ps``, ``gproc kill`` and ``gproc wait`` (gpids and job ids)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

from gproc import client, eventloop
from gproc.errors import GprocError, UsageError
from gproc.switches import SIGNAL_SWITCH, Mode, Parser, add_json, add_selection, add_socket


def parse_signal(tok: str) -> int:
    """``9``, ``KILL``, ``SIGKILL`` (a leading ``-`` allowed) -> signal number."""
    t = tok.lstrip("-")
    if t.isdigit():
        n = int(t)
        if not 0 <= n < 65:
            raise UsageError(f"bad signal {tok!r}")
        return n
    name = t.upper()
    try:
        return int(signal.Signals[name if name.startswith("SIG") else "SIG" + name])
    except KeyError:
        raise UsageError(f"unknown signal {tok!r}") from None


def parse_targets(args: list[str]) -> tuple[list[int], list[int]]:
    """(gpids, job ids) from ``GPID…`` and ``%JOB`` / ``job:JOB`` arguments."""
    gpids: list[int] = []
    jobs: list[int] = []
    for a in args:
        text = a[1:] if a.startswith("%") else a[4:] if a.lower().startswith("job:") else None
        try:
            if text is not None:
                jobs.append(int(text))
            else:
                gpids.append(int(a))
        except ValueError:
            raise UsageError(f"not a gpid or job id: {a!r} (gpids are numbers, job ids %N or job:N)") from None
        if (jobs and jobs[-1] <= 0) or (gpids and gpids[-1] <= 0):
            raise UsageError(f"not a gpid or job id: {a!r}")
    if gpids and jobs:
        raise UsageError("give gpids or job ids, not both")
    if not gpids and not jobs:
        raise UsageError("give at least one gpid or job id (%N)")
    return gpids, jobs


def _print_errors(errors: list[dict[str, Any]]) -> None:
    for e in errors:
        print(f"gproc: {e['nodes']}: {e['error']}", file=sys.stderr)


def _ps_switches(p: Parser) -> None:
    add_socket(p)
    add_json(p)
    add_selection(p)
    p.add_argument("--forest", action="store_true", help="processes under their parents (gpid tree)")


async def _ps(opts: argparse.Namespace, pos: list[str]) -> int:

    from gproc import psview

    c = client.Cluster(opts.socket)
    rows, errors = await c.ps(pos[0] if pos else opts.path, include=opts.include, exclude=opts.exclude)
    if opts.forest:
        rows = psview.forest(rows)
    if opts.json:
        for r in rows:
            print(json.dumps(r))
    else:
        sys.stdout.write(psview.table(rows, opts.forest))
    _print_errors(errors)
    return 255 if errors else 0


def _kill_switches(p: Parser) -> None:
    add_socket(p)
    add_json(p)
    p.add_argument("-s", "--signal", metavar="SIG", help="the signal (or -9, -KILL, -SIGKILL; default TERM)")


async def _kill(opts: argparse.Namespace, pos: list[str]) -> int:

    sig = parse_signal(opts.signal) if opts.signal else signal.SIGTERM
    args: list[str] = []
    for p in pos:
        if SIGNAL_SWITCH.match(p):
            sig = parse_signal(p)
        else:
            args.append(p)
    gpids, jobs = parse_targets(args)
    c = client.Cluster(opts.socket)
    status = 0
    for job in jobs:
        try:
            r = await c.kill(job=job, sig=sig)
        except GprocError as e:
            print(f"gproc: {e}", file=sys.stderr)
            status = max(status, 1)
            continue
        if opts.json:
            print(json.dumps(r))
        _print_errors(r.get("errors", []))
        if r.get("errors"):
            status = max(status, 1)
    if gpids:
        r = await c.kill(gpids, sig=sig)
        for res in r["results"]:
            if opts.json:
                print(json.dumps(res))
            if res["code"]:
                print(f"gproc: kill {res['gpid']}: {res['error']}", file=sys.stderr)
                status = max(status, 255 if res["code"] == 255 else 1)
    return status


def _wait_switches(p: Parser) -> None:
    add_socket(p)
    add_json(p)


async def _wait(opts: argparse.Namespace, pos: list[str]) -> int:

    from gproc.services.procs import NO_STATUS

    gpids, jobs = parse_targets(pos)
    c = client.Cluster(opts.socket)
    status = 0
    results: list[dict[str, Any]] = []
    for job in jobs:
        results.append(await c.wait(job=job))
    if gpids:
        r = await c.wait(gpids)
        if "job" in r:  # a single number that is a job id
            results.append(r)
        else:
            for res in r["results"]:
                code, err = res["code"], res.get("error", "")
                if opts.json:
                    out = {"gpid": res["gpid"], "status": code if code >= 0 else None, "name": res.get("name", "")}
                    print(json.dumps({**out, **({"error": err} if err else {})}))
                if code == NO_STATUS:
                    print(f"gproc: wait {res['gpid']}: ended, {err}", file=sys.stderr)
                elif code < 0 or err:
                    print(f"gproc: wait {res['gpid']}: {err}", file=sys.stderr)
                    status = max(status, 127 if code == -2 else 1 if code < 0 else code)
                else:
                    status = max(status, code)
    for r in results:
        if opts.json:
            print(json.dumps(r))
        elif r["state"] == "lost":
            print(f"gproc: job {r['job']}: running when the master stopped; some nodes never answered", file=sys.stderr)
        status = max(status, int(r["status"] if r["status"] is not None else 255))
    return status


MODES = (
    Mode(
        ("ps",),
        ("ps [NODES] [--forest]           every process in the single process space (GPID, NAME, PID, ...)",),
        _ps_switches,
        lambda opts, pos: eventloop.run(_ps(opts, pos)),
        usage="gproc ps [NODES] [-w NODESET] [-x NODESET] [--forest] [--json]",
    ),
    Mode(
        ("kill",),
        ("kill [-SIG] GPID...|JOBID       signal processes by gpid (routed to their node) or a whole job",),
        _kill_switches,
        lambda opts, pos: eventloop.run(_kill(opts, pos)),
        usage="gproc kill [-SIG | -s SIG] GPID... | %JOB",
        description="Signal processes by gpid (routed to the node that owns each) or every process of a job.\n"
        "gpids and job ids are one number space; %N or job:N says 'job'.",
        signal_args=True,
    ),
    Mode(
        ("wait",),
        (
            "wait GPID...|JOBID              wait for processes or a job to end; exits with their status",
            '                                (gpids and job ids are one number space; %N or job:N says "job")',
        ),
        _wait_switches,
        lambda opts, pos: eventloop.run(_wait(opts, pos)),
        usage="gproc wait GPID... | %JOB",
        description="Wait for processes or a job to end (even if they already ended); exits with their status.",
    ),
)
