"""``identity.IPIdentityPair`` (``cilium/state/ip/v1/default/<ip>``), reference §1.8.

Field order and omitempty follow the newest fixtures (ciliumendpoints.txtar): ``Mask`` is
omitempty (older writers printed ``"Mask": null``, which still decodes to ``None``) and
``K8sPodUID`` sits between ``K8sPodName`` and ``K8sServiceAccount``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from meshcore.errors import WireError
from meshcore.wire._codec import Uint8, Uint16, Uint32, check_ip, check_mask, decode_as, ip_for_encode
from meshcore.wire.gojson import go_marshal
from meshcore.wire.netaddr import canonical_ip, mask_ones

__all__ = ["NamedPort", "IPIdentityPair", "decode_ip_identity", "encode_ip_identity"]


class NamedPort(msgspec.Struct, frozen=True):
    """A named container port of the endpoint."""

    name: str = msgspec.field(default="", name="Name")
    port: Uint16 = msgspec.field(default=0, name="Port")
    protocol: str = msgspec.field(default="", name="Protocol")


class IPIdentityPair(msgspec.Struct, frozen=True):
    """An ipcache entry: an IP (or CIDR when ``mask`` is set) and its security identity."""

    ip: str = msgspec.field(default="", name="IP")
    mask: bytes | None = msgspec.field(default=None, name="Mask")
    host_ip: str = msgspec.field(default="", name="HostIP")
    id: Uint32 = msgspec.field(default=0, name="ID")
    key: Uint8 = msgspec.field(default=0, name="Key")
    metadata: str = msgspec.field(default="", name="Metadata")
    k8s_namespace: str = msgspec.field(default="", name="K8sNamespace")
    k8s_pod_name: str = msgspec.field(default="", name="K8sPodName")
    k8s_pod_uid: str = msgspec.field(default="", name="K8sPodUID")
    k8s_service_account: str = msgspec.field(default="", name="K8sServiceAccount")
    named_ports: list[NamedPort] | None = msgspec.field(default=None, name="NamedPorts")

    def is_host(self) -> bool:
        """True for a host entry (no mask), false for a CIDR entry."""
        return self.mask is None

    def prefix_string(self) -> str:
        """Go's ``PrefixString``: the IP text, plus ``/<ones>`` when a mask is set. This is the
        key suffix under ``cilium/state/ip/v1/default/``."""
        ip = canonical_ip(self.ip)
        if self.mask is None:
            return ip
        ones = mask_ones(self.mask)
        return f"{ip}/{ones if ones is not None else 0}"

    def encode(self) -> bytes:
        """Cilium's exact JSON bytes for this entry."""
        return encode_ip_identity(self)

    @classmethod
    def decode(cls, data: bytes | str, *, key: str | None = None) -> IPIdentityPair:
        """Strictly decode an ipcache value (see :func:`decode_ip_identity`)."""
        return decode_ip_identity(data, key=key)


def decode_ip_identity(data: bytes | str, *, key: str | None = None) -> IPIdentityPair:
    """Decode and validate an ipcache value; errors are :class:`WireError` naming the field
    and ``key``. IPs are canonicalised; a mask must be a 4- or 16-byte prefix mask."""
    pair = decode_as(IPIdentityPair, data, key)
    check_ip(pair, "ip", "IP", key)
    check_mask(pair.mask, "Mask", key)
    check_ip(pair, "host_ip", "HostIP", key)
    return pair


def encode_ip_identity(pair: IPIdentityPair) -> bytes:
    """Encode exactly as the newest Cilium's ``json.Marshal(identity.IPIdentityPair)``."""
    if not isinstance(pair, IPIdentityPair):
        raise WireError(f"expected an IPIdentityPair, got {type(pair).__name__}")
    obj: dict[str, Any] = {"IP": ip_for_encode(pair.ip, "IP")}
    if pair.mask:
        obj["Mask"] = pair.mask
    obj["HostIP"] = ip_for_encode(pair.host_ip, "HostIP")
    obj["ID"] = pair.id
    obj["Key"] = pair.key
    obj["Metadata"] = pair.metadata
    if pair.k8s_namespace:
        obj["K8sNamespace"] = pair.k8s_namespace
    if pair.k8s_pod_name:
        obj["K8sPodName"] = pair.k8s_pod_name
    if pair.k8s_pod_uid:
        obj["K8sPodUID"] = pair.k8s_pod_uid
    if pair.k8s_service_account:
        obj["K8sServiceAccount"] = pair.k8s_service_account
    if pair.named_ports:
        obj["NamedPorts"] = pair.named_ports
    return go_marshal(obj)
