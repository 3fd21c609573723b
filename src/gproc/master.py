"""The master: rank 0 of the tree, keeper of the topology and ranks, server of the client socket.

Clients (the CLI, the Python API, later the web view) talk to it over a Unix socket; the kernel tells
who they are (SO_PEERCRED) and every job runs as that user. The master resolves node selections
against the live topology and starts ops through the same machinery every node uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ClusterShell.NodeSet import NodeSet

from gproc import nodespec, platform, wire
from gproc import ranks as rankset
from gproc.errors import GprocError, ProtocolError, RegistrationError, UsageError
from gproc.overlay import ID_RE, NAME_RE, Link, Node, NodeConfig, TreeLink
from gproc.pids import PidConfig
from gproc.platform import PeerCred, peer_credentials
from gproc.state import MasterState

TICK = 5.0  # keep-alive to attached clients while a job is silent


@dataclass
class NodeRow:
    """What the master knows of one node."""

    rank: int
    name: str
    id: str
    parent: int
    addr: str | None
    instance: str | None
    state: str = "up"
    since: float = field(default_factory=time.time)
    children: dict[str, int] = field(default_factory=dict)


Request = Callable[[Link, wire.Message, PeerCred], Awaitable[None]]
"""A client request handler: answers on the link (``ret``, or a stream ending in ``end``)."""

Call = Callable[[dict[str, Any]], Awaitable[Any]]
"""An upward-call handler (``call`` from a node): returns the result, raises GprocError to refuse."""


class _TreeView:
    """The live topology as nodespec's ``Tree`` protocol sees it (only nodes that are up)."""

    def __init__(self, master: Master) -> None:
        self.m = master

    def children(self, node: Any) -> list[tuple[str, int]]:
        rows = self.m.topo
        kids = self.m.root_children if node == 0 else rows[node].children
        return [(i, r) for i, r in kids.items() if rows[r].state == "up"]


class Master(Node):
    """Rank 0. Accepts nodes over TLS and clients over a Unix socket."""

    is_master = True

    def __init__(
        self,
        cfg: NodeConfig,
        *,
        socket_path: str,
        state_dir: str,
        pids: PidConfig | None = None,
        keep_jobs: int = 1000,
        keep_bytes: int = 1 << 30,
        **kw: Any,
    ) -> None:
        from gproc.services.jobs import JobService, JobStore

        super().__init__(cfg, **kw)
        self.rank = 0
        self.registered.set()
        self.socket_path = socket_path
        self.state = MasterState(os.path.join(state_dir, "master.db"))
        self.topo: dict[int, NodeRow] = {}
        self.root_children: dict[str, int] = {}
        self._unix: asyncio.Server | None = None
        self._fold_cache: dict[tuple[int, ...], str] = {}
        # selections resolved against the live tree, until its shape or a node's state changes
        self._select_cache: dict[tuple[str | None, str | None, str | None], tuple[frozenset[int], frozenset[str]]] = {}
        self.requests: dict[str, Request] = {}
        self.calls: dict[str, Call] = {}
        self._register_requests()
        from gproc.services.procs import MasterProcs
        from gproc.services.relay import MasterRelay

        self.pids = MasterProcs(self, pids or PidConfig())
        self.relay = MasterRelay(self)
        self.jobs = JobStore(self.state.db, os.path.join(state_dir, "jobs"), keep_jobs, keep_bytes)
        self.job_service = JobService(self)
        from gproc.services.ship import Shipper

        self.shipper = Shipper(self)

    # ---- lifetime --------------------------------------------------------------------------------

    async def start(self) -> None:
        await super().start()
        path = self.socket_path
        if os.path.exists(path):
            if await _socket_alive(path):
                raise UsageError(f"a master already listens on {path}")
            os.unlink(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._unix = await asyncio.start_unix_server(self._client, path, backlog=1024)
        os.chmod(path, 0o777)  # every user may connect; the kernel tells us who they are

    async def stop(self) -> None:
        if self.stopped.is_set():
            return
        if self._unix is not None:
            self._unix.close()
            with contextlib.suppress(OSError):
                os.unlink(self.socket_path)
        await super().stop()
        self.state.close()

    async def shutdown_tree(self) -> None:
        """Ctrl-C on the master: every node ends its jobs and exits, then the master stops."""
        for child in list(self.children.values()):
            child.send({"t": "shutdown"})
        for child in list(self.children.values()):
            with contextlib.suppress(Exception):
                await child.drain(2.0)
        await asyncio.sleep(0.05)
        await self.stop()

    # ---- topology --------------------------------------------------------------------------------

    async def master_call(self, fn: str, args: dict[str, Any], via: TreeLink | None) -> Any:
        if fn != "attach":
            call = self.calls.get(fn)
            if call is None:
                raise RegistrationError(f"unknown call {fn[:40]!r}")
            return await call(args)
        name, nid, parent = args.get("name"), args.get("id"), args.get("parent")
        if not isinstance(name, str) or not NAME_RE.match(name) or not isinstance(nid, str) or not ID_RE.match(nid):
            raise RegistrationError("bad name or id")
        if not isinstance(parent, int) or (parent != 0 and parent not in self.topo):
            raise RegistrationError("retry: unknown parent")
        instance = args.get("instance") if isinstance(args.get("instance"), str) else None
        addr = args.get("addr") if isinstance(args.get("addr"), str) else None
        rank = self.state.rank_for(name)
        if rank == parent:
            raise RegistrationError(f"node {name} cannot be its own parent")
        row = self.topo.get(rank)
        if row is not None and row.state == "up" and row.instance != instance:
            raise RegistrationError(f"retry: name {name} is registered by another daemon (at {row.addr})")
        if row is not None:
            self._kids(row.parent).pop(row.id, None)
            row.id, row.parent, row.addr, row.instance = nid, parent, addr, instance
            row.state, row.since = "up", time.time()
        else:
            row = self.topo[rank] = NodeRow(rank, name, nid, parent, addr, instance)
        self._kids(parent)[nid] = rank
        self._select_cache.clear()
        return {"rank": rank}

    def _kids(self, rank: int) -> dict[str, int]:
        return self.root_children if rank == 0 else self.topo[rank].children

    def on_detach(self, gone: set[int]) -> None:
        self._select_cache.clear()
        now = time.time()
        for r in gone:
            row = self.topo.get(r)
            if row is not None and row.state == "up":
                row.state, row.since = "lost", now

    def up_ranks(self) -> set[int]:
        return {r for r, row in self.topo.items() if row.state == "up"}

    def count_up(self) -> int:
        return sum(1 for row in self.topo.values() if row.state == "up")

    def fold(self, ranks: set[int] | list[int]) -> str:
        """Folded node-name set (``node[0-63]``) of ranks, cached by rank intervals."""
        enc = rankset.encode(ranks)
        return self.fold_intervals(enc)

    def fold_intervals(self, enc: list[int]) -> str:
        key = tuple(enc)
        s = self._fold_cache.get(key)
        if s is None:
            names = [self.topo[r].name for r in rankset.decode(enc) if r in self.topo]
            s = str(NodeSet.fromlist(names)) if names else ""
            if len(self._fold_cache) > 4096:
                self._fold_cache.clear()
            self._fold_cache[key] = s
        return s

    def select(self, spec: str | None, include: str | None, exclude: str | None) -> tuple[set[int], set[str]]:
        """Resolve a node selection against the live tree: (ranks, names asked for but absent).

        Jobs on the same nodes one after another are the common case, and walking the tree costs about
        a microsecond per node (the master's largest per-node cost at a million nodes), so answers are
        kept until the tree changes (a node attaches or is lost)."""
        if not spec and not include:
            raise UsageError("no nodes selected (give a tree path such as './.' or -w NODESET)")
        key = (spec or None, include, exclude)
        hit = self._select_cache.get(key)
        if hit is None:
            sel, absent = nodespec.select(
                spec or None,
                include,
                exclude,
                _TreeView(self),
                0,
                lambda r: self.topo[int(r)].name,  # type: ignore[call-overload]
            )
            hit = frozenset(int(r) for r in sel), frozenset(absent)  # type: ignore[call-overload]
            if len(self._select_cache) >= 64:
                self._select_cache.clear()
            self._select_cache[key] = hit
        return set(hit[0]), set(hit[1])

    def info_rows(self) -> list[dict[str, Any]]:
        """Every node, depth-first from the master, with its level."""
        out: list[dict[str, Any]] = []

        def walk(kids: dict[str, int], depth: int, parent_name: str) -> None:
            for nid in sorted(kids, key=lambda i: (len(i), i)):
                row = self.topo[kids[nid]]
                out.append(
                    {
                        "name": row.name,
                        "id": row.id,
                        "rank": row.rank,
                        "address": row.addr or "",
                        "parent": parent_name,
                        "level": depth,
                        "state": row.state,
                        "since": row.since,
                        "children": len(row.children),
                    }
                )
                walk(row.children, depth + 1, row.name)

        walk(self.root_children, 1, self.cfg.name)
        return out

    # ---- clients ---------------------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = Link(reader, writer, {"name": "client"})
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            sock = writer.get_extra_info("socket")
            cred = peer_credentials(sock) if sock is not None else PeerCred(0, os.getuid(), os.getgid())
            async with asyncio.timeout(10):
                wire.check_hello(await link.receive(), "client")
                link.send(wire.hello("master", name=self.cfg.name))
                req = await link.receive()
            await self._serve_request(link, req, cred)
        except GprocError as e:
            link.send({"t": "error", "msg": str(e), "code": e.exit_status})
        except (EOFError, OSError, TimeoutError) as e:
            self.log.debug("client ended: %s", e)
        except Exception:  # the master survives any request
            self.log.exception("client request failed")
            link.send({"t": "error", "msg": "internal error in the master (see its log)", "code": 1})
        finally:
            await link.close(30.0)  # what is queued still goes (a big output to a slow client), then close

    async def _serve_request(self, link: Link, req: wire.Message, cred: PeerCred) -> None:
        fn = req.get("fn")
        if req.get("t") != "req" or not isinstance(fn, str):
            raise ProtocolError("expected a request")
        handler = self.requests.get(fn)
        if handler is None:
            raise UsageError(f"unknown request {fn[:40]!r}")
        await handler(link, req, cred)

    def _register_requests(self) -> None:
        """Client requests by name; services add theirs to ``self.requests``."""

        async def info(link: Link, req: wire.Message, cred: PeerCred) -> None:
            link.send({"t": "ret", "r": {"master": self.cfg.name, "nodes": self.info_rows()}})

        async def select(link: Link, req: wire.Message, cred: PeerCred) -> None:
            sel, absent = self._selection(req)
            names = sorted(self.topo[r].name for r in sel)
            link.send({"t": "ret", "r": {"names": names, "absent": sorted(absent)}})

        async def stats(link: Link, req: wire.Message, cred: PeerCred) -> None:
            r = self.stats()
            if req.get("links"):
                r["links"] = await self.link_counters()
            link.send({"t": "ret", "r": r})

        async def shutdown(link: Link, req: wire.Message, cred: PeerCred) -> None:
            if cred.uid not in (0, os.getuid()):
                raise UsageError("only root or the master's owner may shut the tree down")
            link.send({"t": "ret", "r": {"ok": True}})
            self.spawn(self.shutdown_tree())

        self.requests.update(info=info, select=select, stats=stats, shutdown=shutdown, ping=self._ping, exec=self._exec)

    def stats(self) -> dict[str, Any]:
        """Bytes and frames exchanged with the tree (the master's direct children) so far.

        ``bytes_in``/``bytes_out`` count frames (payload); ``wire_in`` the TCP payload received (TLS
        records with their headers and tags, from the kernel's TCP_INFO; None where unknown) and
        ``segs_in`` the TCP segments that carried it."""
        links = list(self.children.values())
        wire_in: int | None = 0
        segs = 0
        for lk in links:
            got = platform.tcp_received(lk.transport.get_extra_info("socket") if lk.transport else None)
            if got is None or wire_in is None:
                wire_in = None
                continue
            wire_in += got[0]
            segs += got[1]
        return {
            "bytes_in": sum(lk.counter.bytes_in for lk in links),
            "frames_in": sum(lk.counter.frames_in for lk in links),
            "bytes_out": sum(lk.counter.bytes_out for lk in links),
            "wire_in": wire_in,
            "segs_in": segs,
            "links": len(links),
            "nodes_up": self.count_up(),
            "listen": str(self.listen_address) if self.listen_address else None,
            "ship_link_bytes": self.shipper.total_link_bytes,
        }

    async def link_counters(self) -> list[dict[str, Any]]:
        """Per tree link (named by the node below it): bytes and frames it carried down so far, and
        the file bytes that node stored; nodes with equal counts are grouped."""
        done = asyncio.get_running_loop().create_future()
        rows: list[dict[str, Any]] = []

        def sink(groups: list[list[Any]], end: bool) -> None:
            for key, enc in groups:
                if key[0] == "c":
                    rows.append(
                        {"nodes": self.fold_intervals(enc), "count": rankset.count(enc), "bytes_in": key[1],
                         "frames_in": key[2], "file_bytes": key[3], "stored_at": key[4]}
                    )  # fmt: skip
            if end and not done.done():
                done.set_result(None)

        self.start_op(self.pids.next_id(), "counters", {}, self.up_ranks(), sink)
        await done
        return rows

    def _selection(self, req: wire.Message) -> tuple[set[int], set[str]]:
        spec, inc, exc = req.get("nodes"), req.get("w"), req.get("x")
        for v in (spec, inc, exc):
            if v is not None and not isinstance(v, str):
                raise UsageError("node selection must be a string")
        return self.select(spec, inc, exc)

    async def _ping(self, link: Link, req: wire.Message, cred: PeerCred) -> None:
        """A no-op through the tree to every selected node (all nodes by default)."""
        if req.get("nodes") or req.get("w"):
            targets, _ = self._selection(req)
        else:
            targets = self.up_ranks()
        done = asyncio.get_running_loop().create_future()
        counts: dict[str, int] = {}

        def sink(groups: list[list[Any]], end: bool) -> None:
            for key, enc in groups:
                k = "ok" if key[1] == 0 else str(key[2])
                counts[k] = counts.get(k, 0) + rankset.count(enc)
            if end and not done.done():
                done.set_result(None)

        t0 = time.perf_counter()
        self.start_op(self.pids.next_id(), "noop", {}, targets, sink)
        await done
        link.send(
            {
                "t": "ret",
                "r": {"targets": len(targets), "counts": counts, "seconds": time.perf_counter() - t0},
            }
        )

    async def _exec(self, link: Link, req: wire.Message, cred: PeerCred) -> None:
        argv, env, cwd = req.get("argv"), req.get("env", {}), req.get("cwd")
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            raise UsageError("no command given")
        if not isinstance(env, dict):
            raise UsageError("bad environment")
        timeout = req.get("timeout")
        batch = req.get("batch") is True
        targets, absent = self._selection(req)
        bundle = req.get("bundle")
        entries = self.shipper.check(bundle) if bundle is not None else []
        job = self.pids.next_id()
        body = {
            "argv": argv,
            "env": env,
            "cwd": cwd if isinstance(cwd, str) else None,
            "uid": cred.uid,
            "gid": cred.gid,
            "timeout": timeout if isinstance(timeout, (int, float)) else None,
            "job": job,
            "nnodes": len(targets),
            "gather": req.get("gather") is True,
            "pgpid": link.peer.get("pgpid", 0),  # the gpid of the process that asked (relayed from a job)
            "stdin": req.get("stdin") is True and not batch,  # a batch job's input is empty
        }
        absent_set = str(NodeSet.fromlist(sorted(absent)))
        record = self.jobs.start(job, cred.uid, argv, self.fold(targets), len(targets), batch, absent_set)
        link.send({"t": "job", "job": job, "n": len(targets), "absent": absent_set})
        done = asyncio.Event()
        ops: list[Any] = []

        def sink(groups: list[list[Any]], end: bool) -> None:
            if groups:
                out = [[key, self.fold_intervals(enc), rankset.count(enc)] for key, enc in groups]
                record.add(out)
                link.send({"t": "out", "g": out})
            if end:
                record.finish(ops[0].bytes_in if ops else 0, ops[0].frames_in if ops else 0)
                link.send({"t": "end"})
                done.set()

        self.pids.job_started(job, targets)
        if bundle is not None:  # ticks keep the client patient while files go down (minutes on a big tree)
            shipping = asyncio.ensure_future(self.shipper.distribute(link, job, entries, targets))
            try:
                while not shipping.done():
                    await asyncio.wait({shipping}, timeout=TICK)
                    if not shipping.done():
                        link.send({"t": "tick"})
            finally:
                if not shipping.done():
                    shipping.cancel()
            targets, failed = shipping.result()
            body["bundle"] = bundle
            if failed:
                sink(failed.to_wire(), not targets)
            if not targets:
                return
        ops.append(self.start_op(job, "exec", body, targets, sink))
        if batch:
            return  # the client has its job id and leaves; the job runs on, its output is kept
        await self._attend(link, job, targets, done)

    async def _attend(self, link: Link, job: int, targets: set[int], done: asyncio.Event) -> None:
        """While a job runs: forward the client's signals, keep the client alive, end with it."""
        reader = asyncio.ensure_future(link.receive())
        waiter = asyncio.ensure_future(done.wait())
        try:
            while not done.is_set():
                finished, _ = await asyncio.wait({reader, waiter}, timeout=TICK, return_when=asyncio.FIRST_COMPLETED)
                if reader in finished:
                    try:
                        msg = reader.result()
                    except (EOFError, GprocError, OSError):
                        if not done.is_set():  # the client went away: end its job (like ssh)
                            self.signal_job(job, targets, signal.SIGTERM)
                        return
                    if msg.get("t") == "signal" and isinstance(msg.get("sig"), int):
                        self.signal_job(job, targets, msg["sig"])
                    elif msg.get("t") == "in":
                        try:
                            self.stdin.deliver(job, msg, lambda _op, seq: _ack(link, seq))
                        except ProtocolError:
                            self.signal_job(job, targets, signal.SIGTERM)
                            raise
                    reader = asyncio.ensure_future(link.receive())
                elif not finished:
                    link.send({"t": "tick"})
        finally:
            reader.cancel()
            waiter.cancel()

    def signal_job(self, job: int, targets: set[int], sig: int) -> None:
        """Send a signal to every process of a job, on every node that runs it."""
        self.start_op(self.pids.next_id(), "signal", {"job": job, "sig": sig}, targets, lambda g, e: None)


def _ack(link: Link, seq: int) -> None:
    """Tell an attached client how much of its stdin every node of its job has taken."""
    link.send({"t": "inack", "seq": seq})


async def _socket_alive(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(s, path), 1.0)
        return True
    except (OSError, TimeoutError):
        return False
    finally:
        s.close()
