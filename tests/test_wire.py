"""Frames: round trips, and no byte sequence makes the decoder raise anything but ProtocolError/EOFError."""

from __future__ import annotations

import asyncio
import socket
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gproc import wire
from gproc.errors import ProtocolError

messages = st.fixed_dictionaries(
    {"t": st.text(max_size=10)},
    optional={"op": st.integers(0, 2**63 - 1), "g": st.lists(st.binary(max_size=20)), "s": st.text()},
)


@given(messages)
def test_round_trip(msg: dict[str, object]) -> None:
    frame = wire.pack(msg)
    (size,) = struct.unpack(">I", frame[:4])
    assert size == len(frame) - 4
    assert wire.unpack(frame[4:]) == msg


def _read_all(data: bytes) -> list[wire.Message]:
    async def go() -> list[wire.Message]:
        r = asyncio.StreamReader()
        r.feed_data(data)
        r.feed_eof()
        out = []
        while True:
            try:
                out.append(await wire.read_message(r, max_frame=1 << 16))
            except EOFError:
                return out

    return asyncio.run(go())


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(st.text(max_size=6), values, max_size=14), st.text(max_size=6), values)
def test_a_frame_with_a_value_packed_beforehand_is_the_same_frame(
    head: dict[str, object], name: str, value: object
) -> None:
    """pack_with (an op's target list encoded once, sent to many) gives pack's bytes exactly."""
    head.pop(name, None)
    assert wire.pack_with(wire.packed(head), name, wire.packed(value)) == wire.pack({**head, name: value})


def test_pack_with_refuses_what_it_cannot_extend() -> None:
    with pytest.raises(ValueError):
        wire.pack_with(wire.packed([1, 2]), "tg", wire.packed(1))  # not a map
    with pytest.raises(ValueError):
        wire.pack_with(wire.packed({str(i): i for i in range(15)}), "tg", wire.packed(1))  # no fixmap room
    with pytest.raises(ProtocolError, match="exceeds"):
        wire.pack_with(wire.packed({"t": "op"}), "tg", wire.packed(b"x" * wire.MAX_FRAME))


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_garbage_stream_only_protocol_errors(data: bytes) -> None:
    try:
        _read_all(data)
    except ProtocolError:
        pass


@settings(max_examples=200)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=4),
    )
)
def test_any_msgpack_value_is_a_message_or_a_protocol_error(value: object) -> None:
    body = msgpack.packb(value, use_bin_type=True)
    try:
        msg = wire.unpack(body)
    except ProtocolError:
        return
    assert isinstance(msg, dict) and isinstance(msg["t"], str)


def test_oversized_frame_refused_before_reading_it() -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        _read_all(struct.pack(">I", wire.MAX_FRAME + 1))


def test_hello_version_checked() -> None:
    wire.check_hello(wire.hello("node"), "node")
    with pytest.raises(ProtocolError, match="version"):
        wire.check_hello({"t": "hello", "v": 99, "role": "node"})
    with pytest.raises(ProtocolError, match="role"):
        wire.check_hello(wire.hello("client"), "node")


class _Recorder:
    """Stands in for a TLS transport: records each write (pure logic of TreeLink's framing)."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self.writes: list[bytes] = []
        self.sock = sock
        self.aborted = False

    def get_extra_info(self, name: str) -> object:
        return self.sock if name == "socket" else None

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def write(self, data: bytes | memoryview) -> None:
        self.writes.append(bytes(data))

    def abort(self) -> None:
        self.aborted = True


@given(st.integers(0, 3 * 64 * 1024), st.integers(1, 100_000))
@settings(max_examples=30, deadline=None)
def test_tree_link_writes_big_frames_in_slices(size: int, piece: int) -> None:
    """A big frame (a file chunk) reaches the transport in writes of at most 64 KiB (TLS keeps a
    buffer of the largest write per link), and a peer reading them in any pieces gets it back."""
    from gproc.overlay import TreeLink

    async def go() -> None:
        sender, receiver = TreeLink({"name": "a"}), TreeLink({"name": "b"})
        transport = _Recorder()
        sender.connection_made(transport)  # type: ignore[arg-type]
        got: list[wire.Message] = []
        receiver.handler = lambda _link, msg: got.append(msg)
        msg = {"t": "op", "d": bytes(range(256)) * (size // 256)}
        assert sender.send(msg)
        assert all(len(w) <= 64 * 1024 for w in transport.writes)
        stream = b"".join(transport.writes)
        assert stream == wire.pack(msg)
        for i in range(0, len(stream), piece):
            receiver.data_received(stream[i : i + piece])
        assert got == [msg]

    asyncio.run(go())


def test_tree_link_sets_its_receive_buffer() -> None:
    """``recv_buffer`` reaches the link's socket (Linux doubles it); 0 leaves the system's."""
    from gproc.overlay import TreeLink

    async def go() -> None:
        with socket.socket() as small, socket.socket() as default:
            before = default.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            TreeLink({}, recv_buffer=24 * 1024).connection_made(_Recorder(small))  # type: ignore[arg-type]
            TreeLink({}).connection_made(_Recorder(default))  # type: ignore[arg-type]
            assert small.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * 24 * 1024 != before
            assert default.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == before

    asyncio.run(go())


# junk: any bytes, or any bytes behind a length that fits them (so the decoder sees a whole bad frame)
junk_bytes = st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda b: struct.pack(">I", len(b)) + b))


@given(st.lists(messages, max_size=4), junk_bytes, st.lists(st.integers(1, 400), min_size=1, max_size=8))
@settings(max_examples=200, deadline=None)
def test_tree_link_survives_any_bytes(msgs: list[dict[str, object]], junk: bytes, cuts: list[int]) -> None:
    """Whole frames and then any bytes, read in any pieces: the frames before the junk arrive in order,
    and the junk either waits as a partial frame or closes the link; nothing raises."""
    from gproc.overlay import TreeLink

    async def go() -> None:
        link = TreeLink({"name": "fuzz"})
        transport = _Recorder()
        link.connection_made(transport)  # type: ignore[arg-type]
        got: list[wire.Message] = []
        link.handler = lambda _link, msg: got.append(msg)
        stream = b"".join(wire.pack(m) for m in msgs) + junk
        pos, i = 0, 0
        while pos < len(stream) and not link.closed:
            step = cuts[i % len(cuts)]
            link.data_received(stream[pos : pos + step])
            pos, i = pos + step, i + 1
        assert got[: len(msgs)] == msgs
        assert link.closed == transport.aborted

    asyncio.run(go())
