"""Measuring the parts, each alone and briefly, with gproc's real code: frames over TLS, the op
machinery of a real ``overlay.Node``, program starts (``Popen``, ``posix_spawn``, the starter), the
master's node selection and a ``put`` chunk."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import resource
import shutil
import socket
import ssl
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from .parts import (
    CHUNK,
    TLS_RECORD_MAX,
    TLS_RECORD_OVERHEAD,
    WIDE,
    WIDE_FIRST,
    MiB,
)


def cpu_now() -> float:
    """CPU seconds of this process and its waited-for children."""
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


def child_cpu() -> float:
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ch.ru_utime + ch.ru_stime


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def exec_body(job: int = 123456, nnodes: int = 10000) -> dict[str, Any]:
    """An exec op's body as the master builds it (the client's environment travels with it)."""
    return {
        "argv": ["/bin/true"], "env": dict(os.environ), "cwd": os.getcwd(), "uid": os.getuid(), "gid": os.getgid(),
        "timeout": None, "job": job, "nnodes": nnodes, "gather": False, "pgpid": 0, "stdin": False,
    }  # fmt: skip


async def measure_frames(key: str, rounds: int) -> dict[str, float]:
    """Frame costs on a real TreeLink pair (TLS 1.3, the cluster credential, loopback TCP)."""
    from gproc import credential, wire
    from gproc import ranks as rankset
    from gproc.overlay import TreeLink

    loop = asyncio.get_running_loop()
    waiter: list[asyncio.Future[None]] = []

    def handler(link: TreeLink, msg: dict[str, Any]) -> None:
        if waiter and not waiter[-1].done():
            waiter[-1].set_result(None)

    accepted: list[TreeLink] = []

    def factory() -> TreeLink:
        lk = TreeLink({"name": "parent"})
        accepted.append(lk)
        return lk

    server = await loop.create_server(factory, "127.0.0.1", 0, ssl=credential.server_context(key))
    port = server.sockets[0].getsockname()[1]
    transport, child = await loop.create_connection(
        lambda: TreeLink({"name": "child"}), "127.0.0.1", port, ssl=credential.client_context(key)
    )
    for _ in range(500):  # the accepted side's transport exists once its TLS handshake is done
        if accepted and accepted[0].transport is not None:
            break
        await asyncio.sleep(0.01)
    parent = accepted[0]
    parent.start(handler, lambda lk: None)
    child.start(handler, lambda lk: None)
    sslobj = transport.get_extra_info("ssl_object")
    cipher = sslobj.cipher() if sslobj is not None else None
    wide = rankset.encode({WIDE_FIRST + 7 * i for i in range(WIDE)})  # a subtree's spread ranks
    wide_packed = wire.packed(wide)  # packed once, as overlay.Share does for a subtree
    msgs: dict[str, tuple[dict[str, Any], TreeLink]] = {
        "op_exec": ({"t": "op", "op": 123456, "k": "exec", "b": exec_body(), "tg": [1, 312]}, parent),
        "op_noop": ({"t": "op", "op": 123456, "k": "noop", "b": {}, "tg": [1, 312]}, parent),
        "rep": ({"t": "rep", "op": 123456, "g": [[["s", 0, ""], True]], "end": True}, child),
        "small": ({"t": "ping"}, parent),
        "op_wide": ({"t": "op", "op": 123456, "k": "noop", "b": {}, "tg": wide}, parent),
    }
    out: dict[str, float] = {}

    async def wake_round() -> None:
        f = loop.create_future()
        loop.call_soon(f.set_result, None)
        await f

    try:
        for name, (msg, sender) in msgs.items():
            sends, totals = [], []
            n_rounds = rounds if name != "op_wide" else max(20, rounds // 10)
            for _ in range(3):
                send = 0.0
                c0 = time.process_time()
                for _ in range(n_rounds):
                    waiter.append(loop.create_future())
                    t0 = time.thread_time()
                    if name == "op_wide":  # as a node sends a repeated job to a whole subtree (Share)
                        head = {k: v for k, v in msg.items() if k != "tg"}
                        sender.send_frame(wire.pack_with(wire.packed(head), "tg", wide_packed))
                    else:
                        sender.send(msg)
                    send += time.thread_time() - t0
                    await waiter[-1]
                    waiter.clear()
                total = (time.process_time() - c0) / n_rounds
                c1 = time.process_time()
                for _ in range(n_rounds):
                    await wake_round()
                base = (time.process_time() - c1) / n_rounds
                sends.append(send / n_rounds)
                totals.append(total - base)
                out["loop_wake"] = base
            s, t = min(sends), min(totals)
            out[f"{name}_send"] = s
            out[f"{name}_recv"] = max(1e-6, t - s)
            out[f"{name}_bytes"] = float(len(wire.pack(msg)))
    finally:
        transport.close()
        parent.abort()
        server.close()
    # the target list alone: the wide frame less the same frame with one interval
    out["tg_send_target"] = max(0.0, out.pop("op_wide_send") - out["op_noop_send"]) / WIDE
    out["tg_recv_target"] = max(0.0, out.pop("op_wide_recv") - out["op_noop_recv"]) / WIDE
    out["tg_bytes_target"] = (out.pop("op_wide_bytes") - out["op_noop_bytes"]) / (WIDE - 1)
    out["cipher"] = 0.0
    if cipher:
        print(f"  frames: {cipher[1]} {cipher[0]}")
    return out


class _StandIn:
    """A child link of the measured node: takes frames without sending them."""

    def __init__(self) -> None:
        from gproc import wire

        self.closed = False
        self.counter = wire.Counter()
        self.counter.last_in = 40

    def send(self, msg: dict[str, Any]) -> bool:
        return True

    def send_frame(self, data: bytes) -> bool:
        return True


def _fit3(pts: Sequence[tuple[int, int, float]]) -> tuple[float, float, float]:
    """a + b*k + c*m through three (m, k, t) points (Cramer's rule)."""

    def det(r: Sequence[Sequence[float]]) -> float:
        return (
            r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1])
            - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
            + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0])
        )

    a = [[1.0, float(k), float(m)] for m, k, _ in pts]
    y = [t for _, _, t in pts]
    d = det(a)
    sol = [det([[y[i] if j == col else a[i][j] for j in range(3)] for i in range(3)]) / d for col in range(3)]
    return sol[0], sol[1], sol[2]


async def measure_node(key: str, big: int) -> dict[str, float]:
    """The op machinery of a real overlay.Node (stand-in children), and one exec through ExecService."""
    from gproc.daemon import node_services
    from gproc.overlay import Node, NodeConfig

    tmp = tempfile.mkdtemp(prefix="gproc-model-")
    node = Node(NodeConfig(name="model", id="1", key=key, bin_root=os.path.join(tmp, "bin")))
    node.rank = 1
    nxt = [1000]

    async def call_up(fn: str, args: dict[str, Any], timeout: float = 15.0) -> Any:
        start = nxt[0]
        nxt[0] += 64 * args["want"]
        return {"r": [[start, 64 * args["want"]]], "block": 64, "low": 64}

    node.call_up = call_up  # type: ignore[method-assign]  # gpid blocks without a master
    node.registered.set()
    gpids = asyncio.ensure_future(node_services(node).procs.gpids.run())
    out: dict[str, float] = {}
    ids = iter(range(10_000, 10_000_000))
    firsts: dict[tuple[int, int, bool], tuple[float, float]] = {}  # the untimed first op of each run

    def sink(groups: list[list[Any]], end: bool) -> None:
        pass

    def run(m: int, k: int, master: bool) -> tuple[float, float]:
        """CPU of an op with ``m`` targets (this node among them) and ``k`` children, going down and
        coming back up. At the master the targets are ranks 1..m (a job on every node); below it a
        subtree's ranks are not contiguous (``gproc.local.layout`` deals each level round-robin, a real
        tree's ranks follow the order nodes attached in), so there they are spread out, and the op
        arrives as a parent's frame does: its targets as intervals, decoded and sorted here."""
        from gproc import ranks as rankset

        links = [_StandIn() for _ in range(k)]
        targets = set(range(1, m + 1)) if master else {1 + 7 * i for i in range(m)}
        for i, r in enumerate(sorted(targets - {1}) if k else ()):
            node._route_add(r, links[i % k])  # type: ignore[arg-type]  # a stand-in for a TreeLink
        tg = rankset.encode(targets)
        reps = max(1, 3000 // m)
        down = up = 0.0
        first = (0.0, 0.0)
        for i in range(reps + 1):  # the first op (untimed) is the first after the routes changed: it
            op = next(ids)  # freezes each link's share, which later jobs on the same nodes reuse
            t0 = time.thread_time()
            if master:
                node.start_op(op, "noop", {}, targets, sink)
            else:
                node._on_op({"t": "op", "op": op, "k": "noop", "b": {}, "tg": tg})
            t1 = time.thread_time()
            for lk in links:
                node._on_rep(lk, {"t": "rep", "op": op, "g": [[["s", 0, ""], True]], "end": True})  # type: ignore[arg-type]
            if i:
                down += t1 - t0
                up += time.thread_time() - t1
            else:
                first = (t1 - t0, time.thread_time() - t1)
        firsts[(m, k, master)] = first
        node._detach(set(node.route))
        return down / reps, up / reps

    try:
        leaf = min(run(1, 0, False)[0] for _ in range(3))
        pts = [(9, 8), (33, 32), (big + 1, 32)]
        res = [min((run(m, k, False) for _ in range(2)), key=sum) for m, k in pts]
        d = _fit3([(m, k, r[0]) for (m, k), r in zip(pts, res, strict=True)])
        u = _fit3([(m, k, r[1]) for (m, k), r in zip(pts, res, strict=True)])
        md, mu = run(big + 1, 32, True)
        fd, fu = firsts[(big + 1, 32, True)]
        out.update(
            leaf_noop=leaf, down_base=max(0.0, d[0]), down_child=max(0.0, d[1]), down_target=max(0.0, d[2]),
            up_base=max(0.0, u[0]), up_child=max(0.0, u[1]), up_target=max(0.0, u[2]),
            master_down_target=max(0.0, (md - d[0] - 32 * d[1]) / (big + 1)),
            master_up_target=max(0.0, (mu - u[0] - 32 * u[1]) / (big + 1)),
            master_down_first_target=max(0.0, (fd - d[0] - 32 * d[1]) / (big + 1)),
            master_up_first_target=max(0.0, (fu - u[0] - 32 * u[1]) / (big + 1)),
        )  # fmt: skip
        # one exec of /bin/true at a leaf through the real ExecService, 16 at a time (CPU: self, children)
        body = exec_body()
        loop = asyncio.get_running_loop()
        per_round: list[tuple[float, float, float]] = []
        for rnd in range(9):
            futs = []
            c0, k0, w0 = time.process_time(), child_cpu(), time.perf_counter()
            for _ in range(16):
                fut: asyncio.Future[None] = loop.create_future()

                def done(groups: list[list[Any]], end: bool, fut: asyncio.Future[None] = fut) -> None:
                    if end and not fut.done():
                        fut.set_result(None)

                job = next(ids)
                node.start_op(job, "exec", {**body, "job": job}, {1}, done, base=[1])
                futs.append(fut)
            await asyncio.gather(*futs)
            if rnd:  # the first round warms up
                per_round.append(
                    ((time.process_time() - c0) / 16, (child_cpu() - k0) / 16, (time.perf_counter() - w0) / 16)
                )
        best = min(per_round, key=lambda r: r[0] + r[1])  # the round least disturbed by other processes
        out.update(exec_self=best[0], exec_child=best[1], exec_wall=best[2], exec_fds=open_fds())
    finally:
        gpids.cancel()
        with contextlib.suppress(BaseException):
            await gpids
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def measure_spawn(runs: int, many_fds: int) -> dict[str, float]:
    """A program start as gproc's exec service makes one for -localbin (platform.Command.posix_spawn:
    pipes, new session, signals reset, a working directory), with few and with ``many_fds`` extra
    descriptors open; and a bare os.posix_spawn + waitpid as the floor."""
    from gproc import platform

    cmd = platform.Command(["/bin/true"], "/", dict(os.environ))
    home = os.getcwd()

    def popen_batch(n: int) -> tuple[float, float, float]:
        c0, k0, w0 = time.process_time(), child_cpu(), time.perf_counter()
        for _ in range(n):
            st = cmd.posix_spawn(home)
            os.waitpid(st.pid, 0)
            for fd in (st.stdout, st.stderr):
                os.close(fd)
        return (time.process_time() - c0) / n, (child_cpu() - k0) / n, (time.perf_counter() - w0) / n

    def posix_batch(n: int) -> tuple[float, float]:
        c0, w0 = cpu_now(), time.perf_counter()
        pids = [os.posix_spawn("/bin/true", ["/bin/true"], os.environ) for _ in range(n)]
        for pid in pids:
            os.waitpid(pid, 0)
        return (cpu_now() - c0) / n, (time.perf_counter() - w0) / n

    popen_batch(10)
    few = [popen_batch(runs) for _ in range(3)]
    posix = [posix_batch(runs) for _ in range(3)]
    base_fds = open_fds()
    socks: list[socket.socket] = []
    try:
        while len(socks) < many_fds:
            socks.extend(socket.socketpair())
        many = [popen_batch(runs) for _ in range(3)]
    finally:
        for s in socks:
            s.close()
    f0 = min(few, key=lambda r: r[0] + r[1])
    f1 = min(many, key=lambda r: r[0] + r[1])
    extra = float(len(socks))
    return {
        "popen_parent": f0[0], "popen_child": f0[1], "popen_wall": f0[2],
        "popen_parent_fd": max(0.0, (f1[0] - f0[0]) / extra), "popen_child_fd": max(0.0, (f1[1] - f0[1]) / extra),
        "posix_spawn_cpu": min(p[0] for p in posix), "posix_spawn_wall": min(p[1] for p in posix),
        "spawn_base_fds": float(base_fds), "spawn_many_fds": extra,
    }  # fmt: skip


def measure_starter(runs: int) -> dict[str, float]:
    """A program start through ``platform.Starter`` (the request, the starter's posix_spawn, the exit
    report) and the wait for its end, as a worker holding many descriptors makes one: CPU of this
    process, of the starter and of the program."""
    import psutil

    from gproc import platform

    async def go() -> dict[str, float]:
        sp = platform.Spawner(starter_above=0)
        env = dict(os.environ)

        async def batch(n: int) -> tuple[float, float, float]:
            assert sp.starter is not None
            st = psutil.Process(sp.starter.pid)
            t0, s0 = time.process_time(), st.cpu_times()
            for _ in range(n):
                proc = sp.start(platform.Command(["/bin/true"], "/", env))
                await proc.exited
                proc.close_pipes()
            t1, s1 = time.process_time(), st.cpu_times()
            own = (s1.user + s1.system - s0.user - s0.system) / n
            child = (s1.children_user + s1.children_system - s0.children_user - s0.children_system) / n
            return (t1 - t0) / n, own, child

        try:
            first = sp.start(platform.Command(["/bin/true"], "/", env))  # starts the starter
            await first.exited
            first.close_pipes()
            await batch(10)
            best = min([await batch(runs) for _ in range(3)], key=sum)
        finally:
            sp.close()
        return {"starter_daemon": best[0], "starter_self": best[1], "starter_child": best[2]}

    out = platform.run(go())
    out["starter_above"] = float(platform.STARTER_ABOVE)
    return out


class _KTree:
    """A complete ``k``-ary tree of ``n`` nodes as nodespec's Tree protocol sees the master's topology."""

    def __init__(self, n: int, k: int) -> None:
        from gproc.local import layout

        self.kids: dict[int, dict[str, int]] = {0: {}}
        self.state = {r: "up" for r in range(1, n + 1)}
        for i, p in enumerate(layout(n, k)):
            self.kids.setdefault(p + 1, {})[f"node{i}"] = i + 1
            self.kids.setdefault(i + 1, {})

    def children(self, node: Any) -> list[tuple[str, int]]:
        return [(i, r) for i, r in self.kids[node].items() if self.state[r] == "up"]


def measure_master(n: int) -> dict[str, float]:
    """Per-node work of the master before an op goes down: nodespec.select('**') over a ``n``-node tree
    (and the rank set the job keeps), the set of ranks that are up (ping), NodeSet folding (first job)."""
    from ClusterShell.NodeSet import NodeSet

    from gproc import nodespec

    tree = _KTree(n, 32)
    t0 = time.thread_time()
    sel, _ = nodespec.select("**", None, None, tree, 0, lambda r: f"node{int(r) - 1}")  # type: ignore[call-overload]
    ranks = frozenset(int(r) for r in sel)  # type: ignore[call-overload]
    t1 = time.thread_time()
    again = set(ranks)  # a later job on the same nodes: Master.select's kept answer, copied
    kept = set(again)  # the rank set the job keeps
    t2 = time.thread_time()
    up = {r for r, s in tree.state.items() if s == "up"}
    t3 = time.thread_time()
    names = [f"node{r - 1}" for r in sorted(up)]
    str(NodeSet.fromlist(names))
    t4 = time.thread_time()
    assert len(ranks) == n and len(kept) == n
    return {
        "select_first_target": (t1 - t0) / n,
        "select_target": (t2 - t1) / n,
        "up_ranks_target": (t3 - t2) / n,
        "fold_target": (t4 - t3) / n,
    }


def _tls_pair(key: str) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO, ssl.SSLObject, ssl.MemoryBIO]:
    """A client and a server SSLObject on memory BIOs, handshaken (TLS 1.3, the cluster credential)."""
    from gproc import credential

    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    cli = credential.client_context(key).wrap_bio(c_in, c_out)
    srv = credential.server_context(key).wrap_bio(s_in, s_out, server_side=True)
    for _ in range(20):
        done = 0
        for obj in (cli, srv):
            try:
                obj.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if done == 2:
            break
    # settle post-handshake messages (session tickets)
    for _ in range(3):
        with contextlib.suppress(ssl.SSLWantReadError):
            cli.read(1)
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    return cli, c_out, s_in, srv, s_out


def measure_chunk(key: str, runs: int) -> dict[str, float]:
    """One put chunk (CHUNK bytes): pack + encrypt (per child), decrypt + unpack + SHA-256 + write (per node)."""
    from gproc import wire

    cli, c_out, s_in, srv, _ = _tls_pair(key)
    data = os.urandom(CHUNK)
    body = {"h": "0" * 64, "o": 0, "d": data, "z": 10 * MiB, "x": False, "j": 7}
    msg = {"t": "op", "op": 99, "k": "put", "b": body, "tg": [1, 312]}
    sends, recvs = [], []
    with tempfile.TemporaryFile() as f:
        for _ in range(runs):
            t0 = time.thread_time()
            frame = wire.pack(msg)
            view = memoryview(frame)
            for i in range(0, len(frame), TLS_RECORD_MAX):
                cli.write(view[i : i + TLS_RECORD_MAX])
            cipher = c_out.read()
            t1 = time.thread_time()
            s_in.write(cipher)
            got = bytearray()
            with contextlib.suppress(ssl.SSLWantReadError):
                while len(got) < len(frame):
                    got += srv.read(1 << 20)
            m = wire.unpack(bytes(got[4:]))
            h = hashlib.sha256(m["b"]["d"]).hexdigest()
            os.pwrite(f.fileno(), m["b"]["d"], 0)
            t2 = time.thread_time()
            assert len(h) == 64
            sends.append(t1 - t0)
            recvs.append(t2 - t1)
    return {"chunk_send": min(sends), "chunk_recv": min(recvs)}


def echo_reply_bytes() -> float:
    """Wire bytes of one merged identical-output reply on a link (the real merge + wire encoding + TLS)."""
    from gproc import merge, wire
    from gproc.groups import Groups

    base = list(range(2, 313))
    g = Groups()
    g.add(("o", 1, 1, b"the same line on every node\n"), base)
    g.add(("s", 0, ""), base)
    frame = wire.pack({"t": "rep", "op": 123456, "g": merge.pack(g, base), "end": True})
    return float(len(frame) + TLS_RECORD_OVERHEAD)


def measure_parts(key: str, quick: bool) -> dict[str, float]:
    """Every part alone (a few seconds of one core)."""
    rounds = 300 if quick else 600
    frames = asyncio.run(measure_frames(key, rounds))
    node = asyncio.run(measure_node(key, 20_000 if quick else 50_000))
    spawn = measure_spawn(60 if quick else 100, 8000)
    spawn.update(measure_starter(100 if quick else 200))
    master = measure_master(20_000 if quick else 50_000)
    chunk = measure_chunk(key, 10 if quick else 20)
    return {**frames, **node, **spawn, **master, **chunk}
