"""Showing a job's merged output: live ``name: line``, gathered like ``dshbak -c`` (stderr groups on
stderr), as unified diffs against the largest group (``--diff``, like ``clush --diff``: only the
differences, the largest group itself with ``verbose``), or JSON Lines.

JSON records (stable field names): output ``{"nodes", "stream", "data"}`` (live: one line without its
newline; gathered: a group's whole output); exit statuses ``{"nodes", "status"}``; nodes that could
not run the command ``{"nodes", "status": 255, "error": reason}``. ``nodes`` is a folded node set.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import re
import sys
from typing import TextIO

from ClusterShell.NodeSet import NodeSet

from gproc.client import Job, Output, Status

Key = tuple[str, int, bytes]


def _union(sets: list[str]) -> str:
    if len(sets) == 1:
        return sets[0]
    ns = NodeSet()
    for s in sets:
        ns.update(s)
    return str(ns)


def _natural(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key putting node2 before node10."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", name) if p)


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


class Display:
    """Consumes a job's events and prints them in the chosen format."""

    def __init__(
        self,
        json_mode: bool = False,
        gather: bool = False,
        window: float = 0.05,
        out: TextIO | None = None,
        err: TextIO | None = None,
        diff: bool = False,
        verbose: bool = False,
    ) -> None:
        self.json = json_mode
        self.diff = diff and not json_mode
        self.gather = gather or diff
        self.verbose = verbose  # --diff: also print the reference group
        self.window = window
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.statuses: dict[tuple[int, str], list[str]] = {}
        self._live: dict[Key, list[str]] = {}
        self._outputs: list[Output] = []

    async def consume(self, job: Job) -> None:
        flusher = None if self.gather else asyncio.ensure_future(self._flush_loop())
        try:
            async for ev in job:
                if isinstance(ev, Status):
                    self.statuses.setdefault((ev.status, ev.error), []).append(ev.nodes)
                elif self.gather:
                    self._outputs.append(ev)
                else:
                    self._live.setdefault((ev.stream, ev.lineno, ev.data), []).append(ev.nodes)
        finally:
            if flusher is not None:
                flusher.cancel()
            self._flush_live()
        if self.gather:
            self._print_gathered()
        self._print_statuses()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.window)
            self._flush_live()

    def _flush_live(self) -> None:
        """Print what arrived in the last window: identical lines once, with the folded node set."""
        live, self._live = self._live, {}
        for (stream, _lineno, data), sets in live.items():
            nodes = _union(sets)
            line = _text(data).rstrip("\n")
            if self.json:
                print(json.dumps({"nodes": nodes, "stream": stream, "data": line}), file=self.out)
            else:
                print(f"{nodes}: {line}", file=self.err if stream == "stderr" else self.out)
        if live:
            self.out.flush()

    def _print_gathered(self) -> None:
        """Group nodes by their whole output (per stream), largest group first."""
        per_node: dict[str, dict[str, list[tuple[int, bytes]]]] = {}
        for ev in self._outputs:
            for name in NodeSet(ev.nodes):
                per_node.setdefault(name, {}).setdefault(ev.stream, []).append((ev.lineno, ev.data))
        for stream in ("stdout", "stderr"):
            groups: dict[bytes, list[str]] = {}
            for name, streams in per_node.items():
                lines = streams.get(stream)
                if lines:
                    groups.setdefault(b"".join(d for _, d in sorted(lines)), []).append(name)
            ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), min(map(_natural, kv[1]))))
            ref: tuple[str, str] | None = None
            out = self.err if stream == "stderr" else self.out  # stderr groups stay on stderr, as clush's
            for data, names in ordered:
                nodes = str(NodeSet.fromlist(names))
                if self.json:
                    print(json.dumps({"nodes": nodes, "stream": stream, "data": _text(data)}), file=self.out)
                    continue
                label = f"{nodes} ({len(names)})" + (" stderr" if stream == "stderr" else "")
                text = _text(data) if data.endswith(b"\n") else _text(data) + "\n"
                if self.diff and ref is not None:
                    out.writelines(
                        difflib.unified_diff(
                            ref[1].splitlines(keepends=True), text.splitlines(keepends=True), ref[0], label
                        )
                    )
                    continue
                ref = (label, text)
                if self.diff and not self.verbose:
                    continue  # --diff shows only differences (clush --diff): nothing when all agree
                bar = "-" * min(max(len(label), 15), 78)
                print(f"{bar}\n{label}\n{bar}", file=out)
                out.write(text)
            out.flush()
        self.out.flush()

    def _print_statuses(self) -> None:
        for (status, error), sets in sorted(self.statuses.items()):
            nodes = _union(sets)
            if self.json:
                rec: dict[str, object] = {"nodes": nodes, "status": status}
                if error:
                    rec["error"] = error
                print(json.dumps(rec), file=self.out)
            elif error:
                print(f"{nodes}: {error}" + (f" (exit {status})" if status != 255 else ""), file=self.err)
            elif status:
                print(f"{nodes}: exit {status}", file=self.err)
        self.out.flush()
