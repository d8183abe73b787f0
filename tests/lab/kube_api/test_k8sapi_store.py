"""The object store and pure helpers directly: resourceVersions, CRUD rules, history and compaction,
selectors, patches, CRD-driven registry changes, finalizers and namespace cascade."""

from __future__ import annotations

import asyncio

import pytest

from lab.kube.api import ApiError, ObjectStore
from lab.kube.api.kinds import DEFAULT_CRD_KINDS, version_priority
from lab.kube.api.patch import json_patch, merge_patch, strategic_merge_patch
from lab.kube.api.selectors import field_selector, label_selector


def cm(name: str, ns: str = "default", **labels: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "data": {"k": "v"}}


@pytest.fixture
def store() -> ObjectStore:
    s = ObjectStore(history_limit=50)
    s.install_crds(DEFAULT_CRD_KINDS)
    return s


def test_resource_versions_are_global_and_increasing(store: ObjectStore) -> None:
    a = store.create(cm("a"))
    n = store.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    b = store.update({**a, "data": {"k": "w"}})
    rvs = [int(a["metadata"]["resourceVersion"]), int(n["metadata"]["resourceVersion"]),
           int(b["metadata"]["resourceVersion"])]
    assert rvs == sorted(rvs) and len(set(rvs)) == 3
    assert store.resource_version == str(rvs[-1])
    assert a["metadata"]["uid"] == b["metadata"]["uid"]
    assert "namespace" not in n["metadata"]


def test_create_rules(store: ObjectStore) -> None:
    store.create(cm("a"))
    with pytest.raises(ApiError) as e:
        store.create(cm("a"))
    assert (e.value.code, e.value.reason) == (409, "AlreadyExists")
    with pytest.raises(ApiError) as e:
        store.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}})
    assert (e.value.code, e.value.reason) == (422, "Invalid")
    with pytest.raises(ApiError) as e:
        store.create(cm("Bad_Name"))
    assert e.value.code == 422
    with pytest.raises(ApiError) as e:
        store.create(cm("x", ns="nope"))
    assert e.value.code == 404
    g = store.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-"}})
    assert g["metadata"]["name"].startswith("web-") and len(g["metadata"]["name"]) == 9


def test_update_conflict_and_noop(store: ObjectStore) -> None:
    a = store.create(cm("a"))
    store.update({**a, "data": {"k": "2"}})
    with pytest.raises(ApiError) as e:
        store.update({**a, "data": {"k": "3"}})
    assert (e.value.code, e.value.reason) == (409, "Conflict")
    cur = store.get("configmaps", "a")
    same = store.update(cur)
    assert same["metadata"]["resourceVersion"] == cur["metadata"]["resourceVersion"]


def test_generation_and_status_subresource(store: ObjectStore) -> None:
    se = store.create({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
                       "metadata": {"name": "web", "namespace": "default"}, "spec": {}})
    assert se["metadata"]["generation"] == 1
    st = store.update({**se, "status": {"conditions": [{"type": "Valid", "status": "True"}]}},
                      subresource="status")
    assert st["metadata"]["generation"] == 1 and st["status"]["conditions"][0]["type"] == "Valid"
    sp = store.update({**st, "spec": {"x": 1}, "status": {}}, keep_status=False)
    assert sp["metadata"]["generation"] == 2 and sp["status"]["conditions"][0]["status"] == "True"


def test_service_defaults_and_secret_string_data(store: ObjectStore) -> None:
    svc = store.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                        "spec": {"ports": [{"port": 80}]}})
    assert svc["spec"]["clusterIP"].startswith("10.96.") and svc["spec"]["ports"][0]["targetPort"] == 80
    sec = store.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"a": "b"}})
    assert sec["data"] == {"a": "Yg=="} and sec["type"] == "Opaque"


async def test_watch_replay_and_compaction(store: ObjectStore) -> None:
    a = store.create(cm("a"))
    rv0 = a["metadata"]["resourceVersion"]
    store.patch("configmaps", "a", {"data": {"k": "2"}})
    store.delete("configmaps", "a")
    w = store.watch("configmaps", resource_version=rv0)
    events = await w.next_batch(1.0)
    assert [t for t, _ in events] == ["MODIFIED", "DELETED"]
    w.close()
    store.compact()
    with pytest.raises(ApiError) as e:
        store.watch("configmaps", resource_version=rv0)
    assert (e.value.code, e.value.reason) == (410, "Expired")
    store.watch("configmaps", resource_version=store.resource_version).close()


async def test_history_is_bounded(store: ObjectStore) -> None:
    first = store.create(cm("a"))["metadata"]["resourceVersion"]
    for i in range(60):
        store.patch("configmaps", "a", {"data": {"k": str(i)}})
    assert len(store.history("configmaps")) == 50
    with pytest.raises(ApiError):
        store.watch("configmaps", resource_version=first)


async def test_watch_selector_transitions(store: ObjectStore) -> None:
    store.create(cm("a", app="x"))
    w = store.watch("configmaps", label_selector="app=x", resource_version=store.resource_version)
    store.patch("configmaps", "a", {"metadata": {"labels": {"app": "y"}}})
    store.patch("configmaps", "a", {"metadata": {"labels": {"app": "x"}}})
    store.create(cm("b", app="z"))
    events = await w.next_batch(1.0)
    assert [t for t, _ in events] == ["DELETED", "ADDED"]
    w.close()


async def test_watch_woken_from_another_thread(store: ObjectStore) -> None:
    w = store.watch("configmaps", resource_version=store.resource_version)
    await asyncio.to_thread(store.create, cm("t"))
    events = await w.next_batch(2.0)
    assert [(t, o["metadata"]["name"]) for t, o in events] == [("ADDED", "t")]
    w.close()


def test_finalizers_delay_deletion(store: ObjectStore) -> None:
    store.create({**cm("f"), "metadata": {"name": "f", "finalizers": ["x/y"]}})
    marked = store.delete("configmaps", "f")
    assert marked["metadata"]["deletionTimestamp"]
    cleared = store.patch("configmaps", "f", {"metadata": {"finalizers": None}})
    assert cleared["metadata"]["name"] == "f"
    with pytest.raises(ApiError):
        store.get("configmaps", "f")


def test_namespace_delete_cascades(store: ObjectStore) -> None:
    store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tmp"}})
    store.create(cm("a", ns="tmp"))
    store.delete("namespaces", "tmp")
    assert store.list("configmaps", "tmp")[0] == []


def test_crd_changes_what_is_served(store: ObjectStore) -> None:
    reg = store.registry
    assert reg.lookup("multicluster.x-k8s.io", "v1alpha1", "serviceexports") is not None
    crd = store.get("crd", "serviceexports.multicluster.x-k8s.io")
    crd["spec"]["versions"] = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    crd["spec"]["versions"][0]["storage"] = True
    store.update(crd)
    assert reg.lookup("multicluster.x-k8s.io", "v1alpha1", "serviceexports") is None
    assert reg.lookup("multicluster.x-k8s.io", "v1beta1", "serviceexports") is not None
    store.create({"apiVersion": "cilium.io/v2", "kind": "CiliumNode", "metadata": {"name": "n"}})
    store.delete("crd", "ciliumnodes.cilium.io")
    assert reg.resolve("ciliumnodes") is None
    with pytest.raises(ApiError) as e:
        store.create({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                      "metadata": {"name": "wrong.example.com"},
                      "spec": {"group": "example.com", "scope": "Cluster",
                               "names": {"plural": "things", "kind": "Thing"},
                               "versions": [{"name": "v1", "served": True, "storage": True}]}})
    assert e.value.code == 422


def test_label_selectors() -> None:
    obj = {"metadata": {"labels": {"app": "x", "tier": "web"}}}
    for sel, want in [("app=x", True), ("app==x", True), ("app!=x", False), ("app in (x,y)", True),
                      ("app notin (x,y)", False), ("tier", True), ("!tier", False), ("!missing", True),
                      ("app=x,tier in (db)", False), ("missing!=z", True), ("", True)]:
        assert label_selector(sel)(obj) is want, sel
    with pytest.raises(ApiError):
        label_selector("app===x")


def test_field_selectors() -> None:
    obj = {"metadata": {"name": "a", "namespace": "ns"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}}
    assert field_selector("metadata.name=a,metadata.namespace==ns")(obj)
    assert field_selector("spec.nodeName!=n2,status.phase=Running")(obj)
    assert not field_selector("metadata.name=b")(obj)


def test_patches() -> None:
    base = {"a": {"b": 1, "c": 2}, "l": [1, 2],
            "spec": {"containers": [{"name": "x", "image": "i1"}, {"name": "y", "image": "i2"}]}}
    assert merge_patch(base, {"a": {"b": None, "d": 3}, "l": [3]})["a"] == {"c": 2, "d": 3}
    smp = strategic_merge_patch(base, {"l": [9], "spec": {"containers": [{"name": "y", "image": "i3"}]}})
    assert smp["l"] == [9]
    assert smp["spec"]["containers"] == [{"name": "x", "image": "i1"}, {"name": "y", "image": "i3"}]
    deleted = strategic_merge_patch(base, {"spec": {"containers": [{"name": "x", "$patch": "delete"}]}})
    assert [c["name"] for c in deleted["spec"]["containers"]] == ["y"]
    jp = json_patch(base, [{"op": "add", "path": "/l/-", "value": 3}, {"op": "remove", "path": "/a/b"},
                           {"op": "replace", "path": "/a/c", "value": 5}, {"op": "test", "path": "/a/c", "value": 5}])
    assert jp["l"] == [1, 2, 3] and jp["a"] == {"c": 5}


def test_version_priority() -> None:
    assert sorted(["v1alpha1", "v1beta1", "v1", "v2", "v2beta2", "foo"], key=version_priority) == \
        ["v2", "v1", "v2beta2", "v1beta1", "v1alpha1", "foo"]
