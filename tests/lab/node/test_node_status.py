"""Pod phase, conditions and status patches; probe thresholds; restart decisions; Node status (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from lab.node import nodeobject
from lab.node.config import NodeConfig
from lab.node.podstatus import ContainerView, Running, Terminated, Waiting, conditions, phase, pod_status, status_patch
from lab.node.probes import Probe, ProbeState, parse_probe
from lab.node.worker import should_restart

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"


def running(name: str = "main", *, ready: bool = True) -> ContainerView:
    return ContainerView(name, "img", Running(T0), ready=ready, started=True)


def ended(code: int, name: str = "main") -> ContainerView:
    return ContainerView(name, "img", Terminated(code, "Completed" if code == 0 else "Error", T0, T1))


def waiting(name: str = "main", *, after_run: bool = False) -> ContainerView:
    last = Terminated(1, "Error", T0, T1) if after_run else None
    return ContainerView(name, "img", Waiting("CrashLoopBackOff" if after_run else "ContainerCreating"), last=last)


@pytest.mark.parametrize(("policy", "inits", "regular", "want"), [
    ("Always", [], [waiting()], "Pending"),
    ("Always", [running("i")], [waiting()], "Pending"),
    ("Always", [ended(0, "i")], [running()], "Running"),
    ("Always", [], [waiting(after_run=True)], "Running"),
    ("Always", [], [ended(0)], "Running"),
    ("Never", [], [ended(0), ended(0, "b")], "Succeeded"),
    ("Never", [], [ended(0), ended(2, "b")], "Failed"),
    ("Never", [], [ended(0), running("b")], "Running"),
    ("OnFailure", [], [ended(0)], "Succeeded"),
    ("OnFailure", [], [ended(1)], "Running"),
])  # fmt: skip
def test_phase(policy: str, inits: list[ContainerView], regular: list[ContainerView], want: str) -> None:
    assert phase(policy, inits, regular) == want


def test_failed_init_container_fails_the_pod() -> None:
    assert phase("Never", [ended(1, "i")], [waiting()], init_failed=True) == "Failed"


def test_conditions_keep_transition_times_while_unchanged() -> None:
    first = conditions("Running", [], [running(ready=False)], T0, [])
    by_type = {c["type"]: c for c in first}
    assert by_type["Ready"]["status"] == "False" and by_type["Ready"]["reason"] == "ContainersNotReady"
    assert by_type["Initialized"]["status"] == "True" and by_type["PodScheduled"]["status"] == "True"
    second = {c["type"]: c for c in conditions("Running", [], [running()], T1, first)}
    assert second["Ready"] == {"type": "Ready", "status": "True", "lastTransitionTime": T1}
    assert second["Initialized"]["lastTransitionTime"] == T0  # unchanged since T0
    done = {c["type"]: c for c in conditions("Succeeded", [], [ended(0)], T1, first)}
    assert done["Ready"]["status"] == "False" and done["Ready"]["reason"] == "PodCompleted"


def test_status_patch_only_when_something_changed() -> None:
    def status(prev: dict[str, Any]) -> dict[str, Any]:
        return pod_status(pod_phase="Running", inits=[], regular=[running()], now=T1, previous=prev,
                          pod_ip="10.1.0.2", host_ip="192.168.1.1", start_time=T0)

    first = status({})
    assert status_patch({}, first) == {"status": first}
    current = {**first, "qosClass": "BestEffort"}  # fields the node does not own are left alone
    assert status_patch(current, status(current)) is None
    cs = first["containerStatuses"][0]
    assert cs["imageID"] == "lab://img" and cs["state"] == {"running": {"startedAt": T0}} and cs["lastState"] == {}
    assert first["podIPs"] == [{"ip": "10.1.0.2"}] and first["hostIPs"] == [{"ip": "192.168.1.1"}]


def test_probe_thresholds() -> None:
    state = ProbeState(Probe("tcp", success_threshold=2, failure_threshold=3), initially=False)
    assert not state.record(True) and not state.ok
    assert state.record(True) and state.ok
    assert not state.record(False) and not state.record(False) and state.ok
    assert state.record(False, "refused") and not state.ok and state.message == "refused"


def test_probe_parsing_defaults_and_named_ports() -> None:
    container = {"ports": [{"name": "http", "containerPort": 8080}]}
    probe = parse_probe({"httpGet": {"port": "http", "path": "healthz"}}, container)
    assert probe == Probe("http", port=8080, path="healthz", period=10.0, timeout=1.0, failure_threshold=3)
    live = parse_probe({"exec": {"command": ["true"]}, "successThreshold": 5, "periodSeconds": 2}, container,
                       liveness=True)
    assert live is not None and live.success_threshold == 1 and live.period == 2.0 and live.command == ("true",)
    assert parse_probe(None, container) is None


@pytest.mark.parametrize(("policy", "init", "code", "want"), [
    ("Always", False, 0, True), ("Always", False, 1, True), ("OnFailure", False, 0, False),
    ("OnFailure", False, 1, True), ("Never", False, 1, False), ("Always", True, 0, False),
    ("Always", True, 1, True), ("Never", True, 1, False),
])  # fmt: skip
def test_should_restart(policy: str, init: bool, code: int, want: bool) -> None:
    assert should_restart(policy, init=init, exit_code=code) is want


def test_node_status_changes_only_on_real_changes() -> None:
    cfg = NodeConfig(lab="lab", cluster="c1", cluster_id=1, node_name="c1-n0", node_index=0, pod_cidr="10.1.0.0/24",
                     internal_ip="192.168.1.1", kubeconfig="/k", state_dir="/run/clustermesh-lab/lab/nodes/c1-n0",
                     cgroup_root="/sys/fs/cgroup/unified/x", api_service_host="172.16.1.1", api_service_port=443,
                     api_ca_file="/ca")
    first = nodeobject.node_status(cfg, memory=2**30, previous=None, now=T0)
    assert first["capacity"] == {"cpu": "2", "memory": "1048576Ki", "pods": "110", "ephemeral-storage": "1048576Ki"}
    later = nodeobject.node_status(cfg, memory=2**30, previous=first, now=T1)
    assert not nodeobject.status_changed(first, later)
    assert later["conditions"][0]["lastTransitionTime"] == T0
    broken = {**first, "conditions": [{**first["conditions"][0], "status": "False"}]}
    assert nodeobject.status_changed(broken, nodeobject.node_status(cfg, memory=2**30, previous=broken, now=T1))
    lease = nodeobject.lease_object(cfg, "uid-1", "2026-01-01T00:00:00.000000Z")
    assert lease["metadata"]["ownerReferences"][0]["uid"] == "uid-1" and lease["spec"]["holderIdentity"] == "c1-n0"
