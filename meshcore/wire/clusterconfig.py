"""``CiliumClusterConfig`` (``cilium/cluster-config/<cluster>``), reference §1.5."""

from __future__ import annotations

from typing import Any

import msgspec

from meshcore.errors import WireError
from meshcore.wire._codec import Uint32, decode_as
from meshcore.wire.gojson import go_marshal

__all__ = [
    "ENDPOINT_SLICES_EXPORT_MODES",
    "ClusterConfigCapabilities",
    "ClusterConfig",
    "decode_cluster_config",
    "encode_cluster_config",
]

ENDPOINT_SLICES_EXPORT_MODES = ("", "services-and-endpointslices", "endpointslices-only")
"""Known ``endpointSlicesExportMode`` values ([dev-only]; ``""`` means services only)."""


class ClusterConfigCapabilities(msgspec.Struct, frozen=True):
    """What the writer of a cluster config supports. Every field is omitempty;
    ``service_exports_enabled`` is a ``*bool`` where ``None`` (absent) means a pre-MCS-API writer."""

    synced_canaries: bool = msgspec.field(default=False, name="syncedCanaries")
    cached: bool = False
    max_connected_clusters: Uint32 = msgspec.field(default=0, name="maxConnectedClusters")
    service_exports_enabled: bool | None = msgspec.field(default=None, name="serviceExportsEnabled")
    endpoint_slices_export_mode: str = msgspec.field(default="", name="endpointSlicesExportMode")


class ClusterConfig(msgspec.Struct, frozen=True):
    """A cluster's published configuration: its ID and capabilities."""

    id: Uint32 = 0
    capabilities: ClusterConfigCapabilities = msgspec.field(default_factory=ClusterConfigCapabilities)

    def encode(self) -> bytes:
        """Cilium's exact JSON bytes for this config."""
        return encode_cluster_config(self)

    @classmethod
    def decode(cls, data: bytes | str, *, key: str | None = None) -> ClusterConfig:
        """Strictly decode a cluster config value (see :func:`decode_cluster_config`)."""
        return decode_cluster_config(data, key=key)


def decode_cluster_config(data: bytes | str, *, key: str | None = None) -> ClusterConfig:
    """Decode a cluster config value; errors are :class:`WireError` naming the field and
    ``key``. ``capabilities: null`` is accepted like Go (a struct ignores ``null``)."""
    raw = decode_as(_WireClusterConfig, data, key)
    caps = raw.capabilities if raw.capabilities is not None else ClusterConfigCapabilities()
    return ClusterConfig(id=raw.id, capabilities=caps)


class _WireClusterConfig(msgspec.Struct, frozen=True):
    id: Uint32 = 0
    capabilities: ClusterConfigCapabilities | None = None


def encode_cluster_config(config: ClusterConfig) -> bytes:
    """Encode exactly as Go's ``json.Marshal(types.CiliumClusterConfig)``. ``capabilities`` is a
    struct, which Go's omitempty never omits, so it is always written (``{}`` when empty)."""
    if not isinstance(config, ClusterConfig):
        raise WireError(f"expected a ClusterConfig, got {type(config).__name__}")
    c = config.capabilities
    caps: dict[str, Any] = {}
    if c.synced_canaries:
        caps["syncedCanaries"] = True
    if c.cached:
        caps["cached"] = True
    if c.max_connected_clusters:
        caps["maxConnectedClusters"] = c.max_connected_clusters
    if c.service_exports_enabled is not None:
        caps["serviceExportsEnabled"] = c.service_exports_enabled
    if c.endpoint_slices_export_mode:
        caps["endpointSlicesExportMode"] = c.endpoint_slices_export_mode
    obj: dict[str, Any] = {}
    if config.id:
        obj["id"] = config.id
    obj["capabilities"] = caps
    return go_marshal(obj)
