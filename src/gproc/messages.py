"""The tree's operation messages as types: each decoded and validated in one place (``decode``),
so the overlay's handlers work on fields that are known to be right. See docs/services.md.

* ``OpMsg``  ``{"t": "op", "op", "k", "b", "tg", "r"?}``: an op going down; ``r`` names its reducer.
* ``RepMsg`` ``{"t": "rep", "op", "g", "end", "v"?}``: a (partial) reply going up; ``v`` is the
  reducer's value, ``g`` the groups (rank positions in the targets the parent sent, ``merge``).
* ``LateMsg`` ``{"t": "late", "op", "g", "end", "tr"}``: results of an op sent again, or sent on,
  by a node that re-attached after its parent died; ``g`` with plain rank intervals (the new path
  knows nothing of the op), relayed unchanged to the master, which counts each result once; ``tr``
  the ranks whose output records the node could not keep for this (its buffer was full).
* ``CallMsg`` ``{"t": "call", "id", "fn", "a", "from"}`` and ``RetMsg`` ``{"t": "ret", "id", "r"}`` or
  ``{"t": "ret", "id", "err", "kind"}``: an upward call to the master and its answer; an error keeps
  its kind (``errors.from_wire``).

Malformed messages raise ProtocolError, which closes that one link.

What travels inside them, an op's body (``b``) and a client's request (``req``), is typed too: one
``Body`` subclass per op kind and per client request, declared by the service that handles it next to
its handler and decoded at the one point where the message enters (``services.base.typed`` for ops,
``Master.serve_client`` for requests, both through ``convert``). msgspec Structs, not dataclasses:
converting an ``exec`` body (80 environment variables) costs 2.6-3.0 µs, checking it by hand with
``.get``/``isinstance`` 3.7-6.3 µs, a dataclass built after those checks 6.4-7.6 µs
(bench/typed_decode.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from gproc import errors, wire
from gproc import ranks as rankset
from gproc.errors import GprocError, ProtocolError
from gproc.reduce import Reducer, from_spec

B = TypeVar("B", bound="Body")


class Body(msgspec.Struct, kw_only=True):
    """An op body or a client request: fields by name, each of the type it is declared with.

    Fields a receiver does not know are ignored (a request's ``t`` and ``fn``, a newer peer's
    additions); a missing field without a default, or one of another type, makes ``convert`` fail."""

    def wire(self) -> dict[str, Any]:
        """The body as the map that travels (shallow: nested values are plain data already)."""
        return msgspec.structs.asdict(self)


class Selected(Body):
    """A request that selects nodes: a tree path (``nodes``), node sets included (``w``) and
    excluded (``x``), resolved against the live tree by the master (``Master.select``)."""

    nodes: str | None = None
    w: str | None = None
    x: str | None = None

    @property
    def selects(self) -> bool:
        return bool(self.nodes or self.w or self.x)


def convert(raw: Any, kind: type[B], what: str, error: type[GprocError] = ProtocolError) -> B:
    """``raw`` (a decoded map) as a ``kind``; ``error`` naming ``what`` and the bad field if it is not one."""
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as e:
        raise error(f"bad {what}: {e}") from None


@dataclass(slots=True)
class OpMsg:
    op: int
    kind: str
    body: dict[str, Any]
    targets: set[int]
    reducer: Reducer[Any] | None = None

    @staticmethod
    def decode(msg: wire.Message) -> OpMsg:
        op, kind, body, tg = msg.get("op"), msg.get("k"), msg.get("b", {}), msg.get("tg")
        if not isinstance(op, int) or not isinstance(kind, str) or not isinstance(body, dict):
            raise ProtocolError("malformed op")
        try:
            targets = rankset.decode(tg if isinstance(tg, list) else [])
        except (ValueError, TypeError):
            raise ProtocolError("bad op targets") from None
        return OpMsg(op, kind, body, targets, from_spec(msg["r"]) if "r" in msg else None)

    @staticmethod
    def head(op: int, kind: str, body: dict[str, Any], reducer: Reducer[Any] | None) -> wire.Message:
        """The message without its targets (added per child link: ``wire.pack_with``)."""
        msg: wire.Message = {"t": "op", "op": op, "k": kind, "b": body}
        if reducer is not None:
            msg["r"] = reducer.spec()
        return msg


@dataclass(slots=True)
class RepMsg:
    op: int
    groups: Any  # as merge.pack wrote them; merge.unpack_into validates them
    end: bool
    value: Any = None  # the reducer's value, encoded; None: none in this reply

    @staticmethod
    def decode(msg: wire.Message) -> RepMsg:
        op, end = msg.get("op"), msg.get("end", False)
        if not isinstance(op, int) or not isinstance(end, bool):
            raise ProtocolError("malformed reply")
        return RepMsg(op, msg.get("g", []), end, msg.get("v"))

    def encode(self) -> wire.Message:
        msg: wire.Message = {"t": "rep", "op": self.op, "g": self.groups, "end": self.end}
        if self.value is not None:
            msg["v"] = self.value
        return msg


@dataclass(slots=True)
class CallMsg:
    id: int
    fn: str
    args: dict[str, Any]

    @staticmethod
    def decode(msg: wire.Message) -> CallMsg:
        cid, fn, args = msg.get("id"), msg.get("fn"), msg.get("a")
        if not isinstance(cid, int) or not isinstance(fn, str) or not isinstance(args, dict):
            raise ProtocolError("malformed call")
        return CallMsg(cid, fn, args)


@dataclass(slots=True)
class RetMsg:
    id: int
    result: Any = None
    error: GprocError | None = None

    @staticmethod
    def decode(msg: wire.Message) -> RetMsg:
        cid = msg.get("id")
        if not isinstance(cid, int):
            raise ProtocolError("malformed return")
        if "err" in msg:
            return RetMsg(
                cid, None, errors.from_wire({"msg": msg["err"], "kind": msg.get("kind")}, errors.RegistrationError)
            )
        return RetMsg(cid, msg.get("r"))

    @staticmethod
    def failed(cid: int, e: GprocError) -> wire.Message:
        return {"t": "ret", "id": cid, "err": str(e)[:2000], "kind": type(e).__name__}


@dataclass(slots=True)
class LateMsg:
    op: int
    groups: list[list[Any]]  # [[key, rank intervals], …]
    end: bool
    truncated: list[int]  # ranks, plain

    @staticmethod
    def decode(msg: wire.Message) -> LateMsg:
        op, g, end, tr = msg.get("op"), msg.get("g"), msg.get("end"), msg.get("tr", [])
        if not isinstance(op, int) or not isinstance(g, list) or not isinstance(end, bool):
            raise ProtocolError("malformed late results")
        if not isinstance(tr, list) or not all(isinstance(r, int) and r >= 0 for r in tr):
            raise ProtocolError("bad truncated ranks in late results")
        for item in g:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], list) and item[0]):
                raise ProtocolError("a late group must be [key, ranks]")
            try:
                rankset.decode(item[1])
            except (ValueError, TypeError):
                raise ProtocolError("bad rank set in late results") from None
        return LateMsg(op, g, end, tr)

    def encode(self) -> wire.Message:
        return {"t": "late", "op": self.op, "g": self.groups, "end": self.end, "tr": self.truncated}
