"""The display's byte handling (pure logic, no cluster): labels only at line starts, JSON that gives
back the exact bytes, gathered groups streamed from the spool as json.dumps would write them whole."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator

import pytest

from gproc import display
from gproc.client import Output, Status
from gproc.display import Display, json_lines, labelled

LINES = [
    b"plain",
    b'quote " and \\ backslash',
    b"tab\there",
    "h\u00e9llo \u2603 \U0001f600".encode(),
    b"bad \xff\xfe",
    b"",
]


def decode(records: bytes) -> dict[str, bytes]:
    """JSON records back to each node set's bytes."""
    out: dict[str, bytes] = {}
    for raw in records.splitlines():
        rec = json.loads(raw)
        line = rec["data"].encode() if "data" in rec else base64.b64decode(rec["data_b64"])
        out[rec["nodes"]] = out.get(rec["nodes"], b"") + line + (b"" if rec.get("newline") is False else b"\n")
    return out


@pytest.mark.parametrize("newline", [True, False])
def test_json_lines_are_lossless(newline: bool) -> None:
    data = b"\n".join(LINES) + (b"\n" if newline else b"")
    assert decode(json_lines("n[1-2]", "stdout", data, newline)) == {"n[1-2]": data}
    plain = b"1\n2\n3\n"  # the fast path writes exactly what json.dumps would
    want = "".join(json.dumps({"nodes": "n1", "stream": "stdout", "data": x}) + "\n" for x in "123")
    assert json_lines("n1", "stdout", plain).decode() == want


def test_labels_only_at_line_starts() -> None:
    assert labelled("n1", b"a\xff\n\nb\n") == b"n1: a\xff\nn1: \nn1: b\n"
    assert labelled("n1", b"no newline") == b"n1: no newline\n"


class _Job:
    """Events as a job yields them."""

    def __init__(self, events: list[Output | Status]) -> None:
        self.events = events

    async def _gen(self) -> AsyncIterator[Output | Status]:
        for ev in self.events:
            yield ev

    def __aiter__(self) -> AsyncIterator[Output | Status]:
        return self._gen()


def show(events: list[Output | Status], **kw: bool) -> str:
    out, err = io.StringIO(), io.StringIO()
    asyncio.run(Display(out=out, err=err, window=0.01, **kw).consume(_Job(events)))  # type: ignore[arg-type]
    return out.getvalue()


def test_gathered_json_streams_as_json_dumps_writes_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(display, "SPOOL_READ", 3)  # pieces that cut multi-byte characters
    text = 'h\u00e9llo \u2603\n\U0001f600 "q"\n'.encode()
    binary = b"ok\n\xff\x00\x80tail"
    events: list[Output | Status] = [
        Output("n[1-2]", 2, "stdout", 0, text[:7]),
        Output("n3", 1, "stdout", 0, binary[:4]),
        Output("n[1-2]", 2, "stdout", 1, text[7:]),
        Output("n3", 1, "stdout", 1, binary[4:]),
        Status("n[1-3]", 3, 0, ""),
    ]
    recs = [json.loads(x) for x in show(events, json_mode=True, gather=True).splitlines()]
    assert recs[0] == {"nodes": "n[1-2]", "stream": "stdout", "data": text.decode()}
    assert recs[1] == {"nodes": "n3", "stream": "stdout", "data_b64": base64.b64encode(binary).decode()}
    assert recs[2] == {"nodes": "n[1-3]", "status": 0}


def test_live_keeps_a_line_in_pieces_whole_per_node() -> None:
    """Pieces of one long line that merged with different nodes still print as one line per node."""
    events: list[Output | Status] = [
        Output("n[1-2]", 2, "stdout", 0, b"aaa"),
        Output("n1", 1, "stdout", 1, b"bbb\nnext\n"),
        Output("n2", 1, "stdout", 1, b"ccc\n"),
    ]
    got = show(events)
    assert sorted(got.splitlines()) == ["n1: aaabbb", "n1: next", "n2: aaaccc"]
