"""``gproc e -i NODES``: an interactive session, like clush's: each line you type runs on the nodes.

    gproc> uname -r              runs ``sh -c 'uname -r'`` on the nodes; output gathered (dshbak -c)
    gproc> :w node[0-7]          work with other nodes, by name (``@node[0-7]`` is the same)
    gproc> :path 1/.             … or by tree path;  ``:x NODESET`` excludes some
    gproc> +node9   -node3       add or remove nodes (clush's shortcuts)
    gproc> :nodes                show the nodes (also ``?``)
    gproc> =                     switch between gathered and live output (also ``:gather``)
    gproc> !ls                   run a command here, on this machine
    gproc> :help   :quit         (also ``quit``, ``exit``, Ctrl-D)

Ctrl-C while a command runs interrupts it on every node (twice within a second: SIGKILL) and the
session goes on; at the prompt it abandons the line. History (readline) is kept in
``~/.gproc_history``. With stdin not a terminal, lines are read and run without a prompt.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from typing import Any

from ClusterShell.NodeSet import NodeSet, NodeSetParseError

from gproc import platform
from gproc.client import Cluster, check_selection
from gproc.display import Display
from gproc.errors import GprocError

PROMPT = "gproc> "
HISTORY = "~/.gproc_history"
HELP = __doc__.split("\n\n")[1] if __doc__ else ""


class Session:
    """One interactive session: the node selection, the display mode, and the command loop."""

    def __init__(self, opts: argparse.Namespace, nodes: str | None, env: dict[str, str]) -> None:
        self.opts = opts
        self.cluster = Cluster(opts.socket)
        self.path: str | None = nodes
        self.include: str | None = opts.include
        self.exclude: str | None = opts.exclude
        self.env = env
        self.gather = True  # like clush -b; '=' switches to live output
        self.tty = os.isatty(0)
        self.status = 0
        self.names = ""

    # ---- the node set -------------------------------------------------------------------------------

    def _resolve(self) -> str:
        """The folded names of the current selection (asks the master)."""
        check_selection(self.path, self.include, self.exclude)

        async def go() -> Any:
            return await self.cluster.request("select", nodes=self.path, w=self.include, x=self.exclude)

        r = platform.run(go())
        if r["absent"]:
            print(f"gproc: not connected: {NodeSet.fromlist(r['absent'])}", file=sys.stderr)
        return str(NodeSet.fromlist(r["names"]))

    def _select(self, path: str | None, include: str | None, exclude: str | None) -> None:
        """Switch to another selection if it is valid and matches something; else keep the old one."""
        old = (self.path, self.include, self.exclude)
        self.path, self.include, self.exclude = path, include, exclude
        try:
            self.names = self._resolve()
        except (GprocError, NodeSetParseError) as e:
            self.path, self.include, self.exclude = old
            print(f"gproc: {e} (keeping {self.names or 'the previous nodes'})", file=sys.stderr)
            return
        self._show_nodes()

    def _show_nodes(self) -> None:
        n = len(NodeSet(self.names)) if self.names else 0
        print(f"Working with nodes: {self.names} ({n})", file=sys.stderr)

    def command(self, line: str) -> bool:
        """Handle a session command; False when the line is a command to run on the nodes."""
        word, _, arg = line.partition(" ")
        arg = arg.strip()
        names = NodeSet(self.names) if self.names else NodeSet()
        try:
            if line in (":q", ":quit", "quit", "exit"):
                raise EOFError
            if line in ("?", ":nodes"):
                self._show_nodes()
            elif line in (":help", ":h"):
                print(HELP, file=sys.stderr)
            elif line in ("=", ":gather", ":b"):
                self.gather = not self.gather
                print(f"Switching to {'gathered' if self.gather else 'live'} output", file=sys.stderr)
            elif word in (":w", ":nodes") and arg:
                self._select(None, arg, None)
            elif word == ":x" and arg:
                both = f"{self.exclude},{arg}" if self.exclude else arg
                self._select(self.path, self.include, both)
            elif word == ":path" and arg:
                self._select(arg, None, None)
            elif line.startswith("@") and len(line) > 1:
                self._select(None, line[1:].strip(), None)
            elif line.startswith("+") and len(line) > 1:
                self._select(None, str(names | NodeSet(line[1:].strip())), None)
            elif line.startswith("-") and len(line) > 1:
                left = names - NodeSet(line[1:].strip())
                if not left:
                    print("gproc: that would leave no node", file=sys.stderr)
                else:
                    self._select(None, str(left), None)
            elif line.startswith("!"):
                subprocess.run(line[1:], shell=True, check=False)
            elif line.startswith(":"):
                print(f"gproc: unknown session command {word!r} (try :help)", file=sys.stderr)
            else:
                return False
        except NodeSetParseError as e:
            print(f"gproc: bad node set: {e}", file=sys.stderr)
        return True

    # ---- running a line ------------------------------------------------------------------------------

    async def _run(self, line: str) -> int:
        job = await self.cluster.exec(
            ["sh", "-c", line],
            self.path,
            include=self.include,
            exclude=self.exclude,
            env=self.env,
            timeout=self.opts.timeout,
            gather=self.gather,
        )
        loop = asyncio.get_running_loop()

        def on_sigint() -> None:
            print(f"\ngproc: sent {job.interrupt().name} to job {job.id}", file=sys.stderr)

        loop.add_signal_handler(signal.SIGINT, on_sigint)
        try:
            disp = Display(json_mode=self.opts.json, gather=self.gather, window=self.opts.window, diff=self.opts.diff)
            await disp.consume(job)
        finally:
            loop.remove_signal_handler(signal.SIGINT)
        return job.exit_status if job.exit_status is not None else 255

    def run_line(self, line: str) -> None:
        try:
            self.status = platform.run(self._run(line))
        except GprocError as e:
            print(f"gproc: {e}", file=sys.stderr)
            self.status = e.exit_status
        except KeyboardInterrupt:  # before the job was started: nothing runs
            print("\ngproc: interrupted", file=sys.stderr)
            self.status = 130

    # ---- the loop ------------------------------------------------------------------------------------

    def loop(self) -> int:
        history = _readline_setup() if self.tty else None
        self.names = self._resolve()
        if self.tty:
            self._show_nodes()
            print("Enter ':help' for session commands, ':quit' or Ctrl-D to leave", file=sys.stderr)
        while True:
            try:
                line = input(PROMPT if self.tty else "").strip()
            except KeyboardInterrupt:
                print()
                continue
            except EOFError:
                if self.tty:
                    print()
                break
            if not line:
                continue
            if history is not None:
                with contextlib.suppress(OSError):
                    history.write_history_file(os.path.expanduser(HISTORY))
            try:
                if self.command(line):
                    continue
            except EOFError:
                break
            self.run_line(line)
            sys.stdout.flush()
        return self.status


def _readline_setup() -> Any:
    try:
        import readline
    except ImportError:
        return None
    path = os.path.expanduser(HISTORY)
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(1000)
    return readline


def session(opts: argparse.Namespace, nodes: str | None, env: dict[str, str]) -> int:
    """Run an interactive session on ``nodes`` (tree path) and/or ``opts.include``/``exclude``."""
    return Session(opts, nodes, env).loop()
