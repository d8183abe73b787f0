"""``ClusterService`` (``cilium/state/services/v1/<cluster>/<ns>/<name>``), reference §1.7.

Decoding follows Cilium's ``ClusterService.Unmarshal``, which starts from ``NewClusterService``:
a *missing* ``frontends``/``backends``/``hostnames``/``zones``/``labels``/``selector`` decodes to
an empty map (``{}``), while an explicit ``null`` decodes to ``None`` (Go nil, encoded ``null``).
Frontend and backend keys must parse as zone-less IPs and are kept verbatim, as Go keeps them.
"""

from __future__ import annotations

from typing import Any

import msgspec

from meshcore.errors import WireError
from meshcore.wire._codec import Uint16, Uint32, check_ip_key, decode_as, sorted_map
from meshcore.wire.gojson import go_marshal

__all__ = [
    "L4Addr",
    "PortConfiguration",
    "ForZone",
    "BackendZone",
    "ClusterService",
    "decode_service",
    "encode_service",
]


class L4Addr(msgspec.Struct, frozen=True):
    """``loadbalancer.L4Addr``: ``Protocol`` is TCP, UDP, SCTP or ANY."""

    protocol: str = msgspec.field(default="", name="Protocol")
    port: Uint16 = msgspec.field(default=0, name="Port")


PortConfiguration = dict[str, L4Addr | None]
"""Port name (``""`` for an unnamed port) to L4 address; a ``None`` value is a nil pointer."""


class ForZone(msgspec.Struct, frozen=True):
    """A zone that should consume a backend (topology hints)."""

    name: str = ""


class BackendZone(msgspec.Struct, frozen=True):
    """Where a backend lives and which zones should use it."""

    zone: str = ""
    for_zones: list[ForZone] | None = msgspec.field(default=None, name="forZones")


class ClusterService(msgspec.Struct, frozen=True):
    """A global service as one cluster exports it."""

    cluster: str = ""
    namespace: str = ""
    name: str = ""
    frontends: dict[str, PortConfiguration | None] | None = msgspec.field(default_factory=dict)
    backends: dict[str, PortConfiguration | None] | None = msgspec.field(default_factory=dict)
    hostnames: dict[str, str] | None = msgspec.field(default_factory=dict)
    zones: dict[str, BackendZone] | None = msgspec.field(default_factory=dict)
    labels: dict[str, str] | None = msgspec.field(default_factory=dict)
    selector: dict[str, str] | None = msgspec.field(default_factory=dict)
    include_external: bool = msgspec.field(default=False, name="includeExternal")
    shared: bool = False
    cluster_id: Uint32 = msgspec.field(default=0, name="clusterID")

    def key_name(self) -> str:
        """Go's ``GetKeyName``: ``<cluster>/<namespace>/<name>``."""
        return f"{self.cluster}/{self.namespace}/{self.name}"

    def namespaced_name(self) -> str:
        """``<namespace>/<name>``, what the key suffix after the cluster must equal."""
        return f"{self.namespace}/{self.name}"

    def encode(self) -> bytes:
        """Cilium's exact JSON bytes for this service."""
        return encode_service(self)

    @classmethod
    def decode(cls, data: bytes | str, *, key: str | None = None) -> ClusterService:
        """Strictly decode a service value (see :func:`decode_service`)."""
        return decode_service(data, key=key)


def decode_service(data: bytes | str, *, key: str | None = None) -> ClusterService:
    """Decode and validate a ClusterService value; errors are :class:`WireError` naming the
    field and ``key``."""
    svc = decode_as(ClusterService, data, key)
    for field in ("frontends", "backends", "zones"):
        mapping = getattr(svc, field)
        if mapping:
            for address in mapping:
                check_ip_key(address, f"{field}[{address!r}]", key)
    return svc


def _ports(config: PortConfiguration | None) -> dict[str, Any] | None:
    return sorted_map(config)


def _addr_map(mapping: dict[str, PortConfiguration | None] | None) -> dict[str, Any] | None:
    if mapping is None:
        return None
    return {k: _ports(v) for k, v in sorted(mapping.items())}


def encode_service(svc: ClusterService) -> bytes:
    """Encode exactly as Go's ``json.Marshal(store.ClusterService)``."""
    if not isinstance(svc, ClusterService):
        raise WireError(f"expected a ClusterService, got {type(svc).__name__}")
    obj: dict[str, Any] = {
        "cluster": svc.cluster,
        "namespace": svc.namespace,
        "name": svc.name,
        "frontends": _addr_map(svc.frontends),
        "backends": _addr_map(svc.backends),
    }
    if svc.hostnames:
        obj["hostnames"] = sorted_map(svc.hostnames)
    if svc.zones:
        obj["zones"] = sorted_map(svc.zones)
    obj["labels"] = sorted_map(svc.labels)
    obj["selector"] = sorted_map(svc.selector)
    obj["includeExternal"] = svc.include_external
    obj["shared"] = svc.shared
    obj["clusterID"] = svc.cluster_id
    return go_marshal(obj)
