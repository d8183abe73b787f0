"""``MCSAPIServiceSpec`` (``cilium/state/serviceexports/v1/<cluster>/<ns>/<name>``), §1.10.

Field order and omitempty come from the newest fixture (serviceexports.txtar): the writer no
longer emits the capitalised legacy ``Annotations``/``Labels`` copies. When decoding, those
legacy keys are still honoured as a fallback for empty ``annotations``/``labels``, as Cilium's
``Unmarshal`` does for older writers.

``exportCreationTimestamp`` is a ``metav1.Time``: RFC 3339 in UTC with whole seconds, ``null``
when unset (``None`` here). Decoding converts to UTC and drops sub-second precision, which is
what Go's re-marshalling does.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from meshcore.errors import WireError
from meshcore.wire._codec import Int32, decode_as, sorted_map
from meshcore.wire.gojson import go_marshal

__all__ = [
    "ServicePort",
    "ClientIPConfig",
    "SessionAffinityConfig",
    "MCSAPIServiceSpec",
    "decode_serviceexport",
    "encode_serviceexport",
    "format_timestamp",
]


class ServicePort(msgspec.Struct, frozen=True):
    """An MCS-API ``ServicePort``: ``name``/``protocol``/``appProtocol`` omitempty."""

    name: str = ""
    protocol: str = ""
    app_protocol: str | None = msgspec.field(default=None, name="appProtocol")
    port: Int32 = 0


class ClientIPConfig(msgspec.Struct, frozen=True):
    """``corev1.ClientIPConfig``."""

    timeout_seconds: Int32 | None = msgspec.field(default=None, name="timeoutSeconds")


class SessionAffinityConfig(msgspec.Struct, frozen=True):
    """``corev1.SessionAffinityConfig``."""

    client_ip: ClientIPConfig | None = msgspec.field(default=None, name="clientIP")


class MCSAPIServiceSpec(msgspec.Struct, frozen=True):
    """A Service exported through the Multi-Cluster Services API."""

    cluster: str = ""
    name: str = ""
    namespace: str = ""
    annotations: dict[str, str] | None = None
    labels: dict[str, str] | None = None
    export_creation_timestamp: datetime | None = msgspec.field(default=None, name="exportCreationTimestamp")
    ports: list[ServicePort] | None = None
    type: str = ""
    session_affinity: str = msgspec.field(default="", name="sessionAffinity")
    session_affinity_config: SessionAffinityConfig | None = msgspec.field(
        default=None, name="sessionAffinityConfig"
    )
    ip_families: list[str] | None = msgspec.field(default=None, name="ipFamilies")
    internal_traffic_policy: str | None = msgspec.field(default=None, name="internalTrafficPolicy")
    traffic_distribution: str | None = msgspec.field(default=None, name="trafficDistribution")

    def key_name(self) -> str:
        """Go's ``GetKeyName``: ``<cluster>/<namespace>/<name>``."""
        return f"{self.cluster}/{self.namespace}/{self.name}"

    def namespaced_name(self) -> str:
        """``<namespace>/<name>``, what the key suffix after the cluster must equal."""
        return f"{self.namespace}/{self.name}"

    def encode(self) -> bytes:
        """Cilium's exact JSON bytes for this export."""
        return encode_serviceexport(self)

    @classmethod
    def decode(cls, data: bytes | str, *, key: str | None = None) -> MCSAPIServiceSpec:
        """Strictly decode a service export value (see :func:`decode_serviceexport`)."""
        return decode_serviceexport(data, key=key)


class _Wire(MCSAPIServiceSpec, frozen=True):
    legacy_annotations: dict[str, str] | None = msgspec.field(default=None, name="Annotations")
    legacy_labels: dict[str, str] | None = msgspec.field(default=None, name="Labels")


_FIELDS = MCSAPIServiceSpec.__struct_fields__
_ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)


def _normalise_time(ts: datetime | None, key: str | None) -> datetime | None:
    if ts is None:
        return None
    if ts.tzinfo is None:
        raise WireError("timestamp needs a UTC offset (RFC 3339)", key=key, field="exportCreationTimestamp")
    ts = ts.astimezone(UTC).replace(microsecond=0)
    return None if ts == _ZERO_TIME else ts


def decode_serviceexport(data: bytes | str, *, key: str | None = None) -> MCSAPIServiceSpec:
    """Decode a service export value; errors are :class:`WireError` naming field and ``key``."""
    wire = decode_as(_Wire, data, key)
    values = {name: getattr(wire, name) for name in _FIELDS}
    if not values["annotations"]:
        values["annotations"] = wire.legacy_annotations or values["annotations"]
    if not values["labels"]:
        values["labels"] = wire.legacy_labels or values["labels"]
    values["export_creation_timestamp"] = _normalise_time(wire.export_creation_timestamp, key)
    return MCSAPIServiceSpec(**values)


def format_timestamp(ts: datetime | None) -> str | None:
    """``metav1.Time`` JSON text: ``YYYY-MM-DDTHH:MM:SSZ`` in UTC, ``None`` for unset."""
    if ts is None:
        return None
    if ts.tzinfo is None:
        raise WireError("timestamp must be timezone-aware", field="exportCreationTimestamp")
    ts = ts.astimezone(UTC)
    if ts.replace(microsecond=0) == _ZERO_TIME:
        return None
    # Not strftime: %Y does not zero-pad years below 1000, Go's layout does.
    return f"{ts.year:04d}-{ts.month:02d}-{ts.day:02d}T{ts.hour:02d}:{ts.minute:02d}:{ts.second:02d}Z"


def _port(p: ServicePort) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    if p.name:
        obj["name"] = p.name
    if p.protocol:
        obj["protocol"] = p.protocol
    if p.app_protocol is not None:
        obj["appProtocol"] = p.app_protocol
    obj["port"] = p.port
    return obj


def _affinity(cfg: SessionAffinityConfig) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    if cfg.client_ip is not None:
        inner: dict[str, Any] = {}
        if cfg.client_ip.timeout_seconds is not None:
            inner["timeoutSeconds"] = cfg.client_ip.timeout_seconds
        obj["clientIP"] = inner
    return obj


def encode_serviceexport(spec: MCSAPIServiceSpec) -> bytes:
    """Encode exactly as the newest Cilium's ``json.Marshal(MCSAPIServiceSpec)``."""
    if not isinstance(spec, MCSAPIServiceSpec):
        raise WireError(f"expected an MCSAPIServiceSpec, got {type(spec).__name__}")
    obj: dict[str, Any] = {"cluster": spec.cluster, "name": spec.name, "namespace": spec.namespace}
    if spec.annotations:
        obj["annotations"] = sorted_map(spec.annotations)
    if spec.labels:
        obj["labels"] = sorted_map(spec.labels)
    obj["exportCreationTimestamp"] = format_timestamp(spec.export_creation_timestamp)
    obj["ports"] = None if spec.ports is None else [_port(p) for p in spec.ports]
    obj["type"] = spec.type
    obj["sessionAffinity"] = spec.session_affinity
    if spec.session_affinity_config is not None:
        obj["sessionAffinityConfig"] = _affinity(spec.session_affinity_config)
    if spec.ip_families:
        obj["ipFamilies"] = spec.ip_families
    if spec.internal_traffic_policy is not None:
        obj["internalTrafficPolicy"] = spec.internal_traffic_policy
    if spec.traffic_distribution is not None:
        obj["trafficDistribution"] = spec.traffic_distribution
    return go_marshal(obj)
