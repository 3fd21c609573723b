"""``gproc cp --multicast``: a copy whose bytes go once, by UDP multicast, to every node on the link.

The session is set up through the tree (SPEC §8, the SRFTT seed): the master picks the group
addresses, the port and a fresh key, and sends them with the files' hashes and sizes in an ``mrecv``
op (TLS all the way); each selected node that lacks a file joins the groups, says so (``("j",)``),
and receives into its store (``gproc.mcastnet``). Once every node joined, the client (on the
master's host: it reads the files with the caller's rights) starts sending. Each node confirms
through the tree: ``("ok",)`` once every file is in its store with its SHA-256 verified, ``("x",
why)`` when it gave up (nothing heard for a while, a session stopped); the op's reducer sums what the
receivers did (NAKs sent and held back, packets, bytes). When every node answered, the sender stops;
nodes that gave up (a late joiner, a node frozen and resumed) get the files through the tree, as for a
plain ``cp`` (``Shipper``), and then one ``finstall`` op writes them at DEST as the caller, from the
store, atomically: the same code as ``cp``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import secrets
import threading
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from gproc import multicast as mc
from gproc import ranks as rankset
from gproc.errors import ProtocolError, StagingError, UsageError
from gproc.mcastnet import Channels, Received, Receiver
from gproc.messages import Body, Selected
from gproc.reduce import Each, Sum
from gproc.services import fileio
from gproc.services.base import ClientRequest, MasterApi, ServiceTable, typed, with_ticks
from gproc.store import HASH_RE, MAX_SIZE, Incoming, Store, parse_manifest

if TYPE_CHECKING:
    from gproc.overlay import Link, Node, Op
    from gproc.platform import PeerCred
    from gproc.services.ship import Shipper

T = TypeVar("T")

JOIN_LIMIT = 5.0  # the sender starts then even if some node has not joined (it catches up by repair)
IDLE = 8.0  # a receiver that hears nothing of its session this long gives up (then: the tree); > JOIN_LIMIT
SESSION_LIMIT = 6 * 3600.0  # no session outlives this
SENDER_END = 30.0  # the client's sender must report within this once told to stop
STAT_NAMES = ("naks", "entries", "suppressed", "packets", "bytes", "dropped", "decoded", "overflow")
GROUP_BASE = int(ipaddress.IPv4Address("239.77.0.0"))  # administratively scoped (RFC 2365)


def _thread(fn: Callable[[], T]) -> asyncio.Future[T]:
    """``fn()`` in a thread of its own (not the default executor: a process running many nodes must
    not queue one node's receiver behind another's)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(r: T | None, e: BaseException | None) -> None:
        if fut.done():
            return
        if e is not None:
            fut.set_exception(e)
        else:
            fut.set_result(r)  # type: ignore[arg-type]

    def run() -> None:
        try:
            r = fn()
        except BaseException as e:  # handed to the awaiting task
            loop.call_soon_threadsafe(settle, None, e)
        else:
            loop.call_soon_threadsafe(settle, r, None)

    threading.Thread(target=run, name="gproc-multicast", daemon=True).start()
    return fut


class RecvBody(Body):
    """The ``mrecv`` op: receive the session ``s`` (groups, port, key, parameters, files) into the store."""

    s: dict[str, Any]


class StopBody(Body):
    """The ``mstop`` op: end session ``sid`` here (its client left)."""

    sid: int


class McpRequest(Selected, kw_only=True):
    """``mcp``: ``cp --multicast`` of the client's tree to DEST on the selected nodes (§10.2)."""

    tree: list[Any]
    meta: dict[str, Any]
    dest: str
    mc: dict[str, Any]
    owner: bool = False


def params_from(s: dict[str, Any]) -> tuple[mc.Params, Channels, list[tuple[str, int, bool]]]:
    """The session an ``mrecv`` op describes (ProtocolError when malformed)."""
    files = s.get("files")
    if not (isinstance(files, list) and files and all(_file_item(f) for f in files)):
        raise ProtocolError("malformed multicast file list")
    try:
        p = mc.Params(
            session=int(s["sid"]),
            key=bytes(s["key"]),
            sizes=tuple(f[1] for f in files),
            psize=int(s["psize"]),
            k=int(s["k"]),
            channels=int(s["t"]),
            backoff=float(s["backoff"]),
            retry=float(s["retry"]),
        )
        ch = Channels.pick(int(s["base"]), p.channels, int(s["port"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ProtocolError(f"malformed multicast session: {e}") from None
    if not (GROUP_BASE <= int(s["base"]) < GROUP_BASE + (1 << 16) - 80 and 1024 <= ch.port < 65536):
        raise ProtocolError("multicast session outside 239.77.0.0/16 or on a privileged port")
    return p, ch, [(f[0], f[1], f[2]) for f in files]


def _file_item(f: Any) -> bool:
    return (
        isinstance(f, list)
        and len(f) == 3
        and isinstance(f[0], str)
        and HASH_RE.match(f[0]) is not None
        and isinstance(f[1], int)
        and 0 <= f[1] <= MAX_SIZE
        and isinstance(f[2], bool)
    )


class MulticastService:
    """A node's side: receive a session into the store, confirm through the tree."""

    def __init__(self, node: Node, store: Store) -> None:
        self.node = node
        self.store = store
        self.sessions: dict[int, Receiver] = {}

    def service(self) -> ServiceTable:
        return ServiceTable(
            "multicast",
            ops={"mrecv": typed(RecvBody, self.mrecv), "mstop": typed(StopBody, self.mstop)},
            reducers={"mrecv": Each([Sum() for _ in STAT_NAMES])},
            stop=self.close,
        )

    def close(self) -> None:
        for r in self.sessions.values():
            r.stop.set()

    def mstop(self, op: Op, b: StopBody) -> None:
        """End a session here (its client left)."""
        r = self.sessions.get(b.sid)
        if r is not None:
            r.stop.set()
        op.emit(("s", 0, ""))

    def _iface(self) -> str:
        """This node's address on the link its parent is reached by (where the session's packets are)."""
        parent = self.node.parent
        transport = parent.transport if parent is not None else None
        name = transport.get_extra_info("sockname") if transport is not None else None
        if not name or ":" in str(name[0]):
            raise StagingError("multicast needs an IPv4 link to the parent")
        return str(name[0])

    async def mrecv(self, op: Op, b: RecvBody) -> None:
        p, ch, files = params_from(b.s)
        if p.session in self.sessions:
            raise StagingError("multicast session already running here")
        self.store.ensure()
        incs: list[Incoming | None] = []
        fds: list[int | None] = []  # read and write: groups are rebuilt from what arrived, then hashed
        try:
            for h, size, x in files:
                inc = None if self.store.has(h, size) else self.store.begin(h, size, x, f"m{p.session}")
                incs.append(inc)
                flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
                fds.append(None if inc is None else os.open(inc.tmp, flags))
            rx = Receiver(p, ch, self._iface(), self.node.rank or 0, fds, IDLE)
            if rx.left == 0:
                op.emit(("ok", "had"))
                op.give([0] * len(STAT_NAMES))
                op.emit(("s", 0, ""))
                return
            try:
                rx.open()
            except OSError as e:  # no multicast on this link: the tree brings the files
                rx.close()
                op.give([0] * len(STAT_NAMES))
                op.emit(("x", f"cannot join the session: {e.strerror or e}"))
                op.emit(("s", 0, ""))
                return
            self.sessions[p.session] = rx
            op.emit(("j",))
            try:
                got = await _thread(rx.run)
            finally:
                rx.stop.set()
                rx.close()
                del self.sessions[p.session]
            self._confirm(op, got, files, incs)
        finally:
            for fd in fds:
                if fd is not None:
                    os.close(fd)
            for inc in incs:
                if inc is not None and inc.fd >= 0:
                    self.store.abort(inc)

    def _confirm(self, op: Op, got: Received, files: list[tuple[str, int, bool]], incs: list[Incoming | None]) -> None:
        st = got.stats
        op.give([st.naks, st.entries, st.suppressed, st.packets, st.bytes, st.dropped, st.decoded, st.overflow])
        if not got.complete:
            op.emit(("x", got.reason))
            op.emit(("s", 0, ""))
            return
        for (h, _size, _x), inc, digest in zip(files, incs, got.digests, strict=True):
            if inc is None:
                continue
            if digest != h:
                op.emit(("x", f"file {h[:16]}… arrived corrupted (hash mismatch)"))
                op.emit(("s", 0, ""))
                return
            self.store.seal(inc)
        op.emit(("ok", "multicast"))
        op.emit(("s", 0, ""))


def parse_rate(text: str) -> float:
    """``50M``, ``800k``, ``1.5G``: bytes per second (k, M, G: powers of 1000)."""
    t = text.strip()
    scale = {"k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6, "g": 1e9, "G": 1e9}.get(t[-1:], 1.0)
    try:
        v = float(t[:-1] if scale != 1.0 else t) * scale
    except ValueError:
        raise UsageError(f"--rate: not a rate: {text!r} (bytes/s, e.g. 50M)") from None
    if not 1e5 <= v <= 1e11:
        raise UsageError("--rate: from 100k to 100G bytes/s")
    return v


class MasterMulticast:
    """The master's side: the ``mcp`` client request."""

    def __init__(self, master: MasterApi, shipper: Shipper) -> None:
        self.m = master
        self.shipper = shipper

    def service(self) -> ServiceTable:
        return ServiceTable("multicast-master", requests={"mcp": ClientRequest(self.mcp, body=McpRequest)})

    def _iface(self) -> str | None:
        """The master's address on the link most of its children reach it by (None: no IPv4 link
        that multicast can use, so the tree carries everything)."""
        seen: Counter[str] = Counter()
        for link in self.m.children.values():
            name = link.transport.get_extra_info("sockname") if link.transport is not None else None
            if name and ":" not in str(name[0]) and not ipaddress.ip_address(name[0]).is_loopback:
                seen[str(name[0])] += 1
        return seen.most_common(1)[0][0] if seen else None

    async def mcp(self, link: Link, req: McpRequest, cred: PeerCred) -> None:
        tree, meta, dest, opts = req.tree, req.meta, req.dest, req.mc
        try:
            fileio.check_template(dest)
        except fileio.PathError as e:
            raise UsageError(str(e)) from None
        entries = parse_manifest(tree)
        if not entries:
            raise UsageError("nothing to copy")
        rate, k, psize, channels, redundancy = (opts.get(n) for n in ("rate", "k", "psize", "t", "n"))
        if not (isinstance(rate, (int, float)) and 1e5 <= rate <= 1e11):
            raise UsageError("--rate: from 100k to 100G bytes/s")
        if not (isinstance(k, int) and 1 <= k <= 128 and isinstance(redundancy, int) and 0 <= redundancy <= 127):
            raise UsageError("--fec K,N: K data packets per group (1-128), N repair packets sent with each (0-127)")
        if not (isinstance(psize, int) and 256 <= psize <= 8900 and isinstance(channels, int) and 1 <= channels <= 16):
            raise UsageError("bad packet size or channel count")
        targets, absent = self.m.selection(req)
        link.send({"t": "job", "job": 0, "n": len(targets), "absent": ",".join(sorted(absent))})
        files: dict[str, tuple[int, bool]] = {}
        for ent in entries:
            if ent.kind == "f":
                size, x = files.get(ent.hash, (ent.size, False))
                files[ent.hash] = (size, x or ent.executable)
        iface = self._iface()
        via: dict[str, set[int]] = {"multicast": set(), "had": set(), "tree": set()}
        stats: dict[str, Any] = {}
        failed: list[list[Any]] = []
        multicast_to = targets - {0} if iface is not None and files else set()
        reasons: dict[int, str] = {}
        if multicast_to:
            await self._session(link, multicast_to, files, iface or "", rate, k, psize, channels, redundancy,
                                via, stats, failed, reasons)  # fmt: skip
        fallback = targets - via["multicast"] - via["had"] - {r for _k, enc in failed for r in rankset.decode(enc)}
        ready = via["multicast"] | via["had"]
        groups: list[list[Any]] = [[list(key), self.m.fold_intervals(enc), rankset.count(enc)] for key, enc in failed]
        if fallback:
            tag = secrets.randbits(48)
            shipped = await with_ticks(link, self.shipper.distribute(link, tag, entries, fallback))
            assert shipped is not None
            ok, bad = shipped
            ready |= ok
            via["tree"] = ok
            groups += [[list(key), self.m.fold(ranks), len(ranks)] for key, ranks in bad.items()]
        if ready:
            body = {"uid": cred.uid, "gid": cred.gid, "dest": dest, "tree": tree, "meta": meta,
                    "owner": req.owner, "gather": True}  # fmt: skip
            whole = await with_ticks(link, self.m.request("finstall", body, ready).wait())
            assert whole is not None
            groups += [[key, self.m.fold_intervals(enc), rankset.count(enc)] for key, enc in whole.groups]
        stats["via"] = {how: self.m.fold(ranks) for how, ranks in via.items() if ranks}
        stats["gave_up"] = {why: self.m.fold(rs) for why, rs in _by_reason(reasons).items()}
        link.send({"t": "ret", "r": {"groups": groups, "absent": sorted(absent), "targets": len(targets),
                                     "multicast": stats}})  # fmt: skip

    async def _session(
        self,
        link: Link,
        targets: set[int],
        files: dict[str, tuple[int, bool]],
        iface: str,
        rate: float,
        k: int,
        psize: int,
        channels: int,
        redundancy: int,
        via: dict[str, set[int]],
        stats: dict[str, Any],
        failed: list[list[Any]],
        reasons: dict[int, str],
    ) -> None:
        """Run one multicast session to ``targets``: fills ``via``, ``stats``, ``failed`` (statuses
        of nodes that could not take part) and ``reasons`` (nodes that gave up, for the tree)."""
        n = len(targets)
        session = {
            "sid": secrets.randbits(62),
            "key": secrets.token_bytes(32),
            "base": GROUP_BASE + secrets.randbelow(((1 << 16) - 80) // 32) * 32,
            "port": 20000 + secrets.randbelow(40000),
            "psize": psize,
            "k": k,
            "t": channels,
            "backoff": 0.01 + 0.004 * n.bit_length(),  # more receivers: a wider spread to hear each other
            "retry": 0.1 + 0.01 * n.bit_length(),
            "files": [[h, size, x] for h, (size, x) in files.items()],
        }
        req = self.m.request("mrecv", {"s": session}, targets)
        joined: set[int] = set()
        ended: set[int] = set()
        everyone = asyncio.Event()
        totals = [0] * len(STAT_NAMES)

        async def follow() -> None:
            async for part in req:
                for key, enc in part.groups:
                    ranks = rankset.decode(enc)
                    if key[0] == "j":
                        joined.update(ranks)
                    elif key[0] == "ok":
                        via["had" if key[1] == "had" else "multicast"].update(ranks)
                    elif key[0] == "x":
                        for r in ranks:
                            reasons[r] = str(key[1])[:200]
                    elif key[0] == "s":
                        ended.update(ranks)
                        if key[1] != 0:
                            failed.append([list(key), enc])
                if part.value is not None:
                    totals[:] = part.value
                if joined | ended >= targets:
                    everyone.set()
            everyone.set()

        follower = asyncio.ensure_future(follow())
        sending = False
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(JOIN_LIMIT):
                    await everyone.wait()
            if joined - ended:
                go = {k: session[k] for k in ("sid", "key", "base", "port", "psize", "k", "t", "backoff", "retry")}
                go.update(iface=iface, files=session["files"], rate=rate, n=redundancy, receivers=len(joined))
                link.send({"t": "mgo", "s": go})
                sending = True
            await with_ticks(link, asyncio.wait_for(asyncio.shield(follower), SESSION_LIMIT))
        finally:
            if not follower.done():
                await self.m.request("mstop", {"sid": session["sid"]}, targets).wait(timeout=30.0)
                follower.cancel()
            if sending:
                link.send({"t": "mstop"})
                sent = await self._sender_report(link)
                stats["sender"] = sent
        stats["receivers"] = dict(zip(STAT_NAMES, totals, strict=True))
        stats["joined"] = len(joined)

    async def _sender_report(self, link: Link) -> dict[str, Any]:
        try:
            async with asyncio.timeout(SENDER_END):
                while True:
                    msg = await link.receive()
                    if msg.get("t") == "msent":
                        s = msg.get("s")
                        return dict(s) if isinstance(s, dict) else {}
        except TimeoutError:
            raise ProtocolError("the client's sender did not stop") from None


def _by_reason(reasons: dict[int, str]) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for r, why in reasons.items():
        out.setdefault(why, set()).add(r)
    return out
