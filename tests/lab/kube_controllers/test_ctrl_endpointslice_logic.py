"""The EndpointSlice controller's pure logic: endpoints, ports, grouping, in-place updates, no churn."""

from __future__ import annotations

from typing import Any

from lab.kube.controllers import endpointslice as es
from lab.kube.controllers import objects as o
from lab.kube.controllers.actions import Create, Delete, Patch

Obj = dict[str, Any]
SVC: Obj = {"metadata": {"name": "web", "namespace": "default", "uid": "svc-uid", "labels": {"team": "a"}},
            "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.10", "ports": [
                {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                {"name": "metrics", "port": 9090, "targetPort": 9090, "protocol": "TCP"},
                {"name": "dns", "port": 53, "targetPort": "dns", "protocol": "UDP"}]}}


def pod(name: str, ip: str | None = "10.1.0.5", *, ready: bool = True, terminating: bool = False,
        labels: dict[str, str] | None = None, http_port: int = 8080, phase: str = "Running") -> Obj:
    md: Obj = {"name": name, "namespace": "default", "uid": f"uid-{name}", "labels": labels or {"app": "web"}}
    if terminating:
        md["deletionTimestamp"] = "2030-01-01T00:00:00Z"
    st: Obj = {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if ip:
        st["podIP"] = ip
        st["podIPs"] = [{"ip": ip}]
    return {"metadata": md, "spec": {"nodeName": "n0", "containers": [{"name": "c", "ports": [
        {"name": "http", "containerPort": http_port, "protocol": "TCP"},
        {"name": "dns", "containerPort": 5353, "protocol": "TCP"}]}]}, "status": st}


def apply(actions: list[Any], slices: list[Obj]) -> list[Obj]:
    """Apply the plan to a list of slices (creates get names)."""
    out = {o.name(s): o.deep_copy(s) for s in slices}
    for a in actions:
        if isinstance(a, Create):
            body = o.deep_copy(a.body)
            body["metadata"]["name"] = f"{body['metadata']['generateName']}{len(out)}x"
            body["metadata"]["uid"] = f"uid-{body['metadata']['name']}"
            out[body["metadata"]["name"]] = body
        elif isinstance(a, Patch):
            s = out[a.name]
            lbls = {**o.labels(s), **a.body["metadata"]["labels"]}
            s["metadata"]["labels"] = {k: v for k, v in lbls.items() if v is not None}
            s["metadata"]["ownerReferences"] = a.body["metadata"]["ownerReferences"]
            for k in ("addressType", "ports", "endpoints"):
                s[k] = a.body[k]
        elif isinstance(a, Delete):
            del out[a.name]
    return list(out.values())


def test_find_port() -> None:
    p = pod("a")
    assert es.find_port(p, {"port": 80, "targetPort": "http"}) == 8080
    assert es.find_port(p, {"port": 80, "targetPort": 81}) == 81
    assert es.find_port(p, {"port": 80}) == 80
    assert es.find_port(p, {"port": 53, "targetPort": "dns", "protocol": "UDP"}) is None  # protocol must match
    assert es.find_port(p, {"port": 53, "targetPort": "dns", "protocol": "TCP"}) == 5353


def test_one_slice_like_the_real_controller() -> None:
    pods = [pod("a", "10.1.0.5"), pod("b", "10.1.1.5", ready=False), pod("c", None), pod("d", "10.1.0.6",
                                                                                       labels={"app": "db"})]
    actions = es.plan_slices("default", "web", SVC, pods, [], {"n0": "zone-a"})
    assert len(actions) == 1 and isinstance(actions[0], Create)
    body = actions[0].body
    assert body["metadata"]["generateName"] == "web-"
    assert body["metadata"]["labels"] == {"team": "a", "kubernetes.io/service-name": "web",
                                          "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
    assert body["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Service", "name": "web",
                                                    "uid": "svc-uid", "controller": True, "blockOwnerDeletion": True}]
    assert body["addressType"] == "IPv4"
    assert body["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"},
                             {"name": "metrics", "port": 9090, "protocol": "TCP"}]
    assert body["endpoints"] == [
        {"addresses": ["10.1.0.5"], "conditions": {"ready": True, "serving": True, "terminating": False},
         "targetRef": {"kind": "Pod", "namespace": "default", "name": "a", "uid": "uid-a"}, "nodeName": "n0",
         "zone": "zone-a"},
        {"addresses": ["10.1.1.5"], "conditions": {"ready": False, "serving": False, "terminating": False},
         "targetRef": {"kind": "Pod", "namespace": "default", "name": "b", "uid": "uid-b"}, "nodeName": "n0",
         "zone": "zone-a"},
    ]


def test_terminating_and_finished_pods() -> None:
    eps = es.desired_chunks(SVC, [pod("a", terminating=True), pod("b", terminating=True, ready=False),
                                  pod("c", phase="Succeeded")], {})[0][1]
    assert [e["conditions"] for e in eps] == [{"ready": False, "serving": True, "terminating": True},
                                              {"ready": False, "serving": False, "terminating": True}]
    publish = {**SVC, "spec": {**SVC["spec"], "publishNotReadyAddresses": True}}
    eps = es.desired_chunks(publish, [pod("a", ready=False)], {})[0][1]
    assert eps[0]["conditions"] == {"ready": True, "serving": True, "terminating": False}


def test_no_churn_update_in_place_and_placeholder() -> None:
    pods = [pod("a", "10.1.0.5"), pod("b", "10.1.0.6")]
    slices = apply(es.plan_slices("default", "web", SVC, pods, []), [])
    assert es.plan_slices("default", "web", SVC, pods, slices) == []  # nothing changed: nothing written
    pods[1] = pod("b", "10.1.0.6", ready=False)
    actions = es.plan_slices("default", "web", SVC, pods, slices)
    assert [type(a) for a in actions] == [Patch]
    assert isinstance(actions[0], Patch) and actions[0].name == o.name(slices[0])
    slices = apply(actions, slices)
    assert es.plan_slices("default", "web", SVC, pods, slices) == []
    # no endpoints left: one empty placeholder slice stays (reused, not recreated)
    actions = es.plan_slices("default", "web", SVC, [], slices)
    assert [type(a) for a in actions] == [Patch]
    slices = apply(actions, slices)
    assert slices[0]["endpoints"] == [] and slices[0]["ports"] == []


def test_pods_with_different_ports_get_separate_slices() -> None:
    pods = [pod("a", "10.1.0.5", http_port=8080), pod("b", "10.1.0.6", http_port=8081)]
    slices = apply(es.plan_slices("default", "web", SVC, pods, []), [])
    assert sorted(s["ports"][0]["port"] for s in slices) == [8080, 8081]
    assert es.plan_slices("default", "web", SVC, pods, slices) == []


def test_at_most_100_endpoints_per_slice() -> None:
    pods = [pod(f"p{i:03d}", f"10.1.{i // 200}.{i % 200 + 2}") for i in range(250)]
    slices = apply(es.plan_slices("default", "web", SVC, pods, []), [])
    assert sorted(len(s["endpoints"]) for s in slices) == [50, 100, 100]


def test_service_gone_or_unselected_deletes_only_managed_slices() -> None:
    slices = apply(es.plan_slices("default", "web", SVC, [pod("a")], []), [])
    foreign = {"metadata": {"name": "web-manual", "namespace": "default", "uid": "u",
                            "labels": {"kubernetes.io/service-name": "web"}}, "endpoints": []}
    actions = es.plan_slices("default", "web", None, [], [*slices, foreign])
    assert [(type(a), a.name) for a in actions if isinstance(a, Delete)] == [(Delete, o.name(slices[0]))]
    assert len(actions) == 1
    unselected = {**SVC, "spec": {**SVC["spec"], "selector": {}}}
    assert [type(a) for a in es.plan_slices("default", "web", unselected, [], slices)] == [Delete]


def test_service_labels_follow_and_headless() -> None:
    slices = apply(es.plan_slices("default", "web", SVC, [pod("a")], []), [])
    relabelled = {**SVC, "metadata": {**SVC["metadata"], "labels": {"team": "b"}}}
    actions = es.plan_slices("default", "web", relabelled, [pod("a")], slices)
    assert len(actions) == 1
    assert apply(actions, slices)[0]["metadata"]["labels"]["team"] == "b"
    headless = {**SVC, "spec": {**SVC["spec"], "clusterIP": "None"}}
    assert es.slice_labels(headless)["service.kubernetes.io/headless"] == ""
