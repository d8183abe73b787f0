"""Pure parts of the pod network: namespace and device names, desired inter-node routes, and the
refusal to touch the host's namespace."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from lab.node.podnet import PodNetwork, PodNetworkError, host_ifname, in_netns, pod_netns_name
from lab.node.routes import desired_routes, node_internal_ip, node_pod_cidr


def node(name: str, cidr: str | None, ip: str | None, *, cidrs: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {} if cidr is None else {"podCIDR": cidr}
    if cidrs is not None:
        spec["podCIDRs"] = cidrs
    addresses = [{"type": "Hostname", "address": name}]
    if ip is not None:
        addresses.insert(0, {"type": "InternalIP", "address": ip})
    return {"metadata": {"name": name}, "spec": spec, "status": {"addresses": addresses}}


def test_pod_netns_name_follows_the_plan() -> None:
    assert pod_netns_name("lab", "c1", 0, "default", "echo-5d9f") == "lab-c1.n0.default.echo-5d9f"
    long = pod_netns_name("lab", "c2", 3, "kube-system", "x" * 253)
    assert len(long) == 200 and long.startswith("lab-c2.n3.kube-system.xxx")


def test_host_ifname_takes_the_uid_hex_digits() -> None:
    assert host_ifname("3F2A9c1d-77aa-4b2e-9d1e-0123456789ab") == "lxc3f2a9c1d"
    assert host_ifname("ab-cd-ef-12-34") == "lxcabcdef12"
    short = host_ifname("pod-x")  # not enough hex digits: hashed, still deterministic and valid
    assert short == host_ifname("pod-x") and len(short) == 11 and short.startswith("lxc")
    assert short != host_ifname("pod-y")


def test_desired_routes_are_the_other_nodes_pod_cidrs_via_their_internal_ips() -> None:
    nodes = [
        node("c1-n0", "10.1.0.0/24", "192.168.1.1"),
        node("c1-n1", "10.1.1.0/24", "192.168.1.2"),
        node("c1-n2", None, "192.168.1.3", cidrs=["fd00::/64", "10.1.2.0/24"]),
        node("c1-n3", "10.1.3.0/24", None),  # no InternalIP yet: skipped
        node("c1-n4", None, "192.168.1.5"),  # no podCIDR yet: skipped
    ]
    assert desired_routes("c1-n0", nodes) == {
        ipaddress.IPv4Network("10.1.1.0/24"): ipaddress.IPv4Address("192.168.1.2"),
        ipaddress.IPv4Network("10.1.2.0/24"): ipaddress.IPv4Address("192.168.1.3"),
    }
    assert desired_routes("c1-n1", nodes) == {
        ipaddress.IPv4Network("10.1.0.0/24"): ipaddress.IPv4Address("192.168.1.1"),
        ipaddress.IPv4Network("10.1.2.0/24"): ipaddress.IPv4Address("192.168.1.3"),
    }
    assert desired_routes("c1-n0", nodes[:1]) == {}


def test_desired_routes_skip_conflicts() -> None:
    nodes = [
        node("c1-n2", "10.1.1.0/24", "192.168.1.3"),  # claims n1's podCIDR too: n1 wins by name order
        node("c1-n1", "10.1.1.0/24", "192.168.1.2"),
        node("c1-n0", "10.1.0.0/24", "192.168.1.1"),
        node("c1-n3", "10.1.0.0/16", "192.168.1.4"),  # overlaps the own podCIDR
        node("c1-n5", "10.1.5.0/24", "192.168.1.1"),  # the own InternalIP
    ]
    assert desired_routes("c1-n0", nodes) == {
        ipaddress.IPv4Network("10.1.1.0/24"): ipaddress.IPv4Address("192.168.1.2")
    }


def test_node_field_readers_tolerate_missing_and_bad_fields() -> None:
    assert node_pod_cidr({}) is None and node_internal_ip({}) is None
    assert node_pod_cidr({"spec": {"podCIDR": "garbage"}}) is None
    assert node_internal_ip({"status": {"addresses": [{"type": "InternalIP", "address": "fd00::1"}]}}) is None


def test_pod_network_refuses_to_run_outside_its_node_namespace(tmp_path: Path) -> None:
    assert not in_netns("lab-c1.n0")  # the test runs in the host's namespace, whatever exists
    with pytest.raises(PodNetworkError, match=r"refusing to configure .* not the node namespace 'lab-c1.n0'"):
        PodNetwork(lab="lab", cluster="c1", node_index=0, pod_cidr=ipaddress.IPv4Network("10.1.0.0/24"),
                   state_dir=tmp_path / "state")  # fmt: skip
    assert not (tmp_path / "state").exists()
