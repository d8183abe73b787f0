"""Issue 9 item 4 on a real lab: `clustermesh status --context` reads the install through the
Kubernetes API and every agent through `pods/exec`, as cilium-cli's `cilium clustermesh status`
does; `--wait` follows disconnect and connect, and names the node whose agent hangs."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from clustermesh_cli.install import names
from clustermesh_cli.install.manifests import agent_socket_path
from lab.driver import CLI, PROJECT, LabDriver

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
              pytest.mark.timeout(420)]
NS = "kube-system"


def _status(lab: LabDriver, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    argv = [*CLI, "status", "--context", lab.context("c1"), "--kubeconfig", str(lab.kubeconfig), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=PROJECT)


def _json(lab: LabDriver, *args: str) -> dict[str, Any]:
    out = _status(lab, "-o", "json", *args)
    assert out.returncode == 0, out.stdout + out.stderr
    return dict(json.loads(out.stdout))


def _connect(lab: LabDriver, verb: str) -> None:
    argv = [*CLI, verb, "--context", lab.context("c1"), "--destination-context", lab.context("c2"),
            "--kubeconfig", str(lab.kubeconfig)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=PROJECT)
    assert out.returncode == 0, out.stdout + out.stderr


def _assert_c2_ready_everywhere(record: dict[str, Any]) -> None:
    assert record["ready"] is True, record["blockers"]
    assert record["cluster"] == "c1" and record["expected-peers"] == ["c2"]
    assert record["deployment"]["available"] is True
    assert record["service"]["type"] == "NodePort" and record["service"]["port"] == names.DEFAULT_NODE_PORT
    assert sorted(a["node"] for a in record["agents"]) == ["c1-n0", "c1-n1"]
    for agent in record["agents"]:
        assert [(p["name"], p["ready"], p["connected"]) for p in agent["peers"]] == [("c2", True, True)]
        assert agent["peers"][0]["num-nodes"] == 2  # c2's two nodes, as the agent counts them
        assert [c["name"] for c in agent["clusters"]] == ["c2"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabDriver]:
    driver = LabDriver("s" + secrets.token_hex(3)[:5], tmp_path_factory.mktemp("status") / "kubeconfig")
    try:
        driver.up(2, 2, timeout=300)
        yield driver
    finally:
        driver.down()


def test_status_of_a_meshed_lab(lab: LabDriver) -> None:
    out = _status(lab, "--wait", "--wait-duration", "2m")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"Cluster c1 (context {lab.context('c1')}, namespace {NS})"
    assert lines[1].startswith("✅ Deployment clustermesh-apiserver is available: 1/1 replicas ready")
    assert lines[2].startswith("✅ Service clustermesh-apiserver of type NodePort: peers reach it at 192.168.1.")
    for node in ("c1-n0", "c1-n1"):
        i = next(i for i, line in enumerate(lines) if line.startswith(f"✅ {node} (pod clustermesh-agent-"))
        assert lines[i].endswith(": 1/1 peers ready")
        assert lines[i + 1].startswith("   - c2: ready, connected, 2 nodes, ")
    assert lines[-1] == "✅ 2/2 agents ready, 1/1 peers per agent [min:1 / avg:1.0 / max:1]"
    _assert_c2_ready_everywhere(_json(lab))

    # what the command execs, by hand, through kubectl (the lab's pods/exec)
    pod = lab.pods("c1", f"{names.APP_LABEL}={names.AGENT}", namespace=NS)[0]
    node = pod["spec"]["nodeName"]
    raw = lab.kubectl("c1", "-n", NS, "exec", pod["metadata"]["name"], "--", "clustermesh", "status", "-o", "json",
                      "--agent-socket", agent_socket_path(node))
    assert [c["name"] for c in json.loads(raw.stdout)["cluster-mesh"]["clusters"]] == ["c2"]


def test_disconnect_then_connect(lab: LabDriver) -> None:
    _connect(lab, "disconnect")
    # --wait also waits until the agents have drained c2 (an agent still listing it is not ready)
    record = _json(lab, "--wait", "--wait-duration", "2m")
    assert record["ready"] is True and record["expected-peers"] == []
    assert [(a["peers"], a["clusters"]) for a in record["agents"]] == [([], []), ([], [])]
    text = _status(lab).stdout
    assert "No peers configured (Secret cilium-clustermesh has no peer entries)" in text
    assert text.splitlines()[-1] == "✅ 2/2 agents ready, no peers configured"

    _connect(lab, "connect")
    _assert_c2_ready_everywhere(_json(lab, "--wait", "--wait-duration", "2m"))


def test_wait_names_the_node_whose_agent_hangs(lab: LabDriver) -> None:
    pod = next(p for p in lab.pods("c1", f"{names.APP_LABEL}={names.AGENT}", namespace=NS)
               if p["spec"]["nodeName"] == "c1-n1")
    target = f"pod/{NS}/{pod['metadata']['name']}"
    lab.fault("pause", target, "--context", lab.context("c1"))
    try:
        out = _status(lab, "--wait", "--wait-duration", "2s", timeout=60)
    finally:
        lab.fault("resume", target, "--context", lab.context("c1"))
    assert out.returncode == 1, out.stdout + out.stderr
    stderr = out.stderr
    assert f"Error: the mesh of context {lab.context('c1')} is not ready after 2s; blocking:" in stderr
    assert f"node c1-n1 (agent pod {pod['metadata']['name']}): status cannot be read" in stderr
    assert "❌ 1/2 agents ready" in out.stdout
    # resumed, it answers again
    _assert_c2_ready_everywhere(_json(lab, "--wait", "--wait-duration", "1m"))
