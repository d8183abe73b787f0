"""Reusable network-namespace topologies for datapath tests and the lab.

Clusters of nodes with pods, each in its own namespace, on one isolated underlay L2 segment;
nothing is attached or routed to the host. See :mod:`lab.net.topology` for the layout,
:mod:`lab.net.names` for the naming and address plan and :mod:`lab.net.traffic` for test traffic.
"""

from lab.net.errors import CommandError, NetnsError, TopologyError
from lab.net.handbuilt import HAND_BUILT_PROTO
from lab.net.names import unique_prefix
from lab.net.nsutil import cleanup_stale, run_in
from lab.net.topology import Cluster, Node, Pod, Topology
from lab.net.traffic import (
    Endpoint,
    StreamResult,
    StreamRun,
    UdpResult,
    UdpRun,
    ping,
    ping_matrix,
    start_tcp_stream,
    start_udp_stream,
    tcp_stream,
    tcp_throughput,
    udp_stream,
)

__all__ = [
    "HAND_BUILT_PROTO",
    "Cluster",
    "CommandError",
    "Endpoint",
    "NetnsError",
    "Node",
    "Pod",
    "StreamResult",
    "StreamRun",
    "Topology",
    "TopologyError",
    "UdpResult",
    "UdpRun",
    "cleanup_stale",
    "ping",
    "ping_matrix",
    "run_in",
    "start_tcp_stream",
    "start_udp_stream",
    "tcp_stream",
    "tcp_throughput",
    "udp_stream",
    "unique_prefix",
]
