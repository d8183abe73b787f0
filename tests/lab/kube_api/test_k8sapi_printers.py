"""Server-side table printing (lab/kube/api/printers.py, jsonpath.py): kube-apiserver's columns and cell
rules as pure functions, checked against what a real cluster shows for the same objects."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from lab.kube.api import jsonpath, printers
from lab.kube.api.kinds import BUILTIN_KINDS, KindInfo, PrinterColumn, kinds_from_crd

NOW = datetime.datetime(2026, 1, 10, 12, 0, 0, tzinfo=datetime.UTC)


def ago(seconds: float) -> str:
    return (NOW - datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def kind(plural: str) -> KindInfo:
    return next(k for k in BUILTIN_KINDS if k.plural == plural)


def pod(*statuses: dict[str, Any], phase: str = "Running", init: list[dict[str, Any]] | None = None,
        conditions: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    names = [s["name"] for s in statuses] or ["c"]
    doc: dict[str, Any] = {
        "metadata": {"name": "p", "namespace": "default", "creationTimestamp": ago(300)},
        "spec": {"containers": [{"name": n} for n in names], "nodeName": "n1"},
        "status": {"phase": phase, "containerStatuses": list(statuses), "conditions": conditions or []},
    }
    if init is not None:
        doc["spec"]["initContainers"] = [{"name": s["name"]} for s in init]
        doc["status"]["initContainerStatuses"] = init
    for k, v in extra.items():
        doc[k].update(v)
    return doc


def running(name: str = "c", ready: bool = True, restarts: int = 0) -> dict[str, Any]:
    return {"name": name, "ready": ready, "restartCount": restarts, "state": {"running": {"startedAt": ago(60)}}}


def waiting(why: str, name: str = "c", restarts: int = 0, last: dict[str, Any] | None = None) -> dict[str, Any]:
    s: dict[str, Any] = {"name": name, "ready": False, "restartCount": restarts, "state": {"waiting": {"reason": why}}}
    if last:
        s["lastState"] = {"terminated": last}
    return s


def terminated(name: str = "c", **t: Any) -> dict[str, Any]:
    return {"name": name, "ready": False, "restartCount": 0, "state": {"terminated": t}}


@pytest.mark.parametrize(("seconds", "text"), [
    (-5, "<invalid>"), (-1, "0s"), (0, "0s"), (119, "119s"), (120, "2m"), (125, "2m5s"), (600, "10m"),
    (179 * 60, "179m"), (3 * 3600, "3h"), (3 * 3600 + 300, "3h5m"), (8 * 3600, "8h"), (47 * 3600, "47h"),
    (48 * 3600, "2d"), (50 * 3600, "2d2h"), (8 * 86400, "8d"), (729 * 86400, "729d"), (730 * 86400, "2y"),
    (731 * 86400, "2y1d"), (8 * 365 * 86400, "8y"),
])
def test_human_duration_is_apimachinery_s(seconds: int, text: str) -> None:
    assert printers.human_duration(seconds) == text


def test_since_reads_time_and_microtime_and_says_unknown_without() -> None:
    assert printers.since(ago(30), NOW) == "30s"
    assert printers.since("2026-01-10T11:58:59.5Z", NOW) == "60s"
    assert printers.since(None, NOW) == "<unknown>"
    assert printers.since("yesterday", NOW) == "<unknown>"


@pytest.mark.parametrize(("obj", "ready", "status", "restarts"), [
    (pod(phase="Pending"), "0/1", "Pending", "0"),
    (pod(waiting("ContainerCreating"), phase="Pending"), "0/1", "ContainerCreating", "0"),
    (pod(running()), "1/1", "Running", "0"),
    (pod(running(ready=False)), "0/1", "Running", "0"),
    (pod(waiting("CrashLoopBackOff", restarts=3, last={"exitCode": 1, "reason": "Error", "finishedAt": ago(300)})),
     "0/1", "CrashLoopBackOff", "3 (5m ago)"),
    (pod(terminated(exitCode=0, reason="Completed"), phase="Succeeded"), "0/1", "Completed", "0"),
    (pod(terminated(exitCode=1, reason="Error"), phase="Failed"), "0/1", "Error", "0"),
    (pod(terminated(exitCode=2)), "0/1", "ExitCode:2", "0"),
    (pod(terminated(exitCode=137, signal=9)), "0/1", "Signal:9", "0"),
    (pod(waiting("PodInitializing"), phase="Pending", init=[running("init", ready=False)]), "0/1", "Init:0/1", "0"),
    (pod(waiting("PodInitializing"), phase="Pending", init=[waiting("ErrImagePull", name="init")]),
     "0/1", "Init:ErrImagePull", "0"),
    (pod(waiting("PodInitializing"), phase="Pending",
         init=[terminated("init", exitCode=1, reason="Error")]), "0/1", "Init:Error", "0"),
    (pod(running(), init=[terminated("init", exitCode=0, reason="Completed")]), "1/1", "Running", "0"),
    (pod(running(), metadata={"deletionTimestamp": ago(1)}), "1/1", "Terminating", "0"),
    (pod(terminated(exitCode=0, reason="Completed"), phase="Succeeded", metadata={"deletionTimestamp": ago(1)}),
     "0/1", "Completed", "0"),
    (pod(phase="Failed", status={"reason": "Evicted"}), "0/1", "Evicted", "0"),
    (pod(terminated(exitCode=0, reason="Completed"), running("b"), conditions=[{"type": "Ready", "status": "True"}]),
     "1/2", "Running", "0"),
    (pod(terminated(exitCode=0, reason="Completed"), running("b")), "1/2", "NotReady", "0"),
    (pod(running(restarts=2), running("b", restarts=1)), "2/2", "Running", "3"),
])
def test_pod_ready_status_restarts_as_kubectl_shows_them(obj: dict[str, Any], ready: str, status: str,
                                                         restarts: str) -> None:
    name, r, s, rs, age, *_ = printers.pod_row(obj, NOW)
    assert (name, r, s, rs, age) == ("p", ready, status, restarts, "5m")


def test_pod_wide_cells_and_row_conditions() -> None:
    obj = pod(running(), status={"podIPs": [{"ip": "10.1.0.5"}], "podIP": "10.1.0.5"})
    assert printers.pod_row(obj, NOW)[5:] == ["10.1.0.5", "n1", "<none>", "<none>"]
    bare = pod(phase="Pending")
    del bare["spec"]["nodeName"]
    assert printers.pod_row(bare, NOW)[5:] == ["<none>", "<none>", "<none>", "<none>"]
    gated = pod(running(), spec={"readinessGates": [{"conditionType": "a"}, {"conditionType": "b"}]},
                conditions=[{"type": "a", "status": "True"}, {"type": "b", "status": "False"}])
    assert printers.pod_row(gated, NOW)[8] == "1/2"
    done = pod(terminated(exitCode=0, reason="Completed"), phase="Succeeded")
    table = printers.table(kind("pods"), [done, obj], "7", now=NOW)
    assert table["rows"][0]["conditions"][0]["reason"] == "Succeeded"
    assert "conditions" not in table["rows"][1]


def test_table_document_columns_and_objects() -> None:
    obj = pod(running())
    doc = printers.table(kind("pods"), [obj], "42", now=NOW)
    assert doc["kind"] == "Table" and doc["apiVersion"] == "meta.k8s.io/v1"
    assert doc["metadata"] == {"resourceVersion": "42"}
    cols = [(c["name"], c["priority"]) for c in doc["columnDefinitions"]]
    assert cols == [("Name", 0), ("Ready", 0), ("Status", 0), ("Restarts", 0), ("Age", 0), ("IP", 1),
                    ("Node", 1), ("Nominated Node", 1), ("Readiness Gates", 1)]
    assert doc["columnDefinitions"][0]["format"] == "name"
    row = doc["rows"][0]
    assert len(row["cells"]) == len(cols)
    assert row["object"] == {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": obj["metadata"]}
    assert printers.table(kind("pods"), [obj], "1", include_object="Object", now=NOW)["rows"][0]["object"] is obj
    assert "object" not in printers.table(kind("pods"), [obj], "1", include_object="None", now=NOW)["rows"][0]


def node(**extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "metadata": {"name": "n1", "creationTimestamp": ago(7200), "labels": {}},
        "spec": {},
        "status": {"conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
                   "addresses": [{"type": "Hostname", "address": "n1"},
                                 {"type": "InternalIP", "address": "192.168.1.1"}],
                   "nodeInfo": {"kubeletVersion": "v1.32.0", "osImage": "Debian", "kernelVersion": "6.1",
                                "containerRuntimeVersion": "lab://0.1"}},
    }
    for k, v in extra.items():
        doc[k].update(v)
    return doc


def test_node_rows() -> None:
    assert printers.node_row(node(), NOW) == ["n1", "Ready", "<none>", "120m", "v1.32.0", "192.168.1.1", "<none>",
                                              "Debian", "6.1", "lab://0.1"]
    labels = {"node-role.kubernetes.io/control-plane": "", "node-role.kubernetes.io/worker": "",
              "kubernetes.io/role": "edge", "node-role.kubernetes.io/": "x"}
    row = printers.node_row(node(metadata={"labels": labels}, spec={"unschedulable": True}), NOW)
    assert row[1:3] == ["Ready,SchedulingDisabled", "control-plane,edge,worker"]
    not_ready = node(status={"conditions": [{"type": "Ready", "status": "Unknown"}], "nodeInfo": {}})
    assert printers.node_row(not_ready, NOW)[1] == "NotReady"
    assert printers.node_row(not_ready, NOW)[7:] == ["<unknown>"] * 3
    assert printers.node_row(node(status={"conditions": []}), NOW)[1] == "Unknown"


def svc(stype: str = "ClusterIP", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "s", "creationTimestamp": ago(10)},
            "spec": {"type": stype, "clusterIP": "172.16.1.10", "clusterIPs": ["172.16.1.10"], **spec}}


def test_service_rows() -> None:
    ports = [{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]
    assert printers.service_row(svc(ports=ports, selector={"b": "2", "a": "1"}), NOW) == [
        "s", "ClusterIP", "172.16.1.10", "<none>", "80/TCP,53/UDP", "10s", "a=1,b=2"]
    node_port = svc("NodePort", ports=[{"port": 2379, "nodePort": 32379, "protocol": "TCP"}], externalIPs=["1.2.3.4"])
    assert printers.service_row(node_port, NOW)[3:5] == ["1.2.3.4", "2379:32379/TCP"]
    lb = svc("LoadBalancer", ports=[{"port": 443}])
    assert printers.service_row(lb, NOW)[3:5] == ["<pending>", "443/TCP"]
    lb["status"] = {"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}, {"hostname": "lb.example"}]}}
    assert printers.service_row(lb, NOW)[3] == "5.6.7.8,lb.example"
    ext = {"metadata": {"name": "e"}, "spec": {"type": "ExternalName", "externalName": "db.example"}}
    assert printers.service_row(ext, NOW)[1:6] == ["ExternalName", "<none>", "db.example", "<none>", "<unknown>"]
    headless = svc(clusterIP="None", clusterIPs=["None"])
    assert printers.service_row(headless, NOW)[2] == "None"


def test_endpointslice_and_endpoints_rows() -> None:
    es = {"metadata": {"name": "e-1", "creationTimestamp": ago(5)}, "addressType": "IPv4",
          "ports": [{"name": "http", "port": 8080}, {"name": "x"}, {}],
          "endpoints": [{"addresses": [f"10.1.0.{i}"]} for i in range(1, 5)]}
    assert printers.endpointslice_row(es, NOW) == ["e-1", "IPv4", "8080,x,*", "10.1.0.1,10.1.0.2,10.1.0.3 + 1 more...",
                                                   "5s"]
    empty = {"metadata": {"name": "e-2"}, "addressType": "IPv4"}
    assert printers.endpointslice_row(empty, NOW)[2:4] == ["<unset>", "<unset>"]
    ep = {"metadata": {"name": "s"}, "subsets": [{"addresses": [{"ip": "10.1.0.1"}, {"ip": "10.1.0.2"}],
                                                  "ports": [{"port": 80}]}]}
    assert printers.endpoints_row(ep, NOW)[1] == "10.1.0.1:80,10.1.0.2:80"
    assert printers.endpoints_row({"metadata": {"name": "s"}}, NOW)[1] == "<none>"


def test_workload_rows() -> None:
    template = {"spec": {"containers": [{"name": "a", "image": "img:1"}, {"name": "b", "image": "img:2"}],
                         "nodeSelector": {"kubernetes.io/os": "linux"}}}
    selector = {"matchLabels": {"app": "x"}, "matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["web", "api"]}, {"key": "canary", "operator": "DoesNotExist"}]}
    md = {"name": "w", "creationTimestamp": ago(90)}
    d = {"metadata": md, "spec": {"replicas": 3, "selector": selector, "template": template},
         "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}}
    assert printers.deployment_row(d, NOW) == ["w", "2/3", 3, 2, "90s", "a,b", "img:1,img:2",
                                               "app=x,!canary,tier in (api,web)"]
    rs = {"metadata": md, "spec": {"replicas": 2, "template": template}, "status": {"replicas": 2, "readyReplicas": 1}}
    assert printers.replicaset_row(rs, NOW)[:5] == ["w", 2, 2, 1, "90s"]
    ds = {"metadata": md, "spec": {"template": template}, "status": {
        "desiredNumberScheduled": 2, "currentNumberScheduled": 2, "numberReady": 1, "updatedNumberScheduled": 2,
        "numberAvailable": 1}}
    assert printers.daemonset_row(ds, NOW)[:8] == ["w", 2, 2, 1, 2, 1, "kubernetes.io/os=linux", "90s"]
    assert printers.format_label_selector({}) == "<none>"
    assert printers.format_label_selector({"matchExpressions": [{"key": "k", "operator": "Bogus"}]}) == "<error>"


def test_config_rbac_and_event_rows() -> None:
    md = {"name": "x", "creationTimestamp": ago(3)}
    assert printers.secret_row({"metadata": md, "type": "kubernetes.io/tls", "data": {"a": "", "b": ""}}, NOW) == [
        "x", "kubernetes.io/tls", 2, "3s"]
    assert printers.configmap_row({"metadata": md, "data": {"a": "1"}, "binaryData": {"b": ""}}, NOW) == ["x", 2, "3s"]
    assert printers.serviceaccount_row({"metadata": md}, NOW) == ["x", 0, "3s"]
    rb = {"metadata": md, "roleRef": {"kind": "ClusterRole", "name": "view"},
          "subjects": [{"kind": "User", "name": "bob"}, {"kind": "ServiceAccount", "name": "sa", "namespace": "ns"}]}
    assert printers.rolebinding_row(rb, NOW) == ["x", "ClusterRole/view", "3s", "bob", "", "ns/sa"]
    assert printers.created_at_row({"metadata": md}, NOW) == ["x", md["creationTimestamp"]]
    ev = {"metadata": {"name": "p.123"}, "type": "Warning", "reason": "BackOff", "message": " Back-off \n",
          "involvedObject": {"kind": "Pod", "name": "p", "fieldPath": "spec.containers{c}"},
          "source": {"component": "kubelet", "host": "n1"}, "firstTimestamp": ago(600), "lastTimestamp": ago(30),
          "count": 4}
    assert printers.event_row(ev, NOW) == ["30s", "Warning", "BackOff", "pod/p", "spec.containers{c}", "kubelet, n1",
                                           "Back-off", "10m", 4, "p.123"]
    new_api = {"metadata": {"name": "e"}, "eventTime": "2026-01-10T11:59:50.000000Z", "reportingController": "ctl",
               "involvedObject": {"kind": "Node"}}
    assert printers.event_row(new_api, NOW)[:4] == ["10s", "", "", "node"]
    assert printers.event_row(new_api, NOW)[5] == "ctl" and printers.event_row(new_api, NOW)[8] == 1


def test_every_builtin_kind_has_one_cell_per_column() -> None:
    for info in BUILTIN_KINDS:
        doc = printers.table(info, [{"metadata": {"name": "x"}}], "1", now=NOW)
        assert len(doc["rows"][0]["cells"]) == len(doc["columnDefinitions"]), info.plural
        assert doc["rows"][0]["cells"][0 if info.plural != "events" else 9] == "x"


CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {"group": "example.com", "scope": "Namespaced",
             "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
             "versions": [{"name": "v1", "served": True, "storage": True, "additionalPrinterColumns": [
                 {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                 {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
                 {"name": "Owner", "type": "string", "jsonPath": ".metadata.labels['example.com/owner']",
                  "priority": 1, "description": "who"},
                 {"name": "Spec", "type": "string", "jsonPath": ".spec"},
                 {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                 {"name": "Broken", "type": "string", "jsonPath": ".spec[?(oops)]"},
                 {"name": "no path"}]}]},
}


def test_crd_columns_come_from_additional_printer_columns() -> None:
    (info,) = kinds_from_crd(CRD)
    assert [c.name for c in info.printer_columns] == ["Size", "Ready", "Owner", "Spec", "Age", "Broken"]
    widget = {"metadata": {"name": "w1", "creationTimestamp": ago(60), "labels": {"example.com/owner": "ann"}},
              "spec": {"size": 3.0}, "status": {"conditions": [{"type": "Synced", "status": "True"},
                                                              {"type": "Ready", "status": "False"}]}}
    doc = printers.table(info, [widget, {"metadata": {"name": "w2"}}], "5", now=NOW)
    cols = [(c["name"], c["type"], c["priority"], c["description"]) for c in doc["columnDefinitions"]]
    assert cols[:4] == [("Name", "string", 0, "Name must be unique within a namespace."),
                        ("Size", "integer", 0, "Custom resource definition column (in JSONPath format): .spec.size"),
                        ("Ready", "string", 0, 'Custom resource definition column (in JSONPath format): '
                         '.status.conditions[?(@.type=="Ready")].status'), ("Owner", "string", 1, "who")]
    assert doc["rows"][0]["cells"] == ["w1", 3, "False", "ann", '{"size":3.0}', "60s", None]
    assert doc["rows"][1]["cells"] == ["w2", None, None, None, None, None, None]


def test_crd_without_columns_and_other_kinds_get_name_and_age() -> None:
    info = KindInfo("example.com", "v1", "Gadget", "gadgets", True, crd=True)
    doc = printers.table(info, [{"metadata": {"name": "g", "creationTimestamp": ago(2)}}], "1", now=NOW)
    assert [c["name"] for c in doc["columnDefinitions"]] == ["Name", "Age"]
    assert doc["rows"][0]["cells"] == ["g", "2s"]
    cell = printers.custom_cell(PrinterColumn("When", "date", ".x"), {"x": "not a time"}, NOW)
    assert cell == "<invalid>"
    assert printers.custom_cell(PrinterColumn("On", "boolean", ".x"), {"x": True}, NOW) is True
    assert printers.custom_cell(PrinterColumn("N", "number", ".x"), {"x": 2}, NOW) == 2.0
    assert printers.custom_cell(PrinterColumn("N", "integer", ".x"), {"x": "2"}, NOW) is None


@pytest.mark.parametrize(("path", "found"), [
    (".a.b", [1]),
    ("{.a.b}", [1]),
    (".a.missing", []),
    (".l[0].n", ["x"]),
    (".l[-1].n", ["z"]),
    (".l[5]", []),
    (".l[*].n", ["x", "y", "z"]),
    (".m['k.io/x']", ["v"]),
    ('.m["k.io/x"]', ["v"]),
    ('.l[?(@.n=="y")].v', [2]),
    (".l[?(@.v>1)].n", ["y", "z"]),
    (".l[?(@.v!=1)].n", ["y", "z"]),
    (".l[?(@.flag)].n", ["x"]),
    (".l[?(@.flag==true)].n", ["x"]),
    (".l[?(@.deep.k=='q')].n", ["z"]),
])
def test_jsonpath_subset(path: str, found: list[Any]) -> None:
    doc = {"a": {"b": 1}, "m": {"k.io/x": "v"},
           "l": [{"n": "x", "v": 1, "flag": True}, {"n": "y", "v": 2}, {"n": "z", "v": 3, "deep": {"k": "q"}}]}
    assert jsonpath.find(path, doc) == found


@pytest.mark.parametrize("path", ["a.b", ".a[", ".a[?(@.x=~/y/)]", ".a..b", ".a[1:2]"])
def test_jsonpath_outside_the_subset_is_an_error(path: str) -> None:
    with pytest.raises(jsonpath.JSONPathError):
        jsonpath.parse(path)
