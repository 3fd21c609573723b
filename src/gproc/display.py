"""Showing a job's merged output: live ``name: line``, gathered like ``dshbak -c`` (stderr groups on
stderr), as unified diffs against the largest group (``--diff``, like ``clush --diff``: only the
differences, the largest group itself with ``verbose``), or JSON Lines.

Output is written byte for byte as the programs wrote it, only labels added at line starts. JSON
records (stable field names): output ``{"nodes", "stream", "data"}`` (live: one line without its
newline, and ``"newline": false`` on an output's last line when it ended without one; gathered: a
group's whole output); bytes that are not UTF-8 come as ``"data_b64"`` (base64) instead of ``"data"``;
exit statuses ``{"nodes", "status"}``; nodes that could
not run the command ``{"nodes", "status": 255, "error": reason}``. ``nodes`` is a folded node set.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import difflib
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from typing import IO

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


def _write(f: IO[str], data: bytes) -> None:
    """Write bytes as they are: to the binary layer under a text stream (sys.stdout), else decoded
    with surrogateescape (a StringIO), which gives the same bytes back when encoded likewise."""
    raw = getattr(f, "buffer", None)
    if raw is not None:
        raw.write(data)
    else:
        f.write(data.decode("utf-8", "surrogateescape"))


# bytes a JSON string cannot hold as they are (controls but newline, quote, backslash, non-ASCII)
_NOT_PLAIN = re.compile(rb"[^\x20\x21\x23-\x5b\x5d-\x7e\n]")


def json_data(data: bytes) -> dict[str, str]:
    """A JSON record's field for output bytes: ``data`` (text) when they are UTF-8, else ``data_b64``
    (standard base64 of the bytes): either way the record gives back the exact bytes."""
    try:
        return {"data": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"data_b64": base64.b64encode(data).decode("ascii")}


def json_lines(nodes: str, stream: str, data: bytes, newline: bool = True) -> bytes:
    """Live JSON records of output ``data`` (whole lines): one per line, the line without its newline;
    ``newline`` False says the last line had none (the output ended there)."""
    body = data[:-1] if newline and data.endswith(b"\n") else data
    if not _NOT_PLAIN.search(body):  # plain ASCII lines: one join instead of a json.dumps per line
        head = ('{"nodes": ' + json.dumps(nodes) + ', "stream": "' + stream + '", "data": "').encode()
        out = head + body.replace(b"\n", b'"}\n' + head) + b'"}\n'
        if not newline:
            out = out[:-2] + b', "newline": false}\n'
        return out
    recs = []
    lines = body.split(b"\n")
    for i, line in enumerate(lines):
        rec: dict[str, object] = {"nodes": nodes, "stream": stream, **json_data(line)}
        if not newline and i == len(lines) - 1:
            rec["newline"] = False
        recs.append(json.dumps(rec))
    return ("\n".join(recs) + "\n").encode()


def labelled(nodes: str, data: bytes) -> bytes:
    """Whole lines with ``nodes: `` put at the start of each (a newline ends the last if it lacks one)."""
    head = nodes.encode() + b": "
    body = data[:-1] if data.endswith(b"\n") else data
    return head + body.replace(b"\n", b"\n" + head) + b"\n"


SPOOL_READ = 1 << 20  # gathered output is read back from the spool file in pieces this big


class _Gathered:
    """One node's gathered output on one stream: where its records are in the spool file, by line
    number, and a digest of it so far (nodes with equal digests print as one group)."""

    __slots__ = ("digest", "parts")

    def __init__(self) -> None:
        self.digest = hashlib.blake2b()
        self.parts: list[tuple[int, int, int]] = []  # (lineno, offset, size)


class Display:
    """Consumes a job's events and prints them in the chosen format."""

    def __init__(
        self,
        json_mode: bool = False,
        gather: bool = False,
        window: float = 0.05,
        out: IO[str] | None = None,
        err: IO[str] | None = None,
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
        # by stream and node, the start of a line whose end has not come yet: a line longer than a
        # record travels in pieces (which may merge with different nodes) and is printed whole
        self._open: dict[str, dict[str, bytes]] = {}
        self._gathered: dict[str, dict[str, _Gathered]] = {}  # by stream and node name
        self._spool: IO[bytes] | None = None

    async def consume(self, job: Job) -> None:
        flusher = None if self.gather else asyncio.ensure_future(self._flush_loop())
        try:
            async for ev in job:
                if isinstance(ev, Status):
                    self.statuses.setdefault((ev.status, ev.error), []).append(ev.nodes)
                elif self.gather:
                    self._keep(ev)
                else:
                    self._live.setdefault((ev.stream, ev.lineno, ev.data), []).append(ev.nodes)
        finally:
            if flusher is not None:
                flusher.cancel()
            self._flush_live(final=True)
        if self.gather:
            self._print_gathered()
        self._print_statuses()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.window)
            self._flush_live()

    def _flush_live(self, final: bool = False) -> None:
        """Print what arrived in the last window: identical output once, with the folded node set.

        Records go by stream and number: within a window a node's records may have arrived out of
        order (merged with another node's identical record that came first)."""
        live, self._live = self._live, {}
        for (stream, _seq, data), sets in sorted(live.items(), key=lambda kv: (kv[0][0], kv[0][1])):
            nodes = _union(sets)
            if self._open.get(stream):  # some node's line is unfinished: go by each node's start
                for part, start in self._continued(nodes, stream):
                    self._take(part, stream, start + data)
            else:
                self._take(nodes, stream, data)
        if final:
            for stream, starts in self._open.items():
                by_start: dict[bytes, list[str]] = {}
                for name, start in starts.items():
                    by_start.setdefault(start, []).append(name)
                for start, names in by_start.items():
                    self._print_live(str(NodeSet.fromlist(names)), stream, start, False)
            self._open.clear()
        if live or final:
            self.out.flush()
            self.err.flush()

    def _continued(self, nodes: str, stream: str) -> list[tuple[str, bytes]]:
        """The nodes of a record split by the unfinished line each has (b"" for none)."""
        starts = self._open[stream]
        by_start: dict[bytes, list[str]] = {}
        for name in NodeSet(nodes):
            by_start.setdefault(starts.pop(name, b""), []).append(name)
        if len(by_start) == 1 and b"" in by_start:
            return [(nodes, b"")]
        return [(str(NodeSet.fromlist(names)), start) for start, names in by_start.items()]

    def _take(self, nodes: str, stream: str, data: bytes) -> None:
        """Print the whole lines of ``data``; keep an unfinished last line for each of the nodes."""
        nl = data.rfind(b"\n") + 1
        if nl < len(data):
            rest = data[nl:]
            starts = self._open.setdefault(stream, {})
            for name in NodeSet(nodes):
                starts[name] = rest
            data = data[:nl]
        if data:
            self._print_live(nodes, stream, data, True)

    def _print_live(self, nodes: str, stream: str, data: bytes, newline: bool) -> None:
        if self.json:
            _write(self.out, json_lines(nodes, stream, data, newline))
        else:
            _write(self.err if stream == "stderr" else self.out, labelled(nodes, data))

    def _keep(self, ev: Output) -> None:
        """Gathering: a record's bytes go to the spool file once, whatever the number of its nodes;
        each node keeps where its records are and a digest of its output so far."""
        spool = self._spool
        if spool is None:
            spool = self._spool = tempfile.TemporaryFile(prefix="gproc-gather-")  # noqa: SIM115 (closed after printing)
        offset = spool.seek(0, os.SEEK_END)
        spool.write(ev.data)
        nodes = self._gathered.setdefault(ev.stream, {})
        for name in NodeSet(ev.nodes):
            g = nodes.get(name)
            if g is None:
                g = nodes[name] = _Gathered()
            g.digest.update(ev.data)
            g.parts.append((ev.lineno, offset, len(ev.data)))

    def _chunks(self, g: _Gathered) -> Iterator[bytes]:
        """A node's gathered output from the spool, in record order."""
        assert self._spool is not None
        self._spool.flush()
        fd = self._spool.fileno()
        for _, offset, size in sorted(g.parts):
            for i in range(0, size, SPOOL_READ):
                yield os.pread(fd, min(SPOOL_READ, size - i), offset + i)

    def _print_gathered(self) -> None:
        """Group nodes by their whole output (per stream, by its digest), largest group first; stderr
        groups go to stderr, as clush's. Only diffs (``--diff``) hold a group's output in memory; the
        rest streams from the spool file."""
        try:
            for stream in ("stdout", "stderr"):
                groups: dict[bytes, list[str]] = {}
                first: dict[bytes, _Gathered] = {}
                for name, g in self._gathered.get(stream, {}).items():
                    d = g.digest.digest()
                    groups.setdefault(d, []).append(name)
                    first.setdefault(d, g)
                ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), min(map(_natural, kv[1]))))
                ref: tuple[str, list[str]] | None = None
                out = self.err if stream == "stderr" else self.out
                for d, names in ordered:
                    nodes = str(NodeSet.fromlist(names))
                    if self.json:
                        self._json_group(nodes, stream, first[d])
                        continue
                    label = f"{nodes} ({len(names)})" + (" stderr" if stream == "stderr" else "")
                    if self.diff:
                        data = b"".join(self._chunks(first[d]))
                        text = data.decode("utf-8", "surrogateescape").splitlines(keepends=True)
                        if text and not text[-1].endswith("\n"):
                            text[-1] += "\n"
                        if ref is not None:
                            diff = "".join(difflib.unified_diff(ref[1], text, ref[0], label))
                            _write(out, diff.encode("utf-8", "surrogateescape"))
                            continue
                        ref = (label, text)
                        if not self.verbose:
                            continue  # only the differences (clush --diff): nothing when all agree
                    bar = "-" * min(max(len(label), 15), 78)
                    _write(out, f"{bar}\n{label}\n{bar}\n".encode())
                    last = b"\n"
                    for chunk in self._chunks(first[d]):
                        _write(out, chunk)
                        last = chunk[-1:] or last
                    if last != b"\n":
                        _write(out, b"\n")
                out.flush()
        finally:
            if self._spool is not None:
                self._spool.close()
                self._spool = None
        self.out.flush()

    def _json_group(self, nodes: str, stream: str, g: _Gathered) -> None:
        """One JSON record of a group's whole output, escaped piece by piece from the spool: what
        ``json.dumps`` of the whole record gives, with ``data_b64`` when the bytes are not UTF-8."""
        check = codecs.getincrementaldecoder("utf-8")()
        try:
            for chunk in self._chunks(g):
                check.decode(chunk)
            check.decode(b"", final=True)
            text = True
        except UnicodeDecodeError:
            text = False
        field = "data" if text else "data_b64"
        _write(self.out, f'{{"nodes": {json.dumps(nodes)}, "stream": "{stream}", "{field}": "'.encode())
        if text:
            dec = codecs.getincrementaldecoder("utf-8")()
            for chunk in self._chunks(g):
                _write(self.out, json.dumps(dec.decode(chunk))[1:-1].encode())
        else:
            carry = b""
            for chunk in self._chunks(g):
                buf = carry + chunk
                whole = len(buf) // 3 * 3
                _write(self.out, base64.b64encode(buf[:whole]))
                carry = buf[whole:]
            _write(self.out, base64.b64encode(carry))
        _write(self.out, b'"}\n')

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
