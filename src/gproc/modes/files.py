"""``gproc cat|stat|cp|gather|grep|tail``: files on many nodes, as one machine's.

Answers are merged inside the tree: identical contents, stats and lines of many nodes come back once,
named by their node set; ``--agg`` reduces numbers (a file's contents or a stat field) on the way up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

from gproc import client, eventloop
from gproc.errors import UsageError
from gproc.switches import Mode, Parser, add_json, add_selection, add_socket

PATHS = """NODES is a tree path of node ids (./. 1/. 0-3/** **), or -w NODESET [-x NODESET] instead.
Node paths are absolute and may hold %h, the node's name (/tmp/t/%h/f); '..' is refused in them.
Exit status: the worst node's (255 a node absent or unreachable).
"""


def _common(p: Parser) -> None:
    add_socket(p)
    add_selection(p)
    add_json(p)


def _agg_switches(p: Parser) -> None:
    p.add_argument(
        "--agg",
        default="equiv",
        metavar="AGG",
        help="equiv (default: identical answers grouped), concat (every node's, prefixed), "
        "or sum|min|max|avg|hist of the numbers, reduced inside the tree",
    )
    p.add_argument("--edges", metavar="E1,E2,...", help="with --agg hist: the bucket edges, increasing")


def _cat_switches(p: Parser) -> None:
    _common(p)
    _agg_switches(p)


def _stat_switches(p: Parser) -> None:
    _common(p)
    _agg_switches(p)
    p.add_argument("--field", default="size", metavar="FIELD", help="size (default) or mtime: what --agg reduces")


def _cp_switches(p: Parser) -> None:
    _common(p)
    p.add_argument("--recursive", action="store_true", help="-r, -R: copy directories and what they hold")
    p.add_argument("--preserve", action="store_true", help="-p: keep the owner too (mode, mtime and links always)")
    p.add_argument("--multicast", action="store_true", help="send the bytes once by UDP multicast (with FEC)")
    p.add_argument("--rate", metavar="R", help="--multicast: at most R bytes/s (k, M, G: x1000; default 100M)")
    p.add_argument("--fec", metavar="K,N", help="--multicast: K data packets per group (default 64), N repair "
                   "packets sent with each until the receivers' loss says how many (default 0)")  # fmt: skip


def _sync_switches(p: Parser) -> None:
    _common(p)
    p.add_argument("--delete", action="store_true", help="remove what DEST holds beyond SRC")


def _gather_switches(p: Parser) -> None:
    _common(p)
    p.add_argument("--recursive", action="store_true", help="-r, -R: copy directories and what they hold")


def _grep_switches(p: Parser) -> None:
    _common(p)
    p.add_argument("--ignore-case", action="store_true", help="-i: match whatever the case")
    p.add_argument("--invert", action="store_true", help="-v: the lines that do not match")


def _tail_switches(p: Parser) -> None:
    _common(p)
    p.add_argument("--lines", type=int, default=10, metavar="K", help="-n K: the last K lines (default 10)")
    p.add_argument("--follow", action="store_true", help="-f: then new lines as they come, until Ctrl-C")


def _file_nodes(opts: argparse.Namespace, pos: list[str], least: int, usage: str) -> tuple[str | None, list[str]]:
    """(tree path or None with -w/-x/--path, the rest); UsageError when too few arguments."""
    spec_given = opts.include or opts.exclude or opts.path
    nodes = opts.path if spec_given else (pos[0] if pos else None)
    rest = pos if spec_given else pos[1:]
    if len(rest) < least or (not spec_given and not pos):
        raise UsageError(f"usage: {usage}")
    return nodes, rest


def _edges(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) if "." in x or "e" in x.lower() else int(x) for x in text.split(",") if x]
    except ValueError:
        raise UsageError(f"--edges: not a list of numbers: {text!r}") from None


def _print_answer_errors(answers: list[Any]) -> int:
    worst = 0
    for a in answers:
        if a.kind == "error":
            print(f"gproc: {a.nodes}: {a.error}", file=sys.stderr)
            worst = max(worst, a.status)
    return worst


def _group(opts: argparse.Namespace, nodes: str | None) -> client.Group:
    return client.Cluster(opts.socket).group(nodes, include=opts.include, exclude=opts.exclude)


def _absent(g: client.Group) -> int:
    for name in g.absent:
        print(f"gproc: {name}: absent", file=sys.stderr)
    return 255 if g.absent else 0


async def _cat_stat(mode: str, opts: argparse.Namespace, pos: list[str]) -> int:
    from ClusterShell.NodeSet import NodeSet

    nodes, paths = _file_nodes(opts, pos, 1, f"gproc {mode} [--agg AGG] NODES PATH...")
    g = _group(opts, nodes)
    if mode == "cat":
        results = await g.cat(paths, agg=opts.agg, edges=_edges(opts.edges))
    else:
        results = await g.stat(paths, agg=opts.agg, field=opts.field, edges=_edges(opts.edges))
    worst = _absent(g)
    by_node: dict[str, list[str]] = {}  # concat: every node's answers, printed in node order
    for res in results:
        worst = max(worst, _print_answer_errors(res.answers))
        if opts.agg not in ("equiv", "concat"):
            if opts.json:
                value = {"path": res.paths[0], "agg": opts.agg, "value": res.value, "rep_bytes": res.rep_bytes}
                print(json.dumps(value))
            elif opts.agg == "hist":
                print(f"{res.paths[0]}:")
                edges, counts = res.value["edges"], res.value["counts"]
                bounds = ["-inf", *map(str, edges), "inf"]
                for lo, hi, n in zip(bounds[:-1], bounds[1:], counts, strict=True):
                    print(f"  [{lo}, {hi}): {n}")
            elif opts.agg == "avg":
                print(f"{res.paths[0]}: avg {res.value['mean']} over {res.value['count']}")
            else:
                print(f"{res.paths[0]}: {opts.agg} {res.value}")
            continue
        for a in res.answers:
            if a.kind == "error":
                if opts.json:
                    print(json.dumps({"path": a.path, "nodes": a.nodes, "count": a.count, "error": a.error}))
                continue
            if opts.json:
                rec: dict[str, Any] = {"path": a.path, "nodes": a.nodes, "count": a.count}
                rec.update(a.stat or {"data": a.data.decode("utf-8", "replace")})
                print(json.dumps(rec))
            elif a.kind == "stat":
                st = a.stat or {}
                link = f" -> {st['target']}" if st["target"] else ""
                print(f"{a.nodes} ({a.count}): {a.path} {st['type']} {st['size']} {st['mode']} "
                      f"{st['owner']}:{st['group']} {st['mtime']} {st['sha256'] or '-'}{link}")  # fmt: skip
            elif opts.agg == "concat":
                for name in NodeSet(a.nodes):
                    by_node.setdefault(name, []).append(a.data.decode("utf-8", "replace"))
            else:
                print("-" * 15)
                print(f"{a.nodes} ({a.count}): {a.path}")
                print("-" * 15)
                sys.stdout.write(a.data.decode("utf-8", "replace"))
                if a.data and not a.data.endswith(b"\n"):
                    print()
    for name in NodeSet.fromlist(list(by_node)):
        for text in by_node[name]:
            for line in text.splitlines():
                print(f"{name}: {line}")
    return worst


async def _cp(mode: str, opts: argparse.Namespace, pos: list[str]) -> int:
    usage = "gproc cp [-r] [-p] NODES SRC... DEST" if mode == "cp" else "gproc gather [-r] NODES SRC... DESTDIR"
    nodes, rest = _file_nodes(opts, pos, 2, usage)
    multicast = _multicast(opts) if mode == "cp" else None
    g = _group(opts, nodes)
    if mode == "cp":
        with _progress(not opts.json and sys.stderr.isatty() and multicast is None) as bar:
            statuses = await g.cp(rest[:-1], rest[-1], recursive=opts.recursive, preserve=opts.preserve, progress=bar,
                                  multicast=multicast)  # fmt: skip
    else:
        statuses = await g.gather(rest[:-1], rest[-1], recursive=opts.recursive)
    worst = 0
    for st in statuses:
        worst = max(worst, st.status)
        if opts.json:
            print(json.dumps({"nodes": st.nodes, "count": st.count, "status": st.status, "error": st.error}))
        elif st.status:
            print(f"gproc: {st.nodes}: {st.error}", file=sys.stderr)
    if multicast is not None:
        if opts.json:
            print(json.dumps({"multicast": g.multicast}))
        else:
            via = g.multicast.get("via", {})
            for how in ("multicast", "had", "tree"):
                if how in via:
                    print(f"{via[how]}: {'already had the files' if how == 'had' else 'by ' + how}", file=sys.stderr)
            for why, nodes in g.multicast.get("gave_up", {}).items():
                print(f"{nodes}: left the multicast session: {why}", file=sys.stderr)
    return worst


async def _sync(mode: str, opts: argparse.Namespace, pos: list[str]) -> int:
    nodes, rest = _file_nodes(opts, pos, 2, "gproc sync [--delete] NODES SRC DEST")
    if len(rest) != 2:
        raise UsageError("usage: gproc sync [--delete] NODES SRC DEST (one source)")
    g = _group(opts, nodes)
    statuses = await g.sync(rest[0], rest[1], delete=opts.delete)
    worst = 0
    for st in statuses:
        worst = max(worst, st.status)
        if opts.json:
            print(json.dumps({"nodes": st.nodes, "count": st.count, "status": st.status, "error": st.error}))
        elif st.status:
            print(f"gproc: {st.nodes}: {st.error}", file=sys.stderr)
    if opts.json:
        print(json.dumps({"shipped": g.shipped, **g.synced}))
    return worst


def _multicast(opts: argparse.Namespace) -> client.Multicast | None:
    """The --multicast switches (UsageError for a bad --rate or --fec, before anything is sent)."""
    from gproc.services.multicast import parse_rate

    if not opts.multicast:
        if opts.rate or opts.fec:
            raise UsageError("--rate and --fec go with --multicast")
        return None
    rate = parse_rate(opts.rate) if opts.rate else client.Multicast.rate
    k, n = client.Multicast.k, client.Multicast.n
    if opts.fec:
        try:
            k, n = (int(x) for x in opts.fec.split(","))
        except ValueError:
            raise UsageError(f"--fec: not K,N: {opts.fec!r}") from None
        if not (1 <= k <= 128 and 0 <= n <= 127):
            raise UsageError("--fec K,N: K data packets per group (1-128), N repair packets with each (0-127)")
    return client.Multicast(rate=rate, k=k, n=n)


async def _grep_tail(mode: str, opts: argparse.Namespace, pos: list[str]) -> int:
    """grep's exit status: 0 a line was selected on every node, 1 on some node none, 2 an error
    (255 a node absent or unreachable)."""
    pattern = ""
    if mode == "grep":
        if not pos:
            raise UsageError("usage: gproc grep [-i] [-v] PATTERN NODES PATH...")
        pattern, pos = pos[0], pos[1:]
    nodes, paths = _file_nodes(opts, pos, 1, f"gproc {mode} NODES PATH...")
    g = _group(opts, nodes)
    if mode == "tail" and opts.follow:
        if len(paths) != 1:
            raise UsageError("tail -f follows one path")
        return await _follow(g, paths[0], opts)
    if mode == "grep":
        answers = await g.grep(pattern, paths, ignore_case=opts.ignore_case, invert=opts.invert)
    else:
        answers = await g.tail(paths, opts.lines)
    worst = max(_absent(g), _print_answer_errors(answers))
    for a in answers:
        if a.kind == "none":
            worst = max(worst, 1)
        elif a.kind == "line":
            text = a.data.decode("utf-8", "replace")
            if opts.json:
                print(
                    json.dumps({"path": a.path, "nodes": a.nodes, "count": a.count, "lineno": a.lineno, "line": text})
                )
            else:
                where = f"{a.path}:{a.lineno}: " if len(paths) > 1 or mode == "grep" else ""
                print(f"{a.nodes}: {where}{text}")
    return worst


async def _follow(g: client.Group, path: str, opts: argparse.Namespace) -> int:
    """``tail -f``: lines as they come; Ctrl-C (SIGINT) or SIGTERM end it cleanly (the nodes stop)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stopped = False

    def stop() -> None:
        nonlocal stopped
        stopped = True
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    worst = 0
    lines = g.follow(path, opts.lines)
    try:
        async for a in lines:
            if a.kind == "error":
                print(f"gproc: {a.nodes}: {a.error}", file=sys.stderr)
                worst = max(worst, a.status)
            elif opts.json:
                print(json.dumps({"path": a.path, "nodes": a.nodes, "count": a.count, "lineno": a.lineno,
                                  "line": a.data.decode("utf-8", "replace")}), flush=True)  # fmt: skip
            else:
                print(f"{a.nodes}: {a.data.decode('utf-8', 'replace')}", flush=True)
    except asyncio.CancelledError:
        if not stopped:
            raise
    finally:
        await lines.aclose()
    return worst


@contextlib.contextmanager
def _progress(show: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar of the bytes cp sends into the tree, on a terminal; nothing otherwise."""
    if not show:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress("copying", BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=True) as bar:
        task = bar.add_task("copy", total=None)

        def update(sent: int, total: int) -> None:
            bar.update(task, completed=sent, total=total)

        yield update


def _runner(mode: str, run: Callable[[str, argparse.Namespace, list[str]], Any]) -> Callable[..., int]:
    return lambda opts, pos: eventloop.run(run(mode, opts, pos))


RECURSIVE = (("r", "--recursive"), ("R", "--recursive"))

MODES = (
    Mode(
        ("cat",),
        (
            "cat NODES PATH...               a file's contents on NODES, identical ones once; --agg concat,",
            "                                --agg sum|min|max|avg|hist (reduced inside the tree), --edges",
        ),
        _cat_switches,
        _runner("cat", _cat_stat),
        usage="gproc cat [--agg AGG] [--edges E1,...] [--json] NODES PATH...",
        description="A file's contents on NODES; identical answers grouped by node set.",
        epilog=PATHS,
    ),
    Mode(
        ("stat",),
        ("stat NODES PATH...              size, mtime, mode, owner, sha256 on NODES; --agg, --field size|mtime",),
        _stat_switches,
        _runner("stat", _cat_stat),
        usage="gproc stat [--agg AGG] [--field FIELD] [--json] NODES PATH...",
        description="A file's type, size, mode, owner, mtime and sha256 on NODES; identical answers grouped.",
        epilog=PATHS,
    ),
    Mode(
        ("cp",),
        ("cp [-r] [-p] NODES SRC... DEST  copy to NODES (atomic, as you; mode, mtime, links kept; -p owner)",),
        _cp_switches,
        _runner("cp", _cp),
        usage="gproc cp [-r] [-p] [--json] [--multicast [--rate R] [--fec K,N]] NODES SRC... DEST",
        description="Copy files from here to NODES through the tree; each node's file appears whole or not at all.",
        epilog=PATHS,
        short=(*RECURSIVE, ("p", "--preserve")),
    ),
    Mode(
        ("sync",),
        ("sync [--delete] NODES SRC DEST  make DEST on NODES a copy of SRC (rsync -a SRC/ DEST), moving what changed",),
        _sync_switches,
        _runner("sync", _sync),
        usage="gproc sync [--delete] [--json] NODES SRC DEST",
        description="Make DEST on each of NODES a copy of the local file or directory SRC (mode, mtime and "
        "links kept, each file written atomically, as you). Only changed blocks travel, once per tree link; "
        "nodes holding the same old version send its signatures up once.",
        epilog=PATHS,
    ),
    Mode(
        ("gather", "rcp"),
        ("gather|rcp [-r] NODES SRC... DIR  copy from NODES to DIR/NODE/... here (identical files stored once)",),
        _gather_switches,
        _runner("gather", _cp),
        usage="gproc gather [-r] [--json] NODES SRC... DESTDIR",
        description="Copy files from NODES to DESTDIR/NODE/... on this machine.",
        epilog=PATHS,
        short=RECURSIVE,
    ),
    Mode(
        ("grep",),
        ("grep [-i] [-v] PATTERN NODES PATH...  matching lines on NODES, the same line of many nodes once",),
        _grep_switches,
        _runner("grep", _grep_tail),
        usage="gproc grep [-i] [-v] [--json] PATTERN NODES PATH...",
        description="Lines matching PATTERN (a Python regular expression) on NODES. Exit status: 0 a line "
        "was selected on every node, 1 on some node none, 2 an error.",
        epilog=PATHS,
        short=(("i", "--ignore-case"), ("v", "--invert")),
    ),
    Mode(
        ("tail",),
        ("tail [-f] [-n K] NODES PATH...  the last K lines on NODES, merged (-f: then new lines, until Ctrl-C)",),
        _tail_switches,
        _runner("tail", _grep_tail),
        usage="gproc tail [-n K] [-f] [--json] NODES PATH...",
        description="The last K lines of files on NODES, identical lines of many nodes once.",
        epilog=PATHS,
        short=(("n", "--lines"), ("f", "--follow")),
    ),
)
