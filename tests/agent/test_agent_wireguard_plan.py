"""The pure parts of WireGuard in the node datapath: peers from nodes (:func:`plan_peers`), steering
(:func:`steering_desired`), the opt-out selector, and the ipcache's ``encrypt_key`` (packed, and
re-emitted per node by :class:`~agent.datapath.ipfeed.IPCacheFeed` when the peer set changes)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agent.datapath.ipfeed import IPCacheFeed
from agent.datapath.labelselector import parse_selector
from agent.datapath.steering import (
    MARK_MASK,
    NODE_TABLE,
    WIREGUARD_TABLE,
    RouteKey,
    RouteValue,
    Rule,
    SteeringPeer,
    steering_desired,
)
from agent.datapath.targets import ipcache_desired
from agent.datapath.wireguard import (
    EncryptionConfig,
    PeerCandidate,
    WireGuardNode,
    index_peer_candidates,
    index_plaintext_nodes,
    index_wireguard_peers,
    local_peer_candidates,
    peer_source,
    plan_peers,
)
from agent.desired import ClusterView, IPCacheEntry, LocalInfo, WireGuardPeer
from agent.incremental import DesiredIndex
from bpf.layouts import STATIC_ENCRYPT_KEY, IPCacheValue, pack_ipcache_key
from encryption.wireguard.keys import generate
from encryption.wireguard.peers import PeerSource
from meshcore.errors import NodePublishError
from meshcore.wire import CIDR, IPIdentityPair, Node, NodeAddress

LOCAL = LocalInfo("c1", 1, "n0")
MASK24 = bytes([255, 255, 255, 0])
KEYS = {name: generate().public_key for name in ("self", "n1", "n2", "m0", "m1", "m2")}
KEYS["n0"] = KEYS["self"]  # this node


def _node(cluster: str, name: str, ip: str, cidr: str, *, key: bool = True, enc: int = 255,
          labels: dict[str, str] | None = None) -> Node:  # fmt: skip
    return Node(name=name, cluster=cluster, ip_addresses=[NodeAddress("InternalIP", ip)],
                ipv4_alloc_cidr=CIDR(cidr, MASK24), encryption_key=enc,
                wireguard_pub_key=KEYS[name] if key else "", labels=labels)  # fmt: skip


def _index(*nodes: Node, pods: dict[str, str] | None = None) -> DesiredIndex:
    index = DesiredIndex(LOCAL)
    pairs = {ip: IPIdentityPair(ip=ip, host_ip=host, id=131172) for ip, host in (pods or {}).items()}
    index.load({"c2": ClusterView("c2", 2, {n.name: n for n in nodes}, pairs, {}, {})})
    return index


def _cand(node: str, key: str, ips: tuple[str, ...], cidrs: tuple[str, ...] = (), enc: int = 255) -> PeerCandidate:
    return PeerCandidate(PeerSource(node, key, ips, pod_cidrs=cidrs), enc)


# ---- peers ----


def test_peer_source_splits_node_ips_and_pod_cidrs() -> None:
    allowed = ("10.2.0.0/24", "192.168.2.1/32", "192.168.9.9/32")
    peer = WireGuardPeer(KEYS["m0"], "192.168.2.1:51871", allowed, "c2", "m0")
    src = peer_source(peer)
    assert src.node == "c2/m0" and src.public_key == KEYS["m0"]
    assert src.node_ips == ("192.168.2.1", "192.168.9.9") and src.pod_cidrs == ("10.2.0.0/24",)


@pytest.mark.parametrize("mode", ["tunnel", "native"])
def test_plan_from_the_index_and_local_nodes(mode: str) -> None:
    index = _index(_node("c2", "m0", "192.168.2.1", "10.2.0.0"),
                   _node("c2", "m1", "192.168.2.2", "10.2.1.0", key=False))  # fmt: skip
    local_nodes = [_node("c1", "n0", "192.168.1.1", "10.1.0.0"), _node("c1", "n1", "192.168.1.2", "10.1.1.0", enc=0)]
    remote = index_peer_candidates(index_wireguard_peers(index))
    local = local_peer_candidates(local_nodes, LOCAL)
    assert [c.source.node for c in local] == ["c1/n1"]  # not this node itself
    plan = plan_peers(KEYS["self"], remote, local, scope="all", routing_mode=mode, keepalive=25)
    assert plan.nodes == {KEYS["m0"]: "c2/m0", KEYS["n1"]: "c1/n1"}
    m0 = plan.peers[KEYS["m0"]]
    assert m0.endpoint == "192.168.2.1:51871" and m0.keepalive == 25
    expected = {"192.168.2.1/32"} | ({"10.2.0.0/24"} if mode == "native" else set())
    assert m0.allowed_ips == expected
    assert plan.encrypt_hosts == {"192.168.2.1", "192.168.1.2"}
    assert {p.node: p.node_encryption for p in plan.steering} == {"c1/n1": False, "c2/m0": True}
    assert index_plaintext_nodes(index) == ["c2/m1"]
    # inter-cluster: this cluster's nodes are no peers
    inter = plan_peers(KEYS["self"], remote, local, scope="inter-cluster", routing_mode=mode)
    assert inter.nodes == {KEYS["m0"]: "c2/m0"} and inter.encrypt_hosts == {"192.168.2.1"}


def test_plan_rules_own_key_duplicates_and_conflicting_ips() -> None:
    plan = plan_peers(KEYS["self"], [
        _cand("c2/m0", KEYS["m0"], ("192.168.2.1",), ("10.2.0.0/24",)),
        _cand("c2/m1", KEYS["m0"], ("192.168.2.2",)),  # the same key again: no peer
        _cand("c2/m2", KEYS["m2"], ("192.168.2.3",), ("10.2.0.0/24",)),  # a CIDR claimed twice: kept on m0
        _cand("c2/zz", KEYS["self"], ("192.168.2.9",)),  # this node's own key
        _cand("c2/bad", "not-a-key", ("192.168.2.8",)),
    ], routing_mode="native")  # fmt: skip
    assert plan.nodes == {KEYS["m0"]: "c2/m0", KEYS["m2"]: "c2/m2"}
    assert plan.peers[KEYS["m2"]].allowed_ips == {"192.168.2.3/32"}
    assert [p.pod_cidrs for p in plan.steering] == [("10.2.0.0/24",), ()]
    assert any("duplicate public key" in p for p in plan.problems)
    assert any("claimed by nodes c2/m0 and c2/m2" in p for p in plan.problems)
    assert any("c2/bad" in p for p in plan.problems)
    assert plan.encrypt_hosts == {"192.168.2.1", "192.168.2.3"}


def test_a_key_change_is_a_new_peer_with_every_allowed_ip() -> None:
    before = plan_peers(KEYS["self"], [_cand("c2/m0", KEYS["m0"], ("192.168.2.1",), ("10.2.0.0/24",))],
                        routing_mode="native")  # fmt: skip
    after = plan_peers(KEYS["self"], [_cand("c2/m0", KEYS["m1"], ("192.168.2.1",), ("10.2.0.0/24",))],
                       routing_mode="native")  # fmt: skip
    assert set(before.peers) == {KEYS["m0"]} and set(after.peers) == {KEYS["m1"]}
    assert after.peers[KEYS["m1"]].allowed_ips == before.peers[KEYS["m0"]].allowed_ips
    assert after.encrypt_hosts == before.encrypt_hosts and after.steering == before.steering


# ---- steering ----

PEERS = (
    SteeringPeer("c2/m0", ("192.168.2.1",), ("10.2.0.0/24",), node_encryption=True),
    SteeringPeer("c2/m1", ("192.168.2.2", "fd00::2"), ("10.2.1.0/24", "fd00:2::/64"), node_encryption=False),
)


def test_steering_tunnel_mode() -> None:
    s = steering_desired(PEERS, routing_mode="tunnel", oif=7, node_ip="192.168.1.1")
    assert list(s.rules) == [Rule(1, WIREGUARD_TABLE, ipproto=17, dport=8472)]
    assert str(next(iter(s.rules))) == "1: ipproto udp dport 8472 lookup 201"
    assert s.routes == {RouteKey(201, "192.168.2.1/32"): RouteValue(7, "192.168.1.1"),
                        RouteKey(201, "192.168.2.2/32"): RouteValue(7, "192.168.1.1")}  # fmt: skip


def test_steering_native_mode_and_node_encryption() -> None:
    s = steering_desired(PEERS, routing_mode="native", oif=7, node_ip="192.168.1.1", node_encryption=True)
    assert sorted(str(r) for r in s.rules) == [
        f"1: not fwmark 0xe00/0x{MARK_MASK:x} lookup 201",
        f"2: not fwmark 0xe00/0x{MARK_MASK:x} lookup 202",
    ]
    assert set(s.routes) == {RouteKey(201, "10.2.0.0/24"), RouteKey(201, "10.2.1.0/24"),
                             RouteKey(NODE_TABLE, "192.168.2.1/32")}  # fmt: skip  (m1 opted out; IPv6 skipped)


def test_steering_marks_never_match_wireguard_but_always_identities() -> None:
    """The datapath's identity marks (0xCE in the top byte) may carry 0xE00 in the identity bits;
    they must still be steered, WireGuard's own 0xE00 never."""
    rule = next(iter(steering_desired((), routing_mode="native", oif=1, node_ip="192.168.1.1").rules))

    def excluded(mark: int) -> bool:  # the kernel: not ((mark & mask) == value)
        return (mark & rule.fwmask) == rule.fwmark

    assert excluded(0xE00)
    assert not excluded(0xCE000000 | 0x10E00) and not excluded(0) and not excluded(0x4000)


def test_steering_skips_own_ip_and_bad_input() -> None:
    peers = [SteeringPeer("c1/n1", ("192.168.1.1", "nonsense"), ("bad",))]
    s = steering_desired(peers, routing_mode="tunnel", oif=3, node_ip="192.168.1.1", node_encryption=True)
    assert s.routes == {}
    with pytest.raises(ValueError):
        steering_desired((), routing_mode="vxlan", oif=1, node_ip="")


# ---- opt-out selector ----


def test_opt_out_selector() -> None:
    cp = parse_selector("node-role.kubernetes.io/control-plane")
    assert cp.matches({"node-role.kubernetes.io/control-plane": ""}) and not cp.matches({"x": "y"})
    assert not parse_selector("").matches({"anything": "1"})  # empty: nobody opts out
    sel = parse_selector("tier in (infra, db),zone!=a,!spot")
    assert sel.matches({"tier": "db", "zone": "b"}) and not sel.matches({"tier": "db", "spot": "1"})
    assert not sel.matches({"tier": "web"}) and str(sel) == "tier in (infra,db),zone!=a,!spot"
    for bad in ("a in (b", "a=b=c", "a,,b", "=x"):
        with pytest.raises(ValueError):
            parse_selector(bad)


# ---- encrypt_key in the ipcache ----


def _key_of(packed: dict[bytes, bytes], prefix: str) -> int:
    return int(IPCacheValue.from_buffer_copy(packed[pack_ipcache_key(prefix)]).encrypt_key)


def test_ipcache_encrypt_key_follows_the_peers() -> None:
    entries = [
        IPCacheEntry("10.2.0.5/32", 131172, "192.168.2.1", 0, 2, "c2", "endpoint"),
        IPCacheEntry("10.2.1.5/32", 131172, "192.168.2.2", STATIC_ENCRYPT_KEY, 2, "c2", "endpoint"),
        IPCacheEntry("10.1.0.5/32", 65636, "", STATIC_ENCRYPT_KEY, 1, "c1", "endpoint", remote_cluster=False),
    ]
    for native in (False, True):
        packed = ipcache_desired(entries, native=native, encrypt_hosts={"192.168.2.1"})
        assert [_key_of(packed, e.prefix) for e in entries] == [STATIC_ENCRYPT_KEY, 0, 0]
    legacy = ipcache_desired(entries)  # no host set: the records' own keys
    assert [_key_of(legacy, e.prefix) for e in entries] == [0, STATIC_ENCRYPT_KEY, STATIC_ENCRYPT_KEY]


class _Recorder:
    """Stands in for the ipcache reconciler: records what the feed hands it."""

    def __init__(self) -> None:
        self.desired: dict[bytes, Any] = {}
        self.calls: list[dict[bytes, Any]] = []

    def set_desired(self, desired: dict[bytes, Any]) -> None:
        self.desired = dict(desired)

    def change_desired(self, updates: dict[bytes, Any] | None = None, deletes: Any = ()) -> None:
        self.calls.append(dict(updates or {}))
        self.desired.update(updates or {})
        for k in deletes:
            self.desired.pop(k, None)


def test_feed_re_emits_only_the_entries_of_nodes_that_changed() -> None:
    pods = {f"10.2.{n}.{i}": f"192.168.2.{n + 1}" for n in range(3) for i in range(2, 40)}
    index = _index(pods=pods)
    rec = _Recorder()
    feed = IPCacheFeed(rec)  # type: ignore[arg-type]
    local = IPCacheEntry("10.1.1.9/32", 65636, "192.168.1.2", 0, 1, "c1", "endpoint", remote_cluster=False)
    feed.set_local([local])

    async def go() -> None:
        await feed.load(index)
        assert {_key_of(rec.desired, f"{ip}/32") for ip in pods} == {0}
        assert await feed.set_encrypt_hosts(index, {"192.168.2.2", "192.168.1.2"}) == 38 + 1
        assert await feed.set_encrypt_hosts(index, {"192.168.2.2", "192.168.1.2"}) == 0  # unchanged: nothing
        assert await feed.set_encrypt_hosts(index, {"192.168.2.3"}) == 38 * 2 + 1

    asyncio.run(go())
    for ip, host in pods.items():
        assert _key_of(rec.desired, f"{ip}/32") == (STATIC_ENCRYPT_KEY if host == "192.168.2.3" else 0)
    assert _key_of(rec.desired, "10.1.1.9/32") == 0
    # an ordinary change packs against the current set
    feed.apply(index, {"10.2.2.77/32": IPCacheEntry("10.2.2.77/32", 131172, "192.168.2.3", 0, 2, "c2", "endpoint")})
    assert _key_of(rec.calls[-1], "10.2.2.77/32") == STATIC_ENCRYPT_KEY


# ---- opt-out decision and publication (the publisher injected) ----


@pytest.mark.parametrize(("labels", "node_encryption", "key", "state"), [
    ({"node-role.kubernetes.io/control-plane": ""}, True, 0, "OptedOut"),
    ({"node-role.kubernetes.io/control-plane": ""}, False, STATIC_ENCRYPT_KEY, "Disabled"),
    ({}, True, STATIC_ENCRYPT_KEY, "Enabled"),
])  # fmt: skip
def test_opt_out_and_publication(tmp_path: Path, labels: dict[str, str], node_encryption: bool, key: int,
                                 state: str) -> None:  # fmt: skip
    calls: list[tuple[Path, str, str, int]] = []

    async def publisher(kubeconfig: Path, node_name: str, *, public_key: str, encryption_key: int,
                        next_public_key: str | None = None) -> None:  # fmt: skip
        calls.append((kubeconfig, node_name, public_key, encryption_key))
        if len(calls) == 1:
            raise NodePublishError("the API is not there yet")

    config = EncryptionConfig(mode="wireguard", node_encryption=node_encryption, state_dir=tmp_path,
                              kubeconfig=tmp_path / "kubeconfig")  # fmt: skip
    wg = WireGuardNode(LOCAL, config, publisher=publisher, publish_retry=0.01)
    wg.key = generate()

    async def labels_of_node() -> dict[str, str]:
        return labels

    async def go() -> None:
        await wg.decide_opt_out(labels_of_node)
        publishing = asyncio.create_task(wg.publish())  # forever: it republishes on key rotations
        for _ in range(500):
            if wg.published:
                break
            await asyncio.sleep(0.01)
        publishing.cancel()

    asyncio.run(go())
    assert calls[-1] == (tmp_path / "kubeconfig", "n0", wg.key.public_key, key) and len(calls) == 2
    assert wg.published and not wg.publish_error and wg.node_encryption_status() == state
    assert wg.status_json()["encryption-key"] == key
