"""The DaemonSet controller: one Pod per eligible Node, rolling updates, status.

Pure part: :func:`should_run` (the template's nodeSelector and required node affinity, and the node's
taints against the template's tolerations plus the ones the real controller adds: not-ready, unreachable,
unschedulable and friends, so a cordoned or not-ready node still gets its daemon) and :func:`plan_daemonset`
(pods to create per node, pods to delete: surplus, misplaced, failed, and old ones during a RollingUpdate
within ``maxUnavailable``, default 1). Pods are created with ``spec.nodeName`` set (no scheduler needed,
like DaemonSets before 1.12) and the node-affinity term the real controller puts there; their revision is
the ``controller-revision-hash`` label (:func:`objects.template_hash` of the template). Pods on nodes that
no longer exist are the pod garbage collector's (:mod:`lab.kube.controllers.gc`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lab.kube.controllers import objects as o
from lab.kube.controllers.actions import DAEMONSETS, PODS, Create, Delete, Patch
from lab.kube.controllers.client import KubeClient, RequestError
from lab.kube.controllers.informer import Expectations, Informer, ReconcileLoop
from lab.kube.controllers.replicaset import owner_keys, status_patch
from meshcore.log import get_logger

Obj = dict[str, Any]
HASH_LABEL = "controller-revision-hash"
GENERATION_LABEL = "pod-template-generation"
# Tolerations the DaemonSet controller adds to every daemon pod (util.AddOrUpdateDaemonPodTolerations).
DEFAULT_TOLERATIONS: tuple[Obj, ...] = (
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
)


def template_of(ds: Mapping[str, Any]) -> Obj:
    tpl = o.spec(ds).get("template")
    return tpl if isinstance(tpl, dict) else {}


def revision_hash(ds: Mapping[str, Any]) -> str:
    return o.template_hash(template_of(ds), int(o.status(ds).get("collisionCount") or 0))


def daemon_tolerations(pod_spec: Mapping[str, Any]) -> list[Obj]:
    """The template's tolerations plus the defaults it does not already have (by key and effect)."""
    tols = [dict(t) for t in pod_spec.get("tolerations") or [] if isinstance(t, dict)]
    have = {(t.get("key"), t.get("effect")) for t in tols}
    return tols + [dict(t) for t in DEFAULT_TOLERATIONS if (t["key"], t["effect"]) not in have]


def should_run(ds: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """Whether ``node`` should run a pod of ``ds`` (selectors, affinity, taints)."""
    pod_spec = o.spec(template_of(ds))
    if not o.node_matches_pod_selectors(pod_spec, node):
        return False
    return o.untolerated_taint(daemon_tolerations(pod_spec), node) is None


def daemon_pod(ds: Mapping[str, Any], node_name: str) -> Obj:
    """The pod of ``ds`` for ``node_name``: bound directly, with the real controller's affinity term."""
    tpl = o.deep_copy(template_of(ds))
    tmeta = tpl.get("metadata") or {}
    pod_spec: Obj = tpl.get("spec") or {}
    lbls = {**(tmeta.get("labels") or {}), HASH_LABEL: revision_hash(ds),
            GENERATION_LABEL: str(o.generation(ds) or 1)}
    md: Obj = {"generateName": f"{o.name(ds)}-", "namespace": o.namespace(ds), "labels": lbls,
               "ownerReferences": [o.owner_reference(ds, "apps/v1", "DaemonSet")]}
    if tmeta.get("annotations"):
        md["annotations"] = tmeta["annotations"]
    affinity = dict(pod_spec.get("affinity") or {})
    node_affinity = dict(affinity.get("nodeAffinity") or {})
    node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = {"nodeSelectorTerms": [{
        "matchFields": [{"key": "metadata.name", "operator": "In", "values": [node_name]}]}]}
    affinity["nodeAffinity"] = node_affinity
    pod_spec["affinity"] = affinity
    pod_spec["tolerations"] = daemon_tolerations(pod_spec)
    pod_spec["nodeName"] = node_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": md, "spec": pod_spec}


def max_unavailable(ds: Mapping[str, Any], desired: int) -> int:
    """``spec.updateStrategy.rollingUpdate.maxUnavailable`` (default 1; a percentage rounds up; at least 1)."""
    ru = (o.spec(ds).get("updateStrategy") or {}).get("rollingUpdate") or {}
    value = o.scaled_value(ru.get("maxUnavailable"), desired, round_up=True, default="1")
    return max(1, value)


def _is_updated(pod: Mapping[str, Any], pod_hash: str) -> bool:
    return o.labels(pod).get(HASH_LABEL) == pod_hash


@dataclass
class DaemonSetPlan:
    create: list[str] = field(default_factory=list)  # node names
    delete: list[Obj] = field(default_factory=list)
    status: Obj = field(default_factory=dict)
    requeue: float | None = None


def plan_daemonset(ds: Mapping[str, Any], nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]],
                   now: float) -> DaemonSetPlan:
    """One sync of ``ds`` given all Nodes and the Pods of its namespace."""
    plan = DaemonSetPlan()
    pod_hash = revision_hash(ds)
    min_ready = int(o.spec(ds).get("minReadySeconds") or 0)
    by_node: dict[str, list[Obj]] = {}
    for p in pods:
        if o.is_controlled_by(p, ds) and not o.is_terminating(p):
            by_node.setdefault(str(o.spec(p).get("nodeName") or ""), []).append(dict(p))
    for lst in by_node.values():
        lst.sort(key=lambda p: (o.created_at(p), o.name(p)))
    live = not o.is_terminating(ds)
    desired = current = ready = available = updated = misscheduled = 0
    eligible: list[str] = []
    waits: list[float] = []
    for node in sorted(nodes, key=o.name):
        node_name = o.name(node)
        node_pods = by_node.get(node_name, [])
        failed = [p for p in node_pods if o.phase(p) == "Failed"]
        running = [p for p in node_pods if o.phase(p) != "Failed"]
        if not should_run(ds, node):
            if node_pods:
                misscheduled += 1
                plan.delete.extend(node_pods)
            continue
        desired += 1
        eligible.append(node_name)
        plan.delete.extend(failed)
        if not running:
            plan.create.append(node_name)
            continue
        if len(running) > 1:  # keep the oldest updated pod (else the oldest), delete the rest
            keep = next((p for p in running if _is_updated(p, pod_hash)), running[0])
            plan.delete.extend(p for p in running if p is not keep)
            running = [keep]
        pod = running[0]
        current += 1
        if o.is_ready(pod):
            ready += 1
            if o.is_available(pod, min_ready, now):
                available += 1
            elif (w := o.available_in(pod, min_ready, now)) is not None:
                waits.append(w)
        if _is_updated(pod, pod_hash):
            updated += 1
    # Pods not bound to any known node (nodeName empty) are misplaced too.
    plan.delete.extend(by_node.get("", []))

    strategy = (o.spec(ds).get("updateStrategy") or {}).get("type") or "RollingUpdate"
    if strategy == "RollingUpdate" and live:
        plan.delete.extend(_rolling_deletes(ds, eligible, by_node, pod_hash, desired, min_ready, now,
                                            already={o.uid(p) for p in plan.delete}))
    if not live:
        plan.create = []
        plan.delete = []
    plan.status = {
        "desiredNumberScheduled": desired,
        "currentNumberScheduled": current,
        "numberMisscheduled": misscheduled,
        "numberReady": ready,
        "updatedNumberScheduled": updated,
        "numberAvailable": available,
        "numberUnavailable": desired - available,
        "observedGeneration": o.generation(ds),
    }
    plan.requeue = min(waits) + 0.1 if waits else None
    return plan


def _rolling_deletes(ds: Mapping[str, Any], eligible: list[str], by_node: Mapping[str, list[Obj]], pod_hash: str,
                     desired: int, min_ready: int, now: float, *, already: set[str]) -> list[Obj]:
    """Old pods to delete now (``rollingUpdate`` with maxSurge 0): unavailable old pods at once, available
    ones while fewer than ``maxUnavailable`` nodes are without an available pod (nodes whose old pod is
    broken count as such, so a healthy pod never goes while the budget is used up)."""
    budget = max_unavailable(ds, desired)
    unavailable = 0
    replace: list[Obj] = []
    candidates: list[Obj] = []
    for node_name in eligible:
        node_pods = [p for p in by_node.get(node_name, []) if o.phase(p) != "Failed" and o.uid(p) not in already]
        new = [p for p in node_pods if _is_updated(p, pod_hash)]
        old = [p for p in node_pods if not _is_updated(p, pod_hash)]
        if (not new and not old) or (new and old) or len(new) > 1 or len(old) > 1:
            unavailable += 1  # being created or cleaned up by the manage step
        elif new:
            if not o.is_available(new[0], min_ready, now):
                unavailable += 1
        elif not o.is_available(old[0], min_ready, now):
            replace.append(old[0])  # broken anyway: replace now, and count it (upstream does not)
            unavailable += 1
        else:
            candidates.append(old[0])
    room = max(0, budget - unavailable)
    return replace + candidates[:room]


class DaemonSetController:
    """Reconciles DaemonSets against Nodes and their Pods."""

    def __init__(self, client: KubeClient, daemonsets: Informer, nodes: Informer, pods: Informer, *,
                 clock: Callable[[], float] = time.time, resync_period: float = 30.0) -> None:
        self._client = client
        self._ds = daemonsets
        self._nodes = nodes
        self._pods = pods
        self._clock = clock
        self._expect = Expectations()
        self._log = get_logger(__name__)
        self.loop = ReconcileLoop("daemonset", self.reconcile, informers=[daemonsets, nodes, pods],
                                  all_keys=daemonsets.keys, resync_period=resync_period)
        daemonsets.add_handler(lambda old, new: self.loop.enqueue(o.key(new or old or {})))
        nodes.add_handler(self._on_node)
        pods.add_handler(self._on_pod)

    def _on_node(self, old: Obj | None, new: Obj | None) -> None:
        if old is not None and new is not None and (o.labels(old), o.spec(old).get("taints")) == (
                o.labels(new), o.spec(new).get("taints")):
            return
        for k in self._ds.keys():
            self.loop.enqueue(k)

    def _on_pod(self, old: Obj | None, new: Obj | None) -> None:
        for k in owner_keys(old, new, "DaemonSet"):
            self.loop.enqueue(k)

    async def reconcile(self, key: str) -> float | None:
        ds = self._ds.get_key(key)
        if ds is None:
            self._expect.forget(key)
            return None
        if not self._expect.satisfied(key):
            return 1.0
        ns, name = o.namespace(ds), o.name(ds)
        plan = plan_daemonset(ds, self._nodes.items(), self._pods.items(ns), self._clock())
        for node_name in plan.create:
            pod = await self._client.apply(Create(PODS, ns, daemon_pod(ds, node_name)))
            if pod is not None:
                self._expect.expect_created(key, self._pods, pod)
            self._log.info("daemon pod created", daemonset=key, node=node_name, pod=o.name(pod or {}))
        for pod in plan.delete:
            await self._client.apply(Delete(PODS, ns, o.name(pod), o.uid(pod)))
            self._expect.expect_deleted(key, self._pods, pod)
            self._log.info("daemon pod deleted", daemonset=key, node=o.spec(pod).get("nodeName"), pod=o.name(pod))
        patch = status_patch(o.status(ds), plan.status)
        if patch is not None:
            try:
                await self._client.apply(Patch(DAEMONSETS, ns, name, patch, subresource="status"))
            except RequestError as err:
                if err.status != 404:
                    raise
        return plan.requeue
