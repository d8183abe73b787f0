"""The Deployment controller: ReplicaSets per pod template, rolling updates, Recreate, history, status.

Pure part: :func:`plan_deployment` turns one Deployment, the ReplicaSets and Pods of its namespace and
the time into actions (create/scale/annotate/delete ReplicaSets) and the Deployment's status, one step
at a time like ``pkg/controller/deployment``: the "new" ReplicaSet is the owned one whose template equals
the Deployment's (ignoring ``pod-template-hash``), named ``<deployment>-<hash>`` (:func:`objects.template_hash`);
RollingUpdate scales it up within ``maxSurge`` and old ones down within ``maxUnavailable`` (defaults 25%,
surge rounded up, unavailable down, never both 0), reading availability from ReplicaSet statuses; Recreate
scales old ones to 0 and waits for their Pods to be gone first; old ReplicaSets at 0 beyond
``revisionHistoryLimit`` (default 10) are deleted; revisions go in ``deployment.kubernetes.io/revision``.
Not modelled: proportional scaling during a rollout (the rolling arithmetic still converges),
``progressDeadlineSeconds`` (no ProgressDeadlineExceeded), adoption of orphaned ReplicaSets.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lab.kube.controllers import objects as o
from lab.kube.controllers.actions import DEPLOYMENTS, REPLICASETS, Action, Create, Delete, Patch
from lab.kube.controllers.client import KubeClient, RequestError
from lab.kube.controllers.informer import Informer, ReconcileLoop
from lab.kube.controllers.replicaset import desired_replicas, owner_keys
from meshcore.log import get_logger

Obj = dict[str, Any]
HASH_LABEL = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
DESIRED_REPLICAS = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
DEFAULT_HISTORY = 10


# ----- strategy arithmetic -----

def resolve_fenceposts(max_surge: Any, max_unavailable: Any, desired: int) -> tuple[int, int]:
    """``deploymentutil.ResolveFenceposts``: surge rounded up, unavailable down, and never both zero."""
    surge = o.scaled_value(max_surge, desired, round_up=True, default="25%")
    unavailable = o.scaled_value(max_unavailable, desired, round_up=False, default="25%")
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def _rolling(d: Mapping[str, Any]) -> dict[str, Any] | None:
    strat = o.spec(d).get("strategy") or {}
    if (strat.get("type") or "RollingUpdate") != "RollingUpdate":
        return None
    ru = strat.get("rollingUpdate")
    return ru if isinstance(ru, dict) else {}


def max_surge(d: Mapping[str, Any]) -> int:
    ru = _rolling(d)
    if ru is None:
        return 0
    return resolve_fenceposts(ru.get("maxSurge"), ru.get("maxUnavailable"), desired_replicas(d))[0]


def max_unavailable(d: Mapping[str, Any]) -> int:
    """``deploymentutil.MaxUnavailable``: 0 for Recreate or no replicas, at most ``replicas``."""
    ru = _rolling(d)
    replicas = desired_replicas(d)
    if ru is None or replicas == 0:
        return 0
    return min(resolve_fenceposts(ru.get("maxSurge"), ru.get("maxUnavailable"), replicas)[1], replicas)


# ----- ReplicaSets as the rollout sees them -----

@dataclass
class RSView:
    """One ReplicaSet in a plan: ``replicas`` is its spec as the plan has set it so far."""

    obj: Obj
    replicas: int
    status_replicas: int
    ready: int
    available: int

    @classmethod
    def of(cls, rs: Mapping[str, Any]) -> RSView:
        st = o.status(rs)
        return cls(dict(rs), desired_replicas(rs), int(st.get("replicas") or 0), int(st.get("readyReplicas") or 0),
                   int(st.get("availableReplicas") or 0))

    @property
    def name(self) -> str:
        return o.name(self.obj)

    @property
    def usable(self) -> int:
        """Available replicas the rollout may count on: never more than the spec (a status lagging behind a
        scale-down must not license a second one)."""
        return min(self.available, self.replicas)


def revision(rs: Mapping[str, Any]) -> int:
    try:
        return int(o.annotations_of(rs).get(REVISION) or 0)
    except ValueError:
        return 0


def templates_equal(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """``EqualIgnoreHash``: pod templates equal once ``pod-template-hash`` is dropped from both (compared
    :func:`objects.pruned`, i.e. semantically: an empty or null field equals an absent one)."""
    return bool(o.pruned(o.without_label(a, HASH_LABEL)) == o.pruned(o.without_label(b, HASH_LABEL)))


def current_hash(d: Mapping[str, Any]) -> str:
    """The ``pod-template-hash`` of the Deployment's template (with its ``status.collisionCount``)."""
    return o.template_hash(o.spec(d).get("template") or {}, int(o.status(d).get("collisionCount") or 0))


def find_new_replicaset(d: Mapping[str, Any], owned: Iterable[Mapping[str, Any]]) -> Obj | None:
    """The oldest owned ReplicaSet whose template is the Deployment's; failing that, the one made from this
    template (its ``pod-template-hash`` is the current hash: an apiserver may default the two differently)."""
    tpl = o.spec(d).get("template") or {}
    ordered = sorted(owned, key=lambda r: (o.created_at(r), o.name(r)))
    for rs in ordered:
        if templates_equal(o.spec(rs).get("template") or {}, tpl):
            return dict(rs)
    pod_hash = current_hash(d)
    for rs in ordered:
        if o.labels(rs).get(HASH_LABEL) == pod_hash and o.name(rs) == f"{o.name(d)}-{pod_hash}":
            return dict(rs)
    return None


def new_replicaset_body(d: Mapping[str, Any], pod_hash: str, replicas: int, rev: int) -> Obj:
    """The ReplicaSet for the Deployment's current template."""
    dspec = o.spec(d)
    tpl = o.deep_copy(dspec.get("template") or {})
    tmeta = tpl.setdefault("metadata", {})
    tmeta["labels"] = {**(tmeta.get("labels") or {}), HASH_LABEL: pod_hash}
    selector = o.deep_copy(dspec.get("selector") or {})
    selector["matchLabels"] = {**(selector.get("matchLabels") or {}), HASH_LABEL: pod_hash}
    return {
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {
            "name": f"{o.name(d)}-{pod_hash}", "namespace": o.namespace(d), "labels": dict(tmeta["labels"]),
            "annotations": {REVISION: str(rev), DESIRED_REPLICAS: str(desired_replicas(d)),
                            MAX_REPLICAS: str(desired_replicas(d) + max_surge(d))},
            "ownerReferences": [o.owner_reference(d, "apps/v1", "Deployment")],
        },
        "spec": {"replicas": replicas, "minReadySeconds": int(dspec.get("minReadySeconds") or 0),
                 "selector": selector, "template": tpl},
    }


def new_rs_new_replicas(d: Mapping[str, Any], all_rs: Iterable[RSView], new_replicas: int) -> int:
    """``deploymentutil.NewRSNewReplicas``: how far the new ReplicaSet may grow now."""
    want = desired_replicas(d)
    if _rolling(d) is None:
        return want
    current = sum(r.replicas for r in all_rs)
    max_total = want + max_surge(d)
    if current >= max_total:
        return new_replicas
    return new_replicas + min(max_total - current, want - new_replicas)


# ----- the plan -----

@dataclass
class DeploymentPlan:
    """Actions for one sync, the status to report (None when unchanged) and when to look again."""

    actions: list[Action] = field(default_factory=list)
    status: Obj | None = None
    requeue: float | None = None


class _Step:
    """The mutable state of one sync: ReplicaSet views and the actions taken so far."""

    def __init__(self, d: Mapping[str, Any]) -> None:
        self.d = d
        self.ns = o.namespace(d)
        self.actions: list[Action] = []
        self.created: str | None = None

    def scale(self, rs: RSView, replicas: int, why: str) -> bool:
        if rs.replicas == replicas:
            return False
        self.actions.append(Patch(REPLICASETS, self.ns, rs.name, {"spec": {"replicas": replicas}},
                                  why=f"{why}: {rs.replicas} -> {replicas}"))
        rs.replicas = replicas
        return True


def _reconcile_new(step: _Step, new: RSView, all_rs: list[RSView]) -> bool:
    want = desired_replicas(step.d)
    if new.replicas > want:
        return step.scale(new, want, "scale down new")
    if new.replicas < want:
        return step.scale(new, new_rs_new_replicas(step.d, all_rs, new.replicas), "scale up new")
    return False


def _reconcile_old(step: _Step, new: RSView, olds: list[RSView]) -> bool:
    d = step.d
    active_old = [r for r in olds if r.replicas > 0]
    if not active_old:
        return False
    all_rs = [*olds, new]
    min_available = desired_replicas(d) - max_unavailable(d)
    new_unavailable = new.replicas - new.usable
    max_scaled_down = sum(r.replicas for r in all_rs) - min_available - new_unavailable
    if max_scaled_down <= 0:
        return False
    changed = False
    # First drop old replicas that are not available anyway (cleanupUnhealthyReplicas).
    cleaned = 0
    for rs in sorted(active_old, key=lambda r: (o.created_at(r.obj), r.name)):
        if cleaned >= max_scaled_down:
            break
        if rs.replicas == 0 or rs.usable >= rs.replicas:
            continue
        n = min(max_scaled_down - cleaned, rs.replicas - rs.usable)
        changed |= step.scale(rs, rs.replicas - n, "drop unavailable old")
        cleaned += n
    # Then scale old ones down as far as availability allows (scaleDownOldReplicaSetsForRollingUpdate).
    available = sum(r.usable for r in all_rs)
    if available > min_available:
        budget = available - min_available
        for rs in sorted(active_old, key=lambda r: (o.created_at(r.obj), r.name)):
            if budget <= 0:
                break
            if rs.replicas == 0:
                continue
            n = min(rs.replicas, budget)
            changed |= step.scale(rs, rs.replicas - n, "scale down old")
            budget -= n
    return changed


def _old_pods_running(olds: list[RSView], pods: Iterable[Mapping[str, Any]]) -> bool:
    if sum(r.status_replicas for r in olds) > 0:
        return True
    uids = {o.uid(r.obj) for r in olds}
    return any(not o.is_terminal(p) for p in pods
               if (ref := o.controller_ref(p)) is not None and ref.get("uid") in uids)


def _cleanup(step: _Step, olds: list[RSView]) -> None:
    limit = o.spec(step.d).get("revisionHistoryLimit")
    limit = DEFAULT_HISTORY if limit is None else int(limit)
    cleanable = sorted((r for r in olds if not o.is_terminating(r.obj)),
                       key=lambda r: (revision(r.obj), o.created_at(r.obj), r.name))
    for rs in cleanable[:max(0, len(cleanable) - limit)]:
        if rs.status_replicas or rs.replicas or o.generation(rs.obj) > int(
                o.status(rs.obj).get("observedGeneration") or 0):
            continue
        step.actions.append(Delete(REPLICASETS, step.ns, rs.name, o.uid(rs.obj), why="revision history limit"))


def deployment_complete(d: Mapping[str, Any], st: Mapping[str, Any]) -> bool:
    want = desired_replicas(d)
    return (st.get("updatedReplicas") == want and st.get("replicas") == want
            and st.get("availableReplicas") == want and int(st.get("observedGeneration") or 0) >= o.generation(d))


def compute_status(d: Mapping[str, Any], new: RSView | None, olds: list[RSView], now: float, *,
                   created: str | None = None) -> Obj:
    """The Deployment status for the ReplicaSets as the plan left them (``calculateStatus`` + conditions)."""
    all_rs = [*olds, *([new] if new else [])]
    available = sum(r.available for r in all_rs)
    total = sum(r.replicas for r in all_rs)
    current = o.status(d)
    st: Obj = {
        "observedGeneration": o.generation(d),
        "replicas": sum(r.status_replicas for r in all_rs),
        "updatedReplicas": new.status_replicas if new else 0,
        "readyReplicas": sum(r.ready for r in all_rs),
        "availableReplicas": available,
        "unavailableReplicas": max(0, total - available),
    }
    if current.get("collisionCount") is not None:
        st["collisionCount"] = current["collisionCount"]
    conditions = list(current.get("conditions") or [])
    if available >= desired_replicas(d) - max_unavailable(d):
        avail = {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                 "message": "Deployment has minimum availability."}
    else:
        avail = {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
                 "message": "Deployment does not have minimum availability."}
    conditions = o.set_condition(conditions, avail, now, update_time_field="lastUpdateTime")
    prog: Obj | None
    if o.spec(d).get("paused"):
        prog = {"type": "Progressing", "status": "Unknown", "reason": "DeploymentPaused",
                "message": "Deployment is paused"}
    elif new is None:
        prog = None
    elif deployment_complete(d, st):
        prog = {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                "message": f'ReplicaSet "{new.name}" has successfully progressed.'}
    elif created:
        prog = {"type": "Progressing", "status": "True", "reason": "NewReplicaSetCreated",
                "message": f'Created new replica set "{created}"'}
    else:
        prog = {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                "message": f'ReplicaSet "{new.name}" is progressing.'}
    if prog is not None:
        conditions = o.set_condition(conditions, prog, now, update_time_field="lastUpdateTime")
    # Real Deployments list Available before Progressing.
    order = {"Available": 0, "Progressing": 1}
    st["conditions"] = sorted(conditions, key=lambda c: order.get(str(c.get("type")), 2))
    return st


def plan_deployment(d: Mapping[str, Any], replicasets: Iterable[Mapping[str, Any]],
                    pods: Iterable[Mapping[str, Any]], now: float) -> DeploymentPlan:
    """One sync of ``d`` given every ReplicaSet and Pod of its namespace."""
    rs_all = [dict(r) for r in replicasets]
    owned = [r for r in rs_all if o.is_controlled_by(r, d)]
    step = _Step(d)
    new_obj = find_new_replicaset(d, owned)
    new = RSView.of(new_obj) if new_obj is not None else None
    olds = [RSView.of(r) for r in owned if new_obj is None or o.uid(r) != o.uid(new_obj)]
    pods = list(pods)
    plan = DeploymentPlan()
    dspec = o.spec(d)
    selector = dspec.get("selector")
    active = not o.is_terminating(d) and not dspec.get("paused") and isinstance(selector, dict)
    max_old_rev = max((revision(r.obj) for r in olds), default=0)

    if active and new is not None:
        if revision(new.obj) <= max_old_rev:
            step.actions.append(Patch(REPLICASETS, step.ns, new.name,
                                      {"metadata": {"annotations": {REVISION: str(max_old_rev + 1)}}},
                                      why="new revision"))
            new.obj = {**new.obj, "metadata": {**o.meta(new.obj), "annotations": {
                **o.annotations_of(new.obj), REVISION: str(max_old_rev + 1)}}}
        min_ready = int(dspec.get("minReadySeconds") or 0)
        if int(o.spec(new.obj).get("minReadySeconds") or 0) != min_ready:
            step.actions.append(Patch(REPLICASETS, step.ns, new.name, {"spec": {"minReadySeconds": min_ready}},
                                      why="minReadySeconds"))

    def create_new(replicas: int) -> RSView | None:
        collision = int(o.status(d).get("collisionCount") or 0)
        pod_hash = current_hash(d)
        body = new_replicaset_body(d, pod_hash, replicas, max_old_rev + 1)
        taken = next((r for r in rs_all if o.name(r) == body["metadata"]["name"]), None)
        if taken is not None:  # a name clash with a ReplicaSet of another template: hash again
            step.actions.append(Patch(DEPLOYMENTS, step.ns, o.name(d), {"status": {"collisionCount": collision + 1}},
                                      subresource="status", why="hash collision"))
            plan.requeue = 0.5
            return None
        step.actions.append(Create(REPLICASETS, step.ns, body, why="new pod template"))
        step.created = body["metadata"]["name"]
        view = RSView(body, replicas, 0, 0, 0)
        return view

    if active:
        if _rolling(d) is not None:
            if new is None:
                new = create_new(new_rs_new_replicas(d, olds, 0))
            if new is not None:
                all_rs = [*olds, new]
                if not _reconcile_new(step, new, all_rs) and not _reconcile_old(step, new, olds):
                    if deployment_complete(d, compute_status(d, new, olds, now)):
                        _cleanup(step, olds)
        else:  # Recreate
            scaled = False
            for rs in olds:
                scaled |= step.scale(rs, 0, "recreate: scale down old")
            if not scaled and not _old_pods_running(olds, pods):
                if new is None:
                    new = create_new(desired_replicas(d))
                elif step.scale(new, desired_replicas(d), "recreate: scale up new"):
                    pass
                elif deployment_complete(d, compute_status(d, new, olds, now)):
                    _cleanup(step, olds)

    if new is not None and active:
        rev = str(revision(new.obj) or max_old_rev + 1)
        if o.annotations_of(d).get(REVISION) != rev:
            step.actions.append(Patch(DEPLOYMENTS, step.ns, o.name(d), {"metadata": {"annotations": {REVISION: rev}}},
                                      why="revision"))
    status = compute_status(d, new, olds, now, created=step.created)
    current = o.status(d)
    if any(current.get(k, 0 if isinstance(v, int) else None) != v for k, v in status.items()):
        plan.status = status
    plan.actions = step.actions
    return plan


class DeploymentController:
    """Reconciles Deployments against their ReplicaSets (and, for Recreate, their Pods)."""

    def __init__(self, client: KubeClient, deployments: Informer, replicasets: Informer, pods: Informer, *,
                 clock: Callable[[], float] = time.time, resync_period: float = 30.0) -> None:
        self._client = client
        self._d = deployments
        self._rs = replicasets
        self._pods = pods
        self._clock = clock
        self._log = get_logger(__name__)
        self.loop = ReconcileLoop("deployment", self.reconcile, informers=[deployments, replicasets, pods],
                                  all_keys=deployments.keys, resync_period=resync_period)
        deployments.add_handler(lambda old, new: self.loop.enqueue(o.key(new or old or {})))
        replicasets.add_handler(self._on_rs)
        pods.add_handler(self._on_pod)

    def _on_rs(self, old: Obj | None, new: Obj | None) -> None:
        for k in owner_keys(old, new, "Deployment"):
            self.loop.enqueue(k)

    def _on_pod(self, old: Obj | None, new: Obj | None) -> None:
        # Recreate waits for old pods to be gone: a pod's end re-examines its ReplicaSet's Deployment.
        if new is not None:
            return
        for rs_key in owner_keys(old, None, "ReplicaSet"):
            rs = self._rs.get_key(rs_key)
            if rs is not None:
                for k in owner_keys(rs, None, "Deployment"):
                    self.loop.enqueue(k)

    async def reconcile(self, key: str) -> float | None:
        d = self._d.get_key(key)
        if d is None:
            return None
        ns = o.namespace(d)
        plan = plan_deployment(d, self._rs.items(ns), self._pods.items(ns), self._clock())
        for action in plan.actions:
            try:
                await self._client.apply(action)
            except RequestError as err:
                if isinstance(action, Create) and err.status == 409:
                    continue  # created by an earlier sync the cache has not shown yet
                if err.status == 404 and not isinstance(action, Create):
                    continue
                raise
            self._log.info("deployment step", deployment=key, action=type(action).__name__,
                           target=getattr(action, "name", None) or o.name(getattr(action, "body", {})),
                           why=getattr(action, "why", ""))
        if plan.status is not None:
            try:
                await self._client.apply(Patch(DEPLOYMENTS, ns, o.name(d), {"status": plan.status},
                                               subresource="status"))
            except RequestError as err:
                if err.status != 404:
                    raise
        return plan.requeue
