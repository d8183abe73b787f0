"""kubernetes mode (no Cilium): core Nodes and Pods become nodes, identities allocated here and
ipcache entries with the node's InternalIP as HostIP; identities keep their IDs across restarts,
from etcd and, when etcd was wiped, from the state directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lab.etcd import EtcdProcess
from lab.kube.api import K8sApiServer
from lab.wait import poll_until
from meshcore.kvstore.client import EtcdClient
from meshcore.wire import IPIdentityPair, LabelSet, Node

IDS = "cilium/state/identities/v1/id/"
IPS = "cilium/state/ip/v1/default/"


def node(name: str, ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"podCIDR": "10.1.0.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]},
    }


def pod(name: str, app: str, node_name: str, ip: str, *, host_network: bool = False) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": app, "pod-template-hash": "abc"}},
        "spec": {
            "nodeName": node_name,
            "serviceAccountName": "default",
            "hostNetwork": host_network,
            "containers": [{"name": "c", "image": "x", "ports": [{"name": "http", "containerPort": 8080}]}],
        },
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "192.0.2.1"},
    }


async def identities(client: EtcdClient) -> dict[str, int]:
    """app label -> identity ID, from etcd."""
    out = {}
    for kv in (await client.list_prefix(IDS)).items:
        labels = LabelSet.decode(kv.value)
        app = labels.get("app")
        assert app is not None and labels.cluster() == "c1"
        out[app.value] = int(kv.key[len(IDS) :])
    return out


async def pairs(client: EtcdClient) -> dict[str, IPIdentityPair]:
    listing = await client.list_prefix(IPS)
    return {kv.key[len(IPS) :]: IPIdentityPair.decode(kv.value, key=kv.key) for kv in listing.items}


async def test_kubernetes_mode_exports_and_keeps_identities(
    emulator: K8sApiServer,
    kubeconfig: Path,
    tmp_path: Path,
    etcd: EtcdProcess,
    etcd_client: EtcdClient,
    make_config: Any,
    run_server: Any,
    objects: Any,
) -> None:
    store = emulator.store
    store.create(objects.namespace("shop", labels={"team": "blue"}))
    store.create(node("k1", "172.19.0.2"))
    store.create(node("k2", "172.19.0.3"))
    store.create(pod("a-1", "a", "k1", "10.1.0.10"))
    store.create(pod("a-2", "a", "k2", "10.1.0.11"))
    store.create(pod("b-1", "b", "k1", "10.1.0.12"))
    store.create(pod("host", "h", "k1", "172.19.0.2", host_network=True))
    config = make_config(etcd.client_config(), kubeconfig, source="kubernetes", state_dir=tmp_path / "state")

    async with run_server(config):
        ids = await identities(etcd_client)
        assert set(ids) == {"a", "b"}  # one per label set; the host-network pod has none
        low = 1 << 16
        assert all(low <= i < 2 * low for i in ids.values())
        entries = await pairs(etcd_client)
        assert set(entries) == {"10.1.0.10", "10.1.0.11", "10.1.0.12"}
        assert entries["10.1.0.10"].host_ip == "172.19.0.2" and entries["10.1.0.11"].host_ip == "172.19.0.3"
        assert entries["10.1.0.10"].id == entries["10.1.0.11"].id == ids["a"]
        labels = LabelSet.decode((await etcd_client.get(f"{IDS}{ids['a']}")).value)  # type: ignore[union-attr]
        assert labels.get("io.cilium.k8s.namespace.labels.team") is not None
        assert labels.get("pod-template-hash") is None  # filtered like Cilium's label filter
        assert Node.decode((await etcd_client.get("cilium/state/nodes/v1/c1/k1")).value).source == "k8s"  # type: ignore[union-attr]
        # The node's InternalIP changes: its pods' HostIP follows.
        store.update(node("k1", "172.19.0.9") | {"metadata": store.get("nodes", "k1")["metadata"]})
        assert await poll_until(lambda: _host_ip(etcd_client, "10.1.0.10", "172.19.0.9"), within=5)
        revisions = {kv.key: kv.create_revision for kv in (await etcd_client.list_prefix(IDS)).items}

    async with run_server(config):
        assert await identities(etcd_client) == ids
        assert {kv.key: kv.create_revision for kv in (await etcd_client.list_prefix(IDS)).items} == revisions

    # etcd is wiped; b goes away and c arrives while the server is down: a keeps its ID (state file).
    await etcd_client.delete_prefix("cilium/")
    store.delete("pods", "b-1", "shop")
    store.create(pod("c-1", "c", "k2", "10.1.0.13"))
    async with run_server(config):
        after = await identities(etcd_client)
        assert set(after) == {"a", "c"} and after["a"] == ids["a"]
        assert (await pairs(etcd_client))["10.1.0.13"].id == after["c"]
    assert (tmp_path / "state" / "identities.json").stat().st_mode & 0o777 == 0o600


async def _host_ip(client: EtcdClient, ip: str, host_ip: str) -> bool:
    kv = await client.get(IPS + ip)
    return kv is not None and IPIdentityPair.decode(kv.value, key=kv.key).host_ip == host_ip
