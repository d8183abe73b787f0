"""``--routing-mode native``, on a lab: ``clustermesh lab up --routing-mode native`` reaches every
agent through the install options (no VXLAN device anywhere; the kernel routes the other
cluster's pod CIDRs via the owning nodes' underlay IPs, routes the agents keep tagged with
:data:`ROUTE_PROTO`, while the lab's own routes within a cluster stay the lab's), the pods and the
policy from ``kubectl apply`` (:func:`lab.meshtest.meshed_lab`); plus the routes target alone in
one namespace (mark and sweep of its own routes, never touching others)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agent.datapath.targets import ROUTE_PROTO, RoutesTarget, routes_desired
from agent.desired import NodeRoute
from bpf.layouts import IPCACHE_F_HAS_TUNNEL_EP, IPCACHE_F_SKIP_TUNNEL, Direction, Reason
from lab.driver import LabCommandError
from lab.meshtest import (
    AGENT_NAMESPACE,
    PODS,
    MeshLab,
    meshed_lab,
    node_links,
    node_routes,
    poll_until,
    web_from_c2_frontend_policy,
)
from lab.net import HAND_BUILT_PROTO, Topology, ping, tcp_stream, unique_prefix
from lab.net.topology import Node
from lab.node.routes import ROUTE_PROTO as LAB_ROUTE_PROTO
from lab.supervisor.spec import NodeSpec
from meshcore.reconcile import Reconciler

pytestmark = pytest.mark.timeout(900)


def _peers(mesh: MeshLab, node: NodeSpec, *, same_cluster: bool) -> list[NodeSpec]:
    return [o for o in mesh.spec.nodes if o != node and (o.cluster == node.cluster) == same_cluster]


def _expected_routes(mesh: MeshLab, node: NodeSpec, *, same_cluster: bool, proto: int) -> set[tuple[str, int, str]]:
    return {(o.pod_cidr, proto, o.internal_ip) for o in _peers(mesh, node, same_cluster=same_cluster)}


def _agent_uid(mesh: MeshLab, node: NodeSpec) -> str | None:
    """The UID of the one live agent pod of ``node`` (None while there is not exactly one)."""
    with contextlib.suppress(LabCommandError):
        return str(mesh.agent_pod(node.name)["metadata"]["uid"])
    return None


@pytest.fixture(scope="module")
def mesh() -> Iterator[MeshLab]:
    with meshed_lab(pods=PODS, routing_mode="native", name_prefix="dn") as lab:
        yield lab


def test_a_native_pod_to_pod_without_vxlan(mesh: MeshLab) -> None:
    for node in mesh.spec.nodes:
        links = node_links(node.netns)
        assert not [link for link in links if link[1] == "vxlan"], links
        # exactly the other cluster's nodes' pod CIDRs via their underlay IPs, tagged with the
        # agent's protocol; the pod CIDRs of this cluster's other nodes keep the lab's own routes
        # (kindnet-like, there first), which the agent leaves alone and reports as skipped
        assert node_routes(node.netns, ROUTE_PROTO) == _expected_routes(
            mesh, node, same_cluster=False, proto=ROUTE_PROTO)
        assert node_routes(node.netns, LAB_ROUTE_PROTO) == _expected_routes(
            mesh, node, same_cluster=True, proto=LAB_ROUTE_PROTO)
        dp = mesh.agent_status(node.name)["datapath"]
        assert dp["routing-mode"] == "native" and dp["tunnel-device"] is None
        assert dp["reconcilers"]["routes"]["synced"]
        assert set(dp["routes-skipped"]) == {o.pod_cidr for o in _peers(mesh, node, same_cluster=True)}
    # cross-cluster (c1/n1 -> c2/n1 and c2/n0 -> c1/n0) and intra-cluster cross-node
    for server, client, port in (("echo1", "echo2", 5601), ("client", "frontend", 5602), ("web", "echo1", 5603)):
        result = tcp_stream(mesh.pods[server], mesh.pods[client], port=port, seconds=1)
        assert result.ok, (server, client, result)
    with mesh.maps(mesh.node_of("echo1").name) as maps:
        counters = maps.counters()
        flags = {v.flags for _, v in maps.ipcache.items()}
    assert counters.get((Reason.FORWARDED, Direction.EGRESS), (0, 0))[0] > 0
    assert counters.get((Reason.TO_TUNNEL, Direction.EGRESS), (0, 0))[0] == 0
    assert flags and all(f & IPCACHE_F_SKIP_TUNNEL and not f & IPCACHE_F_HAS_TUNNEL_EP for f in flags), flags


def test_b_policy_from_ipcache_in_native_mode(mesh: MeshLab) -> None:
    web = mesh.pods["web"]
    assert ping(mesh.pods["backend"], web.ip, count=1, timeout=2)  # no policy yet
    web_node = mesh.apply_policy_and_wait(web_from_c2_frontend_policy(), "web")
    with mesh.maps(web_node.name) as maps:
        before = maps.counters().get((Reason.POLICY_DEFAULT_DENY, Direction.INGRESS), (0, 0))[0]
    result = tcp_stream(web, mesh.pods["frontend"], port=5611, seconds=1)
    assert result.ok, result
    assert not ping(mesh.pods["backend"], web.ip, count=2, timeout=1)
    blocked = tcp_stream(web, mesh.pods["backend"], port=5612, seconds=1, connect_timeout=2)
    assert not blocked.ok
    with mesh.maps(web_node.name) as maps:
        after = maps.counters().get((Reason.POLICY_DEFAULT_DENY, Direction.INGRESS), (0, 0))[0]
    assert after > before


def test_c_restart_keeps_routes_and_deletes_none(mesh: MeshLab) -> None:
    node = mesh.node_of("frontend")
    before = node_routes(node.netns)
    assert _expected_routes(mesh, node, same_cluster=False, proto=ROUTE_PROTO) <= before
    skipped = set(mesh.agent_status(node.name)["datapath"]["routes-skipped"])
    old = mesh.agent_pod(node.name)
    stopped_at = time.time()
    # graceful deletion: SIGTERM to the agent, the pod object gone once it has exited
    mesh.driver.kubectl(node.cluster, "delete", "pod", "-n", AGENT_NAMESPACE, old["metadata"]["name"], "--wait=true",
                        timeout=90)  # fmt: skip
    assert node_routes(node.netns) == before  # nothing torn down on exit
    # the DaemonSet puts a new agent pod on the node
    assert poll_until(lambda: _agent_uid(mesh, node) not in (None, old["metadata"]["uid"]), within=60)
    mesh.wait_agents([node.name], within=120, started_after=stopped_at)
    dp = mesh.agent_status(node.name)["datapath"]
    deletes = {name: r["deletes"] for name, r in dp["reconcilers"].items()}
    assert set(deletes.values()) == {0}, deletes
    # read back equal: nothing of its own rewritten; only the lab-held prefixes are tried (and skipped)
    assert set(dp["routes-skipped"]) == skipped
    assert dp["reconcilers"]["routes"]["updates"] == len(skipped)
    assert node_routes(node.netns) == before
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
    foreign = node_routes(node.ns) - node_routes(node.ns, ROUTE_PROTO)

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
    assert node_routes(node.ns, ROUTE_PROTO) == {("10.250.2.0/24", ROUTE_PROTO, gw)}
    assert foreign <= node_routes(node.ns)  # every other route untouched
    # a second reconciler (an agent restart) reads the same state back and changes nothing
    rec = asyncio.run(sync())
    assert (rec.updates, rec.deletes) == (1, 0)  # only the foreign-held prefix is retried (and skipped)
    assert node_routes(node.ns, ROUTE_PROTO) == {("10.250.2.0/24", ROUTE_PROTO, gw)}

