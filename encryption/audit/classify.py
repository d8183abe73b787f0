"""Classify one captured packet between mesh endpoints (pure: bytes in, a verdict out).

A packet is considered only when both its outer addresses belong to the mesh: a node IP of the
plan, or an address in one of its pod CIDRs (natively routed pod traffic crosses the underlay with
the pods' own addresses, so "between node IPs" alone would miss exactly the leak being looked for).
Everything else (the Kubernetes API, the internet, ARP...) gives ``None``.

Classes, checked in this order:

- ``ipsec``: IP protocol 50 (ESP), or UDP port 4500 whose first four payload bytes (the SPI) are
  not zero (ESP-in-UDP, RFC 3948; a zero marker is IKE, a single 0xff byte a NAT keepalive);
- ``plaintext-pod``: both outer addresses are in pod CIDRs (plain IP carrying pod-to-pod traffic);
- ``plaintext-host``: one outer address is a node's, the other a pod's (host-to-pod traffic, such
  as an agent talking to a clustermesh-apiserver pod on another node: Cilium encrypts it only with
  node encryption, so it is reported, not failed);
- between two node IPs:

  - ``wireguard``: UDP from or to a WireGuard port (Cilium's 51871, our key rotation's transition
    device's 51872, or the plan's) whose payload
    starts like a WireGuard message (type 1-4, three reserved zero bytes, the type's length);
  - VXLAN (UDP 8472, Cilium's, or 4789) or Geneve (UDP 6081): the inner packet decides:
    ``plaintext-pod`` when its source and destination are in pod CIDRs, ``plaintext-host`` when one
    of them is, ``ipsec`` when it is ESP,
    else ``vxlan-other`` (Geneve included);
  - ``plaintext-node``: anything else (kubelet, etcd, health checks...): not a failure.

- ``malformed``: the outer addresses are of the mesh but a header needed to decide is cut short.

IPv6 outer packets are classified too (the fixed header, then hop-by-hop, routing, fragment and
destination-options extension headers); a non-first fragment has no transport header and is
classified by its addresses and protocol alone.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "CILIUM_WIREGUARD_PORT",
    "CLASSES",
    "GENEVE_PORT",
    "IPSEC",
    "MALFORMED",
    "NAT_T_PORT",
    "PLAINTEXT_HOST",
    "PLAINTEXT_NODE",
    "PLAINTEXT_POD",
    "VXLAN_OTHER",
    "VXLAN_PORTS",
    "WIREGUARD",
    "AuditPlan",
    "Classified",
    "Flow",
    "classify",
]

WIREGUARD: Final = "wireguard"
IPSEC: Final = "ipsec"
PLAINTEXT_POD: Final = "plaintext-pod"
PLAINTEXT_HOST: Final = "plaintext-host"
PLAINTEXT_NODE: Final = "plaintext-node"
VXLAN_OTHER: Final = "vxlan-other"
MALFORMED: Final = "malformed"
#: Every class, in the order reports list them.
CLASSES: Final = (WIREGUARD, IPSEC, PLAINTEXT_POD, PLAINTEXT_HOST, PLAINTEXT_NODE, VXLAN_OTHER, MALFORMED)

CILIUM_WIREGUARD_PORT: Final = 51871
#: The transition device's port while a key rotates (:data:`encryption.wireguard.rotation.TRANSITION_PORT`).
ROTATION_WIREGUARD_PORT: Final = 51872
NAT_T_PORT: Final = 4500
VXLAN_PORTS: Final = frozenset({8472, 4789})
GENEVE_PORT: Final = 6081

_ETH_IPV4, _ETH_IPV6, _ETH_VLANS = 0x0800, 0x86DD, (0x8100, 0x88A8)
_ETH_HLEN = 14
_TCP, _UDP, _ESP, _ICMP, _ICMP6 = 6, 17, 50, 1, 58
_V6_EXTENSIONS: Final = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options
_V6_FRAGMENT: Final = 44
_MAX_V6_EXTENSIONS: Final = 8
_PROTO_NAMES: Final = {_TCP: "tcp", _UDP: "udp", _ICMP: "icmp", _ICMP6: "icmpv6", _ESP: "esp"}
#: WireGuard message type -> its exact length (type 4, transport data, is at least 32 bytes).
_WG_LENGTHS: Final = {1: 148, 2: 92, 3: 64}
_WG_MIN_DATA: Final = 32
_GENEVE_ETHERNET: Final = 0x6558


@dataclass(frozen=True, slots=True)
class Flow:
    """The pod flow a plaintext packet carries (the inner packet of a tunnel, else the packet)."""

    proto: str
    src: str
    dst: str
    sport: int | None = None
    dport: int | None = None

    def __str__(self) -> str:
        def end(ip: str, port: int | None) -> str:
            if port is None:
                return ip
            return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"

        return f"{self.proto} {end(self.src, self.sport)} -> {end(self.dst, self.dport)}"

    def to_json(self) -> dict[str, Any]:
        return {"proto": self.proto, "src": self.src, "sport": self.sport, "dst": self.dst, "dport": self.dport}


@dataclass(frozen=True, slots=True)
class Classified:
    """What one packet is: its class, outer addresses, their owners and, for ``plaintext-pod``,
    the pod flow (``via`` says how it crossed: ``ip``, ``vxlan`` or ``geneve``)."""

    cls: str
    src: str
    dst: str
    src_node: str
    dst_node: str
    flow: Flow | None = None
    via: str | None = None


@dataclass(frozen=True)
class AuditPlan:
    """What the audit knows of the mesh: node IPs (-> ``cluster/name``), pod CIDRs (each with the
    node that owns it, or None when unknown) and the WireGuard ports besides Cilium's."""

    nodes: Mapping[str, str]
    pod_cidrs: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str | None], ...] = ()
    wireguard_ports: frozenset[int] = frozenset({CILIUM_WIREGUARD_PORT, ROTATION_WIREGUARD_PORT})
    _node_keys: dict[bytes, str] = field(init=False, repr=False, compare=False)
    _cidrs: tuple[tuple[int, int, int, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        keys = {ipaddress.ip_address(ip).packed: name for ip, name in self.nodes.items()}
        cidrs = tuple((net.version, int(net.network_address), int(net.netmask), owner or f"pods {net}")
                      for net, owner in self.pod_cidrs)
        object.__setattr__(self, "_node_keys", keys)
        object.__setattr__(self, "_cidrs", cidrs)
        ports = frozenset(self.wireguard_ports) | {CILIUM_WIREGUARD_PORT, ROTATION_WIREGUARD_PORT}
        object.__setattr__(self, "wireguard_ports", ports)

    @classmethod
    def build(cls, nodes: Mapping[str, str], pod_cidrs: Iterable[tuple[str, str | None]] = (),
              wireguard_ports: Iterable[int] = ()) -> AuditPlan:
        """A plan from strings (``("10.1.0.0/24", "c1/n1")``); raises ``ValueError`` on a bad address."""
        for ip in nodes:
            ipaddress.ip_address(ip)
        nets = tuple((ipaddress.ip_network(c, strict=False), owner) for c, owner in pod_cidrs)
        return cls(dict(nodes), nets, frozenset(int(p) for p in wireguard_ports))

    def to_json(self) -> dict[str, Any]:
        return {"nodes": dict(sorted(self.nodes.items())),
                "pod_cidrs": [[str(net), owner] for net, owner in self.pod_cidrs],
                "wireguard_ports": sorted(self.wireguard_ports)}

    @classmethod
    def from_json(cls, doc: Any) -> AuditPlan:
        """The inverse of :meth:`to_json`; raises ``ValueError`` naming the bad field."""
        if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), dict):
            raise ValueError("plan: expected an object with a 'nodes' object (node IP -> name)")
        cidrs: list[tuple[str, str | None]] = []
        for item in doc.get("pod_cidrs") or []:
            if isinstance(item, str):
                cidrs.append((item, None))
            elif isinstance(item, list) and len(item) == 2:
                cidrs.append((str(item[0]), None if item[1] is None else str(item[1])))
            else:
                raise ValueError(f"plan: pod_cidrs entry {item!r} is not a CIDR or [CIDR, node]")
        ports = doc.get("wireguard_ports") or []
        if not isinstance(ports, list) or not all(isinstance(p, int) and 0 < p < 65536 for p in ports):
            raise ValueError(f"plan: wireguard_ports {ports!r} is not a list of ports")
        try:
            return cls.build({str(k): str(v) for k, v in doc["nodes"].items()}, cidrs, ports)
        except ValueError as err:
            raise ValueError(f"plan: {err}") from None

    def node_of(self, packed: bytes) -> str | None:
        """The node owning address ``packed`` (4 or 16 bytes) if it is a node IP."""
        return self._node_keys.get(packed)

    def pod_owner(self, packed: bytes) -> str | None:
        """The owner of the pod CIDR holding ``packed`` (``pods <cidr>`` when unknown), or None."""
        version = 4 if len(packed) == 4 else 6
        value = int.from_bytes(packed, "big")
        for v, net, mask, owner in self._cidrs:
            if v == version and value & mask == net:
                return owner
        return None


@dataclass(frozen=True, slots=True)
class _Ip:
    """An IP header: addresses, protocol, where its payload starts, and whether it has one."""

    src: bytes
    dst: bytes
    proto: int
    payload: int
    first_fragment: bool


def _ntoa(packed: bytes) -> str:
    return str(ipaddress.ip_address(packed))


def _parse_ip(data: bytes, off: int) -> _Ip | None:
    """The IPv4 or IPv6 header at ``off`` (None when cut short or not IP)."""
    if len(data) < off + 1:
        return None
    version = data[off] >> 4
    if version == 4:
        if len(data) < off + 20:
            return None
        ihl = (data[off] & 0x0F) * 4
        if ihl < 20:
            return None
        frag = struct.unpack_from("!H", data, off + 6)[0] & 0x1FFF
        return _Ip(data[off + 12:off + 16], data[off + 16:off + 20], data[off + 9], off + ihl, frag == 0)
    if version == 6:
        if len(data) < off + 40:
            return None
        src, dst, nxt = data[off + 8:off + 24], data[off + 24:off + 40], data[off + 6]
        pos, first = off + 40, True
        for _ in range(_MAX_V6_EXTENSIONS):
            if nxt in _V6_EXTENSIONS:
                if len(data) < pos + 2:
                    return _Ip(src, dst, nxt, len(data) + 1, first)  # header cut short: no payload
                nxt, pos = data[pos], pos + (data[pos + 1] + 1) * 8
            elif nxt == _V6_FRAGMENT:
                if len(data) < pos + 8:
                    return _Ip(src, dst, nxt, len(data) + 1, first)
                first = struct.unpack_from("!H", data, pos + 2)[0] >> 3 == 0
                nxt, pos = data[pos], pos + 8
            else:
                break
        return _Ip(src, dst, nxt, pos, first)
    return None


def _ports(data: bytes, ip: _Ip) -> tuple[int, int] | None:
    if not ip.first_fragment or len(data) < ip.payload + 4:
        return None
    sport, dport = struct.unpack_from("!HH", data, ip.payload)
    return int(sport), int(dport)


def _flow(data: bytes, ip: _Ip) -> Flow:
    ports = _ports(data, ip) if ip.proto in (_TCP, _UDP) else None
    return Flow(_PROTO_NAMES.get(ip.proto, f"proto-{ip.proto}"), _ntoa(ip.src), _ntoa(ip.dst),
                ports[0] if ports else None, ports[1] if ports else None)


def _is_wireguard(data: bytes, payload: int) -> bool:
    body = data[payload:payload + 4]
    if len(body) < 4 or body[1:4] != b"\0\0\0":
        return False
    size = len(data) - payload
    if body[0] in _WG_LENGTHS:
        # a capture may be cut (snaplen): a shorter message than the type's is fine, a longer one is not
        return size <= _WG_LENGTHS[body[0]]
    return body[0] == 4 and size >= 16  # type 4: header + counter at least (32 uncut)


def _ethertype(frame: bytes) -> tuple[int, int] | None:
    """The ethertype and the offset of the L3 header of an Ethernet frame (802.1Q/ad tags skipped)."""
    if len(frame) < _ETH_HLEN:
        return None
    off = 12
    etype = struct.unpack_from("!H", frame, off)[0]
    for _ in range(2):
        if etype not in _ETH_VLANS:
            break
        off += 4
        if len(frame) < off + 2:
            return None
        etype = struct.unpack_from("!H", frame, off)[0]
    return int(etype), off + 2


def _tunnel_inner(data: bytes, payload: int, dport: int) -> tuple[int, str] | None:
    """The offset of the inner Ethernet frame of a VXLAN or Geneve packet whose UDP payload starts
    at ``payload``, and the tunnel's name (None when the header is cut or not Ethernet)."""
    if dport in VXLAN_PORTS:
        return (payload + 8, "vxlan") if len(data) >= payload + 8 else None
    if len(data) < payload + 8:
        return None
    opt_len = (data[payload] & 0x3F) * 4
    if struct.unpack_from("!H", data, payload + 2)[0] != _GENEVE_ETHERNET:
        return None
    return payload + 8 + opt_len, "geneve"


def classify(frame: bytes, plan: AuditPlan, *, raw_ip: bool = False) -> Classified | None:
    """Classify ``frame`` (an Ethernet frame; with ``raw_ip`` an IP packet, as a cooked or L3
    device's capture gives): None unless both outer addresses belong to the mesh (see the module
    docstring). Never raises on garbage: a mesh packet cut too short to decide is ``malformed``."""
    if raw_ip:
        off = 0
    else:
        eth = _ethertype(frame)
        if eth is None or eth[0] not in (_ETH_IPV4, _ETH_IPV6):
            return None
        off = eth[1]
    ip = _parse_ip(frame, off)
    if ip is None:
        return None
    src_node, dst_node = plan.node_of(ip.src), plan.node_of(ip.dst)
    src_pod = None if src_node else plan.pod_owner(ip.src)
    dst_pod = None if dst_node else plan.pod_owner(ip.dst)
    src_owner, dst_owner = src_node or src_pod, dst_node or dst_pod
    if src_owner is None or dst_owner is None:
        return None
    src, dst = _ntoa(ip.src), _ntoa(ip.dst)

    def result(cls: str, flow: Flow | None = None, via: str | None = None) -> Classified:
        assert src_owner is not None and dst_owner is not None
        return Classified(cls, src, dst, src_owner, dst_owner, flow, via)

    if ip.proto == _ESP:
        return result(IPSEC)
    ports = _ports(frame, ip) if ip.proto == _UDP else None
    if ports is not None and NAT_T_PORT in ports:
        spi = frame[ip.payload + 8:ip.payload + 12]
        if len(spi) == 4 and spi != b"\0\0\0\0":
            return result(IPSEC)
    if src_pod is not None or dst_pod is not None:
        return result(PLAINTEXT_POD if src_pod and dst_pod else PLAINTEXT_HOST, _flow(frame, ip), "ip")
    if ip.proto == _UDP and ports is None:
        return result(MALFORMED) if ip.first_fragment else result(PLAINTEXT_NODE)
    if ports is None:
        return result(PLAINTEXT_NODE)
    udp_payload = ip.payload + 8
    if plan.wireguard_ports.intersection(ports) and _is_wireguard(frame, udp_payload):
        return result(WIREGUARD)
    if ports[1] in VXLAN_PORTS or ports[1] == GENEVE_PORT:
        return _classify_tunnel(frame, udp_payload, ports[1], plan, result)
    return result(PLAINTEXT_NODE)


def _classify_tunnel(frame: bytes, payload: int, dport: int, plan: AuditPlan,
                     result: Callable[..., Classified]) -> Classified:
    tunnel = _tunnel_inner(frame, payload, dport)
    if tunnel is None:
        return result(MALFORMED) if len(frame) < payload + 8 else result(VXLAN_OTHER)
    inner_off, via = tunnel
    eth = _ethertype(frame[inner_off:])
    if eth is None:
        return result(MALFORMED)
    if eth[0] not in (_ETH_IPV4, _ETH_IPV6):
        return result(VXLAN_OTHER)
    inner = _parse_ip(frame, inner_off + eth[1])
    if inner is None:
        return result(MALFORMED)
    if inner.proto == _ESP:
        return result(IPSEC)
    inner_pods = (plan.pod_owner(inner.src) is not None) + (plan.pod_owner(inner.dst) is not None)
    if inner_pods:
        return result(PLAINTEXT_POD if inner_pods == 2 else PLAINTEXT_HOST, _flow(frame, inner), via)
    return result(VXLAN_OTHER)
