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

import ipaddress
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from meshcore.wire import CIDR, ClusterService, IPIdentityPair, LabelSet, Node

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
]

ID_WORLD = 2
ID_HEALTH = 4
ID_REMOTE_NODE = 6
ID_INGRESS = 8
WIREGUARD_PORT = 51871
"""Cilium's WireGuard listen port (``wireguardTypes.ListenPort``)."""

SOURCE_RANK = {"node-ip": 0, "health": 1, "ingress": 2, "endpoint": 3, "pod-cidr": 4}
_NODE_IP_TYPES = ("InternalIP", "ExternalIP", "CiliumInternalIP")


@dataclass(frozen=True, slots=True)
class LocalInfo:
    """Who the agent is: its cluster (name and ID) and node."""

    cluster_name: str
    cluster_id: int
    node_name: str


@dataclass(frozen=True, slots=True)
class ClusterView:
    """One remote cluster's validated state, as the builder reads it."""

    name: str
    cluster_id: int
    nodes: Mapping[str, Node]
    ipcache: Mapping[str, IPIdentityPair]
    identities: Mapping[int, LabelSet]
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

    def to_json(self) -> dict[str, object]:
        return {
            "public-key": self.public_key,
            "endpoint": self.endpoint,
            "allowed-ips": list(self.allowed_ips),
            "cluster": self.cluster,
            "node": self.node,
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


# ---- helpers ----


def _prefix_key(prefix: str) -> tuple[int, bytes, int]:
    """Sort key of a canonical prefix: family, address bytes, length (inet_pton: C speed)."""
    ip, _, bits = prefix.partition("/")
    if ":" in ip:
        return (6, socket.inet_pton(socket.AF_INET6, ip), int(bits))
    return (4, socket.inet_pton(socket.AF_INET, ip), int(bits))


def _canonical_prefix(text: str) -> str | None:
    """``10.0.0.1`` -> ``10.0.0.1/32``; ``10.0.0.7/24`` -> ``10.0.0.0/24``; None if unparsable."""
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    return f"{net.network_address}/{net.prefixlen}"


def _host_prefix(ip: str) -> str | None:
    if not ip:
        return None
    return _canonical_prefix(ip)


def node_tunnel_ip(node: Node) -> str:
    """The IP other nodes tunnel to: the first InternalIP, else ExternalIP, IPv4 before IPv6;
    ``""`` when the node has none."""
    addresses = node.ip_addresses or []
    for family_v6 in (False, True):
        for wanted in ("InternalIP", "ExternalIP"):
            for addr in addresses:
                if addr.type == wanted and addr.ip and (":" in addr.ip) == family_v6:
                    return addr.ip
    return ""


def node_pod_cidrs(node: Node) -> list[str]:
    """A node's pod CIDRs (IPv4 then IPv6, primary then secondary), canonical prefixes."""
    return _pod_cidrs(node)


def _pod_cidrs(node: Node) -> list[str]:
    cidrs: list[CIDR | None] = [node.ipv4_alloc_cidr, *(node.ipv4_secondary_alloc_cidrs or [])]
    cidrs += [node.ipv6_alloc_cidr, *(node.ipv6_secondary_alloc_cidrs or [])]
    out = []
    for cidr in cidrs:
        if cidr is None or not cidr.ip or cidr.mask is None:
            continue
        prefix = _canonical_prefix(str(cidr))
        if prefix is not None:
            out.append(prefix)
    return out


def _node_ips(node: Node) -> list[tuple[str, str]]:
    """(address type, host prefix) of each node IP."""
    out = []
    for addr in node.ip_addresses or []:
        if addr.type in _NODE_IP_TYPES:
            prefix = _host_prefix(addr.ip)
            if prefix is not None:
                out.append((addr.type, prefix))
    return out


# (rank, cluster, record name) orders the claims on one prefix.
_Claim = tuple[tuple[int, str, str], IPCacheEntry]


def _node_entries(view: ClusterView, local: LocalInfo) -> Iterator[tuple[str, IPCacheEntry]]:
    remote = view.name != local.cluster_name
    for name, node in view.nodes.items():
        tunnel = node_tunnel_ip(node)
        claims: list[tuple[str, int, str, str]] = [
            (prefix, ID_REMOTE_NODE, tunnel if addr_type == "CiliumInternalIP" else "", "node-ip")
            for addr_type, prefix in _node_ips(node)
        ]
        if tunnel:  # nothing below is reachable without a node IP to tunnel to
            for ip, identity, source in (
                (node.ipv4_health_ip, ID_HEALTH, "health"),
                (node.ipv6_health_ip, ID_HEALTH, "health"),
                (node.ipv4_ingress_ip, ID_INGRESS, "ingress"),
                (node.ipv6_ingress_ip, ID_INGRESS, "ingress"),
            ):
                host = _host_prefix(ip)
                if host is not None:
                    claims.append((host, identity, tunnel, source))
            claims += [(prefix, ID_WORLD, tunnel, "pod-cidr") for prefix in _pod_cidrs(node)]
        for prefix, identity, tunnel_ep, source in claims:
            yield name, IPCacheEntry(
                prefix, identity, tunnel_ep, node.encryption_key, view.cluster_id, view.name, source, remote
            )


def _endpoint_entries(view: ClusterView, local: LocalInfo) -> Iterator[tuple[str, IPCacheEntry]]:
    remote = view.name != local.cluster_name
    for name, pair in view.ipcache.items():
        # A validated name is PrefixString(): a canonical host IP needs no parsing, only a CIDR does.
        prefix = _canonical_prefix(name) if "/" in name else f"{name}/{128 if ':' in name else 32}"
        if prefix is None:
            continue
        yield name, IPCacheEntry(
            prefix, pair.id, pair.host_ip, pair.key, view.cluster_id, view.name, "endpoint", remote
        )


def _build_ipcache(views: Iterable[ClusterView], local: LocalInfo) -> tuple[tuple[IPCacheEntry, ...], int]:
    best: dict[str, _Claim] = {}
    conflicts = 0
    for view in views:
        for source in (_node_entries(view, local), _endpoint_entries(view, local)):
            for record, entry in source:
                rank = (SOURCE_RANK[entry.source], view.name, record)
                current = best.get(entry.prefix)
                if current is None:
                    best[entry.prefix] = (rank, entry)
                    continue
                conflicts += 1
                if rank < current[0]:
                    best[entry.prefix] = (rank, entry)
    ordered = sorted(best, key=_prefix_key)
    return tuple(best[p][1] for p in ordered), conflicts


def _build_routes(views: Iterable[ClusterView]) -> tuple[NodeRoute, ...]:
    routes: dict[str, NodeRoute] = {}
    for view in views:
        for name in sorted(view.nodes):
            node = view.nodes[name]
            tunnel = node_tunnel_ip(node)
            if not tunnel:
                continue
            for prefix in _pod_cidrs(node):
                routes.setdefault(prefix, NodeRoute(prefix, tunnel, view.name, name))
    return tuple(routes[p] for p in sorted(routes, key=_prefix_key))


def _endpoint(ip: str) -> str:
    if not ip:
        return ""
    return f"[{ip}]:{WIREGUARD_PORT}" if ":" in ip else f"{ip}:{WIREGUARD_PORT}"


def _build_peers(views: Iterable[ClusterView]) -> tuple[tuple[WireGuardPeer, ...], int]:
    peers: dict[str, WireGuardPeer] = {}
    conflicts = 0
    for view in views:
        for name in sorted(view.nodes):
            node = view.nodes[name]
            if not node.wireguard_pub_key:
                continue
            if node.wireguard_pub_key in peers:
                conflicts += 1  # the first (cluster, node) keeps a key claimed twice
                continue
            allowed = set(_pod_cidrs(node)) | {prefix for _, prefix in _node_ips(node)}
            peers[node.wireguard_pub_key] = WireGuardPeer(
                public_key=node.wireguard_pub_key,
                endpoint=_endpoint(node_tunnel_ip(node)),
                allowed_ips=tuple(sorted(allowed, key=_prefix_key)),
                cluster=view.name,
                node=name,
            )
    ordered = sorted(peers.values(), key=lambda p: (p.cluster, p.node))
    return tuple(ordered), conflicts


def _backends(svc: ClusterService) -> tuple[Backend, ...]:
    unique: dict[tuple[str, int, str], Backend] = {}
    for address, ports in (svc.backends or {}).items():
        for port_name, l4 in sorted((ports or {}).items()):
            if l4 is None:
                continue
            # Several port names on one L4 address are one backend (service_merger.go).
            unique.setdefault((address, l4.port, l4.protocol), Backend(address, l4.port, l4.protocol, port_name))
    return tuple(sorted(unique.values()))


def _build_services(views: Iterable[ClusterView]) -> tuple[ServiceBackends, ...]:
    by_service: dict[str, list[ClusterBackends]] = {}
    for view in views:
        for name, svc in view.services.items():
            if not svc.shared:
                continue
            by_service.setdefault(name, []).append(ClusterBackends(view.name, view.cluster_id, _backends(svc)))
    return tuple(
        ServiceBackends(name, tuple(sorted(clusters, key=lambda c: c.cluster)))
        for name, clusters in sorted(by_service.items())
    )


def _build_identities(views: Iterable[ClusterView]) -> tuple[PolicyIdentity, ...]:
    identities: dict[int, PolicyIdentity] = {}
    for view in views:
        for identity, labels in view.identities.items():
            identities.setdefault(identity, PolicyIdentity(identity, tuple(str(lbl) for lbl in labels), view.name))
    return tuple(identities[i] for i in sorted(identities))


def build_desired(local: LocalInfo, clusters: Mapping[str, ClusterView]) -> DesiredState:
    """The datapath intents for ``clusters`` (remote clusters by name) as seen from ``local``.

    A cluster named like the local one is ignored: the agent programs local state elsewhere.
    """
    views = [clusters[name] for name in sorted(clusters) if name != local.cluster_name]
    ipcache, ip_conflicts = _build_ipcache(views, local)
    peers, peer_conflicts = _build_peers(views)
    return DesiredState(
        ipcache=ipcache,
        routes=_build_routes(views),
        wireguard_peers=peers,
        services=_build_services(views),
        identities=_build_identities(views),
        conflicts=ip_conflicts + peer_conflicts,
    )
