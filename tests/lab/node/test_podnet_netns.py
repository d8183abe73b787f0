"""The pod network on real namespaces: a lab.net underlay with two nodes of cluster c1 and one of
cluster c2; PodNetwork and NodeRoutes run inside each node namespace (``nsenter --net``, as the node
runtime does), each call in a fresh process, so every call is also a restart of the pod network."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import lab
from lab.net import Pod, Topology, names, ping, run_in, tcp_stream, unique_prefix
from lab.net.topology import Node
from lab.node.podnet import host_ifname, pod_netns_name

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nsenter") is None,
    reason="needs root, iproute2 and nsenter for network namespaces",
)

REPO = str(Path(lab.__file__).resolve().parent.parent)
PROTO = 148
FOREIGN_PROTO = 147  # lab.net's hand-built routes: NodeRoutes must leave them alone

# Runs inside a node namespace: builds a PodNetwork (if asked) and applies the operations in order,
# printing their results as one JSON list.
DRIVER = r"""
import ipaddress, json, sys
from pathlib import Path
from lab.node.podnet import PodNetwork
from lab.node.routes import NodeRoutes
req = json.loads(sys.argv[1])
cfg = req["podnet"]
pn = PodNetwork(lab=cfg["lab"], cluster=cfg["cluster"], node_index=cfg["node_index"],
                pod_cidr=ipaddress.IPv4Network(cfg["pod_cidr"]), state_dir=Path(cfg["state_dir"]))
out = []
for op in req["ops"]:
    if op[0] == "attach":
        out.append(str(pn.attach(op[1], op[2])))
    elif op[0] == "detach":
        out.append(pn.detach(op[1], op[2]))
    elif op[0] == "attached":
        out.append({uid: [ns, str(ip)] for uid, (ns, ip) in pn.attached().items()})
    elif op[0] == "sync":
        out.append(NodeRoutes(op[1], service_ip=op[2]).sync(op[3]))
print(json.dumps(out))
"""


class DriverError(AssertionError):
    """The driver process failed; carries its stderr."""


@dataclass
class LabNode:
    """A node namespace of the test lab and the pod network state kept for it."""

    lab: str
    node: Node
    state_dir: Path
    pods: dict[str, Pod] = field(default_factory=dict)  # by uid

    @property
    def name(self) -> str:
        return f"{self.node.cluster}-{self.node.name}"

    @property
    def service_ip(self) -> str:
        return f"172.16.{self.node.cluster_id}.1"

    def run(self, *ops: list[Any]) -> list[Any]:
        req = {
            "podnet": {"lab": self.lab, "cluster": self.node.cluster, "node_index": self.node.index,
                       "pod_cidr": str(self.node.pod_cidr), "state_dir": str(self.state_dir)},
            "ops": [list(op) for op in ops],
        }  # fmt: skip
        argv = ["nsenter", f"--net=/run/netns/{self.node.ns}", "--", sys.executable, "-c", DRIVER, json.dumps(req)]
        env = {**os.environ, "PYTHONPATH": REPO}
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, cwd=REPO, check=False)
        if proc.returncode != 0:
            raise DriverError(f"driver in {self.node.ns} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        result: list[Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result

    def netns_of(self, pod_name: str) -> str:
        return pod_netns_name(self.lab, self.node.cluster, self.node.index, "default", pod_name)

    def attach(self, pod_name: str, uid: str | None = None) -> Pod:
        uid = uid or str(uuid.uuid4())
        ns = self.netns_of(pod_name)
        ip = ipaddress.IPv4Address(self.run(["attach", uid, ns])[0])
        pod = Pod(cluster=self.node.cluster, node=self.node.name, name=pod_name, index=len(self.pods), ns=ns,
                  node_ns=self.node.ns, ip=ip, ifname="eth0", mac=names.pod_mac(ip), host_ifname=host_ifname(uid),
                  host_mac=names.pod_host_mac(ip))  # fmt: skip
        self.pods[uid] = pod
        return pod

    def node_object(self) -> dict[str, Any]:
        return {
            "metadata": {"name": self.name},
            "spec": {"podCIDR": str(self.node.pod_cidr), "podCIDRs": [str(self.node.pod_cidr)]},
            "status": {"addresses": [{"type": "InternalIP", "address": str(self.node.underlay_ip)},
                                     {"type": "Hostname", "address": self.name}]},
        }  # fmt: skip


@dataclass
class Lab:
    topo: Topology
    nodes: dict[str, LabNode]  # by Node object name

    def cluster_nodes(self, cluster: str) -> list[LabNode]:
        return [n for n in self.nodes.values() if n.node.cluster == cluster]

    def sync_routes(self, cluster: str) -> None:
        objects = [n.node_object() for n in self.cluster_nodes(cluster)]
        for n in self.cluster_nodes(cluster):
            n.run(["sync", n.name, n.service_ip, objects])


def jrun(where: str, *argv: str) -> Any:
    return json.loads(run_in(where, "ip", "-j", *argv).stdout or "[]")


def routes_of(where: str, proto: int | None = None) -> dict[str, str | None]:
    extra = ["proto", str(proto)] if proto is not None else []
    return {r["dst"]: r.get("gateway") for r in jrun(where, "route", "show", *extra)}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    prefix = unique_prefix("pn")
    state = tmp_path_factory.mktemp("podnet")
    with Topology(prefix) as topo:  # closing removes every <prefix>- namespace, pods included
        nodes: dict[str, LabNode] = {}
        for cid, count in ((1, 2), (2, 1)):
            cluster = topo.add_cluster(f"c{cid}", cid)
            for j in range(count):
                made = topo.add_node(cluster, f"n{j}")
                ln = LabNode(prefix, made, state / f"c{cid}.n{j}")
                nodes[ln.name] = ln
        for ln in nodes.values():
            for k in range(2):
                ln.attach(f"p{k}")
        built = Lab(topo, nodes)
        built.sync_routes("c1")
        built.sync_routes("c2")
        yield built
    assert not [n for n in os.listdir("/run/netns") if n.startswith(f"{prefix}-")]


def test_layout_follows_the_plan(net: Lab) -> None:
    n0 = net.nodes["c1-n0"]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    pods = list(n0.pods.values())
    assert [p.ns for p in pods] == [f"{net.topo.prefix}-c1.n0.default.p0", f"{net.topo.prefix}-c1.n0.default.p1"]
    assert all(p.ns in listed for p in pods)
    assert [str(p.ip) for p in pods] == ["10.1.0.2", "10.1.0.3"]
    assert [str(p.ip) for p in net.nodes["c1-n1"].pods.values()] == ["10.1.1.2", "10.1.1.3"]
    for uid, pod in n0.pods.items():
        (link,) = jrun(n0.node.ns, "link", "show", "dev", pod.host_ifname)
        assert pod.host_ifname == "lxc" + uid.replace("-", "")[:8]
        assert (link["address"], link["mtu"], link["operstate"]) == (pod.host_mac, 1500, "UP")
        assert not jrun(n0.node.ns, "addr", "show", "dev", pod.host_ifname)[0]["addr_info"], "node end has no address"
        (eth0,) = jrun(pod.ns, "addr", "show", "dev", "eth0")
        assert (eth0["address"], eth0["mtu"]) == (pod.mac, 1500)
        assert [(a["local"], a["prefixlen"]) for a in eth0["addr_info"]] == [(str(pod.ip), 32)]
        assert jrun(pod.ns, "link", "show", "dev", "lo")[0]["flags"].count("UP") == 1
        assert routes_of(pod.ns) == {"default": "169.254.1.1", "169.254.1.1": None}
        (gw,) = jrun(pod.ns, "neigh", "show", "169.254.1.1", "dev", "eth0")
        assert (gw["lladdr"], gw["state"]) == (pod.host_mac, ["PERMANENT"])
        (back,) = jrun(n0.node.ns, "route", "show", f"{pod.ip}/32")
        assert back["dev"] == pod.host_ifname and back["scope"] == "link"
        (neigh,) = jrun(n0.node.ns, "neigh", "show", str(pod.ip), "dev", pod.host_ifname)
        assert (neigh["lladdr"], neigh["state"]) == (pod.mac, ["PERMANENT"])
    assert routes_of(n0.node.ns, PROTO) == {"10.1.1.0/24": "192.168.1.2"}
    assert routes_of(net.nodes["c1-n1"].node.ns, PROTO) == {"10.1.0.0/24": "192.168.1.1"}
    assert routes_of(net.nodes["c2-n0"].node.ns, PROTO) == {}, "a lone node of c2 routes nothing"
    lo = jrun(n0.node.ns, "addr", "show", "dev", "lo")[0]["addr_info"]
    assert {"172.16.1.1"} <= {a["local"] for a in lo}


def test_pods_reach_each_other_on_the_same_node_and_across_nodes(net: Lab) -> None:
    a, b = net.nodes["c1-n0"].pods.values()
    c, d = net.nodes["c1-n1"].pods.values()
    for src, dst in ((a, b), (b, a), (a, c), (c, a), (b, d), (d, b)):
        assert ping(src, dst.ip, timeout=2), f"{src.ns} -> {dst.ip}"
    same = tcp_stream(b, a, port=7001, seconds=1.0)
    across = tcp_stream(c, a, port=7002, seconds=1.0)
    assert same.ok, same
    assert across.ok, across


def test_pods_reach_their_node_and_its_service_address_and_the_node_reaches_them(net: Lab) -> None:
    n0 = net.nodes["c1-n0"]
    pod = next(iter(n0.pods.values()))
    assert ping(pod, n0.service_ip) and ping(pod, n0.node.underlay_ip)
    assert ping(pod, net.nodes["c1-n1"].node.underlay_ip), "another node of the cluster answers via its route back"
    probe = run_in(n0.node.ns, "ping", "-n", "-q", "-c", "1", "-W", "2", str(pod.ip), check=False)
    assert probe.returncode == 0, probe.stdout  # what the node runtime's probes need


def test_other_clusters_pods_are_unreachable_both_ways(net: Lab) -> None:
    ours = [p for n in net.cluster_nodes("c1") for p in n.pods.values()]
    theirs = list(net.nodes["c2-n0"].pods.values())
    assert ping(theirs[0], theirs[1].ip), "c2's own pods work: the checks below are not vacuous"
    for node in net.cluster_nodes("c1"):
        unreachable = run_in(node.node.ns, "ip", "route", "get", str(theirs[0].ip), check=False)
        assert unreachable.returncode != 0 and "unreachable" in unreachable.stderr.lower()
    for src in ours:
        for dst in theirs:
            assert not ping(src, dst.ip, timeout=0.5), f"{src.ns} reached {dst.ns}"
            assert not ping(dst, src.ip, timeout=0.5), f"{dst.ns} reached {src.ns}"


def test_restart_keeps_ips_and_attach_is_idempotent(net: Lab) -> None:
    n0 = net.nodes["c1-n0"]
    before = {uid: [p.ns, str(p.ip)] for uid, p in n0.pods.items()}
    (listed,) = n0.run(["attached"])
    assert listed == before
    ops = [["attach", uid, ns] for uid, (ns, _) in before.items()]
    again = n0.run(*ops, *ops, ["attached"])  # a fresh process attaching everything twice
    assert again[:-1] == [ip for _, ip in before.values()] * 2
    assert again[-1] == before
    for pod in n0.pods.values():
        assert len(jrun(pod.ns, "link", "show", "dev", "eth0")) == 1
        assert [(a["local"], a["prefixlen"]) for a in jrun(pod.ns, "addr", "show", "dev", "eth0")[0]["addr_info"]] \
            == [(str(pod.ip), 32)]  # fmt: skip
    a, b = n0.pods.values()
    assert ping(a, b.ip)


def test_attach_repairs_a_half_removed_pod_with_the_same_ip(net: Lab) -> None:
    n1 = net.nodes["c1-n1"]
    uid, pod = next(iter(n1.pods.items()))
    run_in(n1.node.ns, "ip", "link", "del", pod.host_ifname)
    assert not ping(pod, n1.node.underlay_ip, timeout=0.5)
    assert n1.run(["attach", uid, pod.ns]) == [str(pod.ip)]
    assert ping(pod, n1.node.underlay_ip)
    assert ping(pod, next(iter(net.nodes["c1-n0"].pods.values())).ip)


def test_detach_removes_netns_veth_route_and_ip_and_a_replacement_gets_a_new_ip(net: Lab) -> None:
    n1 = net.nodes["c1-n1"]
    uid = str(uuid.uuid4())
    pod = n1.attach("doomed", uid)
    assert ping(pod, next(iter(net.nodes["c1-n0"].pods.values())).ip)
    n1.run(["detach", uid, pod.ns])
    del n1.pods[uid]
    assert pod.ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert pod.host_ifname not in {link["ifname"] for link in jrun(n1.node.ns, "link", "show")}
    assert f"{pod.ip}" not in routes_of(n1.node.ns)
    assert not [e for e in jrun(n1.node.ns, "neigh", "show") if e.get("dst") == str(pod.ip)]
    (listed,) = n1.run(["detach", uid, pod.ns], ["attached"])[1:]  # a second detach is a no-op
    assert uid not in listed and len(listed) == len(n1.pods)
    replacement = n1.attach("doomed")
    assert replacement.ip != pod.ip, "next-fit: the replacement must not get the address just freed"
    assert ping(replacement, next(iter(net.nodes["c1-n0"].pods.values())).ip)


def test_attach_refuses_a_namespace_of_another_node(net: Lab) -> None:
    n0 = net.nodes["c1-n0"]
    foreign = net.nodes["c1-n1"].netns_of("x")
    with pytest.raises(DriverError, match="is not one of this node's"):
        n0.run(["attach", str(uuid.uuid4()), foreign])
    assert foreign not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_node_routes_follow_node_changes_and_leave_other_protocols_alone(net: Lab) -> None:
    n0, n1 = net.cluster_nodes("c1")
    ghost = {
        "metadata": {"name": "c1-n7"},
        "spec": {"podCIDR": "10.1.7.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.8"}]},
    }
    foreign = "10.1.9.0/24"
    run_in(n0.node.ns, "ip", "route", "add", foreign, "via", "192.168.1.2", "proto", str(FOREIGN_PROTO))
    run_in(n0.node.ns, "ip", "route", "add", "10.1.8.0/24", "via", "192.168.1.2", "proto", str(FOREIGN_PROTO))
    conflicting = {**ghost, "metadata": {"name": "c1-n8"}, "spec": {"podCIDR": "10.1.8.0/24"}}
    try:
        n0.run(["sync", n0.name, n0.service_ip, [n0.node_object(), n1.node_object(), ghost, conflicting]])
        assert routes_of(n0.node.ns, PROTO) == {"10.1.1.0/24": "192.168.1.2", "10.1.7.0/24": "192.168.1.8"}
        assert routes_of(n0.node.ns, FOREIGN_PROTO) == {foreign: "192.168.1.2", "10.1.8.0/24": "192.168.1.2"}
        moved = {**n1.node_object(), "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.9"}]}}
        n0.run(["sync", n0.name, n0.service_ip, [n0.node_object(), moved]])  # ghost deleted, n1 "moved"
        assert routes_of(n0.node.ns, PROTO) == {"10.1.1.0/24": "192.168.1.9"}
        n0.run(["sync", n0.name, n0.service_ip, [n0.node_object()]])
        assert routes_of(n0.node.ns, PROTO) == {}
        assert routes_of(n0.node.ns, FOREIGN_PROTO) == {foreign: "192.168.1.2", "10.1.8.0/24": "192.168.1.2"}
    finally:
        run_in(n0.node.ns, "ip", "route", "flush", "proto", str(FOREIGN_PROTO), check=False)
        net.sync_routes("c1")
    assert routes_of(n0.node.ns, PROTO) == {"10.1.1.0/24": "192.168.1.2"}
    a, c = next(iter(n0.pods.values())), next(iter(n1.pods.values()))
    assert ping(a, c.ip)
