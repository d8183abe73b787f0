"""The kinds and subresources the lab needs, on the real etcd-backed API process: apps/v1 workloads via
``kubectl apply`` and ``kubectl scale``, RBAC and ServiceAccounts in discovery, ``pods/binding``,
graceful Pod deletion (``kubectl delete`` returning once the node runtime removes the Pod) and
``pods/log`` (``kubectl logs`` with ``-c``, ``--tail``, ``--previous``, ``-f``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from lab.etcd import EtcdFleet
from tests.lab.kube_api.apiproc import ApiProcess

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    base = tmp_path_factory.mktemp("workloads")
    fleet = EtcdFleet(base / "etcd")
    try:
        proc = ApiProcess(fleet.start("etcd", tls=True), base / "api").start()
        try:
            yield proc
        finally:
            proc.kill()
    finally:
        fleet.close()


@pytest.fixture
def kubectl(api: ApiProcess, tmp_path: Path) -> Kubectl:
    assert KUBECTL is not None
    kubectl_bin = KUBECTL

    def run(*args: str, check: bool = True, stdin: str | None = None, timeout: float = 30
            ) -> subprocess.CompletedProcess[str]:
        cmd = [kubectl_bin, "--kubeconfig", str(api.kubeconfig), "--cache-dir", str(tmp_path / "kc"), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=stdin)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    return run


@pytest.fixture
def core(api: ApiProcess) -> Iterator[client.CoreV1Api]:
    with api.api_client() as c:
        yield client.CoreV1Api(c)


def pod(name: str, *containers: str, grace: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": c, "image": "lab/echo"} for c in containers or ("c",)]}
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def bind(core: client.CoreV1Api, name: str, node: str = "c1-n0") -> None:
    body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
    core.create_namespaced_pod_binding(name, "default", body)


DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: lab/echo}]
"""

RBAC = """\
apiVersion: v1
kind: ServiceAccount
metadata: {name: mesh, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: mesh}
rules: [{apiGroups: [""], resources: [pods], verbs: [get, list, watch]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: mesh}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: mesh}
subjects: [{kind: ServiceAccount, name: mesh, namespace: kube-system}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: mesh, namespace: kube-system}
rules: []
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: mesh, namespace: kube-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: mesh}
subjects: [{kind: ServiceAccount, name: mesh, namespace: kube-system}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: kube-system}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec: {containers: [{name: agent, image: lab/agent}]}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web, namespace: default}
spec: {minAvailable: 1, selector: {matchLabels: {app: web}}}
"""


def test_api_resources_apply_and_scale(kubectl: Kubectl, api: ApiProcess, tmp_path: Path) -> None:
    rows = {ln.split()[0]: ln.split() for ln in kubectl("api-resources").stdout.splitlines()[1:]}
    for name, version, kind in (("deployments", "apps/v1", "Deployment"), ("replicasets", "apps/v1", "ReplicaSet"),
                                ("daemonsets", "apps/v1", "DaemonSet"), ("serviceaccounts", "v1", "ServiceAccount"),
                                ("roles", "rbac.authorization.k8s.io/v1", "Role"),
                                ("clusterrolebindings", "rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
                                ("poddisruptionbudgets", "policy/v1", "PodDisruptionBudget")):
        assert version in rows[name] and rows[name][-1] == kind, rows.get(name)
    f = tmp_path / "deploy.yaml"
    f.write_text(DEPLOYMENT)
    assert "deployment.apps/web created" in kubectl("apply", "-f", str(f)).stdout
    assert "unchanged" in kubectl("apply", "-f", str(f)).stdout
    dep = json.loads(kubectl("get", "deploy", "web", "-o", "json").stdout)
    assert dep["spec"]["replicas"] == 1 and dep["metadata"]["generation"] == 1
    assert "scaled" in kubectl("scale", "deployment", "web", "--replicas=3").stdout
    dep = json.loads(kubectl("get", "deploy", "web", "-o", "json").stdout)
    assert dep["spec"]["replicas"] == 3 and dep["metadata"]["generation"] == 2
    scale = api.get_json("/apis/apps/v1/namespaces/default/deployments/web/scale")
    assert scale["kind"] == "Scale" and scale["spec"] == {"replicas": 3} and scale["status"]["selector"] == "app=web"

    with api.api_client() as c:  # the status subresource, as a controller writes it
        apps = client.AppsV1Api(c)
        apps.patch_namespaced_deployment_status("web", "default", {"status": {"replicas": 3, "readyReplicas": 3,
                                                                              "observedGeneration": 2}})
        got = apps.read_namespaced_deployment("web", "default")
        assert got.status.ready_replicas == 3 and got.spec.replicas == 3
    rbac = tmp_path / "rbac.yaml"
    rbac.write_text(RBAC)
    out = kubectl("apply", "-f", str(rbac)).stdout
    assert out.count("created") == 7, out
    assert kubectl("get", "clusterrolebinding", "mesh", "-o", "jsonpath={.roleRef.name}").stdout == "mesh"
    assert kubectl("get", "sa", "-n", "kube-system", "-o", "name").stdout.split() == ["serviceaccount/mesh"]
    assert kubectl("get", "ds", "agent", "-n", "kube-system", "-o", "jsonpath={.spec.updateStrategy.type}"
                   ).stdout == "RollingUpdate"


def test_pod_binding(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("bind-me"))
    bind(core, "bind-me")
    got = core.read_namespaced_pod("bind-me", "default")
    assert got.spec.node_name == "c1-n0"
    assert [(c.type, c.status) for c in got.status.conditions] == [("PodScheduled", "True")]
    with pytest.raises(ApiException) as e:
        bind(core, "bind-me", "c1-n1")
    assert e.value.status == 409 and "already assigned" in json.loads(e.value.body)["message"]
    assert core.read_namespaced_pod("bind-me", "default").spec.node_name == "c1-n0"
    with pytest.raises(ApiException) as e:
        bind(core, "no-such-pod")
    assert e.value.status == 404


def test_graceful_pod_deletion(core: client.CoreV1Api, kubectl: Kubectl) -> None:
    core.create_namespaced_pod("default", pod("graceful"))
    bind(core, "graceful")
    rv = core.read_namespaced_pod("graceful", "default").metadata.resource_version
    seen: list[tuple[str, Any, Any]] = []

    def node_runtime() -> None:
        """The lab's kubelet, reduced: on deletionTimestamp, stop the pod and delete it with grace 0."""
        for ev in watch.Watch().stream(core.list_namespaced_pod, "default", resource_version=rv,
                                       field_selector="metadata.name=graceful", timeout_seconds=20):
            md = ev["object"].metadata
            seen.append((ev["type"], md.deletion_timestamp, md.deletion_grace_period_seconds))
            if ev["type"] == "MODIFIED" and md.deletion_timestamp:
                time.sleep(0.5)
                core.delete_namespaced_pod("graceful", "default", grace_period_seconds=0)
            if ev["type"] == "DELETED":
                return

    t = threading.Thread(target=node_runtime)
    t.start()
    t0 = time.monotonic()
    out = kubectl("delete", "pod", "graceful", timeout=40).stdout
    took = time.monotonic() - t0
    t.join(25)
    assert out.strip() == 'pod "graceful" deleted'
    assert took < 25  # well before the 30 s grace period: it returned when the node runtime deleted it
    assert [(ty, grace) for ty, _, grace in seen] == [("MODIFIED", 30), ("DELETED", 30)]
    assert seen[0][1] is not None
    with pytest.raises(ApiException) as e:
        core.read_namespaced_pod("graceful", "default")
    assert e.value.status == 404

    # an explicit grace period wins over the pod's, and a second DELETE with grace 0 removes it
    core.create_namespaced_pod("default", pod("twice", grace=60))
    bind(core, "twice")
    marked = core.delete_namespaced_pod("twice", "default", grace_period_seconds=5)
    assert marked.metadata.deletion_grace_period_seconds == 5
    assert core.read_namespaced_pod("twice", "default").metadata.deletion_timestamp is not None
    core.patch_namespaced_pod_status("twice", "default", {"status": {"phase": "Running"}})  # the runtime reports
    core.patch_namespaced_pod("twice", "default", {"metadata": {"labels": {"seen": "yes"}}})
    assert core.read_namespaced_pod("twice", "default").metadata.labels == {"seen": "yes"}  # still terminating
    core.delete_namespaced_pod("twice", "default", grace_period_seconds=0)
    with pytest.raises(ApiException):
        core.read_namespaced_pod("twice", "default")

    # unbound pods, and --grace-period=0 --force, go at once
    core.create_namespaced_pod("default", pod("unbound"))
    core.delete_namespaced_pod("unbound", "default")
    core.create_namespaced_pod("default", pod("forced"))
    bind(core, "forced")
    assert "force deleted" in kubectl("delete", "pod", "forced", "--grace-period=0", "--force").stdout
    for name in ("unbound", "forced"):
        with pytest.raises(ApiException):
            core.read_namespaced_pod(name, "default")


def test_pod_logs(core: client.CoreV1Api, kubectl: Kubectl, api: ApiProcess) -> None:
    created = core.create_namespaced_pod("default", pod("logger", "main", "side"))
    bind(core, "logger", "c1-n1")
    uid = created.metadata.uid
    pod_dir = api.log_root / "c1-n1" / "pods" / f"default_logger_{uid}"
    for container, run, text in (("main", 0, "one\ntwo\nthree\n"), ("side", 0, "side car\n")):
        (pod_dir / container).mkdir(parents=True, exist_ok=True)
        (pod_dir / container / f"{run}.log").write_text(text)
    first = kubectl("logs", "logger")  # kubectl picks the first container and says so
    assert first.stdout == "one\ntwo\nthree\n" and 'Defaulted container "main"' in first.stderr
    assert kubectl("logs", "logger", "-c", "side").stdout == "side car\n"
    assert kubectl("logs", "logger", "-c", "main", "--tail=1").stdout == "three\n"
    assert core.read_namespaced_pod_log("logger", "default", container="main", tail_lines=2) == "two\nthree\n"
    bad = kubectl("logs", "logger", "-c", "nope", check=False)
    assert bad.returncode != 0 and "not valid for pod logger" in bad.stderr
    assert "previous terminated container" in kubectl("logs", "logger", "-c", "main", "-p", check=False).stderr

    # the container restarted: its new run logs to 1.log, --previous reads 0.log
    (pod_dir / "main" / "1.log").write_text("again\n")
    core.patch_namespaced_pod_status("logger", "default", {"status": {"containerStatuses": [
        {"name": "main", "restartCount": 1, "ready": True, "image": "lab/echo", "imageID": "", "state": {}}]}})
    assert kubectl("logs", "logger", "-c", "main").stdout == "again\n"
    assert kubectl("logs", "logger", "-c", "main", "--previous").stdout == "one\ntwo\nthree\n"

    # follow: new lines stream until the pod is gone
    assert KUBECTL is not None
    follow = subprocess.Popen([KUBECTL, "--kubeconfig", str(api.kubeconfig), "logs", "-f", "logger", "-c", "main"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follow.stdout is not None
        assert follow.stdout.readline() == "again\n"
        with open(pod_dir / "main" / "1.log", "a") as f:
            f.write("streamed\n")
        assert follow.stdout.readline() == "streamed\n"
        core.delete_namespaced_pod("logger", "default", grace_period_seconds=0)
        assert follow.wait(15) == 0
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait(5)
