"""The incremental desired state against the full rebuild: random change sequences through the
real caches (the watch-store observer path), applied as the daemon applies them, must always give
exactly ``build_desired`` of the same caches; and a consumer that follows only the deltas must
hold the same content."""

from __future__ import annotations

import base64
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.caches import MeshCaches, apply_changes
from agent.desired import DesiredState, LocalInfo, build_desired
from agent.incremental import DesiredDelta, DesiredIndex
from agent.records import Claim, node_record
from agent.validate import RemoteIdentity, RemoteInfo, validate_node
from clustermesh_apiserver.converters.annotations import WIREGUARD_NEXT_PUB_KEY
from lab.samples import sample_node
from meshcore.wire import CIDR, ClusterService, IPIdentityPair, L4Addr, LabelSet, Node, NodeAddress

LOCAL = LocalInfo("c1", 1, "c1-node-0")
CLUSTERS = ("c1", "c2", "c3", "c4")  # c1 is the local cluster: always ignored
KINDS = ("nodes", "ipcache", "identities", "services")
# Small pools, so that clusters, nodes and endpoints keep claiming the same prefixes.
HOST_IPS = ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.1.7", "fd00::1", "fd00::2")
CIDRS = ("10.0.0.0/24", "10.0.1.0/24", "fd00::/64")
MASKS = {24: bytes([255] * 3 + [0]), 64: bytes([255] * 8 + [0] * 8)}
ADDRESS_TYPES = ("InternalIP", "ExternalIP", "CiliumInternalIP", "Hostname")
# Announced next WireGuard keys: two valid ones and an invalid one (ignored).
NEXT_KEYS = (base64.b64encode(b"A" * 32).decode(), base64.b64encode(b"B" * 32).decode(), "bogus")


def _cidr(text: str) -> CIDR:
    ip, bits = text.split("/")
    return CIDR(ip, MASKS[int(bits)])


@st.composite
def nodes(draw: Any, cluster: str, cluster_id: int, name: str) -> Node:
    addresses = draw(st.lists(st.tuples(st.sampled_from(ADDRESS_TYPES), st.sampled_from(HOST_IPS)), max_size=3))
    ip = st.none() | st.sampled_from(HOST_IPS)
    return Node(
        name=name,
        cluster=cluster,
        cluster_id=cluster_id,
        ip_addresses=[NodeAddress(t, a) for t, a in addresses],
        ipv4_alloc_cidr=draw(st.none() | st.sampled_from(CIDRS[:2]).map(_cidr)),
        ipv6_alloc_cidr=draw(st.none() | st.just(CIDRS[2]).map(_cidr)),
        ipv4_health_ip=draw(ip) or "",
        ipv4_ingress_ip=draw(ip) or "",
        encryption_key=draw(st.integers(0, 2)),
        wireguard_pub_key=draw(st.sampled_from(["", "KEY-A=", "KEY-B="])),
        annotations=draw(st.none() | st.sampled_from(NEXT_KEYS).map(lambda k: {WIREGUARD_NEXT_PUB_KEY: k})),
    )


@st.composite
def operations(draw: Any) -> tuple[Any, ...]:
    """One change: (op, cluster, kind, name, value) with op upsert/delete, or ("drain", cluster)."""
    cluster = draw(st.sampled_from(CLUSTERS))
    cluster_id = CLUSTERS.index(cluster) + 1
    if draw(st.integers(0, 30)) == 0:
        return ("drain", cluster)
    kind = draw(st.sampled_from(KINDS))
    delete = draw(st.integers(0, 3)) == 0
    value: object = None
    if kind == "nodes":
        name: object = draw(st.sampled_from(["n0", "n1", "n2"]))
        if not delete:
            value = draw(nodes(cluster, cluster_id, str(name)))
    elif kind == "ipcache":
        name = draw(st.sampled_from(HOST_IPS + CIDRS))
        if not delete:
            value = IPIdentityPair(
                ip=str(name).split("/")[0],
                host_ip=draw(st.sampled_from(["", *HOST_IPS[:2]])),
                id=draw(st.sampled_from([6, 4, (cluster_id << 16) + 1])),
                key=draw(st.integers(0, 1)),
            )
    elif kind == "identities":
        name = draw(st.sampled_from([100, 101, 102]))
        if not delete:
            labels = LabelSet.from_strings(
                [f"k8s:app={draw(st.sampled_from('xy'))}", f"k8s:io.cilium.k8s.policy.cluster={cluster}"]
            )
            value = RemoteIdentity(int(str(name)), labels)
    else:
        name = draw(st.sampled_from(["ns/a", "ns/b"]))
        if not delete:
            port = draw(st.sampled_from([80, 8080]))
            value = ClusterService(
                cluster=cluster,
                namespace="ns",
                name=str(name)[3:],
                shared=draw(st.booleans()),
                cluster_id=cluster_id,
                backends={
                    draw(st.sampled_from(HOST_IPS[:3])): {"http": L4Addr("TCP", port), "alt": L4Addr("TCP", port)}
                },
            )
    return ("delete" if delete else "upsert", cluster, kind, name, value)


class Mesh:
    """The real caches, fed through their watch-store observers as AgentRemoteWork feeds them."""

    def __init__(self) -> None:
        self.caches = MeshCaches()
        self.observers: dict[tuple[str, str], Any] = {}
        self.keys: dict[tuple[str, str], set[str]] = {}

    def _observer(self, cluster: str, kind: str) -> Any:
        if (cluster, kind) not in self.observers:
            self.caches.set_cluster_id(cluster, CLUSTERS.index(cluster) + 1)
            self.observers[(cluster, kind)] = self.caches.observer(cluster, kind)  # type: ignore[arg-type]
            self.keys[(cluster, kind)] = set()
        return self.observers[(cluster, kind)]

    def do(self, op: tuple[Any, ...]) -> None:
        if op[0] == "drain":  # AgentRemoteWork.drain: every key deleted, then the cluster forgotten
            cluster = op[1]
            for (c, kind), observer in list(self.observers.items()):
                if c == cluster:
                    for name in sorted(self.keys.pop((c, kind))):
                        observer.on_delete(name)
                    del self.observers[(c, kind)]
            self.caches.remove_cluster(cluster)
            return
        what, cluster, kind, name, value = op
        observer = self._observer(cluster, kind)
        if what == "delete":
            observer.on_delete(str(name))
            self.keys[(cluster, kind)].discard(str(name))
        else:
            observer.on_upsert(str(name), value)
            self.keys[(cluster, kind)].add(str(name))


def follow(held: dict[str, dict[Any, Any]], delta: DesiredDelta) -> None:
    """What a delta-following consumer (the datapath) does."""
    for part in ("ipcache", "routes", "wireguard_peers", "services", "identities"):
        for key, value in getattr(delta, part).items():
            if value is None:
                held[part].pop(key, None)
            else:
                held[part][key] = value


def held_from(state: DesiredState) -> dict[str, dict[Any, Any]]:
    return {
        "ipcache": {e.prefix: e for e in state.ipcache},
        "routes": {r.prefix: r for r in state.routes},
        "wireguard_peers": {p.public_key: p for p in state.wireguard_peers},
        "services": {s.service: s for s in state.services},
        "identities": {i.id: i for i in state.identities},
    }


@settings(max_examples=300, deadline=None)
@given(
    before=st.lists(operations(), max_size=25),
    after=st.lists(st.lists(operations(), min_size=1, max_size=6), max_size=12),
)
def test_property_incremental_equals_full_rebuild(before: list[Any], after: list[list[Any]]) -> None:
    mesh = Mesh()
    for op in before:  # the initial sync: nothing tracked yet
        mesh.do(op)
    index = DesiredIndex(LOCAL)
    mesh.caches.track()
    index.load(mesh.caches.snapshot(copy=False))
    index.take_delta()
    assert index.state() == build_desired(LOCAL, mesh.caches.snapshot())
    held = held_from(index.state())
    for batch in after:
        for op in batch:
            mesh.do(op)
        delta = apply_changes(index, mesh.caches, mesh.caches.take_changes())
        follow(held, delta)
        full = build_desired(LOCAL, mesh.caches.snapshot())
        assert index.state() == full
        assert held == held_from(full), "following only the deltas gives the same content"
    assert mesh.caches.take_changes() == []


def test_conflict_winner_moves_when_it_goes_and_comes_back() -> None:
    """A node IP claimed by an endpoint of c2 and the node of c3: the node wins (rank), the
    endpoint takes over when the node goes, and the delta says so each time."""
    mesh = Mesh()
    index = DesiredIndex(LOCAL)
    mesh.caches.track()
    index.load(mesh.caches.snapshot(copy=False))
    pair = IPIdentityPair(ip="10.0.0.1", host_ip="10.0.0.2", id=(2 << 16) + 1)
    mesh.do(("upsert", "c2", "ipcache", "10.0.0.1", pair))
    delta = apply_changes(index, mesh.caches, mesh.caches.take_changes())
    assert (entry := delta.ipcache["10.0.0.1/32"]) is not None and entry.source == "endpoint"
    node = Node(name="n0", cluster="c3", cluster_id=3, ip_addresses=[NodeAddress("InternalIP", "10.0.0.1")])
    mesh.do(("upsert", "c3", "nodes", "n0", node))
    delta = apply_changes(index, mesh.caches, mesh.caches.take_changes())
    assert (entry := delta.ipcache["10.0.0.1/32"]) is not None and (entry.source, entry.cluster) == ("node-ip", "c3")
    assert index.conflicts == 1
    mesh.do(("delete", "c3", "nodes", "n0", None))
    delta = apply_changes(index, mesh.caches, mesh.caches.take_changes())
    assert (entry := delta.ipcache["10.0.0.1/32"]) is not None and entry.cluster == "c2"
    mesh.do(("drain", "c2"))
    delta = apply_changes(index, mesh.caches, mesh.caches.take_changes())
    assert delta.ipcache == {"10.0.0.1/32": None}
    assert index.state() == build_desired(LOCAL, mesh.caches.snapshot()) == DesiredState()


def test_one_change_touches_only_its_prefix() -> None:
    """The cost of a change is the change's: one endpoint update yields a one-entry delta."""
    mesh = Mesh()
    for n in range(50):
        pair = IPIdentityPair(ip=f"10.2.0.{n}", host_ip="172.16.0.1", id=(2 << 16) + 1)
        mesh.do(("upsert", "c2", "ipcache", f"10.2.0.{n}", pair))
    index = DesiredIndex(LOCAL)
    mesh.caches.track()
    index.load(mesh.caches.snapshot(copy=False))
    index.take_delta()
    moved = IPIdentityPair(ip="10.2.0.7", host_ip="172.16.0.2", id=(2 << 16) + 2)
    mesh.do(("upsert", "c2", "ipcache", "10.2.0.7", moved))
    delta = apply_changes(index, mesh.caches, mesh.caches.take_changes())
    assert list(delta.ipcache) == ["10.2.0.7/32"] and not (delta.routes or delta.services or delta.identities)
    entry = index.ipcache_entry("10.2.0.7/32")
    assert entry is not None and (entry.identity, entry.tunnel_endpoint) == ((2 << 16) + 2, "172.16.0.2")


def test_a_change_of_only_the_next_key_is_a_changed_peer() -> None:
    """A node announcing (then withdrawing) the key it rotates to: its record and peer change and
    the delta carries the peer under its (unchanged) current key."""
    mesh = Mesh()
    node = Node(
        name="n0",
        cluster="c2",
        cluster_id=2,
        wireguard_pub_key="KEY-A=",
        ip_addresses=[NodeAddress("InternalIP", "10.0.0.1")],
        ipv4_alloc_cidr=_cidr("10.0.1.0/24"),
    )
    mesh.do(("upsert", "c2", "nodes", "n0", node))
    index = DesiredIndex(LOCAL)
    mesh.caches.track()
    index.load(mesh.caches.snapshot(copy=False))
    index.take_delta()
    held = held_from(index.state())
    for announced, expected in (({WIREGUARD_NEXT_PUB_KEY: NEXT_KEYS[0]}, NEXT_KEYS[0]), (None, "")):
        mesh.do(("upsert", "c2", "nodes", "n0", msgspec.structs.replace(node, annotations=announced)))
        delta = apply_changes(index, mesh.caches, mesh.caches.take_changes())
        assert list(delta.wireguard_peers) == ["KEY-A="]
        peer = delta.wireguard_peers["KEY-A="]
        assert peer is not None and peer.next_public_key == expected
        assert index.nodes()[("c2", "n0")].wireguard_next_pub_key == expected
        follow(held, delta)
        assert held == held_from(build_desired(LOCAL, mesh.caches.snapshot()))


def test_compact_records_share_strings_and_the_validated_node_is_from_clustermesh() -> None:
    caches = MeshCaches()
    caches.set_cluster_id("c2", 2)
    observer = caches.observer("c2", "ipcache")
    for n in range(3):
        observer.on_upsert(
            f"10.2.0.{n}", IPIdentityPair(ip=f"10.2.0.{n}", host_ip="".join(["172.", "16.0.1"]), id=(2 << 16) + 1)
        )
    cache = caches.get("c2")
    assert cache is not None
    claims = list(cache.ipcache.values())
    assert all(isinstance(c, Claim) for c in claims)
    assert claims[0].tunnel is claims[1].tunnel is claims[2].tunnel, "HostIP strings are interned"
    assert claims[0].id is claims[1].id, "identity numbers are shared"
    node = validate_node(RemoteInfo("c2", 2), "c2-node-0", sample_node("c2", 2, 0))
    assert node.source == "clustermesh"
    record = node_record("c2", "c2-node-0", node)
    assert record.tunnel_ip == "172.16.32.0" and record.pod_cidrs == ("10.2.0.0/24",)
