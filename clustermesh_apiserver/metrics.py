"""Prometheus metrics of one apiserver instance (its own registry, so several can share a process)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from meshcore.store.syncstore import SyncStoreStatus

NAMESPACE = "clustermesh_apiserver"


class _StoreCollector(Collector):
    """Reads the sync stores' own counters at scrape time."""

    def __init__(self, statuses: Callable[[], Mapping[str, SyncStoreStatus]]) -> None:
        self._statuses = statuses

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        written = CounterMetricFamily(
            f"{NAMESPACE}_kvstore_keys_written", "etcd operations (puts, deletes, canaries) written", labels=["job"]
        )
        errors = CounterMetricFamily(
            f"{NAMESPACE}_kvstore_sync_errors", "failed etcd writes (each retried)", labels=["job"]
        )
        desired = GaugeMetricFamily(f"{NAMESPACE}_kvstore_keys", "keys the store wants in etcd", labels=["job"])
        pending = GaugeMetricFamily(f"{NAMESPACE}_kvstore_pending", "keys waiting to be written", labels=["job"])
        for job, status in self._statuses().items():
            written.add_metric([job], status.writes)
            errors.add_metric([job], status.failures)
            desired.add_metric([job], status.desired)
            pending.add_metric([job], status.pending)
        yield from (written, errors, desired, pending)


class ApiServerMetrics:
    """Bootstrap time, kvstore writes and errors, Kubernetes events."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.bootstrap_seconds = Gauge(
            f"{NAMESPACE}_bootstrap_seconds",
            "seconds from start until every synced canary was written",
            registry=self.registry,
        )
        self.kubernetes_events = Counter(
            f"{NAMESPACE}_kubernetes_events",
            "Kubernetes events handed to the exporters",
            ["resource", "action"],
            registry=self.registry,
        )

    def watch_stores(self, statuses: Callable[[], Mapping[str, SyncStoreStatus]]) -> None:
        """Export the sync stores' counters (call once)."""
        self.registry.register(_StoreCollector(statuses))

    def count_event(self, resource: str, action: str) -> None:
        self.kubernetes_events.labels(resource=resource, action=action).inc()
