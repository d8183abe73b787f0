"""Edge cases of the CiliumNode, CiliumIdentity, CiliumEndpoint(Slice), Service and
ServiceExport converters that the corpus does not exercise."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from clustermesh_apiserver.converters import (
    cilium_endpoint_slice_to_pairs,
    cilium_endpoint_to_pairs,
    cilium_identity_to_labels,
    cilium_node_to_node,
    identity_namespace,
    is_global_service,
    is_shared_service,
    namespace_is_global,
    service_affinity,
    service_export_to_spec,
    service_to_cluster_service,
)
from meshcore.wire import CIDR, BackendZone, ForZone, L4Addr

# --- CiliumNode -----------------------------------------------------------------------------


def test_node_pools_go_to_secondary_and_bad_values_are_dropped() -> None:
    obj = {
        "metadata": {"name": "n1", "annotations": {"io.cilium.network.wg-pub-key": "KEY"}},
        "spec": {
            "ipam": {
                "podCIDRs": ["10.0.1.0/24", "bogus", "fd00::/64"],
                "pools": {"allocated": [{"pool": "p", "cidrs": ["10.0.2.7/24", "fd01::/64"]}]},
            },
            "addresses": [{"ip": "not-an-ip", "type": "InternalIP"}, {"ip": "::ffff:1.2.3.4", "type": "ExternalIP"}],
            "health": {"ipv4": "fd00::1", "ipv6": "fd00::2"},
            "ingress": {"ipv4": "10.0.1.9"},
            "encryption": {"key": 258},
        },
    }
    node = cilium_node_to_node(obj, cluster="c1", cluster_id=1)
    assert node.ipv4_alloc_cidr == CIDR("10.0.1.0", b"\xff\xff\xff\x00")
    assert node.ipv4_secondary_alloc_cidrs == [CIDR("10.0.2.0", b"\xff\xff\xff\x00")]
    assert node.ipv6_alloc_cidr is not None and node.ipv6_alloc_cidr.ip == "fd00::"
    assert node.ipv6_secondary_alloc_cidrs is not None and node.ipv6_secondary_alloc_cidrs[0] == CIDR(
        "fd01::", b"\xff" * 8 + b"\x00" * 8
    )
    assert [(a.type, a.ip) for a in node.ip_addresses or []] == [("ExternalIP", "1.2.3.4")]
    assert (node.ipv4_health_ip, node.ipv6_health_ip) == ("", "fd00::2")  # wrong family dropped
    assert node.ipv4_ingress_ip == "10.0.1.9"
    assert node.encryption_key == 2  # uint8(258)
    assert node.wireguard_pub_key == "KEY"  # legacy alias
    assert node.labels is None and node.source == "custom-resource"


def test_node_without_anything_encodes_nils() -> None:
    node = cilium_node_to_node({"metadata": {"name": "bare"}}, cluster="c1", cluster_id=1)
    data = json.loads(node.encode())
    assert data["IPAddresses"] is None and data["IPv4AllocCIDR"] is None and data["Annotations"] is None


# --- CiliumIdentity -------------------------------------------------------------------------


def test_identity_without_labels_or_numeric_name_is_skipped() -> None:
    assert cilium_identity_to_labels({"metadata": {"name": "123"}}) is None
    assert cilium_identity_to_labels({"metadata": {"name": "abc"}, "security-labels": {"k8s:a": "b"}}) is None


def test_identity_label_sources() -> None:
    obj = {
        "metadata": {"name": "70000"},
        "security-labels": {"k8s:app": "x", "reserved:host": "", "nosource": "v", "$world": ""},
    }
    converted = cilium_identity_to_labels(obj)
    assert converted is not None
    ident, labels = converted
    assert ident == 70000
    assert labels.format() == "k8s:app=x;reserved:host=;unspec:nosource=v;reserved:world=;"
    assert identity_namespace(obj) == ""
    assert identity_namespace({"security-labels": {"k8s:io.kubernetes.pod.namespace": "ns"}}) == "ns"


# --- CiliumEndpoint / CiliumEndpointSlice ---------------------------------------------------


def test_endpoint_skips_empty_and_invalid_ips() -> None:
    obj = {
        "metadata": {"name": "p", "namespace": "ns", "ownerReferences": [{"kind": "ReplicaSet", "uid": "rs"}]},
        "status": {
            "networking": {"addressing": [{"ipv6": "fd00::0001"}, {"ipv4": "300.1.1.1"}], "node": "bad"},
            "named-ports": [],
        },
    }
    pairs = cilium_endpoint_to_pairs(obj)
    assert [(p.ip, p.host_ip, p.id, p.k8s_pod_uid, p.named_ports) for p in pairs] == [("fd00::1", "", 0, "", None)]
    assert cilium_endpoint_to_pairs({"metadata": {"name": "x"}}) == []


def test_endpoint_slice_without_encryption_or_networking() -> None:
    obj = {"namespace": "ns", "endpoints": [{"name": "a", "id": 5}, {"name": "b", "networking": {}}]}
    assert cilium_endpoint_slice_to_pairs(obj) == []


# --- annotations and namespaces -------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotations", "global_", "shared", "affinity"),
    [
        (None, False, False, ""),
        ({"service.cilium.io/global": "TRUE"}, True, True, ""),
        ({"io.cilium/global-service": "true", "io.cilium/shared-service": "false"}, True, False, ""),
        ({"service.cilium.io/global": "false", "io.cilium/global-service": "true"}, False, False, ""),
        ({"service.cilium.io/shared": "true", "service.cilium.io/affinity": "local"}, False, False, ""),
        ({"service.cilium.io/global": "true", "service.cilium.io/affinity": "Remote"}, True, True, "remote"),
        ({"service.cilium.io/global": "true", "io.cilium/service-affinity": "local"}, True, True, "local"),
        ({"service.cilium.io/global": "true", "service.cilium.io/affinity": "sideways"}, True, True, ""),
        ({"service.cilium.io/global": "true", "service.cilium.io/shared": "yes"}, True, False, ""),
    ],
)
def test_service_annotations(annotations: dict[str, str] | None, global_: bool, shared: bool, affinity: str) -> None:
    assert is_global_service(annotations) is global_
    assert is_shared_service(annotations) is shared
    assert service_affinity(annotations) == affinity


def test_namespace_is_global() -> None:
    ns: dict[str, Any] = {"metadata": {"name": "a"}}
    assert namespace_is_global(ns, default_global=True) and not namespace_is_global(ns, default_global=False)
    assert not namespace_is_global(None, default_global=True)
    ns["metadata"]["annotations"] = {"clustermesh.cilium.io/global": "True"}
    assert namespace_is_global(ns, default_global=False)
    ns["metadata"]["annotations"] = {"clustermesh.cilium.io/global": "yes"}
    assert not namespace_is_global(ns, default_global=True)


# --- Service -> ClusterService --------------------------------------------------------------

GLOBAL = {"service.cilium.io/global": "true"}


def _service(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"clusterIP": "10.96.0.1", "ports": [{"name": "http", "port": 80}]}
    base.update(spec)
    return {"metadata": {"name": "svc", "namespace": "ns", "annotations": GLOBAL}, "spec": base}


def _slice(name: str, endpoints: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {"name": name, "namespace": "ns", "labels": {"kubernetes.io/service-name": "svc"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080}],
    }
    obj.update(extra)
    return obj


def test_service_backend_conditions() -> None:
    endpoints: list[dict[str, Any]] = [
        {"addresses": ["10.0.0.1"]},  # no conditions: ready
        {"addresses": ["10.0.0.2"], "conditions": {"ready": False, "serving": True, "terminating": True}},
        {"addresses": ["10.0.0.3"], "conditions": {"ready": False, "serving": False}},
        {"addresses": ["10.0.0.4"], "conditions": {"ready": False}},  # serving unknown: serving
        {"addresses": ["not-an-ip"]},
    ]
    cs = service_to_cluster_service(_service(), [_slice("s1", endpoints)], cluster="c", cluster_id=1)
    assert cs is not None and cs.backends is not None
    assert sorted(cs.backends) == ["10.0.0.1", "10.0.0.2", "10.0.0.4"]
    assert cs.backends["10.0.0.1"] == {"http": L4Addr("TCP", 8080)}
    assert cs.frontends == {"10.96.0.1": {"http": L4Addr("TCP", 80)}}


def test_service_ports_zones_hostnames_and_foreign_slices() -> None:
    slices = [
        _slice(
            "s1",
            [{"addresses": ["10.0.0.1"], "zone": "z1", "hostname": "pod-a"}],
            ports=[{"port": 53, "protocol": "UDP"}, {"name": "x", "port": 1, "protocol": "ICMP"}, {"name": "np"}],
        ),
        _slice("other", [{"addresses": ["10.0.0.9"]}], metadata={"name": "other", "namespace": "ns"}),
        _slice("fqdn", [{"addresses": ["example.com"]}], addressType="FQDN"),
        {
            **_slice("elsewhere", [{"addresses": ["10.0.0.8"]}]),
            "metadata": {"name": "e", "namespace": "ns2", "labels": {"kubernetes.io/service-name": "svc"}},
        },
    ]
    cs = service_to_cluster_service(_service(), slices, cluster="c", cluster_id=1)
    assert cs is not None
    assert cs.backends == {"10.0.0.1": {"": L4Addr("UDP", 53)}}
    assert cs.zones == {"10.0.0.1": BackendZone("z1", [])}
    assert cs.hostnames == {"10.0.0.1": "pod-a"}
    data = json.loads(cs.encode())
    assert data["zones"] == {"10.0.0.1": {"zone": "z1", "forZones": []}}
    assert data["hostnames"] == {"10.0.0.1": "pod-a"}


def test_service_headless_dual_stack_and_not_shared() -> None:
    headless = service_to_cluster_service(_service(clusterIP="None"), [], cluster="c", cluster_id=1)
    assert headless is not None and headless.frontends == {}
    dual = service_to_cluster_service(_service(clusterIPs=["10.96.0.1", "fd00::1"]), [], cluster="c", cluster_id=1)
    assert dual is not None and dual.frontends is not None and sorted(dual.frontends) == ["10.96.0.1", "fd00::1"]
    svc = _service()
    svc["metadata"]["annotations"] = {**GLOBAL, "service.cilium.io/shared": "false"}
    assert service_to_cluster_service(svc, [], cluster="c", cluster_id=1) is None
    svc["metadata"]["annotations"] = {}
    assert service_to_cluster_service(svc, [], cluster="c", cluster_id=1) is None


def test_service_zone_hints() -> None:
    ep = {"addresses": ["10.0.0.1"], "zone": "z1", "hints": {"forZones": [{"name": "z1"}, {"name": "z2"}]}}
    cs = service_to_cluster_service(_service(), [_slice("s", [ep])], cluster="c", cluster_id=1)
    assert cs is not None and cs.zones == {"10.0.0.1": BackendZone("z1", [ForZone("z1"), ForZone("z2")])}


# --- ServiceExport -> MCSAPIServiceSpec -----------------------------------------------------


def _export(**meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "svc", "namespace": "ns", **meta}}


def test_export_of_external_name_is_none() -> None:
    svc = {"metadata": {"name": "svc", "namespace": "ns"}, "spec": {"type": "ExternalName"}}
    assert service_export_to_spec(_export(), svc, cluster="c") is None


def test_export_optional_fields() -> None:
    svc = {
        "metadata": {"name": "svc", "namespace": "ns"},
        "spec": {
            "clusterIP": "10.0.0.1",
            "ports": [{"name": "web", "port": 443, "protocol": "TCP", "appProtocol": "https"}],
            "ipFamilies": ["IPv4", "IPv6"],
            "internalTrafficPolicy": "Local",
            "trafficDistribution": "PreferClose",
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {}},
        },
    }
    spec = service_export_to_spec(_export(creationTimestamp="2025-03-04T05:06:07Z"), svc, cluster="c")
    assert spec is not None
    assert spec.export_creation_timestamp == datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert spec.session_affinity_config is None  # only written with a ClientIP timeout
    assert json.loads(spec.encode()) == {
        "cluster": "c",
        "name": "svc",
        "namespace": "ns",
        "exportCreationTimestamp": "2025-03-04T05:06:07Z",
        "ports": [{"name": "web", "protocol": "TCP", "appProtocol": "https", "port": 443}],
        "type": "ClusterSetIP",
        "sessionAffinity": "ClientIP",
        "ipFamilies": ["IPv4", "IPv6"],
        "internalTrafficPolicy": "Local",
        "trafficDistribution": "PreferClose",
    }


def test_export_without_ports_writes_empty_list() -> None:
    svc = {"metadata": {"name": "svc", "namespace": "ns"}, "spec": {"clusterIP": "None"}}
    spec = service_export_to_spec(_export(), svc, cluster="c")
    assert spec is not None
    data = json.loads(spec.encode())
    assert data["ports"] == [] and data["type"] == "Headless" and data["exportCreationTimestamp"] is None
