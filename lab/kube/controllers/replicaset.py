"""The ReplicaSet controller: keep ``spec.replicas`` active Pods per ReplicaSet, and report its status.

Pure part: :func:`plan_replicaset` (how many Pods to create, which to delete, the status to report) with
kube-controller-manager's rules: a Pod belongs to the ReplicaSet its controller ``ownerReference`` names;
terminating and finished Pods are not active replicas; scale-down deletes in the order of
:func:`deletion_rank` (unassigned, then pending, then not ready, then ready for less time, more restarts,
newest first). :func:`pod_from_template` is the Pod it creates (``generateName: <rs>-``).
I/O part: :class:`ReplicaSetController`, with expectations so a slow watch never causes extra Pods.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lab.kube.controllers import objects as o
from lab.kube.controllers.actions import PODS, REPLICASETS, Create, Delete, Patch
from lab.kube.controllers.client import KubeClient, RequestError
from lab.kube.controllers.informer import Expectations, Informer, ReconcileLoop
from meshcore.log import get_logger

Obj = dict[str, Any]
BURST = 100  # Pods created or deleted per sync at most; the next sync continues
_PHASE_RANK = {"Pending": 0, "Unknown": 1, "Running": 2}
STATUS_FIELDS = ("replicas", "fullyLabeledReplicas", "readyReplicas", "availableReplicas", "observedGeneration")


def desired_replicas(obj: Mapping[str, Any]) -> int:
    """``spec.replicas`` (1 when unset, as the apiserver defaults it)."""
    value = o.spec(obj).get("replicas")
    return 1 if value is None else int(value)


def owned_pods(owner: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> list[Obj]:
    return [dict(p) for p in pods if o.is_controlled_by(p, owner)]


def _restarts(pod: Mapping[str, Any]) -> int:
    return sum(int(c.get("restartCount") or 0) for c in o.status(pod).get("containerStatuses") or []
               if isinstance(c, dict))


def deletion_rank(pod: Mapping[str, Any], now: float) -> tuple[Any, ...]:
    """Sort key: smaller is deleted first (``controller.ActivePodsWithRanks`` order)."""
    ready = o.is_ready(pod)
    ready_since = o.parse_time((o.condition(pod, "Ready") or {}).get("lastTransitionTime")) or now
    return (
        bool(o.spec(pod).get("nodeName")),           # unassigned first
        _PHASE_RANK.get(o.phase(pod), 3),            # Pending < Unknown < Running
        ready,                                       # not ready first
        -(ready_since if ready else 0.0),            # ready for less time first
        -_restarts(pod),                             # more restarts first
        -o.created_at(pod),                          # newest first
        o.name(pod),
    )


def rank_for_deletion(pods: Iterable[Mapping[str, Any]], now: float) -> list[Obj]:
    return sorted((dict(p) for p in pods), key=lambda p: deletion_rank(p, now))


def replicaset_status(rs: Mapping[str, Any], pods: Iterable[Mapping[str, Any]], now: float
                      ) -> tuple[Obj, float | None]:
    """The status fields for ``rs`` given its owned pods, and when to look again (minReadySeconds)."""
    active = [p for p in pods if o.is_active(p)]
    min_ready = int(o.spec(rs).get("minReadySeconds") or 0)
    tpl_labels = o.labels(o.spec(rs).get("template") or {})
    ready = [p for p in active if o.is_ready(p)]
    available = [p for p in ready if o.is_available(p, min_ready, now)]
    waits = [w for w in (o.available_in(p, min_ready, now) for p in ready) if w is not None]
    status = {
        "replicas": len(active),
        "fullyLabeledReplicas": sum(1 for p in active if o.map_selector_matches(tpl_labels, o.labels(p))),
        "readyReplicas": len(ready),
        "availableReplicas": len(available),
        "observedGeneration": o.generation(rs),
    }
    return status, (min(waits) + 0.1 if waits else None)


def status_patch(current: Mapping[str, Any], want: Mapping[str, Any]) -> Obj | None:
    """A status merge patch bringing ``current`` to ``want`` (missing counts read as 0), or None."""
    diff = {k: v for k, v in want.items() if current.get(k, 0 if isinstance(v, int) else None) != v}
    return {"status": dict(want)} if diff else None


def pod_from_template(rs: Mapping[str, Any]) -> Obj:
    """The Pod a ReplicaSet creates: its template, ``generateName: <rs>-`` and a controller reference."""
    tpl = o.deep_copy(o.spec(rs).get("template") or {})
    tmeta = tpl.get("metadata") or {}
    md: Obj = {"generateName": f"{o.name(rs)}-", "namespace": o.namespace(rs),
               "ownerReferences": [o.owner_reference(rs, "apps/v1", "ReplicaSet")]}
    for field in ("labels", "annotations", "finalizers"):
        if tmeta.get(field):
            md[field] = tmeta[field]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": md, "spec": tpl.get("spec") or {}}


@dataclass(frozen=True, slots=True)
class ReplicaSetPlan:
    create: int
    delete: tuple[Obj, ...]
    status: Obj
    requeue: float | None


def plan_replicaset(rs: Mapping[str, Any], pods: Iterable[Mapping[str, Any]], now: float) -> ReplicaSetPlan:
    """What to do for ``rs`` given the pods of its namespace."""
    owned = owned_pods(rs, pods)
    status, requeue = replicaset_status(rs, owned, now)
    if o.is_terminating(rs):
        return ReplicaSetPlan(0, (), status, requeue)
    active = [p for p in owned if o.is_active(p)]
    diff = len(active) - desired_replicas(rs)
    if diff < 0:
        return ReplicaSetPlan(min(-diff, BURST), (), status, requeue)
    if diff > 0:
        return ReplicaSetPlan(0, tuple(rank_for_deletion(active, now)[:min(diff, BURST)]), status, requeue)
    return ReplicaSetPlan(0, (), status, requeue)


def _owner_key(obj: Mapping[str, Any] | None, kind: str) -> str | None:
    if obj is None:
        return None
    ref = o.controller_ref(obj)
    if ref is None or ref.get("kind") != kind:
        return None
    return f"{o.namespace(obj)}/{ref.get('name')}"


def owner_keys(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None, kind: str) -> set[str]:
    """The ``namespace/name`` keys of the ``kind`` controllers of ``old`` and ``new``."""
    return {k for k in (_owner_key(old, kind), _owner_key(new, kind)) if k}


class ReplicaSetController:
    """Reconciles ReplicaSets against their Pods."""

    def __init__(self, client: KubeClient, replicasets: Informer, pods: Informer, *,
                 clock: Callable[[], float] = time.time, resync_period: float = 30.0) -> None:
        self._client = client
        self._rs = replicasets
        self._pods = pods
        self._clock = clock
        self._expect = Expectations()
        self._log = get_logger(__name__)
        self.loop = ReconcileLoop("replicaset", self.reconcile, informers=[replicasets, pods],
                                  all_keys=replicasets.keys, resync_period=resync_period)
        replicasets.add_handler(lambda old, new: self.loop.enqueue(o.key(new or old or {})))
        pods.add_handler(self._on_pod)

    def _on_pod(self, old: Obj | None, new: Obj | None) -> None:
        for k in owner_keys(old, new, "ReplicaSet"):
            self.loop.enqueue(k)

    async def reconcile(self, key: str) -> float | None:
        rs = self._rs.get_key(key)
        if rs is None:
            self._expect.forget(key)
            return None
        if not self._expect.satisfied(key):
            return 1.0
        ns, name = o.namespace(rs), o.name(rs)
        plan = plan_replicaset(rs, self._pods.items(ns), self._clock())
        if plan.create:
            created = 0
            try:
                for _ in range(plan.create):
                    pod = await self._client.apply(Create(PODS, ns, pod_from_template(rs)))
                    if pod is not None:
                        self._expect.expect_created(key, self._pods, pod)
                    created += 1
            finally:
                self._log.info("replicaset pods created", replicaset=key, count=created, wanted=plan.create)
        if plan.delete:
            for pod in plan.delete:
                await self._client.apply(Delete(PODS, ns, o.name(pod), o.uid(pod)))
                self._expect.expect_deleted(key, self._pods, pod)
            self._log.info("replicaset pods deleted", replicaset=key, pods=[o.name(p) for p in plan.delete])
        patch = status_patch(o.status(rs), plan.status)
        if patch is not None:
            try:
                await self._client.apply(Patch(REPLICASETS, ns, name, patch, subresource="status"))
            except RequestError as err:
                if err.status != 404:
                    raise
        return plan.requeue
