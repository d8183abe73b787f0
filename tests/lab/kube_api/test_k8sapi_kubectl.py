"""The real ``kubectl`` against the emulator: discovery, get (table and JSON), create, apply twice, label,
annotate, delete, selectors, and a CRD registered at runtime then upgraded from v1alpha1 to v1beta1."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab.kube.api import K8sApiServer

Kubectl = Callable[..., subprocess.CompletedProcess[str]]

SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  labels: {app: x}
spec:
  selector: {app: x}
  ports:
  - {name: http, port: 80}
"""

NAMESPACE = """\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
"""


def test_get_nodes_and_ciliumnodes(kubectl: Kubectl, k8s_server: K8sApiServer) -> None:
    k8s_server.store.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}})
    k8s_server.store.create({"apiVersion": "cilium.io/v2", "kind": "CiliumNode", "metadata": {"name": "node-1"},
                             "spec": {"addresses": [{"type": "InternalIP", "ip": "192.168.0.1"}]}})
    out = kubectl("get", "nodes").stdout
    assert out.split()[:7] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION", "node-1", "Unknown"]
    doc = json.loads(kubectl("get", "ciliumnodes", "-o", "json").stdout)
    assert [i["metadata"]["name"] for i in doc["items"]] == ["node-1"]
    assert doc["items"][0]["spec"]["addresses"][0]["ip"] == "192.168.0.1"
    assert "node-1" in kubectl("get", "cn", "node-1", "-o", "name").stdout


def test_create_apply_label_annotate_delete(kubectl: Kubectl, k8s_server: K8sApiServer, tmp_path: Path) -> None:
    ns_file, svc_file = tmp_path / "ns.yaml", tmp_path / "svc.yaml"
    ns_file.write_text(NAMESPACE)
    svc_file.write_text(SERVICE)
    assert "namespace/shop created" in kubectl("create", "-f", str(ns_file)).stdout
    assert "service/web created" in kubectl("apply", "-f", str(svc_file)).stdout
    svc_file.write_text(SERVICE.replace("port: 80}", "port: 80}\n  - {name: https, port: 443}"))
    assert "service/web configured" in kubectl("apply", "-f", str(svc_file)).stdout
    svc = k8s_server.store.get("services", "web", "shop")
    assert [p["port"] for p in svc["spec"]["ports"]] == [80, 443]
    assert "kubectl.kubernetes.io/last-applied-configuration" in svc["metadata"]["annotations"]
    assert "unchanged" in kubectl("apply", "-f", str(svc_file)).stdout

    kubectl("label", "svc", "web", "-n", "shop", "tier=front")
    kubectl("annotate", "svc", "web", "-n", "shop", "note=hello")
    svc = k8s_server.store.get("services", "web", "shop")
    assert svc["metadata"]["labels"] == {"app": "x", "tier": "front"}
    assert svc["metadata"]["annotations"]["note"] == "hello"

    k8s_server.store.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "other", "namespace": "shop",
                                                                                 "labels": {"app": "y"}}})
    out = kubectl("get", "svc", "-n", "shop", "-l", "app=x").stdout
    assert "web" in out and "other" not in out
    names = kubectl("get", "svc", "-n", "shop", "-l", "app in (x,y)", "-o", "name").stdout.split()
    assert names == ["service/other", "service/web"]

    assert "deleted" in kubectl("delete", "-f", str(svc_file)).stdout
    assert kubectl("get", "svc", "web", "-n", "shop", check=False).returncode != 0


def test_apply_custom_resource(kubectl: Kubectl, k8s_server: K8sApiServer, tmp_path: Path) -> None:
    f = tmp_path / "cep.yaml"
    f.write_text("apiVersion: cilium.io/v2\nkind: CiliumEndpoint\nmetadata: {name: pod-a, namespace: default}\n"
                 "status: {id: 42, networking: {addressing: [{ipv4: 10.0.1.5}]}}\n")
    kubectl("apply", "-f", str(f))
    f.write_text(f.read_text().replace("id: 42", "id: 43"))
    assert "configured" in kubectl("apply", "-f", str(f)).stdout
    assert k8s_server.store.get("ciliumendpoints", "pod-a")["status"]["id"] == 43


CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1alpha1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
"""


def test_runtime_crd_and_upgrade(kubectl: Kubectl, k8s_server: K8sApiServer, tmp_path: Path) -> None:
    crd_file, obj_file = tmp_path / "crd.yaml", tmp_path / "w.yaml"
    assert "widgets" not in kubectl("api-resources").stdout
    crd_file.write_text(CRD)
    kubectl("apply", "-f", str(crd_file))
    kubectl("wait", "--for=condition=Established", "crd/widgets.example.com", "--timeout=10s")
    lines = [ln.split() for ln in kubectl("api-resources", "--api-group=example.com").stdout.splitlines()]
    assert lines[1] == ["widgets", "wd", "example.com/v1alpha1", "true", "Widget"]
    obj_file.write_text("apiVersion: example.com/v1alpha1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 1}\n")
    kubectl("create", "-f", str(obj_file))
    assert kubectl("get", "widgets", "w1", "-o", "jsonpath={.spec.size}").stdout == "1"

    # upgrade: serve v1beta1 (storage) next to v1alpha1, then drop v1alpha1
    crd_file.write_text(CRD.replace("storage: true", "storage: false") + """\
  - name: v1beta1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
""")
    kubectl("apply", "-f", str(crd_file))
    assert "example.com/v1beta1" in kubectl("api-resources", "--api-group=example.com").stdout
    got = json.loads(kubectl("get", "widgets.v1beta1.example.com", "w1", "-o", "json").stdout)
    assert got["apiVersion"] == "example.com/v1beta1" and got["spec"] == {"size": 1}
    crd = k8s_server.store.get("crd", "widgets.example.com")
    crd["spec"]["versions"] = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    k8s_server.store.update(crd)
    assert k8s_server.store.get("crd", "widgets.example.com")["status"]["storedVersions"] == ["v1alpha1", "v1beta1"]
    out = kubectl("get", "--raw", "/apis/example.com").stdout
    assert json.loads(out)["preferredVersion"]["version"] == "v1beta1" and "v1alpha1" not in out

    kubectl("delete", "crd", "widgets.example.com")
    assert "widgets" not in kubectl("api-resources").stdout


def test_get_watch_prints_new_objects(kubectl: Kubectl, k8s_server: K8sApiServer) -> None:
    def later() -> None:
        time.sleep(0.8)
        k8s_server.store.create({"apiVersion": "v1", "kind": "Pod",
                                 "metadata": {"name": "late", "namespace": "default"}})

    t = threading.Thread(target=later)
    t.start()
    out = kubectl("get", "pods", "-w", "--request-timeout=2s").stdout
    t.join(5)
    assert out.split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "late", "0/0", "Pending", "0", "0s"]


def columns(out: str) -> list[list[str]]:
    """kubectl's table output split into cells (cells are separated by 2+ spaces)."""
    return [re.split(r"\s{2,}", line.strip()) for line in out.splitlines() if line.strip()]


def _running_pod(name: str, node: str, ip: str) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node, "containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "x"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": "False"}],
                       "containerStatuses": [
                           {"name": "a", "ready": True, "restartCount": 2, "state": {"running": {"startedAt": now}},
                            "lastState": {"terminated": {"exitCode": 1, "finishedAt": now}}},
                           {"name": "b", "ready": False, "restartCount": 0,
                            "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}


def test_get_pods_wide_shows_kube_apiserver_columns(kubectl: Kubectl, k8s_server: K8sApiServer) -> None:
    k8s_server.store.create(_running_pod("web", "node-1", "10.1.0.7"), keep_status=True)
    k8s_server.store.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "new", "namespace": "default"},
                             "spec": {"containers": [{"name": "a", "image": "x"}]}})
    rows = columns(kubectl("get", "pods", "-o", "wide").stdout)
    assert rows[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED NODE",
                       "READINESS GATES"]
    assert rows[1] == ["new", "0/1", "Pending", "0", rows[1][4], "<none>", "<none>", "<none>", "<none>"]
    web = rows[2]
    assert web[:3] == ["web", "1/2", "CrashLoopBackOff"] and re.fullmatch(r"2 \(\d+s ago\)", web[3])
    assert web[5:] == ["10.1.0.7", "node-1", "<none>", "<none>"]
    assert columns(kubectl("get", "pods").stdout)[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    one = columns(kubectl("get", "pod", "web").stdout)  # a single object is a Table too
    assert one[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert one[1][:3] == ["web", "1/2", "CrashLoopBackOff"]
    k8s_server.ensure_kubernetes_service()
    svc = columns(kubectl("get", "svc", "kubernetes", "-n", "default").stdout)
    assert svc[0] == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert svc[1][:5] == ["kubernetes", "ClusterIP", svc[1][2], "<none>", "443/TCP"]
    assert columns(kubectl("get", "ns").stdout)[1][:2] == ["default", "Active"]


def test_get_custom_resources_prints_their_crd_columns(kubectl: Kubectl, tmp_path: Path) -> None:
    crd = CRD.replace("    storage: true\n", """    storage: true
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Phase, type: string, jsonPath: .status.phase}
    - {name: Color, type: string, jsonPath: .spec.color, priority: 1}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
""")
    (tmp_path / "crd.yaml").write_text(crd)
    kubectl("apply", "-f", str(tmp_path / "crd.yaml"))
    kubectl("wait", "--for=condition=Established", "crd/widgets.example.com", "--timeout=10s")
    (tmp_path / "w.yaml").write_text("apiVersion: example.com/v1alpha1\nkind: Widget\nmetadata: {name: w1}\n"
                                     "spec: {size: 4, color: red}\nstatus: {phase: Ready}\n")
    kubectl("apply", "-f", str(tmp_path / "w.yaml"))
    rows = columns(kubectl("get", "widgets").stdout)
    assert rows[0] == ["NAME", "SIZE", "PHASE", "AGE"] and rows[1][:3] == ["w1", "4", "Ready"]
    assert columns(kubectl("get", "wd", "-o", "wide").stdout)[0] == ["NAME", "SIZE", "PHASE", "COLOR", "AGE"]
