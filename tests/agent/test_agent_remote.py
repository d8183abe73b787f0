"""AgentRemoteWork against a real etcd seeded with Cilium-format data: counts, validation,
layouts, canary gating, reconnects (mark-and-sweep) and drain."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager

from agent.caches import MeshCaches
from agent.desired import LocalInfo, build_desired
from agent.metrics import AgentMetrics
from agent.remote import AgentRemoteWork
from lab.etcd import EtcdProcess
from lab.samples import SampleSize, canary_keys, sample_identity, sample_node, seed_cluster
from lab.wait import poll_until
from meshcore.kvstore.client import EtcdClient
from meshcore.wire import ClusterConfig, ClusterService, IPIdentityPair, L4Addr, LabelSet
from meshcore.wire import keys as wirekeys

LOCAL = LocalInfo("c1", 1, "c1-node-0")
SIZE = SampleSize(nodes=3, endpoints_per_node=2, identities=4, services=2)


@asynccontextmanager
async def working(work: AgentRemoteWork, kv: EtcdClient, config: ClusterConfig) -> AsyncIterator[asyncio.Event]:
    """Run ``work`` on ``kv`` for the block; yields the event its ``synced()`` sets."""
    synced = asyncio.Event()
    async with asyncio.TaskGroup() as tasks:
        task = tasks.create_task(work.run(kv, config, synced.set))
        try:
            yield synced
        finally:
            task.cancel()


async def etcdctl(etcd: EtcdProcess, *args: str) -> None:
    """Run the real ``etcdctl`` against ``etcd`` (bounded), failing the test on error."""
    proc = await asyncio.create_subprocess_exec(
        "etcdctl", f"--endpoints={etcd.endpoint}", *args,
        env={"ETCDCTL_API": "3"}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, f"etcdctl {args} failed: {err.decode()}"


async def wait_synced(synced: asyncio.Event) -> None:
    await asyncio.wait_for(synced.wait(), 15)


def new_work(caches: MeshCaches, metrics: AgentMetrics | None = None, name: str = "c2") -> AgentRemoteWork:
    return AgentRemoteWork(name, caches=caches, metrics=metrics)


async def test_counts_are_exact_and_desired_state_follows(etcd_client: EtcdClient) -> None:
    config = await seed_cluster(etcd_client, "c2", 2, SIZE)
    caches = MeshCaches()
    work = new_work(caches)
    async with working(work, etcd_client, config) as synced:
        await wait_synced(synced)
        counts = work.counts()
        assert (counts.nodes, counts.endpoints, counts.identities, counts.shared_services) == (3, 6, 4, 2)
        assert counts.synced_nodes and counts.synced_endpoints and counts.synced_identities and counts.synced_services
        assert work.prefixes()["endpoints"] == "cilium/state/ip/v1/default/"
        cache = caches.get("c2")
        assert cache is not None and cache.cluster_id == 2
        # The caches keep compact records (agent.records), not the decoded wire nodes.
        assert all(node.cluster == "c2" and node.tunnel_ip for node in cache.nodes.values())

        desired = build_desired(LOCAL, caches.snapshot())
        by_source: dict[str, int] = {}
        for entry in desired.ipcache:
            by_source[entry.source] = by_source.get(entry.source, 0) + 1
        # 6 endpoints; 3 nodes x (InternalIP + CiliumInternalIP); 3 health IPs; 3 pod CIDRs.
        assert by_source == {"endpoint": 6, "node-ip": 6, "health": 3, "pod-cidr": 3}
        assert len(desired.routes) == 3 and len(desired.wireguard_peers) == 3
        assert [s.service for s in desired.services] == ["default/svc-0", "default/svc-1"]
        assert len(desired.identities) == 4


async def test_invalid_remote_entries_are_rejected_counted_and_kept_out(etcd_client: EtcdClient) -> None:
    config = await seed_cluster(etcd_client, "c2", 2, SIZE)
    bad: dict[str, bytes] = {
        # nodes: wrong cluster name, wrong cluster ID, name differing from the key, malformed JSON
        wirekeys.node_key("c2", "intruder"): sample_node("c3", 2, 50).encode().replace(b"c3-node-50", b"intruder"),
        wirekeys.node_key("c2", "c2-node-60"): sample_node("c2", 3, 60).encode(),
        wirekeys.node_key("c2", "renamed"): sample_node("c2", 2, 70).encode(),
        wirekeys.node_key("c2", "garbage"): b'{"Name": "garbage", "Cluster": ',
        # identities: out of range (cluster 3's range), and without c2's cluster label
        wirekeys.identity_key((3 << 16) + 5): sample_identity("c2", 9).encode(),
        wirekeys.identity_key((2 << 16) + 77): LabelSet.from_strings(["k8s:app=x"]).encode(),
        # ipcache: out-of-range identity, key differing from the prefix
        wirekeys.ip_key("10.2.9.9"): IPIdentityPair(ip="10.2.9.9", host_ip="172.16.32.9", id=(5 << 16) + 1).encode(),
        wirekeys.ip_key("10.2.9.10"): IPIdentityPair(ip="10.2.9.11", host_ip="172.16.32.9", id=(2 << 16) + 1).encode(),
        # services: wrong cluster ID
        wirekeys.service_key("c2", "default", "bad"): ClusterService(
            cluster="c2", namespace="default", name="bad", shared=True, cluster_id=7
        ).encode(),
    }
    good: dict[str, bytes] = {
        # reserved identities are allowed on ipcache entries; host (1) becomes remote-node (6)
        wirekeys.ip_key("10.2.8.1"): IPIdentityPair(ip="10.2.8.1", host_ip="172.16.32.0", id=1).encode(),
        wirekeys.ip_key("10.2.8.2"): IPIdentityPair(ip="10.2.8.2", host_ip="172.16.32.0", id=4).encode(),
        # an unshared service is as good as absent
        wirekeys.service_key("c2", "default", "private"): ClusterService(
            cluster="c2", namespace="default", name="private", shared=False, cluster_id=2,
            backends={"10.2.0.9": {"": L4Addr("TCP", 80)}},
        ).encode(),
    }
    for key, value in {**bad, **good}.items():
        await etcd_client.put(key, value)

    caches = MeshCaches()
    metrics = AgentMetrics(local_cluster="c1", node_name="c1-node-0")
    work = new_work(caches, metrics)
    async with working(work, etcd_client, config) as synced:
        await wait_synced(synced)
        counts = work.counts()
        assert (counts.nodes, counts.endpoints, counts.identities, counts.shared_services) == (3, 8, 4, 2)
        assert work.invalid_counts() == {"nodes": 4, "services": 1, "endpoints": 2, "identities": 2}
        for kind, expected in work.invalid_counts().items():
            assert metrics.invalid_count("c2", kind) == expected
        cache = caches.get("c2")
        assert cache is not None
        assert set(cache.nodes) == {"c2-node-0", "c2-node-1", "c2-node-2"}
        assert cache.ipcache["10.2.8.1"].id == 6 and cache.ipcache["10.2.8.2"].id == 4
        assert "default/bad" not in cache.services and "default/private" not in cache.services

        desired = build_desired(LOCAL, caches.snapshot())
        prefixes = {e.prefix: e for e in desired.ipcache}
        assert "10.2.9.9/32" not in prefixes and "10.2.9.10/32" not in prefixes and "10.2.9.11/32" not in prefixes
        assert prefixes["10.2.8.1/32"].identity == 6
        ids = {i.id for i in desired.identities}
        assert (3 << 16) + 5 not in ids and (2 << 16) + 77 not in ids
        assert all(s.service != "default/bad" and s.service != "default/private" for s in desired.services)
        assert all(p.node.startswith("c2-node-") for p in desired.wireguard_peers)

        # The same bad key written again is counted again (the log line is once per key).
        await etcd_client.put(wirekeys.node_key("c2", "c2-node-60"), sample_node("c2", 4, 60).encode())
        assert await poll_until(lambda: work.invalid_counts()["nodes"] == 5, within=10)
        assert metrics.invalid_count("c2", "nodes") == 5


async def test_cached_layout_is_cluster_scoped(etcd_client: EtcdClient) -> None:
    # A KVStoreMesh cache holding two remotes, plus c2 state-layout data that must be ignored.
    config = await seed_cluster(etcd_client, "c2", 2, SIZE, cached=True)
    await seed_cluster(etcd_client, "c3", 3, SampleSize(nodes=5, endpoints_per_node=1), cached=True)
    await seed_cluster(etcd_client, "c2", 2, SampleSize(nodes=7, endpoints_per_node=3, identities=9))
    assert config.capabilities.cached
    caches = MeshCaches()
    work = new_work(caches)
    async with working(work, etcd_client, config) as synced:
        await wait_synced(synced)
        counts = work.counts()
        assert (counts.nodes, counts.endpoints, counts.identities, counts.shared_services) == (3, 6, 4, 2)
        assert work.prefixes() == {
            "nodes": "cilium/cache/nodes/v1/c2/",
            "services": "cilium/cache/services/v1/c2/",
            "endpoints": "cilium/cache/ip/v1/c2/",
            "identities": "cilium/cache/identities/v1/c2/id/",
        }


async def test_operator_seeding_with_etcdctl(etcd: EtcdProcess, etcd_client: EtcdClient) -> None:
    """Data put by the real ``etcdctl`` binary, as an operator would, is read like any other."""
    node = json.dumps(
        {
            "Name": "hand-made", "Cluster": "c2",
            "IPAddresses": [{"Type": "InternalIP", "IP": "172.18.0.2"}],
            "IPv4AllocCIDR": {"IP": "10.244.0.0", "Mask": "////AA=="},
            "IPv4HealthIP": "10.244.0.134", "ClusterID": 2, "Source": "custom-resource",
            "WireguardPubKey": "VRksOB6ZNds4oXWIGfSVpvc0gBhcOWFmzvTDcyvULlI=",
        }
    )
    puts = {
        wirekeys.node_key("c2", "hand-made"): node,
        wirekeys.node_key("c2", "wrong"): node,  # name differs from its key: rejected
        wirekeys.ip_key("10.244.0.7"): '{"IP":"10.244.0.7","HostIP":"172.18.0.2","ID":131073,"Key":0,"Metadata":""}',
        wirekeys.identity_key(131073): "k8s:app=baz;k8s:io.cilium.k8s.policy.cluster=c2;",
        wirekeys.cluster_config_key("c2"): '{"id":2,"capabilities":{"syncedCanaries":true}}',
    }
    puts.update({key: "2026-01-01T00:00:00Z" for key in canary_keys("c2")})
    for key, value in puts.items():
        await etcdctl(etcd, "put", key, value)
    raw = await etcd_client.get(wirekeys.cluster_config_key("c2"))
    assert raw is not None
    config = ClusterConfig.decode(raw.value)
    caches = MeshCaches()
    work = new_work(caches)
    async with working(work, etcd_client, config) as synced:
        await wait_synced(synced)
        assert work.counts().nodes == 1 and work.counts().endpoints == 1 and work.counts().identities == 1
        assert work.invalid_counts()["nodes"] == 1
        desired = build_desired(LOCAL, caches.snapshot())
        entries = {e.prefix: (e.identity, e.tunnel_endpoint, e.source) for e in desired.ipcache}
        assert entries == {
            "10.244.0.0/24": (2, "172.18.0.2", "pod-cidr"),
            "10.244.0.7/32": (131073, "172.18.0.2", "endpoint"),
            "10.244.0.134/32": (4, "172.18.0.2", "health"),
            "172.18.0.2/32": (6, "", "node-ip"),
        }
        [peer] = desired.wireguard_peers
        assert peer.endpoint == "172.18.0.2:51871" and peer.allowed_ips == ("10.244.0.0/24", "172.18.0.2/32")


async def test_canaries_gate_the_watchers(etcd_client: EtcdClient) -> None:
    config = await seed_cluster(etcd_client, "c2", 2, SIZE, canaries=False)
    config = ClusterConfig(id=2, capabilities=type(config.capabilities)(synced_canaries=True))
    caches = MeshCaches()
    work = new_work(caches)
    async with working(work, etcd_client, config) as synced:
        await asyncio.sleep(0.5)
        assert not synced.is_set() and work.counts().nodes == 0, "must not read before the canaries"
        keys = canary_keys("c2")
        for key in keys[:2]:  # nodes and services
            await etcd_client.put(key, b"x")
        assert await poll_until(lambda: work.counts().nodes == 3 and work.counts().shared_services == 2, within=10)
        assert not synced.is_set() and work.counts().endpoints == 0
        for key in keys[2:]:
            await etcd_client.put(key, b"x")
        await wait_synced(synced)
        assert work.counts().endpoints == 6 and work.counts().identities == 4


class RecordingCaches(MeshCaches):
    """Real caches that also record every change they emit, to see reconnect churn (the watch
    stores hand unchanged values on; the caches drop the ones equal to what they hold)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, str, str]] = []

    def touch_key(self, cluster: str, kind: str, key: Hashable) -> None:
        table = self.cluster(cluster).table(kind)
        self.events.append(("upsert" if key in table else "delete", kind, str(key)))
        super().touch_key(cluster, kind, key)


async def test_reconnect_sweeps_only_what_did_not_come_back(etcd: EtcdProcess, etcd_client: EtcdClient) -> None:
    config = await seed_cluster(etcd_client, "c2", 2, SIZE)
    caches = RecordingCaches()
    work = new_work(caches)
    async with EtcdClient(etcd.client_config()) as first:
        async with working(work, first, config) as synced:
            await wait_synced(synced)
    before = len(caches.events)
    assert work.counts().nodes == 3  # a disconnect forgets nothing

    # While disconnected: one node deleted, one endpoint changed, one identity added.
    await etcd_client.delete(wirekeys.node_key("c2", "c2-node-2"))
    changed = IPIdentityPair(ip="10.2.0.1", host_ip="172.16.32.0", id=(2 << 16) + 1003)
    await etcd_client.put(wirekeys.ip_key("10.2.0.1"), changed.encode())
    await etcd_client.put(wirekeys.identity_key((2 << 16) + 1010), sample_identity("c2", 10).encode())

    async with EtcdClient(etcd.client_config()) as second:
        async with working(work, second, config) as synced:
            await wait_synced(synced)
            assert await poll_until(lambda: work.counts().identities == 5, within=10)
            after = caches.events[before:]
            assert sorted(after) == sorted(
                [
                    ("delete", "nodes", "c2-node-2"),
                    ("upsert", "ipcache", "10.2.0.1"),
                    ("upsert", "identities", str((2 << 16) + 1010)),
                ]
            ), after
            cache = caches.get("c2")
            assert cache is not None and cache.ipcache["10.2.0.1"].id == (2 << 16) + 1003
            counts = work.counts()
            assert (counts.nodes, counts.endpoints) == (2, 6)


async def test_cluster_id_change_drains_and_drain_forgets_everything(etcd_client: EtcdClient) -> None:
    config = await seed_cluster(etcd_client, "c2", 2, SIZE)
    caches = MeshCaches()
    metrics = AgentMetrics(local_cluster="c1", node_name="n")
    work = new_work(caches, metrics)
    async with working(work, etcd_client, config) as synced:
        await wait_synced(synced)
    assert work.counts().nodes == 3

    # Same data, but the remote now says it is cluster 3: everything of ID 2 is drained and rejected.
    moved = ClusterConfig(id=3, capabilities=config.capabilities)
    async with working(work, etcd_client, moved) as synced:
        await wait_synced(synced)
        counts = work.counts()
        assert (counts.nodes, counts.endpoints, counts.identities, counts.shared_services) == (0, 0, 0, 0)
        assert work.invalid_counts() == {"nodes": 3, "services": 2, "endpoints": 6, "identities": 4}

    async with working(work, etcd_client, config) as synced:
        await wait_synced(synced)
        assert work.counts().nodes == 3
    work.drain()
    assert caches.get("c2") is None and work.counts().nodes == 0
    assert build_desired(LOCAL, caches.snapshot()).ipcache == ()
    assert metrics.invalid_count("c2", "nodes") == 0
