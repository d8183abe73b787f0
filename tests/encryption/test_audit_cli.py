"""``clustermesh encryption audit``: usage errors, discovery into targets, and the exit status with
captures given by the test (the real capture runs in test_audit_capture.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from clustermesh_cli.encryption.audit import run_audit
from clustermesh_cli.encryption.discover import ClusterObjects, Target, plan_targets
from clustermesh_cli.encryption.execcapture import CAPTURE_COMMAND
from clustermesh_cli.main import cli
from encryption.audit.classify import AuditPlan
from encryption.audit.report import NodeCapture


@pytest.mark.parametrize("args, message", [
    (["--duration", "0"], "Invalid value for '--duration': 0.0 is not in the range 1<=x<=600"),
    (["--duration", "601"], "is not in the range 1<=x<=600"),
    (["-o", "yaml"], "Invalid value for '-o' / '--output'"),
    (["--wireguard-port", "70000"], "Invalid value for '--wireguard-port'"),
])
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["encryption", "audit", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_registered_with_help() -> None:
    result = CliRunner().invoke(cli, ["encryption", "audit", "-h"])
    assert result.exit_code == 0 and "plaintext" in result.output and "--require-traffic" in result.output


def node(name: str, ip: str, cidr: str | None) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"podCIDRs": [cidr]} if cidr else {},
            "status": {"addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}]}}


def agent(name: str, on: str, phase: str = "Running") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "kube-system"}, "spec": {"nodeName": on},
            "status": {"phase": phase}}


CLUSTER = ClusterObjects(
    "ctx-1", "c1",
    nodes=[node("n2", "172.18.0.3", "10.1.1.0/24"), node("n1", "172.18.0.2", "10.1.0.0/24"),
           node("n3", "172.18.0.4", None)],
    cilium_nodes=[{"metadata": {"name": "n3"}, "spec": {"addresses": [{"type": "InternalIP", "ip": "172.18.0.4"},
                                                                        {"type": "CiliumInternalIP", "ip": "10.9.0.1"}],
                                                          "ipam": {"podCIDRs": ["10.9.0.0/24"]}}}],
    agent_pods=[agent("agent-a", "n1"), agent("agent-b", "n2"), agent("agent-c", "n3", phase="Pending")],
)


def test_plan_targets_reads_nodes_and_cilium_nodes() -> None:
    plan, targets = plan_targets([CLUSTER])
    assert dict(plan.nodes) == {"172.18.0.2": "c1/n1", "172.18.0.3": "c1/n2", "172.18.0.4": "c1/n3"}
    assert plan.to_json()["pod_cidrs"] == [["10.1.0.0/24", "c1/n1"], ["10.1.1.0/24", "c1/n2"],
                                           ["10.9.0.0/24", "c1/n3"]]
    assert [(t.node, t.node_ip, (t.pod or {}).get("metadata", {}).get("name")) for t in targets] == [
        ("c1/n1", "172.18.0.2", "agent-a"), ("c1/n2", "172.18.0.3", "agent-b"), ("c1/n3", "172.18.0.4", None)]
    assert targets[2].problem == "agent pod agent-c is not running (phase Pending)"
    _, [lonely] = plan_targets([ClusterObjects("x", "c2", [node("m1", "172.19.0.2", None)])])
    assert lonely.pod is None and "no agent pod (k8s-app=clustermesh-agent) runs on this node" in str(lonely.problem)


def test_run_audit_exit_status_and_capture_commands(capsys: pytest.CaptureFixture[str]) -> None:
    commands: dict[str, list[str]] = {}

    def run(target: Target, command: list[str], timeout: float) -> NodeCapture:
        commands[target.node] = command
        assert timeout > 3
        counts = [{"src": "c1/n1", "dst": "c1/n2", "class": "wireguard", "packets": 10, "bytes": 1000}]
        return NodeCapture(target.node, result={"counts": counts, "plaintext_flows": []})

    code = run_audit(["ctx-1"], duration=3, output="json", read=lambda c: CLUSTER, run=run, echo=lambda s: None)
    out = json.loads(capsys.readouterr().out)
    assert code == 1  # n3 has no running agent pod
    assert out["not_audited"] == {"c1/n3": "agent pod agent-c is not running (phase Pending)"}
    assert out["pairs"][0]["counts"]["wireguard"] == 10
    cmd = commands["c1/n1"]
    assert tuple(cmd[:3]) == CAPTURE_COMMAND and cmd[cmd.index("--node-ip") + 1] == "172.18.0.2"
    assert cmd[cmd.index("--duration") + 1] == "3"
    plan = AuditPlan.from_json(json.loads(cmd[cmd.index("--plan-json") + 1]))
    assert plan.nodes["172.18.0.3"] == "c1/n2"

    two = ClusterObjects("ctx-1", "c1", CLUSTER.nodes[:2], (), CLUSTER.agent_pods[:2])
    assert run_audit(["ctx-1"], duration=3, read=lambda c: two, run=run, echo=lambda s: None) == 0
    assert "PASS" in capsys.readouterr().out

    def failing(target: Target, command: list[str], timeout: float) -> NodeCapture:
        return NodeCapture(target.node, error="capture in pod kube-system/agent-a failed: no permission")

    assert run_audit(["ctx-1"], duration=3, read=lambda c: two, run=failing, echo=lambda s: None) == 1
    assert "Not audited: c1/n1: capture in pod kube-system/agent-a failed: no permission" in capsys.readouterr().out


def test_unreachable_context_is_reported(tmp_path: Any) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "dead",
        "clusters": [{"name": "dead", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "u"}}]}))
    result = CliRunner().invoke(cli, ["encryption", "audit", "--kubeconfig", str(kubeconfig), "--duration", "1"])
    assert result.exit_code == 1
    assert "the Kubernetes API of context dead (https://127.0.0.1:1) does not answer (list nodes)" in result.output
