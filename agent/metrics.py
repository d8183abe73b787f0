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

WireGuard (``--encryption wireguard``, :meth:`AgentMetrics.watch_encryption`), read from the
node datapath's encryption status at scrape time (the device is read every 2 s), every series with
``source_cluster`` and ``source_node_name``; per peer also ``peer_node`` (``cluster/name``) and
``peer_public_key`` (its first :data:`KEY_PREFIX` characters):

- ``clustermesh_wireguard_enabled`` (1 when this node runs WireGuard, 0 when it does not, e.g.
  switched off by its ``clustermesh.io/encryption=disabled`` label);
- ``clustermesh_wireguard_peers``, ``clustermesh_wireguard_plaintext_peers`` (nodes without a key);
- ``clustermesh_wireguard_key_age_seconds`` (age of the key file), and the counter
  ``clustermesh_wireguard_key_rotations_total`` (committed rotations since the agent started);
- per peer: ``clustermesh_wireguard_peer_latest_handshake_age_seconds`` (absent before the first
  handshake), the counters ``clustermesh_wireguard_peer_received_bytes_total`` and
  ``clustermesh_wireguard_peer_sent_bytes_total`` (the device's), and
  ``clustermesh_wireguard_peer_in_sync`` (1 when the device holds the peer as desired).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from meshcore.clustermesh.types import RemoteClusterStatus

__all__ = ["KEY_PREFIX", "SUBSYSTEM", "AgentMetrics", "wireguard_metrics"]

SUBSYSTEM = "clustermesh"
KEY_PREFIX = 8
"""Characters of a peer's public key in the ``peer_public_key`` label."""
StatusSource = Callable[[], list[RemoteClusterStatus]]
EncryptionSource = Callable[[], Mapping[str, Any] | None]


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


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def wireguard_metrics(status: Mapping[str, Any] | None, source: list[str]) -> list[Metric]:
    """The WireGuard metric families of one encryption status (the ``datapath.encryption``
    section of ``GET /v1/status``; see the module docstring), labelled with ``source`` (this
    cluster and node). Pure; nothing for a status of ``None``."""
    if not status:
        return []
    base = ["source_cluster", "source_node_name"]
    prefix = f"{SUBSYSTEM}_wireguard"
    on = status.get("mode") == "wireguard"
    peers = [p for p in status.get("peers") or [] if isinstance(p, Mapping)]

    def gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(f"{prefix}_{name}", help_text, labels=base)
        family.add_metric(source, value)
        return family

    out: list[Metric] = [
        gauge("enabled", "1 when this node runs WireGuard, 0 when not (e.g. disabled by its label)", float(on)),
        gauge("peers", "Number of WireGuard peers configured on this node", float(len(peers))),
        gauge("plaintext_peers", "Number of mesh nodes without a WireGuard key (traffic to them is not encrypted)",
              float(_number(status.get("plaintext-peer-count")) or 0)),
    ]
    key_age = _number(status.get("key-file-age-seconds"))
    if on and key_age is not None:
        out.append(gauge("key_age_seconds", "Seconds since this node's WireGuard key file was written", key_age))
    rotations = CounterMetricFamily(f"{prefix}_key_rotations", "WireGuard key rotations of this node", labels=base)
    rotations.add_metric(source, float(_number(status.get("key-rotations")) or 0))
    out.append(rotations)
    labels = [*base, "peer_node", "peer_public_key"]
    handshake = GaugeMetricFamily(f"{prefix}_peer_latest_handshake_age_seconds",
                                  "Seconds since the latest handshake with the peer (absent before the first)",
                                  labels=labels)
    rx = CounterMetricFamily(f"{prefix}_peer_received_bytes", "Bytes received from the peer", labels=labels)
    tx = CounterMetricFamily(f"{prefix}_peer_sent_bytes", "Bytes sent to the peer", labels=labels)
    in_sync = GaugeMetricFamily(f"{prefix}_peer_in_sync", "1 when the device holds the peer as desired",
                                labels=labels)
    for peer in peers:
        values = [*source, str(peer.get("node") or ""), str(peer.get("public-key") or "")[:KEY_PREFIX]]
        age = _number(peer.get("latest-handshake-seconds-ago"))
        if age is not None:
            handshake.add_metric(values, age)
        rx.add_metric(values, float(_number(peer.get("rx-bytes")) or 0))
        tx.add_metric(values, float(_number(peer.get("tx-bytes")) or 0))
        in_sync.add_metric(values, float(bool(peer.get("in-sync"))))
    return [*out, handshake, rx, tx, in_sync]


class _EncryptionCollector(Collector):
    """The WireGuard families (:func:`wireguard_metrics`), read at scrape time."""

    def __init__(self, status: EncryptionSource, local_cluster: str, node_name: str) -> None:
        self._status = status
        self._source = [local_cluster, node_name]

    def collect(self) -> Iterator[Metric]:
        yield from wireguard_metrics(self._status(), self._source)


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
        self._encryption_registered = False

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

    def watch_encryption(self, status: EncryptionSource) -> None:
        """Export the WireGuard metrics from ``status()``, the node datapath's encryption status
        (call once)."""
        if self._encryption_registered:
            raise RuntimeError("AgentMetrics.watch_encryption called twice")
        self._encryption_registered = True
        self.registry.register(_EncryptionCollector(status, self.local_cluster, self.node_name))
