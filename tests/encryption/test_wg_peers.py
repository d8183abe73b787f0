"""Desired peers from remote nodes (pure Cilium rules) and the reconciler target's bookkeeping."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from encryption.wireguard import keys
from encryption.wireguard.device import PeerChange
from encryption.wireguard.dump import DeviceDump, PeerDump
from encryption.wireguard.peers import PeerConfig, PeerSource, PeersTarget, desired_peers, endpoint_for

LOCAL = keys.generate().public_key
KA, KB, KC = (keys.generate().public_key for _ in range(3))


def test_tunnel_mode_only_node_ips() -> None:
    src = PeerSource("c1/n2", KA, ("192.168.1.2", "fd00::2"), pod_ips=("10.1.1.5",), pod_cidrs=("10.1.1.0/24",))
    peers, problems = desired_peers(LOCAL, [src], routing_mode="tunnel")
    assert problems == []
    assert peers == {KA: PeerConfig("192.168.1.2:51871", frozenset({"192.168.1.2/32", "fd00::2/128"}))}


def test_native_mode_adds_pod_ips_and_cidrs() -> None:
    src = PeerSource("c1/n2", KA, ("192.168.1.2",), pod_ips=("10.1.1.5", "fd01::5"), pod_cidrs=("10.1.1.7/24",))
    peers, problems = desired_peers(LOCAL, [src], routing_mode="native", keepalive=25)
    assert problems == []
    assert peers[KA] == PeerConfig(
        "192.168.1.2:51871",
        frozenset({"192.168.1.2/32", "10.1.1.5/32", "fd01::5/128", "10.1.1.0/24"}),
        keepalive=25,
    )


def test_endpoint_prefers_ipv4_then_ipv6() -> None:
    assert endpoint_for(["fd00::2", "192.168.1.2"]) == "192.168.1.2:51871"
    assert endpoint_for(["FD00:0::2"]) == "[fd00::2]:51871"
    assert endpoint_for(["bogus"]) == ""


def test_own_key_skipped_silently() -> None:
    peers, problems = desired_peers(LOCAL, [PeerSource("c1/me", LOCAL, ("192.168.1.1",))], routing_mode="tunnel")
    assert peers == {} and problems == []


@pytest.mark.parametrize("bad", [keys.ZERO_KEY, "", "short", "!!!!"])
def test_zero_and_invalid_keys_rejected(bad: str) -> None:
    peers, problems = desired_peers(
        LOCAL,
        [PeerSource("c1/bad", bad, ("192.168.1.9",)), PeerSource("c1/ok", KA, ("192.168.1.2",))],
        routing_mode="tunnel",
    )
    assert list(peers) == [KA]
    assert len(problems) == 1 and "c1/bad" in problems[0]


def test_duplicate_key_first_node_name_wins_whatever_the_order() -> None:
    a = PeerSource("c1/a", KA, ("192.168.1.2",))
    b = PeerSource("c2/b", KA, ("192.168.2.2",))
    for order in ([a, b], [b, a]):
        peers, problems = desired_peers(LOCAL, order, routing_mode="tunnel")
        assert peers == {KA: PeerConfig("192.168.1.2:51871", frozenset({"192.168.1.2/32"}))}
        assert len(problems) == 1 and problems[0].startswith(f"detected duplicate public key {KA} on node c2/b")


def test_ip_claimed_twice_stays_with_first_node() -> None:
    a = PeerSource("c1/a", KA, ("192.168.1.2",), pod_ips=("10.1.1.5",))
    b = PeerSource("c1/b", KB, ("192.168.1.3",), pod_ips=("10.1.1.5", "10.1.2.5"))
    for order in ([a, b], [b, a]):
        peers, problems = desired_peers(LOCAL, order, routing_mode="native")
        assert peers[KA].allowed_ips == {"192.168.1.2/32", "10.1.1.5/32"}
        assert peers[KB].allowed_ips == {"192.168.1.3/32", "10.1.2.5/32"}
        assert problems == ["allowed IP 10.1.1.5/32 claimed by nodes c1/a and c1/b; kept on c1/a"]


def test_invalid_addresses_reported() -> None:
    src = PeerSource("c1/a", KA, ("nope", "192.168.1.2"), pod_ips=("x",), pod_cidrs=("10.0.0.0/99",))
    peers, problems = desired_peers(LOCAL, [src], routing_mode="native")
    assert peers[KA].allowed_ips == {"192.168.1.2/32"}
    assert len(problems) == 3
    peers, problems = desired_peers(LOCAL, [PeerSource("c1/x", KB, ())], routing_mode="tunnel")
    assert peers[KB] == PeerConfig("", frozenset())
    assert problems == ["node c1/x: no valid node IP, WireGuard peer has no endpoint"]


class _Recorder:
    """An in-memory device (the real-device test is in test_wg_device.py)."""

    def __init__(self, peers: dict[str, PeerDump]) -> None:
        self.peers = peers
        self.calls: list[list[PeerChange]] = []

    def dump(self) -> DeviceDump:
        return DeviceDump("", 51871, 0, dict(self.peers))

    def set_peers(self, changes: list[PeerChange]) -> None:
        self.calls.append(changes)

    def remove_peers(self, keys: Iterable[str]) -> None:
        self.calls.append([PeerChange(k, remove=True) for k in keys])


def test_target_sends_allowed_ips_only_when_changed() -> None:
    dev = _Recorder({KA: PeerDump(KA, "192.168.1.2:51871", frozenset({"192.168.1.2/32"}), 0, 0, 0, 0)})
    target = PeersTarget(dev)
    assert dict(target.items()) == {KA: PeerConfig("192.168.1.2:51871", frozenset({"192.168.1.2/32"}))}
    target.update_many([(KA, PeerConfig("192.168.1.2:51871", frozenset({"192.168.1.2/32"}), keepalive=25))])
    assert dev.calls[-1] == [PeerChange(KA, "192.168.1.2:51871", None, 25)]
    # KB takes 192.168.1.2/32 from KA: KA's known set shrinks, so re-adding it to KA is sent in full
    target.update_many([(KB, PeerConfig("192.168.1.3:51871", frozenset({"192.168.1.2/32"})))])
    assert dev.calls[-1][0].allowed_ips == frozenset({"192.168.1.2/32"})
    target.update_many([(KA, PeerConfig("192.168.1.2:51871", frozenset({"192.168.1.2/32"})))])
    assert dev.calls[-1][0].allowed_ips == frozenset({"192.168.1.2/32"})
    target.delete_many([KB])
    assert dev.calls[-1] == [PeerChange(KB, remove=True)]
