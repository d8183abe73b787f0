"""Exporters of kubernetes mode (clusters without Cilium): core Node -> nodes, Pod -> identities
and ip, with identities allocated here (:class:`~clustermesh_apiserver.converters.IdentityAllocator`).

A pod's identity is the ID of its label set (pod labels, namespace labels, namespace, service
account, cluster); IDs are reference-counted by the pods using them and released with the last
one. The ipcache ``HostIP`` of a pod is its node's InternalIP (``status.hostIP`` until the Node is
known), and every pod of a node is re-evaluated when that IP changes.
"""

from __future__ import annotations

from collections.abc import Callable

from clustermesh_apiserver.converters import (
    IdentityAllocator,
    ipcache_tracker,
    node_to_node,
    pod_identity_labels,
    pod_to_pairs,
)
from clustermesh_apiserver.converters._k8s import as_list, as_map, as_str, parse_ip
from clustermesh_apiserver.converters.kubernetes import pod_is_exported
from clustermesh_apiserver.exporters.base import ExportSettings, KeyStore, KubeObject, Namespaces, ObjKey, obj_key
from meshcore.errors import WireError
from meshcore.log import get_logger
from meshcore.wire.identity import LabelSet
from meshcore.wire.ipidentity import IPIdentityPair


def node_internal_ip(node: KubeObject) -> str:
    """The node's first InternalIP (IPv4 preferred), ``""`` if it has none."""
    found = []
    for entry in map(as_map, as_list(as_map(node.get("status")).get("addresses"))):
        if as_str(entry.get("type")) == "InternalIP":
            ip = parse_ip(entry.get("address"))
            if ip is not None:
                found.append(ip)
    v4 = [ip for ip in found if ":" not in ip]
    return (v4 or found or [""])[0]


class KubernetesNodeExporter:
    """Node -> ``cilium/state/nodes/v1/<cluster>/<name>``; tells subscribers when a node's IP changes."""

    def __init__(self, store: KeyStore, settings: ExportSettings) -> None:
        self._store = store
        self._settings = settings
        self._ips: dict[str, str] = {}
        self._subscribers: list[Callable[[str], None]] = []

    def subscribe(self, callback: Callable[[str], None]) -> None:
        self._subscribers.append(callback)

    def internal_ip(self, name: str) -> str | None:
        return self._ips.get(name)

    def upsert(self, obj: KubeObject) -> None:
        node = node_to_node(obj, cluster=self._settings.cluster, cluster_id=self._settings.cluster_id)
        self._store.upsert(node.name, node.encode())
        ip = node_internal_ip(obj)
        if self._ips.get(node.name) != ip:
            self._ips[node.name] = ip
            self._changed(node.name)

    def delete(self, obj: KubeObject) -> None:
        name = obj_key(obj)[1]
        self._store.delete(name)
        if self._ips.pop(name, None) is not None:
            self._changed(name)

    def _changed(self, name: str) -> None:
        for callback in self._subscribers:
            callback(name)


class PodExporter:
    """Pods -> ``identities/v1/id/<id>`` (allocated here) and ``ip/v1/default/<ip>``."""

    def __init__(
        self,
        identities: KeyStore,
        ip: KeyStore,
        namespaces: Namespaces,
        nodes: KubernetesNodeExporter,
        settings: ExportSettings,
        allocator: IdentityAllocator,
    ) -> None:
        self._identities = identities
        self._ip = ip
        self._namespaces = namespaces
        self._nodes = nodes
        self._settings = settings
        self.allocator = allocator
        self.tracker = ipcache_tracker()
        self._pods: dict[ObjKey, KubeObject] = {}
        self._identity_of: dict[ObjKey, int] = {}
        self._users: dict[int, set[ObjKey]] = {}
        self.allocation_changes = 0  # bumped on every allocation or release (for persistence)
        self._log = get_logger(__name__)
        namespaces.subscribe(self.namespace_changed)
        nodes.subscribe(self.node_changed)

    def upsert(self, obj: KubeObject) -> None:
        key = obj_key(obj)
        self._pods[key] = obj
        self._sync(key)

    def delete(self, obj: KubeObject) -> None:
        key = obj_key(obj)
        self._pods.pop(key, None)
        self._unexport(key)

    def namespace_changed(self, namespace: str) -> None:
        for key in sorted(k for k in self._pods if k[0] == namespace):
            self._sync(key)

    def node_changed(self, node: str) -> None:
        for key in sorted(k for k, pod in self._pods.items() if _node_name(pod) == node):
            self._sync(key)

    def release_unused(self) -> list[int]:
        """Release allocations no pod uses (those carried over from a previous run); call after
        the initial sync of pods. Returns the released IDs (their etcd keys are deleted too)."""
        released = []
        for labels, ident in list(self.allocator.allocations().items()):
            if not self._users.get(ident):
                self.allocator.release(labels)
                self._identities.delete(str(ident))
                released.append(ident)
        if released:
            self.allocation_changes += 1
        return released

    def _sync(self, key: ObjKey) -> None:
        pod = self._pods[key]
        namespace = self._namespaces.get(key[0])
        if namespace is None:
            return  # pending: re-evaluated once the namespace exists
        if not self._namespaces.is_global(key[0]) or not pod_is_exported(pod):
            self._unexport(key)
            return
        labels = pod_identity_labels(pod, namespace, cluster=self._settings.cluster)
        try:
            ident = self._use_identity(key, labels)
        except WireError as err:
            self._log.error("cannot allocate an identity for pod", pod=f"{key[0]}/{key[1]}", error=str(err))
            self._unexport(key)
            return
        node = _node_name(pod)
        host_ip = (self._nodes.internal_ip(node) if node else None) or as_str(as_map(pod.get("status")).get("hostIP"))
        changes = self.tracker.upsert(key, pod_to_pairs(pod, ident, host_ip=host_ip))
        self._apply(changes.upserts, changes.deletes)

    def _use_identity(self, key: ObjKey, labels: LabelSet) -> int:
        ident, new = self.allocator.allocate(labels)
        if new:
            self.allocation_changes += 1
        previous = self._identity_of.get(key)
        if previous != ident:
            if previous is not None:
                self._drop_user(key, previous)
            self._identity_of[key] = ident
            users = self._users.setdefault(ident, set())
            if not users:
                self._identities.upsert(str(ident), labels.encode())
            users.add(key)
        return ident

    def _unexport(self, key: ObjKey) -> None:
        changes = self.tracker.delete(key)
        self._apply(changes.upserts, changes.deletes)
        previous = self._identity_of.pop(key, None)
        if previous is not None:
            self._drop_user(key, previous)

    def _drop_user(self, key: ObjKey, ident: int) -> None:
        users = self._users.get(ident)
        if users is None:
            return
        users.discard(key)
        if not users:
            del self._users[ident]
            self.allocator.release(ident)
            self.allocation_changes += 1
            self._identities.delete(str(ident))

    def _apply(self, upserts: tuple[IPIdentityPair, ...], deletes: tuple[str, ...]) -> None:
        for pair in upserts:
            self._ip.upsert(pair.prefix_string(), pair.encode())
        for name in deletes:
            self._ip.delete(name)


def _node_name(pod: KubeObject) -> str:
    return as_str(as_map(pod.get("spec")).get("nodeName"))
