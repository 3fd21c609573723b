"""Frame decoding: a byte stream as a peer would send it, read frame by frame with ``read_message``.

Allowed: ProtocolError (bad header, oversized or truncated frame, a body that is not a message),
EOFError at a clean end; then ``check_hello`` on each message (ProtocolError)."""

from __future__ import annotations

import asyncio

from gproc import wire
from gproc.errors import ProtocolError

MAX_FRAME = 1 << 16  # small, so sizes both sides of the limit are reached by mutation
LOOP = asyncio.new_event_loop()  # one for the whole run: a loop per input would be most of the cost


async def _read_all(data: bytes) -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    counter = wire.Counter()
    while True:
        try:
            msg = await wire.read_message(reader, MAX_FRAME, counter)
        except (EOFError, ProtocolError):
            return
        assert isinstance(msg, dict) and isinstance(msg["t"], str)
        try:
            wire.check_hello(msg, "client")
        except ProtocolError:
            pass


def one(data: bytes) -> None:
    try:
        wire.unpack(data)
    except ProtocolError:
        pass
    LOOP.run_until_complete(_read_all(data))
