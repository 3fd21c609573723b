"""A node of the tree: its links, registration, heartbeats, routing down and reducing up.

Every feature is the same motion: an *operation* (``op``) goes down only into the subtrees that hold
selected ranks, each selected node runs the op's handler, and every node merges its children's
``Groups`` with its own before passing one reply up. A ``Node`` holds all of its state (no module
globals), so thousands of nodes can share one process.

Links are TLS 1.3 with mutual authentication (see ``credential``); frames are described in ``wire``
and the messages in docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import re
import secrets
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Generator, Mapping, Set
from dataclasses import dataclass, field
from typing import Any

from gproc import certs, merge, wire
from gproc import ranks as rankset
from gproc.address import Address, parse_address
from gproc.errors import AuthError, GprocError, IdentityRefused, ProtocolError, RegistrationError
from gproc.groups import Groups, Key
from gproc.messages import CallMsg, LateMsg, OpMsg, RepMsg, RetMsg
from gproc.reduce import Reducer

log = logging.getLogger("gproc.overlay")

ID_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")
NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,255}$")

LOST: Key = ("s", 255, "lost")
TOO_LARGE: Key = ("s", 255, "operation too large for one frame")  # its targets and body past wire.MAX_FRAME
WRITE_SLICE = 64 * 1024  # TLS encrypts a write whole into a buffer that keeps its peak size
ADMIT_WAIT = 30.0  # how long a parent that is not attached yet holds a new child before refusing it
FLUSH_BYTES = 4 << 20  # results this big go up at once, whatever the timing (bounds a node's memory)
# What a node keeps of the results it sent up for an op that asks for redelivery (``Upward``): at
# most this many bytes per op, for at most this many ops, kept this long after the op ended here
JOURNAL_BYTES = 1 << 20
JOURNAL_OPS = 32
JOURNAL_KEEP = 30.0
# Late results a node relayed for its children (``Node.relayed``): kept at most this many bytes and
# ``JOURNAL_KEEP`` seconds, sent again after the node itself re-attached, because its old parent may
# have died with them in flight (the master counts each result once)
RELAY_BYTES = 1 << 20


@dataclass
class NodeConfig:
    """What a node needs to know to join a tree."""

    name: str
    id: str
    parents: list[Address] = field(default_factory=list)  # first the parent, then fallbacks
    listen: Address | None = None  # where children connect; None: accept no children
    key: str = ""  # the cluster credential, or with ``cert`` this node's private key
    cert: str | None = None  # this node's certificate (gproc.certs); None: the shared credential
    ca: str | None = None  # the cluster CA's certificate, with ``cert``
    revoked: str | None = None  # the master: its revoked-serials file, read at start and on SIGHUP
    # with ``cert``: the names a configured parent's certificate may hold (empty: any of the CA's), so
    # that a node certificate holder at a parent's address cannot stand in for it (the master)
    parent_names: list[str] = field(default_factory=list)
    heartbeat: float = 1.0  # seconds between pings on an idle link
    dead_after: float = 3.5  # a link silent this long is dead
    window: float = 0.01  # how long a node's own results are gathered before going up
    quiet: float = 0.25  # an interior node waits for its children while a new one reported within this …
    hold: float = 3.0  # … but never holds results longer than this
    edits: bool = True  # send near-identical output lines as edits of a reference line
    connect_timeout: float = 10.0  # TCP connect and TLS handshake
    bin_root: str = "/tmp/xproc"
    store_max: int | None = None  # bytes the store under bin_root may hold (None: unbounded)
    socket: str | None = None  # where this node serves clients (relayed to the master); None: nowhere
    # kernel receive buffer of each link (SO_RCVBUF), 0: the system's. What a read hands to TLS, and
    # so the buffers TLS keeps per link, grow with it: a local cluster's hundreds of nodes per process
    # set it small (gproc.local.LINK_RECV_BUFFER)
    recv_buffer: int = 0
    # the master: how long ranks reported lost may still deliver their results late (re-attaching
    # under another parent) before they are reported lost for good
    reattach_grace: float = 5.0


class Link:
    """One TLS connection to a parent or a child, with its byte counters and liveness clock."""

    __slots__ = ("closed", "counter", "last_rx", "last_tx", "peer", "reader", "writer")

    HIGH_WATER = 1 << 20

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: dict[str, Any]):
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.last_rx = self.last_tx = time.monotonic()
        self.closed = False
        self.counter = wire.Counter()

    def send(self, msg: wire.Message) -> bool:
        """Queue one message; False when the link is closed."""
        if self.closed:
            return False
        data = wire.pack(msg)
        try:
            self.writer.write(data)
        except (OSError, RuntimeError):
            self.abort()
            return False
        self.counter.bytes_out += len(data)
        self.counter.frames_out += 1
        self.last_tx = time.monotonic()
        return True

    async def close(self, timeout: float = 30.0) -> None:
        """Close once everything queued has been sent (at once if the peer does not take it in time)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.writer.close()
            async with asyncio.timeout(timeout):
                await self.writer.wait_closed()
        except (OSError, TimeoutError, ConnectionError, RuntimeError):
            with contextlib.suppress(Exception):
                self.writer.transport.abort()

    async def linger(self, timeout: float = 30.0) -> None:
        """Send what is queued, half-close, and read (dropping it) until the peer closes, then close.

        A client may still be sending (its stdin's end racing its job's end) when the last answer
        goes out; closing at once would make its next write fail with EPIPE, and that error would
        hide the answer still waiting in its receive buffer. After a half-close the peer reads our
        last messages and EOF, and its late writes land here, harmlessly."""
        if self.closed:
            return
        try:
            async with asyncio.timeout(timeout):
                if self.writer.can_write_eof():
                    self.writer.write_eof()
                while await self.reader.read(1 << 16):
                    pass
        except (OSError, TimeoutError, ConnectionError, RuntimeError, ValueError):
            pass
        await self.close(1.0)

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait while the link's send buffer is above its high-water mark (flow control)."""
        transport = self.writer.transport
        if self.closed or transport.get_write_buffer_size() < self.HIGH_WATER:
            return
        try:
            async with asyncio.timeout(timeout):
                await self.writer.drain()
        except (OSError, TimeoutError, ConnectionError):
            self.abort()

    def unsent(self) -> int:
        """Bytes queued on this link that the peer has not taken in yet."""
        if self.closed:
            return 0
        try:
            return int(self.writer.transport.get_write_buffer_size())
        except (AttributeError, RuntimeError):  # closing
            return 0

    async def receive(self) -> wire.Message:
        msg = await wire.read_message(self.reader, counter=self.counter)
        self.last_rx = time.monotonic()
        self.counter.frames_in += 1
        return msg

    def abort(self) -> None:
        """Close at once (a dead or misbehaving peer)."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                self.writer.transport.abort()

    def __repr__(self) -> str:
        return f"<Link {self.peer.get('name', '?')}>"


class TreeLink(asyncio.Protocol):
    """A TLS link to a parent or child, as an asyncio Protocol.

    Frames are parsed in ``data_received`` and handed to ``handler`` synchronously: no task, future
    or ``readexactly`` per message, which is what a node with thousands of links pays for most. Until
    a handler is set (during the handshake) messages queue up for ``receive()``.
    """

    HIGH_WATER = 1 << 20

    def __init__(self, peer: dict[str, Any], max_frame: int = wire.MAX_FRAME, recv_buffer: int = 0) -> None:
        self.peer = peer
        self.max_frame = max_frame
        self.recv_buffer = recv_buffer
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.counter = wire.Counter()
        self.last_rx = self.last_tx = time.monotonic()
        self.handler: Callable[[TreeLink, wire.Message], None] | None = None
        self.on_close: Callable[[TreeLink], None] | None = None
        self.on_open: Callable[[TreeLink], None] | None = None
        self._buf = bytearray()
        self._queue: list[wire.Message] = []
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._drained: asyncio.Future[None] | None = None
        self._closed_fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unsent = 0
        self.keepalive = 0.0  # > 0: send a pong while reading if nothing was sent for this long
        self.on_pause: Callable[[bool], None] | None = None  # told when sending pauses and resumes
        self.held = False  # not read for now (``hold_reading``): its silence is ours, not the peer's

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport
        transport.set_write_buffer_limits(high=self.HIGH_WATER)  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket") if self.recv_buffer > 0 else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.recv_buffer)
        if self.on_open is not None:
            self.on_open(self)

    def data_received(self, data: bytes) -> None:
        self.last_rx = now = time.monotonic()
        if self.keepalive and now - self.last_tx > self.keepalive:  # busy reading a long stream: say so
            self.send({"t": "pong"})
        self.counter.bytes_in += len(data)
        buf = self._buf
        if buf:  # the rest of a frame split across reads: gather it
            buf += data
            with memoryview(buf) as view:
                used = self._frames(view)
            if used > 0:
                del buf[:used]
        else:  # whole frames decode straight from the read; only a partial one is kept
            with memoryview(data) as view:
                used = self._frames(view)
                if 0 <= used < len(data):
                    buf += view[used:]

    def _frames(self, view: memoryview) -> int:
        """Decode and deliver the whole frames at the start of ``view`` (no copy of a frame: a file
        chunk's bytes are copied once, by the decoder); returns the bytes used, -1 once failed."""
        pos, end = 0, len(view)
        while end - pos >= 4 and not self.closed:
            size = int.from_bytes(view[pos : pos + 4], "big")
            if size > self.max_frame:
                self._fail(f"frame of {size} bytes exceeds the limit")
                return -1
            if end - pos - 4 < size:
                break
            try:
                msg = wire.unpack(view[pos + 4 : pos + 4 + size])
            except ProtocolError as e:
                self._fail(str(e))
                return -1
            pos += 4 + size
            self.counter.frames_in += 1
            self.counter.last_in = 4 + size
            self._deliver(msg)
        return pos

    def _deliver(self, msg: wire.Message) -> None:
        handler = self.handler
        if handler is None:
            self._queue.append(msg)
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)
            return
        try:
            handler(self, msg)
        except (ProtocolError, KeyError, TypeError, ValueError, AttributeError) as e:
            self._fail(f"bad message {str(msg.get('t'))[:20]!r}: {e}")
        except Exception:  # a handler bug closes this link, never the daemon
            log.exception("handling %r from %s", msg.get("t"), self.peer.get("name"))
            self._fail("internal error")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)
        cb, self.on_close = self.on_close, None
        if cb is not None:
            cb(self)

    @property
    def paused(self) -> bool:
        """The send buffer is above its high-water mark (``drain`` would wait)."""
        return self._paused and not self.closed

    def pause_writing(self) -> None:
        self._paused = True
        if self.on_pause is not None:
            self.on_pause(True)

    def resume_writing(self) -> None:
        self._paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if self.on_pause is not None:
            self.on_pause(False)

    def hold_reading(self, on: bool) -> None:
        """Stop (or resume) reading from the peer, so that what it sends waits in its own buffers."""
        if self.closed or self.transport is None or on == self.held:
            return
        self.held = on
        if on:
            self.transport.pause_reading()
        else:
            self.last_rx = time.monotonic()
            self.transport.resume_reading()

    # -- gproc side
    def peercert(self) -> dict[str, Any] | None:
        """The peer's TLS certificate as verified (``SSLObject.getpeercert()``), None without TLS."""
        return self.transport.get_extra_info("peercert") if self.transport is not None else None

    def peercert_der(self) -> bytes | None:
        ssl_object = self.transport.get_extra_info("ssl_object") if self.transport is not None else None
        return ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None

    def start(self, handler: Callable[[TreeLink, wire.Message], None], on_close: Callable[[TreeLink], None]) -> None:
        """Switch from the handshake to serving: queued messages go to the handler first."""
        self.handler = handler
        queued, self._queue = self._queue, []
        for msg in queued:
            if self.closed:
                break
            self._deliver(msg)
        if self.closed:
            on_close(self)
        else:
            self.on_close = on_close

    async def receive(self) -> wire.Message:
        """Next message during the handshake (EOFError once the link is closed)."""
        while not self._queue:
            if self.closed:
                raise EOFError
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._queue.pop(0)

    def send(self, msg: wire.Message) -> bool:
        """Queue one message; False when the link is closed."""
        if self.closed or self.transport is None:
            return False
        return self.send_frame(wire.pack(msg))

    def send_frame(self, data: bytes) -> bool:
        """Queue one frame already packed (``wire.pack``, ``wire.pack_with``); False when closed."""
        if self.closed or self.transport is None:
            return False
        if len(data) <= WRITE_SLICE:
            self.transport.write(data)
        else:
            view = memoryview(data)
            for i in range(0, len(data), WRITE_SLICE):
                self.transport.write(view[i : i + WRITE_SLICE])
        self.counter.bytes_out += len(data)
        self.counter.frames_out += 1
        self.last_tx = time.monotonic()
        return True

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait while the send buffer is above its high-water mark (flow control)."""
        if not self._paused or self.closed:
            return
        if self._drained is None or self._drained.done():
            self._drained = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._drained)
        except TimeoutError:
            self.abort()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed_fut)

    def silent_for(self, now: float) -> float:
        """Seconds without a sign of life from the peer: bytes from it, or it taking in what we send
        (our send buffer shrank since the last look). A peer busy reading a long stream of file
        chunks is alive even while its answers queue behind them."""
        if self.held:
            self.last_rx = now
            return 0.0
        try:
            unsent = self.transport.get_write_buffer_size() if self.transport is not None else 0
        except (AttributeError, RuntimeError):  # closing
            unsent = self._unsent
        if unsent < self._unsent:
            self.last_rx = now
        self._unsent = unsent
        return now - self.last_rx

    def _fail(self, why: str) -> None:
        log.debug("closing link to %s: %s", self.peer.get("name"), why)
        self.abort()

    def abort(self) -> None:
        """Close at once (a dead or misbehaving peer)."""
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()

    def __repr__(self) -> str:
        return f"<TreeLink {self.peer.get('name', '?')}>"


Sink = Callable[..., None]
"""Where an op's gathered results go: ``sink(groups, end)``, and for an op with a reducer
``sink(groups, end, value)`` with the reducer's value encoded for the wire."""


class Share:
    """All the ranks under one child link, frozen, for ops on the whole subtree (a job on every node,
    the common case): their wire encoding and sorted order are made on the first such op and reused
    until the subtree changes (``Node._route_add`` / ``_route_drop`` drop it). Saves each op the
    per-rank encode going down and the sort coming back up (a subtree's ranks are rarely contiguous)."""

    __slots__ = ("_encoded", "_ordered", "_packed", "ranks")

    def __init__(self, ranks: frozenset[int]) -> None:
        self.ranks = ranks
        self._encoded: list[int] | None = None
        self._ordered: list[int] | None = None
        self._packed: bytes | None = None

    def encoded(self) -> list[int]:
        """The ranks as the flat interval list an op's ``tg`` carries (shared: not to be changed)."""
        if self._encoded is None:
            self._encoded = rankset.encode(self.ranks)
        return self._encoded

    def packed(self) -> bytes:
        """The encoding as msgpack bytes, for ``wire.pack_with``."""
        if self._packed is None:
            self._packed = wire.packed(self.encoded())
        return self._packed

    def ordered(self) -> list[int]:
        """The ranks sorted: the base a child's reply positions index into (shared: not to be changed)."""
        if self._ordered is None:
            self._ordered = sorted(self.ranks)
        return self._ordered


class Upward:
    """What this node sent up for one op that asks for redelivery (``"redeliver": true`` in its body:
    a job): every part with plain ranks, kept so that after its parent died and it re-attached
    elsewhere the node sends them all again (``late`` messages relayed to the master, which counts
    what it already has once), and sends its later results the same way.

    Bounded: at most ``JOURNAL_BYTES`` per op. Past it output records are no longer kept (statuses
    always are); the ranks whose records were dropped travel with every late message, so the master
    reports the truncation with a reason rather than losing lines silently."""

    __slots__ = ("dropped", "ended", "ended_at", "link", "op", "parts", "size")

    def __init__(self, op_id: int, link: TreeLink | None) -> None:
        self.op = op_id
        self.link = link  # the parent link the op came down: results take the late path on any other
        self.parts: list[list[list[Any]]] = []
        self.size = 0
        self.dropped: set[int] = set()  # ranks with output records not kept
        self.ended = False
        self.ended_at = 0.0

    def keep(self, groups: Groups, end: bool) -> list[list[Any]]:
        """Record one part going up; returns it with plain ranks."""
        part = groups.to_wire()
        cost = 0
        for key, _ in part:
            cost += 16 + (len(key[3]) if len(key) == 4 and isinstance(key[3], bytes) else 0)
        kept = part
        if self.dropped or self.size + cost > JOURNAL_BYTES:
            kept = [g for g in part if g[0][0] != "o"]
            for g in part:
                if g[0][0] == "o":
                    self.dropped.update(rankset.decode(g[1]))
            cost = 16 * len(kept)
        if kept or end:
            self.parts.append(kept)
            self.size += cost
        if end:
            self.ended, self.ended_at = True, time.monotonic()
        return part

    def evict(self) -> None:
        """Forget the parts (too many ops kept): a redelivery reports the ranks they held truncated."""
        for part in self.parts:
            for g in part:
                if g[0][0] == "o":
                    self.dropped.update(rankset.decode(g[1]))
        self.parts = [[g for part in self.parts for g in part if g[0][0] != "o"]]
        self.size = 16 * len(self.parts[0])

    def late(self, part: list[list[Any]], end: bool) -> wire.Message:
        return LateMsg(self.op, part, end, sorted(self.dropped)).encode()

    def messages(self) -> list[wire.Message]:
        """Everything kept, as late messages (the last one ends the op when it ended here)."""
        n = len(self.parts)
        return [self.late(p, self.ended and i == n - 1) for i, p in enumerate(self.parts)]


class Op:
    """One operation as seen by one node: what it waits for and what it has gathered.

    When results go up: a node's own results ``window`` after the first of them. An interior node
    waits for its children: while the op starts (its first ``hold`` seconds), until every child has
    reported once; then once ``quiet`` seconds passed without news (a child reporting for the first
    time since the last flush, or ending), at the latest ``hold`` seconds after the first result came
    in; and, after the op's first flush, as soon as every child still running reported again (a
    *round*: lines that all nodes print at the same pace go up together). The processes of a big
    subtree start and finish at slightly different times; waiting for them turns a trickle of
    partial replies into one, so the bytes that reach the master do not grow with the number of
    nodes. When the last child ends, or ``FLUSH_BYTES`` have gathered, everything goes up at once. A
    *gathering* op (``-b``) holds everything until the end, unless ``GATHER_LIMIT`` distinct keys or
    ``FLUSH_BYTES`` pile up.
    """

    GATHER_LIMIT = 4096  # distinct keys a gathering node holds before it sends a partial reply

    __slots__ = (
        "base",
        "bases",
        "body",
        "bytes_in",
        "flushed",
        "frames_in",
        "gather",
        "groups",
        "heard",
        "id",
        "kind",
        "local",
        "node",
        "pending_bytes",
        "progress",
        "reducer",
        "round_start",
        "sink",
        "started",
        "timer",
        "timer_at",
        "unheard",
        "upward",
        "value",
        "valued",
        "waiting",
    )

    def __init__(
        self,
        node: Node,
        op_id: int,
        kind: str,
        body: dict[str, Any],
        sink: Sink,
        base: list[int] | None = None,
        reducer: Reducer[Any] | None = None,
    ):
        self.node = node
        self.id = op_id
        self.kind = kind
        self.body = body
        self.sink = sink
        self.base = base  # sorted targets this node was given: replies up give rank positions in it
        self.groups = Groups()
        self.waiting: dict[TreeLink, Set[int]] = {}  # child link -> the targets sent down it
        self.bases: dict[TreeLink, list[int]] = {}
        self.heard: set[TreeLink] = set()  # children that reported since the last flush
        self.unheard: set[TreeLink] = set()  # children that never reported
        self.started = asyncio.get_running_loop().time()
        self.round_start: float | None = None
        self.progress = 0.0  # when the last news came: a child reporting first in this round, or ending
        self.flushed = False  # anything sent up yet
        self.pending_bytes = 0  # about how much is gathered
        self.bytes_in = self.frames_in = 0  # reply frames (and their bytes) received from children
        self.local = False
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0  # when it fires (uvloop's handles do not say)
        self.gather = body.get("gather") is True  # hold everything until the end: one merged reply
        self.reducer = reducer  # an op with a reducer gathers one value besides its groups
        self.value: Any = reducer.identity() if reducer is not None else None
        self.valued = False  # the value holds something not sent up yet
        self.upward: Upward | None = None  # what was sent up, kept for redelivery (``Node._on_op``)

    def give(self, sample: Any) -> None:
        """Add this node's answer to the op's reduced value and schedule a flush upward."""
        if self.reducer is None:
            raise ProtocolError(f"operation {self.kind[:40]} has no reducer")
        self._merge_value(self.reducer.lift(sample))
        if self.timer is not None and not self.waiting:
            return
        if self.id in self.node.ops:
            self.pending()

    def _merge_value(self, value: Any) -> None:
        assert self.reducer is not None
        self.value = self.reducer.merge(self.value, value)
        self.valued = True
        self.pending_bytes += 8

    @property
    def gathered(self) -> bool:
        """Results wait to go up."""
        return self.valued or bool(self.groups)

    def emit(self, key: Key, ranks: set[int] | None = None) -> None:
        """Add a result for this node (or the given ranks) and schedule a flush upward."""
        self.groups.add(key, ranks if ranks is not None else (self.node.rank or 0,))
        self.pending_bytes += len(key[3]) if len(key) == 4 and isinstance(key[3], bytes) else 8
        if self.timer is not None and not self.waiting and self.pending_bytes < FLUSH_BYTES:
            return  # a burst of lines from the local job: the window's timer is already set
        if self.id in self.node.ops:
            self.pending()

    def _due(self) -> float | None:
        """When the gathered results should go up (None: now)."""
        assert self.round_start is not None
        cfg = self.node.cfg
        if self.pending_bytes >= FLUSH_BYTES:
            return None
        if not self.waiting or (self.flushed and self.heard.issuperset(self.waiting)):
            return self.round_start + cfg.window
        if self.unheard and not self.flushed and self.round_start < self.started + cfg.hold:
            return self.started + cfg.hold  # the subtree is starting: wait for each child's first word
        return min(self.round_start + cfg.hold, self.progress + cfg.quiet)

    def pending(self) -> None:
        """Results are waiting: send them up now, or make sure the timer fires when they are due."""
        if self.gather and len(self.groups) < self.GATHER_LIMIT and self.pending_bytes < FLUSH_BYTES:
            return  # at the end (or once it grows big)
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.round_start is None:
            self.round_start = self.progress = now
        due = self._due()
        if due is None or due <= now:
            self.flush()
            return
        if self.timer is not None:
            if self.timer_at <= due:
                return  # it fires first and looks again
            self.timer.cancel()
        self.timer = loop.call_at(due, self._on_timer)
        self.timer_at = due

    def _on_timer(self) -> None:
        self.timer = None
        if self.gathered and self.node.ops.get(self.id) is self:
            self.pending()

    def flush(self, end: bool = False) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.heard.clear()
        self.round_start = None
        self.pending_bytes = 0
        self.flushed = True
        if self.gathered or end:
            g = self.groups.take()
            up = self.upward
            if up is not None:
                part = up.keep(g, end)
                if up.link is not self.node.parent:  # re-attached since the op came: the late path
                    self.node.send_late(up.late(part, end))
                    return
            groups = g.to_wire() if self.base is None else merge.pack(g, self.base, self.node.cfg.edits)
            if self.reducer is None:
                self.sink(groups, end)
                return
            value = self.reducer.encode(self.value) if self.valued else None
            self.value, self.valued = self.reducer.identity(), False
            self.sink(groups, end, value)

    async def backpressure(self) -> None:
        """Wait while the way up is congested."""
        parent = self.node.parent
        if parent is not None:
            await parent.drain()

    @property
    def congested(self) -> bool:
        """Is the way up above its high-water mark (``backpressure`` would wait)?"""
        parent = self.node.parent
        return parent is not None and parent.paused


@dataclass
class Reply:
    """What came up for an op: its groups (``[key, rank intervals]`` pairs, plain ranks) and, for an
    op with a reducer, the reduced value; ``end`` on the last one."""

    groups: list[list[Any]]
    value: Any = None
    end: bool = False


class Request:
    """An op started by ``Node.request``: partial replies as they reach this node (``async for``), or
    all of them at once (``await``: the groups of every part, the values merged).

    Every op ends: a child link that dies reports its ranks lost, so waiting needs no timeout of its
    own (give one to ``wait`` to bound it anyway)."""

    def __init__(
        self,
        node: Node,
        op_id: int,
        kind: str,
        body: dict[str, Any],
        targets: set[int],
        reducer: Reducer[Any] | None = None,
    ) -> None:
        self.reducer = reducer
        self.ended = False
        self._whole = False  # only the whole is awaited: wake the waiter at the end, not for every part
        self._parts: collections.deque[Reply] = collections.deque()
        self._wake = asyncio.Event()
        self.op = node.start_op(op_id, kind, body, targets, self._sink, reducer=reducer)

    def _sink(self, groups: list[list[Any]], end: bool, value: Any = None) -> None:
        if value is not None and self.reducer is not None:
            value = self.reducer.decode(value)
        self._parts.append(Reply(groups, value, end))
        self.ended = self.ended or end
        if end or not self._whole:
            self._wake.set()

    def __aiter__(self) -> Request:
        return self

    async def __anext__(self) -> Reply:
        while not self._parts:
            if self.ended:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()
        return self._parts.popleft()

    async def wait(self, timeout: float | None = None) -> Reply:
        """Every reply merged into one (groups in arrival order)."""
        self._whole = True
        async with asyncio.timeout(timeout):
            while not self.ended:
                self._wake.clear()
                await self._wake.wait()
        r = self.reducer
        whole = Reply([], r.identity() if r is not None else None, True)
        while self._parts:
            part = self._parts.popleft()
            whole.groups.extend(part.groups)
            if r is not None and part.value is not None:
                whole.value = r.merge(whole.value, part.value)
        return whole

    def __await__(self) -> Generator[Any, None, Reply]:
        return self.wait().__await__()


Handler = Callable[[Op], Awaitable[None] | None]
"""An op handler: synchronous (returns None) or a coroutine for work that waits."""


class Node:
    """A node daemon: connects to its parent, accepts children, runs ops, reduces replies."""

    is_master = False

    def __init__(
        self,
        cfg: NodeConfig,
        *,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
    ) -> None:
        from gproc import credential  # contexts are costly: many nodes of a process share them

        self.cfg = cfg
        # with per-node certificates: this node's own (it signs its attach statements; checked first,
        # for the clearer word on a bad file) and the serials this node refuses among its children (the
        # master's list, sent down on a change)
        self.identity = certs.node_identity(cfg.cert, cfg.key, cfg.ca or "", cfg.name) if cfg.cert else None
        # a node that accepts no children needs no server side (with a certificate of its own, its
        # contexts are its own: a leaf of a local cluster then makes one, not two)
        self.server_ssl = server_ssl
        if server_ssl is None and (cfg.listen is not None or not cfg.cert):
            self.server_ssl = self._server_context()
        self.client_ssl = client_ssl or credential.client_context(cfg.key, cfg.cert, cfg.ca)
        self.revoked: frozenset[int] = certs.read_revoked(cfg.revoked)
        self.parent_name: str | None = None  # the name on the parent's certificate
        self.rank: int | None = None
        self.instance = secrets.token_hex(8)
        self.parent: TreeLink | None = None
        self.parent_address: Address | None = None
        self.ancestors: list[Address] = []
        self.children: dict[str, TreeLink] = {}
        self.route: dict[int, TreeLink] = {}  # rank -> the child link its subtree hangs from
        self.subtree: dict[TreeLink, set[int]] = {}  # the same, inverted: child link -> ranks under it
        self._whole: dict[TreeLink, Share] = {}  # a subtree frozen for ops on all of it (until it changes)
        self.ops: dict[int, Op] = {}
        self.upward: dict[int, Upward] = {}  # op id -> what went up for it, oldest first (``_journal``)
        self.relayed: collections.deque[tuple[float, int, wire.Message]] = collections.deque()  # (when, size, late)
        self.relayed_bytes = 0
        self._journal_swept = 0.0  # when ``_journal`` last let expired entries go
        self.handlers: dict[str, Handler] = {}
        self.reducers: dict[str, Reducer[Any]] = {}  # op kind -> the reducer its requests use by default
        # messages that services handle: from the parent (down) and from children (up)
        self.down_messages: dict[str, Callable[[TreeLink, wire.Message], None]] = {}
        self.up_messages: dict[str, Callable[[TreeLink, wire.Message], None]] = {}
        self.op_watchers: list[Callable[[Op], None]] = []  # told when an op's children end or it ends
        self.starters: list[Callable[[], Awaitable[None]]] = []  # services' start, in wiring order
        self.stoppers: list[Callable[[], None]] = []  # services' stop, in wiring order
        self.listen_address: Address | None = None
        self.registered = asyncio.Event()
        self.stopped = asyncio.Event()
        self.fatal: GprocError | None = None
        self._relay: dict[int, tuple[TreeLink, int, str]] = {}
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._op_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._shutdown_requested = False
        self.log = logging.getLogger(f"gproc.node.{cfg.name}")
        self.handlers["noop"] = self._noop  # services add theirs (gproc.services.base.install)

    # ---- lifetime -------------------------------------------------------------------------------

    def spawn(self, coro: Awaitable[Any], name: str | None = None) -> asyncio.Task[Any]:
        """Start a task owned by this node; it is cancelled when the node stops."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def own(self, task: asyncio.Task[Any] | None) -> None:
        """Make a task started elsewhere (a client connection's) this node's: cancelled when it stops."""
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        """Listen (if configured) and begin joining the parent; returns at once."""
        if self.cfg.listen is not None:
            await self._listen(self.cfg.listen)
        if self.cfg.parents:
            self.spawn(self._parent_loop())
        self.spawn(self._heartbeat_loop())
        for start in self.starters:
            await start()

    async def run(self) -> None:
        """Start and serve until stopped."""
        await self.start()
        await self.stopped.wait()

    async def stop(self) -> None:
        """Stop serving: end local jobs, close every link and task. Safe to call twice."""
        if self.stopped.is_set():
            return
        self.stopped.set()
        for stop in self.stoppers:
            stop()
        if self._server is not None:
            self._server.close()
        for link in [*self.children.values(), *([self.parent] if self.parent else [])]:
            link.abort()
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for op in list(self.ops.values()):
            if op.timer:
                op.timer.cancel()
        self.ops.clear()

    # ---- the parent side of this node ------------------------------------------------------------

    async def _listen(self, addr: Address) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._new_child_link,
            addr.host,
            addr.port,
            ssl=self.server_ssl or self._server_context(),  # never plain TCP
            ssl_handshake_timeout=10,
            backlog=1024,
        )
        sock = self._server.sockets[0].getsockname()
        self.listen_address = Address(addr.host, sock[1])

    def _server_context(self) -> ssl.SSLContext:
        from gproc import credential

        self.server_ssl = credential.server_context(self.cfg.key, self.cfg.cert, self.cfg.ca)
        return self.server_ssl

    def _parent_candidates(self) -> list[Address]:
        seen: list[Address] = []
        for a in [*self.cfg.parents, *self.ancestors]:
            if a not in seen:
                seen.append(a)
        return seen

    async def _parent_loop(self) -> None:
        """Stay attached: connect, serve the parent link, and on loss try the parent, then fallbacks."""
        delay = 0.1
        while not self.stopped.is_set():
            attached = False
            for addr in self._parent_candidates():
                try:
                    link = await self._join(addr)
                except (RegistrationError, IdentityRefused) as e:
                    retry = isinstance(e, RegistrationError) and (str(e).startswith("retry:") or self.rank is not None)
                    if retry:
                        # transient, or refused by a fallback while re-attaching: try the next one
                        self.log.warning("parent %s: %s", addr, e)
                        continue
                    self.fatal = e
                    self.log.error("%s", e)
                    self.spawn(self.stop())
                    return
                except AuthError as e:  # a parent not the one configured: say so, try again later
                    self.log.warning("%s", e)
                    continue
                except (OSError, GprocError, TimeoutError, ssl.SSLError, EOFError) as e:
                    self.log.debug("cannot join %s: %s", addr, e)
                    continue
                attached, delay = True, 0.1
                await self._serve_parent(link)
                break
            if self.stopped.is_set() or self._shutdown_requested:
                return
            if not attached:
                await asyncio.sleep(delay + secrets.randbelow(100) / 1000 * delay)
                delay = min(delay * 2, 2.0)

    async def _connect(self, addr: Address) -> TreeLink:
        """A TLS link to a would-be parent (tests put an in-memory link here)."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.cfg.connect_timeout):
            _, link = await loop.create_connection(
                lambda: TreeLink({"name": f"parent {addr}"}, recv_buffer=self.cfg.recv_buffer),
                addr.host,
                addr.port,
                ssl=self.client_ssl,
                server_hostname="gproc",
                ssl_handshake_timeout=self.cfg.connect_timeout,
            )
        return link

    def _proof(self, parent_name: str | None) -> dict[str, Any]:
        """What proves this node's name to the master with certificates: its attach statement under
        the parent named on the parent's certificate (the certificate itself goes up from the TLS
        link, taken by the parent)."""
        if self.identity is None or parent_name is None:
            return {}
        when, sig = self.identity.sign(self.cfg.id, self.instance, parent_name)
        return {"when": when, "sig": sig}

    async def _join(self, addr: Address) -> TreeLink:
        link = await self._connect(addr)
        try:
            parent_name = None
            if self.identity is not None:
                parent_name = certs.peer_name(link.peercert())
                if parent_name is None:
                    raise AuthError(f"parent {addr} presents a certificate that names no single node")
                pinned = self.cfg.parent_names
                if pinned and addr in self.cfg.parents and parent_name not in pinned:
                    raise AuthError(f"parent {addr} presents the certificate of {parent_name}, not {'/'.join(pinned)}")
            link.send(
                wire.hello(
                    "node",
                    name=self.cfg.name,
                    id=self.cfg.id,
                    instance=self.instance,
                    rank=self.rank,
                    addr=str(self.listen_address) if self.listen_address else None,
                    **self._proof(parent_name),
                )
            )
            async with asyncio.timeout(ADMIT_WAIT + 15.0):
                h = wire.check_hello(await link.receive(), "parent")
                if parent_name is not None and h.get("name") != parent_name:
                    said = str(h.get("name"))[:80]
                    raise AuthError(f"parent {addr} presents the certificate of {parent_name} but says it is {said}")
                reply = await link.receive()
        except BaseException:
            link.abort()
            raise
        if reply.get("t") == "error":
            link.abort()  # a refused certificate is for good, wherever this node tries: it stops
            raise (IdentityRefused if reply.get("auth") else RegistrationError)(str(reply.get("msg", "refused"))[:500])
        if reply.get("t") != "welcome" or not isinstance(reply.get("rank"), int):
            link.abort()
            raise ProtocolError("bad welcome")
        rejoined = self.rank is not None
        self.rank = reply["rank"]
        self.ancestors = [parse_address(a) for a in reply.get("ancestors", []) if isinstance(a, str)]
        self.parent_address = addr
        self.parent_name = parent_name
        hb = reply.get("hb")
        if isinstance(hb, list) and len(hb) == 2:
            self.cfg.heartbeat, self.cfg.dead_after = float(hb[0]), float(hb[1])
        self.parent = link
        self.registered.set()
        if rejoined:
            self._redeliver()
        for child in self.children.values():  # a re-attached subtree announces itself again
            child.send({"t": "reannounce"})
        self.log.debug("joined %s as rank %s", addr, self.rank)
        return link

    async def _serve_parent(self, link: TreeLink) -> None:
        link.keepalive = self.cfg.heartbeat
        link.on_pause = self._parent_congested
        link.start(self._dispatch_down, lambda lk: None)
        try:
            await link.wait_closed()
            self.log.debug("parent link ended")
        finally:
            link.abort()
            if self.parent is link:
                self.parent = None
                self.registered.clear()
                for fut in self._calls.values():
                    if not fut.done():
                        fut.set_exception(RegistrationError("lost the parent"))
                self._calls.clear()

    def _parent_congested(self, on: bool) -> None:
        """The way up is full (or drained again): stop (resume) reading the children, whose replies
        would otherwise pile up here; they stop reading their programs' output in turn."""
        for child in list(self.children.values()):
            child.hold_reading(on)

    def _dispatch_down(self, link: TreeLink, msg: wire.Message) -> None:
        t = msg["t"]
        if t == "ping":
            link.send({"t": "pong"})
        elif t == "op":
            self._on_op(msg)
        elif t == "ret":
            self._on_ret(msg)
        elif t == "shutdown":
            self._shutdown_requested = True
            for child in self.children.values():
                child.send({"t": "shutdown"})
            self.spawn(self._drain_and_stop())
        elif t == "reannounce":
            self.spawn(self._reannounce())
        elif t == "revoked":
            self.apply_revoked(frozenset(int(str(x), 16) for x in msg.get("s", [])))
        elif t in ("pong", "welcome"):
            pass
        elif t in self.down_messages:
            self.down_messages[t](link, msg)
        else:
            raise ProtocolError(f"unexpected message {t[:40]!r} from parent")

    async def _drain_and_stop(self) -> None:
        for child in self.children.values():
            with contextlib.suppress(Exception):
                await child.drain(1.0)
        await self.stop()

    async def _reannounce(self) -> None:
        """Tell the master this node is here again (its parent re-attached), then its children.

        A transient refusal (a link up the chain not attached yet, a call lost with a dying link)
        is retried while the same parent link lasts: the node is attached and heartbeats flow, so
        nothing else would ever register it again and the master would keep it lost for good."""
        parent = self.parent
        delay = 0.2
        while True:
            try:
                await self.call_up(
                    "attach",
                    {
                        "name": self.cfg.name,
                        "id": self.cfg.id,
                        "instance": self.instance,
                        "rank": self.rank,
                        "addr": str(self.listen_address) if self.listen_address else None,
                        **self._proof(self.parent_name),
                        **({"cert": self.identity.cert_der} if self.identity is not None else {}),
                    },
                )
                break
            except (GprocError, TimeoutError) as e:
                transient = isinstance(e, TimeoutError) or str(e).startswith("retry:")
                if not transient or self.stopped.is_set() or self.parent is not parent or parent is None:
                    self.log.warning("reannounce failed: %s", e)
                    return
                self.log.debug("reannounce failed, again in %.1fs: %s", delay, e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            if self.parent is not parent:
                return  # re-attached meanwhile: that join registered this node
        for child in self.children.values():
            child.send({"t": "reannounce"})

    # ---- upward calls (hop-by-hop RPC to the master) ---------------------------------------------

    async def call_up(self, fn: str, args: dict[str, Any], timeout: float = 15.0) -> Any:
        """Ask the master something; the request and its reply travel hop by hop."""
        if self.is_master:
            return await self.master_call(fn, args, None)
        parent = self.parent
        if parent is None:
            raise RegistrationError("not attached to a parent")
        cid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[cid] = fut
        parent.send({"t": "call", "id": cid, "fn": fn, "a": args, "from": self.rank})
        try:
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            self._calls.pop(cid, None)

    async def master_call(self, fn: str, args: dict[str, Any], via: TreeLink | None) -> Any:
        raise RegistrationError(f"{fn}: only the master answers calls")

    def register(self, args: dict[str, Any]) -> dict[str, Any]:
        """The master's side of ``attach``: enter a node in the topology, answer its rank."""
        raise RegistrationError("attach: only the master registers nodes")

    def _attach_claim(self, link: TreeLink, args: dict[str, Any]) -> dict[str, Any]:
        """An ``attach`` that came up ``link`` may speak only for that link's subtree: with no parent
        it is the child's own reannounce (its parent is this node), else the parent it names must be
        a node reached through ``link``. Without this a child could place any name anywhere in the
        topology, where nothing would ever report it lost."""
        parent = args.get("parent")
        if parent is None:
            if args.get("name") != link.peer.get("name") or args.get("id") != link.peer.get("id"):
                raise RegistrationError("attach: a child reannounces only itself")
            return {**args, "parent": self.rank}
        if type(parent) is not int or parent not in self.subtree.get(link, ()):
            raise RegistrationError(f"attach: parent {str(parent)[:40]} is not under this link")
        return args

    def _on_call(self, link: TreeLink, msg: wire.Message) -> None:
        call = CallMsg.decode(msg)
        cid, fn, args = call.id, call.fn, call.args
        if fn == "attach":
            try:
                args = self._attach_claim(link, args)
            except RegistrationError as e:
                self.log.warning("refused an attach from child %s: %s", link.peer.get("name"), e)
                link.send(RetMsg.failed(cid, e))
                return
            msg = {**msg, "a": args}
            if self.is_master:
                # answered at once, in the order of the link's messages: a detach that follows this
                # call on the same link must find the node registered, not be overtaken by it
                try:
                    result = self.register(args)
                except GprocError as e:
                    link.send(RetMsg.failed(cid, e))
                    return
                except Exception:  # the master survives any registration
                    self.log.exception("attach failed")
                    link.send(RetMsg.failed(cid, RegistrationError("internal error in the master (see its log)")))
                    return
                self._route_add(result["rank"], link)
                link.send({"t": "ret", "id": cid, "r": result})
                return
        if self.is_master:
            self.spawn(self._answer_call(link, cid, fn, args))
            return
        if self.parent is None:
            link.send(RetMsg.failed(cid, RegistrationError("retry: parent not attached")))
            return
        my = next(self._ids)
        self._relay[my] = (link, cid, fn)
        self.parent.send({**msg, "id": my})

    async def _answer_call(self, link: TreeLink, cid: int, fn: str, args: dict[str, Any]) -> None:
        try:
            result = await self.master_call(fn, args, link)
            reply: wire.Message = {"t": "ret", "id": cid, "r": result}
        except GprocError as e:
            reply = RetMsg.failed(cid, e)
        link.send(reply)

    def _on_ret(self, msg: wire.Message) -> None:
        ret = RetMsg.decode(msg)
        relay = self._relay.pop(ret.id, None)
        if relay is not None:
            link, orig, fn = relay
            r = ret.result
            if fn == "attach" and isinstance(r, dict) and isinstance(r.get("rank"), int) and not link.closed:
                self._route_add(r["rank"], link)  # a child gone meanwhile was reported lost already
            link.send({**msg, "id": orig})
            return
        fut = self._calls.get(ret.id)
        if fut is not None and not fut.done():
            if ret.error is not None:  # raised again here as the kind it was raised as at the master
                fut.set_exception(ret.error)
            else:
                fut.set_result(ret.result)

    def _route_add(self, rank: int, link: TreeLink) -> None:
        old = self.route.get(rank)
        if old is not None and old is not link:
            self._route_drop(rank, old)
        self.route[rank] = link
        self.subtree.setdefault(link, set()).add(rank)
        self._whole.pop(link, None)

    def _route_drop(self, rank: int, link: TreeLink) -> None:
        self._whole.pop(link, None)
        under = self.subtree.get(link)
        if under is not None:
            under.discard(rank)
            if not under:
                del self.subtree[link]

    # ---- the child side of this node -------------------------------------------------------------

    def _new_child_link(self) -> TreeLink:
        link = TreeLink({}, recv_buffer=self.cfg.recv_buffer)
        link.on_open = lambda lk: self._spawn_admission(lk)
        return link

    def _spawn_admission(self, link: TreeLink) -> None:
        self.spawn(self._accept(link))

    async def _accept(self, link: TreeLink) -> None:
        try:
            async with asyncio.timeout(10):
                h = wire.check_hello(await link.receive(), "node")
            link.send(wire.hello("parent", name=self.cfg.name))
            await self._admit(link, h)
        except (EOFError, GprocError, OSError, ssl.SSLError, TimeoutError) as e:
            self.log.debug("refused a child: %s", e)
            link.abort()
            return
        link.start(self._dispatch_up, self._child_gone)

    async def _admit(self, link: TreeLink, h: wire.Message) -> None:
        name, cid = h.get("name"), h.get("id")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ProtocolError(f"bad node name {str(name)[:80]!r}")
        if not isinstance(cid, str) or not ID_RE.match(cid):
            raise ProtocolError(f"bad node id {str(cid)[:80]!r}")
        link.peer = {"name": name, "id": cid, "instance": h.get("instance"), "addr": h.get("addr")}
        proof = self._check_child_cert(link, name, h) if self.identity is not None else {}
        old = self.children.get(cid)
        if old is not None and not old.closed:
            if old.peer.get("name") != name:
                msg = f"id {cid} is already taken under {self.cfg.name} by {old.peer.get('name')}"
                link.send({"t": "error", "msg": msg})
                raise RegistrationError(msg)
            old.abort()  # the same node coming back: the old link is stale
        if self.rank is None or (not self.is_master and not self.registered.is_set()):
            try:  # hold the child rather than refuse it: a refused child comes back with a new handshake
                async with asyncio.timeout(ADMIT_WAIT):
                    await self.registered.wait()
            except TimeoutError:
                link.send({"t": "error", "msg": "retry: parent is not attached yet"})
                raise RegistrationError("not attached yet") from None
        args = {
            "name": name,
            "id": cid,
            "instance": h.get("instance"),
            "rank": h.get("rank"),
            "addr": h.get("addr"),
            "parent": self.rank,
            **proof,
        }
        try:
            result = await self.call_up("attach", args)
        except GprocError as e:
            link.send({"t": "error", "msg": str(e), **({"auth": True} if isinstance(e, AuthError) else {})})
            raise
        rank = result["rank"]
        link.peer["rank"] = rank
        self._route_add(rank, link)
        self.children[cid] = link
        up = [str(self.parent_address)] + [str(a) for a in self.ancestors] if self.parent_address else []
        link.send({"t": "welcome", "rank": rank, "ancestors": up, "hb": [self.cfg.heartbeat, self.cfg.dead_after]})

    def _check_child_cert(self, link: TreeLink, name: str, h: wire.Message) -> dict[str, Any]:
        """A child registers only under the name on its certificate, and not with a revoked one; what
        the master checks in turn (the certificate as TLS verified it, the child's attach statement)."""
        peer = link.peercert() or {}
        holder = certs.peer_name(peer)
        try:
            serial = int(str(peer.get("serialNumber")), 16)
        except ValueError:
            serial = -1
        why = None
        if holder != name:
            why = f"node {name} presents the certificate of {holder or 'no single node'}"
        elif serial in self.revoked:
            why = f"node {name}: certificate {certs.serial_text(serial)} is revoked"
        if why is not None:
            self.log.warning("refused a child from %s: %s", _peer_address(link), why)
            link.send({"t": "error", "msg": why, "auth": True})
            raise AuthError(why)
        link.peer["serial"] = serial
        return {"cert": link.peercert_der(), "sig": h.get("sig"), "when": h.get("when")}

    def apply_revoked(self, revoked: frozenset[int]) -> None:
        """Take the master's revoked serials: close the links of children holding one, and pass the
        list on to the others (each parent closes its own children's)."""
        self.revoked = revoked
        text = [certs.serial_text(s) for s in sorted(revoked)]
        for child in list(self.children.values()):
            if child.peer.get("serial") in revoked:
                self.log.warning("closing the link of node %s: its certificate is revoked", child.peer.get("name"))
                child.abort()  # it comes back, and its registration is refused: that says why
            else:
                child.send({"t": "revoked", "s": text})

    def _dispatch_up(self, link: TreeLink, msg: wire.Message) -> None:
        t = msg["t"]
        if t == "rep":
            self._on_rep(link, msg)
        elif t == "pong":
            pass
        elif t == "late":
            self._on_late(link, msg)
        elif t == "call":
            self._on_call(link, msg)
        elif t == "detach":
            try:
                gone = rankset.decode(msg.get("r", []))
            except (ValueError, TypeError):
                raise ProtocolError("bad detach") from None
            self._detach({r for r in gone if self.route.get(r) is link})
        elif t in self.up_messages:
            self.up_messages[t](link, msg)
        else:
            raise ProtocolError(f"unexpected message {t[:40]!r} from a child")

    def _child_gone(self, link: TreeLink) -> None:
        cid = link.peer.get("id")
        if cid is not None and self.children.get(cid) is link:
            del self.children[cid]
        gone = set(self.subtree.get(link, ()))
        for op in list(self.ops.values()):
            lost = op.waiting.pop(link, None)
            if lost:
                op.heard.discard(link)
                op.unheard.discard(link)
                op.groups.add(LOST, lost)
                self._op_changed(op)
                self._maybe_finish(op)
                if self.ops.get(op.id) is op:
                    op.pending()
        for cid2, (lk, _, _) in list(self._relay.items()):
            if lk is link:
                del self._relay[cid2]
        if gone and not self.stopped.is_set():
            self._detach(gone)

    def _detach(self, gone: set[int]) -> None:
        """Forget ranks that were reached through a link that died; tell the master."""
        for r in gone:
            lk = self.route.pop(r, None)
            if lk is not None:
                self._route_drop(r, lk)
        if gone:
            self.on_detach(gone)

    def on_detach(self, gone: set[int]) -> None:
        if self.parent is not None:
            self.parent.send({"t": "detach", "r": rankset.encode(gone)})

    # ---- operations -------------------------------------------------------------------------------

    def _on_op(self, msg: wire.Message) -> None:
        m = OpMsg.decode(msg)
        up = None
        if m.body.get("redeliver") is True and m.reducer is None and m.op not in self.upward:
            up = self._journal(m.op)
        sink = self._sink_up(m.op)
        self.start_op(m.op, m.kind, m.body, m.targets, sink, base=sorted(m.targets), reducer=m.reducer, upward=up)

    def _journal(self, op_id: int) -> Upward:
        """A new ``Upward`` for an op; the oldest are let go beyond ``JOURNAL_OPS`` or ``JOURNAL_KEEP``
        (ended ones first; a running one evicted keeps only its statuses)."""
        now = time.monotonic()
        if now >= self._journal_swept + 1.0:  # not per op: ops come by the thousand on a busy node
            self._journal_swept = now
            for k, old in list(self.upward.items()):
                if old.ended and now - old.ended_at > JOURNAL_KEEP:
                    del self.upward[k]
        while len(self.upward) >= JOURNAL_OPS:
            k = next((k for k, u in self.upward.items() if u.ended), next(iter(self.upward)))
            self.upward.pop(k).evict()
        up = self.upward[op_id] = Upward(op_id, self.parent)
        return up

    def send_late(self, msg: wire.Message) -> None:
        """Results of an op whose parent link is gone: up the new parent, relayed to the master (when
        there is no parent yet they are kept in the op's ``Upward`` and go after re-attaching)."""
        parent = self.parent
        if parent is not None:
            parent.send(msg)

    def _on_late(self, link: TreeLink, msg: wire.Message) -> None:
        LateMsg.decode(msg)  # a malformed one closes the link it came on, not the master's
        self._keep_relayed(msg)
        self.send_late(msg)

    def _keep_relayed(self, msg: wire.Message) -> None:
        """Remember a relayed late message (``RELAY_BYTES``, ``JOURNAL_KEEP``): the oldest go first."""
        now = time.monotonic()
        size = len(wire.pack(msg))
        self.relayed.append((now, size, msg))
        self.relayed_bytes += size
        while self.relayed and (self.relayed_bytes > RELAY_BYTES or now - self.relayed[0][0] > JOURNAL_KEEP):
            self.relayed_bytes -= self.relayed.popleft()[1]

    def _redeliver(self) -> None:
        """After re-attaching: send again everything kept for ops that came down the old parent, and
        the late results relayed lately (the old parent may have died before passing them on)."""
        parent = self.parent
        if parent is None:
            return
        for up in list(self.upward.values()):
            if up.link is not parent:
                for msg in up.messages():
                    parent.send(msg)
        now = time.monotonic()
        for when, _size, msg in self.relayed:
            if now - when <= JOURNAL_KEEP:
                parent.send(msg)

    def _sink_up(self, op_id: int) -> Sink:
        def sink(groups: list[list[Any]], end: bool, value: Any = None) -> None:
            parent = self.parent
            if parent is not None:
                parent.send(RepMsg(op_id, groups, end, value).encode())

        return sink

    def request(
        self, kind: str, body: dict[str, Any], targets: set[int], reducer: Reducer[Any] | None = None
    ) -> Request:
        """Send an op to ``targets`` and have the replies reduced on the way up: the one primitive
        every service uses. The answer is an async iterator of partial replies (``async for``), or
        the whole (``await``); see ``Request``. Without ``reducer``, the one the op's service
        declared for ``kind`` (if any)."""
        return Request(self, self.next_op_id(), kind, body, targets, reducer or self.reducers.get(kind))

    def next_op_id(self) -> int:
        """A new op id (ops come from the master, which keeps them unique across its restarts)."""
        return next(self._op_ids)

    def start_op(
        self,
        op_id: int,
        kind: str,
        body: dict[str, Any],
        targets: set[int],
        sink: Sink,
        base: list[int] | None = None,
        reducer: Reducer[Any] | None = None,
        upward: Upward | None = None,
    ) -> Op:
        """Run an op here if this rank is a target, forward it into subtrees holding targets.

        ``base`` (the sorted targets, for an op that came from a parent) makes replies going up give
        rank positions in it; without it, ``sink`` gets groups with plain ranks (the master)."""
        op = Op(self, op_id, kind, body, sink, base, reducer)
        op.upward = upward
        op.local = self.rank in targets
        buckets, unreachable = self._buckets(targets, op.local)
        if unreachable:
            op.groups.add(("s", 255, "unreachable"), unreachable)
        self.ops[op_id] = op
        head: bytes | None = None  # the op without its targets, packed once for every whole subtree
        for lk, rs in buckets.items():
            w = self._share_of(lk, rs)
            try:
                if w is not None:
                    if head is None:
                        head = wire.packed(OpMsg.head(op_id, kind, body, reducer))
                    sent = lk.send_frame(wire.pack_with(head, "tg", w.packed()))
                else:
                    sent = lk.send({**OpMsg.head(op_id, kind, body, reducer), "tg": rankset.encode(rs)})
            except ProtocolError:  # the frame would pass the frame limit: the op fails there, the link stays
                op.groups.add(TOO_LARGE, rs)
                continue
            if sent:
                op.waiting[lk] = rs
                op.unheard.add(lk)
            else:
                op.groups.add(LOST, rs)
        if op.local:
            self._run_local(op)
        else:
            op.body = {}  # forwarded: holding a file chunk until the subtree answers costs its size
            self._maybe_finish(op)
        return op

    def _buckets(self, targets: set[int], local: bool) -> tuple[Mapping[TreeLink, Set[int]], set[int]]:
        """The targets split by the child link each is reached through, and those no link reaches.

        With more targets than child links (a job on a subtree, the common case) each link's share is
        the ranks under it (a subset test when all of them are targets, else an intersection), done
        in C: 36 ns per target where looking each one up in ``route`` took 200-240 (50,000 targets, 32
        links, this machine). A share that is all of a link's subtree is that subtree's ``Share``
        (frozen until the subtree changes), whose wire encoding and sorted order are made once."""
        buckets: dict[TreeLink, Set[int]] = {}
        unreachable: set[int] = set()
        route = self.route
        if not isinstance(targets, (set, frozenset)):
            targets = set(targets)
        if len(targets) <= len(self.subtree):  # a few targets (a signal to one process's node)
            few: dict[TreeLink, set[int]] = {}
            for r in targets:
                if r == self.rank:
                    continue
                lk = route.get(r)
                if lk is None or lk.closed:
                    unreachable.add(r)
                else:
                    b = few.get(lk)
                    if b is None:
                        few[lk] = {r}
                    else:
                        b.add(r)
            return few, unreachable
        left = len(targets) - local
        for lk, under in self.subtree.items():
            if not left:
                break
            rs: Set[int]
            if under <= targets:  # all of a subtree: the common case
                w = self._whole.get(lk)
                if w is None:
                    w = self._whole[lk] = Share(frozenset(under))
                rs = w.ranks
            else:
                rs = targets & under
            if rs:
                left -= len(rs)
                if lk.closed:
                    unreachable |= rs
                else:
                    buckets[lk] = rs
        if left:  # targets under no child link: unknown here, or detached
            unreachable.update(r for r in targets if r != self.rank and r not in route)
        return buckets, unreachable

    def _share_of(self, link: TreeLink, ranks: Set[int]) -> Share | None:
        """The frozen share ``ranks`` is, when it is all of ``link``'s subtree as it still stands."""
        w = self._whole.get(link)
        return w if w is not None and w.ranks is ranks else None

    def _run_local(self, op: Op) -> None:
        """Run this node's part of an op: inline when the handler is synchronous, else as a task."""
        handler = self.handlers.get(op.kind)
        try:
            if handler is None:
                op.emit(("s", 255, f"unknown operation {op.kind[:40]}"))
                result = None
            else:
                result = handler(op)
        except Exception as e:
            self._local_failed(op, e)
            result = None
        if result is None:
            op.body = {}  # handled: drop the chunk a put carries while the subtree answers
            op.local = False
            self._op_changed(op)
            self._maybe_finish(op)
        else:
            self.spawn(self._await_local(op, result))

    async def _await_local(self, op: Op, pending: Awaitable[None]) -> None:
        try:
            await pending
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._local_failed(op, e)
        finally:
            op.body = {}
            op.local = False
            self._op_changed(op)
            self._maybe_finish(op)

    def _local_failed(self, op: Op, e: Exception) -> None:
        if isinstance(e, GprocError):
            op.emit(("s", 255, str(e)[:500]))
        else:  # a handler bug must not take the node down
            self.log.error("op %s (%s) failed: %r", op.id, op.kind, e, exc_info=e)
            op.emit(("s", 255, f"internal error: {type(e).__name__}: {e}"[:500]))

    def _on_rep(self, link: TreeLink, msg: wire.Message) -> None:
        rep = RepMsg.decode(msg)
        op = self.ops.get(rep.op)
        if op is None:
            return  # late reply for an op already finished (its ranks were reported lost)
        base = op.bases.get(link)
        sent = op.waiting.get(link)
        if base is None:
            if sent is None:
                return  # not a child this op was forwarded to
            w = self._share_of(link, sent)
            base = op.bases[link] = w.ordered() if w is not None else sorted(sent)
        merge.unpack_into(op.groups, rep.groups, base, sent)
        if rep.value is not None:
            if op.reducer is None:
                raise ProtocolError("a reduced value for an op without a reducer")
            op._merge_value(op.reducer.decode(rep.value))
        op.bytes_in += link.counter.last_in
        op.frames_in += 1
        op.pending_bytes += link.counter.last_in
        op.unheard.discard(link)
        if link not in op.heard or rep.end:
            op.progress = asyncio.get_running_loop().time()
        if rep.end:
            op.waiting.pop(link, None)
            op.heard.discard(link)
            self._op_changed(op)
            self._maybe_finish(op)
            if self.ops.get(op.id) is not op:
                return
        else:
            op.heard.add(link)
        if op.gathered:
            op.pending()

    def _op_changed(self, op: Op) -> None:
        for watch in self.op_watchers:
            watch(op)

    def _maybe_finish(self, op: Op) -> None:
        if op.local or op.waiting or self.ops.get(op.id) is not op:
            return
        del self.ops[op.id]
        op.flush(end=True)
        self._op_changed(op)

    def _noop(self, op: Op) -> None:
        op.emit(("s", 0, ""))

    # ---- liveness --------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.cfg.heartbeat)
            await asyncio.sleep(0)  # let frames that arrived during a stall be read first
            now = time.monotonic()
            stalled, last = now - last > 2 * self.cfg.heartbeat, now
            for link in list(self.children.values()):
                silent = link.silent_for(now)
                if not stalled and silent > self.cfg.dead_after:
                    self.log.warning("child %s silent for %.1fs: lost", link.peer.get("name"), silent)
                    link.abort()
                    self._child_gone(link)
                else:
                    link.send({"t": "ping"})
            p = self.parent
            if p is not None and not stalled and (silent := p.silent_for(now)) > self.cfg.dead_after:
                self.log.warning("parent silent for %.1fs: re-attaching", silent)
                p.abort()
            elif p is not None:  # unasked: the parent's ping may be queued behind a stream of file chunks
                p.send({"t": "pong"})


def _address(peer: object) -> str:
    return str(Address(str(peer[0]), int(peer[1]))) if isinstance(peer, tuple) and len(peer) >= 2 else "?"


def _peer_address(link: TreeLink) -> str:
    return _address(link.transport.get_extra_info("peername") if link.transport is not None else None)
