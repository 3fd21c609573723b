"""A job's standard input: broadcast down the tree once per link, with end-to-end flow control.

The client sends its stdin in numbered chunks. The master multicasts each chunk down every tree link
that still leads to processes of the job (``{"t": "in", "op", "seq", "d", "eof"}``); each node forwards
it to its children in the job and writes it to its own process's stdin pipe. Acknowledgements come
back up, reduced like replies: a node acknowledges chunk ``seq`` (``{"t": "inack", "op", "seq"}``) once
its own process took it (or wants no more input) and every child it forwarded it to acknowledged it.
The client keeps at most ``WINDOW`` chunks unacknowledged, so no daemon ever holds more than
``WINDOW`` chunks of a job's input, whatever the input's size; the broadcast goes at the pace of the
slowest reader, and a process that exits or closes its stdin stops counting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from gproc import wire
from gproc.errors import ProtocolError
from gproc.services.base import ServiceTable

if TYPE_CHECKING:
    from gproc.overlay import Node, Op, TreeLink
    from gproc.platform import Process

CHUNK = 64 * 1024  # what the client reads and sends at a time
MAX_CHUNK = 1 << 20  # larger "in" messages are refused
WINDOW = 8  # chunks in flight per job, end to end (so at most 512 KiB held per job per daemon)

Ack = Callable[[int, int], None]  # (op id, seq): send an acknowledgement up


class Feed:
    """One job's input as one node sees it."""

    __slots__ = ("acked", "eof", "kids", "local_done", "local_seq", "offset", "op", "proc", "queue", "received", "up")

    def __init__(self, op: Op, up: Ack) -> None:
        self.op = op
        self.up = up
        self.received = 0  # last chunk received
        self.eof = False
        self.acked = 0  # last acknowledgement sent up
        self.kids: dict[TreeLink, int] = {}  # last chunk each child acknowledged
        self.queue: deque[tuple[int, bytes]] = deque()  # chunks not yet written to the local process
        self.offset = 0  # bytes of queue[0] already written
        self.local_seq = 0  # last chunk the local process took
        self.local_done = False  # the local process needs no more input (exited, closed stdin, EOF given)
        self.proc: Process | None = None


class StdinService:
    """Relays job input down the tree and acknowledgements up; writes to local processes."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.feeds: dict[int, Feed] = {}

    def service(self) -> ServiceTable:
        return ServiceTable(
            "stdin", down={"in": self._on_in}, up={"inack": self._on_ack}, watchers=[self._op_changed], stop=self.close
        )

    # ---- messages ---------------------------------------------------------------------------------

    def _on_in(self, link: TreeLink, msg: wire.Message) -> None:
        op_id = msg.get("op")
        if not isinstance(op_id, int):
            raise ProtocolError("malformed input chunk")
        self.deliver(op_id, msg, self._ack_parent)

    def _ack_parent(self, op_id: int, seq: int) -> None:
        parent = self.node.parent
        if parent is not None:
            parent.send({"t": "inack", "op": op_id, "seq": seq})

    def _on_ack(self, link: TreeLink, msg: wire.Message) -> None:
        op_id, seq = msg.get("op"), msg.get("seq")
        if not isinstance(op_id, int) or not isinstance(seq, int):
            raise ProtocolError("malformed input acknowledgement")
        feed = self.feeds.get(op_id)
        if feed is not None and seq > feed.kids.get(link, 0):
            feed.kids[link] = seq
            self._update(feed)

    def deliver(self, op_id: int, msg: wire.Message, up: Ack) -> None:
        """A chunk for job ``op_id`` (from the parent, or from the client at the master)."""
        seq, data, eof = msg.get("seq"), msg.get("d", b""), msg.get("eof", False)
        if not (isinstance(seq, int) and isinstance(data, bytes) and isinstance(eof, bool)):
            raise ProtocolError("malformed input chunk")
        if len(data) > MAX_CHUNK:
            raise ProtocolError("input chunk too large")
        op = self.node.ops.get(op_id)
        if op is None:  # nothing of this job runs here any more
            up(op_id, seq)
            return
        feed = self.feeds.get(op_id)
        if feed is None:
            feed = self.feeds[op_id] = Feed(op, up)
        if seq != feed.received + 1 or feed.eof:
            raise ProtocolError(f"input chunk {seq} out of order (expected {feed.received + 1})")
        feed.received, feed.eof = seq, eof
        fwd = {"t": "in", "op": op_id, "seq": seq, "d": data, "eof": eof}
        for link in op.waiting:
            link.send(fwd)
        if op.local and not feed.local_done:
            feed.queue.append((seq, data))
            self._write(feed)
        self._update(feed)

    # ---- the local process ------------------------------------------------------------------------

    def attach(self, op: Op, proc: Process) -> None:
        """The job's process started here with a stdin pipe: feed it what came and what comes."""
        feed = self.feeds.get(op.id)
        if feed is None:
            feed = self.feeds[op.id] = Feed(op, self._ack_parent)
        if feed.local_done:
            proc.close_stdin()
            return
        feed.proc = proc
        self._write(feed)

    def detach(self, op_id: int) -> None:
        """The local process exited: it takes no more input."""
        feed = self.feeds.get(op_id)
        if feed is not None:
            self._stop_local(feed)
            self._update(feed)

    def _write(self, feed: Feed) -> None:
        proc = feed.proc
        if proc is None or proc.stdin < 0:
            return
        loop = asyncio.get_running_loop()
        fd = proc.stdin
        while feed.queue:
            seq, data = feed.queue[0]
            try:
                while feed.offset < len(data):
                    feed.offset += os.write(fd, memoryview(data)[feed.offset :])
            except BlockingIOError:
                loop.add_writer(fd, self._writable, feed)
                return
            except OSError:  # EPIPE: the process closed its stdin or exited
                self._stop_local(feed)
                self._update(feed)
                return
            feed.queue.popleft()
            feed.offset = 0
            feed.local_seq = seq
        loop.remove_writer(fd)
        if feed.eof:
            self._stop_local(feed)
        self._update(feed)

    def _writable(self, feed: Feed) -> None:
        self._write(feed)

    def _stop_local(self, feed: Feed) -> None:
        feed.local_done = True
        feed.queue.clear()
        feed.offset = 0
        proc, feed.proc = feed.proc, None
        if proc is not None:
            if proc.stdin >= 0:
                with contextlib.suppress(RuntimeError):
                    asyncio.get_running_loop().remove_writer(proc.stdin)
            proc.close_stdin()

    # ---- acknowledgements ---------------------------------------------------------------------------

    def _update(self, feed: Feed) -> None:
        """Acknowledge up to the last chunk taken by the local process and every running child."""
        op = feed.op
        if self.node.ops.get(op.id) is not op:
            return
        if feed.local_done or not op.local:
            feed.queue.clear()
            ack = feed.received
        else:
            ack = feed.local_seq
        for link in op.waiting:
            ack = min(ack, feed.kids.get(link, 0))
        if ack > feed.acked:
            feed.acked = ack
            feed.up(op.id, ack)

    def _op_changed(self, op: Op) -> None:
        feed = self.feeds.get(op.id)
        if feed is None or feed.op is not op:
            return
        if self.node.ops.get(op.id) is not op:  # the op ended here
            self._stop_local(feed)
            del self.feeds[op.id]
        else:
            self._update(feed)

    def close(self) -> None:
        """The node stops: let go of every pipe."""
        for feed in self.feeds.values():
            self._stop_local(feed)
        self.feeds.clear()
