"""The DaemonSet controller's pure logic: eligible nodes, one pod each, rolling updates, status."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from lab.kube.controllers import daemonset as ds
from lab.kube.controllers import objects as o
from tests.lab.kube_controllers.cluster import node

Obj = dict[str, Any]
NOW = 1_700_000_000.0


def daemonset(image: str = "v1", *, node_selector: dict[str, str] | None = None, max_unavailable: Any = None,
              strategy: str = "RollingUpdate") -> Obj:
    pod_spec: Obj = {"containers": [{"name": "agent", "image": image}]}
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    update: Obj = {"type": strategy}
    if max_unavailable is not None:
        update["rollingUpdate"] = {"maxUnavailable": max_unavailable}
    return {"metadata": {"name": "agent", "namespace": "kube-system", "uid": "ds-uid", "generation": 1},
            "spec": {"selector": {"matchLabels": {"app": "agent"}}, "updateStrategy": update,
                     "template": {"metadata": {"labels": {"app": "agent"}}, "spec": pod_spec}}}


_n = itertools.count()


def daemon_pod(d: Obj, node_name: str, *, ready: bool = True, revision: str | None = None, phase: str = "Running",
               terminating: bool = False) -> Obj:
    body = ds.daemon_pod(d, node_name)
    body["metadata"].update(name=f"agent-{next(_n)}", uid=f"uid-{next(_n)}", creationTimestamp=o.rfc3339(NOW))
    if revision is not None:
        body["metadata"]["labels"][ds.HASH_LABEL] = revision
    if terminating:
        body["metadata"]["deletionTimestamp"] = o.rfc3339(NOW + 30)
    body["status"] = {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                                      "lastTransitionTime": o.rfc3339(NOW - 100)}]}
    return body


def test_should_run_selectors_and_taints() -> None:
    d = daemonset(node_selector={"role": "worker"})
    assert ds.should_run(d, node("n0", {"role": "worker"}))
    assert not ds.should_run(d, node("n1", {"role": "db"}))
    # cordoned and not-ready nodes still get daemons (the controller's own tolerations)
    assert ds.should_run(d, node("n2", {"role": "worker"}, unschedulable=True, taints=[
        {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}], ready=False))
    assert not ds.should_run(d, node("n3", {"role": "worker"}, taints=[{"key": "gpu", "effect": "NoSchedule"}]))


def test_daemon_pod_is_bound_and_pinned() -> None:
    d = daemonset()
    body = ds.daemon_pod(d, "n1")
    assert body["spec"]["nodeName"] == "n1"
    assert body["metadata"]["generateName"] == "agent-"
    assert body["metadata"]["labels"][ds.HASH_LABEL] == ds.revision_hash(d)
    assert body["metadata"]["ownerReferences"][0]["kind"] == "DaemonSet"
    terms = body["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms == {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In",
                                                             "values": ["n1"]}]}]}
    assert {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"} in \
        body["spec"]["tolerations"]


def test_one_pod_per_matching_node() -> None:
    d = daemonset(node_selector={"role": "worker"})
    nodes = [node("n0", {"role": "worker"}), node("n1", {"role": "worker"}), node("n2", {"role": "db"})]
    plan = ds.plan_daemonset(d, nodes, [], NOW)
    assert plan.create == ["n0", "n1"] and plan.delete == []
    assert plan.status["desiredNumberScheduled"] == 2 and plan.status["currentNumberScheduled"] == 0
    pods = [daemon_pod(d, "n0"), daemon_pod(d, "n0"), daemon_pod(d, "n2"), daemon_pod(d, "n1", phase="Failed")]
    plan = ds.plan_daemonset(d, nodes, pods, NOW)
    assert plan.create == ["n1"]
    assert sorted(o.spec(p)["nodeName"] for p in plan.delete) == ["n0", "n1", "n2"]  # surplus, failed, misplaced
    assert plan.status["numberMisscheduled"] == 1


def test_status_counts() -> None:
    d = daemonset()
    nodes = [node("n0"), node("n1"), node("n2")]
    pods = [daemon_pod(d, "n0"), daemon_pod(d, "n1", ready=False), daemon_pod(d, "n2", revision="old")]
    plan = ds.plan_daemonset(d, nodes, pods, NOW)
    assert plan.status == {"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberMisscheduled": 0,
                           "numberReady": 2, "updatedNumberScheduled": 2, "numberAvailable": 2,
                           "numberUnavailable": 1, "observedGeneration": 1}


def test_on_delete_strategy_does_not_roll() -> None:
    d = daemonset(strategy="OnDelete")
    plan = ds.plan_daemonset(d, [node("n0")], [daemon_pod(d, "n0", revision="old")], NOW)
    assert plan.delete == [] and plan.create == []


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 7), st.sampled_from([None, 1, 2, "50%"]), st.lists(st.booleans(), max_size=60))
def test_rolling_update_respects_max_unavailable(n_nodes: int, max_unavailable: Any, readiness: list[bool]) -> None:
    """Replace every pod: never more nodes without an available pod than maxUnavailable (once the rollout
    starts from a fully available state), and every node ends with exactly one updated pod."""
    d = daemonset("v1", max_unavailable=max_unavailable)
    nodes = [node(f"n{i}") for i in range(n_nodes)]
    pods = [daemon_pod(d, o.name(n)) for n in nodes]
    d["spec"]["template"]["spec"]["containers"][0]["image"] = "v2"
    budget = ds.max_unavailable(d, n_nodes)
    draws = iter(readiness)
    for _ in range(300):
        plan = ds.plan_daemonset(d, nodes, pods, NOW)
        deleted = {o.uid(p) for p in plan.delete}
        pods = [p for p in pods if o.uid(p) not in deleted]
        pods += [daemon_pod(d, n, ready=False) for n in plan.create]
        available_nodes = {o.spec(p)["nodeName"] for p in pods if o.is_ready(p)}
        assert n_nodes - len(available_nodes) <= budget
        # new pods become ready when the draw says so (or when draws run out)
        for p in pods:
            if not o.is_ready(p) and next(draws, True):
                p["status"]["conditions"][0]["status"] = "True"
        if plan.status["updatedNumberScheduled"] == n_nodes and plan.status["numberAvailable"] == n_nodes:
            break
    else:
        raise AssertionError("rollout did not finish")
    assert sorted(o.spec(p)["nodeName"] for p in pods) == sorted(o.name(n) for n in nodes)
    assert all(o.labels(p)[ds.HASH_LABEL] == ds.revision_hash(d) for p in pods)


def test_unavailable_old_pods_are_replaced_at_once() -> None:
    d = daemonset("v1")
    nodes = [node("n0"), node("n1"), node("n2")]
    pods = [daemon_pod(d, "n0", ready=False), daemon_pod(d, "n1", ready=False), daemon_pod(d, "n2")]
    d["spec"]["template"]["spec"]["containers"][0]["image"] = "v2"
    plan = ds.plan_daemonset(d, nodes, pods, NOW)
    # both broken old pods go now; the healthy one waits (budget 1 is used up by the broken ones)
    assert sorted(o.spec(p)["nodeName"] for p in plan.delete) == ["n0", "n1"]


def test_terminating_pods_do_not_count() -> None:
    d = daemonset()
    plan = ds.plan_daemonset(d, [node("n0")], [daemon_pod(d, "n0", terminating=True)], NOW)
    assert plan.create == ["n0"]
