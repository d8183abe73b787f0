"""Global namespaces (reference §2.3; Cilium's ``pkg/clustermesh/namespace``)."""

from __future__ import annotations

from clustermesh_apiserver.converters._k8s import KubeObject, annotations_of
from clustermesh_apiserver.converters.annotations import GLOBAL_NAMESPACE, get_annotation, is_true

__all__ = ["namespace_is_global"]


def namespace_is_global(namespace: KubeObject | None, *, default_global: bool) -> bool:
    """Mirror of Cilium's ``Manager.IsGlobalNamespaceByObject``.

    A missing namespace (``None``) is not global. The ``clustermesh.cilium.io/global``
    annotation, when present, decides (``"true"``, case-insensitive, means global; any other
    value means local); otherwise ``default_global`` (``--clustermesh-default-global-namespace``)
    applies. Callers that look a namespace up by name and do not find it should treat the
    object as pending (Cilium retries), not as deleted.
    """
    if namespace is None:
        return False
    value = get_annotation(annotations_of(namespace), GLOBAL_NAMESPACE)
    if value is not None:
        return is_true(value)
    return default_global
