"""Issue 8 acceptance: a lab driven only through `clustermesh lab` and `kubectl`, on the real parts
(etcd, the API emulator on it, controllers, node runtimes, namespaces, processes)."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.driver import CLI, PROJECT, LabDriver, lab_traces, running_ready, wait_for
from lab.net import nsutil
from lab.supervisor import cleanup
from lab.supervisor.spec import state_dir

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root"), pytest.mark.timeout(600)]
EXAMPLES = PROJECT / "lab" / "examples"


def _lab_name() -> str:
    return "a" + secrets.token_hex(3)[:5]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabDriver]:
    driver = LabDriver(_lab_name(), tmp_path_factory.mktemp("lab") / "kubeconfig")
    try:
        out = driver.up(2, 2, "--no-mesh")  # the bare lab (tests/lab/test_lab_mesh.py: with the mesh)
        assert f"lab {driver.name!r} is up" in out.stdout, out.stdout
        yield driver
    finally:
        driver.down()


def _in_node_cidr(lab: LabDriver, pod: dict) -> bool:  # type: ignore[type-arg]
    node = lab.spec.node(pod["spec"]["nodeName"])
    return ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(node.pod_cidr)


def _ready_echo(lab: LabDriver, cluster: str, n: int = 2) -> list[dict]:  # type: ignore[type-arg]
    def ready() -> list[dict] | None:  # type: ignore[type-arg]
        pods = [p for p in lab.pods(cluster, "app=echo") if running_ready(p)]
        return pods if len(pods) == n else None

    return wait_for(ready, within=15, what=f"{n} echo pods Running and Ready in {cluster}")


def _slice_ips(lab: LabDriver, cluster: str) -> set[str]:
    items = lab.get(cluster, "endpointslices", "-l", "kubernetes.io/service-name=echo")["items"]
    return {addr for s in items for ep in s.get("endpoints") or [] if (ep.get("conditions") or {}).get("ready")
            for addr in ep["addresses"]}


def test_examples_run_as_pods_with_endpoints_and_a_pod_network(lab: LabDriver) -> None:
    for cluster in ("c1", "c2"):
        lab.kubectl(cluster, "apply", "-f", str(EXAMPLES))
    t0 = time.monotonic()
    echo = _ready_echo(lab, "c1")
    assert time.monotonic() - t0 < 15
    assert all(_in_node_cidr(lab, p) for p in echo)
    assert {p["spec"]["nodeName"] for p in echo} == {"c1-n0", "c1-n1"}  # spread over both nodes
    ips = {p["status"]["podIP"] for p in echo}
    wait_for(lambda: _slice_ips(lab, "c1") == ips, within=15, what="EndpointSlice lists both echo pods ready")
    client = wait_for(lambda: next((p for p in lab.pods("c1") if p["metadata"]["name"] == "client"
                                    and running_ready(p)), None), within=15, what="client Running")
    other = next(p for p in echo if p["spec"]["nodeName"] != client["spec"]["nodeName"])
    answer = json.loads(lab.exec("c1", "client", "curl", "-s", "-m", "5",
                                 f"http://{other['status']['podIP']}:8080/").stdout)
    assert (answer["cluster"], answer["node"], answer["pod"]) == (
        "c1", other["spec"]["nodeName"], other["metadata"]["name"])
    c2_echo = _ready_echo(lab, "c2")
    blocked = lab.exec("c1", "client", "curl", "-s", "-m", "2", f"http://{c2_echo[0]['status']['podIP']}:8080/",
                       check=False)
    assert blocked.returncode != 0, "a pod of c1 reached a pod of c2 without the mesh"


def test_deleted_pod_is_replaced_with_a_new_ip_and_the_slice_follows(lab: LabDriver) -> None:
    lab.kubectl("c1", "apply", "-f", str(EXAMPLES / "echo.yaml"))
    before = _ready_echo(lab, "c1")
    victim = before[0]
    lab.kubectl("c1", "delete", "pod", victim["metadata"]["name"], "--wait=true", timeout=60)
    after = wait_for(lambda: (lambda ps: ps if len(ps) == 2 and victim["metadata"]["name"] not in
                              {p["metadata"]["name"] for p in ps} else None)(
        [p for p in lab.pods("c1", "app=echo") if running_ready(p)]), within=20, what="replacement Ready")
    new = next(p for p in after if p["metadata"]["name"] not in {b["metadata"]["name"] for b in before})
    assert new["status"]["podIP"] != victim["status"]["podIP"]
    assert _in_node_cidr(lab, new)
    want = {p["status"]["podIP"] for p in after}
    wait_for(lambda: _slice_ips(lab, "c1") == want, within=15, what="EndpointSlice follows the replacement")


def _versions(lab: LabDriver) -> dict[tuple[str, str | None, str], str]:
    return {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o["metadata"]["resourceVersion"]
            for kind in ("pods", "services", "deployments", "replicasets", "endpointslices", "nodes")
            for o in lab.get("c1", kind, "-A")["items"]}


def _restart_api(lab: LabDriver) -> None:
    lab.fault("kill", "api/c1")
    lab.fault("start", "api/c1")
    wait_for(lambda: lab.kubectl("c1", "get", "--raw", "/readyz", check=False).returncode == 0, within=30,
             what="the API is back")


def test_api_killed_and_restarted_keeps_objects_and_resource_versions(lab: LabDriver) -> None:
    lab.kubectl("c1", "apply", "-f", str(EXAMPLES / "echo.yaml"))
    _ready_echo(lab, "c1")
    before = _versions(lab)
    pods_rv = lab.get("c1", "pods")["metadata"]["resourceVersion"]
    _restart_api(lab)
    after = _versions(lab)
    assert set(before) <= set(after)
    assert {k: after[k] for k in before} == before
    # a client watching from the resourceVersion it had before the kill resumes: no 410, no relist
    lab.kubectl("c1", "run", "watched", "--image=lab", "--restart=Never", "--command", "--", "sleep", "60")
    try:
        raw = lab.kubectl("c1", "get", "--raw",
                          f"/api/v1/namespaces/default/pods?watch=1&resourceVersion={pods_rv}&timeoutSeconds=2")
        events = [json.loads(line) for line in raw.stdout.splitlines() if line.strip()]
        assert all(e["type"] != "ERROR" for e in events), events
        assert ("ADDED", "watched") in {(e["type"], e["object"]["metadata"]["name"]) for e in events}
        _ready_echo(lab, "c1")  # controllers and node runtimes carried on
    finally:
        lab.kubectl("c1", "delete", "pod", "watched", "--wait=false", check=False)


def test_kubectl_watch_started_before_an_api_restart_resumes(lab: LabDriver) -> None:
    """kubectl 1.32 `get -w` ends (status 0) when its watch connection drops; the lab's API front
    (lab/kube/front.py) keeps that connection and re-watches behind it, so kubectl prints on."""
    watch = subprocess.Popen(["kubectl", "--kubeconfig", str(lab.kubeconfig), "--context", lab.context("c1"),
                              "get", "pods", "-w", "-o", "name"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    err = b""
    try:
        time.sleep(1.0)  # the watch is established
        _restart_api(lab)
        lab.kubectl("c1", "run", "watched2", "--image=lab", "--restart=Never", "--command", "--", "sleep", "60")
        deadline = time.monotonic() + 20
        seen = b""
        assert watch.stdout is not None
        out_fd = watch.stdout.fileno()
        # raw reads on the pipe's descriptor: a text-mode read of a non-blocking pipe with nothing in it
        # raises inside the decoder instead of returning nothing
        while time.monotonic() < deadline and b"pod/watched2" not in seen:
            readable, _, _ = select.select([out_fd], [], [], 0.2)
            if readable:
                chunk = os.read(out_fd, 65536)
                if not chunk:
                    break  # kubectl closed its output: it ended
                seen += chunk
        assert b"pod/watched2" in seen, f"kubectl get -w did not resume (exit {watch.poll()}): {seen!r}"
        assert watch.poll() is None, "kubectl get -w ended"
    finally:
        watch.kill()
        _, err = watch.communicate(timeout=10)
        lab.kubectl("c1", "delete", "pod", "watched2", "--wait=false", check=False)
    assert not err.strip(), f"kubectl get -w wrote to stderr: {err!r}"


def _node_ping(lab: LabDriver, src: str, dst: str) -> bool:
    spec = lab.spec
    return nsutil.run_in(spec.node(src).netns, "ping", "-n", "-q", "-c", "1", "-W", "1", spec.node(dst).internal_ip,
                         check=False, timeout=10).returncode == 0


def _proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_faults_and_their_counterparts(lab: LabDriver) -> None:
    assert _node_ping(lab, "c1-n0", "c2-n1") and _node_ping(lab, "c1-n0", "c1-n1")
    lab.fault("partition", "c1", "c2")
    assert not _node_ping(lab, "c1-n0", "c2-n1") and not _node_ping(lab, "c2-n0", "c1-n1")
    assert _node_ping(lab, "c1-n0", "c1-n1"), "a partition between clusters cut a cluster's own nodes"
    assert "partition" in lab.fault("list").stdout
    lab.fault("heal", "c1", "c2")
    assert _node_ping(lab, "c1-n0", "c2-n1")
    lab.fault("loss", "c1", "c2", "100")
    assert not _node_ping(lab, "c2-n1", "c1-n0") and _node_ping(lab, "c2-n1", "c2-n0")
    lab.fault("heal", "c1", "c2")
    assert _node_ping(lab, "c2-n1", "c1-n0")
    assert "no network faults" in lab.fault("list").stdout
    # a pod: pause and resume its processes; kill them and its node runtime restarts it
    lab.kubectl("c1", "apply", "-f", str(EXAMPLES / "client.yaml"))
    wait_for(lambda: any(running_ready(p) for p in lab.pods("c1") if p["metadata"]["name"] == "client"),
             within=15, what="client Running")
    lab.fault("pause", "pod/client", "--context", lab.context("c1"))
    pod = lab.get("c1", "pod", "client")
    cgroup = lab.spec.node_cgroup(lab.spec.node(pod["spec"]["nodeName"])) / pod["metadata"]["uid"]
    client_pids = [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
    assert client_pids and all(_proc_state(p) == "T" for p in client_pids)
    lab.fault("resume", "pod/client", "--context", lab.context("c1"))
    assert all(_proc_state(p) != "T" for p in client_pids)
    restarts = lab.get("c1", "pod", "client")["status"]["containerStatuses"][0]["restartCount"]
    lab.fault("kill", "pod/client", "--context", lab.context("c1"))
    wait_for(lambda: lab.get("c1", "pod", "client")["status"]["containerStatuses"][0]["restartCount"] > restarts
             and running_ready(lab.get("c1", "pod", "client")), within=20, what="client restarted")
    # a node runtime: killed, the node's pods keep running; started again, it adopts them
    lab.fault("kill", "runtime/c1-n0")
    status = {p["name"]: p for p in lab.status()["processes"]}
    assert status["runtime/c1-n0"]["state"] == "exited"
    lab.fault("start", "runtime/c1-n0")
    status = {p["name"]: p for p in lab.status()["processes"]}
    assert status["runtime/c1-n0"]["state"] == "running"


def test_lab_down_leaves_nothing_and_cleans_a_killed_lab_up(tmp_path: Path) -> None:
    driver = LabDriver(_lab_name(), tmp_path / "kubeconfig")
    up = subprocess.Popen([*CLI, "lab", "up", "--name", driver.name, "--clusters", "1", "--nodes", "2", "--no-mesh",
                           "--kubeconfig", str(driver.kubeconfig)],
                          cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = state_dir(driver.name) / "progress.log"
    try:
        # SIGKILL `lab up` and every lab process once the node runtimes are starting: half way
        wait_for(lambda: progress.exists() and "node runtimes" in progress.read_text(), within=120,
                 what="bring-up half way")
        up.kill()
        for pid in cleanup.lab_processes(driver.name):
            os.kill(pid, signal.SIGKILL)
    finally:
        up.wait(10)
    assert any(lab_traces(driver.name).values())
    driver.down()
    assert not any(lab_traces(driver.name).values()), lab_traces(driver.name)
    out = driver.up(1, 1, "--no-mesh")
    assert "is up" in out.stdout
    assert any(lab_traces(driver.name).values())
    driver.down()
    assert not any(lab_traces(driver.name).values()), lab_traces(driver.name)
