"""The heartbeat and cluster-config writers on a real etcd."""

from __future__ import annotations

import asyncio

from lab.etcd import EtcdProcess
from meshcore.errors import ClusterChangedError
from meshcore.kvstore.client import EtcdClient
from meshcore.kvstore.leases import LeaseManager
from meshcore.store.clusterconfig import ClusterConfigWriter
from meshcore.store.heartbeat import HEARTBEAT_KEY, HeartbeatWriter
from meshcore.wire import ClusterConfig, ClusterConfigCapabilities, encode_cluster_config
from tests.meshcore.store.helpers import eventually, running


async def test_heartbeat_is_refreshed_and_leased(etcd_client: EtcdClient) -> None:
    leases = LeaseManager(etcd_client, ttl=30)
    writer = HeartbeatWriter(etcd_client, leases, interval=0.3)
    async with running(leases.run(), writer.run()):
        await asyncio.wait_for(writer.written.wait(), 10)
        first = await etcd_client.get(HEARTBEAT_KEY)
        assert first is not None and first.lease != 0
        assert first.value.decode().endswith("Z") and "T" in first.value.decode()

        async def refreshed() -> bool:
            now = await etcd_client.get(HEARTBEAT_KEY)
            return now is not None and first is not None and now.mod_revision > first.mod_revision

        await eventually(refreshed, within=5)


async def test_cluster_config_is_enforced(etcd_client: EtcdClient) -> None:
    config = ClusterConfig(
        id=3,
        capabilities=ClusterConfigCapabilities(
            synced_canaries=True, max_connected_clusters=255, service_exports_enabled=False
        ),
    )
    value = encode_cluster_config(config)
    assert value == (
        b'{"id":3,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255,"serviceExportsEnabled":false}}'
    )
    # A longer cluster name shares the prefix and must be left alone.
    await etcd_client.put("cilium/cluster-config/cluster30", b"other")
    leases = LeaseManager(etcd_client, ttl=30)
    writer = ClusterConfigWriter(etcd_client, leases, "cluster3", value, reassert_interval=60)
    async with running(leases.run(), writer.run()):
        await asyncio.wait_for(writer.written.wait(), 10)

        async def holds() -> bool:
            kv = await etcd_client.get("cilium/cluster-config/cluster3")
            return kv is not None and kv.value == value

        assert await holds()
        await etcd_client.put("cilium/cluster-config/cluster3", b'{"id":4}')
        await eventually(holds, within=5)
        await etcd_client.delete("cilium/cluster-config/cluster3")
        await eventually(holds, within=5)
        assert writer.rewrites == 2
    other = await etcd_client.get("cilium/cluster-config/cluster30")
    assert other is not None and other.value == b"other"


async def test_cluster_config_restart_keeps_the_key(etcd_client: EtcdClient) -> None:
    """A restarted writer takes the key over without deleting it (create revision unchanged)."""
    value = b'{"id":3,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}'
    for _ in range(2):
        leases = LeaseManager(etcd_client, ttl=30)
        writer = ClusterConfigWriter(etcd_client, leases, "cluster3", value)
        async with running(leases.run(), writer.run()):
            await asyncio.wait_for(writer.written.wait(), 10)
            kv = await etcd_client.get("cilium/cluster-config/cluster3")
            assert kv is not None
            if _ == 0:
                created = kv.create_revision
            else:
                assert kv.create_revision == created
                assert kv.lease == leases.lease_of("cilium/cluster-config/cluster3")


async def test_writers_recover_at_once_from_a_wiped_etcd(etcd: EtcdProcess, etcd_client: EtcdClient) -> None:
    """After etcd comes back empty (its leases gone), the heartbeat and the cluster config are
    written again on a new lease well before the keepalive round (ttl / 3 = 20 s here)."""
    leases = LeaseManager(etcd_client, ttl=60)
    heartbeat = HeartbeatWriter(etcd_client, leases, interval=0.2)
    value = b'{"id":3}'
    config = ClusterConfigWriter(etcd_client, leases, "cluster3", value)
    async with running(leases.run(), heartbeat.run(), config.run()):
        await asyncio.wait_for(asyncio.gather(heartbeat.written.wait(), config.written.wait()), 10)
        etcd.kill()
        etcd.wipe()
        await etcd.restart_async()

        async def both_back() -> bool:
            try:
                hb = await etcd_client.get(HEARTBEAT_KEY)
                cfg = await etcd_client.get("cilium/cluster-config/cluster3")
            except ClusterChangedError:  # reported once, to whichever call sees the new cluster first
                return False
            return hb is not None and cfg is not None and cfg.value == value

        await eventually(both_back, within=10)
