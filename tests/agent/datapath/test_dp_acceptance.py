"""Issue 5 acceptance (a-d), on a lab: ``clustermesh lab up --clusters 2 --nodes 2`` installs the
mesh with the user's commands (the clustermesh-apiserver and one ``clustermesh-agent --datapath
bpf`` per node are pods of the install manifests), and the test's pods, the global Service
``echo`` (affinity annotation) and the CiliumNetworkPolicy arrive with ``kubectl apply``
(:func:`lab.meshtest.meshed_lab`). Every record the agents program comes from the API servers
exporting the clusters' Kubernetes objects; nothing is seeded and nothing is routed by hand.
Traffic runs in the pods with ``clustermesh lab exec``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest

from agent.datapath.node import DEFAULT_TUNNEL_DEVICE, endpoint_id_of
from bpf.layouts import Direction, Reason
from lab.driver import LabCommandError, running_ready
from lab.meshtest import (
    AGENT_NAMESPACE,
    ECHO_PORT,
    PODS,
    SERVICE_PORT,
    LabPod,
    MeshLab,
    meshed_lab,
    node_links,
    node_routes,
    poll_until,
    web_from_c2_frontend_policy,
)
from lab.net import ping, start_tcp_stream, tcp_stream

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def mesh() -> Iterator[MeshLab]:
    """A meshed 2 x 2 lab with :data:`lab.meshtest.PODS` programmed by every agent."""
    with meshed_lab(pods=PODS, name_prefix="da") as lab:
        yield lab


def lb_client(mesh: MeshLab, tries: int = 30) -> list[str]:
    """Connect ``tries`` times from the client pod (in its cgroup, below the agent's socket-LB
    cgroup) to c1's ClusterIP of ``echo``; the name of each answering pod (``lab echo``'s TCP mode)."""
    code = (
        "import socket\n"
        f"for _ in range({tries}):\n"
        "    try:\n"
        f"        c=socket.create_connection(('{mesh.frontends['c1']}',{SERVICE_PORT}),timeout=2)\n"
        "        c.sendall(b'who\\n'); line=c.makefile().readline(); c.close()\n"
        "        print(line.split(':')[0].split()[-1] if line else '-')\n"
        "    except OSError as e: print('error:'+str(e.errno))\n"
    )
    out = subprocess.run(mesh.pods["client"].exec_argv(sys.executable, "-c", code), capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_a_cross_cluster_pod_to_pod_tcp(mesh: MeshLab) -> None:
    # No hand-built mesh: in every node namespace the only VXLAN device is the agent's, and no
    # route leads to the other cluster's pods (the lab routes only within a cluster).
    for node in mesh.spec.nodes:
        vxlans = [link for link in node_links(node.netns) if link[1] == "vxlan"]
        assert vxlans == [(DEFAULT_TUNNEL_DEVICE, "vxlan")], (node.name, vxlans)
        other = next(c for c in mesh.spec.clusters if c.name != node.cluster)
        towards = [r for r in node_routes(node.netns)
                   if ipaddress.ip_network(r[0]).overlaps(ipaddress.ip_network(other.pod_cidr))]
        assert not towards, (node.name, towards)
    result = tcp_stream(mesh.pods["echo1"], mesh.pods["echo2"], seconds=2)
    assert result.ok, result
    result = tcp_stream(mesh.pods["frontend"], mesh.pods["client"], port=5301, seconds=2)
    assert result.ok, result
    with mesh.maps(mesh.node_of("echo1").name) as maps:
        counters = maps.counters()
    assert counters.get((Reason.TO_TUNNEL, Direction.EGRESS), (0, 0))[0] > 0
    assert counters.get((Reason.FROM_TUNNEL, Direction.INGRESS), (0, 0))[0] > 0


def test_b_policy_admits_only_frontend_from_c2(mesh: MeshLab) -> None:
    web = mesh.pods["web"]
    assert ping(mesh.pods["backend"], web.ip, count=1, timeout=2)  # no policy yet
    web_node = mesh.apply_policy_and_wait(web_from_c2_frontend_policy(), "web")
    result = tcp_stream(web, mesh.pods["frontend"], port=5401, seconds=1)
    assert result.ok, result
    assert not ping(mesh.pods["backend"], web.ip, count=2, timeout=1)
    blocked = tcp_stream(web, mesh.pods["backend"], port=5402, seconds=1, connect_timeout=2)
    assert not blocked.ok
    counters = {(c["reason"], c["direction"]): c["packets"] for c in mesh.bpf_dump("counters", web_node.name)}
    assert counters.get(("policy_default_deny", "ingress"), 0) > 0, counters


def _echo1_ready(mesh: MeshLab) -> bool:
    pod = mesh.driver.get("c1", "pod", "echo1", "-n", "default")
    return running_ready(pod)


def _connects(client: LabPod, ip: str, port: int) -> bool:
    code = (
        "import socket\n"
        f"try: socket.create_connection(('{ip}',{port}),timeout=2).close(); print('ok')\n"
        "except OSError: print('blocked')\n"
    )
    out = subprocess.run(client.exec_argv(sys.executable, "-c", code), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip() == "ok"


def test_b2_node_probes_pass_an_allow_list_policy(mesh: MeshLab) -> None:
    # allow-localhost=auto: the node's addresses (also 172.16.1.1 on lo, the probe's source) are
    # reserved:host (1) in its ipcache, and identity 1 may reach every local pod, so the lab
    # kubelet's httpGet readiness probe keeps echo1 Ready under a policy admitting only frontend.
    echo1, node = mesh.pods["echo1"], mesh.node_of("echo1")
    host_rows = {r["prefix"]: r["identity"] for r in mesh.bpf_dump("ipcache", node.name)}
    assert host_rows.get("172.16.1.1/32") == 1 and host_rows.get(f"{node.internal_ip}/32") == 1, host_rows
    assert not any(p.startswith("127.") for p in host_rows), host_rows
    assert _echo1_ready(mesh) and _connects(mesh.pods["client"], str(echo1.ip), ECHO_PORT)
    policy = {
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "echo-from-frontend", "namespace": "default"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "echo"}},
                 "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "frontend"}}]}]},
    }  # fmt: skip
    endpoint = endpoint_id_of(str(echo1.ip))
    try:
        mesh.apply_policy_and_wait(policy, "echo1")
        assert not _connects(mesh.pods["client"], str(echo1.ip), ECHO_PORT)  # the policy is in force
        # periodSeconds 1, failureThreshold 3: a dropped probe turns the pod NotReady within ~4 s
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert _echo1_ready(mesh), f"echo1 went NotReady under the policy:\n{mesh.agent_log(node.name)}"
            time.sleep(0.5)
        host = [r for r in mesh.bpf_dump("policy", node.name)
                if r["endpoint"] == endpoint and r["direction"] == "ingress" and r["identity"] == 1]
        assert host and host[0]["verdict"] == "allow" and host[0]["packets"] > 0, host  # the probes went through it
    finally:
        mesh.driver.kubectl("c1", "delete", "ciliumnetworkpolicy", "echo-from-frontend", "-n", "default",
                            "--ignore-not-found")

        def lifted() -> bool:
            with mesh.maps(node.name) as maps:
                return not any(k.endpoint_id == endpoint for k, _ in maps.policy_enforce.items())

        assert poll_until(lifted, within=30), mesh.agent_log(node.name)


def test_c_global_service_affinity(mesh: MeshLab) -> None:
    node = mesh.node_of("client").name

    def affinity_is(value: int) -> Callable[[], bool]:
        def check() -> bool:
            with mesh.maps(node) as maps:
                return any(v.affinity == value and v.backend_count == 2 for _, v in maps.services.items())

        return check

    seen = {}
    for name, value in (("local", 1), ("remote", 2), ("none", 0)):
        mesh.set_affinity(name)
        assert poll_until(affinity_is(value), within=30), mesh.agent_log(node)
        seen[name] = set(lb_client(mesh))
    assert seen["local"] == {"echo1"}, seen
    assert seen["remote"] == {"echo2"}, seen
    assert seen["none"] == {"echo1", "echo2"}, seen


def _snapshot(mesh: MeshLab, node: str) -> dict[str, Any]:
    with mesh.maps(node) as maps:
        return {
            "ipcache": sorted((bytes(k), bytes(v)) for k, v in maps.ipcache.items()),
            "policy": sorted((bytes(k), v.verdict) for k, v in maps.policy.items()),
            "enforce": sorted(bytes(k) for k, _ in maps.policy_enforce.items()),
            "services": sorted((bytes(k), bytes(v)) for k, v in maps.services.items()),
            "endpoints": sorted((bytes(k), bytes(v)) for k, v in maps.endpoints.items()),
        }


def _restarts(pod: dict[str, Any]) -> int:
    return sum(int(s.get("restartCount", 0)) for s in (pod.get("status") or {}).get("containerStatuses") or [])


def _restarted_in_place(mesh: MeshLab, node: str, pod: dict[str, Any]) -> bool:
    """The agent pod of ``node`` is still ``pod`` (same UID) and its container has restarted since."""
    with contextlib.suppress(LabCommandError):
        now = mesh.agent_pod(node)
        return now["metadata"]["uid"] == pod["metadata"]["uid"] and _restarts(now) > _restarts(pod)
    return False


@pytest.mark.slow
def test_d_sigkill_during_stream_keeps_traffic_and_resyncs_without_deletes(mesh: MeshLab) -> None:
    server, client = mesh.pods["echo1"], mesh.pods["frontend"]
    victims = [mesh.node_of("echo1").name, mesh.node_of("frontend").name]
    before = {node: _snapshot(mesh, node) for node in victims}
    pods = {node: mesh.agent_pod(node) for node in victims}
    run = start_tcp_stream(server, client, port=5501, seconds=30, gap_threshold=0.5)
    time.sleep(5)
    killed_at = time.time()
    for node, pod in pods.items():  # SIGKILL of every process of the agent pod (its cgroup)
        mesh.driver.fault("kill", "--context", mesh.spec.node(node).cluster,
                          f"pod/{AGENT_NAMESPACE}/{pod['metadata']['name']}")  # fmt: skip
    # restartPolicy Always: the node runtime starts the agent container again, in the same pod
    for node, pod in pods.items():
        assert poll_until(partial(_restarted_in_place, mesh, node, pod), within=60), (node, mesh.agent_log(node))
    mesh.wait_agents(victims, within=120, started_after=killed_at)
    result = run.result()
    assert result.ok, result
    for node in victims:
        dp = mesh.agent_status(node)["datapath"]
        deletes = {name: r["deletes"] for name, r in dp["reconcilers"].items()}
        assert set(deletes.values()) == {0}, deletes
        assert _snapshot(mesh, node) == before[node]
