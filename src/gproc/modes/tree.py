"""``gproc i`` (the tree, every level) and ``gproc ping`` (a no-op round trip through it)."""

from __future__ import annotations

import argparse
import json
import time

from gproc import client, eventloop
from gproc.switches import Mode, Parser, add_json, add_selection, add_socket


def _info_switches(p: Parser) -> None:
    add_socket(p)
    add_json(p)
    add_selection(p, path=False)


async def _info(opts: argparse.Namespace, pos: list[str]) -> int:
    c = client.Cluster(opts.socket)
    info = await c.info()
    rows = info["nodes"]
    if pos or opts.include or opts.exclude:
        r = await c.request("select", nodes=pos[0] if pos else None, w=opts.include, x=opts.exclude)
        names = set(r["names"])
        rows = [r for r in rows if r["name"] in names]
    if opts.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(box=None, pad_edge=False, show_edge=False)
    for col in ("NAME", "ID", "RANK", "ADDRESS", "PARENT", "LEVEL", "STATE"):
        t.add_column(col, no_wrap=True)
    for r in rows:
        t.add_row(
            "  " * (r["level"] - 1) + r["name"],
            r["id"],
            str(r["rank"]),
            r["address"],
            r["parent"],
            str(r["level"]),
            r["state"],
        )
    up = sum(1 for r in rows if r["state"] == "up")
    Console(width=200, highlight=False).print(t)
    print(f"master {info['master']}: {up} nodes up, {len(rows) - up} lost")
    return 0


async def _ping(opts: argparse.Namespace, pos: list[str]) -> int:
    c = client.Cluster(opts.socket)
    t0 = time.perf_counter()
    r = await c.ping(pos[0] if pos else None)
    dt = time.perf_counter() - t0
    ok = r["counts"].get("ok", 0)
    if opts.json:
        print(json.dumps({**r, "client_seconds": dt}))
    else:
        other = ", ".join(f"{v} {k}" for k, v in r["counts"].items() if k != "ok")
        print(f"{ok} of {r['targets']} nodes answered in {dt * 1000:.1f} ms" + (f" ({other})" if other else ""))
    return 0 if ok == r["targets"] else 255


def _ping_switches(p: Parser) -> None:
    add_socket(p)
    add_json(p)


MODES = (
    Mode(
        ("i", "info"),
        ("i | info [NODES]                show the tree, every level",),
        _info_switches,
        lambda opts, pos: eventloop.run(_info(opts, pos)),
        usage="gproc i [NODES] [-w NODESET] [-x NODESET] [--json]",
        description="The tree, every level: name, id, rank, address, parent, level, state.",
    ),
    Mode(
        ("ping",),
        ("ping [NODES]                    a no-op round trip through the tree",),
        _ping_switches,
        lambda opts, pos: eventloop.run(_ping(opts, pos)),
        usage="gproc ping [NODES] [--json]",
    ),
)
