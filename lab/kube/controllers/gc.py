"""Garbage collection: dependents whose owners are all gone, and pods bound to nodes that are gone.

Pure part: :func:`is_dangling` (every ``ownerReference`` names an owner kind this process watches and
no object with that uid exists; an owner of a kind it does not watch, or whose informer has not synced,
keeps the dependent) and :func:`orphaned_pod` (bound to a node that does not exist, like the PodGC
controller's ``gcOrphaned``). I/O part: :class:`GarbageCollector` confirms each verdict with a live GET of
the owner (or node) before deleting, so an informer lagging behind a fresh owner never costs a dependent;
deletes use ``propagationPolicy: Background`` and the dependent's uid as a precondition, and orphaned pods
are deleted with grace 0 (no node runtime is left to finish them). Deleting a Deployment thus removes its
ReplicaSets, then their Pods. Foreground and orphan propagation (finalizers) are not modelled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from lab.kube.controllers import objects as o
from lab.kube.controllers.actions import DAEMONSETS, DEPLOYMENTS, NODES, PODS, REPLICASETS, SERVICES, Delete
from lab.kube.controllers.client import KubeClient
from lab.kube.controllers.informer import Informer, ReconcileLoop
from meshcore.k8s.resource import ResourceRef
from meshcore.log import get_logger

Obj = dict[str, Any]
# owner_exists(group, kind, uid): True, False, or None when this process cannot tell.
OwnerExists = Callable[[str, str, str], bool | None]
OWNER_REFS: dict[tuple[str, str], ResourceRef] = {
    ("apps", "Deployment"): DEPLOYMENTS,
    ("apps", "ReplicaSet"): REPLICASETS,
    ("apps", "DaemonSet"): DAEMONSETS,
    ("", "Service"): SERVICES,
}


def api_group(api_version: str) -> str:
    """``apps/v1`` -> ``apps``; ``v1`` -> ``""``."""
    return api_version.rpartition("/")[0]


def is_dangling(obj: Mapping[str, Any], owner_exists: OwnerExists) -> bool:
    """Every owner reference points at an object known to be gone."""
    refs = o.owner_refs(obj)
    if not refs or o.is_terminating(obj):
        return False
    for ref in refs:
        exists = owner_exists(api_group(str(ref.get("apiVersion", ""))), str(ref.get("kind", "")),
                              str(ref.get("uid", "")))
        if exists is not False:
            return False
    return True


def orphaned_pod(pod: Mapping[str, Any], node_exists: Callable[[str], bool]) -> bool:
    """Bound to a node that does not exist."""
    node = o.spec(pod).get("nodeName")
    return bool(node) and not node_exists(str(node))


class GarbageCollector:
    """Deletes dangling ReplicaSets, Pods and EndpointSlices, and pods of vanished nodes."""

    def __init__(self, client: KubeClient, *, owners: Mapping[tuple[str, str], Informer],
                 dependents: Mapping[str, Informer], pods: Informer, nodes: Informer,
                 resync_period: float = 30.0) -> None:
        self._client = client
        self._owners = dict(owners)
        self._dependents = dict(dependents)  # plural -> informer
        self._pods = pods
        self._nodes = nodes
        self._log = get_logger(__name__)
        self.loop = ReconcileLoop("garbagecollector", self.reconcile, informers=[pods, nodes],
                                  all_keys=self._keys, resync_period=resync_period)
        for informer in self._owners.values():
            informer.add_handler(self._on_owner)
        for plural, informer in self._dependents.items():
            informer.add_handler(self._dependent_handler(plural))
        nodes.add_handler(self._on_node)

    # ----- keys: "<plural>|<namespace>/<name>" for dependents, "podgc|<namespace>/<name>" for pods -----

    def _keys(self) -> list[str]:
        keys = [f"{plural}|{o.key(obj)}" for plural, inf in self._dependents.items() for obj in inf.items()
                if o.owner_refs(obj)]
        keys += [f"podgc|{o.key(p)}" for p in self._pods.items() if o.spec(p).get("nodeName")]
        return keys

    def _dependent_handler(self, plural: str) -> Callable[[Obj | None, Obj | None], None]:
        def handle(old: Obj | None, new: Obj | None) -> None:
            if new is not None and o.owner_refs(new):
                self.loop.enqueue(f"{plural}|{o.key(new)}")
            if plural == PODS.plural and new is not None and orphaned_pod(new, self._node_cached):
                self.loop.enqueue(f"podgc|{o.key(new)}")
        return handle

    def _on_owner(self, old: Obj | None, new: Obj | None) -> None:
        if new is not None or old is None:
            return
        gone = o.uid(old)
        for plural, inf in self._dependents.items():
            for obj in inf.items(o.namespace(old) or None):
                if any(r.get("uid") == gone for r in o.owner_refs(obj)):
                    self.loop.enqueue(f"{plural}|{o.key(obj)}")

    def _on_node(self, old: Obj | None, new: Obj | None) -> None:
        if new is not None or old is None:
            return
        for p in self._pods.items():
            if o.spec(p).get("nodeName") == o.name(old):
                self.loop.enqueue(f"podgc|{o.key(p)}")

    def _node_cached(self, node: str) -> bool:
        return not self._nodes.synced.is_set() or self._nodes.get(None, node) is not None

    def owner_exists(self, group: str, kind: str, uid: str) -> bool | None:
        """What the caches say about an owner (None: not a kind watched here, or not synced yet)."""
        inf = self._owners.get((group, kind))
        if inf is None or not inf.synced.is_set():
            return None
        return inf.has_uid(uid)

    # ----- reconcile -----

    async def reconcile(self, key: str) -> float | None:
        plural, _, obj_key = key.partition("|")
        if plural == "podgc":
            await self._collect_orphaned_pod(obj_key)
            return None
        inf = self._dependents.get(plural)
        obj = inf.get_key(obj_key) if inf is not None else None
        if inf is None or obj is None or not is_dangling(obj, self.owner_exists):
            return None
        ns = o.namespace(obj)
        for ref in o.owner_refs(obj):  # confirm against the API: the caches may lag a fresh owner
            owner_ref = OWNER_REFS.get((api_group(str(ref.get("apiVersion", ""))), str(ref.get("kind"))))
            if owner_ref is None:
                return None
            live = await self._client.get(owner_ref, ns, str(ref.get("name", "")))
            if live is not None and o.uid(live) == ref.get("uid"):
                return None
        await self._client.apply(Delete(inf.ref, ns, o.name(obj), o.uid(obj), why="owner gone"))
        self._log.info("garbage collected", resource=plural, object=obj_key,
                       owners=[f"{r.get('kind')}/{r.get('name')}" for r in o.owner_refs(obj)])
        return None

    async def _collect_orphaned_pod(self, pod_key: str) -> None:
        pod = self._pods.get_key(pod_key)
        if pod is None or not orphaned_pod(pod, self._node_cached):
            return
        node = str(o.spec(pod).get("nodeName"))
        if await self._client.get(NODES, None, node) is not None:
            return
        await self._client.apply(Delete(PODS, o.namespace(pod), o.name(pod), o.uid(pod), grace_seconds=0,
                                        why="node gone"))
        self._log.info("orphaned pod deleted", pod=pod_key, node=node)
