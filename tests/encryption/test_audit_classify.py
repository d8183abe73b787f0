"""classify() on hand-built frames: every class, cut frames, garbage and addresses outside the mesh."""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest

from encryption.audit.classify import (
    IPSEC,
    MALFORMED,
    PLAINTEXT_HOST,
    PLAINTEXT_NODE,
    PLAINTEXT_POD,
    VXLAN_OTHER,
    WIREGUARD,
    AuditPlan,
    Flow,
    classify,
)

N1, N2, OUTSIDE = "172.18.0.2", "172.18.0.3", "8.8.8.8"
POD1, POD2 = "10.1.0.5", "10.2.0.7"
PLAN = AuditPlan.build({N1: "c1/n1", N2: "c1/n2"}, [("10.1.0.0/24", "c1/n1"), ("10.2.0.0/24", "c1/n2")],
                       wireguard_ports=[51820])
MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


def eth(payload: bytes, ethertype: int = 0x0800) -> bytes:
    return MAC_B + MAC_A + struct.pack("!H", ethertype) + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, frag: int = 0) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, frag, 64, proto, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return header + payload


def ipv6(src: str, dst: str, nxt: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nxt, 64, ipaddress.IPv6Address(src).packed,
                       ipaddress.IPv6Address(dst).packed) + payload


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(sport: int, dport: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)


def wg(msg_type: int = 4) -> bytes:
    sizes = {1: 148, 2: 92, 3: 64, 4: 64}
    return bytes([msg_type, 0, 0, 0]) + bytes(sizes[msg_type] - 4)


def vxlan(inner_frame: bytes) -> bytes:
    return struct.pack("!II", 0x08000000, 42 << 8) + inner_frame


def test_wireguard_on_cilium_port_both_directions_and_plan_port() -> None:
    for frame in (eth(ipv4(N1, N2, 17, udp(51871, 51871, wg(1)))), eth(ipv4(N2, N1, 17, udp(40000, 51871, wg(2)))),
                  eth(ipv4(N1, N2, 17, udp(51871, 40000, wg(4)))), eth(ipv4(N1, N2, 17, udp(51820, 3333, wg(3))))):
        got = classify(frame, PLAN)
        assert got is not None and got.cls == WIREGUARD
    got = classify(eth(ipv4(N1, N2, 17, udp(51871, 51871, wg()))), PLAN)
    assert got is not None and (got.src, got.dst, got.src_node, got.dst_node) == (N1, N2, "c1/n1", "c1/n2")


def test_wireguard_port_without_a_wireguard_header_is_plain_node_traffic() -> None:
    for payload in (b"hello world, not wireguard", bytes([9, 0, 0, 0]) + bytes(60), bytes([1, 0, 0, 0]) + bytes(400)):
        got = classify(eth(ipv4(N1, N2, 17, udp(51871, 51871, payload))), PLAN)
        assert got is not None and got.cls == PLAINTEXT_NODE


def test_esp_and_esp_in_udp() -> None:
    esp = struct.pack("!II", 0x1234, 1) + bytes(32)
    assert (got := classify(eth(ipv4(N1, N2, 50, esp)), PLAN)) is not None and got.cls == IPSEC
    assert (got := classify(eth(ipv4(N1, N2, 17, udp(4500, 4500, esp))), PLAN)) is not None and got.cls == IPSEC
    ike = bytes(4) + b"ike message"  # non-ESP marker: IKE, not encrypted pod traffic
    assert (got := classify(eth(ipv4(N1, N2, 17, udp(4500, 4500, ike))), PLAN)) is not None
    assert got.cls == PLAINTEXT_NODE
    # ESP carrying pod addresses outside (transport mode) is still encrypted
    assert (got := classify(eth(ipv4(POD1, POD2, 50, esp)), PLAN)) is not None and got.cls == IPSEC


def test_plain_pod_tcp_between_nodes() -> None:
    got = classify(eth(ipv4(POD1, POD2, 6, tcp(41000, 80))), PLAN)
    assert got is not None and got.cls == PLAINTEXT_POD
    assert (got.src_node, got.dst_node, got.via) == ("c1/n1", "c1/n2", "ip")
    assert got.flow == Flow("tcp", POD1, POD2, 41000, 80)
    assert str(got.flow) == "tcp 10.1.0.5:41000 -> 10.2.0.7:80"
    # a pod talking to the other node's own address is host traffic: reported, not a failure
    got = classify(eth(ipv4(POD1, N2, 1, b"\x08\x00" + bytes(30))), PLAN)
    assert got is not None and got.cls == PLAINTEXT_HOST and got.flow == Flow("icmp", POD1, N2)


def test_vxlan_with_inner_pod_packet() -> None:
    inner = eth(ipv4(POD1, POD2, 17, udp(5353, 53, b"query")))
    got = classify(eth(ipv4(N1, N2, 17, udp(33000, 8472, vxlan(inner)))), PLAN)
    assert got is not None and got.cls == PLAINTEXT_POD and got.via == "vxlan"
    assert (got.src, got.dst) == (N1, N2)
    assert got.flow == Flow("udp", POD1, POD2, 5353, 53)
    got = classify(eth(ipv4(N1, N2, 17, udp(33000, 4789, vxlan(inner)))), PLAN)
    assert got is not None and got.cls == PLAINTEXT_POD


def test_vxlan_with_inner_host_to_pod_packet() -> None:
    inner = eth(ipv4(N1, POD2, 6, tcp(40000, 2379)))
    got = classify(eth(ipv4(N1, N2, 17, udp(33000, 8472, vxlan(inner)))), PLAN)
    assert got is not None and got.cls == PLAINTEXT_HOST and got.flow == Flow("tcp", N1, POD2, 40000, 2379)


def test_vxlan_with_inner_node_packet_and_geneve() -> None:
    inner = eth(ipv4("192.168.9.1", "192.168.9.2", 6, tcp(1, 2)))
    got = classify(eth(ipv4(N1, N2, 17, udp(33000, 8472, vxlan(inner)))), PLAN)
    assert got is not None and got.cls == VXLAN_OTHER
    arp = eth(bytes(28), ethertype=0x0806)
    got = classify(eth(ipv4(N1, N2, 17, udp(33000, 8472, vxlan(arp)))), PLAN)
    assert got is not None and got.cls == VXLAN_OTHER
    geneve = struct.pack("!BBHI", 1, 0, 0x6558, 7 << 8) + bytes(4)  # one 4-byte option
    pod = eth(ipv4(POD2, POD1, 6, tcp(80, 41000)))
    got = classify(eth(ipv4(N2, N1, 17, udp(1234, 6081, geneve + pod))), PLAN)
    assert got is not None and got.cls == PLAINTEXT_POD and got.via == "geneve"
    assert got.flow == Flow("tcp", POD2, POD1, 80, 41000)


def test_node_to_node_plain_traffic() -> None:
    got = classify(eth(ipv4(N1, N2, 6, tcp(50000, 10250))), PLAN)
    assert got is not None and got.cls == PLAINTEXT_NODE and got.flow is None


def test_outside_addresses_and_non_ip_are_ignored() -> None:
    assert classify(eth(ipv4(N1, OUTSIDE, 6, tcp(1, 443))), PLAN) is None
    assert classify(eth(ipv4(OUTSIDE, POD1, 6, tcp(1, 443))), PLAN) is None
    assert classify(eth(ipv4("172.18.0.99", N2, 17, udp(51871, 51871, wg()))), PLAN) is None
    assert classify(eth(bytes(28), ethertype=0x0806), PLAN) is None


def test_raw_ip_vlan_and_ipv6() -> None:
    frame = ipv4(POD1, POD2, 6, tcp(1, 2))
    got = classify(frame, PLAN, raw_ip=True)
    assert got is not None and got.cls == PLAINTEXT_POD
    tagged = MAC_B + MAC_A + struct.pack("!HH", 0x8100, 7) + struct.pack("!H", 0x0800) + frame
    assert (got := classify(tagged, PLAN)) is not None and got.cls == PLAINTEXT_POD
    plan6 = AuditPlan.build({"fd00::2": "c1/n1", "fd00::3": "c1/n2"}, [("fd10::/64", "c1/n1")])
    got = classify(eth(ipv6("fd00::2", "fd00::3", 17, udp(51871, 51871, wg())), 0x86DD), plan6)
    assert got is not None and got.cls == WIREGUARD
    hop_by_hop = bytes([6, 0]) + bytes(6)  # next header TCP
    got = classify(eth(ipv6("fd10::5", "fd00::3", 0, hop_by_hop + tcp(9, 80)), 0x86DD), plan6)
    assert got is not None and got.cls == PLAINTEXT_HOST and got.flow == Flow("tcp", "fd10::5", "fd00::3", 9, 80)
    assert str(got.flow) == "tcp [fd10::5]:9 -> [fd00::3]:80"


def test_truncated_frames_never_raise() -> None:
    full = eth(ipv4(N1, N2, 17, udp(33000, 8472, vxlan(eth(ipv4(POD1, POD2, 6, tcp(1, 2)))))))
    for cut in range(len(full)):
        got = classify(full[:cut], PLAN)
        assert got is None or got.cls in (MALFORMED, PLAINTEXT_NODE, VXLAN_OTHER, PLAINTEXT_POD)
    assert classify(full[:14 + 20 + 3], PLAN) is not None  # addresses there, UDP header cut
    assert classify(full[:14 + 20 + 3], PLAN).cls == MALFORMED  # type: ignore[union-attr]
    assert classify(full[:14 + 20 + 8 + 8 + 10], PLAN).cls == MALFORMED  # type: ignore[union-attr]
    rng = random.Random(7)
    for _ in range(3000):
        blob = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 120)))
        classify(blob, PLAN)
        classify(blob, PLAN, raw_ip=True)
        # garbage after a valid mesh IPv4 header
        classify(eth(ipv4(N1, N2, rng.choice([6, 17, 50]), blob)), PLAN)


def test_non_first_fragment_has_no_ports() -> None:
    got = classify(eth(ipv4(N1, N2, 17, b"middle of a datagram", frag=100)), PLAN)
    assert got is not None and got.cls == PLAINTEXT_NODE
    got = classify(eth(ipv4(POD1, POD2, 17, b"middle", frag=100)), PLAN)
    assert got is not None and got.cls == PLAINTEXT_POD and got.flow == Flow("udp", POD1, POD2)


def test_plan_json_round_trip_and_errors() -> None:
    again = AuditPlan.from_json(PLAN.to_json())
    assert again.to_json() == PLAN.to_json()
    assert 51871 in again.wireguard_ports and 51820 in again.wireguard_ports
    assert AuditPlan.from_json({"nodes": {N1: "a"}, "pod_cidrs": ["10.9.0.0/16"]}).pod_owner(
        ipaddress.IPv4Address("10.9.3.4").packed) == "pods 10.9.0.0/16"
    for bad in ({}, {"nodes": {"nonsense": "x"}}, {"nodes": {}, "pod_cidrs": ["10.0.0.0/33"]},
                {"nodes": {}, "wireguard_ports": [0]}):
        with pytest.raises(ValueError, match="plan"):
            AuditPlan.from_json(bad)
