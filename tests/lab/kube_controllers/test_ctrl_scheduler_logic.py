"""The scheduler's pure logic: which pods it takes, node filters and their messages, node choice."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from lab.kube.controllers import scheduler as s
from tests.lab.kube_controllers.cluster import node

Obj = dict[str, Any]


def pod(name: str = "p", *, node_selector: dict[str, str] | None = None, node_name: str | None = None,
        scheduler: str | None = None, tolerations: list[Obj] | None = None, phase: str = "Pending") -> Obj:
    spec: Obj = {"containers": [{"name": "c", "image": "i"}]}
    if node_selector:
        spec["nodeSelector"] = node_selector
    if node_name:
        spec["nodeName"] = node_name
    if scheduler:
        spec["schedulerName"] = scheduler
    if tolerations:
        spec["tolerations"] = tolerations
    return {"metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}"}, "spec": spec,
            "status": {"phase": phase}}


def test_wants_scheduling() -> None:
    assert s.wants_scheduling(pod())
    assert s.wants_scheduling(pod(scheduler="default-scheduler"))
    assert not s.wants_scheduling(pod(scheduler="other"))
    assert not s.wants_scheduling(pod(node_name="n0"))
    assert not s.wants_scheduling(pod(phase="Succeeded"))
    assert not s.wants_scheduling({**pod(), "metadata": {"name": "p", "deletionTimestamp": "2024-01-01T00:00:00Z"}})


def test_filters_in_the_real_order_with_the_real_reasons() -> None:
    p = pod(node_selector={"zone": "a"})
    assert s.filter_node(p, node("n0", {"zone": "a"})) is None
    assert s.filter_node(p, node("n0", {"zone": "b"})) == "node(s) didn't match Pod's node affinity/selector"
    assert s.filter_node(p, node("n0", {"zone": "a"}, unschedulable=True)) == "node(s) were unschedulable"
    assert s.filter_node(p, node("n0", {"zone": "b"}, ready=False)) == \
        "node(s) had untolerated taint {node.kubernetes.io/not-ready: }"
    tainted = node("n0", {"zone": "a"}, taints=[{"key": "dedicated", "value": "db", "effect": "NoSchedule"}])
    assert s.filter_node(p, tainted) == "node(s) had untolerated taint {dedicated: db}"
    tolerant = pod(node_selector={"zone": "a"}, tolerations=[{"key": "dedicated", "operator": "Exists"}])
    assert s.filter_node(tolerant, tainted) is None


def test_message_like_kube_scheduler() -> None:
    nodes = [node("n0", {"zone": "b"}), node("n1", {"zone": "b"})]
    d = s.schedule(pod(node_selector={"zone": "a"}), nodes, {})
    assert d == s.Decision(None, "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.")
    mixed = [node("n0", {"zone": "b"}), node("n1", {"zone": "a"}, ready=False), node("n2", {"zone": "a"},
                                                                                     unschedulable=True)]
    assert s.schedule(pod(node_selector={"zone": "a"}), mixed, {}).message == (
        "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
        "1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, 1 node(s) were unschedulable.")
    assert s.schedule(pod(), [], {}).message == "no nodes available to schedule pods"


def test_fewest_pods_then_name() -> None:
    nodes = [node("n2"), node("n0"), node("n1")]
    assert s.schedule(pod(), nodes, {}).node == "n0"
    assert s.schedule(pod(), nodes, {"n0": 2, "n1": 1, "n2": 1}).node == "n1"
    assert s.schedule(pod(), nodes, {"n0": 1, "n1": 1, "n2": 0}).node == "n2"


def test_pod_counts_skip_finished_and_include_assumed() -> None:
    pods = [pod("a", node_name="n0"), pod("b", node_name="n0", phase="Succeeded"), pod("c"), pod("d")]
    assert s.pod_counts(pods) == {"n0": 1}
    assert s.pod_counts(pods, {"default/c": "n1", "default/d": "n0"}) == {"n0": 2, "n1": 1}


def test_unschedulable_patch_only_when_it_changes() -> None:
    p = pod()
    patch = s.unschedulable_patch(p, "0/1 nodes are available: x.", 1000.0)
    assert patch is not None
    cond = patch["status"]["conditions"][0]
    assert cond["type"] == "PodScheduled" and cond["status"] == "False" and cond["reason"] == "Unschedulable"
    marked = {**p, "status": {**p["status"], **patch["status"]}}
    assert s.unschedulable_patch(marked, "0/1 nodes are available: x.", 2000.0) is None
    assert s.unschedulable_patch(marked, "0/2 nodes are available: y.", 2000.0) is not None


@given(st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=6), st.integers(0, 20))
def test_sequential_binding_spreads_evenly(initial: list[int], extra: int) -> None:
    """Scheduling pods one after another (counting each binding) keeps max-min spread at the minimum."""
    nodes = [node(f"n{i}") for i in range(len(initial))]
    counts = {f"n{i}": c for i, c in enumerate(initial)}
    for _ in range(extra):
        chosen = s.schedule(pod(), nodes, counts).node
        assert chosen is not None
        assert counts[chosen] == min(counts.values())
        counts[chosen] += 1
