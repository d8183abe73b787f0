"""ClusterMesh scale fixture: many mocked remote clusters in ONE etcd, as Cilium's scale test does.

Cilium's scale test (``cmapisrv-mock``) stands in for hundreds of clusters with one etcd that
holds every cluster's state in the KVStoreMesh cache layout; the agent under test gets one config
file per cluster, all pointing at that etcd, and connects to each "cluster" separately. Per
mocked cluster ``<c>`` (IDs 1..N) :func:`populate` writes:

- ``cilium/cache/nodes/v1/<c>/<node>``            Node JSON (InternalIP, pod CIDR, health IP)
- ``cilium/cache/identities/v1/<c>/id/<id>``      label lists, IDs in the cluster's range
- ``cilium/cache/ip/v1/<c>/<ip>``                 IPIdentityPair JSON, host IP = one of its nodes
- ``cilium/synced/<c>/cilium/cache/{nodes,services,identities,ip,serviceexports}/v1``
- ``cilium/cluster-config/<c>``                   ``cached`` and ``syncedCanaries`` set

data first, then the canaries, then the configs (so an agent started early never sees a config
whose data is incomplete), in 128-operation transactions, many in flight at once; plus one
``cilium/.heartbeat`` (run a :class:`~meshcore.store.heartbeat.HeartbeatWriter` for longer runs).
:func:`write_config_dir` writes the agent's config directory. ``python -m
benchmarks.clustermesh_scale`` populates a fresh loopback etcd at full scale and prints the time.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from meshcore.kvstore.config import EtcdClientConfig
from meshcore.kvstore.types import MAX_TXN_OPS, KVStore, PutOp
from meshcore.pki import write_private_file
from meshcore.store.syncstore import rfc3339_now
from meshcore.wire import (
    CIDR,
    ClusterConfig,
    ClusterConfigCapabilities,
    IPIdentityPair,
    LabelSet,
    Node,
    NodeAddress,
)
from meshcore.wire.clusterinfo import cluster_id_max, identity_range
from meshcore.wire.keys import (
    HEARTBEAT,
    cache_node_key,
    cluster_config_key,
    kvstoremesh_synced_keys,
)

POD_NET = int(ipaddress.IPv4Address("10.0.0.0"))  # pods: 10.0.0.0/8, one block per cluster
NODE_NET = int(ipaddress.IPv4Address("172.16.0.0"))  # node IPs: 172.16.0.0/12
CIDR_NET = int(ipaddress.IPv4Address("100.64.0.0"))  # pod CIDRs: one /28 per node from 100.64.0.0/10
_MASK_28 = bytes([255, 255, 255, 240])
DEFAULT_CONCURRENCY = 16


def cluster_name(index: int) -> str:
    """The name of mocked cluster ``index`` (1-based), also its cluster ID."""
    return f"cluster-{index:03d}"


@dataclass(frozen=True, slots=True)
class PopulateResult:
    """What :func:`populate` wrote and how long it took."""

    clusters: list[str]
    keys: int
    transactions: int
    seconds: float

    @property
    def keys_per_second(self) -> float:
        return self.keys / self.seconds if self.seconds > 0 else float("inf")


def _ip(base: int, offset: int) -> str:
    v = base + offset
    return f"{v >> 24}.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}"


# The two bulk records are formatted from templates (4x faster than the wire encoders);
# _check_templates() proves them byte-identical to meshcore.wire's encoding before any write.
def _identity_value(cluster: str, i: int) -> bytes:
    return (
        f"k8s:app=app-{i};k8s:io.cilium.k8s.policy.cluster={cluster};"
        f"k8s:io.cilium.k8s.policy.serviceaccount=default;k8s:io.kubernetes.pod.namespace=ns-{i % 10};"
    ).encode()


def _ip_value(ip: str, host_ip: str, identity: int, namespace: str, pod: str) -> bytes:
    return (
        f'{{"IP":"{ip}","HostIP":"{host_ip}","ID":{identity},"Key":0,"Metadata":"",'
        f'"K8sNamespace":"{namespace}","K8sPodName":"{pod}"}}'
    ).encode()


def _check_templates() -> None:
    labels = LabelSet.from_strings(
        [
            "k8s:app=app-7",
            "k8s:io.cilium.k8s.policy.cluster=cluster-001",
            "k8s:io.cilium.k8s.policy.serviceaccount=default",
            "k8s:io.kubernetes.pod.namespace=ns-7",
        ]
    )
    assert _identity_value("cluster-001", 7) == labels.encode(), "identity template drifted from the wire format"
    pair = IPIdentityPair(ip="10.0.3.232", host_ip="172.16.0.100", id=65792, k8s_namespace="ns-0", k8s_pod_name="pod-0")
    assert _ip_value("10.0.3.232", "172.16.0.100", 65792, "ns-0", "pod-0") == pair.encode(), (
        "ipcache template drifted from the wire format"
    )


def cluster_records(
    index: int, *, nodes: int, identities: int, endpoints: int, max_connected_clusters: int = 255
) -> Iterator[PutOp]:
    """The cache-layout data keys of mocked cluster ``index`` (no canaries, no config)."""
    name = cluster_name(index)
    first_id = identity_range(index, max_connected_clusters)[0] + 256
    node_ips = [_ip(NODE_NET, index * nodes + n) for n in range(nodes)]
    for n, node_ip in enumerate(node_ips):
        cidr_base = CIDR_NET + (index * nodes + n) * 16
        node = Node(
            name=f"{name}-node-{n:04d}",
            cluster=name,
            cluster_id=index,
            ip_addresses=[NodeAddress("InternalIP", node_ip)],
            ipv4_alloc_cidr=CIDR(_ip(cidr_base, 0), _MASK_28),
            ipv4_health_ip=_ip(cidr_base, 1),
            source="custom-resource",
        )
        yield PutOp(cache_node_key(name, node.name), node.encode())
    id_prefix = f"cilium/cache/identities/v1/{name}/id/"
    for i in range(identities):
        yield PutOp(f"{id_prefix}{first_id + i}", _identity_value(name, i))
    ip_prefix = f"cilium/cache/ip/v1/{name}/"
    pod_base = POD_NET + index * endpoints
    per_identity = max(1, identities)
    for e in range(endpoints):
        ip = _ip(pod_base, e)
        host_ip = node_ips[e % nodes] if nodes else ""
        yield PutOp(ip_prefix + ip, _ip_value(ip, host_ip, first_id + e % per_identity, f"ns-{e % per_identity % 10}",
                                               f"pod-{e}"))


def _canaries(names: list[str]) -> Iterator[PutOp]:
    now = rfc3339_now().encode()
    for name in names:
        for key in kvstoremesh_synced_keys(name, serviceexports=True):
            yield PutOp(key, now)


def _configs(names: list[str], max_connected_clusters: int) -> Iterator[PutOp]:
    for index, name in enumerate(names, start=1):
        caps = ClusterConfigCapabilities(
            synced_canaries=True,
            cached=True,
            max_connected_clusters=max_connected_clusters,
            service_exports_enabled=False,
        )
        yield PutOp(cluster_config_key(name), ClusterConfig(id=index, capabilities=caps).encode())


async def _write_all(kv: KVStore, ops: Iterable[PutOp], concurrency: int) -> tuple[int, int]:
    """Write ``ops`` in 128-op transactions with ``concurrency`` in flight; (keys, txns)."""
    source = iter(ops)
    keys = txns = 0

    async def worker() -> None:
        nonlocal keys, txns
        while True:
            batch = [op for _, op in zip(range(MAX_TXN_OPS), source, strict=False)]
            if not batch:
                return
            await kv.txn(batch)
            keys += len(batch)
            txns += 1

    async with asyncio.TaskGroup() as tasks:
        for _ in range(concurrency):
            tasks.create_task(worker())
    return keys, txns


async def populate(
    kv: KVStore,
    clusters: int = 250,
    nodes: int = 100,
    identities: int = 100,
    endpoints: int = 1000,
    *,
    max_connected_clusters: int = 255,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> PopulateResult:
    """Write ``clusters`` mocked clusters into ``kv`` in the KVStoreMesh cache layout (see the
    module docstring): data, then canaries, then cluster configs, plus one heartbeat."""
    if not 1 <= clusters < cluster_id_max(max_connected_clusters):
        raise ValueError(
            f"clusters must be in 1..{cluster_id_max(max_connected_clusters) - 1} "
            "(IDs 1..N, leaving one for the cluster under test)"
        )
    if endpoints > 1 << 16 or clusters * endpoints >= 1 << 24 or clusters * nodes >= 1 << 20:
        raise ValueError("too many endpoints or nodes for the mock address plan")
    _check_templates()
    names = [cluster_name(i) for i in range(1, clusters + 1)]
    started = time.perf_counter()

    def data() -> Iterator[PutOp]:
        for index in range(1, clusters + 1):
            yield from cluster_records(
                index,
                nodes=nodes,
                identities=identities,
                endpoints=endpoints,
                max_connected_clusters=max_connected_clusters,
            )

    keys, txns = await _write_all(kv, data(), concurrency)
    for phase in (_canaries(names), _configs(names, max_connected_clusters)):
        k, t = await _write_all(kv, phase, concurrency)
        keys, txns = keys + k, txns + t
    await kv.put(HEARTBEAT, rfc3339_now().encode())
    return PopulateResult(names, keys + 1, txns + 1, time.perf_counter() - started)


def write_config_dir(directory: Path, names: Iterable[str], etcd: EtcdClientConfig) -> list[Path]:
    """One clustermesh config file per cluster name in ``directory``, all for the same etcd."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["endpoints:", *(f"- {ep}" for ep in etcd.endpoints)]
    for label, value in (
        ("trusted-ca-file", etcd.trusted_ca_file),
        ("cert-file", etcd.cert_file),
        ("key-file", etcd.key_file),
    ):
        if value is not None:
            lines.append(f"{label}: {value}")
    content = ("\n".join(lines) + "\n").encode()
    return [write_private_file(directory / name, content) for name in names]


async def _main(clusters: int, nodes: int, identities: int, endpoints: int, concurrency: int) -> None:
    from lab.etcd import EtcdProcess
    from meshcore.kvstore.client import EtcdClient

    with tempfile.TemporaryDirectory(prefix="clustermesh-scale-") as tmp:
        etcd = EtcdProcess(
            Path(tmp) / "etcd", extra_args=("--quota-backend-bytes=8589934592",)
        )
        await etcd.start_async()
        try:
            async with EtcdClient(etcd.client_config(request_timeout=60.0)) as kv:
                result = await populate(
                    kv, clusters, nodes, identities, endpoints, concurrency=concurrency
                )
                db = (await kv.status()).db_size
            write_config_dir(Path(tmp) / "clustermesh", result.clusters, etcd.client_config())
        finally:
            etcd.close()
    print(
        f"populate: {clusters} clusters x ({nodes} nodes, {identities} identities, {endpoints} endpoints) = "
        f"{result.keys} keys in {result.transactions} txns: {result.seconds:.2f} s "
        f"({result.keys_per_second:,.0f} keys/s, concurrency {concurrency}), etcd db {db / 2**20:.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.clustermesh_scale", description=__doc__)
    parser.add_argument("--clusters", type=int, default=250)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--identities", type=int, default=100)
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    args = parser.parse_args()
    asyncio.run(_main(args.clusters, args.nodes, args.identities, args.endpoints, args.concurrency))


if __name__ == "__main__":
    main()
