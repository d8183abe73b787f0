"""The Deployment controller's pure logic, driven by a small simulator of the rest of the cluster.

The simulator applies each plan's actions to in-memory ReplicaSets and plays the ReplicaSet controller
and the kubelets: a ReplicaSet's status follows its spec, scaled-down replicas vanish at once and new
replicas become available when the test says so. Property tests check kube-controller-manager's rollout
guarantees: never more than ``replicas + maxSurge`` pods, never fewer than ``replicas - maxUnavailable``
available, and convergence to the new template.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from lab.kube.controllers import deployment as dep
from lab.kube.controllers import objects as o
from lab.kube.controllers.actions import DEPLOYMENTS, REPLICASETS, Create, Delete, Patch

Obj = dict[str, Any]
NOW = 1_700_000_000.0


def deployment(replicas: int = 3, image: str = "v1", *, strategy: Obj | None = None, history: int | None = None
               ) -> Obj:
    spec: Obj = {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": image}]}}}
    if strategy is not None:
        spec["strategy"] = strategy
    if history is not None:
        spec["revisionHistoryLimit"] = history
    return {"metadata": {"name": "web", "namespace": "default", "uid": "d-uid", "generation": 1}, "spec": spec}


class Sim:
    """ReplicaSets in memory; :meth:`sync` runs one plan, :meth:`settle` plays the ReplicaSet controller."""

    def __init__(self, d: Obj) -> None:
        self.d = d
        self.rs: dict[str, Obj] = {}
        self.pods: list[Obj] = []
        self._uids = itertools.count()
        self._clock = itertools.count(1)
        self.plans: list[dep.DeploymentPlan] = []

    def set_template(self, image: str) -> None:
        self.d["spec"]["template"]["spec"]["containers"][0]["image"] = image
        self.d["metadata"]["generation"] += 1

    def sync(self) -> dep.DeploymentPlan:
        plan = dep.plan_deployment(self.d, list(self.rs.values()), self.pods, NOW)
        self.plans.append(plan)
        for a in plan.actions:
            if isinstance(a, Create):
                body = o.deep_copy(a.body)
                body["metadata"].update(uid=f"rs-{next(self._uids)}", generation=1,
                                        creationTimestamp=o.rfc3339(NOW + next(self._clock)))
                body["status"] = {"replicas": 0, "readyReplicas": 0, "availableReplicas": 0, "observedGeneration": 1}
                assert body["metadata"]["name"] not in self.rs
                self.rs[body["metadata"]["name"]] = body
            elif isinstance(a, Patch) and a.ref == REPLICASETS:
                rs = self.rs[a.name]
                rs["spec"].update(a.body.get("spec") or {})
                rs["metadata"].setdefault("annotations", {}).update(
                    (a.body.get("metadata") or {}).get("annotations") or {})
            elif isinstance(a, Patch) and a.ref == DEPLOYMENTS:
                if a.subresource == "status":
                    self.d.setdefault("status", {}).update(a.body["status"])
                else:
                    self.d["metadata"].setdefault("annotations", {}).update(a.body["metadata"]["annotations"])
            elif isinstance(a, Delete):
                del self.rs[a.name]
            else:
                raise AssertionError(a)
        if plan.status is not None:
            self.d["status"] = plan.status
        return plan

    def settle(self, newly_available: int | None = None) -> None:
        """Status follows spec: surplus pods vanish, ``newly_available`` (default: all) new pods become ready."""
        for rs in self.rs.values():
            st, want = rs["status"], rs["spec"]["replicas"]
            st["availableReplicas"] = min(st["availableReplicas"], want)
            missing = want - st["availableReplicas"]
            st["availableReplicas"] += missing if newly_available is None else min(missing, newly_available)
            st["replicas"] = want
            st["readyReplicas"] = st["availableReplicas"]

    def total(self) -> int:
        return sum(rs["spec"]["replicas"] for rs in self.rs.values())

    def truly_available(self) -> int:
        return sum(min(rs["status"]["availableReplicas"], rs["spec"]["replicas"]) for rs in self.rs.values())

    def new_rs(self) -> Obj:
        found = dep.find_new_replicaset(self.d, self.rs.values())
        assert found is not None
        return found

    def converge(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            plan = self.sync()
            self.settle()
            if not plan.actions and plan.status is None:
                return
        raise AssertionError("did not converge")


def test_first_sync_creates_the_named_replicaset() -> None:
    sim = Sim(deployment(3))
    plan = sim.sync()
    create = next(a for a in plan.actions if isinstance(a, Create))
    pod_hash = o.template_hash(sim.d["spec"]["template"])
    body = create.body
    assert body["metadata"]["name"] == f"web-{pod_hash}"
    assert body["metadata"]["labels"] == {"app": "web", "pod-template-hash": pod_hash}
    assert body["spec"]["selector"] == {"matchLabels": {"app": "web", "pod-template-hash": pod_hash}}
    assert body["spec"]["template"]["metadata"]["labels"]["pod-template-hash"] == pod_hash
    assert body["spec"]["replicas"] == 3
    assert body["metadata"]["annotations"][dep.REVISION] == "1"
    assert body["metadata"]["ownerReferences"][0]["uid"] == "d-uid"
    assert body["metadata"]["ownerReferences"][0]["controller"] is True
    sim.converge()
    st = sim.d["status"]
    assert (st["replicas"], st["updatedReplicas"], st["readyReplicas"], st["availableReplicas"]) == (3, 3, 3, 3)
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Available"]["status"] == "True" and conds["Available"]["reason"] == "MinimumReplicasAvailable"
    assert conds["Progressing"]["reason"] == "NewReplicaSetAvailable"
    assert conds["Progressing"]["message"] == f'ReplicaSet "web-{pod_hash}" has successfully progressed.'
    assert sim.d["metadata"]["annotations"][dep.REVISION] == "1"
    assert dep.deployment_complete(sim.d, st)


def test_no_writes_once_converged() -> None:
    sim = Sim(deployment(2))
    sim.converge()
    plan = sim.sync()
    assert plan.actions == [] and plan.status is None


def test_fenceposts() -> None:
    assert dep.resolve_fenceposts(None, None, 4) == (1, 1)
    assert dep.resolve_fenceposts("25%", "25%", 3) == (1, 0)
    assert dep.resolve_fenceposts(0, 0, 3) == (0, 1)
    assert dep.resolve_fenceposts("50%", "50%", 5) == (3, 2)


strategies_st = st.fixed_dictionaries({
    "maxSurge": st.one_of(st.integers(0, 3), st.sampled_from(["0%", "25%", "50%", "100%"])),
    "maxUnavailable": st.one_of(st.integers(0, 3), st.sampled_from(["0%", "25%", "50%", "100%"])),
})


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 8), strategies_st, st.lists(st.integers(0, 3), max_size=40))
def test_rolling_update_keeps_its_bounds_and_converges(replicas: int, ru: Obj, progress: list[int]) -> None:
    sim = Sim(deployment(replicas, strategy={"type": "RollingUpdate", "rollingUpdate": ru}))
    sim.converge()
    surge, unavailable = dep.max_surge(sim.d), dep.max_unavailable(sim.d)
    old_name = o.name(sim.new_rs())
    sim.set_template("v2")
    steps = iter(progress)
    for _ in range(200):
        plan = sim.sync()
        assert sim.total() <= replicas + surge, (sim.rs, plan)
        assert sim.truly_available() >= replicas - unavailable, (sim.rs, plan)
        # pods become available a few at a time (as the test's draws say), then all at once
        sim.settle(next(steps, None))
        new = dep.find_new_replicaset(sim.d, sim.rs.values())
        if (new is not None and new["spec"]["replicas"] == replicas and new["status"]["availableReplicas"] == replicas
                and all(rs["spec"]["replicas"] == 0 for n, rs in sim.rs.items() if n != o.name(new))
                and not plan.actions):
            break
    else:
        raise AssertionError(f"rollout did not finish: {sim.rs}")
    sim.converge()
    assert sim.rs[old_name]["spec"]["replicas"] == 0  # kept, at zero
    assert sim.d["status"]["updatedReplicas"] == replicas
    assert sim.d["metadata"]["annotations"][dep.REVISION] == "2"


def test_scaling_without_template_change() -> None:
    sim = Sim(deployment(3))
    sim.converge()
    sim.d["spec"]["replicas"] = 5
    sim.converge()
    assert sim.new_rs()["spec"]["replicas"] == 5 and len(sim.rs) == 1
    sim.d["spec"]["replicas"] = 1
    sim.converge()
    assert sim.new_rs()["spec"]["replicas"] == 1


def test_recreate_waits_for_old_pods_before_creating_new() -> None:
    sim = Sim(deployment(3, strategy={"type": "Recreate"}))
    sim.converge()
    old = sim.new_rs()
    sim.pods = [{"metadata": {"name": f"p{i}", "ownerReferences": [
        {"kind": "ReplicaSet", "name": o.name(old), "uid": o.uid(old), "controller": True}]},
        "status": {"phase": "Running"}} for i in range(3)]
    sim.set_template("v2")
    plan = sim.sync()
    assert [a.why for a in plan.actions if isinstance(a, Patch) and a.ref == REPLICASETS] == \
        ["recreate: scale down old: 3 -> 0"]
    sim.settle()
    assert sim.sync().actions == []  # old pods still running: no new ReplicaSet yet
    sim.pods = []
    plan = sim.sync()
    created = [a for a in plan.actions if isinstance(a, Create)]
    assert len(created) == 1 and created[0].body["spec"]["replicas"] == 3
    sim.converge()
    assert sim.truly_available() == 3 and sim.rs[o.name(old)]["spec"]["replicas"] == 0


def test_revision_history_limit_deletes_oldest_scaled_down() -> None:
    sim = Sim(deployment(2, history=1))
    for image in ("v1", "v2", "v3", "v4"):
        sim.set_template(image)
        sim.converge()
    assert len(sim.rs) == 2  # the current one and one old one
    revisions = sorted(int(rs["metadata"]["annotations"][dep.REVISION]) for rs in sim.rs.values())
    assert revisions == [3, 4]


def test_rollback_to_an_old_template_bumps_its_revision() -> None:
    sim = Sim(deployment(2))
    sim.converge()
    sim.set_template("v2")
    sim.converge()
    sim.set_template("v1")  # back to revision 1's template: that ReplicaSet becomes the new one again
    sim.converge()
    new = sim.new_rs()
    assert new["metadata"]["annotations"][dep.REVISION] == "3"
    assert sim.d["metadata"]["annotations"][dep.REVISION] == "3"
    assert len(sim.rs) == 2


def test_hash_collision_bumps_collision_count() -> None:
    d = deployment(1)
    pod_hash = o.template_hash(d["spec"]["template"])
    squatter = {"metadata": {"name": f"web-{pod_hash}", "namespace": "default", "uid": "other"},
                "spec": {"replicas": 0, "template": {"metadata": {"labels": {"app": "other"}}}}}
    plan = dep.plan_deployment(d, [squatter], [], NOW)
    assert [a.body for a in plan.actions if isinstance(a, Patch)] == [{"status": {"collisionCount": 1}}]
    d["status"] = {"collisionCount": 1}
    plan = dep.plan_deployment(d, [squatter], [], NOW)
    created = [a for a in plan.actions if isinstance(a, Create)]
    assert created and created[0].body["metadata"]["name"] == f"web-{o.template_hash(d['spec']['template'], 1)}"


def test_paused_and_deleting_deployments_only_report() -> None:
    d = deployment(2)
    d["spec"]["paused"] = True
    plan = dep.plan_deployment(d, [], [], NOW)
    assert plan.actions == []
    assert plan.status is not None
    assert {c["type"]: c["reason"] for c in plan.status["conditions"]}["Progressing"] == "DeploymentPaused"
    d = deployment(2)
    d["metadata"]["deletionTimestamp"] = o.rfc3339(NOW)
    assert dep.plan_deployment(d, [], [], NOW).actions == []


def test_minimum_availability_condition() -> None:
    sim = Sim(deployment(4, strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}}))
    sim.sync()
    sim.settle(2)
    sim.sync()
    conds = {c["type"]: c for c in sim.d["status"]["conditions"]}
    assert conds["Available"]["status"] == "False"
    assert conds["Available"]["message"] == "Deployment does not have minimum availability."
    sim.settle(1)  # 3 of 4 available: minimum is 4 - 1
    sim.sync()
    conds = {c["type"]: c for c in sim.d["status"]["conditions"]}
    assert conds["Available"]["status"] == "True"
    assert conds["Progressing"]["reason"] == "ReplicaSetUpdated"


def test_a_typed_copy_of_the_template_is_not_a_new_revision() -> None:
    sim = Sim(deployment(2))
    sim.converge()
    tpl = sim.d["spec"]["template"]
    tpl["metadata"]["creationTimestamp"] = None
    tpl["spec"]["containers"][0]["resources"] = {}
    sim.d["metadata"]["generation"] += 1
    sim.converge()
    assert len(sim.rs) == 1
