"""``nodeTypes.Node`` (``cilium/state/nodes/v1/<cluster>/<name>``): Go field names, no tags,
nothing omitempty (reference §1.6, fixture ciliumnodes.txtar)."""

from __future__ import annotations

from typing import Any

import msgspec

from meshcore.errors import WireError
from meshcore.wire._codec import Uint8, Uint32, check_ip, check_mask, decode_as, ip_for_encode, sorted_map
from meshcore.wire.gojson import go_marshal
from meshcore.wire.netaddr import mask_ones

__all__ = ["NodeAddress", "CIDR", "Node", "decode_node", "encode_node"]


class NodeAddress(msgspec.Struct, frozen=True):
    """One node address: ``Type`` is InternalIP, ExternalIP, Hostname or CiliumInternalIP."""

    type: str = msgspec.field(default="", name="Type")
    ip: str = msgspec.field(default="", name="IP")


class CIDR(msgspec.Struct, frozen=True):
    """A ``*cidr.CIDR`` (an embedded ``net.IPNet``): ``{"IP": text, "Mask": base64}``."""

    ip: str = msgspec.field(default="", name="IP")
    mask: bytes | None = msgspec.field(default=None, name="Mask")

    def __str__(self) -> str:
        ones = mask_ones(self.mask) if self.mask is not None else None
        return f"{self.ip}/{ones}" if ones is not None else self.ip


class Node(msgspec.Struct, frozen=True):
    """A Cilium node as published to the kvstore. ``None`` is Go's nil (encoded ``null``),
    distinct from an empty map or list; an empty IP string is a nil ``net.IP``."""

    name: str = msgspec.field(default="", name="Name")
    cluster: str = msgspec.field(default="", name="Cluster")
    ip_addresses: list[NodeAddress] | None = msgspec.field(default=None, name="IPAddresses")
    ipv4_alloc_cidr: CIDR | None = msgspec.field(default=None, name="IPv4AllocCIDR")
    ipv4_secondary_alloc_cidrs: list[CIDR | None] | None = msgspec.field(
        default=None, name="IPv4SecondaryAllocCIDRs"
    )
    ipv6_alloc_cidr: CIDR | None = msgspec.field(default=None, name="IPv6AllocCIDR")
    ipv6_secondary_alloc_cidrs: list[CIDR | None] | None = msgspec.field(
        default=None, name="IPv6SecondaryAllocCIDRs"
    )
    ipv4_health_ip: str = msgspec.field(default="", name="IPv4HealthIP")
    ipv6_health_ip: str = msgspec.field(default="", name="IPv6HealthIP")
    ipv4_ingress_ip: str = msgspec.field(default="", name="IPv4IngressIP")
    ipv6_ingress_ip: str = msgspec.field(default="", name="IPv6IngressIP")
    cluster_id: Uint32 = msgspec.field(default=0, name="ClusterID")
    source: str = msgspec.field(default="", name="Source")
    encryption_key: Uint8 = msgspec.field(default=0, name="EncryptionKey")
    labels: dict[str, str] | None = msgspec.field(default=None, name="Labels")
    annotations: dict[str, str] | None = msgspec.field(default=None, name="Annotations")
    wireguard_pub_key: str = msgspec.field(default="", name="WireguardPubKey")
    boot_id: str = msgspec.field(default="", name="BootID")

    def key_name(self) -> str:
        """Go's ``GetKeyName``: ``<cluster>/<name>``, the key suffix under the nodes prefix."""
        return f"{self.cluster}/{self.name}"

    def encode(self) -> bytes:
        """Cilium's exact JSON bytes for this node."""
        return encode_node(self)

    @classmethod
    def decode(cls, data: bytes | str, *, key: str | None = None) -> Node:
        """Strictly decode a node value (see :func:`decode_node`)."""
        return decode_node(data, key=key)


_SINGLE_IPS = (
    ("ipv4_health_ip", "IPv4HealthIP"),
    ("ipv6_health_ip", "IPv6HealthIP"),
    ("ipv4_ingress_ip", "IPv4IngressIP"),
    ("ipv6_ingress_ip", "IPv6IngressIP"),
)


def _check_cidr(cidr: CIDR | None, field: str, key: str | None) -> None:
    if cidr is None:
        return
    check_ip(cidr, "ip", f"{field}.IP", key)
    check_mask(cidr.mask, f"{field}.Mask", key)


def decode_node(data: bytes | str, *, key: str | None = None) -> Node:
    """Decode and validate a node value. Missing fields take Go zero values, unknown fields are
    ignored, IPs are canonicalised; errors are :class:`WireError` naming field and ``key``."""
    node = decode_as(Node, data, key)
    if node.ip_addresses:
        for i, addr in enumerate(node.ip_addresses):
            check_ip(addr, "ip", f"IPAddresses[{i}].IP", key)
    _check_cidr(node.ipv4_alloc_cidr, "IPv4AllocCIDR", key)
    _check_cidr(node.ipv6_alloc_cidr, "IPv6AllocCIDR", key)
    for attr, field in (
        ("ipv4_secondary_alloc_cidrs", "IPv4SecondaryAllocCIDRs"),
        ("ipv6_secondary_alloc_cidrs", "IPv6SecondaryAllocCIDRs"),
    ):
        cidrs = getattr(node, attr)
        if cidrs:
            for i, cidr in enumerate(cidrs):
                _check_cidr(cidr, f"{field}[{i}]", key)
    for attr, field in _SINGLE_IPS:
        check_ip(node, attr, field, key)
    return node


def _cidr_obj(cidr: CIDR | None, field: str) -> dict[str, Any] | None:
    if cidr is None:
        return None
    return {"IP": ip_for_encode(cidr.ip, f"{field}.IP"), "Mask": cidr.mask}


def _cidrs_obj(cidrs: list[CIDR | None] | None, field: str) -> list[Any] | None:
    if cidrs is None:
        return None
    return [_cidr_obj(c, f"{field}[{i}]") for i, c in enumerate(cidrs)]


def encode_node(node: Node) -> bytes:
    """Encode exactly as Go's ``json.Marshal(nodeTypes.Node)``."""
    if not isinstance(node, Node):
        raise WireError(f"expected a Node, got {type(node).__name__}")
    addrs = None
    if node.ip_addresses is not None:
        addrs = [
            {"Type": a.type, "IP": ip_for_encode(a.ip, f"IPAddresses[{i}].IP")}
            for i, a in enumerate(node.ip_addresses)
        ]
    obj = {
        "Name": node.name,
        "Cluster": node.cluster,
        "IPAddresses": addrs,
        "IPv4AllocCIDR": _cidr_obj(node.ipv4_alloc_cidr, "IPv4AllocCIDR"),
        "IPv4SecondaryAllocCIDRs": _cidrs_obj(node.ipv4_secondary_alloc_cidrs, "IPv4SecondaryAllocCIDRs"),
        "IPv6AllocCIDR": _cidr_obj(node.ipv6_alloc_cidr, "IPv6AllocCIDR"),
        "IPv6SecondaryAllocCIDRs": _cidrs_obj(node.ipv6_secondary_alloc_cidrs, "IPv6SecondaryAllocCIDRs"),
        "IPv4HealthIP": ip_for_encode(node.ipv4_health_ip, "IPv4HealthIP"),
        "IPv6HealthIP": ip_for_encode(node.ipv6_health_ip, "IPv6HealthIP"),
        "IPv4IngressIP": ip_for_encode(node.ipv4_ingress_ip, "IPv4IngressIP"),
        "IPv6IngressIP": ip_for_encode(node.ipv6_ingress_ip, "IPv6IngressIP"),
        "ClusterID": node.cluster_id,
        "Source": node.source,
        "EncryptionKey": node.encryption_key,
        "Labels": sorted_map(node.labels),
        "Annotations": sorted_map(node.annotations),
        "WireguardPubKey": node.wireguard_pub_key,
        "BootID": node.boot_id,
    }
    return go_marshal(obj)
