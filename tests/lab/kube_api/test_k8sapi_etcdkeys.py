"""kube-apiserver's etcd key layout (pure): known keys, and every served kind round-trips, so no object
could be written where a restart would not find it."""

from __future__ import annotations

import pytest

from lab.kube.api.etcdkeys import decode_object, encode_object, object_key, parse_key, sentinel_key
from lab.kube.api.kinds import BUILTIN_KINDS, DEFAULT_CRD_KINDS


@pytest.mark.parametrize(("group", "plural", "crd", "ns", "key"), [
    ("", "pods", False, "default", "/registry/pods/default/p"),
    ("", "nodes", False, None, "/registry/minions/p"),
    ("", "services", False, "default", "/registry/services/specs/default/p"),
    ("", "endpoints", False, "default", "/registry/services/endpoints/default/p"),
    ("", "namespaces", False, None, "/registry/namespaces/p"),
    ("apps", "deployments", False, "kube-system", "/registry/deployments/kube-system/p"),
    ("rbac.authorization.k8s.io", "clusterroles", False, None, "/registry/clusterroles/p"),
    ("discovery.k8s.io", "endpointslices", False, "default", "/registry/endpointslices/default/p"),
    ("apiextensions.k8s.io", "customresourcedefinitions", False, None,
     "/registry/apiextensions.k8s.io/customresourcedefinitions/p"),
    ("cilium.io", "ciliumnodes", True, None, "/registry/cilium.io/ciliumnodes/p"),
    ("cilium.io", "ciliumendpoints", True, "default", "/registry/cilium.io/ciliumendpoints/default/p"),
])
def test_kube_apiserver_keys(group: str, plural: str, crd: bool, ns: str | None, key: str) -> None:
    assert object_key("/registry", group, plural, crd, ns, "p") == key
    assert parse_key("/registry", key) == (group, plural)


@pytest.mark.parametrize("info", [*BUILTIN_KINDS, *DEFAULT_CRD_KINDS], ids=lambda k: k.resource)
def test_every_served_kind_round_trips(info: object) -> None:
    from lab.kube.api.kinds import KindInfo
    assert isinstance(info, KindInfo)
    key = object_key("/lab", info.group, info.plural, info.crd, "ns1" if info.namespaced else None, "x")
    assert parse_key("/lab", key) == info.storage_key


def test_foreign_and_own_keys_are_not_objects() -> None:
    for key in (sentinel_key("/registry"), "/registry/ranges/serviceips", "/registry/masterleases/10.0.0.1",
                "/other/pods/default/p", "/registry/pods"):
        assert parse_key("/registry", key) is None


def test_values_carry_no_resource_version() -> None:
    obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "resourceVersion": "7"}}
    raw = encode_object(obj)
    assert b"resourceVersion" not in raw and obj["metadata"]["resourceVersion"] == "7"
    assert decode_object(raw, 42)["metadata"] == {"name": "p", "resourceVersion": "42"}
    with pytest.raises(ValueError):
        decode_object(b"k8s\x00\x0a\x09protobuf", 1)
