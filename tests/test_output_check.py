"""The output checker of bench/output.py: faithful labelled output (any interleaving of the nodes, any
folding of alike lines into one ``node[0-3]: line``, live text or ``--json``) passes; one line dropped,
two lines of a node swapped, or one line's bytes changed is caught, and on that node only."""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

from ClusterShell.NodeSet import NodeSet
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from output_check import Checker

# a node's output: lines of any bytes but the newline (": " and invalid UTF-8 included)
lines_st = st.lists(st.binary(max_size=10).map(lambda b: b.replace(b"\n", b"")), min_size=1, max_size=12)


def names(n: int) -> list[str]:
    return [f"node{i}" for i in range(n)]


def join(lines: list[bytes], newline_at_end: bool) -> bytes:
    return b"\n".join(lines) + (b"\n" if newline_at_end else b"")


Records = list[tuple[list[str], bytes]]  # (nodes, line) as a tool prints them
Run = tuple[list[str], list[bytes], bool, Records]


@st.composite
def runs(draw: st.DrawFn) -> Run:
    """Nodes, the expected lines, whether the output ends with a newline, and the records a tool might
    print: the nodes interleaved at random, a line sometimes folded with other nodes at that line."""
    nodes = names(draw(st.integers(1, 5)))
    lines = draw(lines_st)
    nxt = dict.fromkeys(nodes, 0)
    records: Records = []
    while any(i < len(lines) for i in nxt.values()):
        node = draw(st.sampled_from([n for n, i in nxt.items() if i < len(lines)]))
        i = nxt[node]
        alike = [n for n in nodes if n != node and nxt[n] == i]
        group = [node, *draw(st.lists(st.sampled_from(alike), unique=True))] if alike else [node]
        for n in group:
            nxt[n] += 1
        records.append((group, lines[i]))
    # a last line without its newline is no line at all when it is empty
    return nodes, lines, draw(st.booleans()) or lines[-1] == b"", records


def labelled(records: Records) -> bytes:
    return b"".join(str(NodeSet.fromlist(g)).encode() + b": " + d + b"\n" for g, d in records)


def json_records(records: Records) -> bytes:
    out = []
    for g, d in records:
        rec: dict[str, str] = {"nodes": str(NodeSet.fromlist(g)), "stream": "stdout"}
        try:
            rec["data"] = d.decode()
        except UnicodeDecodeError:
            rec["data_b64"] = base64.b64encode(d).decode()
        out.append(json.dumps(rec).encode() + b"\n")
    return b"".join(out)


def check(nodes: list[str], lines: list[bytes], end_nl: bool, text: bytes, json_mode: bool = False) -> Checker:
    c = Checker(nodes, join(lines, end_nl))
    c.feed_file(io.BytesIO(text), json_mode=json_mode)
    return c


@given(runs(), st.booleans())
def test_faithful_output_passes(run: Run, js: bool) -> None:
    nodes, lines, end_nl, records = run
    v = check(nodes, lines, end_nl, json_records(records) if js else labelled(records), js).verdict()
    assert v.ok, v
    assert v.lines == len(nodes) * len(lines)
    assert v.bytes == len(nodes) * sum(map(len, lines))


@given(runs(), st.data())
def test_a_dropped_line_makes_its_nodes_incomplete(run: Run, data: st.DataObject) -> None:
    nodes, lines, end_nl, records = run
    k = data.draw(st.integers(0, len(records) - 1))
    lost = set(records[k][0])
    c = check(nodes, lines, end_nl, labelled(records[:k] + records[k + 1 :]))
    v = c.verdict()
    assert v.complete == len(nodes) - len(lost)
    assert v.in_order == v.exact == len(nodes)
    assert {n for n, t in c.nodes.items() if c.matched(t) < len(lines)} == lost


@given(runs(), st.data())
def test_two_lines_swapped_on_one_node_are_out_of_order(run: Run, data: st.DataObject) -> None:
    nodes, lines, end_nl, records = run
    node = data.draw(st.sampled_from(nodes))
    # that node's lines unfolded into records of its own, two different ones swapped
    pairs = [(a, b) for a in range(len(lines)) for b in range(a + 1, len(lines)) if lines[a] != lines[b]]
    if not pairs:
        return
    a, b = data.draw(st.sampled_from(pairs))
    mine = list(lines)
    mine[a], mine[b] = mine[b], mine[a]
    others = [([n for n in g if n != node], d) for g, d in records]
    out = [r for r in others if r[0]] + [([node], d) for d in mine]
    c = check(nodes, lines, end_nl, labelled(out))
    v = c.verdict()
    assert c.nodes[node].out_of_order >= 1
    assert v.in_order == len(nodes) - 1
    assert v.complete == v.exact == len(nodes)


@given(runs(), st.data())
def test_changed_bytes_are_not_exact(run: Run, data: st.DataObject) -> None:
    nodes, lines, end_nl, records = run
    k = data.draw(st.integers(0, len(records) - 1))
    group, line = records[k]
    changed = line + b"\xef\xbf\xbd"  # as when invalid UTF-8 becomes U+FFFD, or a line is cut elsewhere
    if changed in lines:
        return
    out = [*records[:k], (group, changed), *records[k + 1 :]]
    v = check(nodes, lines, end_nl, labelled(out)).verdict()
    assert v.exact == v.complete == len(nodes) - len(group)
    assert v.in_order == len(nodes)


def test_a_long_last_line_without_newline_and_stray_output() -> None:
    long = b"x" * 100_000
    c = Checker(names(2), b"a\n" + long)
    c.feed_file(io.BytesIO(b"node[0-1]: a\nnode1: " + long + b"\nnode0: " + long[:65536] + b"\ngarbage\nnode9: a\n"))
    v = c.verdict()
    assert (v.complete, v.in_order, v.exact, v.stray) == (1, 2, 1, 2)
    assert v.errors[0].startswith("node0: 1 of 2 lines missing, 1 altered (first: line 2: expected b'xxx")


def test_json_statuses_and_replaced_bytes() -> None:
    c = Checker(names(2), b"a\xffb\n")
    recs = [
        {"nodes": "node[0-1]", "stream": "stdout", "data": "a\ufffdb"},
        {"nodes": "node0", "stream": "stderr", "data": "not checked"},
        {"nodes": "node0", "status": 0},
        {"nodes": "node1", "status": 255, "error": "lost"},
    ]
    c.feed_file(io.BytesIO(b"".join(json.dumps(r).encode() + b"\n" for r in recs)), json_mode=True)
    v = c.verdict()
    assert (v.complete, v.exact, v.stray) == (0, 0, 0)
    assert v.statuses == {"0": 1, "255 lost": 1}


def test_pieces_of_an_altered_line_are_not_judged_for_order() -> None:
    # a line cut in two: its second piece equals the first line, which is no duplicate nor reordering
    c = Checker(names(1), b"ab\nqab\nc\n")
    c.feed_file(io.BytesIO(b"node0: ab\nnode0: q\nnode0: ab\nnode0: c\n"))
    v = c.verdict()
    assert (v.complete, v.in_order, v.unjudged, v.exact) == (0, 1, 1, 0)
    assert c.nodes["node0"].duplicated == c.nodes["node0"].out_of_order == 0
