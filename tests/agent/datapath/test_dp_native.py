"""``--routing-mode native``, all real: the lab.dpmesh 2 x 2 mesh with every agent in native mode
(no VXLAN device anywhere; the kernel routes remote pod CIDRs via the owning node's underlay IP,
routes the agents keep tagged with :data:`ROUTE_PROTO`), plus the routes target alone in one
namespace (mark and sweep of its own routes, never touching others)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from agent.datapath.targets import ROUTE_PROTO, RoutesTarget, routes_desired
from agent.desired import NodeRoute
from bpf.layouts import IPCACHE_F_HAS_TUNNEL_EP, IPCACHE_F_SKIP_TUNNEL, Direction, Reason
from lab.dpmesh import (
    PODS,
    Mesh,
    apply_policy_and_wait,
    datapath_mesh,
    node_name,
    web_from_c2_frontend_policy,
)
from lab.net import HAND_BUILT_PROTO, Topology, ping, tcp_stream, unique_prefix
from lab.net.topology import Node
from meshcore.reconcile import Reconciler

NATIVE = ("--routing-mode", "native")


def _links(mesh: Mesh, node: Node) -> list[tuple[str, str]]:
    """(name, kind) of every device in the node's namespace."""
    out = []
    with mesh.topo.iproute(node.ns) as ipr:
        for link in ipr.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else ""
            out.append((str(link.get_attr("IFLA_IFNAME")), str(kind or "")))
    return out


def _routes(topo: Topology, ns: str, proto: int | None = None) -> set[tuple[str, int, str]]:
    """(prefix, protocol, gateway) of the IPv4 main-table routes in ``ns`` (of ``proto`` if given)."""
    out = set()
    with topo.iproute(ns) as ipr:
        for r in ipr.get_routes(family=2, table=254):
            if r.get_attr("RTA_TABLE") != 254 or (proto is not None and r["proto"] != proto):
                continue
            dst = r.get_attr("RTA_DST") or "0.0.0.0"
            out.add((f"{dst}/{r['dst_len']}", int(r["proto"]), str(r.get_attr("RTA_GATEWAY") or "")))
    return out


def _expected_routes(mesh: Mesh, node: Node) -> set[tuple[str, int, str]]:
    return {
        (str(other.pod_cidr), ROUTE_PROTO, str(other.underlay_ip)) for other in mesh.topo.nodes if other != node
    }


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with datapath_mesh(tmp_path_factory.mktemp("dpnative"), pods=PODS, cgroup_pod=None, agent_args=NATIVE) as m:
        yield m


def test_a_native_pod_to_pod_without_vxlan(mesh: Mesh) -> None:
    assert mesh.topo.hand_built is None
    for node in mesh.topo.nodes:
        assert not [link for link in _links(mesh, node) if link[1] == "vxlan"], _links(mesh, node)
        # exactly the other nodes' pod CIDRs via their underlay IPs, tagged with the agent's protocol
        assert _routes(mesh.topo, node.ns, ROUTE_PROTO) == _expected_routes(mesh, node)
        dp = mesh.agents[node_name(node)].status()["datapath"]
        assert dp["routing-mode"] == "native" and dp["tunnel-device"] is None
        assert dp["reconcilers"]["routes"]["synced"]
    # cross-cluster (c1/n1 -> c2/n1 and c2/n0 -> c1/n0) and intra-cluster cross-node
    for server, client, port in (("echo1", "echo2", 5601), ("client", "frontend", 5602), ("web", "echo1", 5603)):
        result = tcp_stream(mesh.pods[server], mesh.pods[client], port=port, seconds=1)
        assert result.ok, (server, client, result)
    echo1_node = mesh.topo.node_of(mesh.pods["echo1"])
    with mesh.maps(echo1_node) as maps:
        counters = maps.counters()
        flags = {v.flags for _, v in maps.ipcache.items()}
    assert counters.get((Reason.FORWARDED, Direction.EGRESS), (0, 0))[0] > 0
    assert counters.get((Reason.TO_TUNNEL, Direction.EGRESS), (0, 0))[0] == 0
    assert flags and all(f & IPCACHE_F_SKIP_TUNNEL and not f & IPCACHE_F_HAS_TUNNEL_EP for f in flags), flags


def test_b_policy_from_ipcache_in_native_mode(mesh: Mesh) -> None:
    web = mesh.pods["web"]
    assert ping(mesh.pods["backend"], web.ip, count=1, timeout=2)  # no policy yet
    web_node = apply_policy_and_wait(mesh, web_from_c2_frontend_policy(), "web")
    with mesh.maps(web_node) as maps:
        before = maps.counters().get((Reason.POLICY_DEFAULT_DENY, Direction.INGRESS), (0, 0))[0]
    result = tcp_stream(web, mesh.pods["frontend"], port=5611, seconds=1)
    assert result.ok, result
    assert not ping(mesh.pods["backend"], web.ip, count=2, timeout=1)
    blocked = tcp_stream(web, mesh.pods["backend"], port=5612, seconds=1, connect_timeout=2)
    assert not blocked.ok
    with mesh.maps(web_node) as maps:
        after = maps.counters().get((Reason.POLICY_DEFAULT_DENY, Direction.INGRESS), (0, 0))[0]
    assert after > before


def test_c_restart_keeps_routes_and_deletes_none(mesh: Mesh) -> None:
    agent = mesh.agent_of("frontend")
    node = agent.node
    before = _routes(mesh.topo, node.ns)
    assert _expected_routes(mesh, node) <= before
    agent.stop()
    assert _routes(mesh.topo, node.ns) == before  # nothing torn down on exit
    agent.start()
    mesh.wait_ready([agent], within=90)
    dp = agent.status()["datapath"]
    deletes = {name: r["deletes"] for name, r in dp["reconcilers"].items()}
    assert set(deletes.values()) == {0}, deletes
    assert dp["reconcilers"]["routes"]["updates"] == 0  # read back equal: nothing rewritten
    assert _routes(mesh.topo, node.ns) == before
    result = tcp_stream(mesh.pods["echo1"], mesh.pods["frontend"], port=5621, seconds=1)
    assert result.ok, result


# ---- the routes target alone ----


@pytest.fixture
def one_node() -> Iterator[tuple[Topology, Node]]:
    with Topology(unique_prefix("rt")) as topo:
        topo.add_cluster("c1", 1)
        yield topo, topo.add_node("c1", "n0")


def test_routes_target_mark_and_sweep_touches_only_its_own(one_node: tuple[Topology, Node]) -> None:
    topo, node = one_node
    gw = str(node.underlay_ip).rsplit(".", 1)[0] + ".250"  # on the underlay subnet
    with topo.iproute(node.ns) as ipr:
        ul = ipr.link_lookup(ifname=node.underlay_ifname)[0]
        # someone else's route on a prefix the agent also wants, and a stale one of the agent's
        ipr.route("add", dst="10.250.1.0/24", gateway=gw, oif=ul, proto=HAND_BUILT_PROTO)
        ipr.route("add", dst="10.250.9.0/24", gateway=gw, oif=ul, proto=ROUTE_PROTO)
    foreign = _routes(topo, node.ns) - _routes(topo, node.ns, ROUTE_PROTO)

    def factory() -> Any:
        return topo.iproute(node.ns)

    routes = [
        NodeRoute("10.250.1.0/24", gw, "c2", "a"),
        NodeRoute("10.250.2.0/24", gw, "c2", "b"),
        NodeRoute(str(node.pod_cidr), str(node.underlay_ip), "c1", "n0"),  # this node: skipped
        NodeRoute("fd00::/64", "fd00::1", "c2", "c"),  # not IPv4: skipped
    ]
    desired = routes_desired(routes, str(node.underlay_ip))
    assert desired == {"10.250.1.0/24": gw, "10.250.2.0/24": gw}
    target = RoutesTarget(ul, ipr_factory=factory)

    async def sync() -> Reconciler[str, str]:
        rec: Reconciler[str, str] = Reconciler("routes", target)
        task = asyncio.create_task(rec.run())
        rec.set_desired(desired)
        await asyncio.wait_for(rec.wait_synced(), 10)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return rec

    rec = asyncio.run(sync())
    assert rec.deletes == 1  # the stale 10.250.9.0/24, read back at start
    assert target.skipped == {"10.250.1.0/24"}  # someone else's: left alone
    assert _routes(topo, node.ns, ROUTE_PROTO) == {("10.250.2.0/24", ROUTE_PROTO, gw)}
    assert foreign <= _routes(topo, node.ns)  # every other route untouched
    # a second reconciler (an agent restart) reads the same state back and changes nothing
    rec = asyncio.run(sync())
    assert (rec.updates, rec.deletes) == (1, 0)  # only the foreign-held prefix is retried (and skipped)
    assert _routes(topo, node.ns, ROUTE_PROTO) == {("10.250.2.0/24", ROUTE_PROTO, gw)}

