"""Typed tree messages: malformed ones are protocol errors; errors keep their kind across the wire."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from gproc import errors, wire
from gproc.errors import GprocError, ProtocolError
from gproc.messages import CallMsg, OpMsg, RepMsg, RetMsg
from gproc.reduce import Hist


def trip(msg: wire.Message) -> wire.Message:
    return wire.unpack(msgpack.packb(msg, use_bin_type=True))


def every_error() -> list[type[GprocError]]:
    out, todo = [], [GprocError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


@pytest.mark.parametrize("cls", every_error(), ids=lambda c: c.__name__)
def test_an_error_keeps_its_kind_and_exit_status_across_the_wire(cls: type[GprocError]) -> None:
    back = errors.from_wire(trip({"t": "error", **errors.to_wire(cls("why"))}))
    assert type(back) is cls and str(back) == "why" and back.exit_status == cls.exit_status
    ret = RetMsg.decode(trip(RetMsg.failed(7, cls("no"))))
    assert type(ret.error) is cls and ret.id == 7


def test_an_unknown_kind_becomes_the_default() -> None:
    assert type(errors.from_wire({"msg": "x", "kind": "Nope"})) is errors.RemoteError


def test_op_and_reply_round_trip() -> None:
    head = OpMsg.head(5, "stat", {"p": "/"}, Hist([1, 2]))
    m = OpMsg.decode(trip({**head, "tg": [1, 3]}))
    assert (m.op, m.kind, m.body, m.targets, m.reducer and m.reducer.spec()) == (
        5,
        "stat",
        {"p": "/"},
        {1, 2, 3},
        ["hist", [1, 2]],
    )
    r = RepMsg.decode(trip(RepMsg(5, [[["s", 0, ""], True]], True, [0, 1, 2]).encode()))
    assert (r.op, r.end, r.value) == (5, True, [0, 1, 2])
    assert "v" not in RepMsg(5, [], False).encode()
    c = CallMsg.decode(trip({"t": "call", "id": 1, "fn": "blocks", "a": {"want": 2}}))
    assert (c.id, c.fn, c.args) == (1, "blocks", {"want": 2})


@pytest.mark.parametrize(
    ("cls", "msg"),
    [
        (OpMsg, {"t": "op", "op": "1", "k": "noop", "b": {}, "tg": []}),
        (OpMsg, {"t": "op", "op": 1, "k": "noop", "b": [], "tg": []}),
        (OpMsg, {"t": "op", "op": 1, "k": "noop", "b": {}, "tg": [3, 1]}),
        (OpMsg, {"t": "op", "op": 1, "k": "noop", "b": {}, "tg": [], "r": ["nope"]}),
        (RepMsg, {"t": "rep", "op": None, "g": []}),
        (RepMsg, {"t": "rep", "op": 1, "g": [], "end": "yes"}),
        (CallMsg, {"t": "call", "id": 1, "fn": 3, "a": {}}),
        (RetMsg, {"t": "ret", "id": "x"}),
    ],
)
def test_malformed_messages_are_protocol_errors(cls: Any, msg: wire.Message) -> None:
    with pytest.raises(ProtocolError):
        cls.decode(msg)
