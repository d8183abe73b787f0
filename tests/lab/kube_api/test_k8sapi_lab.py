"""The API emulator in a real lab (`clustermesh lab up`, one cluster of one node, through the lab's API
front): `kubectl exec` and the official client's exec stream into a real pod that the node runtime runs,
`kubectl get -o wide` printing kube-apiserver's columns, and kubectl's protobuf `create`s."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator

import pytest
from kubernetes import client, config
from kubernetes.stream import stream

from lab.driver import PROJECT, LabDriver, running_ready, wait_for

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root"), pytest.mark.timeout(400)]
CLIENT = PROJECT / "lab" / "examples" / "client.yaml"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabDriver]:
    driver = LabDriver("x" + secrets.token_hex(3)[:5], tmp_path_factory.mktemp("lab") / "kubeconfig")
    try:
        driver.up(1, 1, "--no-mesh")
        driver.kubectl("c1", "apply", "-f", str(CLIENT))
        wait_for(lambda: next((p for p in driver.pods("c1") if p["metadata"]["name"] == "client"
                               and running_ready(p)), None), within=30, what="pod client Running and Ready")
        yield driver
    finally:
        driver.down()


def cells(out: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line.strip()) for line in out.splitlines() if line.strip()]


def test_kubectl_exec_in_a_lab_pod(lab: LabDriver) -> None:
    out = lab.kubectl("c1", "exec", "client", "--", "sh", "-c", "echo out; echo err >&2; exit 3", check=False)
    assert (out.returncode, out.stdout) == (3, "out\n")
    assert out.stderr.splitlines() == ["err", "command terminated with exit code 3"]
    pod = lab.get("c1", "pod", "client")
    where = lab.kubectl("c1", "exec", "client", "--", "sh", "-c",
                        "hostname; echo $KUBERNETES_SERVICE_HOST; cat /proc/self/cgroup; "
                        "cat /var/run/secrets/kubernetes.io/serviceaccount/namespace").stdout.splitlines()
    assert where[0] == "client" and where[1] == lab.spec.clusters[0].api_service_ip
    assert any(line.endswith(f"/{pod['metadata']['uid']}") for line in where[2:-1]) and where[-1] == "default"
    piped = lab.kubectl("c1", "exec", "-i", "client", "--", "cat", stdin="to the pod\n")
    assert piped.stdout == "to the pod\n"


def test_official_client_exec_stream_in_a_lab_pod(lab: LabDriver) -> None:
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(lab.kubeconfig), context=lab.context("c1"),  # type: ignore[no-untyped-call]
                            client_configuration=cfg)
    with client.ApiClient(cfg) as api:
        core = client.CoreV1Api(api)
        ws = stream(core.connect_get_namespaced_pod_exec, "client", "default", command=["sh", "-c", "cat; exit 6"],
                    stdout=True, stderr=True, stdin=True, tty=False, _preload_content=False)
        ws.write_stdin("hello\n")
        ws.close_channel(0)
        ws.run_forever(timeout=20)
        assert ws.read_stdout() == "hello\n" and ws.returncode == 6


def test_kubectl_get_wide_columns_in_a_lab(lab: LabDriver) -> None:
    pod = lab.get("c1", "pod", "client")
    rows = cells(lab.kubectl("c1", "get", "pods", "-o", "wide").stdout)
    assert rows[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED NODE",
                       "READINESS GATES"]
    client_row = next(r for r in rows[1:] if r[0] == "client")
    assert client_row[:4] == ["client", "1/1", "Running", "0"]
    assert client_row[5:] == [pod["status"]["podIP"], "c1-n0", "<none>", "<none>"]
    node = cells(lab.kubectl("c1", "get", "nodes", "-o", "wide").stdout)
    assert node[0] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE",
                       "KERNEL-VERSION", "CONTAINER-RUNTIME"]
    info = lab.get("c1", "node", "c1-n0")["status"]["nodeInfo"]
    assert node[1][:3] == ["c1-n0", "Ready", "<none>"]
    assert node[1][4:] == [info["kubeletVersion"], lab.spec.node("c1-n0").internal_ip, "<none>", info["osImage"],
                           info["kernelVersion"], info["containerRuntimeVersion"]]


def test_kubectl_create_namespace_and_configmap_in_a_lab(lab: LabDriver) -> None:
    assert lab.kubectl("c1", "create", "namespace", "made").stdout.strip() == "namespace/made created"
    lab.kubectl("c1", "create", "configmap", "x", "-n", "made", "--from-literal=a=b")
    assert lab.get("c1", "configmap", "x", "-n", "made")["data"] == {"a": "b"}
    assert cells(lab.kubectl("c1", "get", "cm", "x", "-n", "made").stdout)[1][:2] == ["x", "1"]
