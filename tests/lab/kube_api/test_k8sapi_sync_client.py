"""The official sync ``kubernetes`` client against the emulator over HTTP: CoreV1Api, CustomObjectsApi,
DiscoveryV1Api, CRUD, selectors, conflicts, patches, the status subresource and ``watch.Watch``."""

from __future__ import annotations

import threading
import time

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from lab.kube.api import K8sApiServer


def _svc(name: str, app: str) -> client.V1Service:
    return client.V1Service(metadata=client.V1ObjectMeta(name=name, labels={"app": app}),
                            spec=client.V1ServiceSpec(ports=[client.V1ServicePort(port=80)], selector={"app": app}))


def test_core_crud(api_client: client.ApiClient) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="app")))
    created = core.create_namespaced_service("app", _svc("web", "x"))
    assert created.spec.cluster_ip and created.metadata.uid
    got = core.read_namespaced_service("web", "app")
    assert got.metadata.resource_version == created.metadata.resource_version
    got.metadata.labels["extra"] = "1"
    updated = core.replace_namespaced_service("web", "app", got)
    assert int(updated.metadata.resource_version) > int(got.metadata.resource_version)
    core.delete_namespaced_service("web", "app")
    with pytest.raises(ApiException) as e:
        core.read_namespaced_service("web", "app")
    assert e.value.status == 404
    with pytest.raises(ApiException) as e:
        core.create_namespaced_config_map("app", client.V1ConfigMap(metadata=client.V1ObjectMeta()))
    assert e.value.status == 422


def test_already_exists_and_conflict(api_client: client.ApiClient) -> None:
    core = client.CoreV1Api(api_client)
    cm = core.create_namespaced_config_map("default", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="c"), data={"a": "1"}))
    with pytest.raises(ApiException) as e:
        core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c")))
    assert e.value.status == 409 and "AlreadyExists" in str(e.value.body)
    core.patch_namespaced_config_map("c", "default", {"data": {"a": "2"}})
    cm.data = {"a": "3"}
    with pytest.raises(ApiException) as e:
        core.replace_namespaced_config_map("c", "default", cm)
    assert e.value.status == 409 and "Conflict" in str(e.value.body)


def test_label_and_field_selectors(api_client: client.ApiClient) -> None:
    core = client.CoreV1Api(api_client)
    for name, app in [("a", "x"), ("b", "y"), ("c", "z")]:
        core.create_namespaced_service("default", _svc(name, app))
    names = lambda sel: sorted(s.metadata.name for s in  # noqa: E731
                               core.list_namespaced_service("default", label_selector=sel).items)
    assert names("app=x") == ["a"]
    assert names("app in (x,y)") == ["a", "b"]
    assert names("app notin (x)") == ["b", "c"]
    assert names("app!=z") == ["a", "b"]
    assert names("app") == ["a", "b", "c"]
    assert names("!app") == []
    by_field = core.list_service_for_all_namespaces(field_selector="metadata.name=b,metadata.namespace=default")
    assert [s.metadata.name for s in by_field.items] == ["b"]


def test_patches_and_status(api_client: client.ApiClient) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_pod("default", client.V1Pod(
        metadata=client.V1ObjectMeta(name="p", labels={"a": "1"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c1", image="i1"),
                                           client.V1Container(name="c2", image="i2")])))
    # strategic merge patch (the client's default for dict bodies on core kinds): keyed list merge
    p = core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"b": "2"}},
                                                   "spec": {"containers": [{"name": "c2", "image": "i3"}]}})
    assert p.metadata.labels == {"a": "1", "b": "2"}
    assert [(c.name, c.image) for c in p.spec.containers] == [("c1", "i1"), ("c2", "i3")]
    # status only through the subresource
    p.status = client.V1PodStatus(phase="Running", pod_ip="10.0.0.5")
    core.replace_namespaced_pod("p", "default", p)
    assert core.read_namespaced_pod("p", "default").status is None or \
        core.read_namespaced_pod("p", "default").status.pod_ip is None
    core.patch_namespaced_pod_status("p", "default", {"status": {"phase": "Running", "podIP": "10.0.0.5"}})
    assert core.read_namespaced_pod_status("p", "default").status.pod_ip == "10.0.0.5"
    # JSON patch
    core.patch_namespaced_pod("p", "default", [{"op": "remove", "path": "/metadata/labels/a"}])
    assert core.read_namespaced_pod("p", "default").metadata.labels == {"b": "2"}


def test_custom_objects_and_endpointslices(api_client: client.ApiClient) -> None:
    co = client.CustomObjectsApi(api_client)
    node = {"apiVersion": "cilium.io/v2", "kind": "CiliumNode", "metadata": {"name": "n1", "labels": {"z": "a"}},
            "spec": {"addresses": [{"type": "InternalIP", "ip": "10.0.0.1"}]}}
    made = co.create_cluster_custom_object("cilium.io", "v2", "ciliumnodes", node)
    assert made["metadata"]["generation"] == 1
    patched = co.patch_cluster_custom_object("cilium.io", "v2", "ciliumnodes", "n1",
                                             {"spec": {"ipam": {"podCIDRs": ["10.1.0.0/24"]}}})
    assert patched["spec"]["addresses"][0]["ip"] == "10.0.0.1" and patched["metadata"]["generation"] == 2
    listed = co.list_cluster_custom_object("cilium.io", "v2", "ciliumnodes", label_selector="z=a")
    assert [o["metadata"]["name"] for o in listed["items"]] == ["n1"]
    se = {"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport", "metadata": {"name": "web"}}
    co.create_namespaced_custom_object("multicluster.x-k8s.io", "v1alpha1", "default", "serviceexports", se)
    via_beta = co.get_namespaced_custom_object("multicluster.x-k8s.io", "v1beta1", "default", "serviceexports",
                                               "web")
    assert via_beta["apiVersion"] == "multicluster.x-k8s.io/v1beta1"
    co.patch_namespaced_custom_object_status("multicluster.x-k8s.io", "v1alpha1", "default", "serviceexports",
                                             "web", {"status": {"conditions": [{"type": "Valid"}]}})
    got = co.get_namespaced_custom_object("multicluster.x-k8s.io", "v1alpha1", "default", "serviceexports", "web")
    assert got["status"]["conditions"] == [{"type": "Valid"}]
    co.delete_cluster_custom_object("cilium.io", "v2", "ciliumnodes", "n1")
    assert co.list_cluster_custom_object("cilium.io", "v2", "ciliumnodes")["items"] == []

    disc = client.DiscoveryV1Api(api_client)
    eps = client.V1EndpointSlice(
        address_type="IPv4", metadata=client.V1ObjectMeta(name="web-abc", labels={
            "kubernetes.io/service-name": "web"}),
        endpoints=[client.V1Endpoint(addresses=["10.1.0.5"], conditions=client.V1EndpointConditions(ready=True))],
        ports=[client.DiscoveryV1EndpointPort(port=80, protocol="TCP")])
    disc.create_namespaced_endpoint_slice("default", eps)
    out = disc.list_namespaced_endpoint_slice("default", label_selector="kubernetes.io/service-name=web")
    assert out.items[0].endpoints[0].addresses == ["10.1.0.5"]


def test_pagination(api_client: client.ApiClient) -> None:
    core = client.CoreV1Api(api_client)
    for i in range(5):
        core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"c{i}")))
    first = core.list_namespaced_config_map("default", limit=2)
    assert len(first.items) == 2 and first.metadata._continue and first.metadata.remaining_item_count == 3
    rest = core.list_namespaced_config_map("default", limit=10, _continue=first.metadata._continue)
    assert [c.metadata.name for c in first.items + rest.items] == [f"c{i}" for i in range(5)]


def test_watch_with_bookmarks(api_client: client.ApiClient, k8s_server: K8sApiServer) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="pre")))
    rv = core.list_namespaced_config_map("default").metadata.resource_version

    def writer() -> None:
        time.sleep(0.3)
        k8s_server.store.create({"apiVersion": "v1", "kind": "ConfigMap",
                                 "metadata": {"name": "live", "namespace": "default"}})

    t = threading.Thread(target=writer)
    t.start()
    w = watch.Watch()
    seen: list[tuple[str, str]] = []
    bookmarks = 0
    for ev in w.stream(core.list_namespaced_config_map, "default", resource_version=rv,
                       allow_watch_bookmarks=True, timeout_seconds=2):
        if ev["type"] == "BOOKMARK":
            bookmarks += 1
        else:
            seen.append((ev["type"], ev["object"].metadata.name))
        if seen and bookmarks >= 2:
            w.stop()
    t.join(5)
    assert seen == [("ADDED", "live")]
    assert bookmarks >= 2
    assert int(w.resource_version) >= int(rv)


def test_watch_from_zero_and_timeout(api_client: client.ApiClient) -> None:
    core = client.CoreV1Api(api_client)
    start = time.monotonic()
    events = [e["type"] for e in watch.Watch().stream(core.list_namespace, resource_version="0", timeout_seconds=1)]
    assert events == ["ADDED"] * 4  # default, kube-node-lease, kube-public, kube-system
    assert 0.8 < time.monotonic() - start < 5


def test_watch_compacted_raises_410(api_client: client.ApiClient, k8s_server: K8sApiServer) -> None:
    core = client.CoreV1Api(api_client)
    old = core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c")))
    core.patch_namespaced_config_map("c", "default", {"data": {"a": "1"}})
    k8s_server.store.compact()
    with pytest.raises(ApiException) as e:
        for _ in watch.Watch().stream(core.list_namespaced_config_map, "default",
                                      resource_version=old.metadata.resource_version, timeout_seconds=2):
            pass
    assert e.value.status == 410


def test_delete_collection_and_protected_namespaces(api_client: client.ApiClient) -> None:
    core = client.CoreV1Api(api_client)
    for i, tier in enumerate(["a", "a", "b"]):
        core.create_namespaced_config_map("default", client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=f"c{i}", labels={"tier": tier})))
    core.delete_collection_namespaced_config_map("default", label_selector="tier=a")
    assert [c.metadata.name for c in core.list_namespaced_config_map("default").items] == ["c2"]
    with pytest.raises(ApiException) as e:
        core.delete_namespace("kube-system")
    assert e.value.status == 403
