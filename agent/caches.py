"""The agent's typed view of every remote cluster: nodes, ipcache entries, identities, services,
and the per-key changes the desired state follows.

Fed by the watch stores' observers (already validated, see :mod:`agent.validate`), indexed by
cluster. What is kept per entry is a compact record (:mod:`agent.records`), not the decoded wire
object. Every change bumps :attr:`MeshCaches.version`; once :meth:`MeshCaches.track` was called,
it is also recorded as a :class:`CacheChange` (coalesced per key: a key changed twice before it
was taken is one change) for :meth:`MeshCaches.next_changes`, the one place where the agent's
changes enter. :meth:`MeshCaches.snapshot` gives complete views for the full rebuild.

Services follow Cilium's ``pkg/clustermesh/common/services.go``: a service that is not shared is
treated as absent, and one that stops being shared as deleted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from agent.desired import ClusterView
from agent.incremental import CLUSTER, DesiredDelta, DesiredIndex
from agent.records import Claim, Interner, Labels, NodeRecord, endpoint_claim, identity_labels, node_record
from agent.validate import RemoteIdentity
from meshcore.wire import ClusterService, IPIdentityPair, Node

__all__ = ["CacheKind", "CacheChange", "ClusterCache", "MeshCaches", "CacheObserver", "apply_changes"]

CacheKind = Literal["nodes", "services", "ipcache", "identities"]


class CacheChange(NamedTuple):
    """The record ``key`` of ``kind`` of ``cluster`` changed (or the cluster's ID, for kind
    ``"cluster"``); read the record itself with :meth:`MeshCaches.record`."""

    cluster: str
    kind: str
    key: Hashable


@dataclass(slots=True)
class ClusterCache:
    """What one remote cluster contributes. Keys are the watch stores' names: node name,
    ``namespace/name``, ipcache key suffix, numeric identity."""

    name: str
    cluster_id: int = 0
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    services: dict[str, ClusterService] = field(default_factory=dict)
    ipcache: dict[str, Claim] = field(default_factory=dict)
    identities: dict[int, Labels] = field(default_factory=dict)

    def view(self) -> ClusterView:
        """A consistent copy for the (pure) full desired-state build."""
        return ClusterView(
            name=self.name,
            cluster_id=self.cluster_id,
            nodes=dict(self.nodes),
            ipcache=dict(self.ipcache),
            identities=dict(self.identities),
            services=dict(self.services),
        )

    def table(self, kind: str) -> dict[Any, Any]:
        if kind == "nodes":
            return self.nodes
        if kind == "services":
            return self.services
        if kind == "ipcache":
            return self.ipcache
        if kind == "identities":
            return self.identities
        raise ValueError(f"unknown cache kind {kind!r}")


class CacheObserver:
    """A watch-store observer writing one kind of one cluster into the caches.

    ``convert(name, value)`` maps the store's value to what the cache keeps, or to ``None`` for
    "treat as deleted" (an unshared service). ``key`` maps the store's name to the cache key.
    """

    def __init__(
        self,
        caches: MeshCaches,
        table: dict[Any, Any],
        *,
        key: Callable[[str], Hashable],
        convert: Callable[[str, Any], object | None],
        cluster: str = "",
        kind: str = "",
    ) -> None:
        self._caches = caches
        self._table = table
        self._key = key
        self._convert = convert
        self._cluster = cluster
        self._kind = kind

    def on_upsert(self, name: str, value: object) -> None:
        converted = self._convert(name, value)
        if converted is None:
            self.on_delete(name)
            return
        key = self._key(name)
        table = self._table
        if table.get(key) == converted:
            return  # rewritten with the same content (a relist, a KVStoreMesh resync): no change
        table[key] = converted
        self._caches.touch_key(self._cluster, self._kind, key)

    def on_delete(self, name: str) -> None:
        key = self._key(name)
        if self._table.pop(key, None) is not None:
            self._caches.touch_key(self._cluster, self._kind, key)


class MeshCaches:
    """Per-cluster caches plus the change feed (see the module docstring)."""

    def __init__(self) -> None:
        self._clusters: dict[str, ClusterCache] = {}
        self._changed = asyncio.Event()
        self._pending: dict[CacheChange, None] | None = None  # None: not tracking yet
        self.interner = Interner()
        self.version = 0

    def touch(self, change: CacheChange | None = None) -> None:
        """Record a change: bump :attr:`version`, remember ``change`` (when tracking), wake waiters."""
        self.version += 1
        if change is not None and self._pending is not None:
            self._pending[change] = None
        self._changed.set()

    def touch_key(self, cluster: str, kind: str, key: Hashable) -> None:
        """:meth:`touch` for one record, without making a :class:`CacheChange` while nothing
        tracks changes (the initial sync: 300k records at 250 clusters)."""
        self.version += 1
        if self._pending is not None:
            self._pending[CacheChange(cluster, kind, key)] = None
        self._changed.set()

    def track(self) -> None:
        """From now on, record every change for :meth:`next_changes` (call it right before
        loading the full state, in the same step of the event loop)."""
        if self._pending is None:
            self._pending = {}

    def take_changes(self) -> list[CacheChange]:
        """The changes recorded since the last call, oldest first."""
        if not self._pending:
            return []
        changes = list(self._pending)
        self._pending = {}
        return changes

    async def next_changes(self) -> list[CacheChange]:
        """Wait for at least one recorded change; return all recorded so far."""
        while not self._pending:
            self._changed.clear()
            await self._changed.wait()
        return self.take_changes()

    def record(self, change: CacheChange) -> Any:
        """The current record ``change`` names (the cluster ID for a cluster change), or None."""
        cache = self._clusters.get(change.cluster)
        if cache is None:
            return None
        if change.kind == CLUSTER:
            return cache.cluster_id
        return cache.table(change.kind).get(change.key)

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
            self.touch(CacheChange(name, CLUSTER, name))

    def remove_cluster(self, name: str) -> None:
        """Forget ``name`` altogether (after its stores were drained)."""
        if self._clusters.pop(name, None) is not None:
            self.touch(CacheChange(name, CLUSTER, name))

    def observer(self, name: str, kind: CacheKind) -> CacheObserver:
        """The watch-store observer feeding ``kind`` of cluster ``name``."""
        cache = self.cluster(name)
        interner = self.interner
        cluster = interner.text(name)

        def node(key: str, value: Any) -> NodeRecord:
            assert isinstance(value, Node)
            return node_record(cluster, key, value, interner)

        def pair(key: str, value: Any) -> Claim:
            assert isinstance(value, IPIdentityPair)
            return endpoint_claim(cluster, key, value, interner)

        def identity(key: str, value: Any) -> Labels:
            assert isinstance(value, RemoteIdentity)
            return identity_labels(value.labels)

        def service(key: str, value: Any) -> ClusterService | None:
            assert isinstance(value, ClusterService)
            return value if value.shared else None

        convert: dict[str, Callable[[str, Any], object | None]] = {
            "nodes": node, "services": service, "ipcache": pair, "identities": identity,
        }
        return CacheObserver(
            self, cache.table(kind), key=int if kind == "identities" else str, convert=convert[kind],
            cluster=cluster, kind=kind,
        )

    def snapshot(self, *, copy: bool = True) -> dict[str, ClusterView]:
        """Every cluster's cache as a view, consistent at :attr:`version`: a copy, or (``copy=False``,
        for a synchronous reader such as the initial load) the live tables themselves."""
        if copy:
            return {name: cache.view() for name, cache in sorted(self._clusters.items())}
        return {
            name: ClusterView(name, c.cluster_id, c.nodes, c.ipcache, c.identities, c.services)
            for name, c in sorted(self._clusters.items())
        }

    async def wait_changed(self, since: int) -> int:
        """Wait until :attr:`version` differs from ``since``; return the new version."""
        while self.version == since:
            self._changed.clear()
            await self._changed.wait()
        return self.version


def apply_changes(index: DesiredIndex, caches: MeshCaches, changes: list[CacheChange]) -> DesiredDelta:
    """Apply ``changes`` (from :meth:`MeshCaches.next_changes`) to ``index`` with the records
    ``caches`` holds now; the delta they made. Cluster IDs go first: a cluster's ID is set before
    its records arrive."""
    for change in sorted(changes, key=lambda c: c.kind != CLUSTER):
        index.apply(change.cluster, change.kind, change.key, caches.record(change))
    return index.take_delta()
