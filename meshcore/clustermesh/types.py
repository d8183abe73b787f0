"""The contract between the remote-cluster layer and what runs on top of it.

As in Cilium's ``pkg/clustermesh/common``, one layer owns everything about *being connected* to
remote clusters (the config directory, etcd connections with backoff, the remote cluster config,
heartbeat staleness, cluster-ID reservation, status), and a consumer injected as a factory decides
what to *do* with a connected cluster: the agent keeps validated caches, KVStoreMesh mirrors the
remote state into the local etcd. The layer never learns about nodes, services or BPF.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from meshcore.kvstore.types import KVStore
from meshcore.wire import ClusterConfig


class RemoteWork(Protocol):
    """What a consumer does with one remote cluster. One instance per cluster name, kept across
    reconnects (so its state survives and is reconciled by mark-and-sweep on the next run)."""

    async def run(self, kv: KVStore, config: ClusterConfig, synced: Callable[[], None]) -> None:
        """Work on a fresh connection until cancelled. Call ``synced()`` once every prefix has had
        its initial snapshot. Called again, on the same instance, after every reconnect."""
        ...

    def drain(self) -> None:
        """The cluster was removed from the configuration (not merely disconnected): forget all."""
        ...

    def counts(self) -> RemoteCounts:
        """What this cluster currently contributes, for status."""
        ...


WorkFactory = Callable[[str], RemoteWork]


@dataclass(frozen=True, slots=True)
class RemoteCounts:
    nodes: int = 0
    endpoints: int = 0
    identities: int = 0
    shared_services: int = 0
    service_exports: int = 0
    endpoint_slices: int = 0
    synced_nodes: bool = False
    synced_endpoints: bool = False
    synced_identities: bool = False
    synced_services: bool = False


@dataclass(frozen=True, slots=True)
class RemoteClusterConfigStatus:
    """``config`` of Cilium's RemoteCluster status."""

    required: bool = True
    retrieved: bool = False
    cluster_id: int = 0
    kvstoremesh: bool = False
    sync_canaries: bool = False
    service_exports_enabled: bool | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "required": self.required,
            "retrieved": self.retrieved,
            "cluster-id": self.cluster_id,
            "kvstoremesh": self.kvstoremesh,
            "sync-canaries": self.sync_canaries,
        }
        if self.service_exports_enabled is not None:
            out["service-exports-enabled"] = self.service_exports_enabled
        return out


@dataclass(frozen=True, slots=True)
class RemoteClusterStatus:
    """One remote cluster as ``cilium status -o json`` shows it under ``cluster-mesh.clusters[]``
    (Cilium's ``models.RemoteCluster``); :meth:`to_json` uses Cilium's JSON names."""

    name: str
    ready: bool
    connected: bool
    status: str
    counts: RemoteCounts = field(default_factory=RemoteCounts)
    config: RemoteClusterConfigStatus = field(default_factory=RemoteClusterConfigStatus)
    num_failures: int = 0
    last_failure: str | None = None  # RFC 3339

    def to_json(self) -> dict[str, object]:
        c = self.counts
        out: dict[str, object] = {
            "name": self.name,
            "ready": self.ready,
            "connected": self.connected,
            "status": self.status,
            "num-nodes": c.nodes,
            "num-shared-services": c.shared_services,
            "num-endpoints": c.endpoints,
            "num-identities": c.identities,
            "num-endpoint-slices": c.endpoint_slices,
            "num-service-exports": c.service_exports,
            "num-failures": self.num_failures,
            "synced": {
                "nodes": c.synced_nodes,
                "services": c.synced_services,
                "endpoints": c.synced_endpoints,
                "identities": c.synced_identities,
            },
            "config": self.config.to_json(),
        }
        if self.last_failure is not None:
            out["last-failure"] = self.last_failure
        return out
