"""RemoteCluster and ClusterMesh against real etcd processes, with a trivial RemoteWork (one
WatchStore over the remote's nodes): connect, config, cluster IDs, heartbeat, disconnects,
config-file changes and removal, and wait_synced."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import structlog

from lab.etcd import EtcdProcess
from meshcore.backoff import Backoff
from meshcore.clustermesh.remote import CONFIG_MISSING_HINT, SYNC_TIMEOUT_WARNING, ClusterMesh
from meshcore.clustermesh.types import RemoteClusterStatus, RemoteCounts
from meshcore.errors import KVStoreError
from meshcore.kvstore.client import EtcdClient
from meshcore.kvstore.types import KVStore
from meshcore.store.heartbeat import HeartbeatWriter
from meshcore.store.watchstore import WatchStore
from meshcore.wire import ClusterConfig, ClusterConfigCapabilities, Node, NodeAddress
from meshcore.wire.keys import cluster_config_key, node_key, watch_prefix
from tests.meshcore.store.helpers import RecordingObserver, eventually, raw


class NodesWork:
    """A RemoteWork that mirrors the remote's nodes into a dict (and records its lifecycle)."""

    def __init__(self, name: str, *, sync: bool = True) -> None:
        self.name = name
        self.sync = sync
        self.observer = RecordingObserver()
        self.store: WatchStore[bytes] | None = None
        self.runs = 0
        self.drains = 0
        self.write_error: str | None = None

    async def run(self, kv: KVStore, config: ClusterConfig, synced: Callable[[], None]) -> None:
        self.runs += 1
        try:
            await kv.put("cilium/should-not-be-written", b"x")
        except KVStoreError as err:
            self.write_error = str(err)
        if self.store is None:
            prefix = watch_prefix("node", self.name, cached=config.capabilities.cached)
            self.store = WatchStore(None, prefix, raw, self.observer)
        if self.sync:
            self.store.on_synced(synced)
        await self.store.run(kv)

    def drain(self) -> None:
        self.drains += 1
        if self.store is not None:
            self.store.drain()

    def counts(self) -> RemoteCounts:
        store = self.store
        return RemoteCounts(nodes=len(store) if store else 0, synced_nodes=bool(store and store.synced.is_set()))


class Works(dict[str, NodesWork]):
    def __init__(self, *, sync: bool = True) -> None:
        super().__init__()
        self.sync = sync

    def __call__(self, name: str) -> NodesWork:
        self[name] = NodesWork(name, sync=self.sync)
        return self[name]


def node(cluster: str, name: str, ip: str) -> bytes:
    return Node(name=name, cluster=cluster, cluster_id=2, ip_addresses=[NodeAddress("InternalIP", ip)]).encode()


async def publish(etcd: EtcdProcess, cluster: str, cluster_id: int, *, nodes: int = 2, **caps: object) -> None:
    """What a remote clustermesh-apiserver would have written (config and nodes)."""
    async with EtcdClient(etcd.client_config()) as kv:
        config = ClusterConfig(id=cluster_id, capabilities=ClusterConfigCapabilities(**caps))  # type: ignore[arg-type]
        await kv.put(cluster_config_key(cluster), config.encode())
        for i in range(nodes):
            await kv.put(node_key(cluster, f"n{i}"), node(cluster, f"n{i}", f"10.0.0.{i + 1}"))


@contextlib.asynccontextmanager
async def heartbeat(etcd: EtcdProcess, interval: float = 0.3) -> AsyncIterator[HeartbeatWriter]:
    async with EtcdClient(etcd.client_config()) as kv:
        writer = HeartbeatWriter(kv, None, interval=interval)
        task = asyncio.create_task(writer.run())
        try:
            yield writer
        finally:
            task.cancel()
            await asyncio.wait([task], timeout=5)


@contextlib.asynccontextmanager
async def mesh_running(mesh: ClusterMesh) -> AsyncIterator[ClusterMesh]:
    task = asyncio.create_task(mesh.run())
    try:
        yield mesh
    finally:
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=10)
        assert done, "ClusterMesh.run ignored cancellation"
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


def make_mesh(config_dir: Path, works: Works, **kwargs: object) -> ClusterMesh:
    settings: dict[str, object] = {
        "local_name": "c1",
        "local_id": 1,
        "config_dir": config_dir,
        "factory": works,
        "heartbeat_timeout": 5.0,
        "connect_timeout": 2.0,
        "config_interval": 0.05,
        "reconnect_backoff": lambda: Backoff(initial=0.1, maximum=0.5),
    }
    settings.update(kwargs)
    return ClusterMesh(**settings)  # type: ignore[arg-type]


def by_name(mesh: ClusterMesh) -> dict[str, RemoteClusterStatus]:
    return {s.name: s for s in mesh.status()}


async def test_connects_reads_config_and_is_ready(etcd: EtcdProcess, tmp_path: Path) -> None:
    await publish(etcd, "c2", 2, synced_canaries=False, max_connected_clusters=255, service_exports_enabled=False)
    etcd.write_config_yaml(tmp_path / "c2")
    etcd.write_config_yaml(tmp_path / "c1")  # the local cluster's own file: ignored
    works = Works()
    async with heartbeat(etcd), mesh_running(make_mesh(tmp_path, works)) as mesh:
        assert await mesh.wait_synced(10)
        await eventually(lambda: by_name(mesh).get("c2", None) is not None and by_name(mesh)["c2"].ready, within=5)
        status = by_name(mesh)["c2"]
        assert list(by_name(mesh)) == ["c2"]
        assert status.connected and status.status == "ready"
        assert status.counts.nodes == 2
        assert status.config.retrieved and status.config.cluster_id == 2 and status.config.required
        assert status.config.service_exports_enabled is False
        j = status.to_json()
        assert j["num-nodes"] == 2 and j["config"] == {
            "required": True,
            "retrieved": True,
            "cluster-id": 2,
            "kvstoremesh": False,
            "sync-canaries": False,
            "service-exports-enabled": False,
        }
        work = works["c2"]
        assert set(work.observer.view) == {"n0", "n1"}
        # The work got a read-only view of the remote etcd.
        assert work.write_error is not None and "read-only" in work.write_error
        async with EtcdClient(etcd.client_config()) as kv:
            assert await kv.get("cilium/should-not-be-written") is None


async def test_missing_config_gives_hint_then_recovers(etcd: EtcdProcess, tmp_path: Path) -> None:
    etcd.write_config_yaml(tmp_path / "c2")
    works = Works()
    async with heartbeat(etcd), mesh_running(make_mesh(tmp_path, works)) as mesh:
        await eventually(lambda: "c2" in by_name(mesh) and CONFIG_MISSING_HINT in by_name(mesh)["c2"].status, within=5)
        status = by_name(mesh)["c2"]
        assert not status.ready and status.connected and not status.config.retrieved
        assert status.status.startswith("remote cluster configuration not found")
        assert status.num_failures >= 1 and status.last_failure is not None
        # Connected but without config (KVStoreMesh may be starting): the initial sync waits.
        assert not await mesh.wait_synced(0.3)
        await publish(etcd, "c2", 2)
        assert await mesh.wait_synced(10)
        await eventually(lambda: by_name(mesh)["c2"].ready, within=5)


async def test_cluster_ids_rejected(etcd: EtcdProcess, tmp_path: Path) -> None:
    # One etcd serves the configs of several "remotes" (each file names the same endpoint).
    await publish(etcd, "c2", 0, nodes=0)  # no ID
    await publish(etcd, "c3", 1, nodes=0)  # the local cluster's ID
    await publish(etcd, "c4", 4, nodes=0)
    await publish(etcd, "c5", 4, nodes=0)  # a duplicate of c4's
    await publish(etcd, "c6", 300, nodes=0)  # out of range for 255
    for name in ("c2", "c3", "c4", "c5", "c6"):
        etcd.write_config_yaml(tmp_path / name)
    works = Works()
    async with heartbeat(etcd), mesh_running(make_mesh(tmp_path, works)) as mesh:

        def settled() -> bool:
            s = by_name(mesh)
            return len(s) == 5 and sum(x.ready for x in s.values()) == 1 and all(
                x.ready or x.num_failures > 0 for x in s.values()
            )

        await eventually(settled, within=10)
        s = by_name(mesh)
        assert "cluster ID 0 is reserved" in s["c2"].status
        assert "local cluster's own ID" in s["c3"].status
        assert "out of range" in s["c6"].status
        ready, dup = ("c4", "c5") if s["c4"].ready else ("c5", "c4")
        assert f"already used by remote cluster '{ready}'" in s[dup].status
        assert not works["c2"].runs and not works["c3"].runs and not works[dup].runs

        # When the holder goes away, the other may take the ID.
        (tmp_path / ready).unlink()
        await eventually(lambda: dup in by_name(mesh) and by_name(mesh)[dup].ready, within=10)
        assert works[ready].drains == 1


async def test_heartbeat_stale_then_fresh(etcd: EtcdProcess, tmp_path: Path) -> None:
    await publish(etcd, "c2", 2)
    etcd.write_config_yaml(tmp_path / "c2")
    works = Works()
    async with mesh_running(make_mesh(tmp_path, works, heartbeat_timeout=2.0)) as mesh:
        async with heartbeat(etcd, interval=0.3):
            await eventually(lambda: "c2" in by_name(mesh) and by_name(mesh)["c2"].ready, within=5)
            failures = by_name(mesh)["c2"].num_failures
        # The writer stopped: within the limit (+ one check interval) the cluster is not ready.
        loop = asyncio.get_running_loop()
        stopped = loop.time()
        await eventually(lambda: not by_name(mesh)["c2"].ready, within=4)
        assert loop.time() - stopped < 3.0
        # One reconnect per stale episode, then it settles: connected, not ready, marked stale.
        await eventually(
            lambda: "heartbeat stale" in by_name(mesh)["c2"].status and by_name(mesh)["c2"].connected, within=10
        )
        status = by_name(mesh)["c2"]
        assert status.num_failures > failures and status.connected
        assert set(works["c2"].observer.view) == {"n0", "n1"}  # nothing drained
        assert works["c2"].drains == 0
        async with heartbeat(etcd, interval=0.3):
            await eventually(lambda: by_name(mesh)["c2"].ready, within=5)


async def test_etcd_killed_keeps_entries_and_recovers(etcd: EtcdProcess, tmp_path: Path) -> None:
    await publish(etcd, "c2", 2)
    etcd.write_config_yaml(tmp_path / "c2")
    works = Works()
    async with mesh_running(make_mesh(tmp_path, works)) as mesh:
        async with heartbeat(etcd):
            await eventually(lambda: "c2" in by_name(mesh) and by_name(mesh)["c2"].ready, within=5)
            etcd.kill()
            await eventually(lambda: not by_name(mesh)["c2"].connected, within=5)
            status = by_name(mesh)["c2"]
            assert not status.ready and status.num_failures >= 1
            assert status.counts.nodes == 2 and set(works["c2"].observer.view) == {"n0", "n1"}
            assert works["c2"].drains == 0
            # A node deleted while we were away is swept after the reconnect; the rest stays.
            await etcd.restart_async()
            async with EtcdClient(etcd.client_config()) as kv:
                await kv.delete(node_key("c2", "n1"))
        async with heartbeat(etcd):
            await eventually(lambda: by_name(mesh)["c2"].ready, within=10)
            await eventually(lambda: set(works["c2"].observer.view) == {"n0"}, within=5)
        assert works["c2"].runs >= 2 and works["c2"].drains == 0
        assert ("upsert", "n0") in works["c2"].observer.events
        assert works["c2"].observer.events.count(("upsert", "n0")) == 1  # no churn from the reconnect


async def test_config_file_change_reconnects_and_removal_drains(
    etcd_factory: Callable[..., EtcdProcess], tmp_path: Path
) -> None:
    a = etcd_factory("a")
    b = etcd_factory("b")
    await publish(a, "c2", 2, nodes=2)
    await publish(b, "c2", 2, nodes=1)
    a.write_config_yaml(tmp_path / "c2")
    works = Works()
    async with heartbeat(a), heartbeat(b), mesh_running(make_mesh(tmp_path, works)) as mesh:
        await eventually(lambda: "c2" in by_name(mesh) and by_name(mesh)["c2"].ready, within=5)
        assert by_name(mesh)["c2"].counts.nodes == 2
        b.write_config_yaml(tmp_path / "c2")  # new digest -> reconnect to b, same work
        await eventually(lambda: works["c2"].runs == 2 and by_name(mesh)["c2"].counts.nodes == 1, within=5)
        assert works["c2"].drains == 0 and len(works) == 1
        (tmp_path / "c2").unlink()
        await eventually(lambda: works["c2"].drains == 1, within=5)
        assert mesh.status() == [] and works["c2"].observer.view == {}
        assert mesh.ids.held_by("c2") is None


async def test_cluster_id_change_drains_before_reconnecting(etcd: EtcdProcess, tmp_path: Path) -> None:
    await publish(etcd, "c2", 2)
    etcd.write_config_yaml(tmp_path / "c2")
    works = Works()
    async with heartbeat(etcd), mesh_running(make_mesh(tmp_path, works)) as mesh:
        await eventually(lambda: "c2" in by_name(mesh) and by_name(mesh)["c2"].ready, within=5)
        await publish(etcd, "c2", 7, nodes=0)
        await eventually(lambda: by_name(mesh)["c2"].config.cluster_id == 7 and by_name(mesh)["c2"].ready, within=5)
        assert works["c2"].drains == 1 and mesh.ids.held_by("c2") == 7
        assert ("delete", "n0") in works["c2"].observer.events


async def test_wait_synced(etcd: EtcdProcess, tmp_path: Path) -> None:
    await publish(etcd, "c2", 2)
    etcd.write_config_yaml(tmp_path / "c2")
    # c3: nothing listens there; it fails to connect and must not block the wait.
    (tmp_path / "c3").write_text("endpoints:\n- http://127.0.0.1:9\n")
    works = Works(sync=False)  # the work never reports synced
    async with heartbeat(etcd), mesh_running(make_mesh(tmp_path, works)) as mesh:
        with structlog.testing.capture_logs() as logs:
            assert not await mesh.wait_synced(1.0)
        warnings = [e for e in logs if e["log_level"] == "warning" and e["event"] == SYNC_TIMEOUT_WARNING]
        assert len(warnings) == 1 and warnings[0]["waiting_for"] == ["c2"]
        assert by_name(mesh)["c2"].status == "waiting for initial sync"
        assert not by_name(mesh)["c3"].connected and by_name(mesh)["c3"].num_failures >= 1

        works["c2"].sync = True  # the next run reports; force one by changing the file
        etcd.write_config_yaml(tmp_path / "c2", user="other")
        (tmp_path / "c2").write_text((tmp_path / "c2").read_text() + "# changed\n")
        assert await mesh.wait_synced(5)
        assert by_name(mesh)["c2"].ready


async def test_tls_remote(etcd_tls: EtcdProcess, tmp_path: Path) -> None:
    """A remote behind mTLS: the config file names the CA, certificate and key."""
    await publish(etcd_tls, "c2", 2)
    etcd_tls.write_config_yaml(tmp_path / "c2", user="remote")
    works = Works()
    async with heartbeat(etcd_tls), mesh_running(make_mesh(tmp_path, works)) as mesh:
        assert await mesh.wait_synced(10)
        await eventually(lambda: by_name(mesh)["c2"].ready, within=5)
        assert by_name(mesh)["c2"].counts.nodes == 2
