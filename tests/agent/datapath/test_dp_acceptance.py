"""Issue 5 acceptance, all real: a lab.net Topology of 2 clusters x 2 nodes with pods, one etcd
per cluster, a Kubernetes API emulator per cluster (CiliumNetworkPolicy and the global Service with
its affinity annotation), and one ``clustermesh-agent --datapath bpf`` process per node, run inside
its node namespace (``ip netns exec``), with a clustermesh config dir naming the OTHER cluster's
etcd and ``--kvstore-config`` its own.

Each cluster's etcd is seeded with Cilium-format records (meshcore.wire) of the topology's nodes,
pods (ipcache pairs with HostIP = node underlay IP), identities and the global service, as a
clustermesh-apiserver in kubernetes mode would export them (the apiserver itself is not run here).
etcd and the emulators listen on the host's loopback; a forwarder makes each port reachable as the
same loopback port inside each node namespace (the machinery is :mod:`lab.dpmesh`). Nothing is routed by hand: no
hand-built routes or VXLAN devices exist while the agents run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bpf.layouts import Direction, Reason
from lab.dpmesh import (
    ECHO_PORT,
    FRONTEND,
    PODS,
    Mesh,
    apply_policy_and_wait,
    datapath_mesh,
    k8s_request,
    node_name,
    poll_until_sync,
    web_from_c2_frontend_policy,
)
from lab.net import Pod, ping, start_tcp_stream, tcp_stream
from lab.net.topology import Node

PROJECT = Path(__file__).resolve().parents[3]


def set_affinity(mesh: Mesh, affinity: str) -> None:
    api = mesh.apis["c1"]
    current = k8s_request(api, "GET", "/api/v1/namespaces/default/services/echo")
    current["metadata"]["annotations"]["service.cilium.io/affinity"] = affinity
    k8s_request(api, "PUT", "/api/v1/namespaces/default/services/echo", current)


def _echo_server(pod: Pod) -> subprocess.Popen[bytes]:
    code = (
        "import socket,time\n"
        "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('0.0.0.0',{ECHO_PORT})); s.listen(64); s.settimeout(1); end=time.time()+600\n"
        "while time.time()<end:\n"
        "    try: c,_=s.accept()\n"
        "    except OSError: continue\n"
        f"    c.sendall(b'{pod.name}'); c.close()\n"
    )
    return subprocess.Popen(["ip", "netns", "exec", pod.ns, sys.executable, "-c", code])


def lb_client(mesh: Mesh, tries: int = 30) -> list[str]:
    """Connect ``tries`` times from the client pod (in the LB cgroup) to the frontend."""
    code = (
        "import socket\n"
        f"for _ in range({tries}):\n"
        "    try:\n"
        f"        c=socket.create_connection(('{FRONTEND}',80),timeout=2)\n"
        "        print(c.recv(64).decode() or '-'); c.close()\n"
        "    except OSError as e: print('error:'+str(e.errno))\n"
    )
    shell = f'echo $$ > {mesh.cgroup}/cgroup.procs && exec ip netns exec {mesh.pods["client"].ns} "$0" -c "$1"'
    out = subprocess.run(["sh", "-c", shell, sys.executable, code], capture_output=True, text=True, timeout=120)
    return out.stdout.split()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """The whole mesh (see :func:`lab.dpmesh.datapath_mesh`), with echo servers on the echo pods."""
    with datapath_mesh(tmp_path_factory.mktemp("dpmesh"), pods=PODS) as built:
        for name in ("echo1", "echo2"):
            built.servers.append(_echo_server(built.pods[name]))
        yield built


def _clustermesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clustermesh_cli.main", *args], cwd=PROJECT, capture_output=True, text=True, timeout=60
    )


def test_a_cross_cluster_pod_to_pod_tcp(mesh: Mesh) -> None:
    # No hand-built mesh: only the agents' VXLAN devices exist.
    assert mesh.topo.hand_built is None
    result = tcp_stream(mesh.pods["echo1"], mesh.pods["echo2"], seconds=2)
    assert result.ok, result
    result = tcp_stream(mesh.pods["frontend"], mesh.pods["client"], port=5301, seconds=2)
    assert result.ok, result
    with mesh.maps(mesh.topo.node_of(mesh.pods["echo1"])) as maps:
        counters = maps.counters()
    assert counters.get((Reason.TO_TUNNEL, Direction.EGRESS), (0, 0))[0] > 0
    assert counters.get((Reason.FROM_TUNNEL, Direction.INGRESS), (0, 0))[0] > 0


def test_b_policy_admits_only_frontend_from_c2(mesh: Mesh) -> None:
    web = mesh.pods["web"]
    assert ping(mesh.pods["backend"], web.ip, count=1, timeout=2)  # no policy yet
    web_node = apply_policy_and_wait(mesh, web_from_c2_frontend_policy(), "web")
    result = tcp_stream(web, mesh.pods["frontend"], port=5401, seconds=1)
    assert result.ok, result
    assert not ping(mesh.pods["backend"], web.ip, count=2, timeout=1)
    blocked = tcp_stream(web, mesh.pods["backend"], port=5402, seconds=1, connect_timeout=2)
    assert not blocked.ok
    out = _clustermesh("bpf", "dump", "counters", "--node", node_name(web_node), "--pin-root", str(mesh.pin_root),
                       "-o", "json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    counters = {(c["reason"], c["direction"]): c["packets"] for c in json.loads(out.stdout)}
    assert counters.get(("policy_default_deny", "ingress"), 0) > 0, counters


def test_c_global_service_affinity(mesh: Mesh) -> None:
    node = mesh.topo.node_of(mesh.pods["client"])

    def affinity_is(value: int) -> Callable[[], bool]:
        def check() -> bool:
            with mesh.maps(node) as maps:
                return any(v.affinity == value and v.backend_count == 2 for _, v in maps.services.items())

        return check

    seen = {}
    for name, value in (("local", 1), ("remote", 2), ("none", 0)):
        set_affinity(mesh, name)
        assert poll_until_sync(affinity_is(value), within=20), mesh.agent_of("client").tail()
        seen[name] = set(lb_client(mesh))
    assert seen["local"] == {"echo1"}, seen
    assert seen["remote"] == {"echo2"}, seen
    assert seen["none"] == {"echo1", "echo2"}, seen


def _snapshot(mesh: Mesh, node: Node) -> dict[str, Any]:
    with mesh.maps(node) as maps:
        return {
            "ipcache": sorted((bytes(k), bytes(v)) for k, v in maps.ipcache.items()),
            "policy": sorted((bytes(k), v.verdict) for k, v in maps.policy.items()),
            "enforce": sorted(bytes(k) for k, _ in maps.policy_enforce.items()),
            "services": sorted((bytes(k), bytes(v)) for k, v in maps.services.items()),
            "endpoints": sorted((bytes(k), bytes(v)) for k, v in maps.endpoints.items()),
        }


@pytest.mark.slow
def test_d_sigkill_during_stream_keeps_traffic_and_resyncs_without_deletes(mesh: Mesh) -> None:
    server, client = mesh.pods["echo1"], mesh.pods["frontend"]
    victims = [mesh.agent_of("echo1"), mesh.agent_of("frontend")]
    before = {a.node.ns: _snapshot(mesh, a.node) for a in victims}
    run = start_tcp_stream(server, client, port=5501, seconds=30, gap_threshold=0.5)
    time.sleep(5)
    for agent in victims:
        assert agent.proc is not None
        agent.proc.kill()  # SIGKILL
        agent.proc.wait(5)
    time.sleep(5)
    for agent in victims:
        agent.start()
    mesh.wait_ready(victims, within=90)
    result = run.result()
    assert result.ok, result
    for agent in victims:
        dp = agent.status()["datapath"]
        deletes = {name: r["deletes"] for name, r in dp["reconcilers"].items()}
        assert set(deletes.values()) == {0}, deletes
        assert _snapshot(mesh, agent.node) == before[agent.node.ns]
