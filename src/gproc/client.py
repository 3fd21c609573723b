"""The Python API: talk to a master (or, later, any node) over its Unix socket.

    from gproc import Cluster
    async with Cluster() as c:            # $GPROC_MASTER or /tmp/g
        job = await c.exec(["hostname"], nodes="./.")
        async for ev in job:              # Output and Status events, merged in the tree
            print(ev)
        print(job.exit_status)

The CLI, the web view and the FUSE mount are written against this module only.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gproc import wire
from gproc.errors import ConnectError, GprocError, NoMatchError, ProtocolError, RemoteError, StagingError, UsageError

if TYPE_CHECKING:
    from gproc.bundle import Bundle

DEFAULT_SOCKET = "/tmp/g"
SILENCE_LIMIT = 30.0  # the master ticks every few seconds during a job; this much silence is death


def socket_path(explicit: str | None = None) -> str:
    """The master's socket: explicit, else ``$GPROC_MASTER``, else /tmp/g (the seed default)."""
    return explicit or os.environ.get("GPROC_MASTER") or DEFAULT_SOCKET


@dataclass(frozen=True)
class Output:
    """Lines that a set of nodes wrote identically (``lineno`` counts lines per node and stream)."""

    nodes: str
    count: int
    stream: str  # "stdout" | "stderr"
    lineno: int
    data: bytes


@dataclass(frozen=True)
class Status:
    """The exit status shared by a set of nodes; ``error`` says why a node could not run it."""

    nodes: str
    count: int
    status: int
    error: str


Event = Output | Status
STREAMS = {1: "stdout", 2: "stderr"}


def _raise_remote(msg: wire.Message) -> None:
    text = str(msg.get("msg", "error"))
    code = msg.get("code")
    if code == 2:
        raise UsageError(text)
    if code == 255:
        raise StagingError(text)
    if "matched no node" in text:
        raise NoMatchError(text)
    raise RemoteError(text)


class Connection:
    """One client connection: hello, then one request."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.bytes_in = 0

    @classmethod
    async def open(cls, path: str, timeout: float = 10.0) -> Connection:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(path, limit=wire.MAX_FRAME)
        except (OSError, TimeoutError) as e:
            raise ConnectError(f"cannot reach the master at {path}: {getattr(e, 'strerror', None) or e}") from None
        conn = cls(reader, writer)
        conn.send(wire.hello("client"))
        try:
            async with asyncio.timeout(timeout):
                wire.check_hello(await conn.receive())
        except TimeoutError:
            conn.close()
            raise ConnectError(f"the master at {path} does not answer") from None
        return conn

    def send(self, msg: wire.Message) -> None:
        self.writer.write(wire.pack(msg))

    async def receive(self, timeout: float | None = SILENCE_LIMIT) -> wire.Message:
        try:
            async with asyncio.timeout(timeout):
                msg = await wire.read_message(self.reader)
        except TimeoutError:
            raise ConnectError(f"the master said nothing for {timeout:.0f}s") from None
        except EOFError:
            raise ConnectError("the master closed the connection") from None
        except OSError as e:
            raise ConnectError(f"lost the master: {e}") from None
        if msg.get("t") == "error":
            _raise_remote(msg)
        return msg

    def close(self) -> None:
        self.writer.close()


class Job:
    """A running ``exec``: iterate it for events; ``signal()`` reaches every process of the job.

    While the job is iterated, the files of its bundle that some node lacks are sent when the master
    asks for them; ``shipped`` then tells what it cost (``files``, ``bytes`` read here, ``link_bytes``
    carried by all tree links together, ``seconds`` from the master's first question to the nodes
    until every file was stored).
    """

    def __init__(self, conn: Connection, header: wire.Message, bundle: Bundle | None = None) -> None:
        self._conn = conn
        self._bundle = bundle
        self.shipped: dict[str, Any] = {"files": 0, "bytes": 0, "link_bytes": 0, "seconds": 0.0}
        self.id: int = header["job"]
        self.nnodes: int = header.get("n", 0)
        self.absent: str = header.get("absent", "")
        self.exit_status: int | None = None
        self._max = 255 if self.absent else 0

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the job on every node."""
        self._conn.send({"t": "signal", "sig": sig})

    async def events(self) -> AsyncIterator[Event]:
        if self.absent:
            yield Status(self.absent, 0, 255, "absent")
        try:
            while True:
                msg = await self._conn.receive()
                t = msg.get("t")
                if t == "end":
                    break
                if t == "want":
                    await self._send_files(msg.get("h", []))
                    continue
                if t == "ship":
                    self.shipped = {k: msg.get(k, 0) for k in ("files", "bytes", "link_bytes", "seconds")}
                    continue
                if t != "out":
                    continue
                for key, nodes, count in msg["g"]:
                    if key[0] == "o":
                        yield Output(nodes, count, STREAMS.get(key[1], str(key[1])), key[2], key[3])
                    elif key[0] == "s":
                        self._max = max(self._max, int(key[1]))
                        yield Status(nodes, count, int(key[1]), str(key[2]))
        finally:
            self._conn.close()
        self.exit_status = self._max

    def __aiter__(self) -> AsyncIterator[Event]:
        return self.events()

    async def _send_files(self, hashes: list[str]) -> None:
        """Stream the files the master asked for, chunk by chunk, in the order asked."""
        if self._bundle is None:
            raise ProtocolError("the master asked for files of a job that ships none")
        for h in hashes:
            if h not in self._bundle.sources:
                raise ProtocolError(f"the master asked for an unknown file {str(h)[:16]}")
            try:
                for offset, data in self._bundle.chunks(h):
                    self._conn.send({"t": "data", "h": h, "o": offset, "d": data})
                    await self._conn.writer.drain()
            except (OSError, StagingError) as e:
                self._conn.send({"t": "data", "h": h, "err": str(getattr(e, "strerror", None) or e)})


class Cluster:
    """A handle on a gproc master (or node) socket."""

    def __init__(self, socket: str | None = None, timeout: float = 10.0) -> None:
        self.socket = socket_path(socket)
        self.timeout = timeout

    async def __aenter__(self) -> Cluster:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def request(self, fn: str, **args: Any) -> Any:
        """One request, one answer."""
        conn = await Connection.open(self.socket, self.timeout)
        try:
            conn.send({"t": "req", "fn": fn, **args})
            msg = await conn.receive(timeout=max(self.timeout, SILENCE_LIMIT))
            if msg.get("t") != "ret":
                raise ProtocolError(f"unexpected answer {msg.get('t')!r}")
            return msg.get("r")
        finally:
            conn.close()

    async def info(self) -> dict[str, Any]:
        """The tree: ``{"master": name, "nodes": [{name, id, rank, address, parent, level, state}…]}``."""
        return dict(await self.request("info"))

    async def ping(self, nodes: str | None = None) -> dict[str, Any]:
        """A no-op round trip through the tree to every node (or a selection)."""
        return dict(await self.request("ping", nodes=nodes))

    async def stats(self) -> dict[str, Any]:
        return dict(await self.request("stats"))

    async def shutdown(self) -> None:
        """Shut the whole tree down (nodes end their jobs and exit)."""
        await self.request("shutdown")

    async def exec(
        self,
        argv: list[str],
        nodes: str | None = None,
        *,
        include: str | None = None,
        exclude: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        gather: bool = False,
        files: list[str] | tuple[str, ...] = (),
        root: str = "/",
        localbin: bool = False,
        private: bool = True,
    ) -> Job:
        """Start ``argv`` on the selected nodes; returns once the master accepted the job.

        The program, its interpreter and libraries (found in ``env``'s PATH and LD_LIBRARY_PATH,
        inside ``root``), the ``files`` and the working directory are shipped and the program runs
        from the node's binRoot (``private``: in a private mount namespace where possible), unless
        ``localbin``, which runs the node's own program and ships only ``files``.
        ``gather``: the tree holds results until every node is done, so each distinct output reaches
        the master once, whatever the number of nodes (``-b``); otherwise results stream live.
        """
        from gproc import bundle as bundles

        check_selection(nodes, include, exclude)
        env = dict(os.environ) if env is None else env
        cwd = cwd if cwd is not None else _cwd()
        ship = bundles.build(
            argv,
            root=root,
            path_env=env.get("PATH"),
            ld_library_path=env.get("LD_LIBRARY_PATH"),
            files=files,
            cwd=cwd,
            localbin=localbin,
            private=private,
        )
        conn = await Connection.open(self.socket, self.timeout)
        req: wire.Message = {
            "t": "req",
            "fn": "exec",
            "argv": argv,
            "nodes": nodes,
            "w": include,
            "x": exclude,
            "env": env,
            "cwd": cwd,
            "timeout": timeout,
            "gather": gather,
        }
        if ship is not None:
            req["bundle"] = ship.to_wire()
        conn.send(req)
        try:
            header = await conn.receive()
        except GprocError:
            conn.close()
            raise
        if header.get("t") != "job":
            conn.close()
            raise ProtocolError(f"unexpected answer {header.get('t')!r}")
        return Job(conn, header, ship)

    async def run(self, argv: list[str], nodes: str | None = None, **kw: Any) -> tuple[int, list[Event]]:
        """Run to completion; returns (exit status, events)."""
        job = await self.exec(argv, nodes, **kw)
        events = [ev async for ev in job]
        assert job.exit_status is not None
        return job.exit_status, events


def check_selection(nodes: str | None, include: str | None, exclude: str | None) -> None:
    """Reject a malformed selection here, before any connection (the master checks again)."""
    from gproc import nodespec

    if nodes:
        nodespec.parse_tree_spec(nodes)
    if include or exclude:
        nodespec.match_names(include, exclude, [])


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:
        return None
