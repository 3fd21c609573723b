"""Every tree message type as a node decodes it: ``op`` (with its reducer, and values and samples
for that reducer), ``rep`` (with its groups, as rank sets and as positions in an op's targets),
``call`` and ``ret``.

Allowed: ProtocolError only (which closes that one link)."""

from __future__ import annotations

from typing import Any

from common import mutate_structured

from gproc import merge, wire
from gproc.errors import ProtocolError
from gproc.groups import Groups
from gproc.messages import CallMsg, OpMsg, RepMsg, RetMsg
from gproc.reduce import from_spec

BASE = [3, 5, 8, 13, 21]  # an op's targets, as a parent sent them


def _reducer(msg: dict[str, Any]) -> None:
    r = from_spec(msg.get("r"))
    value = r.identity()
    for field in ("v", "s"):
        if field in msg:
            got = r.decode(msg[field]) if field == "v" else r.lift(msg[field])
            value = r.merge(value, got)
    r.decode(r.encode(value))  # what a node merged, it can send on


def _decode(msg: dict[str, Any]) -> None:
    t = msg["t"]
    if t == "op":
        op = OpMsg.decode(msg)
        assert all(isinstance(x, int) and x >= 0 for x in op.targets)
    elif t == "rep":
        rep = RepMsg.decode(msg)
        merge.unpack_into(Groups(), rep.groups, None)
        merge.unpack_into(Groups(), rep.groups, BASE, set(BASE))
    elif t == "call":
        CallMsg.decode(msg)
    elif t == "ret":
        RetMsg.decode(msg)
    elif t == "hello":
        wire.check_hello(msg)
    else:
        _reducer(msg)  # any other type: its fields as a reducer spec, value and sample


def one(data: bytes) -> None:
    try:
        _decode(wire.unpack(data))
    except ProtocolError:
        pass


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    return mutate_structured(data, max_size, seed)
