"""Tolerant accessors for Kubernetes objects given as plain dicts (parsed JSON/YAML).

Kubernetes objects arrive as the API returns them; optional fields may be missing or ``null``.
These helpers return Go zero values for missing data, as the typed Go clients Cilium uses do,
and never raise on a wrongly-typed field (it reads as missing).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from meshcore.wire.netaddr import canonical_ip
from meshcore.wire.node import CIDR

__all__ = [
    "KubeObject",
    "as_map",
    "as_list",
    "as_str",
    "as_int",
    "str_map",
    "metadata",
    "name_of",
    "namespace_of",
    "labels_of",
    "annotations_of",
    "parse_ip",
    "parse_v4",
    "parse_v6",
    "parse_cidr",
    "parse_time",
]

KubeObject = Mapping[str, Any]
"""A Kubernetes object (or sub-object) as a parsed JSON/YAML mapping."""

_EMPTY: Mapping[str, Any] = {}


def as_map(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else an empty mapping."""
    return value if isinstance(value, Mapping) else _EMPTY


def as_list(value: Any) -> list[Any]:
    """``value`` if it is a list, else an empty list."""
    return value if isinstance(value, list) else []


def as_str(value: Any) -> str:
    """``value`` as text: strings verbatim, numbers in decimal, anything else ``""``."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    return ""


def as_int(value: Any) -> int:
    """``value`` as an integer (decimal strings accepted), else 0."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 10)
        except ValueError:
            return 0
    return 0


def str_map(value: Any) -> dict[str, str] | None:
    """A ``map[string]string``: ``None`` (Go nil) when absent, else keys and values as text.
    YAML scalars such as ``true`` or ``42`` are rendered back to their text form."""
    if not isinstance(value, Mapping):
        return None
    out: dict[str, str] = {}
    for k, v in value.items():
        if isinstance(v, bool):
            text = "true" if v else "false"
        elif v is None:
            text = ""
        else:
            text = str(v)
        out[str(k)] = text
    return out


def metadata(obj: KubeObject) -> Mapping[str, Any]:
    """``obj.metadata`` (empty when missing)."""
    return as_map(obj.get("metadata"))


def name_of(obj: KubeObject) -> str:
    """``metadata.name``."""
    return as_str(metadata(obj).get("name"))


def namespace_of(obj: KubeObject) -> str:
    """``metadata.namespace`` (``""`` for cluster-scoped objects)."""
    return as_str(metadata(obj).get("namespace"))


def labels_of(obj: KubeObject) -> dict[str, str] | None:
    """``metadata.labels`` (``None`` when absent)."""
    return str_map(metadata(obj).get("labels"))


def annotations_of(obj: KubeObject) -> dict[str, str] | None:
    """``metadata.annotations`` (``None`` when absent)."""
    return str_map(metadata(obj).get("annotations"))


def parse_ip(text: Any) -> str | None:
    """Go's ``net.ParseIP(text).String()``, or ``None`` when ``text`` is not an IP."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return canonical_ip(text)
    except ValueError:
        return None


def parse_v4(text: Any) -> str | None:
    """The address if ``text`` is an IPv4 (or IPv4-mapped) address, else ``None``."""
    ip = parse_ip(text)
    return ip if ip is not None and ":" not in ip else None


def parse_v6(text: Any) -> str | None:
    """The address if ``text`` is a (non IPv4-mapped) IPv6 address, else ``None``."""
    ip = parse_ip(text)
    return ip if ip is not None and ":" in ip else None


def parse_cidr(text: Any) -> CIDR | None:
    """Go's ``cidr.ParseCIDR``: the network (host bits cleared) and its mask, or ``None``."""
    if not isinstance(text, str) or "/" not in text:
        return None
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    return CIDR(ip=str(net.network_address), mask=net.netmask.packed)


def parse_time(value: Any) -> datetime | None:
    """A ``metav1.Time`` as found in an object (RFC 3339 text, or a datetime from YAML)."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
