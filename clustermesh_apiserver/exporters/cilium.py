"""Exporters of Cilium's CRDs: CiliumNode -> nodes, CiliumIdentity -> identities,
CiliumEndpoint or CiliumEndpointSlice -> ip (Cilium's ``clustermesh-apiserver`` synchronizers).

Identities and endpoints are exported only from global namespaces; an object whose namespace does
not exist yet is kept pending and re-evaluated when the namespace appears, and every object of a
namespace is re-evaluated when it flips between global and local.
"""

from __future__ import annotations

from clustermesh_apiserver.converters import (
    cilium_endpoint_owner,
    cilium_endpoint_slice_namespace,
    cilium_endpoint_slice_owner,
    cilium_endpoint_slice_to_pairs,
    cilium_endpoint_to_pairs,
    cilium_identity_to_labels,
    cilium_node_to_node,
    identity_namespace,
    ipcache_tracker,
)
from clustermesh_apiserver.exporters.base import ExportSettings, KeyStore, KubeObject, Namespaces, ObjKey, obj_key
from meshcore.log import get_logger


class CiliumNodeExporter:
    """CiliumNode -> ``cilium/state/nodes/v1/<cluster>/<name>``."""

    def __init__(self, store: KeyStore, settings: ExportSettings) -> None:
        self._store = store
        self._settings = settings

    def upsert(self, obj: KubeObject) -> None:
        node = cilium_node_to_node(obj, cluster=self._settings.cluster, cluster_id=self._settings.cluster_id)
        self._store.upsert(node.name, node.encode())

    def delete(self, obj: KubeObject) -> None:
        self._store.delete(obj_key(obj)[1])


class _NamespacedExporter:
    """Cilium's ``RegisterSynchronizer`` loop for one namespace-filtered kind."""

    def __init__(self, namespaces: Namespaces) -> None:
        self._namespaces = namespaces
        self._objects: dict[ObjKey, KubeObject] = {}
        self._by_namespace: dict[str, set[ObjKey]] = {}
        namespaces.subscribe(self.namespace_changed)

    def _namespace_of(self, obj: KubeObject) -> str:
        raise NotImplementedError

    def _convert(self, obj: KubeObject, *, deleted: bool) -> None:
        raise NotImplementedError

    def upsert(self, obj: KubeObject) -> None:
        key = obj_key(obj)
        self._forget(key)
        self._objects[key] = obj
        namespace = self._namespace_of(obj)
        self._by_namespace.setdefault(namespace, set()).add(key)
        if not namespace:
            return  # Cilium logs and skips objects it cannot place in a namespace
        is_global = self._namespaces.is_global(namespace)
        if is_global is None:
            return  # pending: re-evaluated once the namespace exists
        self._convert(obj, deleted=not is_global)

    def delete(self, obj: KubeObject) -> None:
        key = obj_key(obj)
        known = self._forget(key)
        self._convert(known if known is not None else obj, deleted=True)

    def namespace_changed(self, namespace: str) -> None:
        is_global = self._namespaces.is_global(namespace)
        for key in sorted(self._by_namespace.get(namespace, ())):
            self._convert(self._objects[key], deleted=not is_global)

    def _forget(self, key: ObjKey) -> KubeObject | None:
        old = self._objects.pop(key, None)
        if old is not None:
            members = self._by_namespace.get(self._namespace_of(old))
            if members is not None:
                members.discard(key)
        return old

    def __len__(self) -> int:
        return len(self._objects)


class CiliumIdentityExporter(_NamespacedExporter):
    """CiliumIdentity -> ``cilium/state/identities/v1/id/<id>`` (the sorted label string)."""

    def __init__(self, store: KeyStore, namespaces: Namespaces) -> None:
        super().__init__(namespaces)
        self._store = store

    def _namespace_of(self, obj: KubeObject) -> str:
        return identity_namespace(obj)

    def _convert(self, obj: KubeObject, *, deleted: bool) -> None:
        name = obj_key(obj)[1]
        if deleted:
            self._store.delete(name)
            return
        converted = cilium_identity_to_labels(obj)
        if converted is None:
            self._store.delete(name)  # no longer exportable (e.g. its labels were removed)
            return
        self._store.upsert(str(converted[0]), converted[1].encode())


class CiliumEndpointExporter(_NamespacedExporter):
    """CiliumEndpoint (or, with ``slices``, CiliumEndpointSlice) -> ``cilium/state/ip/v1/default/<ip>``.

    When several endpoints claim one IP the first keeps the key and the others queue behind it
    (:mod:`clustermesh_apiserver.converters.ownership`).
    """

    def __init__(self, store: KeyStore, namespaces: Namespaces, *, slices: bool) -> None:
        super().__init__(namespaces)
        self._store = store
        self._slices = slices
        self.tracker = ipcache_tracker()
        self._log = get_logger(__name__, kind="CiliumEndpointSlice" if slices else "CiliumEndpoint")

    def _namespace_of(self, obj: KubeObject) -> str:
        return cilium_endpoint_slice_namespace(obj) if self._slices else obj_key(obj)[0]

    def _convert(self, obj: KubeObject, *, deleted: bool) -> None:
        if self._slices:
            owner = cilium_endpoint_slice_owner(obj)
            changes = self.tracker.delete(owner) if deleted else self.tracker.upsert(
                owner, cilium_endpoint_slice_to_pairs(obj)
            )
        else:
            owner = cilium_endpoint_owner(obj)
            changes = self.tracker.delete(owner) if deleted else self.tracker.upsert(
                owner, cilium_endpoint_to_pairs(obj)
            )
        for pair in changes.upserts:
            self._store.upsert(pair.prefix_string(), pair.encode())
        for name in changes.deletes:
            self._store.delete(name)
