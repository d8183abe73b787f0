"""Key rotation in the agent (:mod:`agent.datapath.wgrotation`), the pure and loop-level parts: the
announcements made from the WireGuard plan, the transition device's name, steering through it, and
the rotation's ``wg set`` changes becoming the peers reconciler's desired state (the reconciler stays
the only writer of the main device's peers). The rotation on real devices: tests/lab (the lab's
acceptance test) and tests/encryption/test_wg_rotation_netns.py (the protocol)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from agent.datapath.steering import RouteKey, RouteValue, SteeringPeer, steering_desired
from agent.datapath.wgrotation import ReconciledPeers, announcements, endpoint_ip
from agent.datapath.wireguard import PeerCandidate, plan_peers
from encryption.wireguard.device import PeerChange, WireGuardDevice, transition_device_name
from encryption.wireguard.keys import generate
from encryption.wireguard.peers import PeerConfig, PeerSource
from encryption.wireguard.rotation import Announcement
from meshcore.reconcile import Reconciler

KEYS = {n: generate().public_key for n in ("self", "a", "b", "a-next")}


def test_transition_device_name_keeps_the_prefix_and_fits() -> None:
    assert transition_device_name("cilium_wg0") == "cilium_wg0t"
    assert transition_device_name("cmwgabc12345678") == "cmwgabc1234567t"
    assert transition_device_name("cmwgabc1234567t") == "cmwgabc1234567u"
    for name in ("cilium_wg0", "cmwgabc12345678", "x"):
        other = transition_device_name(name)
        assert other != name and len(other) <= 15 and other.startswith(name[:14])
    with pytest.raises(ValueError):
        transition_device_name("")


def test_endpoint_ip() -> None:
    assert endpoint_ip("192.168.1.2:51871") == "192.168.1.2"
    assert endpoint_ip("[fd00::2]:51871") == "fd00::2"
    assert endpoint_ip("") == ""


def test_announcements_from_the_plan_carry_next_keys() -> None:
    candidates = [
        PeerCandidate(PeerSource("c2/a", KEYS["a"], ("192.168.2.1",), ("10.2.0.0/24",)),
                      next_public_key=KEYS["a-next"]),
        PeerCandidate(PeerSource("c2/b", KEYS["b"], ("192.168.2.2",), ("10.2.1.0/24",))),
    ]
    plan = plan_peers(KEYS["self"], candidates, routing_mode="native")
    assert plan.next_keys == {"c2/a": KEYS["a-next"]}
    got = announcements(plan.peers, plan.nodes, plan.next_keys)
    assert got == [
        Announcement("c2/a", KEYS["a"], KEYS["a-next"], "192.168.2.1", plan.peers[KEYS["a"]].allowed_ips),
        Announcement("c2/b", KEYS["b"], None, "192.168.2.2", plan.peers[KEYS["b"]].allowed_ips),
    ]
    # a next key equal to the current one is no rotation; a peer without an endpoint cannot rotate
    peers = {KEYS["a"]: PeerConfig("192.168.2.1:51871", frozenset({"192.168.2.1/32"})),
             KEYS["b"]: PeerConfig("", frozenset({"192.168.2.2/32"}))}  # fmt: skip
    got = announcements(peers, {KEYS["a"]: "c2/a", KEYS["b"]: "c2/b"}, {"c2/a": KEYS["a"]})
    assert [(a.node, a.next) for a in got] == [("c2/a", None)]


def test_steering_through_the_transition_device_for_some_nodes() -> None:
    peers = (SteeringPeer("c2/a", ("192.168.2.1",), ()), SteeringPeer("c2/b", ("192.168.2.2",), ()))
    s = steering_desired(peers, routing_mode="tunnel", oif=7, node_ip="192.168.1.1", oif_by_node={"c2/b": 9})
    assert s.routes == {RouteKey(201, "192.168.2.1/32"): RouteValue(7, "192.168.1.1"),
                        RouteKey(201, "192.168.2.2/32"): RouteValue(9, "192.168.1.1")}  # fmt: skip


class MemoryPeers:
    """An in-memory peers target (the reconciler's pure logic is under test, not a device)."""

    def __init__(self, peers: dict[str, PeerConfig]) -> None:
        self.peers = dict(peers)
        self.calls: list[str] = []

    def items(self) -> list[tuple[str, PeerConfig]]:
        return list(self.peers.items())

    def update_many(self, items: list[tuple[str, PeerConfig]]) -> None:
        self.calls += [f"set {k}" for k, _ in items]
        self.peers.update(items)

    def delete_many(self, keys: list[str]) -> None:
        self.calls += [f"del {k}" for k in keys]
        for k in keys:
            del self.peers[k]


def test_rotation_changes_become_the_reconcilers_desired_state_new_key_before_old_goes() -> None:
    old = PeerConfig("192.168.2.1:51871", frozenset({"192.168.2.1/32", "10.2.0.0/24"}))
    target = MemoryPeers({KEYS["a"]: old})
    rec: Reconciler[str, PeerConfig] = Reconciler("wireguard-peers", target)

    async def go() -> None:
        rec.set_desired({KEYS["a"]: old})
        runner = asyncio.create_task(rec.run())
        await asyncio.wait_for(rec.wait_synced(), 5)
        peers = ReconciledPeers(WireGuardDevice("cmwgtest0"), rec, asyncio.get_running_loop())
        done = threading.Event()

        def from_the_rotation_thread() -> None:
            peers.set_peers([PeerChange(KEYS["a"], "", None, 1)])  # probe keepalive on the main device
            peers.set_peers([PeerChange(KEYS["a-next"], old.endpoint, old.allowed_ips, 0),
                             PeerChange(KEYS["a"], remove=True)])  # fmt: skip
            done.set()

        await asyncio.wait_for(asyncio.to_thread(from_the_rotation_thread), 10)
        assert done.is_set()
        runner.cancel()

    asyncio.run(go())
    assert target.peers == {KEYS["a-next"]: PeerConfig(old.endpoint, old.allowed_ips, 0)}
    assert target.calls == [f"set {KEYS['a']}", f"set {KEYS['a-next']}", f"del {KEYS['a']}"]
    assert rec.desired == target.peers


def test_the_audit_counts_the_transition_devices_traffic_as_wireguard() -> None:
    from encryption.audit.classify import AuditPlan
    from encryption.wireguard.rotation import TRANSITION_PORT

    assert TRANSITION_PORT in AuditPlan({}).wireguard_ports
