"""ClusterMesh annotations on Services, Namespaces and Nodes (reference §5.1; Cilium's
``pkg/annotation/k8s.go`` and ``pkg/annotation/clustermesh.go``), plus this mesh's own
:data:`WIREGUARD_NEXT_PUB_KEY`.

Deliberately free of apiserver-specific imports so the agent can reuse it: every function takes
the object's annotations as a plain mapping (``metadata.annotations``; ``None`` when absent).
A primary annotation wins over its legacy alias; ``"true"`` is matched case-insensitively.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal

__all__ = [
    "GLOBAL_SERVICE",
    "GLOBAL_SERVICE_ALIAS",
    "SHARED_SERVICE",
    "SHARED_SERVICE_ALIAS",
    "SERVICE_AFFINITY",
    "SERVICE_AFFINITY_ALIAS",
    "GLOBAL_SYNC_ENDPOINT_SLICES",
    "GLOBAL_NAMESPACE",
    "WIREGUARD_PUB_KEY",
    "WIREGUARD_PUB_KEY_ALIAS",
    "WIREGUARD_NEXT_PUB_KEY",
    "ServiceAffinity",
    "get_annotation",
    "is_true",
    "is_global_service",
    "is_shared_service",
    "service_affinity",
]

GLOBAL_SERVICE: Final = "service.cilium.io/global"
GLOBAL_SERVICE_ALIAS: Final = "io.cilium/global-service"
SHARED_SERVICE: Final = "service.cilium.io/shared"
SHARED_SERVICE_ALIAS: Final = "io.cilium/shared-service"
SERVICE_AFFINITY: Final = "service.cilium.io/affinity"
SERVICE_AFFINITY_ALIAS: Final = "io.cilium/service-affinity"
GLOBAL_SYNC_ENDPOINT_SLICES: Final = "service.cilium.io/global-sync-endpoint-slices"
GLOBAL_NAMESPACE: Final = "clustermesh.cilium.io/global"
"""On a Namespace: ``"true"`` makes it global, any other value local (overrides the default)."""
WIREGUARD_PUB_KEY: Final = "network.cilium.io/wg-pub-key"
WIREGUARD_PUB_KEY_ALIAS: Final = "io.cilium.network.wg-pub-key"
WIREGUARD_NEXT_PUB_KEY: Final = "clustermesh.io/wg-next-pub-key"
"""Not Cilium's: on a Node/CiliumNode, the WireGuard public key the node rotates to, while it does
(the current one stays in :data:`WIREGUARD_PUB_KEY`). Exported in the node record's ``Annotations``."""

ServiceAffinity = Literal["", "local", "remote"]
"""``""`` is Cilium's ``ServiceAffinityNone``."""


def get_annotation(annotations: Mapping[str, Any] | None, *names: str) -> str | None:
    """Cilium's ``annotation.Get``: the value of the first of ``names`` present, else ``None``."""
    if not annotations:
        return None
    for name in names:
        if name in annotations:
            value = annotations[name]
            if isinstance(value, bool):  # an unquoted YAML true/false
                return "true" if value else "false"
            return value if isinstance(value, str) else ("" if value is None else str(value))
    return None


def is_true(value: str | None) -> bool:
    """``strings.ToLower(value) == "true"``."""
    return value is not None and value.lower() == "true"


def is_global_service(annotations: Mapping[str, Any] | None) -> bool:
    """Cilium's ``GetAnnotationIncludeExternal``: ``service.cilium.io/global`` (or
    ``io.cilium/global-service``) is ``"true"``: the Service includes remote backends."""
    return is_true(get_annotation(annotations, GLOBAL_SERVICE, GLOBAL_SERVICE_ALIAS))


def is_shared_service(annotations: Mapping[str, Any] | None) -> bool:
    """Cilium's ``GetAnnotationShared``: global, and ``service.cilium.io/shared`` (or
    ``io.cilium/shared-service``) absent or ``"true"``. Ignored (false) unless global."""
    if not is_global_service(annotations):
        return False
    value = get_annotation(annotations, SHARED_SERVICE, SHARED_SERVICE_ALIAS)
    return True if value is None else is_true(value)


def service_affinity(annotations: Mapping[str, Any] | None) -> ServiceAffinity:
    """Cilium's ``GetAnnotationServiceAffinity`` (lower-cased, ignored unless global), with
    the consumer's rule applied: any value other than ``local``/``remote`` means none (``""``)."""
    if not is_global_service(annotations):
        return ""
    value = (get_annotation(annotations, SERVICE_AFFINITY, SERVICE_AFFINITY_ALIAS) or "").lower()
    if value == "local":
        return "local"
    if value == "remote":
        return "remote"
    return ""
