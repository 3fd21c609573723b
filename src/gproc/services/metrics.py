"""Node metrics: load, memory, disk and network of every selected node, reduced inside the tree.

Each target node reads its own figures (``psutil``, from /proc and statvfs) and gives them as one
sample; every interior node merges its subtree's samples with min, max, avg, a histogram and a top-k
of the outliers (by node name) per metric (``reduce.Each``), so what reaches the master is the same
few hundred bytes for 10 nodes or 10,000. ``gproc top``, ``gproc web`` and ``/metrics`` read it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import psutil

from gproc import ranks as rankset
from gproc import wire
from gproc.errors import UsageError
from gproc.overlay import Link, Node, Op
from gproc.platform import PeerCred
from gproc.reduce import Avg, Each, Hist, Max, Min, Reducer, TopK
from gproc.services.base import ClientRequest, MasterApi, ServiceTable

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


class MetricsService:
    """On every node: the ``metrics`` op."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def service(self) -> ServiceTable:
        return ServiceTable("metrics", ops={"metrics": self.metrics}, reducers={"metrics": reducer()})

    def metrics(self, op: Op) -> None:
        path = op.body.get("path", "/")
        if not isinstance(path, str) or not path.startswith("/"):
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
    """At the master: the ``metrics`` client request."""

    def __init__(self, master: MasterApi) -> None:
        self.m = master

    def service(self) -> ServiceTable:
        return ServiceTable("metrics (master)", requests={"metrics": ClientRequest(self._metrics)})

    async def _metrics(self, link: Link, req: wire.Message, cred: PeerCred) -> None:
        path = req.get("path") or "/"
        if not isinstance(path, str) or not path.startswith("/"):
            raise UsageError("the disk path must be absolute")
        if req.get("nodes") or req.get("w") or req.get("x"):
            targets, _ = self.m.selection(req)
        else:
            targets = self.m.up_ranks()
        request = self.m.request("metrics", {"path": path}, targets)
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
