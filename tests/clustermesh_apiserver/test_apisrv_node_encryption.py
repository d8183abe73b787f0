"""End to end: the agent's :func:`agent.nodepublish.publish_node_encryption` writes the WireGuard
key on the Node / CiliumNode of the Kubernetes API emulator, and the clustermesh-apiserver exports
it in the node record in a real etcd (``WireguardPubKey``, ``EncryptionKey``), in both source
modes. A later key change is an annotation-only change of the object: it must be re-exported too
(Cilium's bug #25492 dropped such updates). So must a rotating node's next key
(``clustermesh.io/wg-next-pub-key``, in the record's ``Annotations``), and its removal."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from agent.nodepublish import ENCRYPTION_KEY_ANNOTATION, publish_node_encryption
from clustermesh_apiserver.converters import kubernetes as k8s_converter
from clustermesh_apiserver.converters.annotations import WIREGUARD_NEXT_PUB_KEY
from lab.etcd import EtcdProcess
from lab.kube.api import K8sApiServer
from lab.wait import poll_until
from meshcore.kvstore.client import EtcdClient

KEY = "cilium/state/nodes/v1/c1/n1"


def wg_key() -> str:
    """A random 32-byte key in WireGuard's base64 (only its shape matters here)."""
    return base64.b64encode(os.urandom(32)).decode()


def core_node(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"podCIDR": "10.1.0.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": "172.19.0.2"}]},
    }


async def record(client: EtcdClient) -> dict[str, Any]:
    kv = await client.get(KEY)
    return {} if kv is None else dict(json.loads(kv.value))


async def exported(client: EtcdClient, public_key: str, encryption_key: int) -> bool:
    doc = await record(client)
    return doc.get("WireguardPubKey") == public_key and doc.get("EncryptionKey") == encryption_key


async def next_key_exported(client: EtcdClient, next_key: str | None) -> bool:
    return ((await record(client)).get("Annotations") or {}).get(WIREGUARD_NEXT_PUB_KEY) == next_key


def test_the_node_annotation_is_the_one_the_converter_reads() -> None:
    assert ENCRYPTION_KEY_ANNOTATION == k8s_converter._ANN_ENCRYPTION_KEY


@pytest.mark.parametrize("source", ["kubernetes", "cilium"])
async def test_published_keys_are_exported_and_annotation_only_changes_follow(
    source: str,
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
    store.create(core_node("n1"))  # every cluster has the Node; cilium mode also the CiliumNode
    if source == "cilium":
        store.create(objects.cilium_node("n1"))
    config = make_config(etcd.client_config(), kubeconfig, source=source, state_dir=tmp_path / "state")
    async with run_server(config):
        assert await poll_until(lambda: _has_record(etcd_client), within=5)
        assert (await record(etcd_client)).get("WireguardPubKey", "") == ""

        first = wg_key()
        await publish_node_encryption(kubeconfig, "n1", public_key=first, encryption_key=255)
        assert await poll_until(lambda: exported(etcd_client, first, 255), within=5), await record(etcd_client)
        node = store.get("nodes", "n1")
        assert node["metadata"]["annotations"]["network.cilium.io/wg-pub-key"] == first
        assert node["metadata"]["annotations"][ENCRYPTION_KEY_ANNOTATION] == "255"
        if source == "cilium":
            cn = store.get("ciliumnodes.cilium.io", "n1")
            assert cn["metadata"]["annotations"]["network.cilium.io/wg-pub-key"] == first
            assert cn["spec"]["encryption"] == {"key": 255}

        # Again with the same keys: nothing is written.
        versions = _versions(store, source)
        await publish_node_encryption(kubeconfig, "n1", public_key=first, encryption_key=255)
        assert _versions(store, source) == versions

        # A new key (the node rebooted): only an annotation changes, and the record follows.
        second = wg_key()
        await publish_node_encryption(kubeconfig, "n1", public_key=second, encryption_key=255)
        assert await poll_until(lambda: exported(etcd_client, second, 255), within=5), await record(etcd_client)

        # Opted out of node encryption: EncryptionKey 0, the key stays published.
        await publish_node_encryption(kubeconfig, "n1", public_key=second, encryption_key=0)
        assert await poll_until(lambda: exported(etcd_client, second, 0), within=5), await record(etcd_client)
        if source == "kubernetes":
            assert ENCRYPTION_KEY_ANNOTATION not in store.get("nodes", "n1")["metadata"]["annotations"]

        # A rotation: the next key is announced next to the current one, then withdrawn.
        third = wg_key()
        await publish_node_encryption(kubeconfig, "n1", public_key=second, encryption_key=255, next_public_key=third)
        assert await poll_until(lambda: next_key_exported(etcd_client, third), within=5), await record(etcd_client)
        assert await exported(etcd_client, second, 255)
        versions = _versions(store, source)
        await publish_node_encryption(kubeconfig, "n1", public_key=second, encryption_key=255, next_public_key=third)
        assert _versions(store, source) == versions
        await publish_node_encryption(kubeconfig, "n1", public_key=third, encryption_key=255)
        assert await poll_until(lambda: next_key_exported(etcd_client, None), within=5), await record(etcd_client)
        assert await exported(etcd_client, third, 255)
        for kind in ["nodes", "ciliumnodes.cilium.io"] if source == "cilium" else ["nodes"]:
            assert WIREGUARD_NEXT_PUB_KEY not in store.get(kind, "n1")["metadata"]["annotations"]


async def _has_record(client: EtcdClient) -> bool:
    return bool(await record(client))


def _versions(store: Any, source: str) -> list[str]:
    kinds = ["nodes", "ciliumnodes.cilium.io"] if source == "cilium" else ["nodes"]
    return [store.get(kind, "n1")["metadata"]["resourceVersion"] for kind in kinds]
