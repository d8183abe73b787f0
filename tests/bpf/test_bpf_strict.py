"""Egress strict mode (Cilium's ``encryption-strict-mode-cidr``) in ``from_pod``, for real.

Topologies (every device inside namespaces made by the test):
- tunnel: node 1 with pods p1 (10.1.1.10) and p3 (10.1.2.10), node 2 with pod p2 (10.2.1.10 and
  172.16.2.10), an underlay veth (192.168.77.0/24) and a VXLAN ``external`` device per node;
- native: node 1 with p1, node 2 with p2, pod CIDRs routed over the underlay (no VXLAN, no
  programs on node 2).
The strict CIDR is 10.0.0.0/8. Only node 1's programs change between the checks; encryption itself
is not set up: an ``encrypt_key`` of 0xFF only proves the BPF decision (the packet then leaves as
before).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from agent.datapath.targets import ipcache_desired
from agent.desired import IPCacheEntry
from bpf.layouts import (
    IPCACHE_F_REMOTE_NODE_EP,
    STATIC_ENCRYPT_KEY,
    Direction,
    IPCacheValue,
    Reason,
    ipcache_key,
    ipcache_value,
    pack_ipcache_key,
)
from bpf.loader import Datapath, DatapathConfig, strict_mode_defines
from bpf.maps import NodeMaps
from meshcore.errors import ConfigError

Run = Callable[..., subprocess.CompletedProcess[str]]
STRICT = "10.0.0.0/8"
ID_REMOTE_NODE = 6


def _ping(sh: Run, ns: str, dst: str) -> bool:
    """One bounded ping (1 s)."""
    return sh("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", "-q", dst, check=False).returncode == 0


def _unencrypted(maps: NodeMaps) -> int:
    return maps.counters().get((Reason.UNENCRYPTED, Direction.EGRESS), (0, 0))[0]


def _pod(sh: Run, netns: Callable[[str], str], node: str, name: str, veth: str, subnet: str) -> str:
    """A pod namespace ``<subnet>.10/24`` behind ``veth`` (``<subnet>.1/24``) of ``node``."""
    pod = netns(name)
    sh("ip", "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", veth, "netns", node)
    sh("ip", "-n", pod, "addr", "add", f"{subnet}.10/24", "dev", "eth0")
    sh("ip", "-n", pod, "link", "set", "eth0", "up")
    sh("ip", "-n", pod, "route", "add", "default", "via", f"{subnet}.1")
    sh("ip", "-n", node, "addr", "add", f"{subnet}.1/24", "dev", veth)
    sh("ip", "-n", node, "link", "set", veth, "up")
    return pod


def _nodes(sh: Run, netns: Callable[[str], str], vxlan: bool) -> tuple[str, str]:
    """Two node namespaces joined by an underlay veth ``u0``, each with a VXLAN device if asked."""
    nodes = netns("node1"), netns("node2")
    sh("ip", "-n", nodes[0], "link", "add", "u0", "type", "veth", "peer", "name", "u0", "netns", nodes[1])
    for idx, ns in enumerate(nodes, 1):
        sh("ip", "-n", ns, "addr", "add", f"192.168.77.{idx}/24", "dev", "u0")
        sh("ip", "-n", ns, "link", "set", "u0", "up")
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", key)
        if vxlan:
            sh("ip", "-n", ns, "link", "add", "vx0", "type", "vxlan", "external", "dstport", "8472")
            sh("ip", "-n", ns, "link", "set", "vx0", "up")
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.vx0.rp_filter=0")
    return nodes


# ---- argument validation (no kernel involved) ----


def test_strict_defines_host_order() -> None:
    assert strict_mode_defines(None) == {}
    assert strict_mode_defines("10.0.0.0/8") == {
        "STRICT_CIDR4_NET": "0x0a000000",
        "STRICT_CIDR4_MASK": "0xff000000",
        "STRICT_ALLOW_REMOTE_NODE": "0",
    }
    assert strict_mode_defines("192.168.1.0/24", True)["STRICT_ALLOW_REMOTE_NODE"] == "1"
    assert strict_mode_defines("10.1.2.3/32")["STRICT_CIDR4_MASK"] == "0xffffffff"


@pytest.mark.parametrize(
    ("cidr", "message"),
    [
        ("fd00::/64", "IPv4 only"),
        ("::/0", "IPv4 only"),
        ("10.1.2.3/8", "host bits set"),
        ("0.0.0.0/0", "prefix length 0"),
        ("not-a-cidr", "not a network address"),
    ],
)
def test_strict_cidr_refused(cidr: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DatapathConfig(strict_cidr=cidr)
    with pytest.raises(ConfigError, match=message):
        strict_mode_defines(cidr, True)


def test_ipcache_desired_flags_other_nodes() -> None:
    """Entries with a HostIP (other nodes) carry IPCACHE_F_REMOTE_NODE_EP in both routing modes."""
    remote = IPCacheEntry("10.2.1.10/32", 5002, "192.168.77.2", 0, 1, "c1", "endpoint", remote_cluster=False)
    local = IPCacheEntry("10.1.1.10/32", 5001, "", 0, 1, "c1", "endpoint", remote_cluster=False)
    for native in (False, True):
        packed = ipcache_desired([remote, local], native=native)
        flags = {k: IPCacheValue.from_buffer_copy(v).flags for k, v in packed.items()}
        assert flags[pack_ipcache_key(remote.prefix)] & IPCACHE_F_REMOTE_NODE_EP
        assert not flags[pack_ipcache_key(local.prefix)] & IPCACHE_F_REMOTE_NODE_EP


# ---- real datapath ----


def test_strict_mode_tunnel(pin_root: Path, netns: Callable[[str], str], sh: Run) -> None:
    n1, n2 = _nodes(sh, netns, vxlan=True)
    p1 = _pod(sh, netns, n1, "p1", "lxc0", "10.1.1")
    _pod(sh, netns, n1, "p3", "lxc1", "10.1.2")
    p2 = _pod(sh, netns, n2, "p2", "lxc0", "10.2.1")
    sh("ip", "-n", p2, "addr", "add", "172.16.2.10/32", "dev", "eth0")  # outside the strict CIDR
    sh("ip", "-n", n2, "route", "add", "172.16.2.10/32", "dev", "lxc0")
    # Node 2's own replies (from 10.2.1.1, the remote-node destination) are kernel-routed to vx0.
    sh("ip", "-n", n2, "route", "add", "10.1.0.0/16", "dev", "vx0")
    sh("ip", "-n", n2, "neigh", "add", "10.1.1.10", "lladdr", "02:00:00:00:00:01", "dev", "vx0")

    @contextmanager
    def node1(cidr: str | None = None, allow_remote_node: bool = False) -> Iterator[Datapath]:
        """Node 1's programs in that strict mode (an agent restart: filters replaced, maps kept)."""
        cfg = DatapathConfig(
            netns=n1, tunnel_device="vx0", strict_cidr=cidr, strict_allow_remote_node=allow_remote_node
        )
        with Datapath.load("n1", pin_root, cfg) as dp:
            dp.attach_tunnel()
            dp.attach_pod("lxc0", endpoint_id=11, identity=5001)
            dp.attach_pod("lxc1", endpoint_id=13, identity=5003)
            yield dp

    with ExitStack() as stack:
        d2 = stack.enter_context(Datapath.load("n2", pin_root, DatapathConfig(netns=n2, tunnel_device="vx0")))
        d2.attach_tunnel()
        d2.attach_pod("lxc0", endpoint_id=22, identity=5002)
        d2.maps.ipcache.update(ipcache_key("10.1.1.10/32"), ipcache_value(5001, "192.168.77.1"))

        with node1(STRICT) as d1:
            ipc = d1.maps.ipcache
            ipc.update(ipcache_key("10.1.1.10/32"), ipcache_value(5001))
            ipc.update(ipcache_key("10.1.2.10/32"), ipcache_value(5003))  # local pod: no tunnel endpoint
            ipc.update(ipcache_key("10.2.1.10/32"), ipcache_value(5002, "192.168.77.2"))
            ipc.update(ipcache_key("172.16.2.10/32"), ipcache_value(5002, "192.168.77.2"))
            ipc.update(ipcache_key("10.2.1.1/32"), ipcache_value(ID_REMOTE_NODE, "192.168.77.2"))

            assert not _ping(sh, p1, "10.2.1.10")  # remote pod, both in the CIDR, not encrypted
            dropped = _unencrypted(d1.maps)
            assert dropped >= 1
            ipc.update(ipcache_key("10.2.1.10/32"), ipcache_value(5002, "192.168.77.2", encrypt_key=STATIC_ENCRYPT_KEY))
            assert _ping(sh, p1, "10.2.1.10")
            assert _ping(sh, p1, "172.16.2.10")  # destination outside the CIDR
            assert _ping(sh, p1, "10.1.2.10")  # pod on this node
            assert not _ping(sh, p1, "10.2.1.1")  # remote-node identity, not allowed
            assert _unencrypted(d1.maps) > dropped
            assert d1.maps.counters()[(Reason.TO_TUNNEL, Direction.EGRESS)][0] >= 2

        with node1(STRICT, allow_remote_node=True) as d1:
            d1.maps.ipcache.update(ipcache_key("10.2.1.10/32"), ipcache_value(5002, "192.168.77.2"))  # key 0 again
            assert _ping(sh, p1, "10.2.1.1")
            dropped = _unencrypted(d1.maps)
            assert not _ping(sh, p1, "10.2.1.10")  # pods are still refused
            assert _unencrypted(d1.maps) > dropped

        with node1() as d1:  # strict mode off: nothing changes
            dropped = _unencrypted(d1.maps)
            assert _ping(sh, p1, "10.2.1.10")
            assert _ping(sh, p1, "10.2.1.1")
            assert _ping(sh, p1, "10.1.2.10")
            assert _unencrypted(d1.maps) == dropped


def test_strict_mode_native(pin_root: Path, netns: Callable[[str], str], sh: Run) -> None:
    """Native routing: no tunnel endpoint in any entry; IPCACHE_F_REMOTE_NODE_EP (set by the agent's
    ipcache_desired) is what tells the remote pod apart."""
    n1, n2 = _nodes(sh, netns, vxlan=False)
    p1 = _pod(sh, netns, n1, "p1", "lxc0", "10.1.1")
    _pod(sh, netns, n2, "p2", "lxc0", "10.2.1")
    sh("ip", "-n", n1, "route", "add", "10.2.0.0/16", "via", "192.168.77.2")
    sh("ip", "-n", n2, "route", "add", "10.1.0.0/16", "via", "192.168.77.1")

    def entry(encrypt_key: int) -> list[tuple[bytes, bytes]]:
        e = IPCacheEntry("10.2.1.10/32", 5002, "192.168.77.2", encrypt_key, 1, "c1", "endpoint", remote_cluster=False)
        return list(ipcache_desired([e], native=True).items())

    with Datapath.load("n1", pin_root, DatapathConfig(netns=n1, strict_cidr=STRICT)) as d1:
        d1.attach_pod("lxc0", endpoint_id=11, identity=5001)
        d1.maps.ipcache.update_packed(entry(0))
        assert not _ping(sh, p1, "10.2.1.10")
        assert _unencrypted(d1.maps) >= 1
        d1.maps.ipcache.update_packed(entry(STATIC_ENCRYPT_KEY))
        assert _ping(sh, p1, "10.2.1.10")
