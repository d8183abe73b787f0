"""The daemon in cilium mode, end to end: CiliumNodes, CiliumIdentities, CiliumEndpoints and a
global Service in the Kubernetes API emulator become Cilium's keys in a real etcd, with canaries,
cluster config, heartbeat and health endpoints; live changes and namespace flips follow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from lab.etcd import EtcdProcess
from lab.kube.api import K8sApiServer
from lab.wait import poll_until
from meshcore.kvstore.client import EtcdClient
from meshcore.wire import ClusterConfig, ClusterService, IPIdentityPair, LabelSet, Node
from meshcore.wire import keys as wk

NODE = "cilium/state/nodes/v1/c1/n1"
IDENTITY = "cilium/state/identities/v1/id/65600"
IP = "cilium/state/ip/v1/default/10.244.1.10"
SERVICE = "cilium/state/services/v1/c1/shop/web"


async def keys(client: EtcdClient, prefix: str = "cilium/") -> dict[str, bytes]:
    return {kv.key: kv.value for kv in (await client.list_prefix(prefix)).items}


async def http_get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


def seed(emulator: K8sApiServer, objects: Any) -> None:
    store = emulator.store
    store.create(objects.namespace("shop"))
    store.create(objects.cilium_node("n1"))
    store.create(objects.cilium_identity(65600, "shop", "web"))
    store.create(objects.cilium_endpoint("web-1", "shop", "10.244.1.10", 65600))
    store.create(objects.service("web", "shop"))
    store.create(objects.endpoint_slice("web", "shop", ["10.244.1.10"]))


async def test_exports_cilium_resources(
    emulator: K8sApiServer,
    kubeconfig: Path,
    etcd: EtcdProcess,
    etcd_client: EtcdClient,
    make_config: Any,
    run_server: Any,
    objects: Any,
) -> None:
    seed(emulator, objects)
    async with run_server(make_config(etcd.client_config(), kubeconfig)) as server:
        kv = await keys(etcd_client)
        node = Node.decode(kv[NODE])
        assert node.name == "n1" and node.cluster == "c1" and node.cluster_id == 1
        assert LabelSet.decode(kv[IDENTITY]).format() == (
            "k8s:app=web;k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.kubernetes.pod.namespace=shop;"
        )
        pair = IPIdentityPair.decode(kv[IP], key=IP)
        assert (pair.id, pair.host_ip, pair.k8s_pod_name) == (65600, "172.18.0.2", "web-1")
        svc = ClusterService.decode(kv[SERVICE])
        assert list(svc.frontends) == ["10.96.0.10"] and list(svc.backends) == ["10.244.1.10"]
        assert svc.shared and svc.include_external and svc.cluster_id == 1
        for canary in wk.apiserver_synced_keys("c1"):
            assert canary in kv, canary
        config = ClusterConfig.decode(kv[wk.cluster_config_key("c1")])
        assert config.id == 1 and config.capabilities.synced_canaries
        assert config.capabilities.max_connected_clusters == 255
        assert config.capabilities.service_exports_enabled is False
        assert wk.HEARTBEAT in kv
        # Every exported key is leased.
        leased = {item.key: item.lease for item in (await etcd_client.list_prefix("cilium/")).items}
        assert all(leased.values()), [k for k, lease in leased.items() if not lease]

        assert await http_get(server.health_url + "/readyz") == (200, "Ready")
        status, body = await http_get(server.health_url + "/healthz")
        assert status == 200 and set(json.loads(body).values()) == {"ok"}
        status, metrics = await http_get(server.health_url + "/metrics")
        assert status == 200
        assert "clustermesh_apiserver_bootstrap_seconds" in metrics
        assert 'clustermesh_apiserver_kvstore_keys_written_total{job="ip"}' in metrics
        events = 'clustermesh_apiserver_kubernetes_events_total{action="upsert",resource="ciliumendpoints"} 1.0'
        assert events in metrics

        # Live changes.
        store = emulator.store
        store.delete("ciliumendpoints.cilium.io", "web-1", "shop")
        assert await poll_until(lambda: _absent(etcd_client, IP), within=5)
        store.create(objects.cilium_endpoint("web-2", "shop", "10.244.1.11", 65600))
        ip2 = "cilium/state/ip/v1/default/10.244.1.11"
        assert await poll_until(lambda: _present(etcd_client, ip2), within=5)

        # The namespace turns local: its identities, IPs and services go; back to global: they return.
        store.update(objects.namespace("shop", global_=False) | {"metadata": _meta(store, "shop", False)})
        for key in (IDENTITY, ip2, SERVICE):
            assert await poll_until(lambda k=key: _absent(etcd_client, k), within=5), key  # type: ignore[misc]
        assert await _present(etcd_client, NODE)  # nodes are not namespaced
        store.update(objects.namespace("shop", global_=True) | {"metadata": _meta(store, "shop", True)})
        for key in (IDENTITY, ip2, SERVICE):
            assert await poll_until(lambda k=key: _present(etcd_client, k), within=5), key  # type: ignore[misc]


def _meta(store: Any, name: str, global_: bool) -> dict[str, Any]:
    meta: dict[str, Any] = store.get("namespaces", name)["metadata"]
    meta["annotations"] = {"clustermesh.cilium.io/global": "true" if global_ else "false"}
    return meta


async def _present(client: EtcdClient, key: str) -> bool:
    return await client.get(key) is not None


async def _absent(client: EtcdClient, key: str) -> bool:
    return await client.get(key) is None
