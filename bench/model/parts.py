"""The model's parts: what one node spends on each step (``Costs``), where the files are, the constants
shared by measuring and simulating, and the calibration clusters."""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import fanout

HERE = Path(__file__).resolve().parent.parent  # bench/, where the model's files live
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


def override(costs: Costs, items: Iterable[str]) -> Costs:
    """``NAME=MICROSECONDS`` (or bytes / descriptors for those fields) replaces a cost."""
    names = {f.name for f in fields(Costs)}
    changes: dict[str, Any] = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in names or not value:
            sys.exit(f"model: --cost {item!r}: expected NAME=VALUE with NAME one of {', '.join(sorted(names))}")
        v = float(value)
        changes[name] = v if name.endswith(("_bytes", "_fds")) else v * 1e-6
    return replace(costs, **changes)


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
