"""Property tests: decode(encode(x)) == x, and encoding is stable, for every record type."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.wire import (
    CIDR,
    BackendZone,
    ClientIPConfig,
    ClusterConfig,
    ClusterConfigCapabilities,
    ClusterService,
    ForZone,
    IPIdentityPair,
    L4Addr,
    Label,
    LabelSet,
    MCSAPIServiceSpec,
    NamedPort,
    Node,
    NodeAddress,
    ServicePort,
    SessionAffinityConfig,
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
    go_indent,
)
from meshcore.wire.netaddr import canonical_ip, prefix_mask

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
i32 = st.integers(-(2**31), 2**31 - 1)
text = st.text(max_size=12)
maps = st.none() | st.dictionaries(text, text, max_size=3)

ipv4 = st.builds(lambda n: str(ipaddress.IPv4Address(n)), st.integers(0, 2**32 - 1))
ipv6 = st.builds(lambda n: canonical_ip(str(ipaddress.IPv6Address(n))), st.integers(0, 2**128 - 1))
ipv6_sparse = st.builds(
    lambda groups: canonical_ip(":".join(f"{g:x}" for g in groups)),
    st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF, 0xDB8]), min_size=8, max_size=8),
)
ip = ipv4 | ipv6 | ipv6_sparse
ip_or_nil = st.just("") | ip
mask = (
    st.none()
    | st.builds(prefix_mask, st.integers(0, 32), st.just(32))
    | st.builds(prefix_mask, st.integers(0, 128), st.just(128))
)
cidr = st.builds(CIDR, ip=ip_or_nil, mask=mask)


def opt_list(strategy: st.SearchStrategy[Any], max_size: int = 3) -> st.SearchStrategy[Any]:
    return st.none() | st.lists(strategy, max_size=max_size)


nodes = st.builds(
    Node,
    name=text,
    cluster=text,
    ip_addresses=opt_list(st.builds(NodeAddress, type=text, ip=ip_or_nil)),
    ipv4_alloc_cidr=st.none() | cidr,
    ipv4_secondary_alloc_cidrs=opt_list(st.none() | cidr),
    ipv6_alloc_cidr=st.none() | cidr,
    ipv6_secondary_alloc_cidrs=opt_list(st.none() | cidr),
    ipv4_health_ip=ip_or_nil,
    ipv6_health_ip=ip_or_nil,
    ipv4_ingress_ip=ip_or_nil,
    ipv6_ingress_ip=ip_or_nil,
    cluster_id=u32,
    source=text,
    encryption_key=u8,
    labels=maps,
    annotations=maps,
    wireguard_pub_key=text,
    boot_id=text,
)

port_config = st.dictionaries(text, st.none() | st.builds(L4Addr, protocol=text, port=u16), max_size=3)
addr_map = st.none() | st.dictionaries(ip, st.none() | port_config, max_size=3)
# hostnames/zones are omitempty: nil and empty are the same on the wire and decode to {}.
services = st.builds(
    ClusterService,
    cluster=text,
    namespace=text,
    name=text,
    frontends=addr_map,
    backends=addr_map,
    hostnames=st.dictionaries(ip, text, max_size=3),
    zones=st.dictionaries(
        ip,
        st.builds(BackendZone, zone=text, for_zones=opt_list(st.builds(ForZone, name=text))),
        max_size=2,
    ),
    labels=maps,
    selector=maps,
    include_external=st.booleans(),
    shared=st.booleans(),
    cluster_id=u32,
)

pairs = st.builds(
    IPIdentityPair,
    ip=ip_or_nil,
    mask=mask,
    host_ip=ip_or_nil,
    id=u32,
    key=u8,
    metadata=text,
    k8s_namespace=text,
    k8s_pod_name=text,
    k8s_pod_uid=text,
    k8s_service_account=text,
    # omitempty: an empty list is written like nil.
    named_ports=st.none()
    | st.lists(st.builds(NamedPort, name=text, port=u16, protocol=text), min_size=1, max_size=3),
)

configs = st.builds(
    ClusterConfig,
    id=u32,
    capabilities=st.builds(
        ClusterConfigCapabilities,
        synced_canaries=st.booleans(),
        cached=st.booleans(),
        max_connected_clusters=u32,
        service_exports_enabled=st.none() | st.booleans(),
        endpoint_slices_export_mode=text,
    ),
)

label_part = st.text(
    st.characters(exclude_characters=";:=", exclude_categories=["Cs"]), min_size=1, max_size=8
)
label_sets = st.builds(
    LabelSet.from_labels,
    st.lists(
        st.builds(
            Label,
            source=label_part,
            key=label_part,
            value=st.text(st.characters(exclude_characters=";", exclude_categories=["Cs"]), max_size=8),
        ),
        max_size=5,
    ),
)

timestamps = st.none() | st.builds(
    lambda s: datetime.fromtimestamp(s, UTC), st.integers(-62135596800 + 1, 253402300799)
)
exports = st.builds(
    MCSAPIServiceSpec,
    cluster=text,
    name=text,
    namespace=text,
    annotations=st.none() | st.dictionaries(text, text, min_size=1, max_size=3),
    labels=st.none() | st.dictionaries(text, text, min_size=1, max_size=3),
    export_creation_timestamp=timestamps,
    ports=opt_list(st.builds(ServicePort, name=text, protocol=text, app_protocol=st.none() | text, port=i32)),
    type=text,
    session_affinity=text,
    session_affinity_config=st.none()
    | st.builds(
        SessionAffinityConfig,
        client_ip=st.none() | st.builds(ClientIPConfig, timeout_seconds=st.none() | i32),
    ),
    ip_families=st.none() | st.lists(text, min_size=1, max_size=2),
    internal_traffic_policy=st.none() | text,
    traffic_distribution=st.none() | text,
)


@settings(max_examples=200)
@given(nodes)
def test_node_round_trip(node: Node) -> None:
    encoded = encode_node(node)
    assert decode_node(encoded) == node
    assert encode_node(decode_node(encoded)) == encoded
    assert decode_node(go_indent(encoded)) == node


@settings(max_examples=200)
@given(services)
def test_service_round_trip(svc: ClusterService) -> None:
    encoded = encode_service(svc)
    assert decode_service(encoded) == svc
    assert encode_service(decode_service(encoded)) == encoded


@settings(max_examples=200)
@given(pairs)
def test_ip_identity_round_trip(pair: IPIdentityPair) -> None:
    encoded = encode_ip_identity(pair)
    assert decode_ip_identity(encoded) == pair
    assert encode_ip_identity(decode_ip_identity(encoded)) == encoded


@given(configs)
def test_cluster_config_round_trip(config: ClusterConfig) -> None:
    encoded = encode_cluster_config(config)
    assert decode_cluster_config(encoded) == config
    assert encode_cluster_config(decode_cluster_config(encoded)) == encoded


@given(label_sets)
def test_identity_round_trip(labels: LabelSet) -> None:
    encoded = encode_identity(labels)
    assert decode_identity(encoded) == labels
    assert encode_identity(decode_identity(encoded)) == encoded
    keys = [label.key for label in labels]
    assert keys == sorted(keys)


@settings(max_examples=200)
@given(exports)
def test_serviceexport_round_trip(spec: MCSAPIServiceSpec) -> None:
    encoded = encode_serviceexport(spec)
    assert decode_serviceexport(encoded) == spec
    assert encode_serviceexport(decode_serviceexport(encoded)) == encoded


@given(ip)
def test_canonical_ip_is_idempotent(address: str) -> None:
    assert canonical_ip(address) == address
    assert canonical_ip(address.upper()) == address
