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
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
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
    async def open(cls, path: str, timeout: float = 10.0) -> Connection:
        # Nothing (the request carries the whole environment) goes to a socket that another user could
        # have put there while the master was down: the path and its directories must be root's or
        # ours, and so must the process that listens on it.
        trusted = {0, os.geteuid()}
        refused = peers.untrusted_path(path, trusted)
        if refused is not None:
            raise ConnectError(refused)
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(path, limit=READ_AHEAD)
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
        self._ship_done = asyncio.Event()  # input waits for it: the master reads files first
        if bundle is None or not bundle.sources:
            self._ship_done.set()

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the job on every node."""
        self._conn.send({"t": "signal", "sig": sig})

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
        """One request, one answer (``tick`` keep-alives while the master works are skipped)."""
        conn = await Connection.open(self.socket, self.timeout)
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
        conn = await Connection.open(self.socket, self.timeout)
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
        conn = await Connection.open(self.socket, self.timeout)
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
