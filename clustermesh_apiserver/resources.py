"""The Kubernetes resources the apiserver watches, by mode (reference §2.2)."""

from __future__ import annotations

from dataclasses import dataclass

from meshcore.k8s.resource import ResourceRef


@dataclass(frozen=True, slots=True)
class WatchSpec:
    """A watched resource and the kind name the exporters know it by."""

    kind: str
    ref: ResourceRef


NAMESPACES = WatchSpec("Namespace", ResourceRef("", "v1", "namespaces", namespaced=False))
SERVICES = WatchSpec("Service", ResourceRef("", "v1", "services", namespaced=True))
ENDPOINT_SLICES = WatchSpec("EndpointSlice", ResourceRef("discovery.k8s.io", "v1", "endpointslices", namespaced=True))
CILIUM_NODES = WatchSpec("CiliumNode", ResourceRef("cilium.io", "v2", "ciliumnodes", namespaced=False))
CILIUM_IDENTITIES = WatchSpec("CiliumIdentity", ResourceRef("cilium.io", "v2", "ciliumidentities", namespaced=False))
CILIUM_ENDPOINTS = WatchSpec("CiliumEndpoint", ResourceRef("cilium.io", "v2", "ciliumendpoints", namespaced=True))
CILIUM_ENDPOINT_SLICES = WatchSpec(
    "CiliumEndpointSlice", ResourceRef("cilium.io", "v2alpha1", "ciliumendpointslices", namespaced=False)
)
SERVICE_EXPORTS = WatchSpec(
    "ServiceExport", ResourceRef("multicluster.x-k8s.io", "v1beta1", "serviceexports", namespaced=True)
)


def service_exports(version: str) -> WatchSpec:
    """ServiceExports at ``version`` (``v1beta1`` for the newest Cilium)."""
    return WatchSpec("ServiceExport", ResourceRef("multicluster.x-k8s.io", version, "serviceexports", namespaced=True))


CRDS = WatchSpec(
    "CustomResourceDefinition",
    ResourceRef("apiextensions.k8s.io", "v1", "customresourcedefinitions", namespaced=False),
)
NODES = WatchSpec("Node", ResourceRef("", "v1", "nodes", namespaced=False))
PODS = WatchSpec("Pod", ResourceRef("", "v1", "pods", namespaced=True))
