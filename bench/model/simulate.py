"""The simulation: the tree ``gproc.local.layout`` builds, a launch or no-op on it with every daemon
on this machine's cores (local, simpy), and on a cluster of one daemon per machine (per-node simpy
simulation and a level-by-level recurrence), and a file broadcast."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from .parts import (
    CHUNK,
    SPAWN_PER_TURN,
    WINDOW,
    Costs,
)


@dataclass
class Tree:
    """The tree gproc.local.layout builds: node i's parent (-1: the master), children, subtree sizes."""

    n: int
    k: int
    parent: list[int]
    children: list[list[int]]
    size: list[int]
    top: list[int]
    depth: int

    @classmethod
    def build(cls, n: int, k: int) -> Tree:
        from gproc.local import layout

        parent = layout(n, k)
        children: list[list[int]] = [[] for _ in range(n)]
        level = [0] * n
        for i, p in enumerate(parent):
            if p >= 0:
                children[p].append(i)
                level[i] = level[p] + 1
            else:
                level[i] = 1
        size = [1] * n
        for i in range(n - 1, -1, -1):  # parents come before their children in layout order
            if parent[i] >= 0:
                size[parent[i]] += size[i]
        return cls(n, k, parent, children, size, [i for i in range(n) if parent[i] < 0], max(level))


@dataclass(frozen=True)
class Level:
    nodes: int  # nodes at this level
    kids: int  # children of this level's busiest node
    subtree: int  # targets in this level's largest subtree (itself included)


def levels(n: int, k: int) -> list[Level]:
    """Level by level (1 = the master's children), as gproc.local.layout fills them."""
    sizes: list[int] = []
    left, width = n, min(k, n)
    while left > 0:
        width = min(width, left)
        sizes.append(width)
        left -= width
        width *= k
    kids = [math.ceil(sizes[i + 1] / sizes[i]) for i in range(len(sizes) - 1)] + [0]
    sub = [1] * len(sizes)
    for i in range(len(sizes) - 2, -1, -1):
        sub[i] = 1 + kids[i] * sub[i + 1]
    return [Level(s, c, min(m, n)) for s, c, m in zip(sizes, kids, sub, strict=True)]


def op_frame(n: int, k: int, c: Costs) -> float:
    """Bytes of the exec op frame the master sends each child: the op and the child's subtree as
    targets (spread ranks: one interval each)."""
    return c.op_exec_bytes + c.tg_bytes_target * levels(n, k)[0].subtree


def local_workers(n: int, k: int, cores: int) -> int:
    """Worker processes of gproc.local.up for this machine."""
    from gproc import local

    rule = getattr(local, "workers", None)
    if rule is not None:
        return int(rule(n, k, cores))
    return max(1, min(math.ceil(n / 256), 2 * cores, min(k, n)))  # before gproc.local.workers existed


def local_heartbeat(n: int) -> float:
    """gproc.local.up's heartbeat period for ``n`` nodes."""
    from gproc import local

    rule = getattr(local, "liveness", None)
    if rule is not None:
        return float(rule(n)[0])
    return 1.0 if n <= 2048 else 5.0  # before gproc.local.liveness existed


@dataclass
class _Loop:
    """One event loop (a worker process or the master)."""

    tasks: list[tuple[Any, ...]] = field(default_factory=list)
    spawns: deque[int] = field(default_factory=deque)
    wake: Any = None
    static_fds: float = 16.0
    running: int = 0


@dataclass
class LocalRun:
    """A simulated op on the local cluster: its time and where the CPU went (seconds by category)."""

    seconds: float
    cpu: dict[str, float]

    @property
    def busy(self) -> float:
        return sum(v for k, v in self.cpu.items() if k != "other processes")


def simulate_local(
    tree: Tree,
    kind: str,
    c: Costs,
    cores: int,
    quantum: float = 4e-3,
    heartbeat: float | None = None,
    foreign: float = 0.0,
    workers: int | None = None,
) -> LocalRun:
    """Time from the client's request until the master has every reply, all daemons on ``cores`` CPUs.

    ``foreign``: share of the machine's CPU that other processes want meanwhile (one such process per
    core, each running ``foreign`` of every ``quantum`` when it gets a core)."""
    import simpy

    n, k = tree.n, tree.k
    env = simpy.Environment()
    cpu = simpy.Resource(env, capacity=cores)
    nloops = min(workers or local_workers(n, k, cores), len(tree.top))  # as local.up: whole top subtrees
    c = c.at(n, nloops)
    owner = [0] * n
    for i, p in enumerate(tree.parent):
        owner[i] = tree.top.index(i) % nloops if p < 0 else owner[p]
    loops = [_Loop() for _ in range(nloops)]
    master = _Loop()
    for i in range(n):  # parent link, client socket, listening socket (interior), children's accepted ends
        loops[owner[i]].static_fds += 2 + (1 if tree.children[i] else 0) + len(tree.children[i])
    hb = heartbeat if heartbeat is not None else local_heartbeat(n)
    per_link_hb = 3 * (c.small_send + c.small_recv) + c.loop_wake
    pending = [len(ch) for ch in tree.children]
    own = [False] * n
    state = {"master_pending": len(tree.top)}
    acct: dict[str, float] = {}
    done = env.event()
    exec_ = kind == "exec"
    fixed = c.master_exec_fixed if exec_ else c.master_ping_fixed
    per_target_master = (c.select_target if exec_ else c.up_ranks_target) + c.master_down_target
    send, recv = c.op_send(kind), c.op_recv(kind)

    def add(what: str, seconds: float) -> float:
        acct[what] = acct.get(what, 0.0) + seconds
        return seconds

    def wake(lp: _Loop) -> None:
        if lp.wake is not None and not lp.wake.triggered:
            lp.wake.succeed()

    def deliver(lp: _Loop, task: tuple[Any, ...]) -> None:
        lp.tasks.append(task)
        wake(lp)

    def queue_spawn(lp: _Loop, v: int) -> None:
        lp.spawns.append(v)
        wake(lp)

    def reply() -> float:
        return add("frames", c.rep_send) + add("op machinery", c.up_base)

    def run_task(lp: _Loop, task: tuple[Any, ...], effects: list[Callable[[], object]]) -> float:
        what = task[0]
        if what == "bg":
            return add("heartbeats", float(task[1]))
        if what == "mstart":
            for v in tree.top:
                effects.append(partial(deliver, loops[owner[v]], ("op", v)))
            tg = c.tg_send_target * n
            return add("master", 0.5 * fixed + per_target_master * n + len(tree.top) * (c.down_child + send) + tg)
        if what == "op":
            v = task[1]
            kids = tree.children[v]  # the frames carry the targets: this subtree in, each child's out
            cost = add("frames", recv + len(kids) * send + c.tg_recv_target * tree.size[v])
            cost += add("frames", c.tg_send_target * (tree.size[v] - 1))
            cost += add("real-daemon correction", c.overhead_down(kind))
            if not kids and not exec_:
                cost += add("op machinery", c.leaf_noop) + add("frames", c.rep_send)
                effects.append(partial(send_up, v))
                return cost
            cost += add("op machinery", c.down_base + c.down_target * tree.size[v] + len(kids) * c.down_child)
            for u in kids:
                effects.append(partial(deliver, loops[owner[u]], ("op", u)))
            if exec_:
                effects.append(partial(queue_spawn, lp, v))
            else:
                own[v] = True
            return cost
        if what == "spawn":
            v = task[1]
            fds = lp.static_fds + 3 * lp.running
            if fds > c.starter_above:  # platform.Spawner: through the starter (held while it spawns)
                cost = add("program start", 0.5 * c.exec_fixed + c.starter_daemon)
                cost += add("starter", c.starter_self)
                lp.running += 1
                effects.append(partial(env.process, program(v, c.starter_child)))
                return cost
            base = c.exec_pre(0.0)
            cost = add("program start", base) + add("descriptors at fork", c.popen_parent_fd * fds)
            cost += add("descriptors at fork (child)", c.exec_pre(fds) - base - c.popen_parent_fd * fds)
            lp.running += 1
            effects.append(partial(env.process, program(v)))
            return cost
        if what == "exit":
            v = task[1]
            lp.running -= 1
            own[v] = True
            cost = add("program start", c.exec_post) + add("real-daemon correction", c.overhead_exit)
            if pending[v] == 0:
                cost += reply()
                effects.append(partial(send_up, v))
            return cost
        if what == "rep":
            v, u = task[1], task[2]
            if v < 0:
                cost = add("master", c.rep_recv + c.up_child + c.master_up_target * tree.size[u])
                state["master_pending"] -= 1
                if state["master_pending"] == 0:
                    cost += add("master", 0.5 * fixed)
                    effects.append(done.succeed)
                return cost
            cost = add("frames", c.rep_recv) + add("op machinery", c.up_child + c.up_target * tree.size[u])
            pending[v] -= 1
            if pending[v] == 0 and own[v]:
                cost += reply()
                effects.append(partial(send_up, v))
            return cost
        raise ValueError(what)

    def send_up(v: int) -> None:
        p = tree.parent[v]
        deliver(master if p < 0 else loops[owner[p]], ("rep", p, v))

    def program(v: int, child: float | None = None) -> Generator[Any, Any, None]:
        req = cpu.request()
        yield req
        own = c.program if child is None else max(0.0, child + c.program_extra)
        yield env.timeout(add("programs", own))
        cpu.release(req)
        deliver(loops[owner[v]], ("exit", v))

    def loop_proc(lp: _Loop) -> Generator[Any, Any, None]:
        while True:
            if not lp.tasks and not lp.spawns:
                lp.wake = env.event()
                yield lp.wake
                lp.wake = None
            turn = lp.tasks
            lp.tasks = []
            for _ in range(min(SPAWN_PER_TURN, len(lp.spawns))):
                turn.append(("spawn", lp.spawns.popleft()))
            i = 0
            while i < len(turn):
                req = cpu.request()
                yield req
                used = 0.0
                effects: list[Callable[[], object]] = []
                while i < len(turn) and used < quantum:
                    used += max(0.0, run_task(lp, turn[i], effects))
                    i += 1
                yield env.timeout(used)
                cpu.release(req)
                for eff in effects:
                    eff()

    def background(lp: _Loop, rate: float) -> Generator[Any, Any, None]:
        period = 0.05
        while True:
            yield env.timeout(period)
            deliver(lp, ("bg", rate * period))

    def other_process() -> Generator[Any, Any, None]:
        while True:
            req = cpu.request()
            yield req
            yield env.timeout(add("other processes", quantum * foreign))
            cpu.release(req)
            yield env.timeout(quantum * (1 - foreign))

    for lp in [*loops, master]:
        env.process(loop_proc(lp))
    for w, lp in enumerate(loops):
        links = sum(1 for i in range(n) if owner[i] == w)
        env.process(background(lp, links * per_link_hb / hb))
    env.process(background(master, len(tree.top) * per_link_hb / hb / 2))
    if foreign > 0:
        for _ in range(cores):
            env.process(other_process())
    deliver(master, ("mstart",))
    env.run(until=done)
    return LocalRun(env.now, acct)


@dataclass(frozen=True)
class Net:
    latency: float = 50e-6  # one hop, one way
    bandwidth: float = 10e9 / 8  # bytes per second of a node's NIC


def simulate_cluster(tree: Tree, kind: str, c: Costs, net: Net) -> float:
    """Per-node event simulation: each node's event loop is a FIFO single server, its NIC another."""
    import simpy

    n = tree.n
    env = simpy.Environment()
    m = n  # the master's index
    cpu_free = [0.0] * (n + 1)
    nic_free = [0.0] * (n + 1)
    pending = [len(ch) for ch in tree.children] + [len(tree.top)]
    own = [False] * (n + 1)
    own[m] = True
    exec_ = kind == "exec"
    fixed = c.master_exec_fixed if exec_ else c.master_ping_fixed
    result: list[float] = []

    def at(t: float, fn: Callable[[], None]) -> None:
        ev = env.timeout(max(0.0, t - env.now))
        ev.callbacks.append(lambda _e: fn())

    def cpu(v: int, cost: float) -> float:
        """Queue ``cost`` on node v's loop now; returns when it ends."""
        start = max(env.now, cpu_free[v])
        cpu_free[v] = start + cost
        return start + cost

    def forward(v: int, kids: list[int], start: float) -> float:
        t = start
        for u in kids:
            t += c.down_child + c.op_send(kind) + c.tg_send_target * tree.size[u]
            nic_free[v] = max(nic_free[v], t) + (c.op_bytes(kind) + c.tg_bytes_target * tree.size[u]) / net.bandwidth
            at(nic_free[v] + net.latency, partial(on_op, u))
        return t

    def on_op(v: int) -> None:
        kids = tree.children[v]
        if not kids and not exec_:
            end = cpu(v, c.op_recv(kind) + c.tg_recv_target + c.leaf_noop + c.rep_send)
            at(end, lambda: leave(v))
            return
        pre = c.op_recv(kind) + c.tg_recv_target * tree.size[v] + c.down_base + c.down_target * tree.size[v]
        start = max(env.now, cpu_free[v])
        t = forward(v, kids, start + pre)
        cpu_free[v] = t
        if exec_:
            started = cpu(v, c.exec_pre(32.0))
            at(started + c.child_post, lambda: on_exit(v))
        else:
            own[v] = True

    def on_exit(v: int) -> None:
        own[v] = True
        cost = c.exec_post + (c.up_base + c.rep_send if pending[v] == 0 else 0.0)
        end = cpu(v, cost)
        if pending[v] == 0:
            at(end, lambda: leave(v))

    def leave(v: int) -> None:
        p = tree.parent[v]
        nic_free[v] = max(nic_free[v], env.now) + c.rep_bytes / net.bandwidth
        at(nic_free[v] + net.latency, lambda: on_rep(m if p < 0 else p, v))

    def on_rep(v: int, u: int) -> None:
        pending[v] -= 1
        if v == m:
            cost = c.rep_recv + c.up_child + c.master_up_target * tree.size[u]
            end = cpu(v, cost + (0.5 * fixed if pending[v] == 0 else 0.0))
            if pending[v] == 0:
                at(end, lambda: result.append(env.now))
            return
        cost = c.rep_recv + c.up_child + c.up_target * tree.size[u]
        last = pending[v] == 0 and own[v]
        end = cpu(v, cost + (c.up_base + c.rep_send if last else 0.0))
        if last:
            at(end, lambda: leave(v))

    per_target = (c.select_target if exec_ else c.up_ranks_target) + c.master_down_target
    start = cpu(m, 0.5 * fixed + per_target * n)
    cpu_free[m] = forward(m, tree.top, start)
    env.run()
    return result[0]


def recurrence(n: int, k: int, kind: str, c: Costs, net: Net) -> float:
    """Critical path level by level (the busiest node of each level), bottom up; then the master."""
    exec_ = kind == "exec"
    lv = levels(n, k)
    r_child = 0.0  # time from a child receiving the op until its reply is on its NIC (set below)
    sub_child = 0
    for d in range(len(lv) - 1, -1, -1):
        kids = lv[d].kids
        if kids == 0 and not exec_:
            r = c.op_recv(kind) + c.tg_recv_target + c.leaf_noop + c.rep_send
        else:
            r = node_span(kids, lv[d].subtree, r_child, sub_child, kind, c, net, master=False, n=n)
        r_child, sub_child = r, lv[d].subtree
    return node_span(min(k, n), n, r_child, sub_child, kind, c, net, master=True, n=n)


def node_span(
    kids: int, subtree: int, r_child: float, sub_child: int, kind: str, c: Costs, net: Net, *, master: bool, n: int
) -> float:
    """One node: forward to ``kids`` children one after the other, start its own program, then serve
    its own exit and the children's replies in arrival order on its single loop."""
    exec_ = kind == "exec"
    if master:
        per_target = (c.select_target if exec_ else c.up_ranks_target) + c.master_down_target
        fixed = c.master_exec_fixed if exec_ else c.master_ping_fixed
        t = 0.5 * fixed + per_target * n
        up_target = c.master_up_target
    else:
        t = c.op_recv(kind) + c.tg_recv_target * subtree + c.down_base + c.down_target * subtree
        up_target = c.up_target
    nic = 0.0
    jobs: list[tuple[float, float]] = []
    for _ in range(kids):
        t += c.down_child + c.op_send(kind) + c.tg_send_target * sub_child
        nic = max(nic, t) + (c.op_bytes(kind) + c.tg_bytes_target * sub_child) / net.bandwidth
        back = nic + net.latency + r_child + c.rep_bytes / net.bandwidth + net.latency
        jobs.append((back, c.rep_recv + c.up_child + up_target * sub_child))
    if exec_ and not master:
        t += c.exec_pre(32.0)
        jobs.append((t + c.child_post, c.exec_post))
    for arrive, cost in sorted(jobs):
        t = max(t, arrive) + cost
    return t + (0.5 * (c.master_exec_fixed if exec_ else c.master_ping_fixed) if master else c.up_base + c.rep_send)


def broadcast(n: int, k: int, size: float, c: Costs, net: Net) -> tuple[float, float]:
    """(network only, with TLS CPU) seconds to put a ``size``-byte file on every node.

    Network only: file*k/B + depth*(chunk*k/B + L). With CPU: a node's loop decrypts, hashes and stores
    each chunk once and encrypts it once per child, so a chunk takes max(NIC, CPU) per hop; at most
    WINDOW chunks are unacknowledged, so the period is also at least (ack round trip)/WINDOW."""
    depth = len(levels(n, k))
    nic = CHUNK * k / net.bandwidth
    net_only = size * k / net.bandwidth + depth * (nic + net.latency)
    chunks = math.ceil(size / CHUNK)
    cpu_hop = c.chunk_recv + k * c.chunk_send
    period = max(nic, cpu_hop)
    hop = max(nic, cpu_hop) + net.latency  # the last child of a node gets a chunk this long after its parent
    ack_rtt = depth * hop + depth * (net.latency + c.rep_recv + c.rep_send)
    period = max(period, ack_rtt / WINDOW)
    return net_only, chunks * period + depth * hop
