"""``gproc e NODES CMD [ARG...]``: run a command on nodes, its output merged in the tree.

A CMD given as one argument that holds whitespace or a shell metacharacter is a shell command line
and runs as ``sh -c CMD`` on each node, as pdsh and clush run theirs (``gproc e '**' 'hostname;
uptime'``); ``--`` before CMD runs it as the program of that name instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator

from gproc import client, eventloop
from gproc.errors import UsageError
from gproc.modes.jobs import add_display, display
from gproc.switches import Mode, Parser, add_selection, add_socket, boolean

SHELL_LINE = re.compile(r"[\s|&;<>()$`\\\"'*?\[\]#~={}!]")  # what makes one argument a shell command line

RULES = r"""NODES is a tree path of node ids (./. 1/. 0-3/** **); node names go with -w (node[0-7]).

CMD given as one argument holding whitespace or any of  | & ; < > ( ) $ ` \ " ' * ? [ ] # ~ = { } !
is a shell command line: it runs as 'sh -c CMD' on each node, as with pdsh and clush
(gproc e '**' 'hostname; uptime'). Only sh is shipped then: the commands inside the line are the
node's own; with -localbin, sh is the node's own too. Several arguments run as given, without a
shell. '--' before CMD never uses a shell: gproc e '**' -- 'my prog' runs the program 'my prog'.

CMD, its ELF interpreter and libraries are found in this machine's PATH (inside -r ROOT) and shipped;
-localbin runs the node's own program. A command not found exits 127; one that cannot run (a
directory, no execute permission) 126, as in a shell.
"""


def command(argv: list[str], verbatim: bool = False) -> list[str]:
    """The argv to run: a single argument that is a shell command line becomes ``sh -c LINE``."""
    if len(argv) == 1 and not verbatim and SHELL_LINE.search(argv[0]):
        return ["sh", "-c", argv[0]]
    return argv


def _switches(p: Parser) -> None:
    add_socket(p)
    add_selection(p)
    add_display(p)
    p.add_argument("-n", dest="no_stdin", action="store_true", help="no stdin: the processes read EOF at once")
    p.add_argument("-i", "--interactive", action="store_true", help="a prompt: each line you type runs on NODES")
    p.add_argument("--batch", action="store_true", help="detached: print the job id and return")
    p.add_argument("--timeout", type=float, metavar="S", help="end the job after S seconds")
    p.add_argument("--export", default="ALL", metavar="SPEC", help="ALL (default), NONE or VAR[=VAL],... as srun")
    p.add_argument("--files", metavar="LIST", help="-f FILE,DIR,DIR/.: ship these too (DIR/. the directory only)")
    p.add_argument("--root", default="/", metavar="ROOT", help="-r: find CMD and its libraries inside ROOT")
    p.add_argument(
        "--localbin",
        type=boolean,
        nargs="?",
        const=True,
        default=False,
        metavar="BOOL",
        help="-localbin: run the node's own CMD",
    )
    p.add_argument(
        "--private",
        type=boolean,
        nargs="?",
        const=True,
        default=True,
        metavar="BOOL",
        help="-p=false: no private mount namespace",
    )


def node_args(switches: list[str]) -> int:
    """How many positionals exec takes before the command: the node spec, unless -w/-x/--path."""
    return 0 if any(s.partition("=")[0] in ("-w", "-x", "--path") for s in switches) else 1


def environment(spec: str) -> dict[str, str]:
    """``--export`` like srun: ALL (default), NONE, or VAR[,VAR=VAL…] (ALL may be one of them)."""
    items = [s for s in spec.split(",") if s]
    env: dict[str, str] = {}
    if "ALL" in items:
        env.update(os.environ)
    for it in items:
        if it in ("ALL", "NONE"):
            continue
        k, eq, v = it.partition("=")
        if eq:
            env[k] = v
        elif k in os.environ:
            env[k] = os.environ[k]
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin")
    return env


def target(opts: argparse.Namespace, pos: list[str], interactive: bool = False) -> tuple[str | None, list[str]]:
    """(tree path, command) of an exec command line."""
    if opts.include or opts.exclude or opts.path:
        nodes, argv = opts.path, pos
    elif pos:
        nodes, argv = pos[0], pos[1:]
    else:
        nodes, argv = None, []
    if interactive:
        if argv:
            raise UsageError("gproc e -i takes nodes, not a command: the commands are the lines you type")
        if not (nodes or opts.include):
            raise UsageError("usage: gproc e -i NODES  or  gproc e -i -w NODESET")
    elif not argv:
        raise UsageError("usage: gproc e NODES CMD [ARG...]  or  gproc e -w NODESET CMD [ARG...]")
    return nodes, argv


def _stdin_wanted(opts: argparse.Namespace) -> bool:
    """stdin goes to the job when it is not a terminal (and not -n, and not a batch job)."""
    if opts.no_stdin or opts.batch:
        return False
    try:
        return not os.isatty(0) and os.fstat(0) is not None
    except OSError:
        return False


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def read_stdin(fd: int = 0) -> AsyncIterator[bytes]:
    """The client's stdin in chunks, without blocking the event loop on a pipe or socket."""
    loop = asyncio.get_running_loop()
    watch = True
    while True:
        if watch:
            ready: asyncio.Future[None] = loop.create_future()
            try:
                loop.add_reader(fd, _wake, ready)
            except (OSError, ValueError):  # regular files and /dev/null are always ready
                watch = False
            else:
                try:
                    await ready
                finally:
                    loop.remove_reader(fd)
        try:
            data = os.read(fd, client.STDIN_CHUNK)
        except BlockingIOError:
            continue
        except OSError:
            return
        if not data:
            return
        yield data


async def _exec(opts: argparse.Namespace, pos: list[str]) -> int:
    nodes, argv = target(opts, pos)
    c = client.Cluster(opts.socket)
    job = await c.exec(
        command(argv, opts.verbatim),
        nodes,
        include=opts.include,
        exclude=opts.exclude,
        env=environment(opts.export),
        timeout=opts.timeout,
        gather=opts.gather or opts.diff,
        stdin=read_stdin() if _stdin_wanted(opts) else None,
        batch=opts.batch,
        files=[f for f in (opts.files or "").split(",") if f],
        root=opts.root,
        localbin=opts.localbin,
        private=opts.private,
    )
    if opts.batch:
        print(json.dumps({"job": job.id, "n": job.nnodes, "absent": job.absent}) if opts.json else job.id)
        return 0
    loop = asyncio.get_running_loop()

    def on_sigint() -> None:
        print(f"gproc: sent {job.interrupt().name} to job {job.id}", file=sys.stderr)

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        await display(opts).consume(job)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    assert job.exit_status is not None
    return job.exit_status


def _run(opts: argparse.Namespace, pos: list[str]) -> int:
    if opts.interactive:
        from gproc import interactive

        nodes, _ = target(opts, pos, interactive=True)
        return interactive.session(opts, nodes, environment(opts.export))
    return eventloop.run(_exec(opts, pos))


MODES = (
    Mode(
        ("e", "exec"),
        (
            "e | exec NODES CMD [ARG...]     run CMD on NODES (tree path like ./. 1/. **, or -w NODESET)",
            "e -i NODES                      interactive: each line you type runs on NODES (':help' inside)",
            "e --batch NODES CMD [ARG...]    run detached: prints the job id and returns",
        ),
        _switches,
        _run,
        usage="gproc e [switches] NODES CMD [ARG...]\n       gproc e [switches] -w NODESET [-x NODESET] CMD [ARG...]",
        description="Run CMD on the selected nodes; output merged in the tree (identical lines once).",
        epilog=RULES,
        command_after=node_args,
    ),
)
