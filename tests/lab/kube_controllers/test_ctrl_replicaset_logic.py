"""The ReplicaSet controller's pure logic: replica arithmetic, what counts as active, deletion order, status."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from lab.kube.controllers import objects as o
from lab.kube.controllers import replicaset as r

Obj = dict[str, Any]
NOW = 1_700_000_000.0
RS: Obj = {"metadata": {"name": "web-abc", "namespace": "default", "uid": "rs-uid", "generation": 2},
           "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}, "annotations": {"a": "1"}},
                                 "spec": {"containers": [{"name": "c", "image": "i"}]}}}}


def pod(name: str, *, ready: bool = True, node: str | None = "n0", phase: str = "Running", created: float = NOW,
        terminating: bool = False, owner: str = "rs-uid", restarts: int = 0, ready_since: float = NOW - 100) -> Obj:
    md: Obj = {"name": name, "namespace": "default", "uid": f"uid-{name}", "labels": {"app": "web"},
               "creationTimestamp": o.rfc3339(created),
               "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": owner,
                                    "controller": True}]}
    if terminating:
        md["deletionTimestamp"] = o.rfc3339(NOW + 30)
    spec: Obj = {"containers": [{"name": "c"}]}
    if node:
        spec["nodeName"] = node
    return {"metadata": md, "spec": spec, "status": {
        "phase": phase, "containerStatuses": [{"name": "c", "restartCount": restarts}],
        "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                        "lastTransitionTime": o.rfc3339(ready_since)}]}}


def test_creates_missing_and_ignores_terminating_and_foreign_pods() -> None:
    pods = [pod("a"), pod("b", terminating=True), pod("c", owner="other"), pod("d", phase="Failed")]
    plan = r.plan_replicaset(RS, pods, NOW)
    assert plan.create == 2 and plan.delete == ()
    assert plan.status == {"replicas": 1, "fullyLabeledReplicas": 1, "readyReplicas": 1, "availableReplicas": 1,
                           "observedGeneration": 2}


def test_scale_down_prefers_not_ready_then_newest() -> None:
    pods = [pod("old", created=NOW - 300), pod("new", created=NOW - 10), pod("mid", created=NOW - 100),
            pod("sick", ready=False, created=NOW - 500), pod("fresh-ready", created=NOW - 400, ready_since=NOW - 1)]
    rs = {**RS, "spec": {**RS["spec"], "replicas": 2}}
    plan = r.plan_replicaset(rs, pods, NOW)
    # not ready first, then the one ready for the shortest time, then (same readiness age) the newest
    assert [o.name(p) for p in plan.delete] == ["sick", "fresh-ready", "new"]


def test_deletion_rank_unassigned_and_pending_first() -> None:
    pods = [pod("running"), pod("pending", phase="Pending", ready=False), pod("unassigned", node=None,
                                                                              phase="Pending", ready=False)]
    assert [o.name(p) for p in r.rank_for_deletion(pods, NOW)] == ["unassigned", "pending", "running"]
    more_restarts = [pod("calm", restarts=0), pod("flappy", restarts=5)]
    assert o.name(r.rank_for_deletion(more_restarts, NOW)[0]) == "flappy"


def test_min_ready_seconds_availability_and_requeue() -> None:
    rs = {**RS, "spec": {**RS["spec"], "minReadySeconds": 30}}
    pods = [pod("a", ready_since=NOW - 60), pod("b", ready_since=NOW - 10), pod("c", ready=False)]
    plan = r.plan_replicaset(rs, pods, NOW)
    assert plan.status["readyReplicas"] == 2 and plan.status["availableReplicas"] == 1
    assert plan.requeue is not None and 20 <= plan.requeue <= 21


def test_terminating_replicaset_creates_nothing() -> None:
    rs = {**RS, "metadata": {**RS["metadata"], "deletionTimestamp": o.rfc3339(NOW)}}
    assert r.plan_replicaset(rs, [], NOW).create == 0


def test_pod_from_template() -> None:
    body = r.pod_from_template(RS)
    assert body["metadata"]["generateName"] == "web-abc-"
    assert body["metadata"]["labels"] == {"app": "web"} and body["metadata"]["annotations"] == {"a": "1"}
    assert body["metadata"]["ownerReferences"] == [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc",
                                                    "uid": "rs-uid", "controller": True, "blockOwnerDeletion": True}]
    assert body["spec"] == RS["spec"]["template"]["spec"]


def test_status_patch_only_on_change() -> None:
    want = {"replicas": 0, "readyReplicas": 0, "observedGeneration": 1}
    assert r.status_patch({"observedGeneration": 1}, want) is None  # missing counts read as 0
    assert r.status_patch({}, want) == {"status": want}


@given(st.integers(0, 150), st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), max_size=150))
def test_replica_arithmetic(replicas: int, shapes: list[tuple[bool, bool, bool]]) -> None:
    """After one plan, active pods - deletions + creations == replicas (within the per-sync burst), and only
    active owned pods are ever deleted."""
    rs = {**RS, "spec": {**RS["spec"], "replicas": replicas}}
    pods = [pod(f"p{i}", ready=ready, terminating=term, phase="Failed" if failed else "Running")
            for i, (ready, term, failed) in enumerate(shapes)]
    plan = r.plan_replicaset(rs, pods, NOW)
    active = [p for p in pods if o.is_active(p)]
    after = len(active) - len(plan.delete) + plan.create
    assert abs(after - replicas) == max(0, abs(len(active) - replicas) - r.BURST)
    assert all(o.is_active(p) for p in plan.delete)
    assert not (plan.create and plan.delete)
    assert plan.status["replicas"] == len(active)
