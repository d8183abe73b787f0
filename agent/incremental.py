"""The desired state, kept up to date one change at a time: :class:`DesiredIndex`.

Cilium's agent applies each kvstore event to its ipcache as it arrives; so does this. A change is
"the record ``name`` of ``kind`` of ``cluster`` is now ``record``" (``None``: gone). The pure
functions of :mod:`agent.records` and :mod:`agent.desired` say what one record contributes (its
ipcache claims, routes, WireGuard peer, service backends, identity); the index keeps, per prefix
(per route prefix, peer key, service, identity), every current claim in conflict order, so
applying a change costs what that record touches, never the size of the mesh. What the changes
did to the winners is collected and handed out by :meth:`DesiredIndex.take_delta`.

The conflict rules are :func:`agent.desired.build_desired`'s (the full rebuild, used as the
reference in the property test ``incremental == full``): on an ipcache prefix the lowest
``(SOURCE_RANK, cluster, record)`` wins; a route prefix and a WireGuard key go to the lowest
``(cluster, node)``; an identity to the lowest cluster. Conflicts are counted the same way.

Memory: an endpoint's claim is the caches' own record (:class:`~agent.records.Claim`); the index
adds one dict slot per prefix and holds a list only where a prefix is contested.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from agent.desired import (
    ClusterBackends,
    ClusterView,
    DesiredState,
    IPCacheEntry,
    LocalInfo,
    NodeRoute,
    PolicyIdentity,
    ServiceBackends,
    WireGuardPeer,
    cluster_backends,
    ipcache_entry,
    node_peer,
    node_routes,
    policy_identity,
)
from agent.records import Claim, Labels, NodeRecord, endpoint_claim, identity_labels, ip_key, node_record, prefix_of
from agent.records import prefix_sort_key as _sort_key
from meshcore.wire import ClusterService

__all__ = ["CLUSTER", "DesiredDelta", "DesiredIndex"]

CLUSTER = "cluster"
"""The change kind for a cluster's ID (``record`` is the ID, or None when the cluster is gone)."""

_ENDPOINT_RANK = 3


@dataclass(slots=True)
class DesiredDelta:
    """What changed in the desired state: per key, the new value or None (removed).

    ``ipcache`` is keyed by ``/bits`` prefix, ``routes`` by prefix, ``wireguard_peers`` by public
    key, ``services`` by ``namespace/name``, ``identities`` by numeric ID. A key may be listed with
    a value equal to the old one (a consumer diffing against what it wrote drops those)."""

    ipcache: dict[str, IPCacheEntry | None] = field(default_factory=dict)
    routes: dict[str, NodeRoute | None] = field(default_factory=dict)
    wireguard_peers: dict[str, WireGuardPeer | None] = field(default_factory=dict)
    services: dict[str, ServiceBackends | None] = field(default_factory=dict)
    identities: dict[int, PolicyIdentity | None] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.ipcache or self.routes or self.wireguard_peers or self.services or self.identities)

    def merge(self, later: DesiredDelta) -> None:
        """Fold ``later`` into this delta (later values win)."""
        self.ipcache.update(later.ipcache)
        self.routes.update(later.routes)
        self.wireguard_peers.update(later.wireguard_peers)
        self.services.update(later.services)
        self.identities.update(later.identities)


def _node_order(item: NodeRoute | WireGuardPeer) -> tuple[str, str]:
    return (item.cluster, item.node)


class DesiredIndex:
    """The incrementally maintained desired state (see the module docstring)."""

    def __init__(self, local: LocalInfo) -> None:
        self.local = local
        self._reset()

    def _reset(self) -> None:
        self._cluster_ids: dict[str, int] = {}
        self._ip: dict[str, Claim | list[Claim]] = {}
        self._ip_contested = 0  # claims beyond the first on a prefix
        self._node_duplicates = 0
        self._nodes: dict[tuple[str, str], NodeRecord] = {}
        self._routes: dict[str, list[NodeRoute]] = {}
        self._peers: dict[str, list[WireGuardPeer]] = {}
        self._peer_contested = 0
        self._services: dict[str, dict[str, ClusterBackends]] = {}
        self._identities: dict[int, dict[str, Labels]] = {}
        self._touched_ip: set[str] = set()
        self._touched_routes: set[str] = set()
        self._touched_peers: set[str] = set()
        self._touched_services: set[str] = set()
        self._touched_identities: set[int] = set()

    # ---- input ----

    def load(self, clusters: Mapping[str, ClusterView]) -> None:
        """Start over from complete views (the initial sync). The load is not a delta: consumers
        read the loaded state whole (:meth:`ipcache_entries`, :meth:`state`)."""
        self._reset()
        ip = self._ip
        for name in sorted(clusters):
            if name == self.local.cluster_name:
                continue
            view = clusters[name]
            self.apply(name, CLUSTER, name, view.cluster_id)
            for node_name, node in view.nodes.items():
                self.apply(name, "nodes", node_name, node)
            for ip_name, pair in view.ipcache.items():  # the bulk of it: _endpoint without the checks
                key = ip_name if "/" not in ip_name else ip_key(ip_name)
                if key is None:
                    continue
                claim = endpoint_claim(name, ip_name, pair)
                if key in ip:
                    self._ip_add(key, claim)
                else:
                    ip[key] = claim
            for identity, labels in view.identities.items():
                self.apply(name, "identities", identity, labels)
            for svc_name, svc in view.services.items():
                self.apply(name, "services", svc_name, svc)
        self._clear_touched()

    def apply(self, cluster: str, kind: str, name: Hashable, record: Any) -> None:
        """Apply one change: ``record`` (a cache record, a wire record, or None when gone) is now
        what ``cluster`` holds under ``name`` for ``kind`` (``nodes``, ``ipcache``, ``services``,
        ``identities``, or :data:`CLUSTER` with the cluster ID as ``record``)."""
        if cluster == self.local.cluster_name:
            return  # the agent programs local state elsewhere
        if kind == "ipcache":
            assert isinstance(name, str)
            self._endpoint(cluster, name, None if record is None else endpoint_claim(cluster, name, record))
        elif kind == "nodes":
            assert isinstance(name, str)
            self._node(cluster, name, None if record is None else node_record(cluster, name, record))
        elif kind == "services":
            assert isinstance(name, str)
            self._service(cluster, name, record)
        elif kind == "identities":
            assert isinstance(name, int)
            self._identity(cluster, name, None if record is None else identity_labels(record))
        elif kind == CLUSTER:
            self._cluster(cluster, record)
        else:
            raise ValueError(f"unknown change kind {kind!r}")

    # ---- output ----

    def take_delta(self) -> DesiredDelta:
        """What the changes applied since the last call did to the desired state."""
        ids = self._cluster_ids
        delta = DesiredDelta()
        for key in self._touched_ip:
            winner = self._ip_winner(key)
            delta.ipcache[prefix_of(key)] = (
                None if winner is None else ipcache_entry(key, winner, ids.get(winner.cluster, 0))
            )
        for prefix in self._touched_routes:
            routes = self._routes.get(prefix)
            delta.routes[prefix] = routes[0] if routes else None
        for key in self._touched_peers:
            peers = self._peers.get(key)
            delta.wireguard_peers[key] = peers[0] if peers else None
        for name in self._touched_services:
            delta.services[name] = self._service_backends(name)
        for identity in self._touched_identities:
            delta.identities[identity] = self._policy_identity(identity)
        self._clear_touched()
        return delta

    def _clear_touched(self) -> None:
        self._touched_ip, self._touched_routes, self._touched_peers = set(), set(), set()
        self._touched_services, self._touched_identities = set(), set()

    def ipcache_entry(self, prefix: str) -> IPCacheEntry | None:
        """The winning entry of ``prefix`` (``/bits`` form or prefix key), if any."""
        key = ip_key(prefix)
        winner = self._ip_winner(key) if key is not None else None
        if winner is None or key is None:
            return None
        return ipcache_entry(key, winner, self._cluster_ids.get(winner.cluster, 0))

    def ipcache_entries(self) -> Iterable[IPCacheEntry]:
        """Every winning ipcache entry (unordered)."""
        ids = self._cluster_ids
        for key in list(self._ip):
            winner = self._ip_winner(key)
            if winner is not None:
                yield ipcache_entry(key, winner, ids.get(winner.cluster, 0))

    def wireguard_peers(self) -> list[WireGuardPeer]:
        """Every winning WireGuard peer (one per public key; unordered)."""
        return [peers[0] for peers in self._peers.values() if peers]

    def nodes(self) -> Mapping[tuple[str, str], NodeRecord]:
        """The remote clusters' node records by ``(cluster, name)`` (read-only view)."""
        return MappingProxyType(self._nodes)

    def routes(self) -> list[NodeRoute]:
        return [self._routes[p][0] for p in sorted(self._routes, key=_sort_key)]

    def services(self) -> list[ServiceBackends]:
        out = []
        for name in sorted(self._services):
            backends = self._service_backends(name)
            if backends is not None:
                out.append(backends)
        return out

    def identities(self) -> list[PolicyIdentity]:
        out = []
        for identity in sorted(self._identities):
            winner = self._policy_identity(identity)
            if winner is not None:
                out.append(winner)
        return out

    def counts(self) -> dict[str, int]:
        """Sizes of each part (for status), without materialising anything."""
        return {
            "ipcache": len(self._ip),
            "routes": len(self._routes),
            "wireguard-peers": len(self._peers),
            "services": len(self._services),
            "identities": len(self._identities),
        }

    @property
    def conflicts(self) -> int:
        return self._ip_contested + self._node_duplicates + self._peer_contested

    def state(self) -> DesiredState:
        """The whole desired state, materialised and sorted exactly as :func:`build_desired`'s."""
        ipcache = sorted(self.ipcache_entries(), key=lambda e: _sort_key(e.prefix))
        peers = sorted((p[0] for p in self._peers.values()), key=_node_order)
        return DesiredState(
            ipcache=tuple(ipcache),
            routes=tuple(self.routes()),
            wireguard_peers=tuple(peers),
            services=tuple(self.services()),
            identities=tuple(self.identities()),
            conflicts=self.conflicts,
        )

    # ---- internals ----

    def _ip_winner(self, key: str) -> Claim | None:
        current = self._ip.get(key)
        if isinstance(current, list):
            return current[0]
        return current

    def _ip_add(self, key: str, claim: Claim) -> None:
        self._touched_ip.add(key)
        current = self._ip.get(key)
        if current is None:
            self._ip[key] = claim
            return
        self._ip_contested += 1
        if isinstance(current, list):
            insort(current, claim, key=Claim.order)
        else:
            self._ip[key] = sorted((current, claim), key=Claim.order)

    def _ip_remove(self, key: str, rank: int, cluster: str, record: str) -> None:
        current = self._ip.get(key)
        if current is None:
            return
        wanted = (rank, cluster, record)
        if isinstance(current, list):
            for i, claim in enumerate(current):
                if claim.order() == wanted:
                    del current[i]
                    self._ip_contested -= 1
                    self._touched_ip.add(key)
                    break
            if len(current) == 1:
                self._ip[key] = current[0]
        elif current.order() == wanted:
            del self._ip[key]
            self._touched_ip.add(key)

    def _endpoint(self, cluster: str, name: str, claim: Claim | None) -> None:
        key = ip_key(name)
        if key is None:
            return
        current = self._ip.get(key)
        if claim is not None and isinstance(current, Claim) and current.order() == claim.order():
            if current != claim:  # the common update: the only claim, replaced in place
                self._ip[key] = claim
                self._touched_ip.add(key)
            return
        self._ip_remove(key, _ENDPOINT_RANK, cluster, name)
        if claim is not None:
            self._ip_add(key, claim)

    def _node(self, cluster: str, name: str, node: NodeRecord | None) -> None:
        old = self._nodes.pop((cluster, name), None)
        if old is not None:
            self._node_duplicates -= old.duplicates
            for key, claim in old.claims:
                self._ip_remove(key, claim.rank, cluster, name)
            for route in node_routes(old):
                self._drop(self._routes, route.prefix, cluster, name, self._touched_routes)
            peer = node_peer(old)
            if peer is not None:
                self._peer_contested -= self._drop(self._peers, peer.public_key, cluster, name, self._touched_peers)
        if node is None:
            return
        self._nodes[(cluster, name)] = node
        self._node_duplicates += node.duplicates
        for key, claim in node.claims:
            self._ip_add(key, claim)
        for route in node_routes(node):
            self._put(self._routes, route.prefix, route, self._touched_routes)
        peer = node_peer(node)
        if peer is not None:
            self._peer_contested += self._put(self._peers, peer.public_key, peer, self._touched_peers)

    @staticmethod
    def _put(table: dict[str, list[Any]], key: str, item: Any, touched: set[str]) -> int:
        """Add ``item`` to ``key``'s (cluster, node)-ordered list; 1 if the key was contested."""
        touched.add(key)
        items = table.get(key)
        if items is None:
            table[key] = [item]
            return 0
        insort(items, item, key=_node_order)
        return 1

    @staticmethod
    def _drop(table: dict[str, list[Any]], key: str, cluster: str, node: str, touched: set[str]) -> int:
        """Remove (cluster, node)'s item from ``key``'s list; 1 if the key stays (was contested)."""
        items = table.get(key)
        if items is None:
            return 0
        for i, item in enumerate(items):
            if item.cluster == cluster and item.node == node:
                del items[i]
                touched.add(key)
                break
        else:
            return 0
        if items:
            return 1
        del table[key]
        return 0

    def _service(self, cluster: str, name: str, svc: ClusterService | None) -> None:
        backends = None if svc is None else cluster_backends(cluster, self._cluster_ids.get(cluster, 0), svc)
        clusters = self._services.get(name)
        if backends is None:
            if clusters is not None and clusters.pop(cluster, None) is not None:
                self._touched_services.add(name)
                if not clusters:
                    del self._services[name]
            return
        if clusters is None:
            clusters = self._services[name] = {}
        clusters[cluster] = backends
        self._touched_services.add(name)

    def _service_backends(self, name: str) -> ServiceBackends | None:
        clusters = self._services.get(name)
        if not clusters:
            return None
        return ServiceBackends(name, tuple(clusters[c] for c in sorted(clusters)))

    def _identity(self, cluster: str, identity: int, labels: Labels | None) -> None:
        owners = self._identities.get(identity)
        if labels is None:
            if owners is not None and owners.pop(cluster, None) is not None:
                self._touched_identities.add(identity)
                if not owners:
                    del self._identities[identity]
            return
        if owners is None:
            owners = self._identities[identity] = {}
        owners[cluster] = labels
        self._touched_identities.add(identity)

    def _policy_identity(self, identity: int) -> PolicyIdentity | None:
        owners = self._identities.get(identity)
        if not owners:
            return None
        cluster = min(owners)
        return policy_identity(identity, owners[cluster], cluster)

    def _cluster(self, cluster: str, cluster_id: int | None) -> None:
        if cluster_id is None:
            self._cluster_ids.pop(cluster, None)
            return
        old_id = self._cluster_ids.get(cluster)
        self._cluster_ids[cluster] = cluster_id
        if old_id is None or old_id == cluster_id:
            return  # a cluster's ID is set before its first record arrives (see MeshCaches)
        # Rare (the caches drain a cluster whose ID changes first): re-emit what names its ID.
        for key in list(self._ip):
            winner = self._ip_winner(key)
            if winner is not None and winner.cluster == cluster:
                self._touched_ip.add(key)
        for name, clusters in self._services.items():
            old = clusters.get(cluster)
            if old is not None:
                clusters[cluster] = ClusterBackends(cluster, cluster_id, old.backends)
                self._touched_services.add(name)
