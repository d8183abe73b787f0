"""Hand-built meshes between node namespaces, with plain kernel routing: the baselines a datapath is
measured against (the same path without any agent).

They work on any nodes that describe themselves (:class:`MeshNode`): the nodes of a
:class:`~lab.net.topology.Topology`, or the node namespaces of a running lab. ``routed(a, b)``
says whether node ``a`` gets a route to node ``b``'s pods (all pairs by default; a lab, whose
nodes already route within their cluster, asks for the cross-cluster pairs only). Every route
added is tagged with :data:`HAND_BUILT_PROTO`, so :func:`remove` finds them all and touches
nothing else.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from lab.net import names, nsutil

#: Routing protocol number tagging the routes the hand-built modes add (so removal finds them all).
HAND_BUILT_PROTO = 147
_NUD_PERMANENT = 0x80
_NUD_NOARP = 0x40
_NTF_SELF = 0x02
_RTNH_F_ONLINK = 4


class MeshNode(Protocol):
    """A node namespace as the hand-built meshes need it."""

    @property
    def ns(self) -> str: ...

    @property
    def cluster(self) -> str: ...

    @property
    def underlay_ifname(self) -> str: ...

    @property
    def underlay_ip(self) -> ipaddress.IPv4Address: ...

    @property
    def pod_cidr(self) -> ipaddress.IPv4Network: ...


Routed = Callable[[MeshNode, MeshNode], bool]


def every_pair(node: MeshNode, remote: MeshNode) -> bool:
    """Route between every two nodes."""
    return True


def across_clusters(node: MeshNode, remote: MeshNode) -> bool:
    """Route only between nodes of different clusters."""
    return node.cluster != remote.cluster


def _remotes(nodes: Sequence[MeshNode], node: MeshNode, routed: Routed) -> list[MeshNode]:
    return [r for r in nodes if r.ns != node.ns and routed(node, r)]


def build_tunnel(nodes: Sequence[MeshNode], vx_name: str, *, routed: Routed = every_pair) -> None:
    """Mesh the nodes' pods over VXLAN (VNI 42, port 8472), like flannel: per node a ``vxlan``
    device ``vx_name`` on the underlay device with static FDB entries, and per routed remote node
    ``<its pod /24> via <its /24 network address> dev <vx_name> onlink`` with a permanent neighbour
    entry for that next hop carrying the remote VXLAN device's MAC (a decapsulated frame is
    dropped unless it is addressed to the receiving device's own MAC). Idempotent."""
    for node in nodes:
        with nsutil.iproute(node.ns) as ipr:
            vx = _existing(ipr, vx_name)
            if vx is None:
                ipr.link(
                    "add",
                    ifname=vx_name,
                    kind="vxlan",
                    vxlan_id=names.VXLAN_VNI,
                    vxlan_port=names.VXLAN_PORT,
                    vxlan_local=str(node.underlay_ip),
                    vxlan_link=nsutil.ifindex(ipr, node.underlay_ifname),
                    vxlan_learning=0,
                )
                vx = nsutil.ifindex(ipr, vx_name)
                ipr.link("set", index=vx, address=names.vtep_mac(node.underlay_ip), state="up")
            for remote in _remotes(nodes, node, routed):
                hop = str(remote.pod_cidr.network_address)
                mac = names.vtep_mac(remote.underlay_ip)
                ipr.fdb(
                    "replace",
                    ifindex=vx,
                    lladdr=mac,
                    dst=str(remote.underlay_ip),
                    state=_NUD_PERMANENT | _NUD_NOARP,
                    flags=_NTF_SELF,
                )
                ipr.neigh("replace", dst=hop, lladdr=mac, ifindex=vx, state=_NUD_PERMANENT)
                ipr.route(
                    "replace",
                    dst=str(remote.pod_cidr),
                    gateway=hop,
                    oif=vx,
                    flags=_RTNH_F_ONLINK,
                    proto=HAND_BUILT_PROTO,
                )


def build_native(nodes: Sequence[MeshNode], *, routed: Routed = every_pair) -> None:
    """Mesh the nodes' pods with plain routes: per routed remote node ``<its pod /24> via <its
    underlay IP>`` (all nodes share one L2 underlay). Idempotent."""
    for node in nodes:
        with nsutil.iproute(node.ns) as ipr:
            ul = nsutil.ifindex(ipr, node.underlay_ifname)
            for remote in _remotes(nodes, node, routed):
                ipr.route(
                    "replace", dst=str(remote.pod_cidr), gateway=str(remote.underlay_ip), oif=ul,
                    proto=HAND_BUILT_PROTO,
                )  # fmt: skip


def remove(nodes: Sequence[MeshNode], vx_name: str) -> None:
    """Take away whichever hand-built mesh is in place: the VXLAN devices ``vx_name`` and every
    route tagged with :data:`HAND_BUILT_PROTO`. Idempotent."""
    for node in nodes:
        with nsutil.iproute(node.ns) as ipr:
            vx = _existing(ipr, vx_name)
            if vx is not None:
                ipr.link("del", index=vx)
            for route in ipr.get_routes(family=2, proto=HAND_BUILT_PROTO):
                with contextlib.suppress(Exception):  # gone with the VXLAN device meanwhile
                    ipr.route("del", **_route_key(route))


def _existing(ipr: Any, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def _route_key(route: Any) -> dict[str, Any]:
    key: dict[str, Any] = {
        "dst": f"{route.get('dst') or '0.0.0.0'}/{route['dst_len']}",
        "table": route.get("table"),
        "proto": route["proto"],
    }
    if route.get("oif") is not None:
        key["oif"] = route.get("oif")
    return key
