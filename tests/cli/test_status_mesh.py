"""``clustermesh status --context``'s pure core: :func:`summarise` of the install's objects and the
agents' status documents, its text/JSON, the ``--wait`` loop (with a fake reader) and the usage
errors. The real thing, on a lab, is tests/lab/test_lab_status.py."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from click.testing import CliRunner

from clustermesh_cli.enable.kube import KubeError
from clustermesh_cli.install import names
from clustermesh_cli.main import cli
from clustermesh_cli.meshstatus import kube as meshkube
from clustermesh_cli.meshstatus.model import AgentProbe, MeshStatus, summarise
from clustermesh_cli.meshstatus.render import render_text
from clustermesh_cli.meshstatus.run import run_status

NS = "kube-system"
Obj = dict[str, Any]


def deployment(ready: int = 1, replicas: int = 1) -> Obj:
    return {"metadata": {"name": names.APISERVER, "namespace": NS, "generation": 1},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {names.APP_LABEL: names.APISERVER}}},
            "status": {"observedGeneration": 1, "readyReplicas": ready, "replicas": replicas}}


def api_pod(ready: bool = True) -> Obj:
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    statuses = [{"name": "apiserver", "ready": ready, "state": {"running": {}}, "restartCount": 0}]
    return {"metadata": {"name": "clustermesh-apiserver-abc", "namespace": NS,
                         "labels": {names.APP_LABEL: names.APISERVER}},
            "spec": {"nodeName": "c1-n0"},
            "status": {"phase": "Running", "conditions": conditions, "containerStatuses": statuses}}


SERVICE: Obj = {"metadata": {"name": names.APISERVER, "namespace": NS},
                "spec": {"type": "NodePort", "ports": [{"name": "etcd", "port": 2379, "nodePort": 32379}]}}
NODES = [{"metadata": {"name": f"c1-n{i}"},
          "status": {"addresses": [{"type": "InternalIP", "address": f"192.168.1.{i + 1}"}],
                     "conditions": [{"type": "Ready", "status": "True"}]}} for i in range(2)]
DAEMONSET: Obj = {"metadata": {"name": names.AGENT, "namespace": NS},
                  "status": {"desiredNumberScheduled": 2, "numberReady": 2}}


def agent_pod(node: str) -> Obj:
    return {"metadata": {"name": f"clustermesh-agent-{node}", "namespace": NS,
                         "labels": {names.APP_LABEL: names.AGENT}},
            "spec": {"nodeName": node},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}


def remote(name: str, *, ready: bool = True, synced: bool = True) -> Obj:
    return {"name": name, "ready": ready, "connected": True, "status": "ready" if ready else "syncing",
            "num-nodes": 2, "num-endpoints": 3, "num-identities": 4, "num-shared-services": 1, "num-failures": 0,
            "synced": {"nodes": True, "services": True, "endpoints": synced, "identities": synced},
            "config": {"required": True, "retrieved": True, "cluster-id": 2}}


def doc(*clusters: Obj, problems: Mapping[str, str] | None = None) -> Obj:
    return {"cluster-mesh": {"clusters": list(clusters)},
            "local": {"cluster-name": "c1", "config-problems": dict(problems or {})}}


def agents(*docs: Obj | str) -> list[AgentProbe]:
    out = []
    for i, d in enumerate(docs):
        pod = agent_pod(f"c1-n{i}")
        out.append(AgentProbe(pod, error=d) if isinstance(d, str) else AgentProbe(pod, status=d))
    return out


def status_of(peers: Sequence[str], probes: Sequence[AgentProbe], *, deploy: Obj | None = None,
              pods: Sequence[Obj] | None = None) -> MeshStatus:
    return summarise(deploy if deploy is not None else deployment(), SERVICE, peers, probes,
                     deployment_pods=pods if pods is not None else [api_pod()], nodes=NODES, daemonset=DAEMONSET,
                     cluster="c1", context="lab-c1", namespace=NS)


def test_all_ready() -> None:
    st = status_of(["c1", "c2", "c3"], agents(doc(remote("c2"), remote("c3")), doc(remote("c3"), remote("c2"))))
    assert st.ready and st.blockers() == []
    assert st.peers == ("c2", "c3")  # the local cluster's own name is no peer
    assert st.agents_ready == 2 and st.peers_per_agent() == (2, 2.0, 2)
    assert st.service.addresses == ("192.168.1.1", "192.168.1.2") and st.service.port == 32379
    text = render_text(st)
    assert "✅ Deployment clustermesh-apiserver is available: 1/1 replicas ready" in text
    assert "✅ Service clustermesh-apiserver of type NodePort: peers reach it at 192.168.1.1:32379, 192.168.1.2:32379" \
        in text
    assert "✅ c1-n0 (pod clustermesh-agent-c1-n0, Running, ready): 2/2 peers ready" in text
    assert ("   - c2: ready, connected, 2 nodes, 3 endpoints, 4 identities, 1 services, 0 failures (last: never)"
            in text.splitlines())
    assert text.splitlines()[-1] == "✅ 2/2 agents ready, 2/2 peers per agent [min:2 / avg:2.0 / max:2]"
    record = json.loads(json.dumps(st.to_json()))
    assert record["ready"] is True and record["expected-peers"] == ["c2", "c3"]
    assert [a["node"] for a in record["agents"]] == ["c1-n0", "c1-n1"]
    assert record["agents"][0]["clusters"][0]["name"] == "c2"  # the agent's own RemoteCluster records
    assert record["summary"] == {"agents": 2, "agents-ready": 2, "peers": 2,
                                 "peers-ready-per-agent": {"min": 2, "avg": 2.0, "max": 2}}


def test_agent_missing_a_peer_is_not_ready() -> None:
    st = status_of(["c2", "c3"], agents(doc(remote("c2"), remote("c3")), doc(remote("c2"))))
    assert not st.ready
    assert [a.ready for a in st.agents] == [True, False]
    (blocker,) = st.blockers()
    assert blocker.startswith("node c1-n1 (agent pod clustermesh-agent-c1-n1): peer c3: ")
    assert "has not read the config for peer c3" in blocker
    assert st.peers_per_agent() == (1, 1.5, 2)
    assert render_text(st).splitlines()[-4] == "❌ 1/2 agents ready, 1/2 peers per agent [min:1 / avg:1.5 / max:2]"


def test_agent_rejecting_a_peer_config_says_why() -> None:
    st = status_of(["c2"], agents(doc(remote("c2")), doc(problems={"c2": "cluster name mismatch"})))
    assert st.blockers() == ["node c1-n1 (agent pod clustermesh-agent-c1-n1): peer c2: its config for peer c2 is "
                             "rejected: cluster name mismatch"]


def test_agent_unreachable_is_not_ready() -> None:
    st = status_of(["c2"], agents(doc(remote("c2")), "no answer within 2s (is the agent hung?)"))
    assert not st.ready and st.agents_ready == 1
    assert st.blockers() == ["node c1-n1 (agent pod clustermesh-agent-c1-n1): status cannot be read: no answer "
                             "within 2s (is the agent hung?)"]
    assert st.peers_per_agent() == (0, 0.5, 1)
    assert st.to_json()["agents"][1]["error"] == "no answer within 2s (is the agent hung?)"


def test_peer_listed_but_not_synced_names_what() -> None:
    st = status_of(["c2"], agents(doc(remote("c2", ready=False, synced=False)), doc(remote("c2"))))
    assert st.blockers() == ["node c1-n0 (agent pod clustermesh-agent-c1-n0): peer c2: synchronization in progress "
                             "for endpoints, identities"]


def test_removed_peer_still_listed_is_draining() -> None:
    st = status_of([], agents(doc(remote("c2")), doc()))
    assert not st.ready
    (blocker,) = st.blockers()
    assert blocker.startswith("node c1-n0 (agent pod clustermesh-agent-c1-n0): peer c2: the agent still lists "
                              "cluster c2, which is no peer in Secret cilium-clustermesh")


def test_deployment_not_available() -> None:
    both = agents(doc(remote("c2")), doc(remote("c2")))
    st = status_of(["c2"], both, deploy=deployment(ready=0), pods=[api_pod(ready=False)])
    assert not st.ready and not st.apiserver.available
    (blocker,) = st.blockers()
    assert blocker.startswith("Deployment clustermesh-apiserver is not available (0/1 ready): pod "
                              "clustermesh-apiserver-abc on c1-n0: phase Running")
    assert "❌ Deployment clustermesh-apiserver is not available: 0/1 replicas ready" in render_text(st)
    missing = summarise(None, SERVICE, ["c2"], both, nodes=NODES, daemonset=DAEMONSET)
    assert [b.split(":")[0] for b in missing.blockers()] == ["Deployment clustermesh-apiserver does not exist"]


def test_no_peers_configured_is_ready_and_says_so() -> None:
    st = status_of([], agents(doc(), doc()))
    assert st.ready and st.peers == ()
    text = render_text(st)
    assert "No peers configured (Secret cilium-clustermesh has no peer entries)" in text
    assert "✅ c1-n0 (pod clustermesh-agent-c1-n0, Running, ready): no remote clusters" in text
    assert text.splitlines()[-1] == "✅ 2/2 agents ready, no peers configured"


def test_missing_agents_and_unusable_service() -> None:
    lb = {"metadata": {"name": names.APISERVER, "namespace": NS},
          "spec": {"type": "LoadBalancer", "ports": [{"port": 2379}]}, "status": {}}
    st = summarise(deployment(), lb, ["c2"], agents(doc(remote("c2"))), deployment_pods=[api_pod()], nodes=NODES,
                   daemonset=DAEMONSET, cluster="c1", context="lab-c1")
    blockers = st.blockers()
    assert any("LoadBalancer Service without an address yet" in b for b in blockers)
    assert "DaemonSet clustermesh-agent schedules 2 agent pods, 1 exist (nodes without one: c1-n1)" in blockers
    assert st.agents_expected == 2 and st.peers_per_agent() == (0, 0.5, 1)
    none = summarise(deployment(), SERVICE, [], [], deployment_pods=[api_pod()], nodes=NODES, daemonset=None)
    assert "DaemonSet clustermesh-agent does not exist" in none.blockers()[0]


def test_pods_that_do_not_run_are_not_execd() -> None:
    pending = agent_pod("c1-n1")
    pending["status"] = {"phase": "Pending"}
    asked: list[str] = []

    def run(pod: Mapping[str, Any], timeout: float) -> AgentProbe:
        asked.append(pod["spec"]["nodeName"])
        return AgentProbe(pod, status=doc())

    probes = meshkube.probe_agents([agent_pod("c1-n0"), pending], run, 1.0)
    assert asked == ["c1-n0"]
    assert probes[0].status is not None and probes[1].error is not None and "phase Pending" in probes[1].error
    assert meshkube.agent_command("c1-n0", 10.0) == [
        "clustermesh", "status", "-o", "json", "--agent-socket", "/var/run/clustermesh/c1-n0/agent.sock",
        "--request-timeout", "8.5"]


def test_wait_polls_until_ready(capsys: pytest.CaptureFixture[str]) -> None:
    rounds = iter([status_of(["c2"], agents(doc(remote("c2")), doc())),
                   status_of(["c2"], agents(doc(remote("c2")), doc(remote("c2"))))])
    echoed: list[str] = []
    code = run_status("lab-c1", wait=True, wait_duration=30, interval=0.05, echo=echoed.append,
                      read=lambda timeout: next(rounds), output="json")
    assert code == 0
    assert json.loads(capsys.readouterr().out)["ready"] is True
    assert len(echoed) == 1 and "has not read the config for peer c2" in echoed[0]


def test_wait_times_out_naming_node_and_peer(capsys: pytest.CaptureFixture[str]) -> None:
    echoed: list[str] = []
    code = run_status("lab-c1", wait=True, wait_duration=0.3, interval=0.05, echo=echoed.append,
                      read=lambda timeout: status_of(["c2"], agents(doc(remote("c2")), doc())))
    assert code == 1
    assert echoed[-1].startswith("Error: the mesh of context lab-c1 is not ready after 0.3s; blocking:\n"
                                 "  - node c1-n1 (agent pod clustermesh-agent-c1-n1): peer c2: has not read the "
                                 "config for peer c2")
    assert "❌ 1/2 agents ready" in capsys.readouterr().out


def test_api_errors_exit_1() -> None:
    def broken(timeout: float) -> MeshStatus:
        raise KubeError("the Kubernetes API of context lab-c1 does not answer")

    echoed: list[str] = []
    assert run_status("lab-c1", read=broken, echo=echoed.append) == 1
    assert echoed == ["Error: the Kubernetes API of context lab-c1 does not answer"]
    assert run_status("lab-c1", read=broken, echo=echoed.append, wait=True, wait_duration=0.2, interval=0.05) == 1
    assert "not ready after 0.2s" in echoed[-1] and "does not answer" in echoed[-1]


def test_usage_errors_exit_2(tmp_path: Any) -> None:
    runner = CliRunner()
    both = runner.invoke(cli, ["status", "--context", "x", "--agent-socket", str(tmp_path / "s")])
    assert both.exit_code == 2 and "give one of them" in both.output
    stray = runner.invoke(cli, ["status", "-n", "other", "--agent-socket", str(tmp_path / "s")])
    assert stray.exit_code == 2 and "--namespace only apply with --context" in stray.output
    bad = runner.invoke(cli, ["status", "--context", "x", "--wait-duration", "soon"])
    assert bad.exit_code == 2
    missing = runner.invoke(cli, ["status", "--context", "nope", "--kubeconfig", str(tmp_path / "none")])
    assert missing.exit_code == 1 and "cannot use context 'nope'" in missing.output
