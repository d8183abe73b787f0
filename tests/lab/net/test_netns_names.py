"""The naming and address plan of lab topologies (pure, no namespaces)."""

from __future__ import annotations

import ipaddress

import pytest

from lab.net import names
from lab.net.errors import TopologyError


def test_prefix_validation_and_unique_prefixes() -> None:
    assert names.validate_prefix("nt0abc1") == "nt0abc1"
    for bad in ("a", "1ab", "ab-c", "abcdefgh", "AB", ""):
        with pytest.raises(TopologyError):
            names.validate_prefix(bad)
    prefixes = {names.unique_prefix("t") for _ in range(50)}
    assert len(prefixes) == 50
    assert all(len(p) == 5 and p.startswith("t") for p in prefixes)


def test_interface_names_fit_ifnamsiz_with_the_longest_prefix() -> None:
    prefix = "abcdefg"
    longest = [
        names.bridge_ifname(prefix),
        names.underlay_port_ifname(prefix, 255, 253),
        names.node_underlay_ifname(prefix),
        names.node_pod_ifname(prefix, 249),
        names.vxlan_ifname(prefix),
    ]
    assert all(len(n) <= names.IFNAMSIZ for n in longest)
    assert all(names.is_topology_ifname(prefix, n) for n in longest)
    assert not names.is_topology_ifname(prefix, "eth0")
    assert not names.is_topology_ifname("abc", "abcdbr")  # another prefix's device


def test_namespace_names_of_one_prefix_never_match_another() -> None:
    assert names.node_ns("ab", "c1", "n1") == "ab-c1.n1"
    assert names.pod_ns("ab", "c1", "n1", "p1") == "ab-c1.n1.p1"
    assert not names.node_ns("abc", "c1", "n1").startswith(names.ns_prefix("ab"))


def test_address_plan() -> None:
    assert names.node_underlay_ip(1, 0) == ipaddress.IPv4Address("192.168.1.1")
    assert names.node_underlay_ip(255, 253) == ipaddress.IPv4Address("192.168.255.254")
    cidr = names.default_pod_cidr(2)
    assert cidr == ipaddress.IPv4Network("10.2.0.0/16")
    assert names.node_pod_cidr(cidr, 3) == ipaddress.IPv4Network("10.2.3.0/24")
    assert names.pod_ip(names.node_pod_cidr(cidr, 3), 0) == ipaddress.IPv4Address("10.2.3.2")
    with pytest.raises(TopologyError):
        names.node_pod_cidr(ipaddress.IPv4Network("10.9.0.0/23"), 2)
    with pytest.raises(TopologyError):
        names.check_cluster_id(0)
    with pytest.raises(TopologyError):
        names.validate_name("node", "has.dot")


def test_macs_are_deterministic_locally_administered_unicast() -> None:
    ip = ipaddress.IPv4Address("10.1.2.3")
    macs = {names.pod_mac(ip), names.pod_host_mac(ip), names.node_underlay_mac(ip), names.vtep_mac(ip)}
    assert len(macs) == 4
    for mac in macs:
        first = int(mac.split(":")[0], 16)
        assert first & 0x02 and not first & 0x01
    assert names.pod_mac(ip) == "02:01:0a:01:02:03"
