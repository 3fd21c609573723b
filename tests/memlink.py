"""Nodes in one process without sockets, on a clock the test controls.

* ``VirtualClockLoop``: an asyncio loop whose clock jumps to the next timer whenever nothing is ready,
  so an op that holds its replies for three seconds is tested in microseconds, and every time read
  by the overlay (``loop.time()``, ``asyncio.sleep``, ``asyncio.timeout``) is exact.
* ``link_pair``: two real ``overlay.TreeLink`` protocols joined by an in-memory transport: frames are
  packed, counted, parsed and handed over exactly as over TLS, one loop turn later.
* ``Net``: addresses for in-memory nodes, so that a node's own ``_parent_loop`` (join, handshake,
  admission, re-attachment to a fallback) runs unchanged over memory links.
"""

from __future__ import annotations

import asyncio
import selectors
import ssl
from collections.abc import Coroutine
from typing import Any, TypeVar

from gproc.address import Address
from gproc.overlay import Node, NodeConfig, TreeLink

T = TypeVar("T")


class _JumpingSelector:
    """The loop's selector, except that waiting for ``timeout`` seconds moves the clock instead."""

    def __init__(self, real: selectors.BaseSelector, loop: VirtualClockLoop) -> None:
        self.real = real
        self.loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = self.real.select(0)
        if not events and timeout is not None and timeout > 0:
            self.loop.now += timeout
        elif not events and timeout is None:  # nothing scheduled: only real I/O can wake us
            events = self.real.select(5.0)
        return events

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time (starts at 1000.0)."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self._selector = _JumpingSelector(self._selector, self)  # type: ignore[has-type,assignment]

    def time(self) -> float:
        return self.now


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a test's coroutine on a fresh virtual-clock loop."""
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


class MemTransport(asyncio.Transport):
    """One end of an in-memory connection: what is written arrives at the other end's protocol on
    the next loop turn; closing either end closes both."""

    def __init__(self, mine: TreeLink) -> None:
        super().__init__()
        self.mine = mine
        self.other: MemTransport | None = None
        self.closing = False  # no more writes
        self.lost = False  # the protocol was told: nothing more arrives
        self.loop = asyncio.get_running_loop()

    def write(self, data: Any) -> None:
        if not self.closing and self.other is not None:
            self.loop.call_soon(self.other._arrive, bytes(data))

    def _arrive(self, data: bytes) -> None:
        if not self.lost:
            self.mine.data_received(data)

    def abort(self) -> None:
        """Closes both ends; what was written before still arrives (as it would over TCP)."""
        if self.closing:
            return
        self.closing = True
        if not self.loop.is_closed():
            self.loop.call_soon(self._lose)
        if self.other is not None:
            self.other.abort()

    def _lose(self) -> None:
        self.lost = True
        self.mine.connection_lost(None)

    def close(self) -> None:
        self.abort()

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def connect(a: TreeLink, b: TreeLink) -> None:
    """Join two links made by ``TreeLink(...)`` (or a node's ``_new_child_link``)."""
    ta, tb = MemTransport(a), MemTransport(b)
    ta.other, tb.other = tb, ta
    a.connection_made(ta)
    b.connection_made(tb)


def link_pair(peer_a: dict[str, Any], peer_b: dict[str, Any]) -> tuple[TreeLink, TreeLink]:
    a, b = TreeLink(peer_a), TreeLink(peer_b)
    connect(a, b)
    return a, b


CONTEXT: list[ssl.SSLContext] = []  # unused over memory links, but a Node wants one


def context() -> ssl.SSLContext:
    if not CONTEXT:
        CONTEXT.append(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    return CONTEXT[0]


class Net:
    """In-memory addresses: ``listen(node)`` gives a node one, and a node made by ``node()`` joins
    its parents over memory links through its own ``_parent_loop``."""

    def __init__(self) -> None:
        self.at: dict[Address, Node] = {}
        self.next_port = 1

    def listen(self, node: Node) -> Address:
        addr = Address("mem", self.next_port)
        self.next_port += 1
        self.at[addr] = node
        node.listen_address = addr
        return addr

    def config(self, name: str, parents: list[Address], id: str | None = None, **kw: Any) -> NodeConfig:
        return NodeConfig(name=name, id=id or name.replace("-", "_").replace(".", "_"), parents=parents, **kw)

    def node(self, name: str, parents: list[Address], listen: bool = True, **kw: Any) -> Node:
        n = Node(self.config(name, parents, **kw), server_ssl=context(), client_ssl=context())
        self.adopt(n, listen)
        return n

    def adopt(self, n: Node, listen: bool = True) -> None:
        """Let ``n`` (made elsewhere, e.g. by ``daemon.build_node``) connect over this net."""
        if listen:
            self.listen(n)

        async def connect_mem(addr: Address) -> TreeLink:
            parent = self.at.get(addr)
            if parent is None or parent.stopped.is_set():
                raise ConnectionRefusedError(f"nothing listens at {addr}")
            mine = TreeLink({"name": f"parent {addr}"})
            connect(parent._new_child_link(), mine)
            return mine

        n._connect = connect_mem  # type: ignore[method-assign]

    async def start(self, n: Node) -> None:
        """What ``Node.start`` does, minus the TCP listener and the heartbeat (its clock is the
        wall clock): join the parent, start the services."""
        if n.cfg.parents:
            n.spawn(n._parent_loop())
        for start in n.starters:
            await start()

    async def attached(self, *nodes: Node, timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            for n in nodes:
                await n.registered.wait()


def graft(parent: Node, child: Node, rank: int, ancestors: list[Node]) -> None:
    """Attach ``child`` under ``parent`` with ``rank`` without the handshake (for trees of
    thousands of nodes; admission has its own tests): the links, the routes of every node above it
    (``ancestors``, nearest first, ending with the master), the master's topology."""
    from gproc.master import Master, NodeRow

    down, up = link_pair({"name": child.cfg.name, "id": child.cfg.id, "rank": rank}, {"name": parent.cfg.name})
    child.rank, child.parent = rank, up
    child.registered.set()
    up.start(child._dispatch_down, lambda lk: None)
    down.start(parent._dispatch_up, parent._child_gone)
    parent.children[child.cfg.id] = down
    parent._route_add(rank, down)
    via = down
    below = parent
    for a in ancestors:
        lk = a.children[below.cfg.id]
        a._route_add(rank, lk)
        via, below = lk, a
    master = ancestors[-1] if ancestors else parent
    assert isinstance(master, Master) and via is not None
    master.topo[rank] = NodeRow(rank, child.cfg.name, child.cfg.id, parent.rank or 0, None, None)
    (master.root_children if parent is master else master.topo[parent.rank or 0].children)[child.cfg.id] = rank
