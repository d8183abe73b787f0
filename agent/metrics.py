"""Prometheus metrics of one agent, in its own registry (several agents can share a process).

Cilium's ``clustermesh`` subsystem metrics (reference §3.6), read from the remote-cluster layer's
``status()`` at scrape time, with Cilium's labels: ``source_cluster`` is this agent's cluster,
``source_node_name`` its node and ``target_cluster`` the remote:

- ``clustermesh_remote_clusters``, ``clustermesh_remote_cluster_readiness_status``,
  ``clustermesh_remote_cluster_failures``, ``clustermesh_remote_cluster_last_failure_ts``,
  ``clustermesh_remote_cluster_nodes``, ``clustermesh_remote_cluster_services``,
  ``clustermesh_remote_cluster_endpoints``.

Plus this project's counter of rejected remote entries,
``clustermesh_remote_cluster_invalid_entries_total{source_cluster, kind}``: here
``source_cluster`` is the cluster the entry *came from* (the remote), and ``kind`` one of
``nodes``, ``services``, ``endpoints``, ``identities``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from meshcore.clustermesh.types import RemoteClusterStatus

__all__ = ["SUBSYSTEM", "AgentMetrics"]

SUBSYSTEM = "clustermesh"
StatusSource = Callable[[], list[RemoteClusterStatus]]


def _timestamp(rfc3339: str | None) -> float:
    if not rfc3339:
        return 0.0
    try:
        return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


class _StatusCollector(Collector):
    """Turns the remote clusters' status records into gauges, at scrape time."""

    def __init__(self, status: StatusSource, local_cluster: str, node_name: str) -> None:
        self._status = status
        self._source = [local_cluster, node_name]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["source_cluster", "source_node_name", "target_cluster"]
        statuses = self._status()
        total = GaugeMetricFamily(
            f"{SUBSYSTEM}_remote_clusters",
            "Number of remote clusters this agent is configured to connect to",
            labels=labels[:2],
        )
        total.add_metric(self._source, len(statuses))
        yield total
        gauges: list[tuple[str, str, Callable[[RemoteClusterStatus], float]]] = [
            ("readiness_status", "Readiness of the remote cluster (1 ready, 0 not)", lambda s: float(s.ready)),
            ("failures", "Number of connection failures to the remote cluster", lambda s: float(s.num_failures)),
            (
                "last_failure_ts",
                "Unix time of the last failure of the remote cluster (0 if none)",
                lambda s: _timestamp(s.last_failure),
            ),
            ("nodes", "Number of nodes of the remote cluster", lambda s: float(s.counts.nodes)),
            ("services", "Number of shared services of the remote cluster", lambda s: float(s.counts.shared_services)),
            ("endpoints", "Number of ipcache entries of the remote cluster", lambda s: float(s.counts.endpoints)),
        ]
        for suffix, help_text, value in gauges:
            family = GaugeMetricFamily(f"{SUBSYSTEM}_remote_cluster_{suffix}", help_text, labels=labels)
            for status in statuses:
                family.add_metric([*self._source, status.name], value(status))
            yield family


class AgentMetrics:
    """The agent's registry and the metrics it fills (see the module docstring)."""

    def __init__(self, *, local_cluster: str, node_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.local_cluster = local_cluster
        self.node_name = node_name
        self.invalid_entries = Counter(
            f"{SUBSYSTEM}_remote_cluster_invalid_entries",
            "Remote entries rejected by validation (wrong cluster name or ID, identity out of range, "
            "malformed value), by the cluster they came from and kind",
            ["source_cluster", "kind"],
            registry=self.registry,
        )
        self._status_registered = False

    def count_invalid(self, cluster: str, kind: str) -> None:
        """Count one rejected entry of ``kind`` from remote ``cluster``."""
        self.invalid_entries.labels(source_cluster=cluster, kind=kind).inc()

    def invalid_count(self, cluster: str, kind: str) -> float:
        """The current value of the invalid-entries counter (0 if never counted)."""
        value = self.registry.get_sample_value(
            f"{SUBSYSTEM}_remote_cluster_invalid_entries_total", {"source_cluster": cluster, "kind": kind}
        )
        return value or 0.0

    def forget_cluster(self, cluster: str, kinds: tuple[str, ...]) -> None:
        """Drop the series of a cluster that was removed from the configuration."""
        for kind in kinds:
            try:
                self.invalid_entries.remove(cluster, kind)
            except KeyError:
                pass

    def watch_status(self, status: StatusSource) -> None:
        """Export the remote clusters' status gauges from ``status()`` (call once)."""
        if self._status_registered:
            raise RuntimeError("AgentMetrics.watch_status called twice")
        self._status_registered = True
        self.registry.register(_StatusCollector(status, self.local_cluster, self.node_name))
