"""Node metrics: load, memory, disk and network of every selected node, reduced inside the tree.

Each target node reads its own figures (``psutil``, from /proc and statvfs) and gives them as one
sample; every interior node merges its subtree's samples with min, max, avg, a histogram and a top-k
of the outliers (by node name) per metric (``reduce.Each``), so what reaches the master is the same
few hundred bytes for 10 nodes or 10,000. ``gproc top``, ``gproc web`` and ``/metrics`` read it.
"""

from __future__ import annotations

import heapq
import os
import time
from dataclasses import dataclass
from typing import Any

import psutil

from gproc import platform
from gproc import ranks as rankset
from gproc.errors import UsageError
from gproc.messages import Body, Selected
from gproc.overlay import Link, Node, Op
from gproc.platform import PeerCred
from gproc.reduce import Avg, Each, Hist, Max, Min, Reducer, TopK
from gproc.services.base import ClientRequest, MasterApi, ServiceTable, typed

TOP = 3  # outliers named per metric
PCT: list[int | float] = [10, 20, 30, 40, 50, 60, 70, 80, 90, 95]
GIB = 1 << 30


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    edges: list[int | float]  # histogram bucket edges
    low_is_bad: bool = False  # outliers are the smallest (available memory), else the largest


METRICS = (
    Metric("load1", "", [0.25, 0.5, 1, 2, 4, 8, 16, 32, 64]),
    Metric("mem_used_pct", "%", PCT),
    Metric("mem_avail_bytes", "B", [GIB // 4, GIB // 2, GIB, 2 * GIB, 4 * GIB, 16 * GIB, 64 * GIB], low_is_bad=True),
    Metric("disk_used_pct", "%", PCT),
    Metric("net_rx_bytes", "B", [1 << 20, 1 << 30, 1 << 40]),
    Metric("net_tx_bytes", "B", [1 << 20, 1 << 30, 1 << 40]),
)
PER_METRIC = 5  # min, max, avg, hist, top


def reducer() -> Each:
    """The reducer of the ``metrics`` op: per metric, in ``METRICS`` order, min, max, avg, hist, top."""
    parts: list[Reducer[Any]] = []
    for m in METRICS:
        parts += [Min(), Max(), Avg(), Hist(m.edges), TopK(TOP)]
    return Each(parts)


def read_node(path: str) -> dict[str, float]:
    """This node's figures (OSError when ``path`` cannot be measured)."""
    vm = psutil.virtual_memory()
    du = psutil.disk_usage(path)
    net = psutil.net_io_counters()
    return {
        "load1": os.getloadavg()[0],
        "mem_used_pct": round(100.0 * (vm.total - vm.available) / vm.total, 2) if vm.total else 0.0,
        "mem_avail_bytes": vm.available,
        "disk_used_pct": du.percent,
        "net_rx_bytes": net.bytes_recv if net else 0,
        "net_tx_bytes": net.bytes_sent if net else 0,
    }


def sample(figures: dict[str, float], name: str) -> list[Any]:
    """One node's figures as the ``metrics`` reducer's sample."""
    out: list[Any] = []
    label = name[:200]
    for m in METRICS:
        v = figures[m.name]
        out += [v, v, v, v, [-v if m.low_is_bad else v, label]]
    return out


def summary(value: list[Any]) -> dict[str, Any]:
    """The reduced value as ``{metric: {unit, min, max, avg, count, hist: {edges, counts}, top: [[value,
    node]…]}}`` (``top``: the outliers, the worst first)."""
    out: dict[str, Any] = {}
    for i, m in enumerate(METRICS):
        lo, hi, avg, hist, top = value[i * PER_METRIC : (i + 1) * PER_METRIC]
        out[m.name] = {
            "unit": m.unit,
            "min": lo,
            "max": hi,
            "avg": Avg.mean(avg),
            "count": avg[1],
            "hist": {"edges": list(m.edges), "counts": list(hist)},
            "top": [[-s if m.low_is_bad else s, label] for s, label in top],
        }
    return out


MAX_PROCS = 50  # the busiest processes a ``proctop`` asks for


class MetricsBody(Body):
    """The ``metrics`` op: this node's figures, the disk ones of the filesystem holding ``path``."""

    path: str = "/"


class ProctopBody(Body):
    """The ``proctop`` op: this node's ``k`` busiest processes."""

    k: int = 10


class MetricsRequest(Selected):
    """``metrics``: every figure reduced over the selected nodes (all by default)."""

    path: str | None = None


class ProctopRequest(Selected):
    """``proctop``: the ``k`` busiest processes of the selected nodes (all by default)."""

    k: int = 10


def _name(p: psutil.Process) -> str:
    try:
        return p.name() or "?"
    except psutil.Error:
        return "?"


class MetricsService:
    """On every node: the ``metrics`` op, and ``proctop`` (its busiest processes)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.cpu_seen: dict[tuple[int, float], float] = {}  # (pid, start time) -> CPU seconds at the last proctop
        self.seen_at = 0.0
        self.users: dict[int, str] = {}  # uid -> user name

    def service(self) -> ServiceTable:
        return ServiceTable(
            "metrics",
            ops={"metrics": typed(MetricsBody, self.metrics), "proctop": typed(ProctopBody, self.proctop)},
            reducers={"metrics": reducer(), "proctop": TopK(MAX_PROCS)},
        )

    def proctop(self, op: Op, b: ProctopBody) -> None:
        """The ``k`` busiest processes of this node by CPU % since the last ``proctop`` here (since each
        one started, the first time), labelled ``NODE PID USER NAME``."""
        k = b.k
        if not 0 < k <= MAX_PROCS:
            op.emit(("s", 2, f"k must be 1 to {MAX_PROCS}"))
            return
        now = time.time()
        seen, dt = {}, now - self.seen_at
        # every process's CPU time comes from one read of /proc/PID/stat; names and users (more reads,
        # and a look-up in the user database each) only for the k that are shown
        rows: list[tuple[float, int, psutil.Process]] = []
        for p in psutil.process_iter(["cpu_times", "create_time"]):
            info = p.info
            if info["cpu_times"] is None or info["create_time"] is None:
                continue
            cpu = info["cpu_times"].user + info["cpu_times"].system
            key = (p.pid, info["create_time"])
            seen[key] = cpu
            prev = self.cpu_seen.get(key)
            span = dt if prev is not None else max(now - info["create_time"], 1e-3)
            rows.append((round(100.0 * (cpu - (prev or 0.0)) / span, 1), p.pid, p))
        for pct, pid, p in heapq.nlargest(k, rows, key=lambda r: (r[0], r[1])):
            op.give((pct, f"{self.node.cfg.name} {pid} {self._user(pid)} {_name(p)}"[:200]))
        self.cpu_seen, self.seen_at = seen, now
        op.emit(("s", 0, ""))

    def _user(self, pid: int) -> str:
        """The name of the user a process runs as (its /proc directory's owner), "?" when gone."""
        try:
            uid = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            return "?"
        name = self.users.get(uid)
        if name is None:
            name = platform.user_name(uid)
            if len(self.users) > 1000:
                self.users.clear()
            self.users[uid] = name
        return name

    def metrics(self, op: Op, b: MetricsBody) -> None:
        path = b.path
        if not path.startswith("/"):
            op.emit(("s", 2, "the disk path must be absolute"))
            return
        try:
            figures = read_node(path)
        except OSError as e:
            op.emit(("s", 1, f"{path}: {e.strerror or e}"))
            return
        op.give(sample(figures, self.node.cfg.name))
        op.emit(("s", 0, ""))


class MasterMetrics:
    """At the master: the ``metrics`` and ``proctop`` client requests."""

    def __init__(self, master: MasterApi) -> None:
        self.m = master

    def service(self) -> ServiceTable:
        return ServiceTable(
            "metrics (master)",
            requests={
                "metrics": ClientRequest(self._metrics, body=MetricsRequest),
                "proctop": ClientRequest(self._proctop, body=ProctopRequest),
            },
        )

    def _targets(self, req: Selected) -> set[int]:
        if req.selects:
            return self.m.selection(req)[0]
        return self.m.up_ranks()

    async def _proctop(self, link: Link, req: ProctopRequest, cred: PeerCred) -> None:
        k = req.k
        if not 0 < k <= MAX_PROCS:
            raise UsageError(f"the number of processes must be 1 to {MAX_PROCS}")
        body = {**ProctopBody(k=k).wire(), "gather": True}
        request = self.m.request("proctop", body, self._targets(req), TopK(k))
        whole = await request
        procs = [[score, label] for score, label in (whole.value or [])]
        link.send({"t": "ret", "r": {"procs": procs, "bytes_in": request.op.bytes_in}})

    async def _metrics(self, link: Link, req: MetricsRequest, cred: PeerCred) -> None:
        path = req.path or "/"
        if not path.startswith("/"):
            raise UsageError("the disk path must be absolute")
        targets = self._targets(req)
        request = self.m.request("metrics", {**MetricsBody(path=path).wire(), "gather": True}, targets)
        whole = await request
        errors = [
            {"nodes": self.m.fold_intervals(enc), "count": rankset.count(enc), "error": str(key[2])}
            for key, enc in whole.groups
            if key[0] == "s" and key[1] != 0
        ]
        up = len(self.m.up_ranks())
        link.send(
            {
                "t": "ret",
                "r": {
                    "targets": len(targets),
                    "nodes": {"up": up, "lost": max(0, len(self.m.topo) - up)},
                    "metrics": summary(whole.value if whole.value is not None else reducer().identity()),
                    "errors": errors,
                    "bytes_in": request.op.bytes_in,
                },
            }
        )
