"""Naming and address plan of a lab topology (pure: no I/O).

Everything a topology creates carries its *prefix*: namespace names start with ``<prefix>-`` and
every device created in a node or in the underlay namespace starts with ``<prefix>`` (devices inside
a pod are called ``eth0``, like a Kubernetes pod's). A prefix is 2-7 characters of ``[a-z0-9]``
starting with a letter, so that ``<prefix>`` + the longest suffix (8 characters) fits the kernel's
15-character interface names, and so that ``<prefix>-`` never matches another prefix's namespaces.

Address plan (used only inside the topology's own namespaces; parallel topologies reuse it freely
because each has its own underlay bridge):

- Underlay: one L2 segment ``192.168.0.0/16`` (a bridge in ``<prefix>-underlay``); node ``i``
  (0-based, within its cluster) of cluster id ``c`` (1-255) is ``192.168.<c>.<i+1>/16``.
- Pods: cluster pod CIDR (default ``10.<c>.0.0/16``); node ``i`` owns the ``i``-th /24 of it; pod
  ``j`` (0-based, within its node) is host ``.<j+2>`` of that /24 (``.1`` is left for a node router
  address an agent may want, like Cilium's ``cilium_host``).
- Pod gateway: every pod has ``default via 169.254.1.1 dev eth0`` with a permanent neighbour entry
  for ``169.254.1.1`` pointing at the node side of its veth, so no ARP, proxy-ARP or gateway address
  is needed on the node; the node has ``<pod ip>/32 dev <veth>`` and a permanent neighbour entry for
  the pod's MAC. MACs are deterministic (locally administered): see the ``*_mac`` functions.
- Hand-built VXLAN: VNI 42, UDP port 8472, the VTEP MAC of a node is derived from its underlay IP.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import string

from lab.net.errors import TopologyError

UNDERLAY_NET = ipaddress.IPv4Network("192.168.0.0/16")
POD_GATEWAY = ipaddress.IPv4Address("169.254.1.1")
VXLAN_VNI = 42
VXLAN_PORT = 8472
#: Underlay MTU: room for the 50 bytes of VXLAN encapsulation on top of the pods' 1500.
UNDERLAY_MTU = 1550
POD_MTU = 1500
#: Pod MTU of a lab with WireGuard (``lab up --encryption wireguard``): the device's MTU is the
#: underlay's less Cilium's 80-byte WireGuard overhead, and a pod packet is VXLAN-encapsulated (50)
#: before it enters the device, so a full-size pod packet fits only at 1550 - 80 - 50. With 1500 every
#: full-size packet would leave as two WireGuard packets (the VXLAN packet fragmented in the tunnel).
WIREGUARD_OVERHEAD = 80
ENCRYPTED_POD_MTU = POD_MTU - WIREGUARD_OVERHEAD
MAX_CLUSTER_ID = 255
MAX_NODES_PER_CLUSTER = 254
MAX_PODS_PER_NODE = 250
IFNAMSIZ = 15

POD_IFNAME = "eth0"
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{1,6}$")
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a valid topology prefix, else raise :class:`TopologyError`."""
    if not _PREFIX_RE.match(prefix):
        raise TopologyError(
            f"invalid topology prefix {prefix!r}: use 2-7 characters of [a-z0-9] starting with a letter "
            "(it goes into interface names of at most 15 characters)"
        )
    return prefix


def validate_name(kind: str, name: str) -> str:
    """Return ``name`` if it is a valid cluster/node/pod name (DNS-label-like, <= 32 chars, no dots)."""
    if not _NAME_RE.match(name):
        raise TopologyError(
            f"invalid {kind} name {name!r}: use 1-32 characters of [a-z0-9-], not starting or ending in '-'"
        )
    return name


def unique_prefix(base: str = "nt") -> str:
    """A fresh random prefix ``<base><4 random chars>`` (``base``: 1-3 characters)."""
    if not re.match(r"^[a-z][a-z0-9]{0,2}$", base):
        raise TopologyError(f"invalid prefix base {base!r}: use 1-3 characters of [a-z0-9] starting with a letter")
    alphabet = string.ascii_lowercase + string.digits
    return validate_prefix(base + "".join(secrets.choice(alphabet) for _ in range(4)))


# --- namespaces ---------------------------------------------------------------------------------


def ns_prefix(prefix: str) -> str:
    """The start of every namespace name of the topology ``prefix``."""
    return f"{prefix}-"


def underlay_ns(prefix: str) -> str:
    """The namespace holding the underlay bridge."""
    return f"{prefix}-underlay"


def node_ns(prefix: str, cluster: str, node: str) -> str:
    """The namespace of a node (``<prefix>-<cluster>.<node>``)."""
    return f"{prefix}-{cluster}.{node}"


def pod_ns(prefix: str, cluster: str, node: str, pod: str) -> str:
    """The namespace of a pod (``<prefix>-<cluster>.<node>.<pod>``)."""
    return f"{prefix}-{cluster}.{node}.{pod}"


# --- devices ------------------------------------------------------------------------------------


def _ifname(name: str) -> str:
    if len(name) > IFNAMSIZ:  # unreachable with a valid prefix and in-range indices
        raise TopologyError(f"interface name {name!r} is longer than {IFNAMSIZ} characters")
    return name


def bridge_ifname(prefix: str) -> str:
    """The underlay bridge (in the underlay namespace)."""
    return _ifname(f"{prefix}br")


def underlay_port_ifname(prefix: str, cluster_id: int, node_index: int) -> str:
    """The underlay-namespace end of a node's underlay veth (a bridge port)."""
    return _ifname(f"{prefix}u{cluster_id}n{node_index}")


def node_underlay_ifname(prefix: str) -> str:
    """The node end of the node's underlay veth (the node's "eth0")."""
    return _ifname(f"{prefix}ul")


def node_pod_ifname(prefix: str, pod_index: int) -> str:
    """The node end of a pod's veth (where an agent attaches its tc programs)."""
    return _ifname(f"{prefix}p{pod_index}")


def vxlan_ifname(prefix: str) -> str:
    """The hand-built VXLAN device of a node."""
    return _ifname(f"{prefix}vx")


def is_topology_ifname(prefix: str, ifname: str) -> bool:
    """Whether ``ifname`` is a device name this module gives out for ``prefix`` (pods' ``eth0`` aside)."""
    return re.fullmatch(re.escape(prefix) + r"(br|ul|vx|u\d+n\d+|p\d+)", ifname) is not None


# --- addresses ----------------------------------------------------------------------------------


def default_pod_cidr(cluster_id: int) -> ipaddress.IPv4Network:
    """``10.<cluster_id>.0.0/16``."""
    check_cluster_id(cluster_id)
    return ipaddress.IPv4Network(f"10.{cluster_id}.0.0/16")


def check_cluster_id(cluster_id: int) -> int:
    """Return ``cluster_id`` if it is in 1..255, else raise :class:`TopologyError`."""
    if not 1 <= cluster_id <= MAX_CLUSTER_ID:
        raise TopologyError(f"cluster id {cluster_id} is outside 1..{MAX_CLUSTER_ID}")
    return cluster_id


def node_underlay_ip(cluster_id: int, node_index: int) -> ipaddress.IPv4Address:
    """``192.168.<cluster_id>.<node_index + 1>``."""
    check_cluster_id(cluster_id)
    if not 0 <= node_index < MAX_NODES_PER_CLUSTER:
        raise TopologyError(f"node index {node_index} is outside 0..{MAX_NODES_PER_CLUSTER - 1}")
    return UNDERLAY_NET.network_address + (cluster_id << 8) + node_index + 1


def node_pod_cidr(pod_cidr: ipaddress.IPv4Network, node_index: int) -> ipaddress.IPv4Network:
    """The ``node_index``-th /24 of the cluster's pod CIDR."""
    if pod_cidr.prefixlen > 24:
        raise TopologyError(f"pod CIDR {pod_cidr} is smaller than a /24")
    count = 1 << (24 - pod_cidr.prefixlen)
    if not 0 <= node_index < count:
        raise TopologyError(f"pod CIDR {pod_cidr} has no /24 for node index {node_index} (it has {count})")
    return ipaddress.IPv4Network((int(pod_cidr.network_address) + (node_index << 8), 24))


def pod_ip(node_cidr: ipaddress.IPv4Network, pod_index: int) -> ipaddress.IPv4Address:
    """Host ``.<pod_index + 2>`` of the node's pod /24."""
    if not 0 <= pod_index < MAX_PODS_PER_NODE:
        raise TopologyError(f"pod index {pod_index} is outside 0..{MAX_PODS_PER_NODE - 1}")
    return node_cidr.network_address + pod_index + 2


def _mac(first: int, second: int, ip: ipaddress.IPv4Address) -> str:
    return ":".join(f"{b:02x}" for b in (first, second, *ip.packed))


def pod_mac(ip: ipaddress.IPv4Address) -> str:
    """MAC of a pod's ``eth0``: ``02:01:<pod ip bytes>``."""
    return _mac(0x02, 0x01, ip)


def pod_host_mac(ip: ipaddress.IPv4Address) -> str:
    """MAC of the node end of a pod's veth: ``02:fe:<pod ip bytes>``."""
    return _mac(0x02, 0xFE, ip)


def node_underlay_mac(ip: ipaddress.IPv4Address) -> str:
    """MAC of a node's underlay device: ``02:10:<underlay ip bytes>``."""
    return _mac(0x02, 0x10, ip)


def vtep_mac(ip: ipaddress.IPv4Address) -> str:
    """MAC of a node's hand-built VXLAN device: ``02:00:<underlay ip bytes>``."""
    return _mac(0x02, 0x00, ip)
