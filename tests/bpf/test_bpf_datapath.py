"""tc programs for real: compiled with bcc, attached in throwaway namespaces, traffic with ping.

Topologies (every device inside namespaces made by the test):
- two namespaces: ``pod`` (eth0 10.77.0.2) -- veth -- ``node`` (h0 10.77.0.1, the destination);
- two nodes with a pod each, joined by an underlay veth (192.168.77.0/24) and a VXLAN
  ``external`` device per node; pods reach each other only through the tunnel programs.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from bpf.layouts import (
    PROTOCOLS,
    Direction,
    EnforceKey,
    EnforceValue,
    PolicyKey,
    PolicyValue,
    Reason,
    Verdict,
    ipcache_key,
    ipcache_value,
)
from bpf.loader import Datapath, DatapathConfig
from bpf.maps import NodeMaps

Run = Callable[..., subprocess.CompletedProcess[str]]
ICMP = PROTOCOLS["ICMP"]


def _ping(sh: Run, ns: str, dst: str) -> bool:
    """One bounded ping (1 s)."""
    return sh("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", "-q", dst, check=False).returncode == 0


def _filters(sh: Run, ns: str, dev: str, where: str) -> str:
    return sh("ip", "netns", "exec", ns, "tc", "filter", "show", "dev", dev, where).stdout


def _set_policy(maps: NodeMaps, endpoint: int, remote: int, direction: Direction, verdict: Verdict) -> None:
    maps.policy_enforce.update(EnforceKey(endpoint, direction), EnforceValue(1))
    maps.policy.update(PolicyKey(endpoint, remote, 0, ICMP, direction), PolicyValue(verdict=verdict))


def test_pod_policy_drops_and_allows(pin_root: Path, netns: Callable[[str], str], sh: Run) -> None:
    pod, node = netns("pod"), netns("node")
    sh("ip", "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "h0", "netns", node)
    sh("ip", "-n", pod, "addr", "add", "10.77.0.2/24", "dev", "eth0")
    sh("ip", "-n", node, "addr", "add", "10.77.0.1/24", "dev", "h0")
    sh("ip", "-n", pod, "link", "set", "eth0", "up")
    sh("ip", "-n", node, "link", "set", "h0", "up")

    with Datapath.load("n1", pin_root, DatapathConfig(netns=node)) as dp:
        dp.attach_pod("h0", endpoint_id=7, identity=1007)
        assert "from_pod" in _filters(sh, node, "h0", "ingress")
        assert "to_pod" in _filters(sh, node, "h0", "egress")
        dp.maps.ipcache.update(ipcache_key("10.77.0.1/32"), ipcache_value(5000))
        assert _ping(sh, pod, "10.77.0.1")  # no enforcement yet

        _set_policy(dp.maps, 7, 5000, Direction.EGRESS, Verdict.DENY)
        assert not _ping(sh, pod, "10.77.0.1")
        counters = dp.maps.counters()
        assert counters[(Reason.POLICY_DENIED, Direction.EGRESS)][0] >= 1
        entry = dp.maps.policy.get(PolicyKey(7, 5000, 0, ICMP, Direction.EGRESS))
        assert entry is not None and entry.packets >= 1

        _set_policy(dp.maps, 7, 5000, Direction.EGRESS, Verdict.ALLOW)
        assert _ping(sh, pod, "10.77.0.1")

        # Another destination identity has no entry: default deny, counted apart.
        dp.maps.ipcache.update(ipcache_key("10.77.0.1/32"), ipcache_value(5001))
        assert not _ping(sh, pod, "10.77.0.1")
        assert dp.maps.counters()[(Reason.POLICY_DEFAULT_DENY, Direction.EGRESS)][0] >= 1

        # Ingress enforcement on the pod: replies to its own flows pass (connection tracking),
        # new flows from the node's identity are denied.
        dp.maps.ipcache.update(ipcache_key("10.77.0.1/32"), ipcache_value(5000))
        _set_policy(dp.maps, 7, 5000, Direction.INGRESS, Verdict.DENY)
        assert _ping(sh, pod, "10.77.0.1")
        assert not _ping(sh, node, "10.77.0.2")
        assert dp.maps.counters()[(Reason.POLICY_DENIED, Direction.INGRESS)][0] >= 1
        dp.detach_pod("h0")
        assert "from_pod" not in _filters(sh, node, "h0", "ingress")


def _node(sh: Run, netns: Callable[[str], str], idx: int) -> tuple[str, str]:
    """A node namespace with a pod behind it, a VXLAN external device and an underlay end."""
    node, pod = netns(f"node{idx}"), netns(f"pod{idx}")
    sh("ip", "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "lxc0", "netns", node)
    sh("ip", "-n", pod, "addr", "add", f"10.{idx}.1.10/24", "dev", "eth0")
    sh("ip", "-n", pod, "link", "set", "eth0", "up")
    sh("ip", "-n", pod, "route", "add", "default", "via", f"10.{idx}.1.1")
    sh("ip", "-n", node, "addr", "add", f"10.{idx}.1.1/24", "dev", "lxc0")
    sh("ip", "-n", node, "link", "set", "lxc0", "up")
    sh("ip", "-n", node, "link", "add", "vx0", "type", "vxlan", "external", "dstport", "8472")
    sh("ip", "-n", node, "link", "set", "vx0", "up")
    for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"):
        sh("ip", "netns", "exec", node, "sysctl", "-qw", key)
    sh("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.conf.vx0.rp_filter=0")
    return node, pod


def test_vxlan_tunnel_carries_identity(pin_root: Path, netns: Callable[[str], str], sh: Run) -> None:
    (n1, p1), (n2, _) = _node(sh, netns, 1), _node(sh, netns, 2)
    sh("ip", "-n", n1, "link", "add", "u0", "type", "veth", "peer", "name", "u0", "netns", n2)
    for ns, ip in ((n1, "192.168.77.1/24"), (n2, "192.168.77.2/24")):
        sh("ip", "-n", ns, "addr", "add", ip, "dev", "u0")
        sh("ip", "-n", ns, "link", "set", "u0", "up")

    cfg1 = DatapathConfig(netns=n1, tunnel_device="vx0")
    cfg2 = DatapathConfig(netns=n2, tunnel_device="vx0")
    with Datapath.load("n1", pin_root, cfg1) as d1, Datapath.load("n2", pin_root, cfg2) as d2:
        for dp, ep, ident, peer_ip, peer_id, peer_node in (
            (d1, 11, 5001, "10.2.1.10/32", 5002, "192.168.77.2"),
            (d2, 22, 5002, "10.1.1.10/32", 5001, "192.168.77.1"),
        ):
            assert dp.tunnel_ifindex > 0
            dp.attach_tunnel()
            dp.attach_pod("lxc0", endpoint_id=ep, identity=ident)
            dp.maps.ipcache.update(ipcache_key(peer_ip), ipcache_value(peer_id, peer_node, remote_cluster=True))
        assert "to_tunnel" in _filters(sh, n1, "vx0", "egress")
        assert "from_tunnel" in _filters(sh, n1, "vx0", "ingress")

        assert _ping(sh, p1, "10.2.1.10")
        c1, c2 = d1.maps.counters(), d2.maps.counters()
        assert c1[(Reason.TO_TUNNEL, Direction.EGRESS)][0] >= 1
        assert c2[(Reason.FROM_TUNNEL, Direction.INGRESS)][0] >= 1

        # Pod 2 admits only identity 5001 (pod 1): the identity must have crossed in the VNI.
        _set_policy(d2.maps, 22, 5001, Direction.INGRESS, Verdict.ALLOW)
        assert _ping(sh, p1, "10.2.1.10")
        _set_policy(d2.maps, 22, 5001, Direction.INGRESS, Verdict.DENY)
        assert not _ping(sh, p1, "10.2.1.10")
        assert d2.maps.counters()[(Reason.POLICY_DENIED, Direction.INGRESS)][0] >= 1

        # No tunnel endpoint for a destination: dropped at the tunnel and counted.
        d1.maps.ipcache.update(ipcache_key("10.2.1.10/32"), ipcache_value(5002))
        sh("ip", "-n", n1, "route", "add", "10.2.0.0/16", "dev", "vx0")
        sh("ip", "-n", n1, "neigh", "add", "10.2.1.10", "lladdr", "02:00:00:00:00:01", "dev", "vx0")
        assert not _ping(sh, p1, "10.2.1.10")
        assert d1.maps.counters()[(Reason.NO_TUNNEL_ENDPOINT, Direction.EGRESS)][0] >= 1


def test_reload_replaces_programs_and_keeps_maps(pin_root: Path, netns: Callable[[str], str], sh: Run) -> None:
    """An agent restart: a second load reuses the pinned maps and replaces, not stacks, filters."""
    node = netns("node")
    sh("ip", "-n", node, "link", "add", "h0", "type", "veth", "peer", "name", "p0")
    sh("ip", "-n", node, "link", "add", "vx0", "type", "vxlan", "external", "dstport", "8472")
    for dev in ("h0", "p0", "vx0"):
        sh("ip", "-n", node, "link", "set", dev, "up")
    cfg = DatapathConfig(netns=node, tunnel_device="vx0")
    for _ in range(2):
        with Datapath.load("n1", pin_root, cfg) as dp:
            dp.attach_pod("h0", endpoint_id=3, identity=1003)
            dp.attach_tunnel()
            dp.maps.ipcache.update(ipcache_key("10.5.0.0/16"), ipcache_value(77, "192.168.5.5"))
    for dev, where, prog in (("h0", "ingress", "from_pod"), ("h0", "egress", "to_pod"), ("vx0", "egress", "to_tunnel")):
        shown = _filters(sh, node, dev, where)
        assert shown.count(f"name {prog} ") == 1, shown
    maps = NodeMaps("n1", pin_root)
    assert len(maps.ipcache) == 1 and len(maps.endpoints) == 1
    maps.close()
