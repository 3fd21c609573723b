"""What a service is: one table of what it handles, and who may call each client request.

A service declares, in a ``ServiceTable``, its op handlers (run on every target node of an op), the
reducer each op's replies use, the messages it takes from the parent and from children, the upward
calls the master answers for it, and its client requests with the role a caller needs (``Role``).
The daemon wires services in one place (``gproc.daemon``): ``install`` puts a table's entries in a
node's registries; the overlay never imports a service. Flux's services declare themselves the same
way (a message handler table with roles); see docs/services.md.

Services that work at the master see it through ``MasterApi`` (what they may use of it), so no
service imports the master.
"""

from __future__ import annotations

import asyncio
import enum
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from gproc import wire
from gproc.errors import UsageError
from gproc.messages import Body, Selected, convert
from gproc.overlay import Handler, Link, Node, Op, Request, TreeLink
from gproc.platform import PeerCred
from gproc.reduce import Reducer

T = TypeVar("T")
B = TypeVar("B", bound=Body)

TICK = 5.0  # keep-alive sent to a waiting client while the tree has nothing to say


class Role(enum.Enum):
    """Who may make a client request."""

    ANY = "any user"  # any local user; what runs runs as that user
    OWNER = "root or the master's owner"
    ROOT = "root"


RequestHandler = Callable[[Link, Any, PeerCred], Awaitable[None]]
"""A client request handler: gets the request as its ``ClientRequest.body`` type (the raw map when it
declares none) and answers on the link (``ret``, or a stream ending in ``end``)."""

Call = Callable[[dict[str, Any]], Awaitable[Any]]
"""An upward-call handler (``call`` from a node): returns the result, raises GprocError to refuse.
Declare one with its arguments' type: ``typed_call``."""

MessageHandler = Callable[[TreeLink, wire.Message], None]


@dataclass(frozen=True)
class ClientRequest(Generic[B]):
    """A client request: its handler, who may make it, and its type (``messages.Body``), into which
    ``Master.serve_client`` converts the request before the handler sees it; a request that is not
    one is answered with a UsageError naming the bad field. ``body`` None: the handler gets the map
    (for services not yet typed)."""

    handler: Callable[[Link, B, PeerCred], Awaitable[None]]
    role: Role = Role.ANY
    what: str = ""  # what a refused caller is told they may not do ("shut the tree down")
    body: type[B] | None = None

    def decode(self, fn: str, req: wire.Message) -> B:
        return req if self.body is None else convert(req, self.body, f"{fn} request", UsageError)  # type: ignore[return-value]


def typed_call(args: type[B], handler: Callable[[B], Awaitable[Any]]) -> Call:
    """An upward-call handler that gets the call's arguments as an ``args`` (``messages.Body``),
    converted where the call reaches the master; arguments that are not one refuse the call with a
    ProtocolError naming the field (the calling node gets it with its kind, ``errors.from_wire``)."""

    async def call(raw: dict[str, Any]) -> Any:
        return await handler(convert(raw, args, "call arguments"))

    call.body = args  # type: ignore[attr-defined]
    return call


def typed(body: type[B], handler: Callable[[Op, B], Awaitable[None] | None]) -> Handler:
    """An op handler that gets the op's body as a ``body`` (``messages.Body``): the one point where an
    op's body is decoded on a node. A body that is not one fails the op on this node with the status
    ``("s", 255, "bad KIND body: …")`` (``Node._run_local``); the node carries on."""

    def run(op: Op) -> Awaitable[None] | None:
        return handler(op, convert(op.body, body, f"{op.kind[:40]} body"))

    run.body = body  # type: ignore[attr-defined]  # for docs and tests: which type the op takes
    return run


@dataclass
class ServiceTable:
    """Everything a service plugs into a daemon."""

    name: str
    ops: dict[str, Handler] = field(default_factory=dict)  # op kind -> handler on each target node
    reducers: dict[str, Reducer[Any]] = field(default_factory=dict)  # op kind -> its replies' reducer
    down: dict[str, MessageHandler] = field(default_factory=dict)  # messages from the parent
    up: dict[str, MessageHandler] = field(default_factory=dict)  # messages from children
    watchers: list[Callable[[Any], None]] = field(default_factory=list)  # told when an op changes
    calls: dict[str, Call] = field(default_factory=dict)  # upward calls (the master answers)
    requests: dict[str, ClientRequest] = field(default_factory=dict)  # client requests (the master)
    start: Callable[[], Awaitable[None]] | None = None  # once the node starts
    stop: Callable[[], None] | None = None  # when the node stops


class Front(Protocol):
    """Where client requests and upward calls are registered (the master)."""

    requests: dict[str, ClientRequest]
    calls: dict[str, Call]


def install(node: Node, table: ServiceTable, front: Front | None = None) -> None:
    """Put a service's table into a node's registries (and, at the master, ``front``'s).

    A name taken twice is a wiring mistake: ValueError, at start."""

    def put(where: dict[str, Any], what: dict[str, Any], kind: str) -> None:
        for name in what:
            if name in where:
                raise ValueError(f"{table.name}: {kind} {name!r} is already handled")
        where.update(what)

    put(node.handlers, table.ops, "op")
    put(node.reducers, table.reducers, "reducer of op")
    put(node.down_messages, table.down, "message")
    put(node.up_messages, table.up, "message")
    node.op_watchers.extend(table.watchers)
    if table.start is not None:
        node.starters.append(table.start)
    if table.stop is not None:
        node.stoppers.append(table.stop)
    if table.calls or table.requests:
        if front is None:
            raise ValueError(f"{table.name}: client requests and calls need the master")
        put(front.calls, table.calls, "call")
        put(front.requests, table.requests, "request")


def has_role(role: Role, cred: PeerCred) -> bool:
    """Does the caller have ``role``? (The daemon's own uid is its owner.)"""
    return role is Role.ANY or cred.uid == 0 or (role is Role.OWNER and cred.uid == os.getuid())


def allowed(role: Role, cred: PeerCred, what: str) -> None:
    """UsageError unless the caller has ``role``."""
    if not has_role(role, cred):
        raise UsageError(f"only {role.value} may {what}")


async def with_ticks(link: Link, work: Awaitable[T], gone: asyncio.Future[Any] | None = None) -> T | None:
    """Await ``work`` while sending the client a tick every ``TICK`` seconds (so it knows the master
    lives); None when ``gone`` (the client leaving) completes first, ``work`` then cancelled."""
    task = asyncio.ensure_future(work)
    waiting: set[asyncio.Future[Any]] = {task} if gone is None else {task, gone}
    try:
        while not task.done():
            await asyncio.wait(waiting, timeout=TICK, return_when=asyncio.FIRST_COMPLETED)
            if gone is not None and gone.done():
                return None
            if not task.done():
                link.send({"t": "tick"})
    finally:
        if not task.done():
            task.cancel()
    return task.result()


class MasterApi(Protocol):
    """What services at the master use of it."""

    cfg: Any
    topo: dict[int, Any]  # rank -> NodeRow (name, parent, state …)
    children: dict[str, TreeLink]

    def spawn(self, coro: Awaitable[Any], name: str | None = None) -> asyncio.Task[Any]: ...

    def request(
        self, kind: str, body: dict[str, Any], targets: set[int], reducer: Reducer[Any] | None = None
    ) -> Request: ...

    def up_ranks(self) -> set[int]: ...

    def fold(self, ranks: set[int] | list[int]) -> str: ...

    def fold_intervals(self, enc: list[int]) -> str: ...

    def selection(self, req: Selected | wire.Message) -> tuple[set[int], set[str]]: ...

    async def serve_client(self, link: Link, req: wire.Message, cred: PeerCred) -> None: ...


async def socket_alive(path: str) -> bool:
    """Does a daemon answer on the Unix socket at ``path``?"""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(s, path), 1.0)
        return True
    except (OSError, TimeoutError):
        return False
    finally:
        s.close()
