"""Did every node's output arrive whole, in order and unchanged? A checker for labelled parallel output.

pdsh, clush and gproc print each line a node's command writes as ``NODES: line`` (NODES a node name,
or with gproc a folded node set such as ``node[0-15]`` for a line several nodes wrote alike), and
``gproc e --json`` as records ``{"nodes", "stream", "data"}`` (``data_b64`` when the bytes are not
text). Every node here runs the same command, so each node's lines must reproduce one expected byte
string, line by line: the checker follows each node's position in it.

Pure logic, no I/O beyond the file object it is handed. The usual case costs one ``startswith`` per
line; a node's first deviation switches it to an index of the expected lines that tells lines that
came out of order from lines that are missing, duplicated or altered (not in the expected output at
all: changed bytes, a line cut in two, invalid UTF-8 replaced).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import BinaryIO

from ClusterShell.NodeSet import NodeSet, NodeSetParseError

PREVIEW = 40  # bytes of a line shown in an error message


def _preview(data: bytes) -> str:
    return repr(data[:PREVIEW]) + (f"... ({len(data)} bytes)" if len(data) > PREVIEW else "")


@dataclass(slots=True)
class Tally:
    """One node's progress through the expected output."""

    lines: int = 0  # lines received
    bytes: int = 0  # their bytes, labels and newlines not counted
    off: int = 0  # in order so far: byte offset of the next expected line
    nxt: int = 0  # ... and its index
    seen: bytearray | None = None  # after the first deviation: which expected lines arrived
    high: int = -1  # ... and the highest index that arrived
    out_of_order: int = 0
    duplicated: int = 0
    altered: int = 0  # past the first one, order and duplicates are not judged: fragments match anything
    first_error: str = ""


@dataclass
class Verdict:
    """The whole output's: how many nodes got every line, in order, unchanged."""

    nodes: int
    expected_lines: int  # per node
    complete: int  # nodes whose every expected line arrived
    in_order: int  # nodes with no line before one that precedes it in the expected output
    unjudged: int  # ... of which order was judged only up to a first altered line
    exact: int  # nodes with no line altered or duplicated
    lines: int  # lines received, over all nodes (a folded line counts once per node)
    bytes: int
    stray: int  # output lines with no label, or a label naming no node of the run
    statuses: dict[str, int] = field(default_factory=dict)  # from --json: nodes per status/error
    errors: list[str] = field(default_factory=list)  # the first deviation of the first few nodes

    @property
    def ok(self) -> bool:
        return self.complete == self.in_order == self.exact == self.nodes and self.stray == 0

    def summary(self) -> str:
        """``complete 16/16, in order 16/16, exact 16/16`` and any stray lines."""
        n = self.nodes
        judged = f" ({self.unjudged} judged up to an altered line)" if self.unjudged else ""
        text = f"complete {self.complete}/{n}, in order {self.in_order}/{n}{judged}, exact {self.exact}/{n}"
        return text + (f", {self.stray} stray lines" if self.stray else "")


class Expected:
    """The bytes every node's command writes, as labelled output shows them: a last line without its
    newline gets one (every tool prints it so)."""

    def __init__(self, data: bytes) -> None:
        self.data = data + b"\n" if data and not data.endswith(b"\n") else data
        self.nlines = self.data.count(b"\n")
        self._index: dict[bytes, list[int]] | None = None

    def index(self) -> dict[bytes, list[int]]:
        """Expected line -> its indices (built on a first deviation only)."""
        if self._index is None:
            self._index = {}
            for i, line in enumerate(self.data.split(b"\n")[: self.nlines]):
                self._index.setdefault(line, []).append(i)
        return self._index


class Checker:
    """Feed it a run's output line by line; ``verdict()`` then says what arrived for each node."""

    def __init__(self, names: Iterable[str], expected: bytes, keep_errors: int = 3) -> None:
        self.expected = Expected(expected)
        self.nodes = {name: Tally() for name in names}
        self.stray = 0
        self.statuses: dict[str, str] = {}
        self.keep_errors = keep_errors
        self._labels: dict[bytes, list[Tally]] = {}

    # ---- input forms ---------------------------------------------------------------------------

    def tallies(self, label: bytes) -> list[Tally]:
        """The nodes a label names (a name or a folded node set); [] when it names none of the run's."""
        got = self._labels.get(label)
        if got is None:
            try:
                names = list(NodeSet(label.decode()))
            except (NodeSetParseError, UnicodeDecodeError, ValueError):
                names = []
            got = [self.nodes[n] for n in names if n in self.nodes]
            if len(got) != len(names):
                got = []
            self._labels[label] = got
        return got

    def feed_labelled(self, raw: bytes) -> list[Tally]:
        """One ``NODES: line`` of output (with or without its newline); the nodes it named."""
        if raw.endswith(b"\n"):
            raw = raw[:-1]
        label, sep, data = raw.partition(b": ")
        got = self.tallies(label) if sep else []
        if not got:
            self.stray += 1
        for t in got:
            self.line(t, data)
        return got

    def feed_json(self, raw: bytes) -> list[Tally]:
        """One ``--json`` record: output (``data``, or ``data_b64`` for bytes) or an exit status."""
        try:
            rec = json.loads(raw)
            got = self.tallies(str(rec["nodes"]).encode())
        except (ValueError, KeyError, TypeError):
            self.stray += 1
            return []
        if "status" in rec:
            what = str(rec["status"]) + (f" {rec['error']}" if rec.get("error") else "")
            for name in NodeSet(str(rec["nodes"])):
                self.statuses[name] = what
            return []
        if rec.get("stream", "stdout") != "stdout":
            return []
        if "data_b64" in rec:
            data = base64.b64decode(rec["data_b64"])
        elif isinstance(rec.get("data"), str):
            data = rec["data"].encode("utf-8", errors="surrogateescape")
        else:
            self.stray += 1
            return []
        if not got:
            self.stray += 1
        # a record is one line; should one carry several (or its newline), follow each line
        lines = data.split(b"\n")
        if len(lines) > 1 and lines[-1] == b"":
            lines.pop()
        for t in got:
            for d in lines:
                self.line(t, d)
        return got

    def feed_file(self, f: BinaryIO, json_mode: bool = False) -> None:
        """A whole output. Labelled lines take an inlined fast path: tens of millions of lines are usual."""
        if json_mode:
            for raw in f:
                self.feed_json(raw)
            return
        exp = self.expected.data
        size = len(exp)
        labels = self._labels
        rest = b""
        while chunk := f.read(1 << 22):
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for raw in lines:
                label, sep, data = raw.partition(b": ")
                got = labels.get(label) if sep else None
                if not got:
                    self.feed_labelled(raw)
                    continue
                for t in got:
                    if t.seen is None:
                        end = t.off + len(data)
                        if end < size and exp[end] == 10 and exp.startswith(data, t.off):
                            t.off = end + 1
                            t.nxt += 1
                            t.lines += 1
                            t.bytes += len(data)
                            continue
                    self.line(t, data)
        if rest:
            self.feed_labelled(rest)

    # ---- following one node --------------------------------------------------------------------

    def line(self, t: Tally, data: bytes) -> None:
        """One line (without its newline) that the output attributes to node ``t``."""
        t.lines += 1
        t.bytes += len(data)
        if t.seen is None:
            exp = self.expected.data
            end = t.off + len(data)
            if end < len(exp) and exp[end] == 10 and exp.startswith(data, t.off):
                t.off = end + 1
                t.nxt += 1
                return
            self._deviate(t, data)
        self._place(t, data)

    def _deviate(self, t: Tally, data: bytes) -> None:
        if t.nxt < self.expected.nlines:
            want = self.expected.data[t.off : self.expected.data.index(b"\n", t.off)]
            t.first_error = f"line {t.nxt + 1}: expected {_preview(want)}, got {_preview(data)}"
        else:
            t.first_error = f"after the last line ({t.nxt}), got {_preview(data)}"
        t.seen = bytearray(self.expected.nlines)
        t.seen[: t.nxt] = b"\x01" * t.nxt
        t.high = t.nxt - 1

    def _place(self, t: Tally, data: bytes) -> None:
        assert t.seen is not None
        where = self.expected.index().get(data)
        if where is None:
            t.altered += 1
            return
        if t.altered:  # a piece of a cut line may equal any short line: count it, judge nothing
            i = next((i for i in where if not t.seen[i]), -1)
            if i >= 0:
                t.seen[i] = 1
            return
        # the next occurrence after the furthest line so far, else an earlier one that has not arrived
        i = next((i for i in where if i > t.high), -1)
        if i < 0:
            i = next((i for i in where if not t.seen[i]), -1)
        if i < 0:
            t.duplicated += 1
            return
        t.seen[i] = 1
        if i < t.high:
            t.out_of_order += 1
        t.high = max(t.high, i)

    # ---- the answer ----------------------------------------------------------------------------

    def matched(self, t: Tally) -> int:
        return t.nxt if t.seen is None else t.seen.count(1)

    def verdict(self) -> Verdict:
        n_exp = self.expected.nlines
        complete = in_order = unjudged = exact = 0
        errors: list[str] = []
        for name, t in self.nodes.items():
            got = self.matched(t)
            complete += got == n_exp
            in_order += t.out_of_order == 0
            unjudged += t.out_of_order == 0 and t.altered > 0
            exact += t.altered == t.duplicated == 0
            problems = []
            if got < n_exp:
                problems.append(f"{n_exp - got} of {n_exp} lines missing")
            if t.out_of_order:
                problems.append(f"{t.out_of_order} out of order")
            if t.altered:
                problems.append(f"{t.altered} altered")
            if t.duplicated:
                problems.append(f"{t.duplicated} duplicated")
            if problems and len(errors) < self.keep_errors:
                first = f" (first: {t.first_error})" if t.first_error else ""
                errors.append(f"{name}: {', '.join(problems)}{first}")
        statuses: dict[str, int] = {}
        for what in self.statuses.values():
            statuses[what] = statuses.get(what, 0) + 1
        return Verdict(
            nodes=len(self.nodes),
            expected_lines=n_exp,
            complete=complete,
            in_order=in_order,
            unjudged=unjudged,
            exact=exact,
            lines=sum(t.lines for t in self.nodes.values()),
            bytes=sum(t.bytes for t in self.nodes.values()),
            stray=self.stray,
            statuses=statuses,
            errors=errors,
        )
