"""Kubernetes mode: core Node -> Node, Pod -> identity labels and ipcache entries, the label
filter and the identity allocator."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clustermesh_apiserver.converters import (
    DEFAULT_LABEL_FILTER,
    IdentityAllocator,
    cilium_node_to_node,
    node_to_node,
    pod_identity_labels,
    pod_to_pairs,
)
from clustermesh_apiserver.converters.annotations import WIREGUARD_NEXT_PUB_KEY
from clustermesh_apiserver.converters.labelfilter import LabelFilter, parse_label_prefix
from meshcore.errors import WireError
from meshcore.wire import Label, LabelSet, NamedPort
from meshcore.wire.clusterinfo import identity_range

NODE: dict[str, Any] = {
    "metadata": {
        "name": "worker-1",
        "labels": {"kubernetes.io/hostname": "worker-1"},
        "annotations": {
            "network.cilium.io/wg-pub-key": "WG=",
            "node.alpha.kubernetes.io/ttl": "0",
            "network.cilium.io/ipv4-cilium-host": "10.244.1.1",
            "network.cilium.io/ipv4-health-ip": "10.244.1.2",
            "network.cilium.io/ipv6-pod-cidr": "fd00:1::/64",
        },
    },
    "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
    "status": {
        "addresses": [
            {"type": "InternalIP", "address": "172.18.0.3"},
            {"type": "InternalIP", "address": "172.18.0.99"},
            {"type": "Hostname", "address": "worker-1"},
            {"type": "ExternalIP", "address": "fc00::3"},
        ],
        "nodeInfo": {"bootID": "boot-1"},
    },
}


def test_node_to_node() -> None:
    node = node_to_node(NODE, cluster="k1", cluster_id=7)
    assert [(a.type, a.ip) for a in node.ip_addresses or []] == [
        ("InternalIP", "172.18.0.3"),
        ("ExternalIP", "fc00::3"),
        ("CiliumInternalIP", "10.244.1.1"),
    ]
    assert node.ipv4_alloc_cidr is not None and str(node.ipv4_alloc_cidr) == "10.244.1.0/24"
    assert node.ipv6_alloc_cidr is not None and str(node.ipv6_alloc_cidr) == "fd00:1::/64"
    assert node.ipv4_health_ip == "10.244.1.2"
    assert node.source == "k8s" and node.cluster == "k1" and node.cluster_id == 7
    assert node.wireguard_pub_key == "WG=" and node.boot_id == "boot-1"
    assert node.labels == {"kubernetes.io/hostname": "worker-1"}
    assert node.annotations is not None and "node.alpha.kubernetes.io/ttl" not in node.annotations
    assert node.annotations["network.cilium.io/wg-pub-key"] == "WG="
    assert node.key_name() == "k1/worker-1"


def test_node_exports_the_next_wireguard_key_and_no_other_clustermesh_io_annotation() -> None:
    meta = {
        **NODE["metadata"],
        "annotations": {
            **NODE["metadata"]["annotations"],
            WIREGUARD_NEXT_PUB_KEY: "NEXT=",
            "clustermesh.io/other": "x",
        },
    }
    node = node_to_node({**NODE, "metadata": meta}, cluster="k1", cluster_id=7)
    assert node.annotations is not None and node.annotations[WIREGUARD_NEXT_PUB_KEY] == "NEXT="
    assert "clustermesh.io/other" not in node.annotations
    assert json.loads(node.encode())["Annotations"][WIREGUARD_NEXT_PUB_KEY] == "NEXT="
    assert node.wireguard_pub_key == "WG="  # the current key is unchanged
    only_other = {**NODE["metadata"], "annotations": {"clustermesh.io/encryption": "disabled"}}
    assert node_to_node({**NODE, "metadata": only_other}, cluster="k1", cluster_id=7).annotations == {}


def test_cilium_node_keeps_the_next_wireguard_key() -> None:
    obj = {"metadata": {"name": "n1", "annotations": {WIREGUARD_NEXT_PUB_KEY: "NEXT=", "clustermesh.io/x": "y"}}}
    node = cilium_node_to_node(obj, cluster="c1", cluster_id=1)
    assert node.annotations == {WIREGUARD_NEXT_PUB_KEY: "NEXT=", "clustermesh.io/x": "y"}  # all, as Cilium


def test_bare_node_encodes_empty_collections() -> None:
    data = json.loads(node_to_node({"metadata": {"name": "n"}}, cluster="k1", cluster_id=1).encode())
    assert data["IPAddresses"] == [] and data["Labels"] == {} and data["Annotations"] == {}


NAMESPACE = {"metadata": {"name": "shop", "labels": {"kubernetes.io/metadata.name": "shop", "team": "a"}}}
POD: dict[str, Any] = {
    "metadata": {
        "name": "web-5d8f-abc",
        "namespace": "shop",
        "uid": "uid-1",
        "labels": {
            "app": "web",
            "pod-template-hash": "5d8f",
            "controller-revision-hash": "x",
            "pod-template-generation": "1",
            "app.kubernetes.io/name": "web",
            "kubernetes.io/other": "drop",
            "statefulset.kubernetes.io/pod-name": "drop",
            "io.cilium.k8s.policy.cluster": "spoofed",
        },
    },
    "spec": {
        "serviceAccountName": "web-sa",
        "containers": [
            {"ports": [{"name": "http", "containerPort": 8080}, {"containerPort": 9090}]},
            {"ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"}, {"name": "http", "containerPort": 1}]},
        ],
    },
    "status": {"phase": "Running", "podIP": "10.244.1.10", "podIPs": [{"ip": "10.244.1.10"}, {"ip": "fd00:1::a"}]},
}


def test_pod_identity_labels() -> None:
    labels = pod_identity_labels(POD, NAMESPACE, cluster="k1")
    assert labels.format() == (
        "k8s:app=web;"
        "k8s:app.kubernetes.io/name=web;"
        "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=shop;"
        "k8s:io.cilium.k8s.namespace.labels.team=a;"
        "k8s:io.cilium.k8s.policy.cluster=k1;"
        "k8s:io.cilium.k8s.policy.serviceaccount=web-sa;"
        "k8s:io.kubernetes.pod.namespace=shop;"
    )
    assert labels.cluster() == "k1"


def test_pod_identity_labels_without_service_account_or_namespace_object() -> None:
    pod = {"metadata": {"name": "p", "namespace": "ns", "labels": {"io.cilium.k8s.policy.serviceaccount": "x"}}}
    labels = pod_identity_labels(pod, None, cluster="k1")
    assert labels.format() == "k8s:io.cilium.k8s.policy.cluster=k1;k8s:io.kubernetes.pod.namespace=ns;"


@pytest.mark.parametrize(
    ("key", "kept"),
    [
        ("app", True),
        ("pod-template-hash", False),
        ("pod-template-hashish", False),  # prefix match, as Cilium
        ("io.kubernetes.pod.namespace", True),
        ("io.kubernetes.container.name", False),
        ("topology.kubernetes.io/zone", True),  # '!kubernetes\.io' must match at the start
        ("kubernetes.io/arch", False),
        ("beta.kubernetes.io/arch", False),
        ("failure-domain.beta.kubernetes.io/zone", False),
        ("k8s.io/x", False),
        ("annotation.foo", False),
        ("io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name", True),
        ("io.cilium.k8s.policy.serviceaccount", True),
    ],
)
def test_default_label_filter(key: str, kept: bool) -> None:
    assert DEFAULT_LABEL_FILTER.is_identity_label(Label("k8s", key, "v")) is kept


def test_reserved_prefix_is_source_bound_and_whitelist_mode() -> None:
    only_app = LabelFilter([parse_label_prefix("k8s:app")], whitelist=True)
    assert only_app.is_identity_label(Label("k8s", "app", "x"))
    assert not only_app.is_identity_label(Label("k8s", "tier", "x"))
    assert not only_app.is_identity_label(Label("container", "app", "x"))
    with pytest.raises(ValueError):
        parse_label_prefix("k8s:")


def test_pod_to_pairs() -> None:
    pairs = pod_to_pairs(POD, 458752, host_ip="172.18.0.3")
    assert [p.ip for p in pairs] == ["10.244.1.10", "fd00:1::a"]
    first = pairs[0]
    assert (first.host_ip, first.id, first.k8s_namespace, first.k8s_pod_name, first.k8s_pod_uid) == (
        "172.18.0.3",
        458752,
        "shop",
        "web-5d8f-abc",
        "uid-1",
    )
    assert first.k8s_service_account == "web-sa"
    assert first.named_ports == [NamedPort("http", 8080, "TCP"), NamedPort("dns", 53, "UDP")]
    assert first.prefix_string() == "10.244.1.10"


@pytest.mark.parametrize(
    "patch",
    [{"spec": {"hostNetwork": True}}, {"status": {"phase": "Succeeded", "podIP": "10.0.0.1"}}, {"status": {}}],
)
def test_pod_without_own_ips_gives_no_pairs(patch: dict[str, Any]) -> None:
    assert pod_to_pairs({**POD, **patch}, 1, host_ip="172.18.0.3") == []


def test_pod_ip_fallback() -> None:
    pod = {**POD, "status": {"podIP": "10.0.0.7"}}
    assert [p.ip for p in pod_to_pairs(pod, 1, host_ip="")] == ["10.0.0.7"]


# --- IdentityAllocator ----------------------------------------------------------------------


def _labels(i: int) -> LabelSet:
    return LabelSet.from_strings([f"k8s:app=a{i}", "k8s:io.cilium.k8s.policy.cluster=c"])


def test_allocator_lowest_free_and_release() -> None:
    low, _ = identity_range(3)
    alloc = IdentityAllocator(3, {_labels(0): low + 1})
    assert alloc.allocate(_labels(1)) == (low, True)
    assert alloc.allocate(_labels(2)) == (low + 2, True)
    assert alloc.allocate(_labels(1)) == (low, False)
    assert alloc.release(_labels(0)) == low + 1
    assert alloc.release(low + 1) is None
    assert alloc.allocate(_labels(3)) == (low + 1, True)
    assert alloc.release(low + 2) == low + 2 and alloc.lookup(_labels(2)) is None
    assert alloc.labels_of(low) == _labels(1) and len(alloc) == 2


def test_allocator_rejects_bad_existing_and_exhaustion() -> None:
    low, high = identity_range(1)
    with pytest.raises(WireError):
        IdentityAllocator(1, {_labels(0): high + 1})
    with pytest.raises(WireError):
        IdentityAllocator(1, {_labels(0): low, _labels(1): low})
    alloc = IdentityAllocator(1, {_labels(i): low + i for i in range(high - low)})
    assert alloc.allocate(_labels(-1)) == (high, True)
    with pytest.raises(WireError):
        alloc.allocate(_labels(-2))


ops = st.lists(st.tuples(st.sampled_from(["alloc", "release"]), st.integers(0, 40)), max_size=120)


@settings(max_examples=200, deadline=None)
@given(cluster_id=st.integers(1, 255), existing=st.dictionaries(st.integers(0, 40), st.integers(0, 60)), ops=ops)
def test_allocator_invariants(cluster_id: int, existing: dict[int, int], ops: list[tuple[str, int]]) -> None:
    low, high = identity_range(cluster_id)
    seen_ids: set[int] = set()
    initial = {}
    for label_no, offset in existing.items():
        if low + offset not in seen_ids:
            seen_ids.add(low + offset)
            initial[_labels(label_no)] = low + offset
    alloc = IdentityAllocator(cluster_id, initial)
    for labels, ident in initial.items():  # re-presented sets keep their persisted IDs
        assert alloc.allocate(labels) == (ident, False)
    for op, n in ops:
        if op == "release":
            alloc.release(_labels(n))
            continue
        before = alloc.allocations()
        ident, new = alloc.allocate(_labels(n))
        assert low <= ident <= high
        if _labels(n) in before:
            assert (ident, new) == (before[_labels(n)], False)
        else:
            assert new and ident not in before.values()
            assert ident == min(set(range(low, low + len(before) + 1)) - set(before.values()))  # lowest free
        current = alloc.allocations()
        assert len(set(current.values())) == len(current)  # unique
    # A restart from the persisted map reproduces every allocation.
    restarted = IdentityAllocator(cluster_id, alloc.allocations())
    for labels, ident in alloc.allocations().items():
        assert restarted.allocate(labels) == (ident, False)
