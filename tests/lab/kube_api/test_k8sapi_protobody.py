"""Protobuf request bodies (lab/kube/api/protobody.py): the wire decoder on hand-encoded messages, and the
real kubectl's typed ``create`` commands, which send protobuf, against the emulator."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable

import pytest

from lab.kube.api import K8sApiServer, protobody
from lab.kube.api.errors import ApiError

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def varint(n: int) -> bytes:
    out = b""
    n &= (1 << 64) - 1
    while True:
        b, n = n & 0x7F, n >> 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def ld(num: int, data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return varint(num << 3 | 2) + varint(len(raw)) + raw


def vi(num: int, value: int) -> bytes:
    return varint(num << 3) + varint(value)


def entry(num: int, key: str, value: bytes | str) -> bytes:
    return ld(num, ld(1, key) + ld(2, value))


def envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    return protobody.MAGIC + ld(1, ld(1, api_version) + ld(2, kind)) + ld(2, raw) + ld(3, "") + ld(4, "")


def meta(name: str, namespace: str = "") -> bytes:
    # as Go writes it: every non-pointer field, empty or not, and an empty creationTimestamp
    return (ld(1, name) + ld(2, "") + ld(3, namespace) + ld(4, "") + ld(5, "") + ld(6, "") + vi(7, 0) + ld(8, b"")
            + entry(11, "app", "x"))


def test_configmap_as_go_encodes_it() -> None:
    raw = ld(1, meta("cfg", "shop")) + entry(2, "a", "b") + entry(2, "empty", "") + entry(3, "bin", b"\x00\xff")
    obj = protobody.decode(envelope("v1", "ConfigMap", raw))
    assert obj == {"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "cfg", "namespace": "shop", "labels": {"app": "x"}},
                   "data": {"a": "b", "empty": ""}, "binaryData": {"bin": base64.b64encode(b"\x00\xff").decode()}}


def test_secret_rbac_and_unknown_fields() -> None:
    raw = ld(1, meta("s")) + entry(2, "k", b"v") + ld(3, "Opaque") + vi(5, 1) + ld(99, "ignored") + vi(98, 7)
    assert protobody.decode(envelope("v1", "Secret", raw)) == {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "labels": {"app": "x"}},
        "data": {"k": "dg=="}, "type": "Opaque", "immutable": True}
    rule = ld(1, "get") + ld(1, "list") + ld(2, "") + ld(3, "pods")
    binding = (ld(1, meta("rb")) + ld(2, ld(1, "ServiceAccount") + ld(3, "sa") + ld(4, "ns"))
               + ld(3, ld(1, "rbac.authorization.k8s.io") + ld(2, "Role") + ld(3, "r")))
    role = protobody.decode(envelope("rbac.authorization.k8s.io/v1", "Role", ld(1, meta("r")) + ld(2, rule)))
    assert role["rules"] == [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}]  # "": core
    rb = protobody.decode(envelope("rbac.authorization.k8s.io/v1", "RoleBinding", binding))
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "sa", "namespace": "ns"}]
    assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"}


def test_negative_int64_and_fixed_width_fields() -> None:
    raw = ld(1, ld(1, "n") + vi(10, -1)) + varint(97 << 3 | 1) + b"\x00" * 8 + varint(96 << 3 | 5) + b"\x00" * 4
    assert protobody.decode(envelope("v1", "Namespace", raw))["metadata"] == {"name": "n",
                                                                              "deletionGracePeriodSeconds": -1}


@pytest.mark.parametrize(("body", "code", "words"), [
    (b'{"kind": "Namespace"}', 400, "magic"),
    (envelope("apps/v1", "Deployment", b""), 415, "only for ClusterRole, ClusterRoleBinding, ConfigMap"),
    (envelope("v1", "ConfigMap", ld(1, b"\x0a\x05ab")), 400, "truncated"),
    (envelope("v1", "ConfigMap", varint(1 << 3 | 3)), 400, "wire type"),
    (envelope("v1", "ConfigMap", vi(1, 5)), 400, "message field"),
])
def test_bodies_that_cannot_be_decoded(body: bytes, code: int, words: str) -> None:
    with pytest.raises(ApiError) as err:
        protobody.decode(body)
    assert err.value.code == code and words in err.value.message


def test_kubectl_typed_creates_send_protobuf_and_work(kubectl: Kubectl, k8s_server: K8sApiServer) -> None:
    assert kubectl("create", "namespace", "shop").stdout.strip() == "namespace/shop created"
    assert "configmap/cfg created" in kubectl("create", "configmap", "cfg", "-n", "shop", "--from-literal=a=b",
                                              "--from-literal=c=d").stdout
    kubectl("create", "secret", "generic", "s", "-n", "shop", "--from-literal=k=v")
    kubectl("create", "serviceaccount", "sa", "-n", "shop")
    kubectl("create", "role", "r", "-n", "shop", "--verb=get", "--resource=pods")
    kubectl("create", "rolebinding", "rb", "-n", "shop", "--role=r", "--serviceaccount=shop:sa")
    store = k8s_server.store
    ns = store.get("namespaces", "shop")
    assert ns["status"]["phase"] == "Active" and "generateName" not in ns["metadata"]
    assert store.get("configmaps", "cfg", "shop")["data"] == {"a": "b", "c": "d"}
    assert base64.b64decode(store.get("secrets", "s", "shop")["data"]["k"]) == b"v"
    assert store.get("serviceaccounts", "sa", "shop")["metadata"]["name"] == "sa"
    assert store.get("roles", "r", "shop")["rules"] == [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]
    assert store.get("rolebindings", "rb", "shop")["subjects"] == [
        {"kind": "ServiceAccount", "name": "sa", "namespace": "shop"}]
    proc = kubectl("create", "deployment", "d", "--image=x", "-n", "shop", check=False)
    assert proc.returncode != 0 and "send it as JSON or YAML" in proc.stderr
