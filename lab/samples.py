"""Cilium-format remote cluster contents, for tests, benchmarks and demos.

:func:`cluster_records` builds what a remote cluster's clustermesh-apiserver (state layout) or a
KVStoreMesh (cache layout) would hold for a synthetic cluster, as (key, value bytes) pairs encoded by
:mod:`meshcore.wire`; :func:`seed_cluster` writes them, plus the cluster config and the synced
canaries, with plain puts.

Addressing of cluster ``c`` (ID ``c``), node ``n``, endpoint ``e`` (IPv4 only):
node InternalIP ``172.(16+c//16).((c%16)*16+n//256).(n%256)``, pod CIDR ``10.c.n.0/24`` (at most 256
nodes), endpoint ``10.c.n.(e+1)``, identities ``(c << 16) + 1000 + k``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass

from meshcore.kvstore.types import KVStore, PutOp
from meshcore.wire import (
    CIDR,
    ClusterConfig,
    ClusterConfigCapabilities,
    ClusterService,
    IPIdentityPair,
    L4Addr,
    LabelSet,
    Node,
    NodeAddress,
    PortConfiguration,
)
from meshcore.wire import keys as wirekeys

__all__ = [
    "SampleSize",
    "sample_node",
    "sample_pair",
    "sample_identity",
    "sample_service",
    "cluster_records",
    "seed_cluster",
]

_MASK24 = bytes([255, 255, 255, 0])


@dataclass(frozen=True, slots=True)
class SampleSize:
    """How much one synthetic cluster holds."""

    nodes: int = 3
    endpoints_per_node: int = 2
    identities: int = 4
    services: int = 2


def node_ip(cluster_id: int, n: int) -> str:
    """The InternalIP of node ``n`` of cluster ``cluster_id``."""
    return f"172.{16 + cluster_id // 16}.{(cluster_id % 16) * 16 + n // 256}.{n % 256}"


def sample_identity_id(cluster_id: int, k: int) -> int:
    """The ``k``-th identity of the cluster, inside its range (255 mode)."""
    return (cluster_id << 16) + 1000 + k


def sample_node(cluster: str, cluster_id: int, n: int, *, wireguard: bool = True) -> Node:
    """Node ``n`` of the cluster, shaped like Cilium's ciliumnodes fixture."""
    ip = node_ip(cluster_id, n)
    key = base64.b64encode(bytes([cluster_id % 256, n % 256]) * 16).decode() if wireguard else ""
    return Node(
        name=f"{cluster}-node-{n}",
        cluster=cluster,
        ip_addresses=[
            NodeAddress("InternalIP", ip),
            NodeAddress("CiliumInternalIP", f"10.{cluster_id}.{n}.254"),
        ],
        ipv4_alloc_cidr=CIDR(f"10.{cluster_id}.{n}.0", _MASK24),
        ipv4_health_ip=f"10.{cluster_id}.{n}.253",
        cluster_id=cluster_id,
        source="custom-resource",
        labels={"kubernetes.io/hostname": f"{cluster}-node-{n}"},
        annotations={"network.cilium.io/wg-pub-key": key} if key else {},
        wireguard_pub_key=key,
        boot_id=f"boot-{cluster_id}-{n}",
    )


def sample_pair(cluster_id: int, n: int, e: int, identities: int) -> IPIdentityPair:
    """Endpoint ``e`` on node ``n``; its identity cycles through the cluster's identities."""
    return IPIdentityPair(
        ip=f"10.{cluster_id}.{n}.{e + 1}",
        host_ip=node_ip(cluster_id, n),
        id=sample_identity_id(cluster_id, (n + e) % max(identities, 1)),
        key=0,
        k8s_namespace="default",
        k8s_pod_name=f"pod-{n}-{e}",
    )


def sample_identity(cluster: str, k: int) -> LabelSet:
    """The labels of identity ``k``: an app label, the namespace and the cluster label."""
    return LabelSet.from_strings(
        [
            f"k8s:app=app-{k}",
            f"k8s:io.cilium.k8s.policy.cluster={cluster}",
            "k8s:io.kubernetes.pod.namespace=default",
        ]
    )


def sample_service(cluster: str, cluster_id: int, s: int, nodes: int) -> ClusterService:
    """Global service ``svc-s`` with one backend per node (at most 4)."""
    backends: dict[str, PortConfiguration | None] = {
        f"10.{cluster_id}.{n}.1": {"http": L4Addr("TCP", 8080)} for n in range(min(nodes, 4))
    }
    return ClusterService(
        cluster=cluster,
        namespace="default",
        name=f"svc-{s}",
        frontends={f"10.96.0.{s + 10}": {"http": L4Addr("TCP", 80)}},
        backends=backends,
        include_external=True,
        shared=True,
        cluster_id=cluster_id,
    )


def cluster_records(
    cluster: str, cluster_id: int, size: SampleSize, *, cached: bool = False
) -> Iterator[tuple[str, bytes]]:
    """Every (key, value) of the cluster's nodes, endpoints, identities and services."""
    for n in range(size.nodes):
        node = sample_node(cluster, cluster_id, n)
        key = wirekeys.cache_node_key(cluster, node.name) if cached else wirekeys.node_key(cluster, node.name)
        yield key, node.encode()
        for e in range(size.endpoints_per_node):
            pair = sample_pair(cluster_id, n, e, size.identities)
            prefix = pair.prefix_string()
            yield (wirekeys.cache_ip_key(cluster, prefix) if cached else wirekeys.ip_key(prefix)), pair.encode()
    for k in range(size.identities):
        ident = sample_identity_id(cluster_id, k)
        key = wirekeys.identity_cache_key(cluster, ident) if cached else wirekeys.identity_key(ident)
        yield key, sample_identity(cluster, k).encode()
    for s in range(size.services):
        svc = sample_service(cluster, cluster_id, s, size.nodes)
        ns, name = svc.namespace, svc.name
        key = (
            wirekeys.cache_service_key(cluster, ns, name) if cached else wirekeys.service_key(cluster, ns, name)
        )
        yield key, svc.encode()


def canary_keys(cluster: str, *, cached: bool = False) -> list[str]:
    """The synced canaries a writer of the cluster's data puts once it is complete."""
    if cached:
        return wirekeys.kvstoremesh_synced_keys(cluster)
    return wirekeys.apiserver_synced_keys(cluster)


async def seed_cluster(
    kv: KVStore,
    cluster: str,
    cluster_id: int,
    size: SampleSize,
    *,
    cached: bool = False,
    canaries: bool = True,
    batch: int = 128,
) -> ClusterConfig:
    """Write the cluster's records, then its cluster config, a heartbeat and (with ``canaries``)
    its synced canaries; returns the config written."""
    ops = [PutOp(k, v) for k, v in cluster_records(cluster, cluster_id, size, cached=cached)]
    for i in range(0, len(ops), batch):
        await kv.txn(ops[i : i + batch])
    config = ClusterConfig(
        id=cluster_id,
        capabilities=ClusterConfigCapabilities(synced_canaries=canaries, cached=cached, max_connected_clusters=255),
    )
    await kv.put(wirekeys.cluster_config_key(cluster), config.encode())
    await kv.put(wirekeys.HEARTBEAT, b"2026-01-01T00:00:00Z")
    if canaries:
        for key in canary_keys(cluster, cached=cached):
            await kv.put(key, b"2026-01-01T00:00:00Z")
    return config
