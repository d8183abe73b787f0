"""The agent's typed view of every remote cluster: nodes, ipcache entries, identities, services.

Fed by the watch stores' observers (already validated, see :mod:`agent.validate`), indexed by
cluster, read by the desired-state builder through :meth:`MeshCaches.snapshot`. Every change bumps
:attr:`MeshCaches.version` and wakes :meth:`MeshCaches.wait_changed`, so a builder can debounce
bursts (a full sync is hundreds of thousands of upserts) into one recomputation.

Services follow Cilium's ``pkg/clustermesh/common/services.go``: a service that is not shared is
treated as absent, and one that stops being shared as deleted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Literal

from agent.desired import ClusterView
from agent.validate import RemoteIdentity
from meshcore.wire import ClusterService, IPIdentityPair, LabelSet, Node

__all__ = ["CacheKind", "ClusterCache", "MeshCaches", "CacheObserver"]

CacheKind = Literal["nodes", "services", "ipcache", "identities"]


@dataclass(slots=True)
class ClusterCache:
    """What one remote cluster contributes. Keys are the watch stores' names: node name,
    ``namespace/name``, IP prefix, numeric identity."""

    name: str
    cluster_id: int = 0
    nodes: dict[str, Node] = field(default_factory=dict)
    services: dict[str, ClusterService] = field(default_factory=dict)
    ipcache: dict[str, IPIdentityPair] = field(default_factory=dict)
    identities: dict[int, LabelSet] = field(default_factory=dict)

    def view(self) -> ClusterView:
        """A consistent copy for the (pure, possibly threaded) desired-state builder."""
        return ClusterView(
            name=self.name,
            cluster_id=self.cluster_id,
            nodes=dict(self.nodes),
            ipcache=dict(self.ipcache),
            identities=dict(self.identities),
            services=dict(self.services),
        )


class CacheObserver:
    """A watch-store observer writing one kind of one cluster into the caches.

    ``convert`` maps the store's value to what the cache keeps, or to ``None`` for "treat as
    deleted" (an unshared service). ``key`` maps the store's name to the cache key.
    """

    def __init__(
        self,
        caches: MeshCaches,
        table: dict[Any, Any],
        *,
        key: Callable[[str], Hashable],
        convert: Callable[[Any], object | None],
    ) -> None:
        self._caches = caches
        self._table = table
        self._key = key
        self._convert = convert

    def on_upsert(self, name: str, value: object) -> None:
        converted = self._convert(value)
        if converted is None:
            self.on_delete(name)
            return
        self._table[self._key(name)] = converted
        self._caches.touch()

    def on_delete(self, name: str) -> None:
        if self._table.pop(self._key(name), None) is not None:
            self._caches.touch()


def _node(value: object) -> Node | None:
    assert isinstance(value, Node)
    return value


def _pair(value: object) -> IPIdentityPair | None:
    assert isinstance(value, IPIdentityPair)
    return value


def _identity(value: object) -> LabelSet | None:
    assert isinstance(value, RemoteIdentity)
    return value.labels


def _service(value: object) -> ClusterService | None:
    assert isinstance(value, ClusterService)
    return value if value.shared else None


class MeshCaches:
    """Per-cluster caches plus a change signal (see the module docstring)."""

    def __init__(self) -> None:
        self._clusters: dict[str, ClusterCache] = {}
        self._changed = asyncio.Event()
        self.version = 0

    def touch(self) -> None:
        """Record a change: bump :attr:`version` and wake waiters."""
        self.version += 1
        self._changed.set()

    def cluster(self, name: str) -> ClusterCache:
        """The cache of ``name``, created empty on first use."""
        cache = self._clusters.get(name)
        if cache is None:
            cache = self._clusters[name] = ClusterCache(name)
        return cache

    def get(self, name: str) -> ClusterCache | None:
        return self._clusters.get(name)

    def clusters(self) -> list[str]:
        return sorted(self._clusters)

    def set_cluster_id(self, name: str, cluster_id: int) -> None:
        cache = self.cluster(name)
        if cache.cluster_id != cluster_id:
            cache.cluster_id = cluster_id
            self.touch()

    def remove_cluster(self, name: str) -> None:
        """Forget ``name`` altogether (after its stores were drained)."""
        if self._clusters.pop(name, None) is not None:
            self.touch()

    def observer(self, name: str, kind: CacheKind) -> CacheObserver:
        """The watch-store observer feeding ``kind`` of cluster ``name``."""
        cache = self.cluster(name)
        if kind == "nodes":
            return CacheObserver(self, cache.nodes, key=str, convert=_node)
        if kind == "services":
            return CacheObserver(self, cache.services, key=str, convert=_service)
        if kind == "ipcache":
            return CacheObserver(self, cache.ipcache, key=str, convert=_pair)
        return CacheObserver(self, cache.identities, key=int, convert=_identity)

    def snapshot(self) -> dict[str, ClusterView]:
        """A copy of every cluster's cache, consistent at :attr:`version`."""
        return {name: cache.view() for name, cache in sorted(self._clusters.items())}

    async def wait_changed(self, since: int) -> int:
        """Wait until :attr:`version` differs from ``since``; return the new version."""
        while self.version == since:
            self._changed.clear()
            await self._changed.wait()
        return self.version
