"""A topology of clusters of nodes with pods, each in its own network namespace, on one isolated
underlay L2 segment; the plan (names, addresses, MACs) is in :mod:`lab.net.names`.

::

    <prefix>-underlay:  bridge <prefix>br, ports <prefix>u<cid>n<i>
                                   |  veth
    <prefix>-<cluster>.<node>:     <prefix>ul 192.168.<cid>.<i+1>/16, ip_forward=1,
                                   <prefix>p<j> --veth-- eth0 of pod j, route <pod ip>/32 dev <prefix>p<j>
    <prefix>-<cluster>.<node>.<pod>: eth0 <pod ip>/32, default via 169.254.1.1 (static neighbour)

Nothing routes between nodes' pods by itself: that is the datapath's job. For baselines,
:meth:`Topology.hand_built_tunnel` and :meth:`Topology.hand_built_native` build the same mesh by
hand with plain kernel routing; :meth:`Topology.remove_hand_built` takes either away.

Cleanup: :meth:`Topology.close` (also on ``with`` exit, at garbage collection and at interpreter
exit through a ``weakref.finalize``) removes every namespace named with the prefix, killing
processes left inside; :func:`lab.net.nsutil.cleanup_stale` does the same for a killed run.
"""

from __future__ import annotations

import contextlib
import ipaddress
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from lab.net import handbuilt, names, nsutil
from lab.net.errors import TopologyError

_NUD_PERMANENT = 0x80

HandBuilt = Literal["tunnel", "native"]

_NODE_SYSCTLS = {
    "net.ipv4.ip_forward": 1,
    "net.ipv4.conf.all.rp_filter": 0,
    "net.ipv4.conf.default.rp_filter": 0,
    "net.ipv6.conf.all.disable_ipv6": 1,
    "net.ipv6.conf.default.disable_ipv6": 1,
}
_QUIET_SYSCTLS = {"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1}


@dataclass(frozen=True)
class Cluster:
    """A cluster: a name, a ClusterMesh cluster id (1-255) and a pod CIDR."""

    name: str
    cluster_id: int
    pod_cidr: ipaddress.IPv4Network


@dataclass(frozen=True)
class Node:
    """A node: its namespace, underlay device/address and the /24 of pod addresses it hands out."""

    cluster: str
    cluster_id: int
    name: str
    index: int
    ns: str
    underlay_ifname: str
    underlay_ip: ipaddress.IPv4Address
    underlay_mac: str
    pod_cidr: ipaddress.IPv4Network

    @property
    def vtep_mac(self) -> str:
        """MAC of this node's hand-built VXLAN device."""
        return names.vtep_mac(self.underlay_ip)


@dataclass(frozen=True)
class Pod:
    """A pod: its namespace and address, and the node end of its veth (``host_ifname`` in ``node_ns``)."""

    cluster: str
    node: str
    name: str
    index: int
    ns: str
    node_ns: str
    ip: ipaddress.IPv4Address
    ifname: str
    mac: str
    host_ifname: str
    host_mac: str

    def exec_argv(self, *argv: str) -> list[str]:
        """The argv running ``argv`` inside this pod (``ip netns exec``), dying with its parent."""
        return nsutil.exec_argv(self.ns, *argv)


@dataclass
class _NodeState:
    node: Node
    pods: list[Pod] = field(default_factory=list)


class Topology:
    """Clusters of nodes with pods in network namespaces named ``<prefix>-...`` (see module doc).

    ``prefix``: 2-7 characters of ``[a-z0-9]`` unique among live topologies on the machine (see
    :func:`lab.net.names.unique_prefix`); construction fails if namespaces with it exist already.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = names.validate_prefix(prefix)
        leftovers = nsutil.namespaces_with_prefix(prefix)
        if leftovers:
            raise TopologyError(
                f"namespaces with prefix {prefix!r} exist already ({', '.join(leftovers[:3])}...): pick another "
                f"prefix or remove leftovers with cleanup_stale({prefix!r})"
            )
        self._clusters: dict[str, Cluster] = {}
        self._nodes: dict[str, list[_NodeState]] = {}
        self._underlay_ready = False
        self._hand_built: HandBuilt | None = None
        self._closed = False
        self._finalizer = weakref.finalize(self, nsutil.cleanup_stale, prefix)

    # --- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Remove every namespace (hence every device) of this topology. Idempotent."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> Topology:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise TopologyError(f"topology {self.prefix!r} is closed")

    # --- views -------------------------------------------------------------------------------

    @property
    def underlay_ns(self) -> str:
        """The namespace holding the underlay bridge."""
        return names.underlay_ns(self.prefix)

    @property
    def clusters(self) -> list[Cluster]:
        """The clusters, in the order they were added."""
        return list(self._clusters.values())

    @property
    def nodes(self) -> list[Node]:
        """All nodes, cluster by cluster."""
        return [s.node for states in self._nodes.values() for s in states]

    @property
    def pods(self) -> list[Pod]:
        """All pods, node by node."""
        return [p for states in self._nodes.values() for s in states for p in s.pods]

    @property
    def hand_built(self) -> HandBuilt | None:
        """Which hand-built mesh is in place, if any."""
        return self._hand_built

    def cluster(self, name: str) -> Cluster:
        """The cluster called ``name``."""
        try:
            return self._clusters[name]
        except KeyError:
            raise TopologyError(f"no cluster {name!r} in topology {self.prefix!r}") from None

    def node(self, cluster: Cluster | str, name: str) -> Node:
        """The node ``name`` of ``cluster``."""
        return self._node_state(cluster, name).node

    def pods_of(self, node: Node) -> list[Pod]:
        """The pods of ``node``."""
        return list(self._node_state(node.cluster, node.name).pods)

    def node_of(self, pod: Pod) -> Node:
        """The node hosting ``pod``."""
        return self.node(pod.cluster, pod.node)

    def _node_state(self, cluster: Cluster | str, name: str) -> _NodeState:
        cname = cluster.name if isinstance(cluster, Cluster) else cluster
        for state in self._nodes.get(self.cluster(cname).name, []):
            if state.node.name == name:
                return state
        raise TopologyError(f"no node {name!r} in cluster {cname!r}")

    # --- building ----------------------------------------------------------------------------

    def add_cluster(self, name: str, cluster_id: int, pod_cidr: str | ipaddress.IPv4Network | None = None) -> Cluster:
        """Declare a cluster (no namespace of its own). ``pod_cidr`` defaults to ``10.<id>.0.0/16``;
        it must not overlap another cluster's, the underlay or link-local space."""
        self._check_open()
        names.validate_name("cluster", name)
        names.check_cluster_id(cluster_id)
        cidr = names.default_pod_cidr(cluster_id) if pod_cidr is None else ipaddress.IPv4Network(pod_cidr)
        if cidr.prefixlen > 24:
            raise TopologyError(f"pod CIDR {cidr} of cluster {name!r} is smaller than a /24")
        for other in self._clusters.values():
            if other.name == name or other.cluster_id == cluster_id:
                raise TopologyError(f"cluster {name!r} (id {cluster_id}) clashes with cluster {other.name!r}")
            if other.pod_cidr.overlaps(cidr):
                raise TopologyError(f"pod CIDR {cidr} overlaps cluster {other.name!r}'s {other.pod_cidr}")
        for reserved in (names.UNDERLAY_NET, ipaddress.IPv4Network("169.254.0.0/16")):
            if reserved.overlaps(cidr):
                raise TopologyError(f"pod CIDR {cidr} overlaps the lab's reserved {reserved}")
        cluster = Cluster(name=name, cluster_id=cluster_id, pod_cidr=cidr)
        self._clusters[name] = cluster
        self._nodes[name] = []
        return cluster

    def add_node(self, cluster: Cluster | str, name: str) -> Node:
        """Create a node namespace of ``cluster`` wired to the underlay bridge, with IP forwarding."""
        self._check_open()
        c = self.cluster(cluster.name if isinstance(cluster, Cluster) else cluster)
        names.validate_name("node", name)
        states = self._nodes[c.name]
        if any(s.node.name == name for s in states):
            raise TopologyError(f"node {name!r} exists already in cluster {c.name!r}")
        index = len(states)
        ip = names.node_underlay_ip(c.cluster_id, index)
        node = Node(
            cluster=c.name,
            cluster_id=c.cluster_id,
            name=name,
            index=index,
            ns=names.node_ns(self.prefix, c.name, name),
            underlay_ifname=names.node_underlay_ifname(self.prefix),
            underlay_ip=ip,
            underlay_mac=names.node_underlay_mac(ip),
            pod_cidr=names.node_pod_cidr(c.pod_cidr, index),
        )
        self._ensure_underlay()
        nsutil.create_namespace(node.ns)
        states.append(_NodeState(node))
        nsutil.set_sysctls(node.ns, _NODE_SYSCTLS)
        port = names.underlay_port_ifname(self.prefix, c.cluster_id, index)
        with nsutil.iproute(self.underlay_ns) as ipr:
            ipr.link("add", ifname=port, kind="veth", peer={"ifname": node.underlay_ifname, "net_ns_fd": node.ns})
            bridge = nsutil.ifindex(ipr, names.bridge_ifname(self.prefix))
            ipr.link("set", index=nsutil.ifindex(ipr, port), master=bridge, mtu=names.UNDERLAY_MTU, state="up")
        with nsutil.iproute(node.ns) as ipr:
            _lo_up(ipr)
            idx = nsutil.ifindex(ipr, node.underlay_ifname)
            ipr.link("set", index=idx, address=node.underlay_mac, mtu=names.UNDERLAY_MTU, state="up")
            ipr.addr("add", index=idx, address=str(ip), prefixlen=names.UNDERLAY_NET.prefixlen)
        return node

    def add_pod(self, node: Node, name: str) -> Pod:
        """Create a pod namespace behind ``node``: a veth pair, the next address of the node's /24,
        a default route via the static gateway 169.254.1.1 and the node's /32 route back."""
        self._check_open()
        names.validate_name("pod", name)
        state = self._node_state(node.cluster, node.name)
        if any(p.name == name for s in self._nodes[node.cluster] for p in s.pods):
            raise TopologyError(f"pod {name!r} exists already in cluster {node.cluster!r}")
        index = len(state.pods)
        ip = names.pod_ip(node.pod_cidr, index)
        pod = Pod(
            cluster=node.cluster,
            node=node.name,
            name=name,
            index=index,
            ns=names.pod_ns(self.prefix, node.cluster, node.name, name),
            node_ns=node.ns,
            ip=ip,
            ifname=names.POD_IFNAME,
            mac=names.pod_mac(ip),
            host_ifname=names.node_pod_ifname(self.prefix, index),
            host_mac=names.pod_host_mac(ip),
        )
        nsutil.create_namespace(pod.ns)
        state.pods.append(pod)
        with nsutil.iproute(node.ns) as ipr:
            plumb_pod(ipr, pod.ns, pod.host_ifname, ip)
        return pod

    def _ensure_underlay(self) -> None:
        if self._underlay_ready:
            return
        nsutil.create_namespace(self.underlay_ns)
        nsutil.set_sysctls(self.underlay_ns, _QUIET_SYSCTLS)
        with nsutil.iproute(self.underlay_ns) as ipr:
            _lo_up(ipr)
            ipr.link("add", ifname=names.bridge_ifname(self.prefix), kind="bridge", br_stp_state=0)
            idx = nsutil.ifindex(ipr, names.bridge_ifname(self.prefix))
            ipr.link("set", index=idx, mtu=names.UNDERLAY_MTU, state="up")
        self._underlay_ready = True

    # --- hand-built meshes (baselines) -------------------------------------------------------

    def hand_built_tunnel(self) -> None:
        """Mesh all nodes' pods by hand over VXLAN (VNI 42, port 8472), like flannel: per node a
        ``vxlan`` device ``<prefix>vx`` on the underlay device with static FDB entries, and per remote
        node ``<its pod /24> via <its /24 network address> dev <prefix>vx onlink`` with a permanent
        neighbour entry for that next hop carrying the remote VXLAN device's MAC
        (:func:`lab.net.handbuilt.build_tunnel`). Idempotent; replaces a native mesh; call again
        after adding nodes."""
        self._check_open()
        if self._hand_built == "native":
            self.remove_hand_built()
        handbuilt.build_tunnel(self.nodes, names.vxlan_ifname(self.prefix))
        self._hand_built = "tunnel"

    def hand_built_native(self) -> None:
        """Mesh all nodes' pods by hand with plain routes: per remote node ``<its pod /24> via <its
        underlay IP>`` (all nodes share one L2 underlay). Idempotent; replaces a tunnel mesh; call
        again after adding nodes."""
        self._check_open()
        if self._hand_built == "tunnel":
            self.remove_hand_built()
        handbuilt.build_native(self.nodes)
        self._hand_built = "native"

    def remove_hand_built(self) -> None:
        """Take away whichever hand-built mesh is in place (the VXLAN devices and every route tagged
        with :data:`~lab.net.handbuilt.HAND_BUILT_PROTO`). Idempotent."""
        self._check_open()
        handbuilt.remove(self.nodes, names.vxlan_ifname(self.prefix))
        self._hand_built = None

    def iproute(self, ns: str | nsutil.InNamespace) -> contextlib.AbstractContextManager[Any]:
        """A pyroute2 ``IPRoute`` bound to namespace ``ns`` (a name, node or pod; a context manager)."""
        return nsutil.iproute(ns)

    def namespaces(self) -> Iterator[str]:
        """The namespaces this topology has created so far (underlay, nodes, pods)."""
        if self._underlay_ready:
            yield self.underlay_ns
        for node in self.nodes:
            yield node.ns
        for pod in self.pods:
            yield pod.ns


def plumb_pod(node_ipr: Any, pod_ns: str, host_ifname: str, ip: ipaddress.IPv4Address, *,
              mtu: int = names.POD_MTU) -> None:
    """Wire the existing namespace ``pod_ns`` behind a node the plan's way (see :mod:`lab.net.names`).

    A veth pair whose node end ``host_ifname`` lives in the namespace ``node_ipr`` is bound to and
    whose pod end is ``eth0`` in ``pod_ns``, both with MTU ``mtu`` (1500) and the MACs derived from ``ip``; in
    the pod: IPv6 off, ``lo`` up, ``ip``/32 on ``eth0``, ``default via 169.254.1.1`` with a permanent
    neighbour entry for the node end's MAC; on the node: ``ip``/32 dev ``host_ifname`` with a
    permanent neighbour entry for the pod's MAC. The node end needs no address.

    Converges rather than insists on a clean slate: a pair that exists with the right MACs is kept
    (addresses, routes and neighbours are replaced in place, so traffic keeps flowing), a pair with
    other MACs or a missing end is recreated.
    """
    pod_mac, host_mac = names.pod_mac(ip), names.pod_host_mac(ip)
    nsutil.set_sysctls(pod_ns, _QUIET_SYSCTLS)
    with nsutil.iproute(pod_ns) as pod_ipr:
        host = _existing(node_ipr, host_ifname)
        peer = _existing(pod_ipr, names.POD_IFNAME)
        if host is not None and (
            peer is None or _link_mac(node_ipr, host) != host_mac or _link_mac(pod_ipr, peer) != pod_mac
        ):
            node_ipr.link("del", index=host)  # takes its peer along, wherever that is
            host, peer = None, _existing(pod_ipr, names.POD_IFNAME)
        if host is None or peer is None:
            if peer is not None:  # an eth0 of some other pair
                pod_ipr.link("del", index=peer)
            node_ipr.link(
                "add",
                ifname=host_ifname,
                kind="veth",
                address=host_mac,
                mtu=mtu,
                peer={"ifname": names.POD_IFNAME, "net_ns_fd": pod_ns, "address": pod_mac, "mtu": mtu},
            )
            host, peer = nsutil.ifindex(node_ipr, host_ifname), nsutil.ifindex(pod_ipr, names.POD_IFNAME)
        node_ipr.link("set", index=host, mtu=mtu, state="up")
        node_ipr.route("replace", dst=f"{ip}/32", oif=host, scope="link")
        node_ipr.neigh("replace", dst=str(ip), lladdr=pod_mac, ifindex=host, state=_NUD_PERMANENT)
        _lo_up(pod_ipr)
        pod_ipr.link("set", index=peer, mtu=mtu, state="up")
        for addr in pod_ipr.get_addr(family=2, index=peer):
            if (addr.get("address"), addr["prefixlen"]) != (str(ip), 32):
                pod_ipr.addr("del", index=peer, address=addr.get("address"), prefixlen=addr["prefixlen"])
        pod_ipr.addr("replace", index=peer, address=str(ip), prefixlen=32)
        gw = str(names.POD_GATEWAY)
        pod_ipr.neigh("replace", dst=gw, lladdr=host_mac, ifindex=peer, state=_NUD_PERMANENT)
        pod_ipr.route("replace", dst=f"{gw}/32", oif=peer, scope="link")
        pod_ipr.route("replace", dst="0.0.0.0/0", gateway=gw, oif=peer)


def _link_mac(ipr: Any, index: int) -> str | None:
    links = ipr.get_links(index)
    return str(links[0].get("address")) if links else None


def _lo_up(ipr: Any) -> None:
    ipr.link("set", index=nsutil.ifindex(ipr, "lo"), state="up")


def _existing(ipr: Any, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None

