"""Stateful, I/O-free event handlers that turn Kubernetes events into sync-store intents.

:class:`Exporters` is the one entry point: ``handle(kind, obj, deleted=...)`` for every event of
every watched kind, in any order. It owns the namespace index and routes each kind to its
exporter (:mod:`.cilium`, :mod:`.services`, :mod:`.kubernetes`), which write through the
:class:`~.base.KeyStore` of their prefix. Synced canaries, leases and etcd are the caller's job
(:mod:`clustermesh_apiserver.server`); the conformance corpus drives these same classes with an
in-memory store.
"""

from __future__ import annotations

from dataclasses import dataclass

from clustermesh_apiserver.converters import IdentityAllocator
from clustermesh_apiserver.exporters.base import ExportSettings, KeyStore, KubeObject, Namespaces, obj_key
from clustermesh_apiserver.exporters.cilium import CiliumEndpointExporter, CiliumIdentityExporter, CiliumNodeExporter
from clustermesh_apiserver.exporters.kubernetes import KubernetesNodeExporter, PodExporter, node_internal_ip
from clustermesh_apiserver.exporters.services import (
    SERVICE_EXPORT_CRD,
    ServiceExporter,
    ServiceExportExporter,
    ServiceIndex,
    crd_versions,
)

__all__ = [
    "SERVICE_EXPORT_CRD",
    "ExportSettings",
    "ExportStores",
    "Exporters",
    "KeyStore",
    "Namespaces",
    "crd_versions",
    "node_internal_ip",
    "obj_key",
]


@dataclass(frozen=True)
class ExportStores:
    """One key store per exported prefix (names are relative to the prefix)."""

    nodes: KeyStore  # cilium/state/nodes/v1/<cluster>
    identities: KeyStore  # cilium/state/identities/v1/id
    ip: KeyStore  # cilium/state/ip/v1/default
    services: KeyStore  # cilium/state/services/v1/<cluster>
    serviceexports: KeyStore  # cilium/state/serviceexports/v1/<cluster>


class Exporters:
    """Every exporter of one cluster, behind a single event entry point.

    ``allocator`` switches to kubernetes mode: core Nodes and Pods replace CiliumNodes,
    CiliumIdentities and CiliumEndpoints (which are then ignored).
    """

    def __init__(
        self, stores: ExportStores, settings: ExportSettings, *, allocator: IdentityAllocator | None = None
    ) -> None:
        self.settings = settings
        self.namespaces = Namespaces(default_global=settings.default_global)
        self.kubernetes_mode = allocator is not None
        self.cilium_nodes = CiliumNodeExporter(stores.nodes, settings)
        self.cilium_identities = CiliumIdentityExporter(stores.identities, self.namespaces)
        self.cilium_endpoints = CiliumEndpointExporter(
            stores.ip, self.namespaces, slices=settings.cilium_endpoint_slice
        )
        self.service_index = ServiceIndex()
        self.services = ServiceExporter(stores.services, self.namespaces, settings, self.service_index)
        self.service_exports = ServiceExportExporter(
            stores.serviceexports, self.namespaces, settings, self.service_index
        )
        self.nodes = KubernetesNodeExporter(stores.nodes, settings)
        self.pods: PodExporter | None = None
        if allocator is not None:
            self.pods = PodExporter(stores.identities, stores.ip, self.namespaces, self.nodes, settings, allocator)

    @property
    def endpoint_kind(self) -> str:
        """The kind the ip prefix is exported from in cilium mode."""
        return "CiliumEndpointSlice" if self.settings.cilium_endpoint_slice else "CiliumEndpoint"

    def handle(self, kind: str, obj: KubeObject, *, deleted: bool) -> None:
        """Apply one Kubernetes event (``deleted`` for a delete, else an add or update)."""
        if kind == "Namespace":
            (self.namespaces.delete if deleted else self.namespaces.upsert)(obj)
        elif kind == "Service":
            (self.services.delete if deleted else self.services.upsert)(obj)
            self.service_exports.service_changed(obj_key(obj))
        elif kind == "EndpointSlice":
            (self.services.slice_delete if deleted else self.services.slice_upsert)(obj)
        elif kind == "ServiceExport":
            (self.service_exports.delete if deleted else self.service_exports.upsert)(obj)
        elif kind == "CustomResourceDefinition":
            (self.service_exports.crd_delete if deleted else self.service_exports.crd_upsert)(obj)
        elif self.pods is not None:
            if kind == "Node":
                (self.nodes.delete if deleted else self.nodes.upsert)(obj)
            elif kind == "Pod":
                (self.pods.delete if deleted else self.pods.upsert)(obj)
        elif kind == "CiliumNode":
            (self.cilium_nodes.delete if deleted else self.cilium_nodes.upsert)(obj)
        elif kind == "CiliumIdentity":
            (self.cilium_identities.delete if deleted else self.cilium_identities.upsert)(obj)
        elif kind == self.endpoint_kind:
            (self.cilium_endpoints.delete if deleted else self.cilium_endpoints.upsert)(obj)
