"""Records: the reference samples round-trip byte for byte, decoding is strict, defaults follow Go."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from lab.shared import REFERENCE_DOC
from meshcore.errors import WireError
from meshcore.wire import (
    CIDR,
    ClusterConfig,
    ClusterConfigCapabilities,
    ClusterService,
    IPIdentityPair,
    L4Addr,
    Label,
    LabelSet,
    MCSAPIServiceSpec,
    NamedPort,
    Node,
    NodeAddress,
    check_key,
    decode_cluster_config,
    decode_identity,
    decode_ip_identity,
    decode_node,
    decode_service,
    decode_serviceexport,
    encode_cluster_config,
    encode_identity,
    encode_ip_identity,
    encode_node,
    encode_service,
    encode_serviceexport,
    go_compact,
)
from meshcore.wire.keys import ip_key

REFERENCE = REFERENCE_DOC


def reference_sample(section: str) -> tuple[str | None, bytes]:
    """The first ```json block of a reference section, re-joined into compact JSON; also the
    ``# key`` comment line inside the block, if any. The doc wraps samples across lines."""
    text = REFERENCE.read_text(encoding="utf-8")
    start = text.index(f"### {section} ")
    block = re.search(r"```json\n(.*?)```", text[start:], re.DOTALL)
    assert block is not None, f"no JSON sample in section {section}"
    key = None
    parts = []
    for line in block.group(1).splitlines():
        if line.startswith("# "):
            key = line[2:].strip()
        else:
            parts.append(line.strip())
    return key, go_compact("".join(parts).encode())


def test_reference_node_sample_round_trips() -> None:
    _, sample = reference_sample("1.6")
    node = decode_node(sample)
    assert node.name == "test-node-1"
    assert node.ipv4_alloc_cidr == CIDR("10.244.0.0", b"\xff\xff\xff\x00")
    assert node.ipv4_secondary_alloc_cidrs is None
    assert encode_node(node) == sample


def test_reference_service_sample_round_trips() -> None:
    _, sample = reference_sample("1.7")
    svc = decode_service(sample)
    assert svc.frontends == {"10.96.50.104": {"http": L4Addr("TCP", 80)}}
    assert svc.labels == {}
    assert encode_service(svc) == sample


def test_reference_ip_sample_round_trips_with_known_mask_skew() -> None:
    # Known version skew: the reference sample is the old writer's form with "Mask":null (and no
    # K8sPodUID). The newest Cilium omits a nil Mask, so that one detail is normalised here.
    key, sample = reference_sample("1.8")
    assert b'"Mask":null,' in sample
    normalised = sample.replace(b'"Mask":null,', b"")
    pair = decode_ip_identity(sample, key=key)
    assert pair.mask is None
    assert pair.named_ports == [NamedPort("http", 8080, "TCP"), NamedPort("dns", 53, "UDP")]
    assert encode_ip_identity(pair) == normalised
    assert key is not None and key == ip_key(pair.prefix_string())
    check_key(key, pair)


def test_reference_cluster_config_sample_round_trips() -> None:
    _, sample = reference_sample("1.5")
    config = decode_cluster_config(sample)
    assert config.capabilities.service_exports_enabled is False
    assert encode_cluster_config(config) == sample


def test_reference_identity_sample_round_trips() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    section = text[text.index("### 1.9 ") :]
    match = re.search(r"Example from `ciliumidentitites.txtar`:\s*`([^`]+)`", section)
    assert match is not None
    sample = match.group(1).encode()
    labels = decode_identity(sample)
    assert labels.cluster() == "cluster3"
    assert encode_identity(labels) == sample


# --- Go semantics details -------------------------------------------------------------------


def test_node_missing_fields_are_go_zero_values_and_unknown_fields_ignored() -> None:
    node = decode_node(b'{"Name":"n","Cluster":"c","NodeIdentity":7,"FutureField":{"x":1}}')
    assert node == Node(name="n", cluster="c")
    assert encode_node(node) == (
        b'{"Name":"n","Cluster":"c","IPAddresses":null,"IPv4AllocCIDR":null,'
        b'"IPv4SecondaryAllocCIDRs":null,"IPv6AllocCIDR":null,"IPv6SecondaryAllocCIDRs":null,'
        b'"IPv4HealthIP":"","IPv6HealthIP":"","IPv4IngressIP":"","IPv6IngressIP":"","ClusterID":0,'
        b'"Source":"","EncryptionKey":0,"Labels":null,"Annotations":null,"WireguardPubKey":"","BootID":""}'
    )


def test_node_nil_versus_empty_and_sorted_maps() -> None:
    node = Node(
        name="n",
        labels={"b": "2", "a": "1", "B": "0"},
        annotations={},
        ip_addresses=[],
        ipv4_secondary_alloc_cidrs=[],
    )
    encoded = encode_node(node)
    assert b'"Labels":{"B":"0","a":"1","b":"2"}' in encoded
    assert b'"Annotations":{}' in encoded
    assert b'"IPAddresses":[]' in encoded
    assert b'"IPv4SecondaryAllocCIDRs":[]' in encoded
    assert b'"IPv6SecondaryAllocCIDRs":null' in encoded
    assert decode_node(encoded) == Node(
        name="n",
        labels={"a": "1", "b": "2", "B": "0"},
        annotations={},
        ip_addresses=[],
        ipv4_secondary_alloc_cidrs=[],
    )


def test_decoding_canonicalises_ips() -> None:
    node = decode_node(
        b'{"IPAddresses":[{"Type":"InternalIP","IP":"fd00:0::1"},{"Type":"x","IP":"::ffff:1.2.3.4"}],'
        b'"IPv6AllocCIDR":{"IP":"2001:0db8::","Mask":"//////////8AAAAAAAAAAA=="},"IPv4HealthIP":"::ffff:10.0.0.1"}'
    )
    assert node.ip_addresses == [NodeAddress("InternalIP", "fd00::1"), NodeAddress("x", "1.2.3.4")]
    assert node.ipv6_alloc_cidr == CIDR("2001:db8::", b"\xff" * 8 + b"\x00" * 8)
    assert node.ipv4_health_ip == "10.0.0.1"
    pair = decode_ip_identity(b'{"IP":"2001:db8:0:0:1:0:0:1","HostIP":"::ffff:172.18.0.2"}')
    assert (pair.ip, pair.host_ip) == ("2001:db8::1:0:0:1", "172.18.0.2")


def test_encoding_canonicalises_ips() -> None:
    assert encode_ip_identity(IPIdentityPair(ip="2001:0db8::0001")).startswith(b'{"IP":"2001:db8::1"')


def test_ip_identity_prefix_string_and_mask() -> None:
    pair = decode_ip_identity(b'{"IP":"10.0.0.0","Mask":"/wAAAA==","ID":2}')
    assert pair.prefix_string() == "10.0.0.0/8"
    assert not pair.is_host()
    assert (
        encode_ip_identity(pair)
        == b'{"IP":"10.0.0.0","Mask":"/wAAAA==","HostIP":"","ID":2,"Key":0,"Metadata":""}'
    )
    check_key("cilium/state/ip/v1/default/10.0.0.0/8", pair)
    with pytest.raises(WireError):
        check_key("cilium/state/ip/v1/default/10.0.0.0", pair)


def test_ip_identity_old_mask_null_decodes_to_host_entry() -> None:
    pair = decode_ip_identity(b'{"IP":"10.0.0.1","Mask":null,"HostIP":"","ID":1,"Key":0,"Metadata":""}')
    assert pair.is_host()
    assert encode_ip_identity(pair) == b'{"IP":"10.0.0.1","HostIP":"","ID":1,"Key":0,"Metadata":""}'


def test_service_missing_maps_decode_as_empty_like_new_cluster_service() -> None:
    svc = decode_service(b'{"cluster":"c2","namespace":"test","name":"echo","clusterID":2,"shared":true}')
    assert svc.frontends == {} and svc.labels == {} and svc.hostnames == {}
    assert encode_service(svc) == (
        b'{"cluster":"c2","namespace":"test","name":"echo","frontends":{},"backends":{},'
        b'"labels":{},"selector":{},"includeExternal":false,"shared":true,"clusterID":2}'
    )
    nulls = decode_service(b'{"frontends":null,"labels":null,"hostnames":null}')
    assert nulls.frontends is None and nulls.labels is None
    assert b'"frontends":null' in encode_service(nulls) and b'"hostnames"' not in encode_service(nulls)


def test_service_ports_sorted_and_nil_pointer() -> None:
    svc = ClusterService(
        cluster="c",
        namespace="n",
        name="s",
        backends={"10.0.0.2": {"b": L4Addr("UDP", 53), "": None, "a": L4Addr("TCP", 80)}, "10.0.0.1": {}},
        hostnames={"10.0.0.2": "pod-b"},
    )
    assert (
        b'"backends":{"10.0.0.1":{},"10.0.0.2":{"":null,"a":{"Protocol":"TCP","Port":80},'
        b'"b":{"Protocol":"UDP","Port":53}}},"hostnames":{"10.0.0.2":"pod-b"},' in encode_service(svc)
    )


def test_cluster_config_omitempty_and_pointer_bool() -> None:
    assert encode_cluster_config(ClusterConfig()) == b'{"capabilities":{}}'
    cfg = ClusterConfig(id=3, capabilities=ClusterConfigCapabilities(service_exports_enabled=False))
    assert encode_cluster_config(cfg) == b'{"id":3,"capabilities":{"serviceExportsEnabled":false}}'
    assert decode_cluster_config(b'{"id":3}').capabilities.service_exports_enabled is None
    assert decode_cluster_config(b'{"id":3,"capabilities":null}') == ClusterConfig(id=3)
    cached = ClusterConfigCapabilities(synced_canaries=True, cached=True, max_connected_clusters=511)
    assert (
        encode_cluster_config(ClusterConfig(id=9, capabilities=cached))
        == b'{"id":9,"capabilities":{"syncedCanaries":true,"cached":true,"maxConnectedClusters":511}}'
    )


def test_identity_labels_format_and_parse() -> None:
    labels = LabelSet.from_strings(
        ["k8s:z=1", "reserved:host", "k8s:a=x=y", "k8s:io.cilium.k8s.policy.cluster=c1"]
    )
    assert labels.format() == "k8s:a=x=y;reserved:host=;k8s:io.cilium.k8s.policy.cluster=c1;k8s:z=1;"
    assert LabelSet.parse(labels.format()) == labels
    assert labels.get("host") == Label("reserved", "host", "")
    assert labels.cluster() == "c1"
    assert LabelSet.parse("") == LabelSet()
    assert LabelSet(labels=(Label("k8s", "b"), Label("k8s", "a"))).format() == "k8s:a=;k8s:b=;"
    for bad in ("k8s:a=b", "a=b;", ":a=b;", "k8s:=b;", "k8s:a=b;;"):
        with pytest.raises(WireError):
            LabelSet.parse(bad, key="cilium/state/identities/v1/id/1")


def test_serviceexport_from_legacy_writer_and_timestamps() -> None:
    spec = decode_serviceexport(
        b'{"cluster":"c1","name":"basic","namespace":"default","Annotations":{"a":"1"},'
        b'"Labels":{"l":"2"},"annotations":null,"exportCreationTimestamp":"2026-01-01T02:00:00.7+02:00",'
        b'"ports":[{"name":"p","protocol":"TCP","appProtocol":"http","port":80}],"type":"ClusterSetIP",'
        b'"sessionAffinity":"None","sessionAffinityConfig":{"clientIP":{}},"ipFamilies":["IPv4"]}'
    )
    assert spec.annotations == {"a": "1"} and spec.labels == {"l": "2"}
    assert spec.export_creation_timestamp == datetime(2026, 1, 1, tzinfo=UTC)
    assert encode_serviceexport(spec) == (
        b'{"cluster":"c1","name":"basic","namespace":"default","annotations":{"a":"1"},"labels":{"l":"2"},'
        b'"exportCreationTimestamp":"2026-01-01T00:00:00Z","ports":[{"name":"p","protocol":"TCP",'
        b'"appProtocol":"http","port":80}],"type":"ClusterSetIP","sessionAffinity":"None",'
        b'"sessionAffinityConfig":{"clientIP":{}},"ipFamilies":["IPv4"]}'
    )
    empty = MCSAPIServiceSpec()
    assert encode_serviceexport(empty) == (
        b'{"cluster":"","name":"","namespace":"","exportCreationTimestamp":null,"ports":null,'
        b'"type":"","sessionAffinity":""}'
    )
    other_zone = timezone(timedelta(hours=-5))
    shifted = MCSAPIServiceSpec(export_creation_timestamp=datetime(2024, 1, 1, 0, 0, 0, tzinfo=other_zone))
    assert b'"exportCreationTimestamp":"2024-01-01T05:00:00Z"' in encode_serviceexport(shifted)
    with pytest.raises(WireError) as info:
        decode_serviceexport(b'{"exportCreationTimestamp":"2024-01-01T00:00:00"}', key="k")
    assert info.value.field == "exportCreationTimestamp"


# --- decode errors name the field and the key ----------------------------------------------

NODE_KEY = "cilium/state/nodes/v1/c3/n1"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b'{"IPAddresses":[{"IP":"1.1.1.1"},{"IP":"2.2.2.2"},{"IP":"fe80::1%eth0"}]}', "IPAddresses[2].IP"),
        (b'{"IPAddresses":[{"IP":"010.0.0.1"}]}', "IPAddresses[0].IP"),
        (b'{"IPAddresses":[{"IP":7}]}', "IPAddresses[0].IP"),
        (b'{"ClusterID":4294967296}', "ClusterID"),
        (b'{"ClusterID":-1}', "ClusterID"),
        (b'{"ClusterID":"3"}', "ClusterID"),
        (b'{"EncryptionKey":256}', "EncryptionKey"),
        (b'{"IPv4AllocCIDR":{"IP":"10.0.0.0","Mask":"not base64!"}}', "IPv4AllocCIDR.Mask"),
        (b'{"IPv4AllocCIDR":{"IP":"10.0.0.0","Mask":"//8="}}', "IPv4AllocCIDR.Mask"),
        (b'{"IPv4AllocCIDR":{"IP":"10.0.0.0","Mask":"/wD/AA=="}}', "IPv4AllocCIDR.Mask"),
        (b'{"IPv6SecondaryAllocCIDRs":[null,{"IP":"x","Mask":null}]}', "IPv6SecondaryAllocCIDRs[1].IP"),
        (b'{"IPv4HealthIP":"1.2.3"}', "IPv4HealthIP"),
        (b'{"Labels":{"a":1}}', "Labels[...]"),
        (b'{"Name":null}', "Name"),
    ],
)
def test_node_decode_errors_name_field_and_key(data: bytes, field: str) -> None:
    with pytest.raises(WireError) as info:
        decode_node(data, key=NODE_KEY)
    assert info.value.field == field
    assert info.value.key == NODE_KEY
    assert NODE_KEY in str(info.value) and field in str(info.value)


@pytest.mark.parametrize("data", [b"", b"{", b'{"Name":"x"} trailing', b"[1,2]", b"null", b"\xff"])
def test_malformed_json_is_a_wire_error_with_key(data: bytes) -> None:
    with pytest.raises(WireError) as info:
        decode_node(data, key=NODE_KEY)
    assert info.value.key == NODE_KEY


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b'{"IP":"10.0.0.1","Key":300}', "Key"),
        (b'{"IP":"10.0.0.1","ID":-5}', "ID"),
        (b'{"IP":"10.0.0.1","NamedPorts":[{"Port":70000}]}', "NamedPorts[0].Port"),
        (b'{"IP":"10.0.0.1","Mask":""}', "Mask"),
        (b'{"IP":"10.0.0.1","HostIP":"fe80::1%1"}', "HostIP"),
    ],
)
def test_ip_decode_errors(data: bytes, field: str) -> None:
    with pytest.raises(WireError) as info:
        decode_ip_identity(data, key="cilium/state/ip/v1/default/10.0.0.1")
    assert (info.value.field, info.value.key) == (field, "cilium/state/ip/v1/default/10.0.0.1")


def test_service_decode_errors() -> None:
    with pytest.raises(WireError) as info:
        decode_service(b'{"backends":{"not-an-ip":{}}}', key="k")
    assert info.value.field == "backends['not-an-ip']"
    with pytest.raises(WireError) as info:
        decode_service(b'{"frontends":{"fe80::1%eth0":{}}}', key="k")
    assert info.value.field == "frontends['fe80::1%eth0']"
    with pytest.raises(WireError) as info:
        decode_service(b'{"backends":{"10.0.0.1":{"http":{"Port":65536}}}}', key="k")
    assert info.value.field is not None and info.value.field.endswith(".Port")


def test_cluster_config_decode_errors() -> None:
    with pytest.raises(WireError) as info:
        decode_cluster_config(
            b'{"capabilities":{"serviceExportsEnabled":"yes"}}', key="cilium/cluster-config/c"
        )
    assert info.value.field == "capabilities.serviceExportsEnabled"


def test_check_key_matches_records() -> None:
    node = Node(name="n1", cluster="c3")
    check_key(NODE_KEY, node)
    with pytest.raises(WireError):
        check_key("cilium/state/nodes/v1/c3/other", node)
    svc = ClusterService(cluster="c", namespace="ns", name="s")
    check_key("cilium/state/services/v1/c/ns/s", svc)
    with pytest.raises(WireError):
        check_key("cilium/state/services/v1/c/ns/t", svc)
    check_key(
        "cilium/state/serviceexports/v1/c/ns/s", MCSAPIServiceSpec(cluster="c", namespace="ns", name="s")
    )
