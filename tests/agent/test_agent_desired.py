"""The desired-state builder: unit cases and property tests (determinism, invariants)."""

from __future__ import annotations

import base64
import random

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.desired import (
    ID_REMOTE_NODE,
    ClusterView,
    LocalInfo,
    build_desired,
    node_peer,
    node_tunnel_ip,
)
from agent.records import NodeRecord, node_record
from agent.validate import RemoteInfo, validate_ip
from clustermesh_apiserver.converters.annotations import WIREGUARD_NEXT_PUB_KEY
from lab.samples import SampleSize, sample_identity, sample_identity_id, sample_node, sample_pair, sample_service
from meshcore.wire import CIDR, ClusterService, IPIdentityPair, L4Addr, Node, NodeAddress

LOCAL = LocalInfo("c1", 1, "c1-node-0")


def view(name: str, cluster_id: int, size: SampleSize, *, order_seed: int | None = None) -> ClusterView:
    nodes = {f"{name}-node-{n}": sample_node(name, cluster_id, n) for n in range(size.nodes)}
    pairs = [
        sample_pair(cluster_id, n, e, size.identities)
        for n in range(size.nodes)
        for e in range(size.endpoints_per_node)
    ]
    ipcache = {p.prefix_string(): p for p in pairs}
    identities = {sample_identity_id(cluster_id, k): sample_identity(name, k) for k in range(size.identities)}
    services = {f"default/svc-{s}": sample_service(name, cluster_id, s, size.nodes) for s in range(size.services)}
    if order_seed is not None:  # the same content, inserted in another order
        rng = random.Random(order_seed)
        nodes, ipcache, identities, services = (_shuffled(d, rng) for d in (nodes, ipcache, identities, services))
    return ClusterView(name, cluster_id, nodes, ipcache, identities, services)


def _shuffled(d: dict, rng: random.Random) -> dict:  # type: ignore[type-arg]
    items = list(d.items())
    rng.shuffle(items)
    return dict(items)


def test_node_tunnel_ip_prefers_internal_then_external_ipv4_first() -> None:
    node = Node(
        ip_addresses=[
            NodeAddress("ExternalIP", "1.2.3.4"),
            NodeAddress("InternalIP", "fd00::1"),
            NodeAddress("InternalIP", "172.18.0.2"),
        ]
    )
    assert node_tunnel_ip(node) == "172.18.0.2"
    assert (
        node_tunnel_ip(Node(ip_addresses=[NodeAddress("ExternalIP", "1.2.3.4"), NodeAddress("InternalIP", "fd00::1")]))
        == "1.2.3.4"
    )
    assert node_tunnel_ip(Node(ip_addresses=[NodeAddress("Hostname", "n1")])) == ""


def test_node_becomes_remote_node_health_pod_cidr_route_and_peer() -> None:
    node = Node(
        name="n1",
        cluster="c2",
        cluster_id=2,
        encryption_key=3,
        wireguard_pub_key="KEY=",
        ip_addresses=[
            NodeAddress("InternalIP", "172.18.0.2"),
            NodeAddress("CiliumInternalIP", "10.2.0.254"),
            NodeAddress("InternalIP", "fc00::2"),
        ],
        ipv4_alloc_cidr=CIDR("10.2.0.0", bytes([255, 255, 255, 0])),
        ipv4_secondary_alloc_cidrs=[CIDR("10.3.0.0", bytes([255, 255, 0, 0]))],
        ipv4_health_ip="10.2.0.253",
        ipv4_ingress_ip="10.2.0.252",
    )
    desired = build_desired(LOCAL, {"c2": ClusterView("c2", 2, {"n1": node}, {}, {}, {})})
    got = [(e.prefix, e.identity, e.tunnel_endpoint, e.source, e.encrypt_key) for e in desired.ipcache]
    assert got == [
        ("10.2.0.0/24", 2, "172.18.0.2", "pod-cidr", 3),
        ("10.2.0.252/32", 8, "172.18.0.2", "ingress", 3),
        ("10.2.0.253/32", 4, "172.18.0.2", "health", 3),
        ("10.2.0.254/32", 6, "172.18.0.2", "node-ip", 3),
        ("10.3.0.0/16", 2, "172.18.0.2", "pod-cidr", 3),
        ("172.18.0.2/32", 6, "", "node-ip", 3),
        ("fc00::2/128", 6, "", "node-ip", 3),
    ]
    assert all(e.cluster_id == 2 and e.remote_cluster for e in desired.ipcache)
    assert [(r.prefix, r.node_ip) for r in desired.routes] == [
        ("10.2.0.0/24", "172.18.0.2"),
        ("10.3.0.0/16", "172.18.0.2"),
    ]
    [peer] = desired.wireguard_peers
    assert peer.endpoint == "172.18.0.2:51871"
    assert peer.allowed_ips == ("10.2.0.0/24", "10.2.0.254/32", "10.3.0.0/16", "172.18.0.2/32", "fc00::2/128")


KEY_A = base64.b64encode(bytes(range(32))).decode()
KEY_B = base64.b64encode(bytes(range(1, 33))).decode()


@pytest.mark.parametrize(
    ("announced", "next_key"),
    [
        (None, ""),
        ({}, ""),
        ({WIREGUARD_NEXT_PUB_KEY: KEY_B}, KEY_B),
        ({WIREGUARD_NEXT_PUB_KEY: f" {KEY_B}\n"}, KEY_B),  # stripped, as the current key's validation does
        ({WIREGUARD_NEXT_PUB_KEY: KEY_A}, ""),  # the current key: no rotation to announce
        ({WIREGUARD_NEXT_PUB_KEY: ""}, ""),
        ({WIREGUARD_NEXT_PUB_KEY: "not-a-key"}, ""),  # invalid remote data is ignored
        ({WIREGUARD_NEXT_PUB_KEY: base64.b64encode(bytes(31)).decode()}, ""),
        ({WIREGUARD_NEXT_PUB_KEY: base64.b64encode(bytes(32)).decode()}, ""),  # the reserved all-zero key
        ({"clustermesh.io/other": KEY_B}, ""),
    ],
)
def test_the_announced_next_key_goes_to_the_record_and_the_peer(
    announced: dict[str, str] | None, next_key: str
) -> None:
    node = Node(
        name="n1",
        cluster="c2",
        cluster_id=2,
        wireguard_pub_key=KEY_A,
        annotations=announced,
        ip_addresses=[NodeAddress("InternalIP", "172.18.0.2")],
    )
    record = node_record("c2", "n1", node)
    assert record.wireguard_next_pub_key == next_key
    peer = node_peer(record)
    assert peer is not None and peer.public_key == KEY_A and peer.next_public_key == next_key
    assert peer.to_json()["next-public-key"] == (next_key or None)
    [built] = build_desired(LOCAL, {"c2": ClusterView("c2", 2, {"n1": node}, {}, {}, {})}).wireguard_peers
    assert built == peer


def test_a_record_without_a_next_key_defaults_to_none() -> None:
    record = NodeRecord("c2", "n1", "", (), 0, (), (), 0, KEY_A)
    assert record.wireguard_next_pub_key == "" and node_record("c2", "n1", record) is record
    assert record != msgspec.structs.replace(record, wireguard_next_pub_key=KEY_B)


def test_node_without_ip_gets_no_tunnelled_entries() -> None:
    node = Node(
        name="n1",
        cluster="c2",
        cluster_id=2,
        ipv4_alloc_cidr=CIDR("10.2.0.0", bytes([255, 255, 255, 0])),
        ipv4_health_ip="10.2.0.253",
    )
    desired = build_desired(LOCAL, {"c2": ClusterView("c2", 2, {"n1": node}, {}, {}, {})})
    assert desired.ipcache == () and desired.routes == ()


def test_endpoint_entries_and_host_rewrite() -> None:
    remote = RemoteInfo("c2", 2)
    host = validate_ip(remote, "172.18.0.9", IPIdentityPair(ip="172.18.0.9", host_ip="172.18.0.9", id=1))
    pod = IPIdentityPair(ip="10.2.0.7", host_ip="172.18.0.2", id=131073, key=5)
    cidr = IPIdentityPair(ip="192.168.0.0", mask=bytes([255, 255, 0, 0]), host_ip="", id=131074)
    cache = {p.prefix_string(): p for p in (host, pod, cidr)}
    desired = build_desired(LOCAL, {"c2": ClusterView("c2", 2, {}, cache, {}, {})})
    got = [(e.prefix, e.identity, e.tunnel_endpoint, e.encrypt_key) for e in desired.ipcache]
    assert got == [
        ("10.2.0.7/32", 131073, "172.18.0.2", 5),
        ("172.18.0.9/32", ID_REMOTE_NODE, "172.18.0.9", 0),
        ("192.168.0.0/16", 131074, "", 0),
    ]


def test_conflicts_resolve_by_source_rank_then_cluster() -> None:
    a = sample_node("c2", 2, 0)
    # c3 publishes an endpoint on c2's node IP and a pod CIDR equal to c2's: node IPs win.
    pair = IPIdentityPair(ip="172.16.32.0", host_ip="x", id=5)
    node = Node(
        name="n",
        cluster="c3",
        cluster_id=3,
        ip_addresses=[NodeAddress("InternalIP", "172.16.48.0")],
        ipv4_alloc_cidr=CIDR("10.2.0.0", bytes([255, 255, 255, 0])),
    )
    desired = build_desired(
        LOCAL,
        {
            "c2": ClusterView("c2", 2, {a.name: a}, {}, {}, {}),
            "c3": ClusterView("c3", 3, {"n": node}, {"172.16.32.0": pair}, {}, {}),
        },
    )
    entries = {e.prefix: e for e in desired.ipcache}
    assert entries["172.16.32.0/32"].source == "node-ip" and entries["172.16.32.0/32"].cluster == "c2"
    assert entries["10.2.0.0/24"].cluster == "c2"  # same rank: the lower cluster name wins
    assert desired.conflicts == 2


def test_services_dedupe_ports_and_ignore_unshared() -> None:
    svc = ClusterService(
        cluster="c2",
        namespace="ns",
        name="web",
        shared=True,
        cluster_id=2,
        backends={
            "10.2.0.1": {"http": L4Addr("TCP", 80), "web": L4Addr("TCP", 80), "dns": L4Addr("UDP", 53)},
            "10.2.0.2": {"http": None},
        },
    )
    hidden = ClusterService(
        cluster="c3",
        namespace="ns",
        name="web",
        shared=False,
        cluster_id=3,
        backends={"10.3.0.1": {"": L4Addr("TCP", 80)}},
    )
    desired = build_desired(
        LOCAL,
        {
            "c2": ClusterView("c2", 2, {}, {}, {}, {"ns/web": svc}),
            "c3": ClusterView("c3", 3, {}, {}, {}, {"ns/web": hidden}),
        },
    )
    [service] = desired.services
    assert service.service == "ns/web" and [c.cluster for c in service.clusters] == ["c2"]
    assert [(b.address, b.port, b.protocol, b.port_name) for b in service.clusters[0].backends] == [
        ("10.2.0.1", 53, "UDP", "dns"),
        ("10.2.0.1", 80, "TCP", "http"),
    ]


def test_local_cluster_is_ignored_and_json_is_plain() -> None:
    desired = build_desired(LOCAL, {"c1": view("c1", 1, SampleSize()), "c2": view("c2", 2, SampleSize())})
    assert {e.cluster for e in desired.ipcache} == {"c2"}
    doc = desired.to_json()
    assert set(doc) == {"ipcache", "routes", "wireguard-peers", "services", "identities", "conflicts"}
    assert doc["identities"][0] == {
        "id": (2 << 16) + 1000,
        "cluster": "c2",
        "labels": ["k8s:app=app-0", "k8s:io.cilium.k8s.policy.cluster=c2", "k8s:io.kubernetes.pod.namespace=default"],
    }


sizes = st.builds(
    SampleSize,
    nodes=st.integers(0, 6),
    endpoints_per_node=st.integers(0, 4),
    identities=st.integers(1, 5),
    services=st.integers(0, 3),
)
meshes = st.dictionaries(st.integers(2, 40), sizes, max_size=4)


@settings(max_examples=60, deadline=None)
@given(mesh=meshes, seed=st.integers(0, 2**16))
def test_property_same_content_any_insertion_order_same_result(mesh: dict[int, SampleSize], seed: int) -> None:
    ordered = {f"c{cid}": view(f"c{cid}", cid, size) for cid, size in mesh.items()}
    names = list(ordered)
    random.Random(seed).shuffle(names)
    shuffled = {n: view(n, int(n[1:]), mesh[int(n[1:])], order_seed=seed) for n in names}
    assert build_desired(LOCAL, ordered) == build_desired(LOCAL, shuffled)


@settings(max_examples=60, deadline=None)
@given(mesh=meshes)
def test_property_invariants(mesh: dict[int, SampleSize]) -> None:
    views = {f"c{cid}": view(f"c{cid}", cid, size) for cid, size in mesh.items()}
    desired = build_desired(LOCAL, views)
    prefixes = [e.prefix for e in desired.ipcache]
    assert len(prefixes) == len(set(prefixes)), "one entry per prefix"
    node_ips = {c: {node_tunnel_ip(n) for n in v.nodes.values() if isinstance(n, Node)} for c, v in views.items()}
    for entry in desired.ipcache:
        view_ = views[entry.cluster]
        assert entry.cluster_id == view_.cluster_id
        low, high = RemoteInfo(entry.cluster, entry.cluster_id).identity_range()
        assert entry.identity < 256 or low <= entry.identity <= high
        if entry.source != "endpoint" and entry.tunnel_endpoint:
            assert entry.tunnel_endpoint in node_ips[entry.cluster]
    keys = [p.public_key for p in desired.wireguard_peers]
    assert len(keys) == len(set(keys))
    assert [i.id for i in desired.identities] == sorted(i.id for i in desired.identities)
    assert [s.service for s in desired.services] == sorted(s.service for s in desired.services)
    expected_endpoints = sum(s.nodes * s.endpoints_per_node for s in mesh.values())
    assert sum(1 for e in desired.ipcache if e.source == "endpoint") == expected_endpoints
    assert len(desired.routes) == sum(s.nodes for s in mesh.values())
    assert desired.conflicts == 0
