"""Every node serves the client protocol on a Unix socket of its own and relays to the master (SPEC §7).

A process inside a job finds its node's socket in ``$GPROC_MASTER``, so ``gproc e``, ``ps``, ``kill``
and ``wait`` work there exactly as at the master: the node reads the caller's uid from the kernel
(``SO_PEERCRED``), opens a *relay session* at the master with the request and that uid, and moves
the session's messages with ordinary upward calls, hop by hop:

* ``relay.open {req, uid, gid, pid, pgpid}`` -> ``{rid}``: the master runs the request as if a client
  had sent it on its own socket (the same handlers, so a relayed request behaves identically);
* ``relay.pull {rid}`` -> ``{m: [messages…], end}``: long poll; answers as soon as the master has
  something for the client (or after a few seconds with nothing), so streams such as ``exec`` flow;
* ``relay.push {rid, m}``: a message from the client (``signal`` during an ``exec``);
* ``relay.close {rid}``: the client went away (an ``exec`` then gets SIGTERM, as for a direct client).

A session nobody pulls for ``EXPIRE`` seconds (its node died) is closed the same way. ``pgpid`` is the
caller's gpid when the caller is in the space: a job started by a process in a job records it as
its parent (``GPROC_PARENT_GPID``), which is how ``ps --forest`` links processes across nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import msgspec

from gproc import errors, peers, wire
from gproc.errors import ConnectError, GprocError, ProtocolError, RegistrationError
from gproc.messages import Body
from gproc.overlay import Link
from gproc.platform import PeerCred, peer_credentials
from gproc.services.base import Call, MasterApi, ServiceTable, socket_alive, typed_call

if TYPE_CHECKING:
    from gproc.overlay import Node
    from gproc.services.procs import ProcService

PULL_WAIT = 4.0  # longest a pull is held open at the master
PULL_BYTES = 1 << 20  # messages per pull are cut near this size
# pushes waiting at the master for its request handler: a client keeping to its stdin window never
# has more than that window (plus a signal or two) waiting, one sending past it is refused
INBOX_MAX = 32
EXPIRE = 30.0  # a session without a pull this long is closed
log = logging.getLogger("gproc.relay")


# ---- node side -------------------------------------------------------------------------------------


class NodeSocket:
    """The client socket of one node."""

    def __init__(self, node: Node, procs: ProcService, path: str) -> None:
        self.node = node
        self.procs = procs
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._ino: int | None = None
        self._clients = peers.ClientLimit()

    def service(self) -> ServiceTable:
        return ServiceTable("node socket", start=self.start_serving, stop=self.close)

    async def start_serving(self) -> None:
        """Listen, and have the node's jobs told where (``$GPROC_MASTER``)."""
        if await self.start():
            self.procs.socket_path = self.path

    async def start(self) -> bool:
        """Listen; False (and a warning) when the path is held by another live daemon or unusable."""
        path = self.path
        try:
            folder = os.path.dirname(path) or "."
            os.makedirs(folder, exist_ok=True)
            # A directory another user made (say /tmp/xproc, before this daemon first ran) lets that
            # user swap our socket for theirs: refused.
            refused = peers.untrusted_path(folder, {0, os.geteuid()})
            if refused is not None:
                self.node.log.warning("not serving a client socket: %s", refused)
                return False
            if os.path.exists(path):
                if await socket_alive(path):
                    self.node.log.warning("client socket %s is in use by another daemon: not serving one", path)
                    return False
                os.unlink(path)
            self._server = await asyncio.start_unix_server(self._client, path, backlog=256)
            os.chmod(path, 0o777)  # every user may connect; the kernel tells us who they are
            self._ino = os.stat(path).st_ino
        except OSError as e:
            self.node.log.warning("cannot serve a client socket at %s: %s", path, e)
            return False
        return True

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == self._ino:  # only our own socket file
                    os.unlink(self.path)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        node = self.node
        link = Link(reader, writer, {"name": "client"})
        node.own(asyncio.current_task())  # cancelled when the node stops
        cred: PeerCred | None = None
        try:
            cred = peer_credentials(writer.get_extra_info("socket"))
            if not self._clients.enter(cred.uid):
                cred = None
                raise GprocError(f"too many connections from this user (at most {self._clients.per_user})")
            async with asyncio.timeout(10):
                wire.check_hello(await link.receive(), "client")
                link.send(wire.hello("node", name=node.cfg.name))
                req = await link.receive()
            if req.get("t") != "req" or not isinstance(req.get("fn"), str):
                raise ProtocolError("expected a request")
            await self._relay(link, req, cred)
        except GprocError as e:
            link.send({"t": "error", **errors.to_wire(e)})
        except (EOFError, OSError, TimeoutError) as e:
            node.log.debug("client ended: %s", e)
        finally:
            if cred is not None:
                self._clients.leave(cred.uid)
            await link.linger(30.0)  # the answer goes out whole; the client's late writes are dropped

    async def _relay(self, link: Link, req: wire.Message, cred: PeerCred) -> None:
        node = self.node
        pgpid = self.procs.caller_gpid(cred.pid) if req.get("fn") == "exec" else 0
        args = {"req": req, "uid": cred.uid, "gid": cred.gid, "pid": cred.pid, "pgpid": pgpid, "from": node.rank}
        try:
            rid = (await node.call_up("relay.open", args))["rid"]
        except (RegistrationError, TimeoutError, KeyError, TypeError) as e:
            raise ConnectError(f"node {node.cfg.name} cannot reach the master: {e or 'timeout'}") from None
        pusher = asyncio.ensure_future(self._push(link, rid))
        ended = False
        try:
            while not ended:
                try:
                    r = await node.call_up("relay.pull", {"rid": rid}, timeout=PULL_WAIT + 15.0)
                except (RegistrationError, TimeoutError) as e:
                    lost = ConnectError(f"node {node.cfg.name} lost the master: {e or 'timeout'}")
                    link.send({"t": "error", **errors.to_wire(lost)})
                    return
                for m in r.get("m", []):
                    link.send(m)
                ended = bool(r.get("end"))
                await link.drain()
        finally:
            pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pusher
            if not ended:
                node.spawn(self._close(rid))

    async def _push(self, link: Link, rid: int) -> None:
        """Client -> master: forward what the client sends; its going away closes the session."""
        try:
            while True:
                msg = await link.receive()
                await self.node.call_up("relay.push", {"rid": rid, "m": msg})
        except GprocError as e:  # refused (sent past its input window) or malformed: one line, and the end
            link.send({"t": "error", **errors.to_wire(e)})
            await self._close(rid)
        except (EOFError, OSError, TimeoutError):
            await self._close(rid)

    async def _close(self, rid: int) -> None:
        with contextlib.suppress(GprocError, TimeoutError):
            await self.node.call_up("relay.close", {"rid": rid}, timeout=5.0)


# ---- master side -----------------------------------------------------------------------------------


class RelayLink(Link):
    """What a request handler at the master sees for a relayed client: a Link whose sends are queued
    for the next pull and whose receives are the client's pushes."""

    __slots__ = ("_inbox", "_ready", "outbox", "queued")

    def __init__(self, peer: dict[str, Any]) -> None:  # no socket behind it: Link.__init__ is not used
        self.peer = peer
        self.closed = False
        self.counter = wire.Counter()
        self.last_rx = self.last_tx = time.monotonic()
        self.outbox: list[tuple[wire.Message, int]] = []
        self.queued = 0  # bytes in the outbox: the master holds a job whose relayed client lags
        self._ready = asyncio.Event()
        self._inbox: asyncio.Queue[wire.Message | None] = asyncio.Queue()

    def send(self, msg: wire.Message) -> bool:
        if self.closed:
            return False
        size = len(wire.pack(msg))  # the same frame limit as a socket
        self.outbox.append((msg, size))
        self.queued += size
        self.counter.bytes_out += size
        self.counter.frames_out += 1
        self._ready.set()
        return True

    async def drain(self, timeout: float = 30.0) -> None:
        return None

    def unsent(self) -> int:
        return 0 if self.closed else self.queued

    async def receive(self) -> wire.Message:
        msg = await self._inbox.get()
        if msg is None:
            self._inbox.put_nowait(None)
            raise EOFError
        self.counter.frames_in += 1
        return msg

    def waiting(self) -> int:
        """Pushes not yet received by the request handler."""
        return self._inbox.qsize()

    def push(self, msg: wire.Message) -> None:
        if not self.closed:
            self._inbox.put_nowait(msg)

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self._inbox.put_nowait(None)
            self._ready.set()

    async def take(self, wait: float) -> list[wire.Message]:
        """Queued messages (up to about PULL_BYTES), waiting up to ``wait`` seconds for the first."""
        if not self.outbox:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._ready.wait()
        out: list[wire.Message] = []
        size = 0
        while self.outbox and (not out or size + self.outbox[0][1] <= PULL_BYTES):
            msg, n = self.outbox.pop(0)
            self.queued -= n
            out.append(msg)
            size += n
        return out


class Session:
    __slots__ = ("done", "last", "link", "task")

    def __init__(self, link: RelayLink) -> None:
        self.link = link
        self.done = False
        self.last = time.monotonic()
        self.task: asyncio.Task[Any] | None = None


class RelayOpen(Body):
    """``relay.open``: serve ``req`` for a client of rank ``from``'s socket, as ``uid``/``gid``."""

    req: dict[str, Any]
    uid: int
    gid: int
    pid: int = 0
    pgpid: int = 0  # the gpid of the client process, for an exec from inside a job
    from_: int | None = msgspec.field(default=None, name="from")


class RelaySession(Body):
    """``relay.pull`` and ``relay.close``: the session ``rid``."""

    rid: int


class RelayPush(RelaySession):
    """``relay.push``: the client's message ``m`` for session ``rid``."""

    m: dict[str, Any]


class MasterRelay:
    """The master's relay sessions, one per client of a node socket."""

    def __init__(self, master: MasterApi) -> None:
        self.m = master
        self.sessions: dict[int, Session] = {}
        self._ids = itertools.count(1)
        self._sweeper: asyncio.Task[Any] | None = None

    def service(self) -> ServiceTable:
        calls: dict[str, Call] = {
            "relay.open": typed_call(RelayOpen, self._open),
            "relay.pull": typed_call(RelaySession, self._pull),
            "relay.push": typed_call(RelayPush, self._push),
            "relay.close": typed_call(RelaySession, self._close),
        }
        return ServiceTable("relay", calls=calls)

    def _session(self, args: RelaySession) -> Session:
        s = self.sessions.get(args.rid)
        if s is None:
            raise GprocError("unknown relay session (the master may have restarted)")
        return s

    async def _open(self, args: RelayOpen) -> dict[str, Any]:
        rid = next(self._ids)
        link = RelayLink({"name": f"client via rank {args.from_}", "pgpid": args.pgpid})
        s = self.sessions[rid] = Session(link)
        s.task = self.m.spawn(self._serve(s, args.req, PeerCred(args.pid, args.uid, args.gid)))
        if self._sweeper is None:
            self._sweeper = self.m.spawn(self._sweep())
        return {"rid": rid}

    async def _serve(self, s: Session, req: wire.Message, cred: PeerCred) -> None:
        """Run the request exactly as for a client of the master's socket."""
        link = s.link
        try:
            await self.m.serve_client(link, req, cred)
        finally:
            s.done = True
            link._ready.set()

    async def _pull(self, args: RelaySession) -> dict[str, Any]:
        s = self._session(args)
        s.last = time.monotonic()
        msgs = await s.link.take(0 if s.done else PULL_WAIT)
        s.last = time.monotonic()
        end = s.done and not s.link.outbox
        if end:
            self.sessions.pop(args.rid, None)
        return {"m": msgs, "end": end}

    async def _push(self, args: RelayPush) -> dict[str, Any]:
        msg = args.m
        link = self._session(args).link
        if link.waiting() >= INBOX_MAX:
            raise ProtocolError("the client sent past its input window")
        link.push(msg)
        return {}

    async def _close(self, args: RelaySession) -> dict[str, Any]:
        s = self.sessions.pop(args.rid, None)
        if s is not None:
            s.link.abort()
        return {}

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE / 3)
            now = time.monotonic()
            for rid, s in list(self.sessions.items()):
                if now - s.last > EXPIRE:
                    del self.sessions[rid]
                    s.link.abort()
