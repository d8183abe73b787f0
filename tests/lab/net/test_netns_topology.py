"""A real 2 clusters x 2 nodes x 2 pods topology: isolation, hand-built tunnel and native meshes,
traffic helpers, and a root namespace left exactly as it was."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import threading
from collections.abc import Iterator

import pytest

from lab.net import (
    HAND_BUILT_PROTO,
    Pod,
    Topology,
    names,
    ping,
    ping_matrix,
    run_in,
    start_tcp_stream,
    tcp_stream,
    tcp_throughput,
    unique_prefix,
)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2 for network namespaces"
)


def build(topo: Topology, clusters: int = 2, nodes: int = 2, pods: int = 2) -> None:
    for cid in range(1, clusters + 1):
        cluster = topo.add_cluster(f"c{cid}", cid)
        for n in range(nodes):
            node = topo.add_node(cluster, f"n{n}")
            for p in range(pods):
                topo.add_pod(node, f"pod{n}{p}")


@pytest.fixture(scope="module")
def mesh() -> Iterator[Topology]:
    with Topology(unique_prefix("t")) as topo:
        build(topo)
        yield topo


def cross_node_pairs(pods: list[Pod]) -> list[tuple[Pod, Pod]]:
    return [(a, b) for a in pods for b in pods if (a.cluster, a.node) != (b.cluster, b.node)]


def test_layout_names_and_addresses(mesh: Topology) -> None:
    assert len(mesh.nodes) == 4 and len(mesh.pods) == 8
    assert sorted(mesh.namespaces()) == sorted(n for n in os.listdir("/run/netns") if n.startswith(f"{mesh.prefix}-"))
    node = mesh.node("c2", "n1")
    assert str(node.underlay_ip) == "192.168.2.2" and str(node.pod_cidr) == "10.2.1.0/24"
    assert [str(p.ip) for p in mesh.pods_of(node)] == ["10.2.1.2", "10.2.1.3"]
    for ns in mesh.namespaces():
        links = json.loads(run_in(ns, "ip", "-j", "link", "show").stdout)
        for link in links:
            name = link["ifname"]
            assert len(name) <= names.IFNAMSIZ
            assert name in ("lo", "eth0") or names.is_topology_ifname(mesh.prefix, name), name
    node_routes = run_in(mesh.nodes[0], "ip", "-j", "route", "show").stdout
    assert all(r["dst"] != "default" for r in json.loads(node_routes)), "a node must have no default route"
    pod = mesh.pods[0]
    assert run_in(pod, "ip", "route", "show", "default").stdout.split()[:3] == ["default", "via", "169.254.1.1"]
    with mesh.iproute(pod.node_ns) as ipr:
        assert [link.get("address") for link in ipr.get_links(ifname=pod.host_ifname)] == [pod.host_mac]


def test_pods_reach_their_own_node_and_node_mates(mesh: Topology) -> None:
    mesh.remove_hand_built()
    for pod in mesh.pods:
        assert ping(pod, mesh.node_of(pod).underlay_ip), pod
    a, b = mesh.pods_of(mesh.nodes[0])
    assert ping(a, b.ip) and ping(b, a.ip)


def test_pods_on_different_nodes_are_isolated_until_a_mesh_is_built(mesh: Topology) -> None:
    mesh.remove_hand_built()
    pods = mesh.pods
    result = ping_matrix(pods, timeout=0.5)
    assert not any(result[pair] for pair in cross_node_pairs(pods))
    # Nor does a pod get answers from another node: that node has no route back to the pod.
    pod = pods[0]
    assert not ping(pod, mesh.node("c2", "n1").underlay_ip, timeout=0.5)
    assert not ping(pod, mesh.node("c1", "n1").underlay_ip, timeout=0.5)


def test_hand_built_tunnel_meshes_every_pod(mesh: Topology) -> None:
    mesh.hand_built_tunnel()
    mesh.hand_built_tunnel()  # idempotent
    assert mesh.hand_built == "tunnel"
    result = ping_matrix(mesh.pods)
    assert all(result.values()), [f"{a.ns}->{b.ns}" for (a, b), ok in result.items() if not ok]
    node = mesh.nodes[0]
    routes = json.loads(run_in(node.ns, "ip", "-j", "route", "show", "proto", str(HAND_BUILT_PROTO)).stdout)
    assert {r["dev"] for r in routes} == {names.vxlan_ifname(mesh.prefix)} and len(routes) == 3
    vx = json.loads(run_in(node.ns, "ip", "-j", "-d", "link", "show", names.vxlan_ifname(mesh.prefix)).stdout)[0]
    assert vx["linkinfo"]["info_data"]["id"] == names.VXLAN_VNI and vx["mtu"] == names.POD_MTU

    src = mesh.pods_of(mesh.node("c1", "n0"))[0]
    dst = mesh.pods_of(mesh.node("c2", "n1"))[1]
    stream = tcp_stream(dst, src, seconds=3.0)
    assert stream.ok, stream
    assert stream.chunks_received == stream.chunks_sent >= 250


def test_tunnel_carries_vni_42_on_the_underlay(mesh: Topology) -> None:
    mesh.hand_built_tunnel()
    src = mesh.pods_of(mesh.node("c1", "n0"))[0]
    dst = mesh.pods_of(mesh.node("c2", "n0"))[0]
    dump = subprocess.Popen(
        ["ip", "netns", "exec", mesh.node("c2", "n0").ns, "tcpdump", "-l", "-n", "-T", "vxlan", "-c", "1", "-i",
         mesh.node("c2", "n0").underlay_ifname, f"udp dst port {names.VXLAN_PORT}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert dump.stderr is not None
        with selectors.DefaultSelector() as sel:  # tcpdump says "listening on ..." once attached
            sel.register(dump.stderr, selectors.EVENT_READ)
            assert sel.select(timeout=5), "tcpdump did not start"
        lines = [dump.stderr.readline() for _ in range(2)]  # a "verbose output suppressed" line first
        assert any("listening" in line for line in lines), lines
        assert ping(src, dst.ip)
        out, _ = dump.communicate(timeout=5)
    finally:
        if dump.poll() is None:
            dump.kill()
            dump.communicate(timeout=5)
    assert f"{mesh.node('c1', 'n0').underlay_ip}." in out and "VXLAN" in out and "vni 42" in out
    assert f"{src.ip} > {dst.ip}: ICMP echo request" in out


def test_remove_hand_built_restores_isolation(mesh: Topology) -> None:
    mesh.hand_built_tunnel()
    mesh.remove_hand_built()
    mesh.remove_hand_built()  # idempotent
    assert mesh.hand_built is None
    for node in mesh.nodes:
        assert names.vxlan_ifname(mesh.prefix) not in run_in(node.ns, "ip", "-br", "link").stdout
        assert run_in(node.ns, "ip", "route", "show", "proto", str(HAND_BUILT_PROTO)).stdout.strip() == ""
    result = ping_matrix(mesh.pods, timeout=0.5)
    assert not any(result[pair] for pair in cross_node_pairs(mesh.pods))


def test_hand_built_native_meshes_every_pod(mesh: Topology) -> None:
    mesh.hand_built_tunnel()
    mesh.hand_built_native()  # replaces the tunnel
    assert mesh.hand_built == "native"
    node = mesh.nodes[0]
    assert names.vxlan_ifname(mesh.prefix) not in run_in(node.ns, "ip", "-br", "link").stdout
    result = ping_matrix(mesh.pods)
    assert all(result.values()), [f"{a.ns}->{b.ns}" for (a, b), ok in result.items() if not ok]
    src, dst = mesh.pods[0], mesh.pods[-1]
    assert tcp_throughput(src, dst, seconds=0.5) > 50e6
    mesh.remove_hand_built()
    for node in mesh.nodes:
        assert run_in(node.ns, "ip", "route", "show", "proto", str(HAND_BUILT_PROTO)).stdout.strip() == ""
    assert not ping(src, dst.ip, timeout=0.5)


def test_stream_reports_a_stall_and_recovers(mesh: Topology) -> None:
    mesh.hand_built_tunnel()
    src = mesh.pods_of(mesh.node("c1", "n1"))[0]
    dst = mesh.pods_of(mesh.node("c2", "n0"))[0]
    run = start_tcp_stream(dst, src, seconds=2.0, gap_threshold=0.2)
    threading.Event().wait(0.5)
    mesh.remove_hand_built()  # cut the path for ~0.6 s: TCP retransmits, the stream stalls
    threading.Event().wait(0.6)
    mesh.hand_built_tunnel()
    result = run.result()
    assert result.error is None and result.bytes_received == result.bytes_sent > 0, result
    assert result.gaps and result.max_gap >= 0.5 and not result.ok


def test_stream_without_a_path_fails_bounded(mesh: Topology) -> None:
    mesh.remove_hand_built()
    a, b = mesh.pods[0], mesh.pods[-1]
    result = tcp_stream(b, a, seconds=0.5, connect_timeout=1.0)
    assert not result.ok and result.error is not None


def _host_snapshot() -> dict[str, object]:
    def ip_json(*argv: str) -> object:
        return json.loads(subprocess.run(["ip", "-j", *argv], capture_output=True, text=True, check=True).stdout)

    return {
        "addr": ip_json("addr"),
        "route": ip_json("route", "show", "table", "all"),
        "route6": ip_json("-6", "route", "show", "table", "all"),
        "rule": ip_json("rule"),
    }


def test_host_network_is_untouched() -> None:
    before = _host_snapshot()
    with Topology(unique_prefix("h")) as topo:
        build(topo, clusters=2, nodes=1, pods=1)
        topo.hand_built_tunnel()
        a, b = topo.pods
        assert ping(a, b.ip)
        assert tcp_stream(b, a, seconds=0.3).bytes_received > 0
        assert _host_snapshot() == before
        topo.hand_built_native()
        assert ping(a, b.ip)
    assert _host_snapshot() == before
