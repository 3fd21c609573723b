"""A model of gproc's tree past one machine: measured costs, a discrete-event simulation, projections.

What it does (``python bench/model.py``, about 100 minutes with every point measured; ``--no-measure``: seconds):

1. **Measures** what one node spends on each step, briefly and with gproc's real code ("the parts"):
   frames (``overlay.TreeLink`` over TLS 1.3 on loopback TCP with the cluster credential, one frame at a
   time, so each costs a wake-up as in the tree: send = ``TreeLink.send``, i.e. ``wire.pack`` + asyncio's
   TLS layer + ``send()``; receive = the rest of the round), the op machinery (a real ``overlay.Node``
   whose children are stand-in links: ``start_op`` and ``_on_rep``, fitted as base + per child + per
   target rank, since rank sets are expanded into Python sets at every node), one ``exec`` of
   /bin/true through the real ``ExecService`` (its own CPU and its child's), a spawn (``Popen`` as
   ``platform.Command`` does it, and ``posix_spawn`` as the floor) with few and with 8,000 open
   descriptors (the vfork child closes them before exec: its CPU grows with the descriptors of the
   process that forks, i.e. with the nodes a worker process hosts), the master's node selection
   (``nodespec.select('**')``) per node, and a 128 KiB ``put`` chunk (pack + encrypt; decrypt + unpack +
   SHA-256 + write), and a start through ``platform.Starter``. Then real local clusters
   (``gproc.local.up``: ``PROBE`` and ``PROBES_MORE``, 256 to 10,000 nodes in 4 and in 16 worker
   processes, each started three times, the 10,000-node ones five): the CPU their workers (with their
   starters), their programs, the master and the client spend per no-op and per launch (medians of
   the ops), less what the parts
   predict for that cluster, gives per-node corrections for the local environment (what daemons
   sharing this machine spend beyond or short of the parts; ``Costs.at`` reads them off by size and
   process count) and the master's fixed cost per request. Any cost can be overridden
   (``--cost NAME=MICROSECONDS``), or all taken from the stored defaults (``--no-measure``).
   In the same run it measures the validation points (N = 1,024 and 10,000 at fanouts 4-64, as
   ``bench/fanout.py`` does), each started three times too (the 1,024-node ones six: they scatter
   more and cost little; the 10,000-node ones five: their starts scatter by up to ±20 %), in turn
   with the calibration clusters and the parts (three rounds of parts, cluster, point, cluster,
   point, ..., then two of the 10,000-node ones alone; medians over the rounds): the calibration and
   the points then see this VM's speed of the same minutes (it drifts by ~20 % over an hour). About
   an hour and three quarters in all.
2. **Simulates** a launch (``exec`` of /bin/true) and a no-op (``ping``) on the tree that
   ``gproc.local.layout`` builds (levels filled in turn, the master has ``fanout`` children). The op goes
   down (a node forwards one frame per child, then starts its own program), replies are merged
   (identical results: one reply frame per link, constant size) and go up as soon as a node's own part
   and all its children ended; launch time = until the master has every reply. Two environments:

   * **local** (how the calibration points were measured): every node daemon of ``gproc.local.up``
     on this machine's ``--cores`` CPUs: the master and the worker processes (each an event loop
     hosting whole subtrees, ``gproc.local.workers`` of them) and every spawned
     program compete for the cores. A ``simpy`` simulation: a worker runs, per loop turn, the tasks
     that were ready at its start, at most 8 program starts (``SpawnGate``), in slices of
     ``--quantum`` on one core; the ``vfork`` child closes the worker's descriptors before ``exec``
     while the worker waits; programs run as their own processes; heartbeats (3 frames per link per
     period) are a steady background load. Loopback latency is ignored.
   * **cluster**: one node daemon per machine, its event loop on one core and its programs on
     another; links have latency ``--latency`` per hop and the node's NIC ``--bandwidth`` (frames to
     its children leave one after the other). Simulated per node with ``simpy`` up to
     ``--des-max`` nodes, and for any N by a level-by-level critical-path recurrence (the tree is
     regular: all nodes of one level behave alike; it takes the largest subtree of each level), and
     the two are checked against each other. A node costs what the parts say there (no local
     correction: one node per process).
3. **Validates** the local model against the points measured in this run (or, with ``--points FILE``
   or ``--no-measure``, those of ``bench/fanout.json``, written by ``bench/fanout.py``; provisional
   numbers when it is missing): model vs measured and the error, for launch, no-op and bytes at the
   master, and whether every point is within 25 %; and, as a second line, against ``bench/fanout.json``'s
   points of another hour. No parameter is fitted to those points; the other load a point records (CPU
   used by other processes meanwhile) is simulated as such. The points go to ``bench/model_points.json``.
4. **Projects** for 10^5, 10^6 and 10^7 nodes on a 10 GbE cluster: launch, no-op round trip, bytes
   received by the master for identical output (one reply per master link), and the broadcast of a
   10 MiB file (128 KiB chunks, store-and-forward per chunk, a node sends each chunk to its children
   one after the other over its NIC and encrypts it once per child).
5. Writes ``bench/model.png`` and its section of ``bench/RESULTS.md`` (``--no-write``: print only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import inspect
import json
import math
import os
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import fanout
from launch import int_list, machine_busy_seconds
from results import machine, write_section

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FANOUT_JSON = HERE / "fanout.json"
POINTS_JSON = HERE / "model_points.json"  # the validation points the last full run measured
COSTS_JSON = HERE / "model_costs.json"  # and the costs it measured
RESULTS = HERE / "RESULTS.md"
PNG = HERE / "model.png"

TOLERANCE = 0.25  # the model must reproduce the measured points within this
SMALL_POINT = 2048  # validation points up to this size are started twice per round
# points and calibration clusters this large get more rounds: their starts scatter by up to ±20 %
# around the median of three (run 8: 651 / 910 / 932 ms for one no-op), close to the tolerance
BIG_POINT = 10_000
SPAWN_PER_TURN = 8  # gproc.services.execute.SpawnGate's default
CHUNK = 128 * 1024  # gproc's put chunk (gproc.bundle.CHUNK)
WIDE, WIDE_FIRST = 10_000, 100_000  # the op frame measured for its target list: spread ranks from here
PROBE = (256, 16, 4)  # the real local cluster measured for the daemons' overhead: nodes, fanout, worker processes
# larger clusters, at 4 and at 16 processes (the per-node overhead grows with the cluster's size and
# with the processes taking turns on the cores; over ~300 nodes per process they start programs
# through a starter). The 10,000-node ones hold as many nodes per process as the 10,000-node points
# (2,500 in 4, 625 in 16), at a fanout no point has with that process count (the points at 10,000 are
# fanout 4 in 4 processes, 8 in 8, 16-64 in 16): without them a 10,000-node point reads its correction
# off a line extrapolated past 7,500 nodes, which missed the point of 2,500 nodes per process by -26 %
# and -30 % in two runs (``--probes-upto 7500`` shows the model without them). A cluster's processes
# each take whole subtrees of the master's children, so a probe's fanout must be at least its process
# count (``gproc.local.up`` runs min(procs, fanout) of them): runs 6 and 7 probed "10,000 nodes in 16
# processes at fanout 4", which ran in 4 and put a 4-process deep tree's correction on the 16-process
# line (the 10,000-node no-op at fanout 32 in 16 processes came out +21 % and +37 %). Fanout 48 gives
# each of the 16 processes three whole subtrees.
PROBES_MORE = (
    (1280, 16, 4),
    (2560, 16, 4),
    (5000, 16, 4),
    (7500, 16, 4),
    (10000, 16, 4),
    (1280, 16, 16),
    (2560, 16, 16),
    (5000, 16, 16),
    (7500, 16, 16),
    (10000, 48, 16),
)
WINDOW = 8  # chunks in flight (gproc.services.ship.WINDOW)
TLS_RECORD_OVERHEAD = fanout.TLS_RECORD_OVERHEAD
TLS_RECORD_MAX = 16384
MiB = 1024 * 1024


# Used while bench/fanout.json does not exist: an earlier, noisier run (10,000-node values very rough).
# (n, fanout, launch_s, noop_s)
PROVISIONAL: tuple[tuple[int, int, float, float], ...] = (
    (1024, 16, 0.92, 0.10),
    (1024, 32, 1.3, 0.15),
    (10000, 32, 30.0, 1.5),
)


# ---- costs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Costs:
    """What one node (or the master) spends on each step; seconds unless the name says otherwise.

    The defaults were measured by this script on this machine (2 vCPUs AMD EPYC, 2026-11-22): the parts
    at 08:27 UTC (other load 0 %), the real-cluster corrections at 08:28 (under load; the real daemons'
    CPU per node hardly moved with load, unlike the parts'); ``--no-measure`` uses them."""

    # frames: TreeLink.send (pack + TLS + send()), and the receiving side's share of a round
    op_exec_send: float = 32.9e-6
    op_exec_recv: float = 54.6e-6
    op_noop_send: float = 24.3e-6
    op_noop_recv: float = 39.6e-6
    rep_send: float = 24.2e-6
    rep_recv: float = 39.1e-6
    small_send: float = 22.5e-6  # ping / pong
    small_recv: float = 36.6e-6
    op_exec_bytes: float = 1862.0  # frame bytes (length prefix included)
    # an op frame's target list grows with the subtree it goes to: a subtree's ranks are spread (one
    # interval per rank), 10 B per target past rank 65,535 (msgpack uint32 twice)
    tg_send_target: float = 0.0064e-6  # copy (packed once per subtree) + encrypt + send, per target
    tg_recv_target: float = 0.044e-6  # receive + decrypt + unpack, per target (both measured 2026-12-01)
    tg_bytes_target: float = 10.0
    op_noop_bytes: float = 36.0
    rep_bytes: float = 34.0  # a status-only reply ("s", 0) for a whole subtree
    echo_rep_wire_bytes: float = 93.0  # one identical-output reply (echo) on a link, TLS included
    # op machinery at a node (overlay.Node.start_op, _on_rep, flush), fitted as base + child + target
    leaf_noop: float = 8.63e-6  # start_op of a noop at a leaf (handler and flush included)
    down_base: float = 8.63e-6
    down_child: float = 0.655e-6
    down_target: float = 0.447e-6
    up_base: float = 8.14e-6
    up_child: float = 4.86e-6
    up_target: float = 0.146e-6
    master_down_target: float = 0.391e-6  # the same at the master (rank sets in plain ranks)
    master_up_target: float = 0.312e-6
    # the same for the first job after the tree changed (each link's share frozen, encoded, sorted);
    # reported, not in the model (a repeated job's figures above are)
    master_down_first_target: float = 0.25e-6
    master_up_first_target: float = 0.25e-6
    select_target: float = 0.05e-6  # master: a repeated job's selection (cached) + job bookkeeping, per node (exec)
    select_first_target: float = 1.22e-6  # master: nodespec.select('**') of a node set's first job, per node
    up_ranks_target: float = 0.0593e-6  # master: the set of ranks that are up, per node (ping)
    fold_target: float = 15.7e-6  # master: NodeSet folding of a new node set (first job only; not in the model)
    master_exec_fixed: float = 6.88e-3  # master + client CPU per exec request beyond the parts (job store, client)
    master_ping_fixed: float = 1.42e-3  # master + client CPU per ping request beyond the parts
    # exec of /bin/true through ExecService at a leaf, beyond the frames
    exec_self: float = 361e-6  # the node's CPU (machinery, Popen, pidfd, pumps, status)
    exec_child: float = 474e-6  # the program's CPU (rusage of children)
    exec_wall: float = 597e-6
    exec_fds: float = 9.0  # descriptors open in the measuring process
    popen_parent: float = 197e-6  # a program start (posix_spawn, as -localbin) + wait, parent CPU, few descriptors
    popen_parent_fd: float = 0.00812e-6  # ... per descriptor open in the parent
    popen_child: float = 460e-6  # the child's CPU, few descriptors
    popen_child_fd: float = 0.102e-6  # ... per descriptor open in the parent (closed before exec)
    popen_wall: float = 663e-6
    posix_spawn_cpu: float = 584e-6  # floor: os.posix_spawn('/bin/true') + waitpid, parent + child CPU
    posix_spawn_wall: float = 421e-6
    # a start through platform.Starter (what a process holding more than starter_above descriptors does)
    starter_daemon: float = 135e-6  # the daemon's CPU per start + exit report (pipes, request, reply, Process)
    starter_self: float = 225e-6  # the starter process's CPU per start (receive, posix_spawn, reap, report)
    starter_child: float = 525e-6  # the program's CPU (the starter holds five descriptors)
    starter_above: float = 1000.0  # gproc.platform.STARTER_ABOVE
    # a put chunk of CHUNK bytes (these defaults: the 512 KiB measurement of 2026-11-22, scaled to 128 KiB)
    chunk_send: float = 79.5e-6  # pack + encrypt, per child link
    chunk_recv: float = 180.5e-6  # decrypt + unpack + SHA-256 + write to the store
    loop_wake: float = 5.96e-6  # one future round trip on the event loop (heartbeat wake-up per node)
    # local environment only: what real daemon processes hosting many nodes spend per node beyond (or
    # short of) the parts above (a local cluster of PROBE nodes in PROBE worker processes: CPU per op,
    # idle heartbeats subtracted, less what the parts predict for it)
    daemon_extra_noop: float = -11.7e-6
    daemon_extra_exec: float = 158e-6
    program_extra: float = 117e-6  # the programs' CPU beyond child_post
    # the same three measured on the clusters of PROBES_MORE: (nodes, processes, noop, exec, program) each
    more_probes: tuple[tuple[float, float, float, float, float], ...] = ()

    def at(self, n: float, procs: float) -> Costs:
        """These costs for a local cluster of ``n`` nodes in ``procs`` worker processes, the parts
        unchanged and each real-daemon correction read off the probes: for each probed process count,
        on the least-squares line through its probes by cluster size (single runs scatter by 10-30 %
        here: a line through all of them, not the segment between the nearest two), then linear in the
        process count between the two probed counts around ``procs``. Both matter: every process's
        heap and descriptors compete for the same caches (at 4 processes the CPU per node of a launch
        grows ~1.5x from 2,560 to 10,000 nodes), and more processes taking turns on the cores refill
        them more often (10,000 nodes: 16 processes ~10 % more CPU than 4; at 2,560 nodes ~3 %)."""
        if not self.more_probes:
            return self
        lines: dict[float, list[tuple[float, ...]]] = {}
        for nn, pp, *v in [(float(PROBE[0]), float(PROBE[2]), self.daemon_extra_noop, self.daemon_extra_exec,
                            self.program_extra), *self.more_probes]:  # fmt: skip
            lines.setdefault(pp, []).append((nn, *v))

        def along(pts: list[tuple[float, ...]]) -> list[float]:
            """Each correction on the least-squares line through these probes (by size)."""
            if len(pts) == 1:
                return list(pts[0][1:])
            xs = [q[0] for q in pts]
            mx = statistics.fmean(xs)
            sxx = sum((x - mx) ** 2 for x in xs)
            out = []
            for j in range(1, len(pts[0])):
                ys = [q[j] for q in pts]
                my = statistics.fmean(ys)
                slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
                out.append(my + slope * (n - mx))
            return out

        counts = sorted(lines)
        if len(counts) == 1:
            noop, exec_, prog = along(lines[counts[0]])
        else:
            j = 0
            while j < len(counts) - 2 and procs > counts[j + 1]:
                j += 1
            p0, p1 = counts[j], counts[j + 1]
            lo, hi = along(lines[p0]), along(lines[p1])
            t = (procs - p0) / (p1 - p0)
            noop, exec_, prog = (u + t * (v - u) for u, v in zip(lo, hi, strict=True))
        return replace(
            self,
            daemon_extra_noop=noop,
            daemon_extra_exec=exec_,
            program_extra=max(-self.child_post, prog),
            more_probes=(),
        )

    @property
    def exec_fixed(self) -> float:
        """The node's exec CPU that is neither Popen nor descriptor-dependent."""
        return max(0.0, self.exec_self - self.popen_parent - self.popen_parent_fd * self.exec_fds)

    def exec_pre(self, fds: float) -> float:
        """Worker CPU (and blocked time) to start one program with ``fds`` descriptors open."""
        return 0.5 * self.exec_fixed + self.popen_parent + (self.popen_parent_fd + self.popen_child_fd) * fds

    @property
    def exec_post(self) -> float:
        return 0.5 * self.exec_fixed

    @property
    def child_post(self) -> float:
        """The program's own CPU after exec (runs as its own process)."""
        return max(50e-6, self.exec_child - self.popen_child_fd * self.exec_fds)

    @property
    def program(self) -> float:
        """A program's CPU after exec, as in a real daemon."""
        return max(0.0, self.child_post + self.program_extra)

    def overhead_down(self, kind: str) -> float:
        """The real daemon's per-node overhead charged when the op arrives (half of an exec's)."""
        return 0.5 * self.daemon_extra_exec if kind == "exec" else self.daemon_extra_noop

    @property
    def overhead_exit(self) -> float:
        return 0.5 * self.daemon_extra_exec

    def op_send(self, kind: str) -> float:
        return self.op_exec_send if kind == "exec" else self.op_noop_send

    def op_recv(self, kind: str) -> float:
        return self.op_exec_recv if kind == "exec" else self.op_noop_recv

    def op_bytes(self, kind: str) -> float:
        return self.op_exec_bytes if kind == "exec" else self.op_noop_bytes


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


def probe_predicted(c: Costs, n: int, k: int, procs: int) -> dict[str, float]:
    """What the parts predict for the probe's cluster: worker, program and master CPU per op."""
    tree = Tree.build(n, k)
    out = {}
    for kind in ("noop", "exec"):
        run = simulate_local(tree, kind, c, 2, heartbeat=1e9, workers=procs)
        programs = run.cpu.get("programs", 0.0) + run.cpu.get("descriptors at fork (child)", 0.0)
        others = run.cpu.get("master", 0.0) + run.cpu.get("heartbeats", 0.0)
        out[f"{kind}_worker"] = run.busy - programs - others  # the vfork child's CPU counts as the program's
        out[f"{kind}_programs"] = programs
        fixed = c.master_exec_fixed if kind == "exec" else c.master_ping_fixed
        out[f"{kind}_master"] = run.cpu.get("master", 0.0) - fixed  # the master's parts without its fixed cost
    return out


def measure_daemon(n: int, k: int, procs: int, pings: int, launches: int) -> dict[str, float]:
    """Real daemons: a local cluster of ``n`` nodes in ``procs`` worker processes (``gproc.local.up``); CPU
    of the workers (and of their programs) per no-op and per launch of /bin/true, idle heartbeats
    subtracted; the master's and this client's CPU per op; wall times."""
    import psutil

    from gproc import local
    from gproc.client import Cluster, Status

    def cpu_of(ps: list[psutil.Process]) -> tuple[float, float]:
        """CPU of these processes and of their reaped children; a worker's starter (platform.Starter,
        never reaped while the cluster runs) counts with its worker, its programs with the programs."""
        own = kids = 0.0
        for p in ps:
            t = p.cpu_times()
            own += t.user + t.system
            kids += t.children_user + t.children_system
            for st in p.children():
                if any("gproc_spawnd" in a for a in st.cmdline()):
                    t = st.cpu_times()
                    own += t.user + t.system
                    kids += t.children_user + t.children_system
        return own, kids

    async def ops(sock: str, workers: list[psutil.Process], master: list[psutil.Process]) -> dict[str, float]:
        c = Cluster(sock, timeout=120)
        await c.ping()
        job = await c.exec(["/bin/true"], "**", localbin=True)
        [e async for e in job]
        w0, m0, t0 = cpu_of(workers), cpu_of(master), time.perf_counter()
        await asyncio.sleep(1.0)
        w1, m1, t1 = cpu_of(workers), cpu_of(master), time.perf_counter()
        idle, m_idle = (w1[0] - w0[0]) / (t1 - t0), (m1[0] - m0[0]) / (t1 - t0)

        async def one(kind: str) -> tuple[float, ...]:
            """(worker, programs, master + client CPU, wall) of one op, idle heartbeats subtracted."""
            w0, m0 = cpu_of(workers), cpu_of(master)[0]
            c0, t0 = time.process_time(), time.perf_counter()  # this client's own CPU: the op alone
            if kind == "noop":
                r = await c.ping()
                assert r["counts"].get("ok") == n, r
            else:
                job = await c.exec(["/bin/true"], "**", localbin=True)
                ok = sum(e.count for e in [e async for e in job] if isinstance(e, Status) and e.status == 0)
                assert ok == n, ok
            c1, t1 = time.process_time(), time.perf_counter()
            w1, m1 = cpu_of(workers), cpu_of(master)[0]
            wall = t1 - t0
            return w1[0] - w0[0] - idle * wall, w1[1] - w0[1], m1 - m0 - m_idle * wall + c1 - c0, wall

        # each figure the median over its ops: one op disturbed by the machine (a cluster torn down
        # before, another process) moves a sum or a mean by up to 2x here, a median hardly
        noops = [await one("noop") for _ in range(pings)]
        execs = [await one("exec") for _ in range(launches)]

        def med(rows: list[tuple[float, ...]], i: int) -> float:
            return statistics.median(r[i] for r in rows)

        return {
            "noop_worker": med(noops, 0),
            "exec_worker": med(execs, 0),
            "exec_programs": med(execs, 1),
            "noop_master": med(noops, 2),
            "exec_master": med(execs, 2),
            "idle_worker": idle,
            "noop_wall": med(noops, 3),
            "exec_wall": med(execs, 3),
        }

    wait_quiet(20.0)  # the kernel may still be tearing down the cluster measured before
    with tempfile.TemporaryDirectory(prefix="gproc-model-") as tmp:
        sock = os.path.join(tmp, "sock")
        rec = local.up(n, fanout=k, socket=sock, procs=procs)
        try:
            workers = [psutil.Process(pid) for pid, _ in rec.procs[1:]]
            got = asyncio.run(ops(sock, workers, [psutil.Process(rec.procs[0][0])]))
            return {**got, "workers": float(len(workers))}  # what local.up ran, not what was asked
        finally:
            local.down(sock, quiet=True)


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


def machine_busy() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process and its children)."""
    return machine_busy_seconds(), cpu_now()


def other_load(since: tuple[float, float], wall: float) -> float:
    """Share of the machine's CPU that other processes used since ``since`` (``wall`` seconds ago)."""
    busy, own = machine_busy()
    return max(0.0, (busy - since[0]) - (own - since[1])) / (wall * (os.cpu_count() or 1))


def wait_quiet(limit: float, share: float = 0.1) -> float:
    """Wait up to ``limit`` seconds for a second in which other processes use less than ``share`` of
    the machine; returns the last second's share."""
    deadline = time.monotonic() + limit
    while True:
        b0 = machine_busy()
        time.sleep(1.0)
        load = other_load(b0, 1.0)
        if load < share or time.monotonic() >= deadline:
            return load


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


def measure_point(n: int, k: int, quick: bool) -> fanout.Point | None:
    """One start of a validation point, measured as ``bench/fanout.py`` measures it (its ``measure``:
    launches of /bin/true with ``-localbin``, pings, in ``gproc.local.workers``' processes); None when
    that start failed (said on stderr)."""
    wait_quiet(20.0)
    try:
        return fanout.measure(n, k, 2 if quick else 3, 5 if quick else 10, 0, False, None)
    except Exception as e:  # one lost start must not lose the whole run
        print(f"  point N={n} fanout={k}: this start failed ({type(e).__name__}: {e})", file=sys.stderr, flush=True)
        return None


def point_of(runs: list[fanout.Point]) -> Point:
    """One validation point from its starts: ``fanout.combine``'s medians, each start's figures kept."""
    q = fanout.combine(runs)
    la, na = q.launch_all, q.noop_all
    return Point(
        q.n, q.fanout, q.launch_s, q.noop_s, None, q.master_bytes, q.other, q.procs,
        launch_all=tuple(la) if la and na else None, noop_all=tuple(na) if la and na else None,
        reply_bytes=q.reply_bytes,
    )  # fmt: skip


def interleave(a: Sequence[Any], b: Sequence[Any]) -> list[Any]:
    """a0 b0 a1 b1 ... then the rest of the longer one."""
    out: list[Any] = []
    for i in range(max(len(a), len(b))):
        out.extend(x[i] for x in (a, b) if i < len(x))
    return out


def plan_rounds(
    clusters: Sequence[tuple[int, int, int]], points: Sequence[tuple[int, int]], starts: int, big_starts: int
) -> list[list[Any]]:
    """What each round starts, in order: calibration clusters and points in turn, all of them in the
    first ``starts`` rounds, only those of ``BIG_POINT`` nodes or more in the rounds after, up to
    ``big_starts`` (one round, empty, when there is nothing to start: the parts are still measured)."""
    if not (clusters or points):
        return [[]]
    out = []
    for r in range(max(starts, big_starts)):
        big = r >= starts
        out.append(
            interleave(
                [c for c in clusters if not big or c[0] >= BIG_POINT],
                [q for q in points if not big or q[0] >= BIG_POINT],
            )
        )
    return out


def measure(
    quick: bool,
    probe: bool = True,
    starts: int = 3,
    points: Sequence[tuple[int, int]] = (),
    upto: float = math.inf,
    big_starts: int = 0,
) -> tuple[Costs, dict[str, float], list[Point]]:
    """Measure every cost and, when ``points`` are given, the validation points (N, fanout) themselves.

    ``starts`` rounds; each round measures the parts, then starts every calibration cluster once and
    every validation point once, one after the other in turn (calibration, point, calibration, ...), so
    that both see the machine as it is during the same minutes: this VM's speed drifts by ~20 % over an
    hour, which moved the model's error against points measured in another hour by as much. Each
    figure is the median over its rounds; calibration clusters larger than ``upto`` nodes are skipped.
    Points and calibration clusters of ``BIG_POINT`` nodes or more are started in ``big_starts``
    rounds when that is more than ``starts`` (the rounds past ``starts`` hold only them).
    Returns the costs, extra facts for the report and the measured points."""
    from gproc import credential

    more_probes = [q for q in PROBES_MORE if q[0] <= upto]
    clusters = [PROBE, *more_probes] if probe else []
    for n, k, procs in clusters:  # before an hour of measuring: local.up runs min(procs, fanout) processes
        if min(n, k) < procs:
            raise ValueError(f"calibration cluster {n} nodes at fanout {k} cannot have {procs} processes")
    parts_runs: list[dict[str, float]] = []
    real_runs: dict[tuple[int, int, int], list[dict[str, float]]] = {c: [] for c in clusters}
    point_runs: dict[tuple[int, int], list[fanout.Point]] = {q: [] for q in points}
    # small points twice a round: their starts scatter by up to ±20 % (a fifth of the tolerance is
    # most of it) and one costs ~10 s, against ~90 s for a 10,000-node start
    twice = [q for q in points if q[0] <= SMALL_POINT]
    b0, w0 = machine_busy(), time.perf_counter()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gproc-model-") as tmp:
        key = credential.keygen(os.path.join(tmp, "cluster.key"))
        rounds = plan_rounds(clusters, [*points, *twice], starts, big_starts)
        for r, items in enumerate(rounds):
            wait_quiet(20.0)
            parts_runs.append(measure_parts(key, quick))
            for item in items:
                print(f"  round {r + 1}/{len(rounds)}: {'calibration' if len(item) == 3 else 'point'} {item} "
                      f"[{time.perf_counter() - t0:.0f} s]", flush=True)  # fmt: skip
                if len(item) == 3:
                    n, k, procs = item
                    real_runs[item].append(measure_daemon(n, k, procs, 10 if quick else 30, 3 if quick else 5))
                else:
                    n, k = item
                    got = measure_point(n, k, quick)
                    if got is not None:
                        point_runs[item].append(got)
    vals = {key: statistics.median(run[key] for run in parts_runs) for key in parts_runs[0]}
    vals["echo_rep_wire_bytes"] = echo_reply_bytes()
    names = {f.name for f in fields(Costs)}
    zero: dict[str, Any] = {"daemon_extra_noop": 0.0, "daemon_extra_exec": 0.0, "program_extra": 0.0}  # parts alone
    costs = Costs(**{**zero, **{k: v for k, v in vals.items() if k in names}})
    extra = {k: v for k, v in vals.items() if k not in names}
    real_of = {
        c: {key: statistics.median(run[key] for run in runs) for key in runs[0]} for c, runs in real_runs.items()
    }
    if probe:
        n, k, procs = PROBE
        real = real_of[PROBE]
        parts = probe_predicted(costs, n, k, procs)
        costs = replace(
            costs,
            daemon_extra_noop=(real["noop_worker"] - parts["noop_worker"]) / n,
            daemon_extra_exec=(real["exec_worker"] - parts["exec_worker"]) / n,
            program_extra=(real["exec_programs"] - parts["exec_programs"]) / n,
            master_exec_fixed=max(0.0, real["exec_master"] - parts["exec_master"]),
            master_ping_fixed=max(0.0, real["noop_master"] - parts["noop_master"]),
        )
        extra.update({f"probe_{key}": v for key, v in real.items()})
        more = []
        for n2, k2, procs2 in more_probes:
            real2 = real_of[(n2, k2, procs2)]
            ran = int(real2["workers"])
            parts2 = probe_predicted(replace(costs, **zero), n2, k2, ran)
            more.append(
                (
                    float(n2),
                    float(ran),
                    (real2["noop_worker"] - parts2["noop_worker"]) / n2,
                    (real2["exec_worker"] - parts2["exec_worker"]) / n2,
                    (real2["exec_programs"] - parts2["exec_programs"]) / n2,
                )
            )
            extra.update({f"probe_{n2}_{procs2}p_{key}": v for key, v in real2.items()})
        costs = replace(costs, more_probes=tuple(more))
        tree = Tree.build(n, k)
        for kind in ("noop", "exec"):
            run = simulate_local(tree, kind, costs, os.cpu_count() or 1, workers=procs)
            extra[f"model_{kind}_wall"] = run.seconds
        extra.update({f"parts_{key}": v for key, v in parts.items()})
    took = time.perf_counter() - t0
    extra["measure_s"] = took
    extra["other_load"] = other_load(b0, time.perf_counter() - w0)
    measured = [point_of(runs) for runs in point_runs.values() if runs]
    return costs, extra, measured


def override(costs: Costs, items: Iterable[str]) -> Costs:
    """``NAME=MICROSECONDS`` (or bytes / descriptors for those fields) replaces a cost."""
    names = {f.name for f in fields(Costs)}
    changes: dict[str, Any] = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in names or not value:
            sys.exit(f"model.py: --cost {item!r}: expected NAME=VALUE with NAME one of {', '.join(sorted(names))}")
        v = float(value)
        changes[name] = v if name.endswith(("_bytes", "_fds")) else v * 1e-6
    return replace(costs, **changes)


# ---- the tree ------------------------------------------------------------------------------------


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


# ---- local environment: every daemon on this machine's cores (simpy) -----------------------------------


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


# ---- cluster environment: one node per machine ------------------------------------------------------


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


# ---- measured points -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    n: int
    fanout: int
    launch_s: float
    noop_s: float
    launch_ship_s: float | None = None
    master_bytes: int | None = None
    other: float | None = None  # share of the machine's CPU that other processes used meanwhile
    procs: int | None = None  # node processes of the measured cluster (None: gproc.local.workers' choice)
    launch_all: tuple[float, ...] | None = None  # each start's figure, when there were several
    noop_all: tuple[float, ...] | None = None
    reply_bytes: int | None = None  # the identical-output job's own reply frames at the master, TLS included


BYTES_ROWS = ("bytes at master", "reply bytes at master")  # rows in bytes (TCP count, the job's replies)


def tally(timed: Sequence[Row], bad: Sequence[Row]) -> str:
    """'X of Y within 25 %' and the points that are not, for a second validation line."""
    misses = ", ".join(f"N={r.n:,}/fanout {r.fanout} {r.what} {r.err:+.0%}" for r in bad)
    return f"{len(timed) - len(bad)} of {len(timed)} within {TOLERANCE:.0%}" + (f" ({misses})" if bad else "")


def probe_fanout(n: float, procs: float) -> str:
    """The fanout of the calibration cluster of ``n`` nodes in ``procs`` processes (``?`` if unknown)."""
    return next((str(k) for nn, k, pp in PROBES_MORE if nn == n and pp == procs), "?")


def probes_upto(costs: Costs, n: float) -> Costs:
    """These costs with the calibration clusters larger than ``n`` nodes left out."""
    return replace(costs, more_probes=tuple(q for q in costs.more_probes if q[0] <= n))


def load_costs(path: Path) -> tuple[Costs, dict[str, float], str]:
    """Costs (and the extra facts) a full run saved, and a line saying where they come from."""
    d = json.loads(path.read_text())
    raw = d["costs"]
    raw["more_probes"] = tuple(tuple(float(v) for v in row) for row in raw.get("more_probes", ()))
    costs = Costs(**{f.name: raw[f.name] for f in fields(Costs) if f.name in raw})
    missing = [f.name for f in fields(Costs) if f.name not in raw]  # costs that run did not measure yet
    where = path.resolve()
    name = where.relative_to(REPO) if where.is_relative_to(REPO) else where
    source = f"measured {d.get('date', '?')} at {d.get('commit', '?')}, read from {name}"
    if missing:
        source += f" (not in that file, so the stored defaults: {', '.join(missing)})"
    return costs, dict(d.get("extra", {})), source


def load_points(path: Path) -> tuple[list[Point], str]:
    """Points of bench/fanout.json (or the provisional ones) and where they come from."""
    if path.exists():
        d = json.loads(path.read_text())
        pts = [
            Point(
                int(p["n"]),
                int(p["fanout"]),
                float(p["launch_s"]),
                float(p["noop_s"]),
                p.get("launch_ship_s"),
                p.get("master_bytes"),
                p.get("other"),
                p.get("procs") or None,
                tuple(p["launch_all"]) if p.get("launch_all") else None,
                tuple(p["noop_all"]) if p.get("noop_all") else None,
                p.get("reply_bytes"),
            )
            for p in d.get("points", [])
            if p.get("launch_s") is not None and p.get("noop_s") is not None
        ]
        where = path.resolve()
        name = where.relative_to(REPO) if where.is_relative_to(REPO) else where
        return pts, f"{name} ({d.get('machine', '?')}, {d.get('date', '?')})"
    pts = [Point(n, k, launch, noop) for n, k, launch, noop in PROVISIONAL]
    return pts, "provisional numbers (bench/fanout.json not written yet; 10,000-node values very rough)"


# ---- report ----------------------------------------------------------------------------------------


def fmt_t(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def fmt_b(b: float) -> str:
    if b < 10_000:
        return f"{b:,.0f} B"
    if b < 10 * MiB:
        return f"{b / 1024:,.1f} KiB"
    if b < 10 * 1024 * MiB:
        return f"{b / MiB:,.1f} MiB"
    return f"{b / 1024 / MiB:,.1f} GiB"


def project_fanout_default() -> int:
    from gproc import local

    return int(inspect.signature(local.up).parameters["fanout"].default)


@dataclass
class Row:
    """One validation line: a measured value, the model on an idle machine, and (when the point says how
    much CPU other processes used meanwhile) the model with that load."""

    n: int
    fanout: int
    what: str
    measured: float
    model: float
    loaded: float | None = None
    run: LocalRun | None = None
    procs: int | None = None  # node processes of the measured cluster

    @property
    def best(self) -> float:
        return self.loaded if self.loaded is not None else self.model

    @property
    def err(self) -> float:
        return (self.best - self.measured) / self.measured if self.measured else float("nan")


def costs_table(c: Costs, extra: dict[str, float], src: str) -> str:
    us = 1e6
    lines = [
        f"Costs ({src}; CPU time on one core, which still grows when other processes compete for the cores "
        "and caches):",
        "",
        "| step | cost | how |",
        "|---|---:|---|",
        f"| exec op frame ({c.op_exec_bytes:.0f} B): send / receive | {c.op_exec_send * us:.0f} / "
        f"{c.op_exec_recv * us:.0f} µs | `TreeLink` over TLS 1.3 on loopback, one frame at a time |",
        f"| noop op frame ({c.op_noop_bytes:.0f} B): send / receive | {c.op_noop_send * us:.0f} / "
        f"{c.op_noop_recv * us:.0f} µs | same |",
        f"| an op frame's target list, per target: send / receive / bytes | {c.tg_send_target * 1e9:.0f} / "
        f"{c.tg_recv_target * 1e9:.0f} ns / {c.tg_bytes_target:.1f} B | a noop frame carrying {WIDE:,} spread "
        f"ranks from {WIDE_FIRST:,} (one interval each, as a subtree's; packed once, as a node does for a repeated "
        "job) less the one-interval frame |",
        f"| reply frame ({c.rep_bytes:.0f} B): send / receive | {c.rep_send * us:.0f} / {c.rep_recv * us:.0f} µs "
        "| same |",
        f"| ping/pong frame: send / receive | {c.small_send * us:.0f} / {c.small_recv * us:.0f} µs | same |",
        f"| op machinery at a leaf (noop) | {c.leaf_noop * us:.1f} µs | real `Node.start_op`, stand-in links |",
        f"| op machinery, down: base + per child + per target | {c.down_base * us:.1f} + {c.down_child * us:.1f} "
        f"+ {c.down_target * us:.3f} µs | `start_op` (rank sets decoded, sorted, bucketed) |",
        f"| op machinery, up: base + per child + per target | {c.up_base * us:.1f} + {c.up_child * us:.1f} + "
        f"{c.up_target * us:.3f} µs | `_on_rep` + flush (positions expanded, unions) |",
        f"| master per target: down / up / select('**') / up ranks | {c.master_down_target * us:.3f} / "
        f"{c.master_up_target * us:.3f} / {c.select_target * us:.3f} / {c.up_ranks_target * us:.3f} µs "
        "| plain ranks at the master, a repeated job (select: the master keeps a node set's selection until "
        "the tree changes; down/up: each child's share frozen, encoded and sorted once, `overlay.Share`); "
        f"the first job after a change: down {c.master_down_first_target * us:.3f} / up "
        f"{c.master_up_first_target * us:.3f} µs (not in the model) |",
        f"| master: selecting a node set the first time | {c.select_first_target * us:.3f} µs per node | "
        "`nodespec.select('**')` on a 32-ary topology; not in the model (kept for later jobs) |",
        f"| exec of /bin/true at a leaf: node CPU / program CPU / wall | {c.exec_self * us:.0f} / "
        f"{c.exec_child * us:.0f} / {c.exec_wall * us:.0f} µs | real `ExecService` ({c.exec_fds:.0f} fds open) |",
        f"| start (posix_spawn) + wait: parent / child CPU / wall | {c.popen_parent * us:.0f} / "
        f"{c.popen_child * us:.0f} / {c.popen_wall * us:.0f} µs | `platform.Command.posix_spawn`, few fds |",
        f"| ... per open descriptor: parent / child | {c.popen_parent_fd * us * 1000:.0f} / "
        f"{c.popen_child_fd * us * 1000:.0f} ns | same with 8,000 socket fds open |",
        f"| start through the starter + exit report: daemon / starter / program CPU | {c.starter_daemon * us:.0f}"
        f" / {c.starter_self * us:.0f} / {c.starter_child * us:.0f} µs | `platform.Starter` (`gproc.spawnd`): "
        f"what a process holding more than {c.starter_above:,.0f} descriptors does (no per-descriptor cost) |",
        f"| posix_spawn + waitpid (floor): CPU / wall | {c.posix_spawn_cpu * us:.0f} / "
        f"{c.posix_spawn_wall * us:.0f} µs | parent + child |",
        f"| {CHUNK // 1024} KiB put chunk: send (per child) / receive | {c.chunk_send * us:.0f} / "
        f"{c.chunk_recv * us:.0f} µs "
        "| pack + encrypt; decrypt + unpack + SHA-256 + write |",
        f"| NodeSet folding of a new node set (first job) | {c.fold_target * us:.2f} µs per node | not in the "
        "model (cached per node set) |",
        f"| local only: real-daemon correction per node, no-op / launch / program | "
        f"{c.daemon_extra_noop * us:.0f} / {c.daemon_extra_exec * us:.0f} / {c.program_extra * us:.0f} µs | "
        f"a real local cluster of {PROBE[0]} nodes (fanout {PROBE[1]}) in {PROBE[2]} worker processes: their CPU "
        "per op (idle heartbeats subtracted) less what the parts above predict for it |",
        *(
            f"| ... the same at {nn:,.0f} nodes in {pp:.0f} processes | {noop * us:.0f} / {exec_ * us:.0f} / "
            f"{prog * us:.0f} µs | a real local cluster of {nn:,.0f} nodes (fanout {probe_fanout(nn, pp)}); a "
            "point of another size or process count reads each correction off the probes (`Costs.at`: on the "
            "least-squares line by size through the probes of each process count, then linear in the count) |"
            for nn, pp, noop, exec_, prog in c.more_probes
        ),
        f"| master + client fixed, exec / ping | {c.master_exec_fixed * 1e3:.2f} / {c.master_ping_fixed * 1e3:.2f} "
        "ms | same cluster: master and client CPU per op less the master's parts |",
        f"| identical-output reply on a link | {c.echo_rep_wire_bytes:.0f} B | real `merge.pack` + `wire.pack` + "
        "TLS record |",
    ]
    if "probe_noop_worker" in extra:
        n = PROBE[0]
        lines.append("")
        lines.append(
            f"The {n}-node cluster ({PROBE[2]} workers): worker CPU per no-op "
            f"{fmt_t(extra['probe_noop_worker'])} (parts: "
            f"{fmt_t(extra['parts_noop_worker'])}), per launch {fmt_t(extra['probe_exec_worker'])} (parts: "
            f"{fmt_t(extra['parts_exec_worker'])}) + programs {fmt_t(extra['probe_exec_programs'])} (parts: "
            f"{fmt_t(extra['parts_exec_programs'])}); idle heartbeats {extra['probe_idle_worker']:.1%} of a core; "
            f"wall: no-op {fmt_t(extra['probe_noop_wall'])}, launch {fmt_t(extra['probe_exec_wall'])} (the local "
            f"model, whose CPU per node this cluster calibrates but not its timing: "
            f"{fmt_t(extra['model_noop_wall'])}, {fmt_t(extra['model_exec_wall'])})."
        )
    if "measure_s" in extra:
        lines.append("")
        lines.append(
            f"Measuring took {extra['measure_s']:.1f} s, while other processes used "
            f"{extra.get('other_load', 0.0):.0%} of the machine's CPU (each part is the least disturbed of a "
            "few repetitions; under load they still come out up to 2x higher, the real cluster's CPU per node "
            "much less so)."
        )
    return "\n".join(lines) + "\n"


def assumptions(
    net: Net, cores: int, quantum: float, fanouts: Sequence[int], probes: Sequence[tuple[float, ...]] = ()
) -> str:
    """The report's list of assumptions; ``probes``: the calibration clusters beyond ``PROBE`` the
    costs hold (nodes, processes, ...)."""
    clusters = [f"{PROBE[0]:,} nodes at fanout {PROBE[1]} in {PROBE[2]} processes"] + [
        f"{q[0]:,.0f} nodes at fanout {probe_fanout(q[0], q[1])} in {q[1]:.0f} processes" for q in probes
    ]
    items = [
        "The tree is `gproc.local.layout`'s: levels filled in turn, the master has `fanout` children, the last "
        "level dealt round-robin. All nodes are targets; `exec` of /bin/true with `-localbin` (launch) and "
        "`noop` (ping). Shipping (`launch_ship_s`) is not modeled.",
        "An op goes down only as frames: a node decodes it, forwards one frame per child one after the other, "
        "then starts its own program. Replies: a leaf replies when its program ended; an interior node when "
        "its own program and all its children ended (gproc flushes at once then: the `window`/`quiet`/`hold` "
        "timers are not on a launch's critical path). Identical results merge into one reply frame per link, "
        "of constant size.",
        "Per-target work is real: every node expands its targets and its children's reply positions into "
        "Python sets (cost linear in its subtree), the master also selects the nodes and keeps the job's "
        "rank set. An op frame carries its targets, one interval per rank (a subtree's ranks are spread): "
        "packing, encrypting, decrypting and unpacking them and their bytes on the NIC grow with the subtree "
        "the frame goes to. Nothing else grows with N.",
        "Costs are CPU seconds measured on this machine now; a cost does not depend on N except through the "
        "per-target work above and the descriptors a forking process holds (measured slope). In the local "
        "environment the real-daemon corrections (from the clusters of "
        + ", ".join(clusters)
        + ") are per node, read off the probes by the cluster's size N (least-squares line through the "
        "probes of each process count) and its number of worker processes (linear between the probed "
        "counts): what all daemons' heaps and descriptors sharing this machine's caches, and the "
        "processes taking turns on its cores, cost beyond the parts measured alone. Past the largest probe "
        "this is an extrapolation.",
        f"local: {cores} cores shared by the master, the worker processes "
        "(`gproc.local.workers`: min(fanout, max(min(ceil(N/256), 2 x cores), ceil(N/640)))) "
        "and every program; a worker's loop runs the tasks ready at a turn's start plus at most 8 program "
        f"starts, in slices of {quantum * 1e3:g} ms on one core (FIFO among processes); while a program is "
        "forked (vfork) the worker waits for the child to close its descriptors (2 per node + 1 per interior "
        "node + 1 per child link in the same process + 3 per running program), unless the worker holds more "
        "than the starter threshold: then the start goes through its starter process (its CPU charged to "
        "the worker's turn, which waits for the pid) and no descriptor is copied; heartbeats: 3 frames per link "
        "per period (`gproc.local.liveness`) as a steady load; loopback latency 0; other processes on the "
        "machine: the share a point records, as one process per core that wants that share of it.",
        f"cluster: one daemon per machine, its loop on one core and its program on another; latency "
        f"{net.latency * 1e6:g} µs per hop; each NIC {net.bandwidth * 8 / 1e9:g} Gbit/s, frames to a node's "
        "children leave one after another; no switch contention, no loss; heartbeats ignored (3 frames per "
        "link per second: < 0.1 % of a core). A node costs what the parts say (no local correction: one node "
        "per process, frames one at a time); its program starts as here with ~32 descriptors open; the "
        "master's fixed cost per request is the one measured locally.",
        "Bytes at the master: one identical-output reply per master link (TCP payload incl. TLS, as measured "
        "by bench/fanout.py; without it the real merge+wire encoding of an `echo` reply + 22 B TLS); "
        "unmerged: every node's reply on its own.",
        f"Broadcast of 10 MiB: {CHUNK // 1024} KiB chunks, each hop store-and-forward per chunk, a node sends a "
        "chunk to its children one after the other on its NIC (network only: file*k/B + depth*(chunk*k/B + L)); with "
        "CPU, a node also decrypts+hashes+stores each chunk once and encrypts it once per child, and at most "
        "8 chunks are unacknowledged.",
        f"Projection fanouts: {', '.join(str(k) for k in fanouts)} (gproc's default: {project_fanout_default()}).",
    ]
    return "".join(f"- {i}\n" for i in items)


def plot(
    path: Path,
    proj: dict[int, list[tuple[int, float, float]]],
    local_curve: dict[int, list[tuple[int, float, float]]],
    points: Sequence[Point],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    allk = sorted(set(proj) | set(local_curve) | {p.fanout for p in points})
    color = {k: colors[i % len(colors)] for i, k in enumerate(allk)}
    for ax, idx, title in ((axes[0], 1, "launch (/bin/true on every node)"), (axes[1], 2, "no-op round trip")):
        for k, rows in sorted(proj.items()):
            ax.plot([r[0] for r in rows], [r[idx] for r in rows], "-", color=color[k], label=f"cluster, fanout {k}")
        for k, rows in sorted(local_curve.items()):
            ax.plot(
                [r[0] for r in rows], [r[idx] for r in rows], "--", color=color[k], label=f"local model, fanout {k}"
            )
        for k in sorted({p.fanout for p in points}):
            pts = [p for p in points if p.fanout == k]
            ax.plot(
                [p.n for p in pts],
                [p.launch_s if idx == 1 else p.noop_s for p in pts],
                "o",
                color=color[k],
                markersize=7,
                markerfacecolor="none",
                label=f"measured, fanout {k}",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("nodes")
        ax.set_ylabel("seconds")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle("gproc model: local (2 cores, dashed) vs 10 GbE cluster (solid); circles: measured")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def git_commit() -> str:
    r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or "?"


# ---- main ------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--fanout", type=int, default=None, help="projection fanout (default: gproc.local.up's)")
    ap.add_argument("--fanouts", default="16,32,64", help="further projection fanouts (default 16,32,64)")
    ap.add_argument("--sizes", default="100000,1000000,10000000", help="projection sizes")
    ap.add_argument("--latency", type=float, default=50.0, help="cluster: one-way latency per hop, µs (50)")
    ap.add_argument("--bandwidth", type=float, default=10.0, help="cluster: NIC bandwidth, Gbit/s (10)")
    ap.add_argument("--file-mib", type=float, default=10.0, help="broadcast file size, MiB (10)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="local: cores of the measured machine")
    ap.add_argument("--quantum", type=float, default=4.0, help="local: CPU slice of a process, ms (4)")
    ap.add_argument(
        "--points",
        type=Path,
        default=None,
        help="validate against these measured points (bench/fanout.json) instead of measuring them in this run",
    )
    ap.add_argument("--point-sizes", default="1024,10000", help="validation points measured here: sizes")
    ap.add_argument("--point-fanouts", default="4,8,16,32,64", help="validation points measured here: fanouts")
    ap.add_argument(
        "--probe-starts", type=int, default=3, help="starts of each calibration cluster (medians over them)"
    )
    ap.add_argument(
        "--big-starts",
        type=int,
        default=5,
        help=f"starts of each point and calibration cluster of {BIG_POINT:,} nodes or more (5)",
    )
    ap.add_argument(
        "--probes-upto",
        type=float,
        default=math.inf,
        metavar="N",
        help="leave out the calibration clusters larger than N nodes (when measuring, and from --costs)",
    )
    ap.add_argument("--des-max", type=int, default=10_000, help="cluster: per-node simulation up to this N")
    ap.add_argument("--no-measure", action="store_true", help="use stored default costs instead of measuring")
    ap.add_argument(
        "--costs",
        type=Path,
        help="costs from a file a full run wrote (bench/model_costs.json); measures nothing, validates against "
        "bench/model_points.json (or --points)",
    )
    ap.add_argument("--quick", action="store_true", help="shorter measurements")
    ap.add_argument("--quiet", type=float, default=0.0, metavar="S", help="wait up to S s for a quiet machine first")
    ap.add_argument("--cost", action="append", default=[], metavar="NAME=US", help="override a cost (µs)")
    ap.add_argument("--no-write", action="store_true", help="print only: no RESULTS.md section, no PNG")
    return ap.parse_args(argv)


def validate(
    points: Sequence[Point],
    costs: Costs,
    cores: int,
    quantum: float,
    memo: dict[tuple[Any, ...], LocalRun] | None = None,
) -> tuple[list[Row], dict[int, list[tuple[int, float, float]]]]:
    """The local model at every measured point (idle machine, and with the point's other load), and
    local curves per measured fanout for the plot. ``memo`` keeps simulations for another set of points."""
    memo = {} if memo is None else memo

    def sim(tree: Tree, kind: str, procs: int | None, foreign: float = 0.0) -> LocalRun:
        key = (tree.n, tree.k, kind, procs, round(foreign, 3))
        if key not in memo:
            memo[key] = simulate_local(tree, kind, costs, cores, quantum, foreign=foreign, workers=procs)
        return memo[key]

    rows: list[Row] = []
    for p in points:
        tree = Tree.build(p.n, p.fanout)
        t0 = time.perf_counter()
        first = len(rows)  # this point's rows start here
        for what, kind, measured in (("launch", "exec", p.launch_s), ("no-op", "noop", p.noop_s)):
            run = sim(tree, kind, p.procs)
            loaded = None
            if p.other:
                loaded = sim(tree, kind, p.procs, min(0.9, p.other)).seconds
            rows.append(Row(p.n, p.fanout, what, measured, run.seconds, loaded, run, p.procs))
        model_bytes = min(p.fanout, p.n) * costs.echo_rep_wire_bytes
        if p.master_bytes:  # all the master's links received during the job, heartbeats too: shown
            rows.append(Row(p.n, p.fanout, "bytes at master", p.master_bytes, model_bytes))
        if p.reply_bytes:  # the job's own replies: checked
            rows.append(Row(p.n, p.fanout, "reply bytes at master", p.reply_bytes, model_bytes))
        got = {r.what: r for r in rows[first:]}
        print(
            f"  local model N={p.n} fanout={p.fanout}: launch {fmt_t(got['launch'].best)} (measured "
            f"{fmt_t(p.launch_s)}), no-op {fmt_t(got['no-op'].best)} (measured {fmt_t(p.noop_s)})"
            f"  [{time.perf_counter() - t0:.1f} s]",
            flush=True,
        )
    curves: dict[int, list[tuple[int, float, float]]] = {}
    for k in sorted({p.fanout for p in points}):
        curve = []
        for n in (256, 1024, 10000):
            known = {r.what: r.model for r in rows if r.n == n and r.fanout == k}
            if "launch" not in known or "no-op" not in known:
                tree = Tree.build(n, k)
                known["launch"] = simulate_local(tree, "exec", costs, cores, quantum).seconds
                known["no-op"] = simulate_local(tree, "noop", costs, cores, quantum).seconds
            curve.append((n, known["launch"], known["no-op"]))
        curves[k] = curve
    return rows, curves


def starts_of(points: Sequence[Point], r: Row) -> str:
    """' (a, b, c)': each start's measured figure behind a launch or no-op row, when there were several."""
    for p in points:
        if (p.n, p.fanout, p.procs) == (r.n, r.fanout, r.procs):
            vals = p.launch_all if r.what == "launch" else p.noop_all if r.what == "no-op" else None
            if vals and len(vals) > 1:
                return " (" + ", ".join(fmt_t(v) for v in vals) + ")"
    return ""


def breakdown(run: LocalRun, cores: int) -> str:
    """Where a simulated local op's CPU went."""
    parts = sorted(run.cpu.items(), key=lambda kv: -kv[1])
    return (
        f"{fmt_t(run.busy)} of CPU in {fmt_t(run.seconds)} ({run.busy / run.seconds / cores:.0%} of {cores} cores): "
        + ", ".join(
            f"{k} {v / run.busy:+.0%}" if v < 0 else f"{k} {v / run.busy:.0%}"
            for k, v in parts
            if k != "other processes" and abs(v) / run.busy >= 0.01
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # stopped (a background job ignores SIGINT): unwind, so the cluster being measured is torn down
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t_start = time.perf_counter()
    default_k = project_fanout_default()
    k_main = args.fanout or default_k
    fanouts = sorted({k_main, *(int(x) for x in args.fanouts.split(",") if x)})
    sizes = [int(float(x)) for x in args.sizes.split(",") if x]
    net = Net(args.latency * 1e-6, args.bandwidth * 1e9 / 8)
    quantum = args.quantum * 1e-3

    extra: dict[str, float] = {}
    points: list[Point] = []
    measured = not (args.no_measure or args.costs)
    if args.no_measure:
        costs, cost_source = Costs(), "stored defaults / overrides (not measured in this run)"
    elif args.costs:
        costs, extra, cost_source = load_costs(args.costs)
    else:
        cost_source = "measured now"
        if args.quiet > 0:
            print(f"waiting up to {args.quiet:g} s for other processes to use < 10 % of the CPU ...", flush=True)
            print(f"  other load now {wait_quiet(args.quiet):.0%}", flush=True)
        print("measuring costs and validation points ...", flush=True)
        sizes_here, fanouts_here = int_list(args.point_sizes), int_list(args.point_fanouts)
        here = [] if args.points else [(n, k) for n in sizes_here for k in fanouts_here]
        costs, extra, points = measure(
            args.quick, starts=args.probe_starts, points=here, upto=args.probes_upto, big_starts=args.big_starts
        )
    costs = override(probes_upto(costs, args.probes_upto), args.cost)

    memo: dict[tuple[Any, ...], LocalRun] = {}
    if not measured or args.points:
        default = POINTS_JSON if args.costs and POINTS_JSON.exists() else FANOUT_JSON
        points, source = load_points(args.points or default)
        others: list[Point] = []
        other_source = ""
    else:
        source = (
            f"measured in this run ({machine()}, {datetime.now(UTC):%Y-%m-%d}): each point started "
            f"{args.probe_starts} times ({2 * args.probe_starts} up to {SMALL_POINT:,} nodes, "
            f"{max(args.probe_starts, args.big_starts)} from {BIG_POINT:,}), in turn with the calibration clusters"
        )
        others, other_source = load_points(FANOUT_JSON) if FANOUT_JSON.exists() else ([], "")
    print(f"measured points: {source}")
    rows, local_curve = validate(points, costs, args.cores, quantum, memo)
    other_rows = validate(others, costs, args.cores, quantum, memo)[0] if others else []
    # the same points without the calibration clusters as large as the largest point: how much of the
    # fit at that size the probes there make
    big_n = max((p.n for p in points), default=0)
    below = [q[0] for q in costs.more_probes if q[0] < big_n]
    fewer_rows: list[Row] = []
    if below and any(q[0] >= big_n for q in costs.more_probes):
        fewer_rows = validate(points, probes_upto(costs, max(below)), args.cores, quantum)[0]
    fewer_timed = [r for r in fewer_rows if r.what not in BYTES_ROWS]
    fewer_bad = [r for r in fewer_timed if abs(r.err) > TOLERANCE]

    # bytes per master link for the projection: the smallest measured N, where every subtree answers well
    # within `hold` and sends one reply (larger local clusters answer slowly enough for partial replies)
    # (the job's own replies when the points have them, else the TCP count with its heartbeats)
    use_reply = any(p.reply_bytes for p in points)
    sized = [(p, p.reply_bytes if use_reply else p.master_bytes) for p in points]
    small = min((p.n for p, b in sized if b), default=0)
    per_link = [b / min(p.fanout, p.n) for p, b in sized if b and p.n == small]
    link_bytes = statistics.median(per_link) if per_link else costs.echo_rep_wire_bytes
    timed = [r for r in rows if r.what not in BYTES_ROWS]
    bad = [r for r in timed if abs(r.err) > TOLERANCE]
    replies = [r for r in rows if r.what == "reply bytes at master"]
    other_timed = [r for r in other_rows if r.what not in BYTES_ROWS]
    other_bad = [r for r in other_timed if abs(r.err) > TOLERANCE]

    # cluster: the per-node simulation against the recurrence where both run
    checks: list[tuple[int, int, str, float, float]] = []
    for n in (1024, 10_000):
        if n > args.des_max:
            continue
        for k in sorted({k_main, 32}):
            tree = Tree.build(n, k)
            for kind in ("exec", "noop"):
                sim = simulate_cluster(tree, kind, costs, net)
                checks.append((n, k, kind, sim, recurrence(n, k, kind, costs, net)))
    agree = max(abs(r - s) / s for *_, s, r in checks) if checks else float("nan")

    # projections
    proj_rows = []
    curves: dict[int, list[tuple[int, float, float]]] = {}
    for k in fanouts:
        curves[k] = [
            (n, recurrence(n, k, "exec", costs, net), recurrence(n, k, "noop", costs, net))
            for n in sorted({int(10 ** (e / 4)) for e in range(12, 29)} | set(sizes))
        ]
        for n in sizes:
            net_only, with_cpu = broadcast(n, k, args.file_mib * MiB, costs, net)
            proj_rows.append((
                n, k, len(levels(n, k)), recurrence(n, k, "exec", costs, net), recurrence(n, k, "noop", costs, net),
                min(k, n) * link_bytes, n * link_bytes, net_only, with_cpu,
            ))  # fmt: skip
    master_exec = costs.select_target + costs.master_down_target + costs.master_up_target
    master_ping = costs.up_ranks_target + costs.master_down_target + costs.master_up_target

    # ---- report
    out: list[str] = []
    cmd = "python bench/model.py" + (" " + " ".join(sys.argv[1:]) if argv is None and sys.argv[1:] else "")
    out.append("## Model: the tree past one machine (bench/model.py)\n\n")
    out.append(f"Command: `{cmd}`  \n")
    out.append(f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  \n")
    out.append(f"Machine: {machine()}  \n")
    out.append(f"gproc: commit {git_commit()} (working tree); Python {sys.version.split()[0]}  \n")
    out.append(f"Measured points: {source}\n\n")
    out.append(costs_table(costs, extra, cost_source) + "\n")
    out.append("Assumptions:\n\n" + assumptions(net, args.cores, quantum, fanouts, costs.more_probes) + "\n")
    has_load = any(r.loaded is not None for r in timed)
    out.append(
        "**Validation**: the local model (`gproc.local.up` on this machine's "
        f"{args.cores} cores) vs the measured points; nothing is fitted to them. Target: within "
        f"{TOLERANCE:.0%}"
        + (
            " of the model run with the CPU share other processes used during that point (the 'other load' "
            "recorded with each point; 'idle' is the model on an otherwise idle machine)"
            if has_load
            else ""
        )
        + ".\n\n| N | fanout | procs | what | measured | model (idle) |"
        + (" model (other load) |" if has_load else "")
        + " error |\n|---:|---:|---:|---|---:|---:|"
        + ("---:|" if has_load else "")
        + "---:|\n"
    )
    for r in rows:
        show = fmt_b if r.what in BYTES_ROWS else fmt_t
        flag = "" if abs(r.err) <= TOLERANCE or r.what == "bytes at master" else " **✗**"
        loaded = ("" if r.loaded is None else show(r.loaded)) + " |" if has_load else ""
        err = f"{r.err:+.0%}{flag}"
        procs = r.procs or local_workers(r.n, r.fanout, args.cores)
        out.append(
            f"| {r.n:,} | {r.fanout} | {procs} | {r.what} | {show(r.measured)}{starts_of(points, r)} | "
            f"{show(r.model)} | {loaded} {err} |\n"
        )
    if not bad:
        out.append(f"\nEvery launch and no-op point is within {TOLERANCE:.0%}: **met**.\n")
    else:
        out.append(
            f"\n**Not met** for {len(bad)} of {len(timed)} timed points: "
            + ", ".join(f"N={r.n:,}/fanout {r.fanout}/{r.procs or '-'} procs {r.what} ({r.err:+.0%})" for r in bad)
            + ". No per-point factor was tuned; see the notes.\n"
        )
    if replies:
        out.append(
            f"\nThe job's own reply bytes at the master (the job store's `rep_bytes` + one TLS record per frame; "
            f"the TCP count above also holds the heartbeat pongs that arrived meanwhile): "
            f"{tally(replies, [r for r in replies if abs(r.err) > TOLERANCE])}.\n"
        )
    if fewer_timed:
        out.append(
            f"\nWithout the calibration clusters of {big_n:,} nodes or more (probes up to {max(below):,.0f} "
            f"nodes, so a {big_n:,}-node point reads its corrections off lines extrapolated past them): "
            f"{tally(fewer_timed, fewer_bad)}.\n"
        )
    if other_timed:
        out.append(
            f"\nThe same model against the points of another hour, {other_source}: "
            f"{tally(other_timed, other_bad)} (the gap to the table above holds how far this VM's speed moved "
            "between the two hours).\n"
        )
    out.append("\nWhere the model's CPU goes (local, idle machine):\n\n")
    for r in timed:
        if r.run is not None:
            out.append(
                f"- N={r.n:,}, fanout {r.fanout}, {r.procs or '-'} procs, {r.what}: {breakdown(r.run, args.cores)}\n"
            )
    if checks:
        out.append(
            "\nCluster model, per-node simulation (simpy) vs level-by-level recurrence: "
            + "; ".join(f"N={n:,}/k={k} {kind} {fmt_t(s)} vs {fmt_t(r)}" for n, k, kind, s, r in checks)
            + f" (largest difference {agree:.1%}; the recurrence follows each level's busiest node).\n"
        )
    out.append(
        f"\n**Projection**: a cluster of one daemon per machine, {args.bandwidth:g} Gbit/s, "
        f"{args.latency:g} µs per hop (recurrence: the per-node simulation takes too long past ~10^5 nodes).\n\n"
        "| N | fanout | depth | launch | no-op RTT | bytes at master (merged) | unmerged | "
        f"broadcast {args.file_mib:g} MiB (network only) | broadcast (with TLS CPU) | "
        "master per-target CPU (launch) | exec op frame to a master child |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    from gproc import wire

    for n, k, depth, launch, noop, mb, unmerged, bn, bc in proj_rows:
        frame = op_frame(n, k, costs)
        over = " (over the frame limit)" if frame > wire.MAX_FRAME else ""
        out.append(
            f"| {n:,} | {k} | {depth} | {fmt_t(launch)} | {fmt_t(noop)} | {fmt_b(mb)} | {fmt_b(unmerged)} | "
            f"{fmt_t(bn)} | {fmt_t(bc)} | {fmt_t(master_exec * n)} | {fmt_b(frame)}{over} |\n"
        )
    big = max(sizes)
    launch_big = recurrence(big, k_main, "exec", costs, net)
    noop_big = recurrence(big, k_main, "noop", costs, net)
    out.append(
        f"\nBytes at the master: {link_bytes:.0f} B per master link ("
        + (
            f"median of the measured points' master_bytes / master links at N = {small:,}; more than the reply's own "
            f"{costs.echo_rep_wire_bytes:.0f} B: the TCP count also holds the heartbeat pongs that arrived "
            "meanwhile (and the odd second reply frame)"
            if per_link and not use_reply
            else f"median of the measured jobs' own reply bytes / master links at N = {small:,}; the real encoding "
            f"of an echo reply is {costs.echo_rep_wire_bytes:.0f} B"
            if per_link
            else "real encoding of an echo reply"
        )
        + "), so fanout x that whatever N; 'unmerged' is what N separate replies would be.\n\n"
        f"Notes: at N = {big:,} (fanout {k_main}) the master's per-node Python work (selecting the nodes, "
        f"expanding and merging rank sets: {master_exec * 1e6:.2f} µs per node for a launch, "
        f"{master_ping * 1e6:.2f} µs for a ping) is {master_exec * big / launch_big:.0%} of the launch "
        f"({fmt_t(launch_big)}) and {master_ping * big / noop_big:.0%} of the no-op ({fmt_t(noop_big)}); the "
        f"rest of the launch ({fmt_t(launch_big - master_exec * big)}) is the tree's: frames and their target "
        "lists, forks, hops. The first job on a new node set "
        f"also folds N names with ClusterShell ({costs.fold_target * 1e6:.1f} µs per node, "
        f"{fmt_t(costs.fold_target * big)} at {big:,}), cached afterwards. An op frame carries its "
        f"targets, one interval per rank ({costs.tg_bytes_target:.0f} B each): the master's frame to each "
        f"child holds that child's subtree ({fmt_b(op_frame(big, k_main, costs))} at {big:,}, fanout "
        f"{k_main}), and a subtree of more than "
        f"{(wire.MAX_FRAME - costs.op_exec_bytes) / costs.tg_bytes_target:,.0f} nodes would exceed the "
        f"frame limit ({fmt_b(wire.MAX_FRAME)}, `gproc.wire.MAX_FRAME`).\n"
    )
    out.append("\n![model](model.png)\n\n")
    text = "".join(out)
    print("\n" + text)
    print(f"model.py took {time.perf_counter() - t_start:.1f} s")
    if not args.no_write:
        plot(PNG, curves, local_curve, points)
        write_section("model", text, RESULTS)  # reads RESULTS.md afresh and replaces only this section
        stamp = {"machine": machine(), "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}", "commit": git_commit()}
        if measured and not args.points:  # the points measured here, for `--points` later
            POINTS_JSON.write_text(json.dumps({**stamp, "points": [asdict(p) for p in points]}, indent=1) + "\n")
        if measured:  # and the costs, for `--costs` (the model again without measuring anything)
            COSTS_JSON.write_text(json.dumps({**stamp, "costs": asdict(costs), "extra": extra}, indent=1) + "\n")
        print(f"wrote {PNG.relative_to(REPO)} and the model section of {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
