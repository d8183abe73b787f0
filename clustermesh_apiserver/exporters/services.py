"""Exporters of Services: Service + EndpointSlices -> services, and (MCS-API) ServiceExport +
Service -> serviceexports, both only from global namespaces.

Cilium's operator service sync (``DefaultClusterServiceConverter``) and the apiserver's
``syncMCSAPIServiceSpec``. The MCS-API export runs only once the ServiceExport CRD serves
``multicluster.x-k8s.io/v1beta1`` (or another configured version); until then
:attr:`ServiceExportExporter.problem` says why.
"""

from __future__ import annotations

from clustermesh_apiserver.converters import service_export_to_spec, service_to_cluster_service
from clustermesh_apiserver.converters.service import endpoint_slice_service_name
from clustermesh_apiserver.exporters.base import ExportSettings, KeyStore, KubeObject, Namespaces, ObjKey, obj_key

SERVICE_EXPORT_CRD = "serviceexports.multicluster.x-k8s.io"


class ServiceIndex:
    """Services by ``(namespace, name)`` and EndpointSlices by the Service they belong to."""

    def __init__(self) -> None:
        self.services: dict[ObjKey, KubeObject] = {}
        self._slices: dict[ObjKey, KubeObject] = {}
        self._slices_of: dict[ObjKey, set[ObjKey]] = {}

    def slice_upsert(self, obj: KubeObject) -> ObjKey:
        """Record a slice; returns the Service it belongs to."""
        self.slice_delete(obj)
        key = obj_key(obj)
        owner = (key[0], endpoint_slice_service_name(obj))
        self._slices[key] = obj
        self._slices_of.setdefault(owner, set()).add(key)
        return owner

    def slice_delete(self, obj: KubeObject) -> ObjKey | None:
        """Forget a slice; returns the Service it belonged to."""
        key = obj_key(obj)
        old = self._slices.pop(key, None)
        if old is None:
            return None
        owner = (key[0], endpoint_slice_service_name(old))
        members = self._slices_of.get(owner)
        if members is not None:
            members.discard(key)
            if not members:
                del self._slices_of[owner]
        return owner

    def slices(self, service: ObjKey) -> list[KubeObject]:
        return [self._slices[k] for k in sorted(self._slices_of.get(service, ()))]

    def in_namespace(self, namespace: str) -> list[ObjKey]:
        return sorted(k for k in self.services if k[0] == namespace)


class ServiceExporter:
    """Global, shared Services with their EndpointSlice backends -> ``services/v1/<cluster>/<ns>/<name>``."""

    def __init__(self, store: KeyStore, namespaces: Namespaces, settings: ExportSettings, index: ServiceIndex) -> None:
        self._store = store
        self._namespaces = namespaces
        self._settings = settings
        self.index = index
        namespaces.subscribe(self.namespace_changed)

    def upsert(self, obj: KubeObject) -> None:
        key = obj_key(obj)
        self.index.services[key] = obj
        self.sync(key)

    def delete(self, obj: KubeObject) -> None:
        key = obj_key(obj)
        self.index.services.pop(key, None)
        self._store.delete(f"{key[0]}/{key[1]}")

    def slice_upsert(self, obj: KubeObject) -> None:
        previous = self.index.slice_delete(obj)
        owner = self.index.slice_upsert(obj)
        if previous is not None and previous != owner:
            self.sync(previous)
        self.sync(owner)

    def slice_delete(self, obj: KubeObject) -> None:
        owner = self.index.slice_delete(obj)
        if owner is not None:
            self.sync(owner)

    def namespace_changed(self, namespace: str) -> None:
        for key in self.index.in_namespace(namespace):
            self.sync(key)

    def sync(self, key: ObjKey) -> None:
        """Write or delete one Service's key from what is known now."""
        namespace, name = key
        service = self.index.services.get(key)
        if service is None:
            return
        cs = service_to_cluster_service(
            service, self.index.slices(key), cluster=self._settings.cluster, cluster_id=self._settings.cluster_id
        )
        if cs is None:
            self._store.delete(f"{namespace}/{name}")
            return
        is_global = self._namespaces.is_global(namespace)
        if is_global is None:
            return  # pending: re-evaluated once the namespace exists
        if not is_global:
            self._store.delete(f"{namespace}/{name}")
            return
        self._store.upsert(cs.namespaced_name(), cs.encode())


def crd_versions(crd: KubeObject) -> list[str]:
    """The served versions of a CustomResourceDefinition."""
    versions = (crd.get("spec") or {}).get("versions") or []
    return [str(v.get("name")) for v in versions if isinstance(v, dict) and v.get("served", True) is not False]


class ServiceExportExporter:
    """ServiceExport + its Service -> ``serviceexports/v1/<cluster>/<ns>/<name>`` (MCS-API).

    Feed it CustomResourceDefinition events (:meth:`crd_upsert`/:meth:`crd_delete`); once
    :attr:`crd_ready`, the owner calls :meth:`activate` and starts feeding ServiceExports.
    ServiceExports seen before activation are kept and exported on activation.
    """

    def __init__(self, store: KeyStore, namespaces: Namespaces, settings: ExportSettings, index: ServiceIndex) -> None:
        self._store = store
        self._namespaces = namespaces
        self._settings = settings
        self._index = index
        self._exports: dict[ObjKey, KubeObject] = {}
        self.active = False
        self.crd_served: list[str] = []
        namespaces.subscribe(self.namespace_changed)

    @property
    def crd_ready(self) -> bool:
        """The ServiceExport CRD serves a version this exporter reads."""
        return self.version is not None

    @property
    def version(self) -> str | None:
        """The preferred accepted ServiceExport version the CRD serves, if any."""
        for version in self._settings.serviceexport_versions:
            if version in self.crd_served:
                return version
        return None

    @property
    def problem(self) -> str:
        """Why the export cannot run yet (``""`` when it can, or when MCS-API is off)."""
        if not self._settings.mcs_api or self.crd_ready:
            return ""
        wanted = " or ".join(self._settings.serviceexport_versions)
        if not self.crd_served:
            return (
                f"CustomResourceDefinition {SERVICE_EXPORT_CRD} is missing; install the MCS-API CRDs "
                f"(serving {wanted}) or turn off --clustermesh-enable-mcs-api"
            )
        return (
            f"CustomResourceDefinition {SERVICE_EXPORT_CRD} serves {', '.join(self.crd_served)} but not "
            f"{wanted}; upgrade the MCS-API CRDs"
        )

    def crd_upsert(self, obj: KubeObject) -> None:
        if obj_key(obj)[1] == SERVICE_EXPORT_CRD:
            self.crd_served = crd_versions(obj)

    def crd_delete(self, obj: KubeObject) -> None:
        if obj_key(obj)[1] == SERVICE_EXPORT_CRD:
            self.crd_served = []

    def activate(self) -> None:
        """Start exporting (the CRD is ready): every ServiceExport known so far is synced."""
        if self.active:
            return
        self.active = True
        for key in sorted(self._exports):
            self.sync(key)

    def upsert(self, obj: KubeObject) -> None:
        key = obj_key(obj)
        self._exports[key] = obj
        self.sync(key)

    def delete(self, obj: KubeObject) -> None:
        key = obj_key(obj)
        self._exports.pop(key, None)
        self.sync(key)

    def service_changed(self, key: ObjKey) -> None:
        self.sync(key)

    def namespace_changed(self, namespace: str) -> None:
        for key in sorted(k for k in self._exports if k[0] == namespace):
            self.sync(key)

    def sync(self, key: ObjKey) -> None:
        """Cilium's ``syncMCSAPIServiceSpec`` for one namespace/name."""
        if not (self._settings.mcs_api and self.active):
            return
        namespace, name = key
        is_global = self._namespaces.is_global(namespace)
        if is_global is None:
            return  # pending: re-evaluated once the namespace exists
        service = self._index.services.get(key)
        export = self._exports.get(key)
        spec = None
        if is_global and service is not None and export is not None:
            spec = service_export_to_spec(export, service, cluster=self._settings.cluster)
        if spec is None:
            self._store.delete(f"{namespace}/{name}")
        else:
            self._store.upsert(f"{namespace}/{name}", spec.encode())
