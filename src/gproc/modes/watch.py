"""``gproc top`` (node metrics aggregated in the tree, live) and ``gproc web`` (the same and more in a
browser, with Prometheus ``/metrics``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from gproc import client, eventloop
from gproc.errors import UsageError
from gproc.switches import Mode, Parser, add_json, add_selection, add_socket


def human(v: float | None, kind: str) -> str:
    """A figure for people: bytes in KiB/MiB/GiB, percentages with one decimal."""
    if v is None:
        return "-"
    if kind == "B":
        for u in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(v) < 1024 or u == "TiB":
                return f"{v:.0f}{u}" if u == "B" else f"{v:.1f}{u}"
            v /= 1024
    if kind == "%":
        return f"{v:.1f}%"
    return f"{v:.2f}"


def table(snapshot: dict[str, Any]) -> Any:
    """The snapshot as a rich table: one row per metric, outliers named."""
    from rich.table import Table

    n = snapshot["nodes"]
    title = f"{snapshot['targets']} nodes asked, {n['up']} up, {n['lost']} lost, {snapshot['bytes_in']} B at the master"
    t = Table(title=title, box=None, pad_edge=False)
    for col in ("METRIC", "MIN", "AVG", "MAX", "HISTOGRAM", "OUTLIERS"):
        t.add_column(col, no_wrap=col != "OUTLIERS")
    for name, m in snapshot["metrics"].items():
        u = m["unit"]
        bars = " ▁▂▃▄▅▆▇█"
        counts = m["hist"]["counts"]
        most = max(counts) or 1
        hist = "".join(bars[round(c / most * 8)] for c in counts)
        top = ", ".join(f"{node} {human(v, u)}" for v, node in m["top"])
        t.add_row(name, human(m["min"], u), human(m["avg"], u), human(m["max"], u), hist, top)
    for e in snapshot["errors"]:
        t.add_row("error", "", "", "", "", f"{e['nodes']}: {e['error']}")
    if not snapshot.get("procs"):
        return t
    from rich.console import Group

    p = Table(title="busiest processes across the nodes", box=None, pad_edge=False)
    for col in ("CPU%", "NODE", "PID", "USER", "NAME"):
        p.add_column(col, no_wrap=True)
    for cpu, label in snapshot["procs"]:
        p.add_row(f"{cpu:.1f}", *[*label.split(" ", 3), "", "", ""][:4])
    return Group(t, p)


def _top_switches(p: Parser) -> None:
    add_socket(p)
    add_json(p, "print one snapshot as JSON and exit")
    add_selection(p, path=False)
    p.add_argument("--once", action="store_true", help="print one snapshot as a table and exit")
    p.add_argument("--disk", default="/", metavar="PATH", help="the path whose disk use is measured (default /)")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between refreshes")
    p.add_argument("--procs", type=int, default=10, metavar="K", help="the K busiest processes across the nodes")


async def _top(opts: argparse.Namespace, pos: list[str]) -> int:
    if opts.interval <= 0:
        raise UsageError("--interval must be positive")
    c = client.Cluster(opts.socket)

    async def snap() -> dict[str, Any]:
        nodes = pos[0] if pos else None
        out = await c.metrics(nodes, include=opts.include, exclude=opts.exclude, path=opts.disk)
        if not opts.exclude:  # proctop selects by path and -w only
            out["procs"] = (await c.proctop(opts.procs, nodes, include=opts.include))["procs"]
        return out

    if opts.json:
        print(json.dumps(await snap()))
        return 0
    from rich.console import Console
    from rich.live import Live

    console = Console(highlight=False)
    if opts.once or not console.is_terminal:
        console.print(table(await snap()))
        return 0
    quit_ = asyncio.Event()
    with (
        keys(lambda ch: quit_.set() if ch in "qQ" else None),
        Live(table(await snap()), console=console, auto_refresh=False) as live,
    ):
        while not quit_.is_set():  # q (or Ctrl-C) ends it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(quit_.wait(), opts.interval)
            if not quit_.is_set():
                live.update(table(await snap()), refresh=True)
    return 0


@contextlib.contextmanager
def keys(on_key: Callable[[str], None]) -> Iterator[None]:
    """Keys pressed while in the block, one at a time (the terminal in cbreak mode, restored after)."""
    fd = sys.stdin.fileno()
    if not os.isatty(fd):
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    loop = asyncio.get_running_loop()
    tty.setcbreak(fd)
    loop.add_reader(fd, lambda: on_key(os.read(fd, 1).decode(errors="replace")))
    try:
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _web_switches(p: Parser) -> None:
    add_socket(p)
    p.add_argument(
        "--listen", default="127.0.0.1:8080", metavar="HOST:PORT", help="where to serve (default %(default)s)"
    )
    p.add_argument("--token", metavar="T", help="the access token off loopback (default: a random one, printed)")


def _web(opts: argparse.Namespace, pos: list[str]) -> int:
    from gproc.web import server

    if pos:
        raise UsageError(f"gproc web takes no arguments (got {pos[0]!r})")
    return eventloop.run(server.serve(opts.listen, opts.socket, opts.token))


def _run_top(opts: argparse.Namespace, pos: list[str]) -> int:
    try:
        return eventloop.run(_top(opts, pos))
    except KeyboardInterrupt:
        return 0


MODES = (
    Mode(
        ("top",),
        ("top [NODES]                     load, memory, disk, network: aggregated in the tree, live",),
        _top_switches,
        _run_top,
        usage="gproc top [NODES] [-w NODESET] [-x NODESET] [--disk PATH] [--once | --json]",
        description="Node metrics reduced inside the tree (min, avg, max, histogram, outliers by name).",
    ),
    Mode(
        ("web",),
        ("web [--listen HOST:PORT]        the cluster in a browser (tree, jobs, run, metrics; /metrics)",),
        _web_switches,
        _web,
        usage="gproc web [--listen HOST:PORT] [--token T]",
        description="A web view talking to the master through the Python API, as you. Off loopback a token "
        "is required (printed at start).",
    ),
)
