"""KVStoreMesh against real etcds: two remote clusters (Cilium-format data written as a remote
clustermesh-apiserver would) mirrored into a local etcd in the cache layout, with canaries and
cached cluster configs; disconnect/reconnect sweeps only what vanished; removal drains."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from click.testing import CliRunner

from clustermesh_apiserver.cli import main as cli_main
from clustermesh_apiserver.kvstoremesh import KvstoreMesh, KvstoreMeshConfig, cache_prefixes, run_kvstoremesh
from lab.etcd import EtcdProcess
from meshcore.backoff import Backoff
from meshcore.kvstore.client import EtcdClient
from meshcore.kvstore.types import KeyValue
from meshcore.store.heartbeat import HeartbeatWriter
from meshcore.store.syncstore import rfc3339_now
from meshcore.wire import (
    ClusterConfig,
    ClusterConfigCapabilities,
    ClusterService,
    IPIdentityPair,
    LabelSet,
    Node,
    NodeAddress,
    decode_cluster_config,
)
from meshcore.wire.keys import (
    apiserver_synced_keys,
    cache_ip_key,
    cache_node_key,
    cache_service_key,
    cluster_config_key,
    identity_cache_key,
    identity_key,
    ip_key,
    kvstoremesh_synced_keys,
    node_key,
    service_key,
)
from tests.meshcore.store.helpers import eventually


def remote_records(cluster: str, cluster_id: int) -> dict[str, bytes]:
    """A remote cluster's state keys and exact values (2 nodes, 1 service, 2 identities, 3 IPs)."""
    out: dict[str, bytes] = {}
    for i in range(2):
        n = Node(
            name=f"{cluster}-n{i}",
            cluster=cluster,
            cluster_id=cluster_id,
            ip_addresses=[NodeAddress("InternalIP", f"172.18.{cluster_id}.{i + 1}")],
        )
        out[node_key(cluster, n.name)] = n.encode()
    svc = ClusterService(cluster=cluster, namespace="default", name="web", shared=True, include_external=True,
                         cluster_id=cluster_id)
    out[service_key(cluster, "default", "web")] = svc.encode()
    ids = [(cluster_id << 16) + 100, (cluster_id << 16) + 101]
    for ident, app in zip(ids, ("web", "db"), strict=True):
        labels = LabelSet.from_strings(
            [f"k8s:app={app}", f"k8s:io.cilium.k8s.policy.cluster={cluster}", "k8s:io.kubernetes.pod.namespace=default"]
        )
        out[identity_key(ident)] = labels.encode()
    for i in range(3):
        pair = IPIdentityPair(ip=f"10.{cluster_id}.0.{i + 10}", host_ip=f"172.18.{cluster_id}.1", id=ids[i % 2],
                              k8s_namespace="default", k8s_pod_name=f"pod-{i}")
        out[ip_key(pair.prefix_string())] = pair.encode()
    return out


async def publish(
    etcd: EtcdProcess, cluster: str, cluster_id: int, *, service_exports: bool | None
) -> dict[str, bytes]:
    records = remote_records(cluster, cluster_id)
    caps = ClusterConfigCapabilities(
        synced_canaries=True, max_connected_clusters=255, service_exports_enabled=service_exports
    )
    async with EtcdClient(etcd.client_config()) as kv:
        for key, value in records.items():
            await kv.put(key, value)
        await kv.put(cluster_config_key(cluster), ClusterConfig(id=cluster_id, capabilities=caps).encode())
        for key in apiserver_synced_keys(cluster):
            await kv.put(key, rfc3339_now().encode())
    return records


def expected_cache(cluster: str, records: dict[str, bytes]) -> dict[str, bytes]:
    """Where KVStoreMesh must put each remote record in the local etcd."""
    out = {}
    for key, value in records.items():
        parts = key.split("/")
        if key.startswith("cilium/state/nodes/"):
            out[cache_node_key(cluster, parts[-1])] = value
        elif key.startswith("cilium/state/services/"):
            out[cache_service_key(cluster, parts[-2], parts[-1])] = value
        elif key.startswith("cilium/state/identities/"):
            out[identity_cache_key(cluster, int(parts[-1]))] = value
        elif key.startswith("cilium/state/ip/"):
            out[cache_ip_key(cluster, parts[-1])] = value
    return out


async def local_cache(local: EtcdClient, cluster: str) -> dict[str, KeyValue]:
    out: dict[str, KeyValue] = {}
    for prefix in cache_prefixes(cluster)[1:]:
        for item in (await local.list_prefix(prefix)).items:
            out[item.key] = item
    return out


@contextlib.asynccontextmanager
async def heartbeats(*etcds: EtcdProcess) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        tasks = []
        for etcd in etcds:
            kv = await stack.enter_async_context(EtcdClient(etcd.client_config()))
            tasks.append(asyncio.create_task(HeartbeatWriter(kv, None, interval=0.5).run()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=5)


@contextlib.asynccontextmanager
async def kvstoremesh_running(local: EtcdClient, config_dir: Path, **kwargs: object) -> AsyncIterator[KvstoreMesh]:
    settings: dict[str, object] = {
        "cluster_name": "c1",
        "cluster_id": 1,
        "config_dir": config_dir,
        "drain_grace": 0.0,
        "drain_retry_initial": 0.1,
        "heartbeat_interval": None,
        "config_interval": 0.05,
        "connect_timeout": 2.0,
        "reconnect_backoff": lambda: Backoff(initial=0.1, maximum=0.5),
    }
    settings.update(kwargs)
    kvstoremesh = KvstoreMesh(local, **settings)  # type: ignore[arg-type]
    task = asyncio.create_task(kvstoremesh.run())
    try:
        yield kvstoremesh
    finally:
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=10)
        assert done, "KvstoreMesh.run ignored cancellation"
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def wait_ready(kvstoremesh: KvstoreMesh, within: float = 15.0) -> None:
    async with asyncio.timeout(within):
        await kvstoremesh.ready.wait()


async def test_mirrors_two_remotes_into_cache_layout(etcd_factory: Callable[..., EtcdProcess], tmp_path: Path) -> None:
    local_etcd, r2, r3 = etcd_factory("local"), etcd_factory("c2"), etcd_factory("c3")
    rec2 = await publish(r2, "c2", 2, service_exports=False)
    rec3 = await publish(r3, "c3", 3, service_exports=None)  # a pre-MCS-API writer
    r2.write_config_yaml(tmp_path / "c2")
    r3.write_config_yaml(tmp_path / "c3")
    async with EtcdClient(local_etcd.client_config()) as local, heartbeats(r2, r3):
        async with kvstoremesh_running(local, tmp_path, heartbeat_interval=0.5) as kvm:
            await wait_ready(kvm)
            statuses = {s.name: s for s in kvm.status()}
            assert all(s.ready for s in statuses.values()) and sorted(statuses) == ["c2", "c3"]
            s2 = statuses["c2"]
            c = s2.counts
            assert (c.nodes, c.identities, c.endpoints, c.shared_services) == (2, 2, 3, 1)
            assert s2.counts.synced_nodes and s2.counts.synced_services

            for cluster, records, exports in (("c2", rec2, True), ("c3", rec3, False)):
                cache = await local_cache(local, cluster)
                assert {k: v.value for k, v in cache.items()} == expected_cache(cluster, records)
                assert all(item.lease != 0 for item in cache.values())  # leased
                item = await local.get(cluster_config_key(cluster))
                assert item is not None and item.lease != 0
                cfg = decode_cluster_config(item.value)
                caps = cfg.capabilities
                assert cfg.id == int(cluster[1:]) and caps.cached and caps.synced_canaries
                assert caps.service_exports_enabled == (False if exports else None)
                canaries = {i.key for i in (await local.list_prefix(f"cilium/synced/{cluster}/")).items}
                assert canaries == set(kvstoremesh_synced_keys(cluster, serviceexports=exports))
            assert await local.get("cilium/.heartbeat") is not None
            # Nothing was written to a remote: its keys are exactly what the apiserver wrote.
            async with EtcdClient(r2.client_config()) as kv2:
                keys = {i.key for i in (await kv2.list_prefix("cilium/")).items}
            assert keys == set(rec2) | {cluster_config_key("c2"), "cilium/.heartbeat", *apiserver_synced_keys("c2")}

            # Live changes flow through: an update and a delete on the remote.
            async with EtcdClient(r3.client_config()) as kv3:
                first_ip = sorted(k for k in rec3 if k.startswith("cilium/state/ip/"))[0]
                await kv3.delete(first_ip)
                n0 = node_key("c3", "c3-n0")
                changed = Node(name="c3-n0", cluster="c3", cluster_id=3,
                               ip_addresses=[NodeAddress("InternalIP", "172.18.3.99")]).encode()
                await kv3.put(n0, changed)
            ip_cached = cache_ip_key("c3", first_ip.rsplit("/", 1)[1])

            async def applied() -> bool:
                cache = await local_cache(local, "c3")
                return ip_cached not in cache and cache[cache_node_key("c3", "c3-n0")].value == changed

            await eventually(applied, within=5)


async def test_reconnect_sweeps_only_what_vanished(etcd_factory: Callable[..., EtcdProcess], tmp_path: Path) -> None:
    local_etcd, r2 = etcd_factory("local"), etcd_factory("c2")
    rec2 = await publish(r2, "c2", 2, service_exports=False)
    r2.write_config_yaml(tmp_path / "c2")
    async with EtcdClient(local_etcd.client_config()) as local, kvstoremesh_running(
        # A reconnect backoff long enough to delete a key while KVStoreMesh is not connected.
        local, tmp_path, reconnect_backoff=lambda: Backoff(initial=2.0, maximum=2.0, jitter=0.0)
    ) as kvm:
        async with heartbeats(r2):
            await wait_ready(kvm)
            before = await local_cache(local, "c2")
            config_before = await local.get(cluster_config_key("c2"))
            canaries_before = (await local.list_prefix("cilium/synced/c2/")).items
            assert len(before) == 8
            r2.kill()
        await eventually(lambda: not kvm.status()[0].connected, within=5)
        await r2.restart_async()
        gone = sorted(k for k in rec2 if k.startswith("cilium/state/ip/"))[0]
        async with EtcdClient(r2.client_config()) as kv2:
            assert await kv2.delete(gone) == 1
        assert not kvm.status()[0].connected  # the delete happened while KVStoreMesh was away
        # While disconnected the cache was kept as it was.
        assert await local_cache(local, "c2") == before
        async with heartbeats(r2):
            await eventually(lambda: kvm.status()[0].ready, within=10)
            gone_cached = cache_ip_key("c2", gone.rsplit("/", 1)[1])

            async def swept() -> bool:
                return gone_cached not in await local_cache(local, "c2")

            await eventually(swept, within=5)
            after = await local_cache(local, "c2")
            assert set(after) == set(before) - {gone_cached}
            for key, item in after.items():  # nothing else was touched: same revisions
                assert (item.create_revision, item.mod_revision) == (
                    before[key].create_revision,
                    before[key].mod_revision,
                ), key
            assert await local.get(cluster_config_key("c2")) == config_before
            assert (await local.list_prefix("cilium/synced/c2/")).items == canaries_before
            assert not kvm.works["c2"].drained.is_set()


async def test_removal_deletes_config_first_then_cache(
    etcd_factory: Callable[..., EtcdProcess], tmp_path: Path
) -> None:
    local_etcd, r2, r3 = etcd_factory("local"), etcd_factory("c2"), etcd_factory("c3")
    await publish(r2, "c2", 2, service_exports=False)
    await publish(r3, "c3", 3, service_exports=False)
    # A third cluster whose name extends c3's, in the local etcd: a prefix delete must spare it.
    async with EtcdClient(local_etcd.client_config()) as local:
        await local.put(cache_node_key("c30", "x"), b"{}")
        r2.write_config_yaml(tmp_path / "c2")
        r3.write_config_yaml(tmp_path / "c3")
        async with heartbeats(r2, r3), kvstoremesh_running(local, tmp_path, drain_grace=1.0) as kvm:
            await wait_ready(kvm)
            c2_before = await local_cache(local, "c2")
            assert len(await local_cache(local, "c3")) == 8
            (tmp_path / "c3").unlink()

            async def config_gone() -> bool:
                return await local.get(cluster_config_key("c3")) is None

            await eventually(config_gone, within=5)
            # During the grace period the cache is still there for agents still reading it.
            assert len(await local_cache(local, "c3")) == 8
            async with asyncio.timeout(10):
                await kvm.works["c3"].drained.wait()
            assert await local_cache(local, "c3") == {}
            assert (await local.list_prefix("cilium/synced/c3/")).items == []
            assert [s.name for s in kvm.status()] == ["c2"]
            assert await local_cache(local, "c2") == c2_before  # untouched
            assert await local.get(cache_node_key("c30", "x")) is not None

            # Re-adding it mirrors it again.
            r3.write_config_yaml(tmp_path / "c3")
            await eventually(lambda: any(s.name == "c3" and s.ready for s in kvm.status()), within=10)

            async def back() -> bool:
                return len(await local_cache(local, "c3")) == 8

            await eventually(back, within=5)


async def test_daemon_health_and_cluster_endpoint(etcd_factory: Callable[..., EtcdProcess], tmp_path: Path) -> None:
    local_etcd, r2 = etcd_factory("local"), etcd_factory("c2")
    await publish(r2, "c2", 2, service_exports=False)
    config_dir = tmp_path / "clustermesh"
    config_dir.mkdir()
    r2.write_config_yaml(config_dir / "c2")
    # c9 points nowhere: it must not hold up readiness beyond the per-cluster timeout.
    (config_dir / "c9").write_text("endpoints:\n- http://127.0.0.1:9\n")
    config = KvstoreMeshConfig(
        cluster_name="c1",
        cluster_id=1,
        config_dir=config_dir,
        etcd=local_etcd.client_config(),
        health_port=0,
        per_cluster_ready_timeout=1.0,
        global_ready_timeout=20.0,
        heartbeat_interval=0.5,
    )
    started: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_kvstoremesh(config, on_started=lambda _kvm, url: started.set_result(url)))

    def get(url: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    try:
        async with heartbeats(r2):
            url = await asyncio.wait_for(started, 10)

            async def ready() -> bool:
                return (await asyncio.to_thread(get, url + "/readyz"))[0] == 200

            await eventually(ready, within=15)
            code, body = await asyncio.to_thread(get, url + "/v1/cluster")
            assert code == 200
            clusters = {c["name"]: c for c in json.loads(body)}
            assert clusters["c2"]["ready"] is True and clusters["c2"]["num-nodes"] == 2
            assert clusters["c2"]["config"]["cluster-id"] == 2
            assert clusters["c9"]["ready"] is False and clusters["c9"]["num-failures"] >= 1
            assert (await asyncio.to_thread(get, url + "/healthz"))[0] == 200
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=10)


def test_cli_usage_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli_main, ["kvstoremesh", "--cluster-name", "c1", "--cluster-id", "1",
                                      "--clustermesh-config", str(tmp_path)])
    assert result.exit_code == 2 and "which etcd" in result.output
    result = runner.invoke(cli_main, ["kvstoremesh", "--cluster-name", "Bad", "--cluster-id", "1",
                                      "--clustermesh-config", str(tmp_path), "--etcd-endpoints", "http://127.0.0.1:1"])
    assert result.exit_code == 2 and "cluster name" in result.output
    result = runner.invoke(cli_main, ["kvstoremesh", "--cluster-name", "c1", "--cluster-id", "1",
                                      "--clustermesh-config", str(tmp_path), "--etcd-endpoints", "http://127.0.0.1:1",
                                      "--global-ready-timeout", "soon"])
    assert result.exit_code == 2 and "not a duration" in result.output


async def test_cached_source_is_read_from_cache_layout(
    etcd_factory: Callable[..., EtcdProcess], tmp_path: Path
) -> None:
    """KVStoreMesh reading another KVStoreMesh's etcd (config ``cached=true``) mirrors its cache."""
    r2, first, second = etcd_factory("c2"), etcd_factory("kvm1"), etcd_factory("kvm2")
    rec2 = await publish(r2, "c2", 2, service_exports=False)
    dir1, dir2 = tmp_path / "one", tmp_path / "two"
    dir1.mkdir()
    dir2.mkdir()
    r2.write_config_yaml(dir1 / "c2")
    first.write_config_yaml(dir2 / "c2")  # "c2", as cached by the first KVStoreMesh
    async with (
        EtcdClient(first.client_config()) as l1,
        EtcdClient(second.client_config()) as l2,
        heartbeats(r2),
        kvstoremesh_running(l1, dir1, heartbeat_interval=0.5),
        kvstoremesh_running(l2, dir2, cluster_name="c5", cluster_id=5) as kvm2,
    ):
        await wait_ready(kvm2)
        status = kvm2.status()[0]
        assert status.ready and status.config.kvstoremesh and status.counts.nodes == 2
        cache = await local_cache(l2, "c2")
        assert {k: v.value for k, v in cache.items()} == expected_cache("c2", rec2)
        canaries = {i.key for i in (await l2.list_prefix("cilium/synced/c2/")).items}
        assert canaries == set(kvstoremesh_synced_keys("c2", serviceexports=True))
