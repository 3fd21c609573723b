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
import contextlib
import os
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from signal import SIGINT, SIGKILL, Signals
from typing import TYPE_CHECKING, Any

from gproc import errors, peers, wire
from gproc.errors import ConnectError, GprocError, ProtocolError, StagingError, UsageError

if TYPE_CHECKING:
    from gproc.bundle import Bundle

DEFAULT_SOCKET = "/tmp/g"
SILENCE_LIMIT = 30.0  # the master ticks every few seconds during a job; this much silence is death
READ_AHEAD = 1 << 20  # what the client reads ahead of its consumer: a slow one slows the job, not memory
STDIN_CHUNK = 64 * 1024  # stdin travels in chunks of this size …
STDIN_WINDOW = 8  # … at most this many unacknowledged (flow control down to every node)
FOLLOW_END = 45.0  # tail -f: how long the nodes may take to confirm they stopped


def socket_path(explicit: str | None = None) -> str:
    """The master's socket: explicit, else ``$GPROC_MASTER``, else /tmp/g (the seed default)."""
    return explicit or os.environ.get("GPROC_MASTER") or DEFAULT_SOCKET


@dataclass(frozen=True)
class Output:
    """Output that a set of nodes wrote identically: ``data`` is one or more whole lines (a piece of a
    line when it does not end in a newline and more of that node's output follows; the end of the
    output when it ended without one); ``lineno`` is the number of its first line per node and stream
    (a piece of a line counts as one): a node's output is its records' data joined in ``lineno``
    order. Events come in that order for each node."""

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
Dialer = Callable[[str], Awaitable[socket.socket]]
STREAMS = {1: "stdout", 2: "stderr"}


def _raise_remote(msg: wire.Message) -> None:
    """Raise the error the master sent, of the kind it was raised as there."""
    raise errors.from_wire(msg)


class Connection:
    """One client connection: hello, then one request."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.bytes_in = 0

    @classmethod
    async def open(cls, path: str, timeout: float = 10.0, dial: Dialer | None = None) -> Connection:
        """Connect and say hello; ``dial(path)``, when given, makes the connected socket (the mount
        has a process of the requesting user make it, so that the master sees that user)."""
        # Nothing (the request carries the whole environment) goes to a socket that another user could
        # have put there while the master was down: the path and its directories must be root's or
        # ours, and so must the process that listens on it.
        trusted = {0, os.geteuid()}
        refused = peers.untrusted_path(path, trusted)
        if refused is not None:
            raise ConnectError(refused)
        try:
            async with asyncio.timeout(timeout):
                if dial is None:
                    reader, writer = await asyncio.open_unix_connection(path, limit=READ_AHEAD)
                else:
                    reader, writer = await asyncio.open_unix_connection(sock=await dial(path), limit=READ_AHEAD)
        except (OSError, TimeoutError) as e:
            raise ConnectError(f"cannot reach the master at {path}: {getattr(e, 'strerror', None) or e}") from None
        refused = peers.untrusted_peer(writer.get_extra_info("socket"), path, trusted)
        if refused is not None:
            writer.close()
            raise ConnectError(refused)
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
        if self.writer.transport.is_closing():  # uvloop raises on a write to a closed transport
            raise ConnectError("lost the master: the connection is closed")
        self.writer.write(wire.pack(msg))

    async def drain(self) -> None:
        with contextlib.suppress(OSError):
            await self.writer.drain()

    async def receive(self, timeout: float | None = SILENCE_LIMIT) -> wire.Message:
        try:
            async with asyncio.timeout(timeout):
                msg = await wire.read_message(self.reader)
        except TimeoutError:
            raise ConnectError(f"the master said nothing for {timeout:.0f}s") from None
        except EOFError:
            raise ConnectError("the master closed the connection") from None
        except ProtocolError:
            if self.reader.at_eof():  # it went away in the middle of a message (killed, restarted)
                raise ConnectError("the master closed the connection") from None
            raise
        except OSError as e:
            raise ConnectError(f"lost the master: {e}") from None
        if msg.get("t") == "error":
            _raise_remote(msg)
        return msg

    def close(self) -> None:
        self.writer.close()


class Job:
    """A running ``exec`` (or a stored job's output): iterate it for events; ``signal()`` reaches
    every process of the job; ``feed()`` sends it input.

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
        self.state: str = header.get("state", "running")
        self.exit_status: int | None = None
        self._max = 255 if self.absent else 0
        self._sent = self._acked = 0
        self._credit = asyncio.Event()
        self._stdin: AsyncIterable[bytes] | bytes | None = None
        self.batch = False
        self._last_interrupt = float("-inf")
        self._ship_done = asyncio.Event()  # input waits for it: the master reads files first
        if bundle is None or not bundle.sources:
            self._ship_done.set()

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the job on every node (nothing when the master is gone: the job's events
        say so)."""
        with contextlib.suppress(ConnectError):
            self._conn.send({"t": "signal", "sig": sig})

    def interrupt(self) -> Signals:
        """Ctrl-C: SIGINT to the job on every node, SIGKILL when the last interrupt was less than a
        second ago; returns the signal sent."""
        now = time.monotonic()
        sig = SIGKILL if now - self._last_interrupt < 1.0 else SIGINT
        self._last_interrupt = now
        self.signal(sig)
        return sig

    async def feed(self, source: AsyncIterable[bytes] | bytes) -> None:
        """Send ``source`` as the job's stdin (to every process), then EOF.

        At most ``STDIN_WINDOW`` chunks are in flight: this waits while the slowest node catches up
        (the job's events must be consumed meanwhile, they carry the acknowledgements)."""
        if isinstance(source, bytes):
            data = source

            async def chunks() -> AsyncIterator[bytes]:
                for i in range(0, len(data), STDIN_CHUNK):
                    yield data[i : i + STDIN_CHUNK]

            source = chunks()
        async for chunk in source:
            for i in range(0, len(chunk), STDIN_CHUNK):
                await self._send_chunk(chunk[i : i + STDIN_CHUNK], False)
        await self._send_chunk(b"", True)

    async def ship(self) -> None:
        """Answer the master's questions for files until every node has them (a batch client leaves
        after this; an attached one does it while iterating)."""
        while not self._ship_done.is_set():
            msg = await self._conn.receive()
            t = msg.get("t")
            if t == "want":
                await self._send_files(msg.get("h", []))
            elif t == "ship":
                self.shipped = {k: msg.get(k, 0) for k in ("files", "bytes", "link_bytes", "seconds")}
                self._ship_done.set()
            elif t == "end":
                return

    async def _send_chunk(self, data: bytes, eof: bool) -> None:
        await self._ship_done.wait()
        while self._sent - self._acked >= STDIN_WINDOW:
            self._credit.clear()
            await self._credit.wait()
        self._sent += 1
        self._conn.send({"t": "in", "seq": self._sent, "d": data, "eof": eof})
        await self._conn.drain()

    async def events(self) -> AsyncIterator[Event]:
        if self.batch:
            raise UsageError(f"job {self.id} runs detached: read its output with Cluster.output({self.id})")
        if self.absent:
            yield Status(self.absent, 0, 255, "absent")
        feeder = asyncio.ensure_future(self.feed(self._stdin)) if self._stdin is not None else None
        try:
            while True:
                msg = await self._conn.receive()
                t = msg.get("t")
                if t == "end":
                    break
                if t == "inack":
                    seq = msg.get("seq")
                    if isinstance(seq, int) and seq > self._acked:
                        self._acked = seq
                        self._credit.set()
                    continue
                if t == "want":
                    await self._send_files(msg.get("h", []))
                    continue
                if t == "ship":
                    self.shipped = {k: msg.get(k, 0) for k in ("files", "bytes", "link_bytes", "seconds")}
                    self._ship_done.set()
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
            if feeder is not None:
                feeder.cancel()
                with contextlib.suppress(BaseException):
                    await feeder
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
            chunks = self._bundle.chunks(h)
            while True:
                try:  # a file that cannot be read is the master's to report; a lost master is ours
                    item = next(chunks, None)
                except (OSError, StagingError) as e:
                    self._conn.send({"t": "data", "h": h, "err": str(getattr(e, "strerror", None) or e)})
                    break
                if item is None:
                    break
                self._conn.send({"t": "data", "h": h, "o": item[0], "d": item[1]})
                try:
                    await self._conn.writer.drain()
                except OSError as e:
                    raise ConnectError(f"lost the master: {e.strerror or e}") from None


class Cluster:
    """A handle on a gproc master (or node) socket. ``dial``: how to make a connected socket to it
    (default: connect from this process, as its user)."""

    def __init__(self, socket: str | None = None, timeout: float = 10.0, dial: Dialer | None = None) -> None:
        self.socket = socket_path(socket)
        self.timeout = timeout
        self.dial = dial

    async def connect(self) -> Connection:
        """A new connection to the master, hello said."""
        return await Connection.open(self.socket, self.timeout, self.dial)

    async def __aenter__(self) -> Cluster:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def request(self, fn: str, **args: Any) -> Any:
        """One request, one answer (``tick`` keep-alives while the master works are skipped)."""
        conn = await self.connect()
        try:
            conn.send({"t": "req", "fn": fn, **args})
            while True:
                msg = await conn.receive(timeout=max(self.timeout, SILENCE_LIMIT))
                if msg.get("t") != "tick":
                    break
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

    def group(self, nodes: str | None = None, *, include: str | None = None, exclude: str | None = None) -> Group:
        """A node selection for group file operations: ``cat``, ``stat`` (with ``agg=``), ``cp``."""
        return Group(self, nodes, include, exclude)

    async def metrics(
        self, nodes: str | None = None, *, include: str | None = None, exclude: str | None = None, path: str = "/"
    ) -> dict[str, Any]:
        """Load, memory, disk use of ``path`` and network bytes of the selected nodes (every node up by
        default), reduced inside the tree: ``{"targets", "nodes": {"up", "lost"}, "metrics": {NAME:
        {"unit", "min", "max", "avg", "count", "hist": {"edges", "counts"}, "top": [[value, node]…]}},
        "errors": [{"nodes", "count", "error"}], "bytes_in"}`` (``bytes_in``: the reply bytes that
        reached the master, the same for any number of nodes). Names: load1, mem_used_pct,
        mem_avail_bytes (``top``: the least), disk_used_pct, net_rx_bytes, net_tx_bytes."""
        if nodes or include or exclude:
            check_selection(nodes, include, exclude)
        return dict(await self.request("metrics", nodes=nodes, w=include, x=exclude, path=path))

    async def proctop(self, k: int = 10, nodes: str | None = None, *, include: str | None = None) -> dict[str, Any]:
        """The ``k`` busiest processes across the selected nodes, chosen inside the tree (top-k):
        ``{"procs": [[cpu_percent, "NODE PID USER NAME"]…], "bytes_in"}``; CPU % since the previous
        ``proctop`` on that node (since the process started, the first time)."""
        if nodes or include:
            check_selection(nodes, include, None)
        return dict(await self.request("proctop", k=k, nodes=nodes, w=include))

    async def shutdown(self) -> None:
        """Shut the whole tree down (nodes end their jobs and exit)."""
        await self.request("shutdown")

    # ---- the process space (SPEC §7) ----

    async def ps(
        self, nodes: str | None = None, *, include: str | None = None, exclude: str | None = None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every process in the space on the selected nodes (all by default): ``(rows, errors)``.

        A row: ``gpid``, ``parent_gpid`` (0: started from outside the space), ``name`` (the node),
        ``pid``, ``user``, ``stat``, ``cpu`` (%), ``rss`` (KiB), ``time`` (CPU seconds), ``job``,
        ``cmd``. ``errors``: ``{"nodes", "error"}`` for nodes that did not answer."""
        if nodes or include or exclude:
            check_selection(nodes, include, exclude)
        conn = await self.connect()
        rows: list[dict[str, Any]] = []
        try:
            conn.send({"t": "req", "fn": "ps", "nodes": nodes, "w": include, "x": exclude})
            while True:
                msg = await conn.receive()
                if msg.get("t") == "rows":
                    rows.extend(msg.get("rows", []))
                elif msg.get("t") == "end":
                    return sorted(rows, key=lambda r: r["gpid"]), list(msg.get("errors", []))
        finally:
            conn.close()

    async def kill(self, gpids: list[int] | None = None, *, job: int | None = None, sig: int = 15) -> dict[str, Any]:
        """Signal gpids (each routed to the node that owns its block) or every process of a job.

        gpids: ``{"results": [{"gpid", "code", "error", "name"}…]}`` (code 0 sent, 1 no such process,
        2 permission denied, 255 node lost); a job: ``{"job", "nodes", "signalled", "errors"}``."""
        if job is not None:
            return dict(await self.request("kill", job=job, sig=sig))
        return dict(await self.request("kill", gpids=list(gpids or []), sig=sig))

    async def wait(self, gpids: list[int] | None = None, *, job: int | None = None) -> dict[str, Any]:
        """Wait until gpids (or a job) have ended; works as well after they ended.

        gpids: ``{"results": [{"gpid", "code", "error", "name"}…]}`` where ``code`` is the exit status
        (128+N for signal N), -1 unknown (a forked process: only its parent saw it), -2 no such process,
        -3 permission denied, 255 with ``error`` when the node was lost. A job (``job=``, or a single
        number in ``gpids`` that is a job id: job ids and gpids come from one space): ``{"job",
        "state", "status"}``, status as ``gproc e`` exits."""
        if job is not None:
            return dict(await self.request("wait", job=job))
        return dict(await self.request("wait", gpids=list(gpids or [])))

    async def stack(self, gpids: list[int] | None = None, *, job: int | None = None) -> dict[str, Any]:
        """The stacks of a job's processes (or of gpids), merged inside the tree into a prefix tree of
        call paths: ``{"processes", "nodes", "tree": [[depth, frame, nodes, nnodes, processes]…]
        (preorder, the outliers first among siblings), "classes": [{"nodes", "nnodes", "processes",
        "path"}…] (the leaves, the outliers first), "errors": [{"nodes", "error"}], "no_such": [gpid…],
        "denied": [gpid…], "bytes_in"}`` (``bytes_in``: reply bytes at the master). Only the caller's
        own processes are read (root: any)."""
        if job is not None:
            return dict(await self.request("stack", job=job))
        return dict(await self.request("stack", gpids=list(gpids or [])))

    async def gpids(self, *, blocks: bool = False, nodes_stats: bool = False) -> dict[str, Any]:
        """The master's block table: counters (``requests`` handled ever, ``free``, ``pool`` …), with
        ``blocks`` every block ``[start, size, node]``, with ``nodes_stats`` each node's allocator."""
        return dict(await self.request("gpids", blocks=blocks, nodes_stats=nodes_stats))

    async def collect(self, keep: int | None = None, nodes: str | None = None) -> dict[str, Any]:
        """A collection round now: idle nodes give back the gpids they hold beyond ``keep``."""
        return dict(await self.request("collect", keep=keep, nodes=nodes))

    async def allocate(
        self, n: int, nodes: str | None = None, *, include: str | None = None, interval: float = 0.0
    ) -> dict[str, Any]:
        """Make each selected node hand out ``n`` gpids through its allocator exactly as ``n`` process
        starts would (stress tests and benchmarks; root or the master's owner only)."""
        return dict(await self.request("allocate", n=n, nodes=nodes, w=include, interval=interval))

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
        stdin: bytes | AsyncIterable[bytes] | bool | None = None,
        batch: bool = False,
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
        ``stdin``: bytes or an async iterable of bytes, sent to every process while the job is
        iterated; ``True`` to send it yourself with ``job.feed()``; None: the processes read EOF.
        ``batch``: the job runs on without this client (``job.id`` names it for ``output``/``wait``).
        """
        from gproc import bundle as bundles

        check_selection(nodes, include, exclude)
        if batch and stdin not in (None, False):
            raise UsageError("a batch job has no stdin")
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
        conn = await self.connect()
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
            "stdin": stdin is not None and stdin is not False,
            "batch": batch,
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
        job = Job(conn, header, ship)
        if batch:  # stay until the files are on the nodes, then leave the job to the master
            job.batch = True
            try:
                await job.ship()
            finally:
                conn.close()
        elif stdin is not None and not isinstance(stdin, bool):
            job._stdin = stdin
        return job

    async def jobs(self) -> list[dict[str, Any]]:
        """Jobs the master keeps (yours; everyone's for root): ``id, state, status, argv, nodes, n,
        ok, failed, started, ended, batch, bytes, rep_bytes, truncated, uid``."""
        return list((await self.request("jobs"))["jobs"])

    async def output(self, job: int) -> Job:
        """A job's merged output as events, replayed from the master's store (followed to its end
        if the job still runs)."""
        conn = await self.connect()
        conn.send({"t": "req", "fn": "output", "job": job})
        try:
            header = await conn.receive()
        except GprocError:
            conn.close()
            raise
        if header.get("t") != "job":
            conn.close()
            raise ProtocolError(f"unexpected answer {header.get('t')!r}")
        return Job(conn, header)

    async def run(self, argv: list[str], nodes: str | None = None, **kw: Any) -> tuple[int, list[Event]]:
        """Run to completion; returns (exit status, events)."""
        job = await self.exec(argv, nodes, **kw)
        events = [ev async for ev in job]
        assert job.exit_status is not None
        return job.exit_status, events


@dataclass(frozen=True)
class FileAnswer:
    """What a set of nodes answered for one path: ``kind`` ``"data"`` (cat: ``data``), ``"stat"``
    (``stat``: type, size, mtime, mode, owner, group, sha256, target) or ``"error"`` (``error``)."""

    path: str
    nodes: str
    count: int
    kind: str
    data: bytes = b""
    stat: dict[str, Any] | None = None
    error: str = ""
    status: int = 0  # 1: the node could not answer (``error`` says why); 255: unreachable or lost
    lineno: int = 0  # grep: the line's number; tail: its place from the end (-1 the last)


@dataclass
class FileResult:
    """One answer of ``Group.cat``/``Group.stat``: groups of identical answers and, for a numeric
    ``agg``, the reduced ``value`` (``avg``: ``{"mean", "count"}``; ``hist``: ``{"edges", "counts"}``).
    ``rep_bytes``: reply bytes that reached the master for it (independent of the number of nodes for
    a numeric ``agg``)."""

    paths: list[str]
    answers: list[FileAnswer]
    value: Any = None
    rep_bytes: int = 0


STAT_KEYS = ("type", "size", "mtime", "mode", "owner", "group", "sha256", "target")


@dataclass(frozen=True)
class DirEntry:
    """A name in a listing, with the attributes of one node that has it (a directory where any node
    has one): ``kind`` ``"file"``, ``"dir"``, ``"link"`` or ``"other"``, ``mtime`` in nanoseconds."""

    name: str
    kind: str
    size: int
    mode: int
    mtime: int
    uid: int
    gid: int
    target: str = ""


@dataclass
class Listing:
    """``Group.list``: ``entries`` by name (``"."`` is the path itself; it is a directory where any
    node's is), ``truncated`` when the union held more names than a listing carries, ``errors``
    for the nodes that could not list it."""

    entries: dict[str, DirEntry]
    truncated: bool
    errors: list[FileAnswer]
    rep_bytes: int = 0


class Group:
    """A node selection for group file operations (``Cluster.group``). Paths on nodes are absolute
    and may hold ``%h``, the node's name."""

    def __init__(self, cluster: Cluster, nodes: str | None, include: str | None, exclude: str | None) -> None:
        check_selection(nodes, include, exclude)
        self.cluster = cluster
        self.selection = {"nodes": nodes, "w": include, "x": exclude}
        self.absent: list[str] = []
        self.shipped: dict[str, Any] = {}  # cp: what shipping cost (files, bytes, link_bytes, seconds)
        self.synced: dict[str, Any] = {}  # sync: signature bytes at the master, old versions, pieces
        self.multicast: dict[str, Any] = {}  # cp with multicast: who got what how, what it cost

    async def cat(
        self, paths: list[str] | str, agg: str = "equiv", edges: list[float] | None = None
    ) -> list[FileResult]:
        """The contents of ``paths`` on every node, identical contents grouped (``equiv``, ``concat``)
        or reduced to a number inside the tree (``sum``, ``min``, ``max``, ``avg``, ``hist``)."""
        return await self._files("cat", paths, agg, edges, "size")

    async def stat(
        self, paths: list[str] | str, agg: str = "equiv", field: str = "size", edges: list[float] | None = None
    ) -> list[FileResult]:
        """Size, mtime, mode, owner, group and SHA-256 of ``paths``; with a numeric ``agg``, ``field``
        (size or mtime) reduced inside the tree."""
        return await self._files("stat", paths, agg, edges, field)

    async def _files(self, what: str, paths: list[str] | str, agg: str, edges: Any, field: str) -> list[FileResult]:
        from gproc.services.fileio import AGGREGATIONS, check_paths

        paths = [paths] if isinstance(paths, str) else list(paths)
        if agg not in AGGREGATIONS:
            raise UsageError(f"unknown aggregation {agg[:40]!r} (one of {', '.join(AGGREGATIONS)})")
        check_paths(paths)
        r = await self.cluster.request(
            "files", what=what, paths=paths, agg=agg, edges=edges, field=field, **self.selection
        )
        self.absent = list(r["absent"])
        out = []
        for res in r["results"]:
            answers = []
            for key, nodes, count in res["groups"]:
                if key[0] == "c":
                    answers.append(FileAnswer(key[1], nodes, count, "data", data=key[2]))
                elif key[0] == "t":
                    st = dict(zip(STAT_KEYS, key[2:], strict=True))
                    answers.append(FileAnswer(key[1], nodes, count, "stat", stat=st))
                elif key[0] == "e":
                    answers.append(FileAnswer(str(key[1]), nodes, count, "error", error=str(key[2]), status=1))
                elif key[0] == "s" and len(key) == 3:  # the overlay's word for nodes it could not reach
                    answers.append(FileAnswer("", nodes, count, "error", error=str(key[2]), status=int(key[1]) or 1))
            out.append(FileResult(list(res["paths"]), answers, res["value"], res["rep_bytes"]))
        return out

    async def listdir(self, path: str, names: bool = True) -> Listing:
        """The directory ``path`` on every node, as the union of their names (reduced inside the
        tree: a name many nodes hold reaches the master once); without ``names`` only ``"."``, what
        ``path`` itself is."""
        from gproc.services.fileio import check_paths

        check_paths([path])
        r = await self.cluster.request("list", paths=[path], names=names, **self.selection)
        self.absent = list(r["absent"])
        entries = {e[0]: DirEntry(*e) for e in r["entries"]}
        errors = [FileAnswer(str(key[1]), nodes, count, "error", error=str(key[2]), status=1)
                  for key, nodes, count in r["groups"] if key[0] == "e"]  # fmt: skip
        errors += [FileAnswer(path, nodes, count, "error", error=str(key[2]), status=int(key[1]))
                   for key, nodes, count in r["groups"] if key[0] == "s" and len(key) == 3 and key[1]]  # fmt: skip
        return Listing(entries, bool(r["truncated"]), errors, int(r.get("rep_bytes", 0)))

    async def grep(
        self, pattern: str, paths: list[str] | str, *, ignore_case: bool = False, invert: bool = False
    ) -> list[FileAnswer]:
        """Lines of ``paths`` matching ``pattern`` (Python ``re``) on every node; the same line at the
        same line number on many nodes is one answer (``kind`` "line", ``data``, ``lineno``)."""
        return await self._lines(paths, pattern=pattern, ignore_case=ignore_case, invert=invert)

    async def tail(self, paths: list[str] | str, lines: int = 10) -> list[FileAnswer]:
        """The last ``lines`` lines of ``paths`` on every node (``lineno`` -lines … -1), merged."""
        if lines < 0:
            raise UsageError("tail: the number of lines cannot be negative")
        return await self._lines(paths, last=lines)

    async def follow(self, path: str, lines: int = 10) -> AsyncGenerator[FileAnswer, None]:
        """``tail -f``: the last ``lines`` lines of ``path`` on every node, then lines as they are
        appended (``lineno`` 0), merged across nodes, until the iteration is closed (or cancelled):
        the nodes are then told to stop, and closing returns once the master says every one did
        (ConnectError when it does not within ``FOLLOW_END``)."""
        from gproc.services.fileio import check_paths

        check_paths([path])
        conn = await self.cluster.connect()
        ended = False
        try:
            conn.send({"t": "req", "fn": "follow", "paths": [path], "last": lines, **self.selection})
            while True:
                msg = await conn.receive(timeout=None)
                t = msg.get("t")
                if t == "job":
                    self.absent = [a for a in str(msg.get("absent", "")).split(",") if a]
                elif t == "end":
                    ended = True
                    return
                elif t == "out":
                    for key, nodes, count in msg["g"]:
                        if key[0] == "g":
                            yield FileAnswer(key[1], nodes, count, "line", data=key[3], lineno=key[2])
                        elif key[0] == "e":
                            yield FileAnswer(str(key[1]), nodes, count, "error", error=str(key[2]), status=1)
                        elif key[0] == "s" and len(key) == 3 and key[1]:
                            yield FileAnswer("", nodes, count, "error", error=str(key[2]), status=int(key[1]))
        finally:
            try:
                if not ended:
                    conn.send({"t": "stop"})
                    while (await conn.receive(timeout=FOLLOW_END)).get("t") != "end":
                        pass
            finally:
                conn.close()

    async def _lines(self, paths: list[str] | str, **args: Any) -> list[FileAnswer]:
        from gproc.services.fileio import check_paths

        paths = [paths] if isinstance(paths, str) else list(paths)
        check_paths(paths)
        r = await self.cluster.request("lines", paths=paths, **args, **self.selection)
        self.absent = list(r["absent"])
        out: list[FileAnswer] = []
        for key, nodes, count in r["groups"]:
            if key[0] == "g":
                out.append(FileAnswer(key[1], nodes, count, "line", data=key[3], lineno=key[2]))
            elif key[0] == "z":
                out.append(FileAnswer(key[1], nodes, count, "none", status=1))
            elif key[0] == "e":
                out.append(FileAnswer(str(key[1]), nodes, count, "error", error=str(key[2]), status=2))
            elif key[0] == "s" and len(key) == 3:
                out.append(FileAnswer("", nodes, count, "error", error=str(key[2]), status=int(key[1]) or 1))
        out.sort(key=lambda a: (a.path, a.lineno))
        return out

    async def gather(self, sources: list[str] | str, destdir: str, *, recursive: bool = False) -> list[Status]:
        """Copy ``sources`` from every node to ``destdir/NODE/BASENAME`` here (rpdcp, ``clush
        --rcopy``). Each distinct file crosses the tree once, read from one node that holds it, and
        is stored here once: the nodes' copies are hard links to it. Returns a status per node set
        (1: the node could not read it, the reason in ``error``; 255: absent or unreachable)."""
        import hashlib
        import shutil
        import tempfile

        from ClusterShell.NodeSet import NodeSet

        from gproc.services.fileio import check_paths, node_path

        sources = [sources] if isinstance(sources, str) else list(sources)
        check_paths(sources)
        try:
            os.makedirs(destdir, exist_ok=True)
            spool = tempfile.mkdtemp(prefix=".gproc-gather-", dir=destdir)
        except OSError as e:
            raise UsageError(f"cannot write in {destdir}: {e.strerror}") from None
        try:
            conn = await self.cluster.connect()
            hashes: dict[str, Any] = {}
            try:
                conn.send({"t": "req", "fn": "gather", "paths": sources, "recursive": recursive, **self.selection})
                while True:
                    msg = await conn.receive()
                    if msg.get("t") == "data":
                        h, data = str(msg["h"]), msg["d"]
                        if h not in hashes:
                            hashes[h] = (open(os.path.join(spool, h), "wb"), hashlib.sha256())  # noqa: SIM115
                        hashes[h][0].write(data)
                        hashes[h][1].update(data)
                    elif msg.get("t") == "ret":
                        break
            finally:
                conn.close()
                for f, _ in hashes.values():
                    f.close()
            r = msg["r"]
            out = [Status(a, 1, 255, "absent") for a in r["absent"]]
            out += [Status(nodes, count, 1, str(why)) for why, nodes, count in r["errors"]]
            bad = {h for h, (_f, sha) in hashes.items() if sha.hexdigest() != h}
            for template, entries, nodes in r["trees"]:
                changed = [e for e in entries if e[0] == "f" and (e[2] in bad or (e[2] not in hashes and e[3] > 0))]
                if changed:
                    out.append(Status(nodes, len(NodeSet(nodes)), 1, f"{template}: changed while gathering"))
                    continue
                for name in NodeSet(nodes):
                    top = os.path.join(destdir, name, os.path.basename(node_path(template, name)))
                    _lay_out(top, entries, spool)
                out.append(Status(nodes, len(NodeSet(nodes)), 0, ""))
            return out
        finally:
            shutil.rmtree(spool, ignore_errors=True)

    async def cp(
        self,
        sources: list[str] | str,
        dest: str,
        *,
        recursive: bool = False,
        preserve: bool = False,
        progress: Callable[[int, int], None] | None = None,
        multicast: Multicast | None = None,
    ) -> list[Status]:
        """Copy local ``sources`` to ``dest`` on every node (written atomically, as you; mode, mtime
        and symbolic links kept; ``preserve``: the owner too, when you are root). Returns a status
        per node set: 0 written, 1 refused by the node (the reason in ``error``), 255 unreachable.
        ``progress(sent, total)``: bytes sent into the tree so far, of those some node lacks.

        With ``multicast`` the bytes go by UDP multicast from this process to the nodes on the
        master's link, and through the tree to the others (and to any node that gave up on the
        session); ``self.multicast`` then says which nodes got the files how (``via``: multicast,
        had, tree), what the sender put on the wire and what the receivers asked for."""
        from gproc.services.fileio import check_paths

        sources = [sources] if isinstance(sources, str) else list(sources)
        check_paths([dest])
        ship, meta = copy_tree(sources, recursive)
        conn = await self.cluster.connect()
        sender: _Sending | None = None
        try:
            req = {"t": "req", "fn": "cp", "tree": [e.to_wire() for e in ship.entries.values()], "meta": meta,
                   "dest": dest, "owner": preserve, **self.selection}  # fmt: skip
            if multicast is not None:
                req.update(fn="mcp", mc=multicast.wire())
            conn.send(req)
            while True:
                msg = await conn.receive()
                t = msg.get("t")
                if t == "want":
                    await _send_wanted(conn, ship, msg.get("h", []), progress)
                elif t == "ship":
                    self.shipped = {k: msg.get(k, 0) for k in ("files", "bytes", "link_bytes", "seconds")}
                elif t == "job":
                    self.absent = [a for a in str(msg.get("absent", "")).split(",") if a]
                elif t == "mgo" and multicast is not None and sender is None:
                    sender = _Sending(msg.get("s"), ship)
                elif t == "mstop":
                    conn.send({"t": "msent", "s": await sender.finish() if sender is not None else {}})
                    sender = None
                elif t == "ret":
                    break
        finally:
            if sender is not None:
                await sender.finish()
            conn.close()
        r = msg["r"]
        self.multicast = r.get("multicast") or {}
        if multicast is not None:
            self.multicast["files"] = {e.path: e.hash for e in ship.entries.values() if e.kind == "f"}
        out = [Status(a, 1, 255, "absent") for a in r["absent"]]
        out += [Status(nodes, count, int(key[1]), str(key[2])) for key, nodes, count in r["groups"]]
        return out

    async def sync(self, source: str, dest: str, *, delete: bool = False) -> list[Status]:
        """Make ``dest`` on every node a copy of the local file or directory ``source`` (``rsync -a
        SOURCE/ DEST``: mode, mtime and symbolic links kept, written atomically, as you), moving only
        what changed: nodes holding the same old version send its block signatures up once per link,
        and each missing block goes down once per link. ``delete``: what ``dest`` holds beyond
        ``source`` is removed. Returns a status per node set, like ``cp``; ``shipped`` and ``synced``
        (``sig_bytes`` at the master, distinct old ``versions``, ``pieces``, ``piece_bytes``) say
        what it cost."""
        from gproc.services.fileio import check_paths

        check_paths([dest])
        ship, meta, pieces, block_lists = sync_source(source)
        conn = await Connection.open(self.cluster.socket, self.cluster.timeout)
        try:
            conn.send({"t": "req", "fn": "sync", "tree": [e.to_wire() for e in ship.entries.values()], "meta": meta,
                       "dest": dest, "blocks": block_lists, "delete": delete, **self.selection})  # fmt: skip
            while True:
                msg = await conn.receive()
                t = msg.get("t")
                if t == "want":
                    await _send_pieces(conn, pieces, msg.get("h", []))
                elif t == "ship":
                    self.shipped = {k: msg.get(k, 0) for k in ("files", "bytes", "link_bytes", "seconds")}
                elif t == "job":
                    self.absent = [a for a in str(msg.get("absent", "")).split(",") if a]
                elif t == "ret":
                    break
        finally:
            conn.close()
        r = msg["r"]
        self.synced = {k: r.get(k, 0) for k in ("sig_bytes", "versions", "pieces", "piece_bytes")}
        out = [Status(a, 1, 255, "absent") for a in r["absent"]]
        out += [Status(nodes, count, int(key[1]), str(key[2])) for key, nodes, count in r["groups"]]
        return out


@dataclass(frozen=True)
class Multicast:
    """How ``Group.cp`` multicasts (SPEC §8): at most ``rate`` bytes/s (less when receivers report
    that they cannot keep up), groups of ``k`` data packets of ``psize`` bytes, ``n`` repair packets
    sent with each group until the receivers' reported loss says how many, ``channels``
    retransmission channels."""

    rate: float = 100e6
    k: int = 64
    n: int = 0
    psize: int = 1400
    channels: int = 4

    def wire(self) -> dict[str, Any]:
        return {"rate": self.rate, "k": self.k, "n": self.n, "psize": self.psize, "t": self.channels}


class _Sending:
    """The multicast sender of one ``cp``, in a thread of this process (it reads the files with the
    caller's rights, on the master's host)."""

    def __init__(self, s: Any, ship: Bundle) -> None:
        from gproc import multicast as mc
        from gproc.mcastnet import Channels, Sender

        if not isinstance(s, dict):
            raise ProtocolError("malformed multicast session")
        try:
            files = [(str(h), int(size)) for h, size, _x in s["files"]]
            p = mc.Params(int(s["sid"]), bytes(s["key"]), tuple(size for _h, size in files), int(s["psize"]),
                          int(s["k"]), int(s["t"]), float(s["backoff"]), float(s["retry"]))  # fmt: skip
            channels = Channels.pick(int(s["base"]), p.channels, int(s["port"]))
            paths = [ship.sources[h] for h, _size in files]
            self.sender = Sender(
                p, channels, str(s["iface"]), paths, float(s["rate"]), int(s["receivers"]), int(s["n"])
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"malformed multicast session: {e}") from None
        self.done = asyncio.get_running_loop().run_in_executor(None, self.sender.run)

    async def finish(self) -> dict[str, Any]:
        self.sender.stop.set()
        try:
            await self.done
        except Exception as e:  # the nodes give up on a sender that died and get the files by the tree
            self.sender.error = f"multicast sender failed: {type(e).__name__}: {e}"
        out: dict[str, Any] = self.sender.stats.as_dict()
        if self.sender.error:
            out["error"] = self.sender.error
        return out


async def _send_wanted(
    conn: Connection, ship: Bundle, hashes: list[str], progress: Callable[[int, int], None] | None
) -> None:
    """Stream the files the master asked for, chunk by chunk, telling ``progress`` as they go."""
    sizes = {e.hash: e.size for e in ship.entries.values() if e.kind == "f"}
    total, sent = sum(sizes.get(h, 0) for h in hashes), 0
    for h in hashes:
        if h not in ship.sources:
            raise ProtocolError(f"the master asked for an unknown file {str(h)[:16]}")
        try:
            for offset, data in ship.chunks(h):
                conn.send({"t": "data", "h": h, "o": offset, "d": data})
                await conn.writer.drain()
                sent += len(data)
                if progress is not None:
                    progress(sent, total)
        except (OSError, StagingError) as e:
            conn.send({"t": "data", "h": h, "err": str(getattr(e, "strerror", None) or e)})


async def _send_pieces(conn: Connection, pieces: dict[str, tuple[str, int, int]], hashes: list[str]) -> None:
    """Stream the pieces (whole files or blocks) the master asked for, chunk by chunk."""
    from gproc.bundle import CHUNK

    for h in hashes:
        if h not in pieces:
            raise ProtocolError(f"the master asked for an unknown piece {str(h)[:16]}")
        path, offset, size = pieces[h]
        try:
            with open(path, "rb") as f:
                done = 0
                while True:
                    data = os.pread(f.fileno(), min(CHUNK, size - done), offset + done)
                    conn.send({"t": "data", "h": h, "o": done, "d": data})
                    await conn.writer.drain()
                    done += len(data)
                    if not data or done >= size:
                        break
        except OSError as e:
            conn.send({"t": "data", "h": h, "err": str(e.strerror or e)})


def sync_source(
    source: str,
) -> tuple[Bundle, dict[str, list[int]], dict[str, tuple[str, int, int]], dict[str, list[str]]]:
    """What ``sync`` offers: the tree of ``source`` (as ``cp -r``), its metadata, every piece it may
    send (hash -> (local path, offset, size): whole files and their blocks), and the block hashes of
    files of more than one block. UsageError for a missing source, before anything is sent."""
    import functools

    from gproc import blocks

    ship, meta = copy_tree([source], recursive=True)
    pieces: dict[str, tuple[str, int, int]] = {}
    block_lists: dict[str, list[str]] = {}
    for e in ship.entries.values():
        if e.kind != "f" or e.hash in pieces:
            continue
        path = ship.sources[e.hash]
        pieces[e.hash] = (path, 0, e.size)
        if blocks.block_count(e.size) <= 1:
            continue
        b = blocks.block_size(e.size)
        try:
            with open(path, "rb") as f:
                hashes = blocks.block_hashes(iter(functools.partial(f.read, b), b""))
        except OSError as err:
            raise UsageError(f"cannot read {path}: {err.strerror}") from None
        if len(hashes) != blocks.block_count(e.size):
            raise UsageError(f"{path} changed while it was read")
        block_lists[e.hash] = hashes
        for i, h in enumerate(hashes):
            pieces.setdefault(h, (path, i * b, min(b, e.size - i * b)))
    return ship, meta, pieces, block_lists


def _lay_out(top: str, entries: list[list[Any]], spool: str) -> None:
    """One node's gathered tree at ``top``: files hard-linked to the one stored copy of their
    content (a copy when their mode or mtime differ from it), links and directories made."""
    import shutil

    dirs: list[tuple[str, int, int]] = []
    for kind, rel, what, _size, mode, mtime in entries:
        target = os.path.join(top, rel) if rel else top
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if kind == "d":
            os.makedirs(target, exist_ok=True)
            dirs.append((target, mode, mtime))
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)
        if kind == "l":
            os.symlink(what, target)
            continue
        stored = os.path.join(spool, what)
        if not os.path.exists(stored):  # an empty file travels as no chunk at all
            open(stored, "wb").close()
            os.chmod(stored, mode)
            os.utime(stored, ns=(mtime, mtime))
        st = os.stat(stored)
        if st.st_nlink == 1:  # its first user gives it mode and times
            os.chmod(stored, mode)
            os.utime(stored, ns=(mtime, mtime))
            st = os.stat(stored)
        if (st.st_mode & 0o7777, st.st_mtime_ns) == (mode, mtime):
            os.link(stored, target)
        else:
            shutil.copyfile(stored, target)
            os.chmod(target, mode)
            os.utime(target, ns=(mtime, mtime))
    for target, mode, mtime in reversed(dirs):
        os.chmod(target, mode)
        os.utime(target, ns=(mtime, mtime))


def copy_tree(sources: list[str], recursive: bool) -> tuple[Bundle, dict[str, list[int]]]:
    """What ``cp`` ships: each source as ``/BASENAME`` (a directory with everything under it, links
    kept as links), and per entry ``[mtime_ns, uid, gid]``. UsageError for a missing source or a
    directory without ``recursive``, before anything is sent."""
    import stat as st_

    from gproc.bundle import Bundle
    from gproc.store import Entry

    if not sources:
        raise UsageError("cp needs at least one source and a destination")
    ship = Bundle()
    meta: dict[str, list[int]] = {}

    def note(path: str, st: os.stat_result) -> None:
        meta[path] = [st.st_mtime_ns, st.st_uid, st.st_gid]

    for src in sources:
        name = os.path.basename(src.rstrip("/")) or src
        if name in ("", ".", "..", "/"):
            raise UsageError(f"cannot copy {src!r}: give it by a name")
        try:
            st = os.stat(src)
        except OSError as e:
            raise UsageError(f"cannot copy {src}: {e.strerror}") from None
        top = "/" + name
        try:
            if st_.S_ISREG(st.st_mode):
                ship.add_file(top, src)
                note(top, st)
                continue
            if not st_.S_ISDIR(st.st_mode):
                raise UsageError(f"cannot copy {src}: not a regular file or directory")
            if not recursive:
                raise UsageError(f"{src} is a directory (use -r)")
            ship.add(Entry("d", top, mode=st_.S_IMODE(st.st_mode)))
            note(top, st)
            for here, dirs, names in os.walk(src, onerror=_unreadable):  # a directory it cannot list
                for n in sorted(dirs + names):
                    p = os.path.join(here, n)
                    rel = top + "/" + os.path.relpath(p, src)
                    lst = os.lstat(p)
                    if st_.S_ISLNK(lst.st_mode):
                        ship.add(Entry("l", rel, target=os.readlink(p)))
                    elif st_.S_ISDIR(lst.st_mode):
                        ship.add(Entry("d", rel, mode=st_.S_IMODE(lst.st_mode)))
                    elif st_.S_ISREG(lst.st_mode):
                        ship.add_file(rel, p)
                    else:
                        continue  # sockets, fifos and devices are not copied
                    note(rel, lst)
        except StagingError as e:
            raise UsageError(str(e)) from None
        except OSError as e:
            raise UsageError(f"cannot copy {e.filename}: {e.strerror}") from None
    return ship, meta


def _unreadable(e: OSError) -> None:
    raise e


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
