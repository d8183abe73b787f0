"""Routes between the nodes of one cluster (the kindnet part that is not per pod).

Each node routes the other nodes' podCIDRs **of its own cluster** via their InternalIP (all nodes
share one L2 underlay, so the next hop is on-link), tagged with routing protocol 148 so that only
these routes are ever changed or removed. Nothing routes between clusters: that is the mesh's job.
:func:`desired_routes` computes the routes from Node objects; :class:`NodeRoutes` makes the node
namespace's main table match them. :func:`ensure_service_address` puts the cluster's ``kubernetes``
Service IP on the node's ``lo`` (the kernel here has no ``dummy`` device).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from typing import Any

from pyroute2 import IPRoute

from meshcore.log import get_logger

ROUTE_PROTO = 148
MAIN_TABLE = 254

_log = get_logger(__name__)


class RoutesError(RuntimeError):
    """Some routes could not be applied; the message lists which and why."""


def node_name(node: Mapping[str, Any]) -> str:
    """``metadata.name`` of a Node object ('' if missing)."""
    return str((node.get("metadata") or {}).get("name") or "")


def node_pod_cidr(node: Mapping[str, Any]) -> ipaddress.IPv4Network | None:
    """The first IPv4 podCIDR of a Node object (``spec.podCIDRs``, else ``spec.podCIDR``), if any."""
    spec = node.get("spec") or {}
    for raw in [*(spec.get("podCIDRs") or []), spec.get("podCIDR")]:
        if not raw:
            continue
        try:
            return ipaddress.IPv4Network(raw)
        except ValueError:
            continue  # IPv6 or malformed
    return None


def node_internal_ip(node: Mapping[str, Any]) -> ipaddress.IPv4Address | None:
    """The first IPv4 ``InternalIP`` in ``status.addresses`` of a Node object, if any."""
    for entry in (node.get("status") or {}).get("addresses") or []:
        if entry.get("type") == "InternalIP":
            try:
                return ipaddress.IPv4Address(entry.get("address"))
            except ValueError:
                continue
    return None


def desired_routes(own: str, nodes: Iterable[Mapping[str, Any]]) -> dict[ipaddress.IPv4Network, ipaddress.IPv4Address]:
    """podCIDR -> InternalIP of every node but ``own`` that has both (pure).

    Nodes are taken in name order and a podCIDR already claimed is skipped, as is one overlapping the
    own node's podCIDR (its pods are routed locally) and one whose InternalIP is the own node's.
    """
    by_name = sorted(nodes, key=node_name)
    own_nodes = [n for n in by_name if node_name(n) == own]
    own_cidr = node_pod_cidr(own_nodes[0]) if own_nodes else None
    own_ip = node_internal_ip(own_nodes[0]) if own_nodes else None
    routes: dict[ipaddress.IPv4Network, ipaddress.IPv4Address] = {}
    for node in by_name:
        if node_name(node) == own:
            continue
        cidr, ip = node_pod_cidr(node), node_internal_ip(node)
        if cidr is None or ip is None or cidr in routes or ip == own_ip:
            continue
        if own_cidr is not None and cidr.overlaps(own_cidr):
            continue
        routes[cidr] = ip
    return routes


def ensure_service_address(ipr: Any, ip: ipaddress.IPv4Address | str) -> bool:
    """Put ``ip``/32 on ``lo`` of the namespace ``ipr`` is bound to unless it is there; returns
    whether it was added. Where the node namespace's ``kubernetes`` Service IP (``172.16.<c>.1``)
    lives, so that the node and its pods reach the forwarded API there."""
    address = str(ipaddress.IPv4Address(ip))
    lo = ipr.link_lookup(ifname="lo")[0]
    if any(a.get("address") == address for a in ipr.get_addr(family=socket.AF_INET, index=lo)):
        return False
    ipr.link("set", index=lo, state="up")
    ipr.addr("add", index=lo, address=address, prefixlen=32)
    return True


def _dst(route: Any) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"{route.get('dst') or '0.0.0.0'}/{route['dst_len']}")


class NodeRoutes:
    """Routes in the node namespace to the other nodes' podCIDRs of this cluster via their InternalIP
    (routing protocol 148, so only ours are touched); also ensures this node's service address (the
    `kubernetes` Service IP, given) on lo.

    Runs in the node's network namespace (``IPRoute()`` is bound to it), like :class:`PodNetwork`.
    """

    def __init__(
        self,
        own_node: str,
        *,
        proto: int = ROUTE_PROTO,
        service_ip: ipaddress.IPv4Address | str | None = None,
        table: int = MAIN_TABLE,
    ) -> None:
        self.own_node = own_node
        self.proto = proto
        self.service_ip = None if service_ip is None else ipaddress.IPv4Address(service_ip)
        self.table = table

    def sync(self, nodes: list[dict[str, Any]]) -> None:
        """Node objects (dicts as the API returns them) of this cluster: add/replace/remove our routes
        so they equal the desired set (pure `desired_routes(own, nodes)` computes it); idempotent;
        never touches routes of other protocols.

        A desired route whose destination another protocol's route holds already is left out (and
        logged). Every other route is tried; :class:`RoutesError` then lists those that failed.
        """
        desired = desired_routes(self.own_node, nodes)
        with IPRoute() as ipr:
            if self.service_ip is not None:
                ensure_service_address(ipr, self.service_ip)
            self.apply(ipr, desired)

    def current(self, ipr: Any) -> dict[ipaddress.IPv4Network, ipaddress.IPv4Address | None]:
        """Our routes now in the namespace of ``ipr``: destination -> gateway."""
        out: dict[ipaddress.IPv4Network, ipaddress.IPv4Address | None] = {}
        for route in ipr.get_routes(family=socket.AF_INET, table=self.table, proto=self.proto):
            gw = route.get("gateway")
            out[_dst(route)] = None if gw is None else ipaddress.IPv4Address(gw)
        return out

    def apply(self, ipr: Any, desired: Mapping[ipaddress.IPv4Network, ipaddress.IPv4Address]) -> None:
        """Make our routes in the namespace of ``ipr`` equal ``desired`` (see :meth:`sync`)."""
        ours = self.current(ipr)
        foreign = {
            _dst(r)
            for r in ipr.get_routes(family=socket.AF_INET, table=self.table)
            if r["proto"] != self.proto and not r.get("priority")
        }
        failures: list[str] = []
        for dst, gateway in sorted(desired.items()):
            if ours.get(dst) == gateway:
                continue
            if dst in foreign:
                _log.warning("route_conflict", dst=str(dst), gateway=str(gateway), reason="another protocol's route")
                continue
            try:
                ipr.route("replace", dst=str(dst), gateway=str(gateway), proto=self.proto, table=self.table)
            except Exception as err:  # pyroute2's NetlinkError and OSError alike
                failures.append(f"{dst} via {gateway}: {err}")
        for dst in sorted(set(ours) - set(desired)):
            try:
                ipr.route("del", dst=str(dst), proto=self.proto, table=self.table)
            except Exception as err:
                failures.append(f"removing {dst}: {err}")
        if failures:
            raise RoutesError(f"node {self.own_node}: {len(failures)} route(s) failed: " + "; ".join(failures))
