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
import time
from dataclasses import dataclass, field
from typing import Any

from ClusterShell.NodeSet import NodeSet

from gproc import certs, errors, nodespec, peers, platform, wire
from gproc import ranks as rankset
from gproc.errors import AuthError, GprocError, ProtocolError, RegistrationError, UsageError
from gproc.messages import Body, LateMsg, Selected, convert
from gproc.overlay import ID_RE, NAME_RE, Link, Node, NodeConfig, Request, TreeLink
from gproc.platform import PeerCred, peer_credentials
from gproc.services.base import TICK, Call, ClientRequest, Role, allowed, socket_alive, with_ticks
from gproc.services.collect import Collector
from gproc.services.execute import ExecBody, HoldBody, SignalBody
from gproc.services.jobs import JobStore
from gproc.services.procs import MasterProcs
from gproc.services.ship import Shipper
from gproc.services.stdin import WINDOW, StdinService
from gproc.state import MasterState

OP_IDS = 1 << 16  # op ids reserved in the state database at a time


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


class AttachCall(Body):
    """The ``attach`` upward call: node ``name`` (daemon ``instance``, listening at ``addr``) joins
    under rank ``parent`` through its link ``id`` there (§2, §4)."""

    name: str
    id: str
    parent: int
    instance: str | None = None
    addr: str | None = None


class StatsRequest(Body):
    """``stats``: the master's link counters; ``links``: per tree link too."""

    links: bool = False


class ExecRequest(Selected, kw_only=True):
    """``exec``: run ``argv`` on the selected nodes (§6)."""

    argv: list[str]
    env: dict[str, str] = {}
    cwd: str | None = None
    timeout: float | None = None
    batch: bool = False  # the client leaves once it has the job id; the output is kept
    gather: bool = False  # one merged reply at the end (-b)
    stdin: bool = False  # the client streams input (``in``)
    bundle: dict[str, Any] | None = None  # files to ship first (checked by ``Shipper.check``)


class _TreeView:
    """The live topology as nodespec's ``Tree`` protocol sees it (only nodes that are up)."""

    def __init__(self, master: Master) -> None:
        self.m = master

    def children(self, node: Any) -> list[tuple[str, int]]:
        rows = self.m.topo
        kids = self.m.root_children if node == 0 else rows[node].children
        return [(i, r) for i, r in kids.items() if rows[r].state == "up"]


class Master(Node):
    """Rank 0. Accepts nodes over TLS and clients over a Unix socket.

    Services are wired in by ``gproc.daemon.build_master``: their client requests and upward calls
    land in ``requests`` and ``calls``; ``equip`` gives the master the services ``exec`` uses."""

    is_master = True

    def __init__(
        self,
        cfg: NodeConfig,
        *,
        socket_path: str,
        state_dir: str,
        **kw: Any,
    ) -> None:
        super().__init__(cfg, **kw)
        self.rank = 0
        self.registered.set()
        self.socket_path = socket_path
        self.state = MasterState(os.path.join(state_dir, "master.db"))
        self.topo: dict[int, NodeRow] = {}
        self._op_next = self._op_end = 0
        self.root_children: dict[str, int] = {}
        self.serials: dict[int, int] = {}  # rank -> its certificate's serial (with certificates)
        self._unix: asyncio.Server | None = None
        self._clients = peers.ClientLimit()
        self._fold_cache: dict[tuple[int, ...], str] = {}
        # selections resolved against the live tree, until its shape or a node's state changes
        self._select_cache: dict[tuple[str | None, str | None, str | None], tuple[frozenset[int], frozenset[str]]] = {}
        self.requests: dict[str, ClientRequest] = {}
        self.collectors: dict[int, Collector] = {}  # running jobs' results by op id (late ones come here)
        self.calls: dict[str, Call] = {}
        self._register_requests()
        # the services the exec request uses (``equip``)
        self.pids: MasterProcs
        self.jobs: JobStore
        self.shipper: Shipper
        self.stdin: StdinService

    def equip(self, pids: MasterProcs, jobs: JobStore, shipper: Shipper, stdin: StdinService) -> None:
        """Give the master the services its ``exec`` request uses (job ids, the job store, shipping
        and input)."""
        self.pids, self.jobs, self.shipper, self.stdin = pids, jobs, shipper, stdin

    # ---- lifetime --------------------------------------------------------------------------------

    async def start(self) -> None:
        await super().start()
        path = self.socket_path
        if os.path.exists(path):
            if await socket_alive(path):
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
        if fn == "attach":
            return self.register(args)
        call = self.calls.get(fn)
        if call is None:
            raise RegistrationError(f"unknown call {fn[:40]!r}")
        return await call(args)

    def register(self, args: dict[str, Any]) -> dict[str, Any]:
        att = convert(args, AttachCall, "attach", RegistrationError)
        name, nid, parent, instance, addr = att.name, att.id, att.parent, att.instance, att.addr
        if not NAME_RE.match(name) or not ID_RE.match(nid):
            raise RegistrationError("bad name or id")
        if parent != 0 and parent not in self.topo:
            raise RegistrationError("retry: unknown parent")
        serial = self._check_identity(args, parent) if self.identity is not None else None
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
        if serial is not None:
            self.serials[rank] = serial
        self._select_cache.clear()
        return {"rank": rank}

    def _check_identity(self, args: dict[str, Any], parent: int) -> int:
        """With certificates, a name registers only with a valid certificate for it and a statement
        signed with its key; one line in the log for each refusal."""
        assert self.identity is not None
        parent_name = self.identity.name if parent == 0 else self.topo[parent].name
        try:
            return certs.check_attach(self.identity.ca, self.revoked, args, parent_name)
        except AuthError as e:
            self.log.warning("refused a registration under %s: %s", parent_name, e)
            raise

    def reload_revoked(self) -> None:
        """SIGHUP: read the revoked-serials file again; nodes holding a revoked certificate are
        disconnected by their parents, and refused when they come back."""
        try:
            revoked = certs.read_revoked(self.cfg.revoked)
        except AuthError as e:
            self.log.error("revoked serials not reloaded (the old list stays): %s", e)
            return
        for rank, serial in self.serials.items():
            row = self.topo.get(rank)
            if serial in revoked and serial not in self.revoked and row is not None and row.state == "up":
                self.log.warning(
                    "node %s: certificate %s revoked, disconnecting it", row.name, certs.serial_text(serial)
                )
        self.log.info("revoked serials reloaded from %s: %d", self.cfg.revoked, len(revoked))
        self.apply_revoked(revoked)

    def next_op_id(self) -> int:
        """Op ids are their own series, apart from gpids and job ids, kept in the state database."""
        if self._op_next >= self._op_end:
            self._op_next = self.state.reserve("op_next", OP_IDS)
            self._op_end = self._op_next + OP_IDS
        self._op_next += 1
        return self._op_next - 1

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
        self.own(asyncio.current_task())
        cred: PeerCred | None = None
        try:
            cred = peer_credentials(writer.get_extra_info("socket"))
            if not self._clients.enter(cred.uid):
                cred = None
                raise GprocError(f"too many connections from this user (at most {self._clients.per_user})")
            async with asyncio.timeout(10):
                wire.check_hello(await link.receive(), "client")
                link.send(wire.hello("master", name=self.cfg.name))
                req = await link.receive()
        except GprocError as e:
            link.send({"t": "error", **errors.to_wire(e)})
        except (EOFError, OSError, TimeoutError) as e:
            self.log.debug("client ended: %s", e)
        else:
            await self.serve_client(link, req, cred)
        finally:
            if cred is not None:
                self._clients.leave(cred.uid)
            await link.linger(30.0)  # what is queued still goes (a big output to a slow client), then close

    async def serve_client(self, link: Link, req: wire.Message, cred: PeerCred) -> None:
        """Answer one client request (on the master's socket, or relayed by a node): the one place
        where a request is looked up, its caller's role checked and its errors turned into replies."""
        try:
            fn = req.get("fn")
            if req.get("t") != "req" or not isinstance(fn, str):
                raise ProtocolError("expected a request")
            entry = self.requests.get(fn)
            if entry is None:
                raise UsageError(f"unknown request {fn[:40]!r}")
            allowed(entry.role, cred, entry.what or f"make the {fn} request")
            await entry.handler(link, entry.decode(fn, req), cred)
        except GprocError as e:
            link.send({"t": "error", **errors.to_wire(e)})
        except (EOFError, OSError, TimeoutError) as e:
            self.log.debug("client ended: %s", e)
        except Exception:  # the master survives any request
            self.log.exception("client request failed")
            link.send({"t": "error", **errors.to_wire(GprocError("internal error in the master (see its log)"))})

    def _register_requests(self) -> None:
        """Client requests by name; services add theirs to ``self.requests``."""

        async def info(link: Link, req: Body, cred: PeerCred) -> None:
            link.send({"t": "ret", "r": {"master": self.cfg.name, "nodes": self.info_rows()}})

        async def select(link: Link, req: Selected, cred: PeerCred) -> None:
            sel, absent = self.selection(req)
            names = sorted(self.topo[r].name for r in sel)
            link.send({"t": "ret", "r": {"names": names, "absent": sorted(absent)}})

        async def stats(link: Link, req: StatsRequest, cred: PeerCred) -> None:
            r = self.stats()
            if req.links:
                r["links"] = await self.link_counters()
            link.send({"t": "ret", "r": r})

        async def shutdown(link: Link, req: Body, cred: PeerCred) -> None:
            link.send({"t": "ret", "r": {"ok": True}})
            self.spawn(self.shutdown_tree())

        self.requests.update(
            info=ClientRequest(info, body=Body),
            select=ClientRequest(select, body=Selected),
            stats=ClientRequest(stats, body=StatsRequest),
            shutdown=ClientRequest(shutdown, Role.OWNER, "shut the tree down", body=Body),
            ping=ClientRequest(self._ping, body=Selected),
            exec=ClientRequest(self._exec, body=ExecRequest),
        )

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
        rows: list[dict[str, Any]] = []
        for key, enc in (await self.request("counters", {}, self.up_ranks())).groups:
            if key[0] == "c":
                rows.append(
                    {"nodes": self.fold_intervals(enc), "count": rankset.count(enc), "bytes_in": key[1],
                     "frames_in": key[2], "file_bytes": key[3], "stored_at": key[4]}
                )  # fmt: skip
        return rows

    def selection(self, req: Selected | wire.Message) -> tuple[set[int], set[str]]:
        """The ranks a request selects (and the names it asks for that are absent)."""
        if not isinstance(req, Selected):
            req = convert(req, Selected, "node selection", UsageError)
        return self.select(req.nodes, req.w, req.x)

    async def _ping(self, link: Link, req: Selected, cred: PeerCred) -> None:
        """A no-op through the tree to every selected node (all nodes by default)."""
        if req.nodes or req.w:
            targets, _ = self.selection(req)
        else:
            targets = self.up_ranks()
        counts: dict[str, int] = {}
        t0 = time.perf_counter()
        for key, enc in (await self.request("noop", {}, targets)).groups:
            k = "ok" if key[1] == 0 else str(key[2])
            counts[k] = counts.get(k, 0) + rankset.count(enc)
        link.send(
            {
                "t": "ret",
                "r": {"targets": len(targets), "counts": counts, "seconds": time.perf_counter() - t0},
            }
        )

    async def _exec(self, link: Link, req: ExecRequest, cred: PeerCred) -> None:
        argv, batch, bundle = req.argv, req.batch, req.bundle
        if not argv:
            raise UsageError("no command given")
        targets, absent = self.selection(req)
        entries = self.shipper.check(bundle) if bundle is not None else []
        job = self.pids.next_id()
        pgpid = link.peer.get("pgpid", 0)  # the gpid of the process that asked (relayed from a job)
        body = ExecBody(
            argv=argv,
            env=req.env,
            cwd=req.cwd,
            uid=cred.uid,
            gid=cred.gid,
            timeout=req.timeout,
            job=job,
            nnodes=len(targets),
            gather=req.gather,
            pgpid=pgpid if isinstance(pgpid, int) else 0,
            stdin=req.stdin and not batch,  # a batch job's input is empty
            redeliver=True,  # nodes keep what they send up, to send it again after re-attaching
        )
        absent_set = str(NodeSet.fromlist(sorted(absent)))
        record = self.jobs.start(job, cred.uid, argv, self.fold(targets), len(targets), batch, absent_set)
        link.send({"t": "job", "job": job, "n": len(targets), "absent": absent_set})
        done = asyncio.Event()
        requests: list[Request] = []
        flow = _Flow(self, link, job)

        def emit(groups: list[list[Any]]) -> None:
            out = [[key, self.fold_intervals(enc), rankset.count(enc)] for key, enc in groups]
            # merging in the tree keeps the first-seen order of keys, which can put a node's record
            # after one it wrote later (a key another node sent first): records go by their number
            out.sort(key=_record_order)
            record.add(out)
            link.send({"t": "out", "g": out})
            flow.check(targets)

        def finish() -> None:
            op = requests[0].op if requests else None
            if op is not None:
                self.collectors.pop(op.id, None)
            record.finish(op.bytes_in if op else 0, op.frames_in if op else 0)
            link.send({"t": "end"})
            done.set()

        started = time.time()

        def may_return(lost: set[int]) -> set[int]:
            """Ranks reported lost that may yet re-attach and deliver: those under another lost rank
            (their parent died, not they) and those that re-attached since the job started."""
            rows = self.topo
            back = {r for r in lost if r in rows and rows[r].state == "up" and rows[r].since > started}
            return back | {r for r in lost if r in rows and rows[r].parent in lost}

        results = Collector(emit, finish, self.cfg.reattach_grace, may_return)
        self.pids.job_started(job, targets)
        if bundle is not None:  # ticks keep the client patient while files go down (minutes on a big tree)
            shipped = await with_ticks(link, self.shipper.distribute(link, job, entries, targets))
            assert shipped is not None  # None only when a client leaving is watched for
            targets, failed = shipped
            body.bundle = bundle
            if failed:
                results.add(failed.to_wire(), not targets)
            if not targets:
                return
        request = self.request("exec", body.wire(), targets)
        requests.append(request)
        self.collectors[request.op.id] = results
        # the replies go to the collector whether the client stays or not (a batch job runs on)
        self.spawn(self._collect(request, results))
        if batch:
            return  # the client has its job id and leaves; the job runs on, its output is kept
        await self._attend(link, job, request.op.id, targets, done)

    @staticmethod
    async def _collect(request: Request, results: Collector) -> None:
        async for part in request:
            results.add(part.groups, part.end)

    async def _attend(self, link: Link, job: int, op_id: int, targets: set[int], done: asyncio.Event) -> None:
        """While a job runs: forward the client's signals and input, keep the client alive, end with it.

        The stdin window is enforced here, not trusted to the client: while more than ``WINDOW``
        chunks are unacknowledged the client's connection is not read, so a client sending past its
        window blocks on its own socket instead of growing this daemon's memory."""
        credit = _Credit()

        def ack(_op: int, seq: int) -> None:
            credit.took(seq)
            _ack(link, seq)

        reader = asyncio.ensure_future(credit.receive(link))
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
                            self.stdin.deliver(op_id, msg, ack)
                        except ProtocolError:
                            self.signal_job(job, targets, signal.SIGTERM)
                            raise
                        credit.sent = msg["seq"]  # deliver checked it follows the last one
                    reader = asyncio.ensure_future(credit.receive(link))
                elif not finished:
                    link.send({"t": "tick"})
        finally:
            reader.cancel()
            waiter.cancel()
            # the reader must be gone before anything else reads this link (linger, at its close)
            await asyncio.wait({reader, waiter})

    def _on_late(self, link: TreeLink, msg: wire.Message) -> None:
        late = LateMsg.decode(msg)
        results = self.collectors.get(late.op)
        if results is not None:  # else the job has ended: what it reported lost stays lost
            results.late(late.groups, late.truncated)

    def signal_job(self, job: int, targets: set[int], sig: int) -> None:
        """Send a signal to every process of a job, on every node that runs it."""
        self.request("signal", SignalBody(job=job, sig=sig).wire(), targets)  # its answers are not awaited


def _record_order(item: list[Any]) -> tuple[int, int, int]:
    """Output records by stream and number, then every other key (statuses) in the order they came."""
    key = item[0]
    if key[0] == "o":
        return (0, key[1], key[2])
    return (1, 0, 0)


class _Flow:
    """Back-pressure from one attached client to its job's nodes: while the client's connection holds
    more than ``HOLD_AT`` bytes not taken in, the job is *held* (its nodes stop reading its programs'
    output, which then block on their pipes), until the client took in all but ``RELEASE_AT``. Only
    this job waits: other jobs' output keeps flowing on the same tree links."""

    HOLD_AT = 1 << 20
    RELEASE_AT = 256 << 10
    POLL = 0.02

    def __init__(self, master: Master, link: Link, job: int) -> None:
        self.m = master
        self.link = link
        self.job = job
        self.holding = False

    def check(self, targets: set[int]) -> None:
        if not self.holding and self.link.unsent() >= self.HOLD_AT:
            self.holding = True
            self._hold(targets, True)
            self.m.spawn(self._release(targets))

    def _hold(self, targets: set[int], on: bool) -> None:
        body = HoldBody(job=self.job, on=on).wire()
        self.m.request("hold", body, targets)  # its answers are not awaited

    async def _release(self, targets: set[int]) -> None:
        link = self.link
        while not link.closed and link.unsent() > self.RELEASE_AT:
            await asyncio.sleep(self.POLL)
        self.holding = False
        self._hold(targets, False)


class _Credit:
    """One attached client's stdin window as the master sees it: chunks received against chunks
    every node acknowledged."""

    __slots__ = ("acked", "more", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.acked = 0
        self.more = asyncio.Event()

    def took(self, seq: int) -> None:
        self.acked = max(self.acked, seq)
        self.more.set()

    async def receive(self, link: Link) -> wire.Message:
        """The client's next message; not read while the client is past its window (like TCP's), which
        a client keeping to it never is, so its signals are always read."""
        while self.sent - self.acked > WINDOW:
            self.more.clear()
            await self.more.wait()
        return await link.receive()


def _ack(link: Link, seq: int) -> None:
    """Tell an attached client how much of its stdin every node of its job has taken."""
    link.send({"t": "inack", "seq": seq})
