"""Issue 9 item 5, the real thing: `clustermesh lab up` enables clustermesh on every cluster and
connects every pair with the user's commands; the API servers and agents are pods of those
manifests run by the lab's node runtime; a Deployment applied in c2 lands in the ipcache of c1's
nodes; `lab down` leaves nothing; `lab up --no-mesh` installs nothing. Driven only through the
`clustermesh` command line and `kubectl`, like a user."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clustermesh_cli.install import names
from lab.driver import CLI, PROJECT, LabDriver, lab_traces, running_ready, wait_for
from lab.mesh import agent_pin_root, agent_socket, agent_state_root

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
              pytest.mark.timeout(420)]
NS = "kube-system"
WEB = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          image: ghcr.io/clustermesh-py/lab:latest
          command: ["clustermesh", "lab", "echo", "--port", "8080"]
          env:
            - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
          readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
"""
CLIENT = """
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default}
spec:
  containers:
    - {name: client, image: ghcr.io/clustermesh-py/lab:latest, command: ["sleep", "infinity"]}
"""


def _lab_name() -> str:
    return "m" + secrets.token_hex(3)[:5]


def _run(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=PROJECT)
    assert out.returncode == 0, f"clustermesh {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def meshed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabDriver]:
    driver = LabDriver(_lab_name(), tmp_path_factory.mktemp("mesh") / "kubeconfig")
    try:
        out = driver.up(2, 2, timeout=300)
        assert f"mesh of lab {driver.name!r} is ready" in out.stdout, out.stdout + out.stderr
        yield driver
    finally:
        driver.down()


def _install_pods(lab: LabDriver, cluster: str) -> list[dict[str, Any]]:
    return lab.pods(cluster, names.PART_OF_SELECTOR, namespace=NS)


def test_apiserver_and_agents_are_running_and_ready_pods_of_the_manifests(meshed: LabDriver) -> None:
    for cluster in ("c1", "c2"):
        pods = _install_pods(meshed, cluster)
        by_app: dict[str, list[dict[str, Any]]] = {}
        for pod in pods:
            by_app.setdefault(pod["metadata"]["labels"][names.APP_LABEL], []).append(pod)
        assert sorted(by_app) == [names.AGENT, names.APISERVER]
        assert len(by_app[names.APISERVER]) == 1
        assert {p["spec"]["nodeName"] for p in by_app[names.AGENT]} == {f"{cluster}-n0", f"{cluster}-n1"}
        assert all(running_ready(p) for p in pods), [(p["metadata"]["name"], p["status"]) for p in pods]
        api = by_app[names.APISERVER][0]
        assert [c["name"] for c in api["spec"]["containers"]] == [names.ETCD_CONTAINER, names.APISERVER_CONTAINER]
        agent = by_app[names.AGENT][0]
        assert agent["spec"]["hostNetwork"] is True
        assert agent["status"]["podIP"] == meshed.spec.node(agent["spec"]["nodeName"]).internal_ip


def test_each_cluster_has_the_other_as_a_peer_and_every_agent_has_it_ready(meshed: LabDriver) -> None:
    for cluster, peer in (("c1", "c2"), ("c2", "c1")):
        secret = meshed.get(cluster, "secret", names.CLUSTERMESH_SECRET, "-n", NS)
        keys = set(secret["data"])
        assert {names.peer_config_key(peer), names.peer_ca_key(peer), names.peer_cert_key(peer),
                names.peer_key_key(peer)} <= keys
        assert b"endpoints:" in base64.b64decode(secret["data"][peer])
        assert names.peer_config_key(cluster) not in keys
    spec = meshed.spec
    for node in spec.nodes:
        peer = "c2" if node.cluster == "c1" else "c1"
        doc = json.loads(_run("status", "--agent-socket", str(agent_socket(spec, node.name)), "-o", "json").stdout)
        (remote,) = doc["cluster-mesh"]["clusters"]
        assert remote["name"] == peer
        assert remote["ready"] and remote["connected"], remote
        assert remote["synced"]["nodes"] and remote["synced"]["endpoints"], remote
        assert remote["num-nodes"] == 2, remote
        assert doc["local"]["node-name"] == node.name
    assert agent_socket(spec, "c1-n0").is_relative_to(agent_state_root(spec))


def _ipcache(lab: LabDriver, node: str) -> dict[str, dict[str, Any]]:
    out = _run("bpf", "dump", "ipcache", "--node", node, "--pin-root", str(agent_pin_root(lab.spec)), "-o", "json")
    return {row["prefix"]: row for row in json.loads(out.stdout)}


def test_a_deployment_applied_in_c2_lands_in_the_ipcache_of_c1s_nodes(meshed: LabDriver) -> None:
    meshed.kubectl("c2", "apply", "-f", "-", stdin=WEB)
    t0 = time.monotonic()
    pods = wait_for(lambda: (lambda ps: ps if len(ps) == 2 else None)(
        [p for p in meshed.pods("c2", "app=web") if running_ready(p)]), within=30, what="web pods Ready in c2")
    ips = {p["status"]["podIP"] for p in pods}
    for node in ("c1-n0", "c1-n1"):
        def landed(node: str = node) -> dict[str, dict[str, Any]] | None:
            rows = _ipcache(meshed, node)
            return rows if all(f"{ip}/32" in rows for ip in ips) else None

        rows = wait_for(landed, within=30, interval=0.5, what=f"web pod IPs {sorted(ips)} in {node}'s ipcache")
        for ip in ips:
            row = rows[f"{ip}/32"]
            assert row["cluster-id"] == 2 and "remote-cluster" in row["flags"], row
            assert row["tunnel-endpoint"] in {n.internal_ip for n in meshed.spec.cluster("c2").nodes}, row
    assert time.monotonic() - t0 < 60


def test_the_new_pods_are_reachable_from_c1_and_disconnect_drains_them(meshed: LabDriver) -> None:
    meshed.kubectl("c1", "apply", "-f", "-", stdin=CLIENT)
    wait_for(lambda: any(running_ready(p) for p in meshed.pods("c1") if p["metadata"]["name"] == "client"),
             within=30, what="client Running in c1")
    web = wait_for(lambda: (lambda ps: ps if len(ps) == 2 else None)(
        [p for p in meshed.pods("c2", "app=web") if running_ready(p)]), within=30, what="web pods Ready in c2")
    for pod in web:
        answer = json.loads(meshed.exec("c1", "client", "curl", "-s", "-m", "5",
                                        f"http://{pod['status']['podIP']}:8080/").stdout)
        assert (answer["cluster"], answer["pod"]) == ("c2", pod["metadata"]["name"]), answer
    ips = {f"{p['status']['podIP']}/32" for p in web}
    kubeconfig = ["--kubeconfig", str(meshed.kubeconfig)]
    _run("disconnect", "--context", meshed.context("c1"), "--destination-context", meshed.context("c2"), *kubeconfig)
    try:
        for node in ("c1-n0", "c1-n1"):
            wait_for(lambda node=node: not ips & set(_ipcache(meshed, node)), within=30, interval=0.5,
                     what=f"c2's pods drained from {node}'s ipcache")
        blocked = meshed.exec("c1", "client", "curl", "-s", "-m", "2",
                              f"http://{web[0]['status']['podIP']}:8080/", check=False)
        assert blocked.returncode != 0, "c1 still reaches c2's pods after disconnect"
    finally:
        _run("connect", "--context", meshed.context("c1"), "--destination-context", meshed.context("c2"),
             *kubeconfig)
    for node in ("c1-n0", "c1-n1"):
        wait_for(lambda node=node: ips <= set(_ipcache(meshed, node)), within=60, interval=0.5,
                 what=f"c2's pods back in {node}'s ipcache after connect")


def test_lab_down_leaves_nothing(meshed: LabDriver) -> None:
    name = meshed.name
    assert lab_traces(name)["bpffs"], "the agents pinned nothing in the lab's bpffs directory"
    assert any(agent_state_root(meshed.spec).iterdir())
    meshed.down()
    assert not any(lab_traces(name).values()), lab_traces(name)


def test_lab_up_no_mesh_installs_nothing(tmp_path: Path) -> None:
    driver = LabDriver(_lab_name(), tmp_path / "kubeconfig")
    try:
        out = driver.up(1, 1, "--no-mesh")
        assert "is up" in out.stdout and "meshing" not in out.stdout
        for kind in ("deployments", "daemonsets", "secrets", "configmaps", "services"):
            assert driver.get("c1", kind, "-n", NS, "-l", names.PART_OF_SELECTOR)["items"] == [], kind
        assert driver.get("c1", "pods", "-A")["items"] == []
        assert not agent_state_root(driver.spec).exists()
    finally:
        driver.down()
    assert not any(lab_traces(driver.name).values()), lab_traces(driver.name)
