"""``/metrics``: the cluster in the Prometheus text exposition format (prometheus-client).

Node metrics arrive already reduced in the tree, so a scrape costs the master the same bytes for ten
nodes or ten thousand: ``gproc_node_<metric>_{min,max,avg}`` gauges and a ``gproc_node_<metric>``
histogram per metric, besides ``gproc_nodes{state}`` and ``gproc_jobs{state}``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

JOB_STATES = ("running", "done", "lost")


class Snapshot(Collector):
    """One scrape's figures, already fetched (collectors are synchronous; the client is not)."""

    def __init__(self, snapshot: dict[str, Any], jobs: list[dict[str, Any]]) -> None:
        self.snapshot, self.jobs = snapshot, jobs

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        nodes = GaugeMetricFamily("gproc_nodes", "Nodes of the tree by state", labels=["state"])
        for state in ("up", "lost"):
            nodes.add_metric([state], s["nodes"][state])
        yield nodes
        jobs = GaugeMetricFamily("gproc_jobs", "Jobs the master keeps, by state", labels=["state"])
        counts = dict.fromkeys(JOB_STATES, 0)
        for j in self.jobs:
            counts[j["state"]] = counts.get(j["state"], 0) + 1
        for state, n in sorted(counts.items()):
            jobs.add_metric([state], n)
        yield jobs
        yield GaugeMetricFamily(
            "gproc_node_metrics_answered", "Nodes that answered the metrics op", value=s["metrics"]["load1"]["count"]
        )
        for name, m in s["metrics"].items():
            for agg in ("min", "max", "avg"):
                if m[agg] is not None:
                    yield GaugeMetricFamily(f"gproc_node_{name}_{agg}", f"{name}: {agg} over the nodes", value=m[agg])
            buckets: list[tuple[str, float]] = []
            acc = 0
            for edge, n in zip(m["hist"]["edges"], m["hist"]["counts"], strict=False):
                acc += n
                buckets.append((repr(float(edge)), acc))
            buckets.append(("+Inf", acc + m["hist"]["counts"][-1]))
            total = (m["avg"] or 0) * m["count"]
            yield HistogramMetricFamily(
                f"gproc_node_{name}", f"{name} over the nodes", buckets=buckets, sum_value=total
            )


def render(snapshot: dict[str, Any], jobs: list[dict[str, Any]]) -> tuple[bytes, str]:
    """The exposition text and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot(snapshot, jobs))
    return generate_latest(registry), CONTENT_TYPE_LATEST
