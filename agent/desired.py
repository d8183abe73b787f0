"""From the remote clusters' validated state to what the datapath should hold. Pure: no I/O, no
clock, no logging; the same input always gives the same output, in the same order.

What each remote record turns into (reference §3.3, Cilium's ``NodeManager.NodeUpdated`` and
``pkg/ipcache/kvstore.go``):

- an ipcache pair: its prefix -> its identity (already range-checked, host rewritten to
  remote-node), tunnel endpoint ``HostIP``, encrypt key ``Key``;
- a node: each of its IPs -> ``remote-node`` (6) (a tunnel endpoint only for the
  ``CiliumInternalIP``, as Cilium without host firewall or node encryption); each pod CIDR ->
  ``world`` (2) as a fallback tunnelled to the node; health IPs -> ``health`` (4); ingress IPs ->
  ``ingress`` (8); a route per pod CIDR via the node; a WireGuard peer when it publishes a key;
- a shared service: its backends, per cluster, keyed ``namespace/name`` (the merge with local
  services comes later);
- an identity: its numeric ID -> its label set, for policy.

The node's tunnel IP is its first ``InternalIP``, else ``ExternalIP``, IPv4 before IPv6.

When two sources claim one prefix the lower :data:`SOURCE_RANK` wins (node IPs, then health,
ingress, endpoints, pod CIDRs), then the lower cluster name, then the lower record name; the
losers are counted in :attr:`DesiredState.conflicts`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from agent.records import (
    ID_HEALTH,
    ID_INGRESS,
    ID_REMOTE_NODE,
    ID_WORLD,
    SOURCE_RANK,
    Claim,
    Labels,
    NodeRecord,
    endpoint_claim,
    identity_labels,
    ip_key,
    node_pod_cidrs,
    node_record,
    node_tunnel_ip,
    prefix_of,
    prefix_sort_key,
)
from meshcore.wire import ClusterService, IPIdentityPair, LabelSet, Node

__all__ = [
    "ID_WORLD",
    "ID_HEALTH",
    "ID_REMOTE_NODE",
    "ID_INGRESS",
    "WIREGUARD_PORT",
    "SOURCE_RANK",
    "LocalInfo",
    "ClusterView",
    "IPCacheEntry",
    "NodeRoute",
    "WireGuardPeer",
    "Backend",
    "ClusterBackends",
    "ServiceBackends",
    "PolicyIdentity",
    "DesiredState",
    "build_desired",
    "node_tunnel_ip",
    "node_pod_cidrs",
    "ipcache_entry",
    "node_routes",
    "node_peer",
    "cluster_backends",
    "policy_identity",
]

WIREGUARD_PORT = 51871
"""Cilium's WireGuard listen port (``wireguardTypes.ListenPort``)."""

_ = (ID_HEALTH, ID_INGRESS, ID_REMOTE_NODE, ID_WORLD, SOURCE_RANK)  # re-exported


@dataclass(frozen=True, slots=True)
class LocalInfo:
    """Who the agent is: its cluster (name and ID) and node."""

    cluster_name: str
    cluster_id: int
    node_name: str


@dataclass(frozen=True, slots=True)
class ClusterView:
    """One remote cluster's validated state, as the builder reads it: wire records (tests) or
    the caches' compact records (:mod:`agent.records`)."""

    name: str
    cluster_id: int
    nodes: Mapping[str, Node | NodeRecord]
    ipcache: Mapping[str, IPIdentityPair | Claim]
    identities: Mapping[int, LabelSet | Labels]
    services: Mapping[str, ClusterService]


@dataclass(frozen=True, slots=True)
class IPCacheEntry:
    """One ipcache map entry: ``prefix`` (always with ``/bits``) -> identity and where to send
    it. ``tunnel_endpoint`` is ``""`` when traffic is not tunnelled."""

    prefix: str
    identity: int
    tunnel_endpoint: str
    encrypt_key: int
    cluster_id: int
    cluster: str
    source: str
    remote_cluster: bool = True

    def to_json(self) -> dict[str, object]:
        return {
            "prefix": self.prefix,
            "identity": self.identity,
            "tunnel-endpoint": self.tunnel_endpoint,
            "encrypt-key": self.encrypt_key,
            "cluster-id": self.cluster_id,
            "cluster": self.cluster,
            "source": self.source,
            "remote-cluster": self.remote_cluster,
        }


@dataclass(frozen=True, slots=True)
class NodeRoute:
    """A remote pod CIDR reached through a remote node (the tunnel map / native route)."""

    prefix: str
    node_ip: str
    cluster: str
    node: str

    def to_json(self) -> dict[str, object]:
        return {"prefix": self.prefix, "node-ip": self.node_ip, "cluster": self.cluster, "node": self.node}


@dataclass(frozen=True, slots=True)
class WireGuardPeer:
    """A remote node as a WireGuard peer. ``endpoint`` is ``ip:port`` or ``""`` (unknown)."""

    public_key: str
    endpoint: str
    allowed_ips: tuple[str, ...]
    cluster: str
    node: str
    encryption_key: int = 0
    """The node's ``EncryptionKey``: 0 when it opted out of node-to-node encryption."""
    next_public_key: str = ""
    """The key the node announces it rotates to (``clustermesh.io/wg-next-pub-key``); ``""``: none."""

    def to_json(self) -> dict[str, object]:
        return {
            "public-key": self.public_key,
            "endpoint": self.endpoint,
            "allowed-ips": list(self.allowed_ips),
            "encryption-key": self.encryption_key,
            "cluster": self.cluster,
            "node": self.node,
            "next-public-key": self.next_public_key or None,
        }


@dataclass(frozen=True, slots=True, order=True)
class Backend:
    """One L4 backend address of a service."""

    address: str
    port: int
    protocol: str
    port_name: str

    def to_json(self) -> dict[str, object]:
        return {"address": self.address, "port": self.port, "protocol": self.protocol, "port-name": self.port_name}


@dataclass(frozen=True, slots=True)
class ClusterBackends:
    """The backends one remote cluster offers for a service."""

    cluster: str
    cluster_id: int
    backends: tuple[Backend, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "cluster": self.cluster,
            "cluster-id": self.cluster_id,
            "backends": [b.to_json() for b in self.backends],
        }


@dataclass(frozen=True, slots=True)
class ServiceBackends:
    """A global service's remote backends, keyed ``namespace/name``, clusters sorted by name."""

    service: str
    clusters: tuple[ClusterBackends, ...]

    def to_json(self) -> dict[str, object]:
        return {"service": self.service, "clusters": [c.to_json() for c in self.clusters]}


@dataclass(frozen=True, slots=True)
class PolicyIdentity:
    """A remote security identity as policy sees it."""

    id: int
    labels: tuple[str, ...]
    cluster: str

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "labels": list(self.labels), "cluster": self.cluster}


@dataclass(frozen=True, slots=True)
class DesiredState:
    """Everything the datapath should hold for the remote clusters, each part sorted."""

    ipcache: tuple[IPCacheEntry, ...] = ()
    routes: tuple[NodeRoute, ...] = ()
    wireguard_peers: tuple[WireGuardPeer, ...] = ()
    services: tuple[ServiceBackends, ...] = ()
    identities: tuple[PolicyIdentity, ...] = ()
    conflicts: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "ipcache": [e.to_json() for e in self.ipcache],
            "routes": [r.to_json() for r in self.routes],
            "wireguard-peers": [p.to_json() for p in self.wireguard_peers],
            "services": [s.to_json() for s in self.services],
            "identities": [i.to_json() for i in self.identities],
            "conflicts": self.conflicts,
        }


# ---- one record -> its part of the desired state (pure; shared with agent.incremental) ----


def ipcache_entry(key: str, claim: Claim, cluster_id: int) -> IPCacheEntry:
    """The ipcache entry a winning ``claim`` on prefix ``key`` asks for (remote clusters only)."""
    return IPCacheEntry(prefix_of(key), claim.id, claim.tunnel, claim.key, cluster_id, claim.cluster, claim.source)


def node_routes(node: NodeRecord) -> list[NodeRoute]:
    """A route per pod CIDR via the node (none without a tunnel IP)."""
    if not node.tunnel_ip:
        return []
    return [NodeRoute(prefix, node.tunnel_ip, node.cluster, node.name) for prefix in node.pod_cidrs]


def _endpoint(ip: str) -> str:
    if not ip:
        return ""
    return f"[{ip}]:{WIREGUARD_PORT}" if ":" in ip else f"{ip}:{WIREGUARD_PORT}"


def node_peer(node: NodeRecord) -> WireGuardPeer | None:
    """The node as a WireGuard peer, when it publishes a key."""
    if not node.wireguard_pub_key:
        return None
    allowed = set(node.pod_cidrs) | set(node.node_ips)
    return WireGuardPeer(
        public_key=node.wireguard_pub_key,
        endpoint=_endpoint(node.tunnel_ip),
        allowed_ips=tuple(sorted(allowed, key=prefix_sort_key)),
        cluster=node.cluster,
        node=node.name,
        encryption_key=node.encryption_key,
        next_public_key=node.wireguard_next_pub_key,
    )


def _backends(svc: ClusterService) -> tuple[Backend, ...]:
    unique: dict[tuple[str, int, str], Backend] = {}
    for address, ports in (svc.backends or {}).items():
        for port_name, l4 in sorted((ports or {}).items()):
            if l4 is None:
                continue
            # Several port names on one L4 address are one backend (service_merger.go).
            unique.setdefault((address, l4.port, l4.protocol), Backend(address, l4.port, l4.protocol, port_name))
    return tuple(sorted(unique.values()))


def cluster_backends(cluster: str, cluster_id: int, svc: ClusterService) -> ClusterBackends | None:
    """What one cluster offers for a service (None for an unshared one)."""
    if not svc.shared:
        return None
    return ClusterBackends(cluster, cluster_id, _backends(svc))


def policy_identity(identity: int, labels: LabelSet | Labels, cluster: str) -> PolicyIdentity:
    return PolicyIdentity(identity, identity_labels(labels), cluster)


# ---- the full build ----


def _node_records(view: ClusterView) -> list[NodeRecord]:
    return [node_record(view.name, name, node) for name, node in sorted(view.nodes.items())]


def _build_ipcache(views: Iterable[ClusterView]) -> tuple[tuple[IPCacheEntry, ...], int]:
    best: dict[str, Claim] = {}
    cluster_ids: dict[str, int] = {}
    conflicts = 0

    def claims(view: ClusterView) -> Iterator[tuple[str, Claim]]:
        nonlocal conflicts
        for node in _node_records(view):
            conflicts += node.duplicates
            yield from node.claims
        for name, pair in view.ipcache.items():
            key = ip_key(name)
            if key is not None:
                yield key, endpoint_claim(view.name, name, pair)

    for view in views:
        cluster_ids[view.name] = view.cluster_id
        for key, claim in claims(view):
            current = best.get(key)
            if current is None:
                best[key] = claim
                continue
            conflicts += 1
            if claim.order() < current.order():
                best[key] = claim
    ordered = sorted(best, key=lambda k: prefix_sort_key(prefix_of(k)))
    return tuple(ipcache_entry(k, best[k], cluster_ids[best[k].cluster]) for k in ordered), conflicts


def _build_routes(views: Iterable[ClusterView]) -> tuple[NodeRoute, ...]:
    routes: dict[str, NodeRoute] = {}
    for view in views:
        for node in _node_records(view):
            for route in node_routes(node):
                routes.setdefault(route.prefix, route)
    return tuple(routes[p] for p in sorted(routes, key=prefix_sort_key))


def _build_peers(views: Iterable[ClusterView]) -> tuple[tuple[WireGuardPeer, ...], int]:
    peers: dict[str, WireGuardPeer] = {}
    conflicts = 0
    for view in views:
        for node in _node_records(view):
            peer = node_peer(node)
            if peer is None:
                continue
            if peer.public_key in peers:
                conflicts += 1  # the first (cluster, node) keeps a key claimed twice
                continue
            peers[peer.public_key] = peer
    ordered = sorted(peers.values(), key=lambda p: (p.cluster, p.node))
    return tuple(ordered), conflicts


def _build_services(views: Iterable[ClusterView]) -> tuple[ServiceBackends, ...]:
    by_service: dict[str, list[ClusterBackends]] = {}
    for view in views:
        for name, svc in view.services.items():
            backends = cluster_backends(view.name, view.cluster_id, svc)
            if backends is not None:
                by_service.setdefault(name, []).append(backends)
    return tuple(
        ServiceBackends(name, tuple(sorted(clusters, key=lambda c: c.cluster)))
        for name, clusters in sorted(by_service.items())
    )


def _build_identities(views: Iterable[ClusterView]) -> tuple[PolicyIdentity, ...]:
    identities: dict[int, PolicyIdentity] = {}
    for view in views:
        for identity, labels in view.identities.items():
            if identity not in identities:
                identities[identity] = policy_identity(identity, labels, view.name)
    return tuple(identities[i] for i in sorted(identities))


def build_desired(local: LocalInfo, clusters: Mapping[str, ClusterView]) -> DesiredState:
    """The datapath intents for ``clusters`` (remote clusters by name) as seen from ``local``:
    the full rebuild (initial state, and the reference :mod:`agent.incremental` is checked against).

    A cluster named like the local one is ignored: the agent programs local state elsewhere.
    """
    views = [clusters[name] for name in sorted(clusters) if name != local.cluster_name]
    ipcache, ip_conflicts = _build_ipcache(views)
    peers, peer_conflicts = _build_peers(views)
    return DesiredState(
        ipcache=ipcache,
        routes=_build_routes(views),
        wireguard_peers=peers,
        services=_build_services(views),
        identities=_build_identities(views),
        conflicts=ip_conflicts + peer_conflicts,
    )
