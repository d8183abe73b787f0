"""The node runtime end to end: the real ``python -m lab.node`` inside a node network namespace of a
real topology, against the real Kubernetes API emulator (TLS, reached through a forwarder inside the
node namespace, as in the lab), with real pod namespaces, cgroups, mount namespaces and processes.
The test plays the scheduler (``spec.nodeName``)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from lab.kube.api import K8sApiServer
from lab.net import Topology, nsutil, unique_prefix
from lab.net.forward import Forwarder
from lab.node.cleanup import stop_all_pods
from lab.node.podnet import pod_netns_name
from lab.supervisor import cleanup as lab_cleanup
from lab.supervisor.spec import STATE_ROOT, cgroup_unified_root

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nsenter") is None or shutil.which("ip") is None,
    reason="needs root, nsenter and iproute2 (network namespaces, cgroups, mounts)",
)

PODAPP = str(Path(__file__).with_name("podapp.py"))
NODE = "c1-n0"
POD_CIDR = ipaddress.IPv4Network("10.1.0.0/24")
INTERNAL_IP = "192.168.1.1"
SERVICE_IP = "172.16.1.1"
SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
Obj = dict[str, Any]


class ThreadForwarder:
    """lab.net.forward.Forwarder on an event loop of its own thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="forwarder", daemon=True)
        self.thread.start()
        self.fwd = Forwarder()

    def add(self, ns: str, host: str, port: int, target: int) -> None:
        asyncio.run_coroutine_threadsafe(self.fwd.add(ns, host, port, target), self.loop).result(10)

    def close(self) -> None:
        async def shutdown() -> None:
            await self.fwd.close()
            relays = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in relays:
                task.cancel()
            await asyncio.gather(*relays, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class NodeLab:
    """One lab node (namespace, API, config) and its node runtime process."""

    prefix: str
    node_ns: str
    state_dir: Path
    cgroup_root: Path
    config_file: Path
    ca_file: Path
    tmp: Path
    api: client.ApiClient
    runtime_log: Path
    server: K8sApiServer
    runtime: subprocess.Popen[bytes] | None = None
    runtimes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def start_runtime(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "CLUSTERMESH_LAB": self.prefix, "PYTHONUNBUFFERED": "1"}
        with open(self.runtime_log, "ab") as log:
            proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.node_ns}", "--", sys.executable, "-m", "lab.node",
                 "--config", str(self.config_file)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)  # fmt: skip
        self.runtime = proc
        self.runtimes.append(proc)
        return proc

    def kill_runtime(self, sig: int = signal.SIGKILL) -> None:
        if self.runtime is not None and self.runtime.poll() is None:
            self.runtime.send_signal(sig)
            self.runtime.wait(15)

    def api_down(self) -> None:
        """Stop the API server (its objects are kept for :meth:`api_up`)."""
        self.server.stop_thread()

    def api_up(self) -> None:
        """Serve the same objects again on the same port with the same certificate."""
        server = K8sApiServer(self.server.store, port=self.server.port, tls_dir=self.tmp / "tls",
                              bookmark_interval=0.5)
        server.tls = self.server.tls
        self.server = server.start_in_thread()

    def log_tail(self, n: int = 60) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.runtime_log.read_text(errors="replace").splitlines()[-n:])
        return ""

    def get(self, path: str) -> Obj | None:
        params = self.api.param_serialize(method="GET", resource_path=path,
                                          header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
        resp = self.api.call_api(*params, _request_timeout=10)
        resp.read()  # type: ignore[no-untyped-call]
        if resp.status == 404:
            return None
        if resp.status >= 400:
            raise ApiException(status=resp.status, reason=resp.reason)
        doc: Obj = json.loads(resp.data)
        return doc

    def pod(self, name: str, namespace: str = "default") -> Obj | None:
        return self.get(f"/api/v1/namespaces/{namespace}/pods/{name}")

    def create(self, manifest: Obj) -> Obj:
        kind = manifest["kind"]
        ns = manifest["metadata"].get("namespace", "default")
        if kind == "Pod":
            self.core.create_namespaced_pod(ns, manifest)
            got = self.pod(manifest["metadata"]["name"], ns)
            assert got is not None
            return got
        if kind == "Secret":
            self.core.create_namespaced_secret(ns, manifest)
        elif kind == "ConfigMap":
            self.core.create_namespaced_config_map(ns, manifest)
        return manifest

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n--- runtime log ---\n{self.log_tail()}")

    def wait_pod(self, name: str, check: Callable[[Obj], bool], what: str, timeout: float = 30.0) -> Obj:
        def probe() -> Obj | None:
            pod = self.pod(name)
            return pod if pod is not None and check(pod) else None

        try:
            result: Obj = self.wait_for(f"pod {name}: {what}", probe, timeout)
        except AssertionError as err:
            raise AssertionError(f"{err}\n--- pod ---\n{json.dumps((self.pod(name) or {}).get('status'), indent=1)}") \
                from None
        return result

    def node_record(self) -> Obj:
        try:
            doc: Obj = json.loads((self.state_dir / "node.json").read_text())
        except (OSError, ValueError):
            return {}
        return doc

    def pod_dir(self, pod: Obj) -> Path:
        md = pod["metadata"]
        return self.state_dir / "pods" / f"{md['namespace']}_{md['name']}_{md['uid']}"

    def wait_podapp_started(self, pod: Obj) -> None:
        """Wait until podapp has installed its SIGTERM handler (it logs its start line after): a pod
        without a readiness probe is Ready as soon as its process exists, which can be before that."""
        log = self.pod_dir(pod) / "main" / "0.log"
        self.wait_for("podapp to install its SIGTERM handler",
                      lambda: log.exists() and "podapp starting" in log.read_text(errors="replace"))


def manifest(name: str, command: list[str], *, containers: list[Obj] | None = None, **spec: Any) -> Obj:
    main: Obj = {"name": "main", "image": "registry.example/lab-test:1", "command": command}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": NODE, "terminationGracePeriodSeconds": 10, "containers": containers or [main], **spec}}


def podapp(*args: str) -> list[str]:
    return [sys.executable, PODAPP, *args]


def status_of(pod: Obj, container: str = "main", *, init: bool = False) -> Obj:
    key = "initContainerStatuses" if init else "containerStatuses"
    return next((s for s in (pod.get("status") or {}).get(key) or [] if s.get("name") == container), {})


def condition(pod: Obj, ctype: str) -> str:
    return next((c.get("status", "") for c in (pod.get("status") or {}).get("conditions") or []
                 if c.get("type") == ctype), "")


def is_ready(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running" and condition(pod, "Ready") == "True"


@pytest.fixture
def node_lab(tmp_path: Path) -> Iterator[NodeLab]:
    prefix = unique_prefix("nd")
    topo = Topology(prefix)
    server: K8sApiServer | None = None
    fwd: ThreadForwarder | None = None
    lab: NodeLab | None = None
    state_dir = STATE_ROOT / prefix / "nodes" / NODE
    cgroup_root = cgroup_unified_root() / f"clustermesh-lab-{prefix}" / "c1.n0"
    try:
        topo.add_cluster("c1", 1)
        node = topo.add_node("c1", "n0")
        with nsutil.iproute(node.ns) as ipr:
            ipr.addr("add", index=1, address=SERVICE_IP, prefixlen=32)
        server = K8sApiServer(tls_dir=tmp_path / "tls", bookmark_interval=0.5).start_in_thread()
        assert server.tls is not None
        fwd = ThreadForwarder()
        fwd.add(node.ns, "127.0.0.1", server.port, server.port)
        fwd.add(node.ns, SERVICE_IP, 443, server.port)
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
        state_dir.mkdir(parents=True)
        cfg = {
            "lab": prefix, "cluster": "c1", "cluster_id": 1, "node_name": NODE, "node_index": 0,
            "pod_cidr": str(POD_CIDR), "internal_ip": INTERNAL_IP, "kubeconfig": str(kubeconfig),
            "state_dir": str(state_dir), "cgroup_root": str(cgroup_root), "api_service_host": SERVICE_IP,
            "api_service_port": 443, "api_ca_file": str(server.tls.ca_file), "restart_backoff": 1.0,
            "restart_backoff_max": 8.0,
        }  # fmt: skip
        config_file = tmp_path / "node-config.json"
        config_file.write_text(json.dumps(cfg))
        kcfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=kcfg)
        lab = NodeLab(prefix, node.ns, state_dir, cgroup_root, config_file, server.tls.ca_file, tmp_path,
                      client.ApiClient(kcfg), tmp_path / "runtime.log", server)
        lab.start_runtime()
        lab.wait_for("the Node to be registered", lambda: lab is not None and lab.get(f"/api/v1/nodes/{NODE}"))
        yield lab
    finally:
        if lab is not None:
            for proc in lab.runtimes:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
            stop_all_pods(state_dir, cgroup_root=cgroup_root, remove_dirs=True)
            lab.api.close()
        lab_cleanup.sweep(prefix)
        if fwd is not None:
            fwd.close()
        for srv in {id(s): s for s in (server, lab.server if lab is not None else None) if s is not None}.values():
            srv.stop_thread()
        topo.close()
        assert not nsutil.namespaces_with_prefix(prefix)


def pod_pid(lab: NodeLab, pod: Obj, container: str = "main") -> int:
    record = json.loads((lab.pod_dir(pod) / "pod.json").read_text())
    pid = record["containers"][container]["pid"]
    assert isinstance(pid, int)
    return pid


# ----- tests -----


def test_node_registration_and_lease(node_lab: NodeLab) -> None:
    node = node_lab.wait_for("Node Ready", lambda: (n := node_lab.get(f"/api/v1/nodes/{NODE}")) and any(
        c["type"] == "Ready" and c["status"] == "True" for c in (n.get("status") or {}).get("conditions") or []) and n)
    md, spec, status = node["metadata"], node["spec"], node["status"]
    assert md["labels"]["kubernetes.io/hostname"] == NODE
    assert md["labels"]["kubernetes.io/os"] == "linux" and md["labels"]["kubernetes.io/arch"] == "amd64"
    assert spec["podCIDR"] == str(POD_CIDR) and spec["podCIDRs"] == [str(POD_CIDR)]
    assert {"type": "InternalIP", "address": INTERNAL_IP} in status["addresses"]
    assert {"type": "Hostname", "address": NODE} in status["addresses"]
    assert status["capacity"]["pods"] == "110" and status["allocatable"]["cpu"] == "2"
    assert status["nodeInfo"]["operatingSystem"] == "linux"
    lease = node_lab.wait_for("the node Lease", lambda: node_lab.get(
        f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{NODE}"))
    assert lease["spec"]["holderIdentity"] == NODE and lease["spec"]["renewTime"]
    record = node_lab.wait_for("node.json", lambda: node_lab.node_record().get("api", {}).get("pods_synced") and
                               node_lab.node_record())
    assert record["node"] == NODE and record["running"] is True
    # SIGTERM: the runtime stops, the Node stays
    node_lab.kill_runtime(signal.SIGTERM)
    assert node_lab.runtime is not None and node_lab.runtime.returncode == 0, node_lab.log_tail()
    assert node_lab.get(f"/api/v1/nodes/{NODE}") is not None
    assert node_lab.node_record()["running"] is False


def test_pod_runs_ready_with_env_volumes_and_is_deleted_gracefully(node_lab: NodeLab) -> None:
    tmp = node_lab.tmp
    mnt = tmp / "mnt"  # mount points below it do not exist yet: the runtime makes them, and removes them
    sa_dir_existed = os.path.lexists("/var/run/secrets/kubernetes.io/serviceaccount")
    node_lab.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": "default"},
                     "stringData": {"password": "s3cret", "user": "admin"}})
    node_lab.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "default"},
                     "data": {"mode": "fast", "greeting": "hello"}})
    report, on_term = tmp / "report.json", tmp / "terminated"
    reads = [f"{mnt}/secret/password", f"{mnt}/secret/user", f"{mnt}/config/greeting.txt", f"{mnt}/config/mode",
             "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
             "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
             "/var/run/secrets/kubernetes.io/serviceaccount/token"]
    container = {
        "name": "main", "image": "registry.example/web:1",
        "command": podapp("--report", str(report), "--port", "8080", "--on-term", str(on_term),
                          *[a for r in reads for a in ("--read", r)], "--try-write", f"{mnt}/config/new",
                          "--try-write", f"{mnt}/scratch/new"),
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
            {"name": "COMPOSED", "value": "$(POD_NAME)@$(NODE_NAME)"},
        ],
        "envFrom": [{"prefix": "CM_", "configMapRef": {"name": "settings"}}],
        "volumeMounts": [
            {"name": "secret", "mountPath": f"{mnt}/secret"},
            {"name": "config", "mountPath": f"{mnt}/config", "readOnly": True},
            {"name": "scratch", "mountPath": f"{mnt}/scratch"},
        ],
    }  # fmt: skip
    volumes = [
        {"name": "secret", "secret": {"secretName": "creds"}},
        {"name": "config", "configMap": {"name": "settings", "items": [{"key": "greeting", "path": "greeting.txt"},
                                                                     {"key": "mode", "path": "mode"}]}},
        {"name": "scratch", "emptyDir": {}},
    ]
    node_lab.create(manifest("web", [], containers=[container], volumes=volumes))
    pod = node_lab.wait_pod("web", is_ready, "Running and Ready")
    status = pod["status"]
    ip = status["podIP"]
    assert ipaddress.IPv4Address(ip) in POD_CIDR and status["podIPs"] == [{"ip": ip}]
    assert status["hostIP"] == INTERNAL_IP and status["startTime"]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "PodScheduled": "True", "Initialized": "True", "ContainersReady": "True", "Ready": "True"}
    cs = status_of(pod)
    assert cs["ready"] is True and cs["started"] is True and cs["restartCount"] == 0
    assert cs["image"] == "registry.example/web:1" and cs["imageID"] == "lab://registry.example/web:1"
    assert "running" in cs["state"] and cs["state"]["running"]["startedAt"]

    seen = json.loads(node_lab.wait_for("the container's report", lambda: report.exists() and report.read_text()))
    env = seen["env"]
    md = pod["metadata"]
    assert env["POD_NAME"] == "web" and env["POD_NAMESPACE"] == "default" and env["POD_UID"] == md["uid"]
    assert env["POD_IP"] == ip and env["HOST_IP"] == INTERNAL_IP and env["NODE_NAME"] == NODE
    assert env["SA"] == "default" and env["PASSWORD"] == "s3cret" and env["MODE"] == "fast"
    assert env["COMPOSED"] == f"web@{NODE}" and env["CM_greeting"] == "hello"
    assert env["CLUSTER_NAME"] == "c1" and env["HOSTNAME"] == "web" and seen["hostname"] == "web"
    assert env["KUBERNETES_SERVICE_HOST"] == SERVICE_IP and env["KUBERNETES_SERVICE_PORT"] == "443"
    assert env["CLUSTERMESH_LAB"] == node_lab.prefix
    files = seen["files"]
    assert files[f"{mnt}/secret/password"] == "s3cret" and files[f"{mnt}/secret/user"] == "admin"
    assert files[f"{mnt}/config/greeting.txt"] == "hello" and files[f"{mnt}/config/mode"] == "fast"
    assert files["/var/run/secrets/kubernetes.io/serviceaccount/namespace"] == "default"
    assert files["/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"] == node_lab.ca_file.read_text()
    assert files["/var/run/secrets/kubernetes.io/serviceaccount/token"].count(".") == 2
    assert seen["writable"] == {f"{mnt}/config/new": False, f"{mnt}/scratch/new": True}  # readOnly is enforced
    # the volumes are visible inside the container only: on the host the mount points are empty
    for d in ("secret", "config", "scratch"):
        assert (mnt / d).is_dir() and not any((mnt / d).iterdir())
    # the process: in the pod's network namespace and cgroup, its log at the documented path
    netns = pod_netns_name(node_lab.prefix, "c1", 0, "default", "web")
    assert seen["netns"] == os.stat(f"/run/netns/{netns}").st_ino
    pid = pod_pid(node_lab, pod)
    assert pid == seen["pid"]
    cgroup = node_lab.cgroup_root / md["uid"]
    assert pid in [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
    log = node_lab.pod_dir(pod) / "main" / "0.log"
    assert "podapp starting" in log.read_text()
    # what `lab exec` does: nsenter into the container's network and mount namespaces by pid
    inside = subprocess.run(["nsenter", "-t", str(pid), "-n", "-m", "--", "cat", f"{mnt}/secret/password"],
                            capture_output=True, text=True, timeout=10)
    assert inside.stdout == "s3cret", inside.stderr
    listed = node_lab.wait_for("node.json listing the pod", lambda: [
        p for p in node_lab.node_record().get("pods", []) if p["uid"] == md["uid"] and p["containers"]["main"]["pid"]])
    assert listed[0]["containers"]["main"]["pid"] == pid and listed[0]["ip"] == ip

    # graceful deletion: SIGTERM reaches the process, then everything the pod had is removed
    node_lab.core.delete_namespaced_pod("web", "default", grace_period_seconds=10)
    node_lab.wait_for("the pod object to be gone", lambda: node_lab.pod("web") is None)
    assert on_term.read_text().startswith("terminated by signal 15")
    node_lab.wait_for("the pod directory to be removed", lambda: not node_lab.pod_dir(pod).exists())
    assert not os.path.exists(f"/run/netns/{netns}")
    assert not cgroup.exists()
    assert not os.path.exists(f"/proc/{pid}")
    assert not mnt.exists(), "the mount points the runtime created are removed"
    if not sa_dir_existed:
        assert not os.path.lexists("/var/run/secrets/kubernetes.io/serviceaccount")


def test_host_network_pod_runs_in_the_node_namespace(node_lab: NodeLab) -> None:
    report = node_lab.tmp / "host.json"
    shared, mnt = node_lab.tmp / "shared", node_lab.tmp / "hp"
    shared.mkdir()
    (shared / "hello").write_text("from the host")
    container = {"name": "main", "image": "x", "command": podapp("--report", str(report), "--port", "8081",
                                                                  "--read", "hello", "--read", SA_TOKEN),
                 "workingDir": str(mnt), "volumeMounts": [{"name": "host", "mountPath": str(mnt)}],
                 "readinessProbe": {"tcpSocket": {"port": 8081}, "periodSeconds": 1}}
    node_lab.create(manifest("hostnet", [], containers=[container], hostNetwork=True,
                             automountServiceAccountToken=False,
                             volumes=[{"name": "host", "hostPath": {"path": str(shared), "type": "Directory"}}]))
    pod = node_lab.wait_pod("hostnet", is_ready, "Running and Ready")
    assert pod["status"]["podIP"] == INTERNAL_IP and pod["status"]["hostIP"] == INTERNAL_IP
    seen = json.loads(node_lab.wait_for("the report", lambda: report.exists() and report.read_text()))
    assert seen["netns"] == os.stat(f"/run/netns/{node_lab.node_ns}").st_ino
    assert seen["env"]["HOSTNAME"] == NODE and seen["hostname"] == NODE
    assert "KUBERNETES_SERVICE_HOST" in seen["env"]
    assert seen["cwd"] == str(mnt) and seen["files"]["hello"] == "from the host"  # hostPath, workingDir
    assert seen["files"][SA_TOKEN].startswith("ERROR"), "automountServiceAccountToken: false"
    assert not os.path.exists(f"/run/netns/{pod_netns_name(node_lab.prefix, 'c1', 0, 'default', 'hostnet')}")


def test_crashing_container_restarts_with_backoff(node_lab: NodeLab) -> None:
    node_lab.create(manifest("crasher", podapp("--exit", "3")))
    seen_backoff: list[Obj] = []

    def restarted_twice(pod: Obj) -> bool:
        cs = status_of(pod)
        if (cs.get("state") or {}).get("waiting", {}).get("reason") == "CrashLoopBackOff":
            seen_backoff.append(cs)
        return int(cs.get("restartCount", 0)) >= 2 and bool(seen_backoff)

    pod = node_lab.wait_pod("crasher", restarted_twice, "restartCount >= 2", timeout=60)
    assert pod["status"]["phase"] == "Running"  # restartPolicy Always: it keeps coming back
    assert condition(pod, "Ready") == "False"
    waiting = seen_backoff[-1]
    assert "back-off" in waiting["state"]["waiting"]["message"]
    assert waiting["lastState"]["terminated"]["exitCode"] == 3
    assert waiting["lastState"]["terminated"]["reason"] == "Error"
    pod_dir = node_lab.pod_dir(pod)
    for n in (0, 1):
        assert "exiting with 3" in (pod_dir / "main" / f"{n}.log").read_text()


def test_restart_policy_never_and_init_containers(node_lab: NodeLab) -> None:
    order = node_lab.tmp / "order.txt"
    init = [{"name": f"init{i}", "image": "busybox",
             "command": podapp("--append", str(order), f"init{i}", "--exit", "0")} for i in (1, 2)]
    node_lab.create(manifest("ok", [], restartPolicy="Never", initContainers=init, containers=[
        {"name": "main", "image": "busybox", "command": podapp("--append", str(order), "main", "--exit", "0")}]))
    node_lab.create(manifest("bad", podapp("--exit", "2"), restartPolicy="Never"))
    node_lab.create(manifest("noinit", [], restartPolicy="Never", initContainers=[
        {"name": "init", "image": "busybox", "command": podapp("--exit", "1")}]))
    node_lab.create(manifest("nocmd", [], containers=[{"name": "main", "image": "nginx"}]))

    ok = node_lab.wait_pod("ok", lambda p: p.get("status", {}).get("phase") == "Succeeded", "Succeeded")
    assert order.read_text().split() == ["init1", "init2", "main"]
    assert status_of(ok)["state"]["terminated"]["exitCode"] == 0
    assert status_of(ok)["state"]["terminated"]["reason"] == "Completed"
    assert status_of(ok, "init2", init=True)["state"]["terminated"]["exitCode"] == 0
    assert condition(ok, "Initialized") == "True" and condition(ok, "Ready") == "False"

    bad = node_lab.wait_pod("bad", lambda p: p.get("status", {}).get("phase") == "Failed", "Failed")
    term = status_of(bad)["state"]["terminated"]
    assert term["exitCode"] == 2 and term["reason"] == "Error" and status_of(bad)["restartCount"] == 0

    noinit = node_lab.wait_pod("noinit", lambda p: p.get("status", {}).get("phase") == "Failed", "Failed")
    assert status_of(noinit, "init", init=True)["state"]["terminated"]["exitCode"] == 1
    assert condition(noinit, "Initialized") == "False"
    assert status_of(noinit)["state"]["waiting"]["reason"] == "PodInitializing"

    nocmd = node_lab.wait_pod("nocmd", lambda p: bool(status_of(p).get("state", {}).get("waiting")), "waiting")
    assert nocmd["status"]["phase"] == "Pending"
    assert status_of(nocmd)["state"]["waiting"] == {
        "reason": "CreateContainerError", "message": "lab: container has no command (images are not run)"}
    # finished pods gave their network back at once
    for name in ("ok", "bad", "noinit"):
        netns = pod_netns_name(node_lab.prefix, "c1", 0, "default", name)
        node_lab.wait_for(f"{name}'s network namespace to go", lambda ns=netns: not os.path.exists(f"/run/netns/{ns}"))


def test_runtime_killed_with_sigkill_leaves_containers_and_a_new_one_adopts_them(node_lab: NodeLab) -> None:
    node_lab.create(manifest("survivor", podapp("--port", "8080"), containers=[{
        "name": "main", "image": "web", "command": podapp("--port", "8080"),
        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
        "livenessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1}}]))
    pod = node_lab.wait_pod("survivor", is_ready, "Running and Ready")
    pid = pod_pid(node_lab, pod)
    started_at = status_of(pod)["state"]["running"]["startedAt"]
    node_lab.kill_runtime(signal.SIGKILL)
    time.sleep(1.0)
    assert os.path.exists(f"/proc/{pid}"), "the container outlives the node runtime"
    new_runtime = node_lab.start_runtime()

    def adopted() -> bool:
        record = node_lab.node_record()
        return record.get("pid") == new_runtime.pid and any(
            p["name"] == "survivor" and p["containers"].get("main", {}).get("pid") == pid for p in record["pods"])

    node_lab.wait_for("the new runtime to adopt the pod", adopted)
    time.sleep(3.0)  # several probe periods under the new runtime
    pod = node_lab.wait_pod("survivor", is_ready, "still Running and Ready")
    cs = status_of(pod)
    assert cs["restartCount"] == 0 and cs["state"]["running"]["startedAt"] == started_at
    assert pod_pid(node_lab, pod) == pid and not (node_lab.pod_dir(pod) / "main" / "1.spec.json").exists()
    # and the adopted pod is stopped and removed by the new runtime
    node_lab.core.delete_namespaced_pod("survivor", "default")
    node_lab.wait_for("the pod object to be gone", lambda: node_lab.pod("survivor") is None)
    node_lab.wait_for("the container to stop", lambda: not os.path.exists(f"/proc/{pid}"))
    node_lab.wait_for("the pod directory to go", lambda: not node_lab.pod_dir(pod).exists())


def test_deletion_timestamp_held_by_a_finalizer(node_lab: NodeLab) -> None:
    """The graceful path: the pod object stays (here: a finalizer) with a deletionTimestamp; the node
    stops the containers, releases the sandbox, asks for deletion with grace 0 and keeps the logs
    until the object is gone."""
    on_term = node_lab.tmp / "terminated"
    pod = manifest("held", podapp("--on-term", str(on_term)))
    pod["metadata"]["finalizers"] = ["lab.test/hold"]
    node_lab.create(pod)
    pod = node_lab.wait_pod("held", is_ready, "Running and Ready")
    pid = pod_pid(node_lab, pod)
    node_lab.wait_podapp_started(pod)
    netns = pod_netns_name(node_lab.prefix, "c1", 0, "default", "held")
    node_lab.core.delete_namespaced_pod("held", "default", grace_period_seconds=5)
    node_lab.wait_for("SIGTERM to reach the container", on_term.exists)
    node_lab.wait_for("the container to stop", lambda: not os.path.exists(f"/proc/{pid}"))
    node_lab.wait_for("the sandbox to be released", lambda: not os.path.exists(f"/run/netns/{netns}")
                      and not (node_lab.cgroup_root / pod["metadata"]["uid"]).exists())
    held = node_lab.wait_pod("held", lambda p: "terminated" in status_of(p).get("state", {}), "terminated status")
    assert held["metadata"]["deletionTimestamp"] and status_of(held)["state"]["terminated"]["exitCode"] == 0
    assert "got SIGTERM" in (node_lab.pod_dir(held) / "main" / "0.log").read_text(), "logs stay while the pod does"
    node_lab.core.patch_namespaced_pod("held", "default", {"metadata": {"finalizers": None}})
    node_lab.wait_for("the pod object to be gone", lambda: node_lab.pod("held") is None)
    node_lab.wait_for("the pod directory to go", lambda: not node_lab.pod_dir(held).exists())


def test_failing_liveness_probe_restarts_the_container(node_lab: NodeLab) -> None:
    node_lab.create(manifest("unwell", [], containers=[{
        "name": "main", "image": "web", "command": podapp(),
        "livenessProbe": {"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 2}}]))
    pod = node_lab.wait_pod("unwell", lambda p: status_of(p).get("restartCount", 0) >= 1, "restarted", timeout=45)
    last = status_of(pod)["lastState"]["terminated"]
    assert last["exitCode"] == 0 and last["reason"] == "Completed"  # podapp exits 0 on SIGTERM
    assert "got SIGTERM" in (node_lab.pod_dir(pod) / "main" / "0.log").read_text()


def test_api_outage_pods_keep_running_and_the_runtime_carries_on(node_lab: NodeLab) -> None:
    node_lab.create(manifest("steady", podapp()))
    pod = node_lab.wait_pod("steady", is_ready, "Running and Ready")
    pid = pod_pid(node_lab, pod)
    node_lab.api_down()
    time.sleep(4.0)  # watches fail, heartbeats fail: the runtime backs off and keeps its pods
    assert node_lab.runtime is not None and node_lab.runtime.poll() is None, node_lab.log_tail()
    assert os.path.exists(f"/proc/{pid}")
    node_lab.api_up()
    node_lab.create(manifest("after", podapp()))
    node_lab.wait_pod("after", is_ready, "Running and Ready after the outage", timeout=45)
    pod = node_lab.wait_pod("steady", is_ready, "still Running and Ready")
    assert pod_pid(node_lab, pod) == pid and status_of(pod)["restartCount"] == 0


def test_secret_configmap_and_projected_volumes_follow_their_sources(node_lab: NodeLab) -> None:
    """Secret, ConfigMap and projected volumes are rewritten while the pod runs, in the kubelet's
    layout (``..data`` swapped by rename, ``key -> ..data/key``): keys appear, change and disappear
    inside the container, an optional Secret created later fills its part of a projected volume, and
    the agent's config-dir reader (meshcore.clustermesh.configdir) sees peers added and removed. The
    projected volume is the install's own (the agent DaemonSet's ``/var/lib/cilium/clustermesh``)."""
    from clustermesh_cli.install.manifests import agent_daemonset
    from clustermesh_cli.install.names import CLUSTERMESH_SECRET, REMOTE_CERT_SECRET
    from clustermesh_cli.install.options import InstallOptions
    from meshcore.clustermesh.configdir import ConfigDirWatcher

    core, mnt = node_lab.core, node_lab.tmp / "vols"
    agent_pod = agent_daemonset(InstallOptions(cluster_name="c1", cluster_id=1))["spec"]["template"]["spec"]
    (mesh,) = [v for v in agent_pod["volumes"] if v["name"] == "clustermesh-secrets"]
    assert [s["secret"]["name"] for s in mesh["projected"]["sources"]] == [CLUSTERMESH_SECRET, REMOTE_CERT_SECRET]
    cert = {"ca.crt": "CA", "tls.crt": "CRT", "tls.key": "KEY"}
    node_lab.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": REMOTE_CERT_SECRET},
                     "stringData": cert})
    node_lab.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
                     "stringData": {"user": "admin", "password": "one"}})
    node_lab.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
                     "data": {"mode": "fast"}})
    volumes = [
        {"name": "creds", "secret": {"secretName": "creds"}},
        {"name": "settings", "configMap": {"name": "settings"}},
        mesh,
        {"name": "extras", "projected": {"sources": [
            {"configMap": {"name": "settings", "items": [{"key": "mode", "path": "conf/mode"}]}},
            {"downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}]}},
    ]  # fmt: skip
    container = {"name": "main", "image": "agent", "command": podapp(), "volumeMounts": [
        {"name": "creds", "mountPath": f"{mnt}/creds"}, {"name": "settings", "mountPath": f"{mnt}/settings"},
        {"name": "clustermesh-secrets", "mountPath": f"{mnt}/mesh", "readOnly": True},
        {"name": "extras", "mountPath": f"{mnt}/extras", "readOnly": True}]}
    pod = manifest("reader", [], containers=[container], volumes=volumes)
    pod["metadata"]["labels"] = {"app": "agent"}
    node_lab.create(pod)
    pod = node_lab.wait_pod("reader", is_ready, "Running and Ready")
    pid = pod_pid(node_lab, pod)

    def inside(*argv: str) -> str:
        """Run ``argv`` in the container's mount namespace (as ``lab exec`` does)."""
        done = subprocess.run(["nsenter", "-t", str(pid), "-m", "--", *argv], capture_output=True, text=True,
                              timeout=10)
        return done.stdout if done.returncode == 0 else f"ERROR {done.stderr.strip()}"

    def listing(d: str) -> dict[str, str]:
        """The visible names of a volume as the container sees them, with their link targets."""
        out = {}
        for line in inside("find", f"{mnt}/{d}", "-mindepth", "1", "-maxdepth", "1", "-printf", "%f %l\n").splitlines():
            name, _, target = line.partition(" ")
            if not name.startswith(".."):
                out[name] = target
        return out

    def follows(path: str, want: str | None) -> None:
        node_lab.wait_for(f"{path} to read {want!r} in the container", lambda: (
            inside("cat", f"{mnt}/{path}") == want if want is not None else
            inside("cat", f"{mnt}/{path}").startswith("ERROR")), timeout=10)

    assert listing("creds") == {"password": "..data/password", "user": "..data/user"}
    assert inside("readlink", f"{mnt}/creds/..data").startswith("..20")
    assert listing("mesh") == {n: f"..data/{n}" for n in ("common-etcd-client-ca.crt", "common-etcd-client.crt",
                                                          "common-etcd-client.key")}
    assert inside("stat", "-L", "-c", "%a", f"{mnt}/mesh/common-etcd-client.key") == "400\n"
    assert set(listing("extras")) == {"conf", "labels"} and inside("cat", f"{mnt}/extras/labels") == 'app="agent"'
    # the agent's reader, pointed at the directory as the container sees it
    watcher = ConfigDirWatcher(Path(f"/proc/{pid}/root{mnt}/mesh"), local_cluster="c1")
    assert watcher.scan() == []

    def peers_change() -> list[tuple[str, bool]]:
        return [(name, file is not None) for name, file in watcher.scan()]

    # the optional Secret appears: its keys join the projected volume
    c2 = "endpoints:\n- https://192.168.2.1:32379\n"
    node_lab.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": CLUSTERMESH_SECRET},
                     "stringData": {"c2": c2}})
    follows("mesh/c2", c2)
    assert node_lab.wait_for("the reader to see c2", peers_change, timeout=10) == [("c2", True)]
    # a peer added and one changed at once, then one removed
    c2b, c3 = "endpoints:\n- https://192.168.2.9:32379\n", "endpoints:\n- https://192.168.3.1:32379\n"
    core.replace_namespaced_secret(CLUSTERMESH_SECRET, "default", {
        "metadata": {"name": CLUSTERMESH_SECRET}, "stringData": {"c2": c2b, "c3": c3}})
    follows("mesh/c3", c3)
    assert inside("cat", f"{mnt}/mesh/c2") == c2b
    changed = dict(node_lab.wait_for("the reader to see c2 and c3", peers_change, timeout=10))
    assert changed == {"c2": True, "c3": True} and watcher.current["c2"].config.endpoints == ("https://192.168.2.9:32379",)
    core.replace_namespaced_secret(CLUSTERMESH_SECRET, "default", {
        "metadata": {"name": CLUSTERMESH_SECRET}, "stringData": {"c3": c3}})
    follows("mesh/c2", None)
    assert node_lab.wait_for("the reader to drop c2", peers_change, timeout=10) == [("c2", False)]
    assert sorted(watcher.current) == ["c3"]

    # a Secret volume: a key changed, one added, one removed
    core.replace_namespaced_secret("creds", "default", {"metadata": {"name": "creds"},
                                                        "stringData": {"password": "two", "token": "t"}})
    follows("creds/password", "two")
    follows("creds/user", None)
    assert listing("creds") == {"password": "..data/password", "token": "..data/token"}
    # a ConfigMap, in its own volume and in the projected one; a label, through the Downward API
    core.patch_namespaced_config_map("settings", "default", {"data": {"mode": "safe", "extra": "x"}})
    follows("settings/extra", "x")
    follows("extras/conf/mode", "safe")
    core.patch_namespaced_pod("reader", "default", {"metadata": {"labels": {"app": "agent", "tier": "node"}}})
    follows("extras/labels", 'app="agent"\ntier="node"')
    # the optional Secret deleted: its part of the projected volume empties; the rest stays
    core.delete_namespaced_secret(CLUSTERMESH_SECRET, "default")
    follows("mesh/c3", None)
    assert node_lab.wait_for("the reader to drop c3", peers_change, timeout=10) == [("c3", False)]
    assert inside("cat", f"{mnt}/mesh/common-etcd-client.crt") == "CRT"
    # a required Secret deleted: the volume keeps what it had (as the kubelet's does)
    core.delete_namespaced_secret("creds", "default")
    time.sleep(2.0)
    assert inside("cat", f"{mnt}/creds/password") == "two"
    # a new node runtime (after a SIGKILL) adopts the pod and keeps its volumes following
    node_lab.kill_runtime(signal.SIGKILL)
    node_lab.start_runtime()
    node_lab.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
                     "stringData": {"password": "three"}})
    follows("creds/password", "three")
    follows("creds/token", None)
    assert pod_pid(node_lab, pod) == pid and status_of(node_lab.pod("reader") or {})["restartCount"] == 0


def test_pod_waiting_for_a_secret_starts_when_it_is_created(node_lab: NodeLab) -> None:
    node_lab.create(manifest("late", podapp(), volumes=[{"name": "s", "secret": {"secretName": "later"}}]))
    node_lab.wait_pod("late", lambda p: 'secret "later" not found' in str(
        status_of(p).get("state", {}).get("waiting", {}).get("message")), "waiting for the Secret")
    node_lab.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "later"}, "stringData": {"k": "v"}})
    node_lab.wait_pod("late", is_ready, "Running and Ready once the Secret exists")
