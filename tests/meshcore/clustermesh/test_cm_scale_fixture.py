"""The scale fixture (benchmarks/clustermesh_scale.py) at a small scale: the keys it writes are
Cilium's cache layout with valid records, and a ClusterMesh reading its config dir gets every
mocked cluster ready with the expected counts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from benchmarks.clustermesh_scale import cluster_name, populate, write_config_dir
from lab.etcd import EtcdProcess
from meshcore.backoff import Backoff
from meshcore.clustermesh.remote import ClusterMesh
from meshcore.clustermesh.types import RemoteCounts
from meshcore.kvstore.client import EtcdClient
from meshcore.kvstore.types import KVStore
from meshcore.store.heartbeat import HeartbeatWriter
from meshcore.store.watchstore import WatchStore
from meshcore.store.watchstoremgr import WatchStoreManager
from meshcore.wire import ClusterConfig, codec_for_key, decode_cluster_config
from meshcore.wire.clusterinfo import identity_in_cluster_range
from meshcore.wire.keys import kvstoremesh_synced_keys, parse_key, watch_prefix
from tests.meshcore.store.helpers import RecordingObserver, eventually, raw


class CountingWork:
    """Watches a mocked cluster's nodes, identities and ipcache, canary-gated as an agent does."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stores: dict[str, WatchStore[bytes]] = {}

    async def run(self, kv: KVStore, config: ClusterConfig, synced: Callable[[], None]) -> None:
        cached = config.capabilities.cached
        gate = WatchStoreManager(kv, watch_prefix("synced", self.name), gated=config.capabilities.synced_canaries)
        for kind, canary in (("node", "cilium/cache/nodes/v1"), ("identity", "cilium/cache/identities/v1"),
                             ("ip", "cilium/cache/ip/v1")):
            store = self.stores.setdefault(
                kind, WatchStore(None, watch_prefix(kind, self.name, cached=cached), raw, RecordingObserver())  # type: ignore[arg-type]
            )

            async def start(store: WatchStore[bytes] = store) -> None:
                await store.run(kv)

            gate.register(canary, start)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(gate.run())
            await asyncio.gather(*(s.synced.wait() for s in self.stores.values()))
            synced()

    def drain(self) -> None:
        for store in self.stores.values():
            store.drain()

    def counts(self) -> RemoteCounts:
        def n(kind: str) -> int:
            return len(self.stores[kind]) if kind in self.stores else 0

        return RemoteCounts(nodes=n("node"), identities=n("identity"), endpoints=n("ip"))


async def test_populate_small_scale_is_valid_and_consumable(etcd: EtcdProcess, tmp_path: Path) -> None:
    async with EtcdClient(etcd.client_config()) as kv:
        result = await populate(kv, clusters=3, nodes=4, identities=5, endpoints=20, concurrency=4)
        assert result.clusters == [cluster_name(i) for i in (1, 2, 3)]
        everything = (await kv.list_prefix("cilium/")).items
        # 3 x (4 + 5 + 20) data keys + 3 x 5 canaries + 3 configs + the heartbeat
        assert result.keys == len(everything) == 3 * 29 + 15 + 3 + 1
        for item in everything:
            info = parse_key(item.key)
            if info.kind in ("node", "identity", "ip"):
                assert info.cached
                codec_for_key(item.key).decode(item.value, key=item.key)  # valid Cilium records
            if info.kind == "identity":
                assert info.cluster is not None
                assert identity_in_cluster_range(int(info.suffix), int(info.cluster.rsplit("-", 1)[1]))
        for i, name in enumerate(result.clusters, start=1):
            config_item = await kv.get(f"cilium/cluster-config/{name}")
            assert config_item is not None
            cfg = decode_cluster_config(config_item.value)
            assert cfg.id == i and cfg.capabilities.cached and cfg.capabilities.synced_canaries
            for key in kvstoremesh_synced_keys(name, serviceexports=True):
                assert await kv.get(key) is not None
        pod_ips = [i.key.rsplit("/", 1)[1] for i in everything if parse_key(i.key).kind == "ip"]
        assert len(set(pod_ips)) == len(pod_ips) == 60  # unique across clusters

        config_dir = tmp_path / "clustermesh"
        write_config_dir(config_dir, result.clusters, etcd.client_config())
        works: dict[str, CountingWork] = {}

        def factory(name: str) -> CountingWork:
            works[name] = CountingWork(name)
            return works[name]

        mesh = ClusterMesh(local_name="local", local_id=255, config_dir=config_dir, factory=factory,
                           heartbeat_timeout=30, config_interval=0.05,
                           reconnect_backoff=lambda: Backoff(initial=0.1, maximum=0.5))
        heartbeat = asyncio.create_task(HeartbeatWriter(kv, None, interval=1.0).run())
        task = asyncio.create_task(mesh.run())
        try:
            assert await mesh.wait_synced(10)
            await eventually(lambda: len(mesh.status()) == 3 and all(s.ready for s in mesh.status()), within=10)
            for status in mesh.status():
                assert (status.counts.nodes, status.counts.identities, status.counts.endpoints) == (4, 5, 20)
                assert status.config.kvstoremesh and status.config.sync_canaries
        finally:
            for t in (task, heartbeat):
                t.cancel()
            await asyncio.wait([task, heartbeat], timeout=10)
