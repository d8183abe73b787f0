"""The I/O-free exporters on their own (dict-backed stores): pending objects wait for their
namespace, namespace flips re-evaluate, slices follow their Service, and kubernetes-mode
identities are shared, switched and released with the pods that use them."""

from __future__ import annotations

import copy
from typing import Any

from clustermesh_apiserver.converters import IdentityAllocator
from clustermesh_apiserver.exporters import Exporters, ExportSettings, ExportStores
from meshcore.wire import IPIdentityPair, LabelSet


class DictStore:
    def __init__(self) -> None:
        self.kv: dict[str, bytes] = {}

    def upsert(self, name: str, value: bytes) -> None:
        self.kv[name] = value

    def delete(self, name: str) -> None:
        self.kv.pop(name, None)


def make(allocator: IdentityAllocator | None = None) -> tuple[Exporters, dict[str, DictStore]]:
    stores = {n: DictStore() for n in ("nodes", "identities", "ip", "services", "serviceexports")}
    settings = ExportSettings(cluster="c1", cluster_id=1)
    return Exporters(ExportStores(**stores), settings, allocator=allocator), stores


def test_pending_namespace_and_flip(objects: Any) -> None:
    exporters, stores = make()
    exporters.handle("CiliumEndpoint", objects.cilium_endpoint("a", "shop", "10.0.0.1", 65600), deleted=False)
    exporters.handle("Service", objects.service("web", "shop"), deleted=False)
    assert stores["ip"].kv == {} and stores["services"].kv == {}  # namespace unknown: pending
    exporters.handle("Namespace", objects.namespace("shop"), deleted=False)
    assert set(stores["ip"].kv) == {"10.0.0.1"} and set(stores["services"].kv) == {"shop/web"}
    exporters.handle("Namespace", objects.namespace("shop", global_=False), deleted=False)
    assert stores["ip"].kv == {} and stores["services"].kv == {}
    exporters.handle("Namespace", objects.namespace("shop", global_=True), deleted=False)
    assert set(stores["ip"].kv) == {"10.0.0.1"}


def test_endpoint_slices_follow_their_service(objects: Any) -> None:
    exporters, stores = make()
    exporters.handle("Namespace", objects.namespace("shop"), deleted=False)
    exporters.handle("Service", objects.service("web", "shop"), deleted=False)
    exporters.handle("Service", objects.service("api", "shop", "10.96.0.11"), deleted=False)
    slice_obj = objects.endpoint_slice("web", "shop", ["10.0.0.1"])
    exporters.handle("EndpointSlice", slice_obj, deleted=False)
    assert b"10.0.0.1" in stores["services"].kv["shop/web"]
    # The same slice relabelled to another Service moves its backends.
    slice_obj = copy.deepcopy(slice_obj)  # events carry new objects
    slice_obj["metadata"]["labels"]["kubernetes.io/service-name"] = "api"
    exporters.handle("EndpointSlice", slice_obj, deleted=False)
    assert b"10.0.0.1" not in stores["services"].kv["shop/web"]
    assert b"10.0.0.1" in stores["services"].kv["shop/api"]
    exporters.handle("EndpointSlice", slice_obj, deleted=True)
    assert b"10.0.0.1" not in stores["services"].kv["shop/api"]


def pod(name: str, app: str, ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
        "spec": {"nodeName": "k1"},
        "status": {"phase": "Running", "podIP": ip, "hostIP": "192.0.2.9"},
    }


def test_kubernetes_mode_identities_are_refcounted(objects: Any) -> None:
    exporters, stores = make(IdentityAllocator(1))
    exporters.handle("Namespace", objects.namespace("shop"), deleted=False)
    exporters.handle("Pod", pod("a-1", "a", "10.0.0.1"), deleted=False)
    exporters.handle("Pod", pod("a-2", "a", "10.0.0.2"), deleted=False)
    (ident,) = stores["identities"].kv
    assert LabelSet.decode(stores["identities"].kv[ident]).cluster() == "c1"
    pairs = {k: IPIdentityPair.decode(v) for k, v in stores["ip"].kv.items()}
    assert {p.id for p in pairs.values()} == {int(ident)}
    assert {p.host_ip for p in pairs.values()} == {"192.0.2.9"}  # Node unknown: status.hostIP
    # A node with an InternalIP appears: HostIP follows.
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "k1"},
            "status": {"addresses": [{"type": "InternalIP", "address": "172.19.0.2"}]}}
    exporters.handle("Node", node, deleted=False)
    assert {IPIdentityPair.decode(v).host_ip for v in stores["ip"].kv.values()} == {"172.19.0.2"}
    # a-2 changes its labels: a new identity; the old one stays while a-1 uses it.
    exporters.handle("Pod", pod("a-2", "b", "10.0.0.2"), deleted=False)
    assert len(stores["identities"].kv) == 2
    exporters.handle("Pod", pod("a-1", "a", "10.0.0.1"), deleted=True)
    assert list(stores["identities"].kv) != [ident] and len(stores["identities"].kv) == 1
    assert set(stores["ip"].kv) == {"10.0.0.2"}
    assert exporters.pods is not None and len(exporters.pods.allocator) == 1
