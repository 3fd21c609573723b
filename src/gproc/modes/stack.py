"""``gproc stack JOB|GPID…``: the stacks of a job's processes merged into a tree of call paths."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gproc import client, eventloop
from gproc.errors import UsageError
from gproc.modes.procs import parse_targets
from gproc.switches import Mode, Parser, add_json, add_socket


def render(r: dict[str, Any]) -> str:
    """The tree as indented lines, each call path with its process count and node set where they
    change from its caller's; among the callees of one frame the outliers (fewest nodes) come first."""
    n = r["processes"]
    k = len(r["classes"])
    if not n:
        return "no stack read\n"
    lines = [f"{n} process{'es' if n != 1 else ''} on {r['nodes']}, {k} class{'es' if k != 1 else ''}"]
    above: list[tuple[str, int]] = []  # (nodes, processes) of each frame on the current path
    width = max((2 * d + len(f) for d, f, *_ in r["tree"]), default=0)
    width = min(width, 72)
    for depth, frame, nodes, _, procs in r["tree"]:
        del above[depth:]
        text = "  " * depth + frame
        if not above or above[-1] != (nodes, procs):
            text = f"{text.ljust(width)}  {procs} on {nodes}"
        lines.append(text.rstrip())
        above.append((nodes, procs))
    return "\n".join(lines) + "\n"


def _switches(p: Parser) -> None:
    add_socket(p)
    add_json(p, "the merged tree as one JSON object")


async def _stack(opts: argparse.Namespace, pos: list[str]) -> int:
    gpids, jobs = parse_targets(pos)
    if len(jobs) > 1:
        raise UsageError("give one job id (or gpids)")
    c = client.Cluster(opts.socket)
    r = await (c.stack(job=jobs[0]) if jobs else c.stack(gpids))
    if opts.json:
        out = {
            **r,
            "tree": [
                {"depth": d, "frame": f, "nodes": nodes, "nnodes": nn, "processes": n}
                for d, f, nodes, nn, n in r["tree"]
            ],
        }
        print(json.dumps(out))
    else:
        sys.stdout.write(render(r))
    status = 0
    for e in r["errors"]:
        print(f"gproc: {e['nodes']}: {e['error']}", file=sys.stderr)
        status = 1
    for what, gs in (("no such process", r["no_such"]), ("permission denied", r["denied"])):
        for g in gs:
            print(f"gproc: stack {g}: {what}", file=sys.stderr)
            status = 1
    return status


MODES = (
    Mode(
        ("stack",),
        ("stack %JOB|GPID...              stack traces merged into a tree of call paths with node sets",),
        _switches,
        lambda opts, pos: eventloop.run(_stack(opts, pos)),
        usage="gproc stack [--json] %JOB | GPID...",
        description="Read the stack of every process of a job (or of the given gpids) and merge them inside the\n"
        "tree into a prefix tree of call paths, each with its process count and node set; the outliers\n"
        "(fewest nodes) first. Native frames by eu-stack (elfutils) or gdb, Python frames by py-spy.\n"
        "Only your own processes (root: any). A bare number that is a job id names that job.",
    ),
)
