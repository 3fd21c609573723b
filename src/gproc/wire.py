"""Frames on every gproc connection: a 4-byte big-endian length, then one msgpack map.

The first frame each way is a hello carrying the protocol version; a peer speaking another version,
an oversized frame or bytes that are not a msgpack map close that one connection and nothing else.
Messages are plain dicts with a short type key ``t`` (see docs/protocol.md); never pickle.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgpack

from gproc.errors import ProtocolError

PROTOCOL_VERSION = 4
MAX_FRAME = 16 * 1024 * 1024
_HEADER = struct.Struct(">I")

Message = dict[str, Any]


def pack(msg: Message) -> bytes:
    """Encode one message as a frame."""
    return _frame(packed(msg))


def _frame(body: bytes) -> bytes:
    """A message body with its length prefix (ProtocolError past the frame limit)."""
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"message of {len(body)} bytes exceeds the frame limit of {MAX_FRAME}")
    return _HEADER.pack(len(body)) + body


def packed(value: Any) -> bytes:
    """One value encoded as ``pack`` encodes it inside a frame (for ``pack_with``)."""
    return msgpack.packb(value, use_bin_type=True)


def pack_with(head: bytes, name: str, encoded: bytes) -> bytes:
    """The frame of a message whose fields are ``head`` (``packed`` of a map of at most 14 fields)
    plus ``name`` with a value given already encoded (``encoded``, from ``packed``): byte for byte what
    ``pack`` gives for the whole message, without encoding that value again. For a large value sent
    often (an op's target list, made once per subtree) this leaves only the copy."""
    if not head or head[0] & 0xF0 != 0x80 or head[0] == 0x8F:
        raise ValueError("head must be a msgpack map of at most 14 fields")
    return _frame(b"".join((bytes((head[0] + 1,)), memoryview(head)[1:], packed(name), encoded)))


def unpack(body: bytes | memoryview) -> Message:
    """Decode a frame body; anything but a msgpack map with a string ``t`` is a ProtocolError."""
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises many types for garbage
        raise ProtocolError(f"undecodable frame: {type(e).__name__}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
        raise ProtocolError("frame is not a message")
    return msg


async def read_message(
    reader: asyncio.StreamReader, max_frame: int = MAX_FRAME, counter: Counter | None = None
) -> Message:
    """Read one frame; raises EOFError at a clean end of stream, ProtocolError on a bad frame.

    With a ``counter``, the frame's bytes (header included) are added to its ``bytes_in``."""
    try:
        head = await reader.readexactly(4)
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise ProtocolError("truncated frame header") from None
        raise EOFError from None
    (size,) = _HEADER.unpack(head)
    if size > max_frame:
        raise ProtocolError(f"frame of {size} bytes exceeds the limit of {max_frame}")
    try:
        body = await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise ProtocolError("truncated frame") from None
    if counter is not None:
        counter.bytes_in += 4 + size
        counter.last_in = 4 + size
    return unpack(body)


def hello(role: str, **fields: Any) -> Message:
    """The first message on a connection."""
    return {"t": "hello", "v": PROTOCOL_VERSION, "role": role, **fields}


def check_hello(msg: Message, role: str | None = None) -> Message:
    """Validate a peer's hello (type, version, role)."""
    if msg.get("t") != "hello":
        raise ProtocolError(f"expected hello, got {str(msg.get('t'))[:40]!r}")
    if msg.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {msg.get('v')!r} not supported (this is {PROTOCOL_VERSION})")
    if role is not None and msg.get("role") != role:
        raise ProtocolError(f"expected a {role} hello, got role {str(msg.get('role'))[:40]!r}")
    return msg


class Counter:
    """Bytes and frames that crossed a connection, so every operation can print its wire cost."""

    __slots__ = ("bytes_in", "bytes_out", "frames_in", "frames_out", "last_in")

    def __init__(self) -> None:
        self.bytes_in = self.bytes_out = self.frames_in = self.frames_out = 0
        self.last_in = 0  # size of the last frame received
