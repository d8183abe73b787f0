"""Issue 5 acceptance, all real: a lab.netns Topology of 2 clusters x 2 nodes with pods, one etcd
per cluster, a Kubernetes API emulator per cluster (CiliumNetworkPolicy and the global Service with
its affinity annotation), and one ``clustermesh-agent --datapath bpf`` process per node, run inside
its node namespace (``ip netns exec``), with a clustermesh config dir naming the OTHER cluster's
etcd and ``--kvstore-config`` its own.

Each cluster's etcd is seeded with Cilium-format records (meshcore.wire) of the topology's nodes,
pods (ipcache pairs with HostIP = node underlay IP), identities and the global service, as a
clustermesh-apiserver in kubernetes mode would export them (the apiserver itself is not run here).
etcd and the emulators listen on the host's loopback; a forwarder makes each port reachable as the
same loopback port inside each node namespace (see conftest.py). Nothing is routed by hand: no
hand-built routes or VXLAN devices exist while the agents run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.datapath.node import endpoint_id_of
from bpf.layouts import Direction, Reason
from bpf.maps import NodeMaps
from clustermesh_cli.status import agent_get
from lab.etcd import EtcdFleet, EtcdProcess
from lab.k8sapi.server import K8sApiServer
from lab.netns import Pod, Topology, ping, start_tcp_stream, tcp_stream, unique_prefix
from lab.netns.topology import Node
from meshcore.kvstore.client import EtcdClient
from meshcore.kvstore.types import PutOp
from meshcore.wire import (
    CIDR,
    ClusterConfig,
    ClusterConfigCapabilities,
    ClusterService,
    IPIdentityPair,
    L4Addr,
    LabelSet,
    NodeAddress,
)
from meshcore.wire import Node as WireNode
from meshcore.wire import keys as wirekeys

PROJECT = Path(__file__).resolve().parents[3]
CGROUP_ROOTS = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")
FRONTEND = "10.96.0.10"
ECHO_PORT = 8080

# pod name -> (cluster, node index, app label)
PODS = {
    "web": ("c1", 0, "web"),
    "client": ("c1", 0, "client"),
    "echo1": ("c1", 1, "echo"),
    "frontend": ("c2", 0, "frontend"),
    "backend": ("c2", 1, "backend"),
    "echo2": ("c2", 1, "echo"),
}
APPS = sorted({app for _, _, app in PODS.values()})


def identity_of(cluster_id: int, app: str) -> int:
    return (cluster_id << 16) + 1000 + APPS.index(app)


def poll_until_sync(check: Callable[[], bool], *, within: float, interval: float = 0.2) -> bool:
    """Call ``check`` until it is true (True) or ``within`` seconds pass (False)."""
    deadline = time.monotonic() + within
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def node_name(node: Node) -> str:
    return f"{node.cluster}-{node.name}"


@dataclass
class Agent:
    node: Node
    args: list[str]
    log: Path
    socket: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.node.ns, sys.executable, "-m", "agent.cli", *self.args],
                cwd=PROJECT, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            )  # fmt: skip

    def status(self) -> Any:
        return agent_get(self.socket, "/v1/status")

    def ready(self) -> bool:
        try:
            dp = self.status()["datapath"]
        except Exception:
            return False
        return bool(dp and dp["programmed"] and all(r["synced"] for r in dp["reconcilers"].values()))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@dataclass
class Mesh:
    topo: Topology
    pods: dict[str, Pod]
    agents: dict[str, Agent]
    apis: dict[str, K8sApiServer]
    pin_root: Path
    cgroup: Path
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def maps(self, node: Node) -> NodeMaps:
        return NodeMaps(node_name(node), self.pin_root)

    def agent_of(self, pod: str) -> Agent:
        return self.agents[node_name(self.topo.node_of(self.pods[pod]))]

    def wait_ready(self, agents: list[Agent] | None = None, within: float = 90) -> None:
        for agent in agents or list(self.agents.values()):
            if not poll_until_sync(agent.ready, within=within):
                raise AssertionError(f"agent on {agent.node.ns} never got ready:\n{agent.tail()}")


def _k8s(api: K8sApiServer, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(
        api.url + path, method=method, data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", "Authorization": "Bearer x"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _service(affinity: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "echo", "namespace": "default", "annotations": {
            "service.cilium.io/global": "true", "service.cilium.io/affinity": affinity}},
        "spec": {"clusterIP": FRONTEND, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    }  # fmt: skip


def set_affinity(mesh: Mesh, affinity: str) -> None:
    api = mesh.apis["c1"]
    current = _k8s(api, "GET", "/api/v1/namespaces/default/services/echo")
    current["metadata"]["annotations"]["service.cilium.io/affinity"] = affinity
    _k8s(api, "PUT", "/api/v1/namespaces/default/services/echo", current)


async def seed(etcd: EtcdProcess, topo: Topology, cluster: str, cluster_id: int) -> None:
    ops: list[PutOp] = []
    for node in topo.nodes:
        if node.cluster != cluster:
            continue
        wn = WireNode(
            name=node_name(node), cluster=cluster, cluster_id=cluster_id, source="custom-resource",
            ip_addresses=[NodeAddress("InternalIP", str(node.underlay_ip))],
            ipv4_alloc_cidr=CIDR(str(node.pod_cidr.network_address), bytes([255, 255, 255, 0])),
        )  # fmt: skip
        ops.append(PutOp(wirekeys.node_key(cluster, wn.name), wn.encode()))
    backends: dict[str, Any] = {}
    for pod in topo.pods:
        if pod.cluster != cluster:
            continue
        app = PODS[pod.name][2]
        pair = IPIdentityPair(
            ip=str(pod.ip), host_ip=str(topo.node_of(pod).underlay_ip), id=identity_of(cluster_id, app),
            k8s_namespace="default", k8s_pod_name=pod.name,
        )  # fmt: skip
        ops.append(PutOp(wirekeys.ip_key(pair.prefix_string()), pair.encode()))
        if app == "echo":
            backends[str(pod.ip)] = {"http": L4Addr("TCP", ECHO_PORT)}
    for app in APPS:
        labels = LabelSet.from_strings(
            [f"k8s:app={app}", f"k8s:io.cilium.k8s.policy.cluster={cluster}", "k8s:io.kubernetes.pod.namespace=default"]
        )
        ops.append(PutOp(wirekeys.identity_key(identity_of(cluster_id, app)), labels.encode()))
    svc = ClusterService(
        cluster=cluster, namespace="default", name="echo", frontends={FRONTEND: {"http": L4Addr("TCP", 80)}},
        backends=backends, include_external=True, shared=True, cluster_id=cluster_id,
    )  # fmt: skip
    ops.append(PutOp(wirekeys.service_key(cluster, "default", "echo"), svc.encode()))
    config = ClusterConfig(
        id=cluster_id, capabilities=ClusterConfigCapabilities(synced_canaries=True, max_connected_clusters=255)
    )
    ops.append(PutOp(wirekeys.cluster_config_key(cluster), config.encode()))
    ops.append(PutOp(wirekeys.HEARTBEAT, b"2026-01-01T00:00:00Z"))
    ops += [PutOp(k, b"2026-01-01T00:00:00Z") for k in wirekeys.apiserver_synced_keys(cluster)]
    async with EtcdClient(etcd.client_config()) as kv:
        await kv.txn(ops)


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
def mesh(tmp_path_factory: pytest.TempPathFactory, forwarder_cls: Any) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("dpmesh")
    # `ip netns exec` remounts /sys, hiding /sys/fs/bpf from the agents: bind it outside /sys.
    tag = uuid.uuid4().hex[:8]
    pin_dir = Path("/sys/fs/bpf") / f"cmacc-{tag}"
    pin_dir.mkdir()
    pin_root = Path("/run") / f"cmacc-bpf-{tag}"
    pin_root.mkdir()
    subprocess.run(["mount", "--bind", str(pin_dir), str(pin_root)], check=True, timeout=10)
    cg_root = next(Path(r) for r in CGROUP_ROOTS if (Path(r) / "cgroup.controllers").exists())
    cgroup = cg_root / f"cmacc-{uuid.uuid4().hex[:8]}"
    cgroup.mkdir()
    cg_bind = Path("/run") / f"cmacc-cg-{tag}"  # /sys is remounted under `ip netns exec` as well
    cg_bind.mkdir()
    subprocess.run(["mount", "--bind", str(cgroup), str(cg_bind)], check=True, timeout=10)
    fleet = EtcdFleet(base / "etcd")
    fwd = forwarder_cls()
    topo = Topology(unique_prefix("dp"))
    apis: dict[str, K8sApiServer] = {}
    agents: dict[str, Agent] = {}
    mesh: Mesh | None = None
    try:
        import asyncio

        etcds = {}
        for name, cid in (("c1", 1), ("c2", 2)):
            topo.add_cluster(name, cid)
            for i in range(2):
                topo.add_node(name, f"n{i}")
            etcds[name] = fleet.start(name)
            api = K8sApiServer().start_in_thread()
            apis[name] = api
        pods: dict[str, Pod] = {}
        for pod_name, (cluster, index, _) in PODS.items():
            pods[pod_name] = topo.add_pod(topo.node(cluster, f"n{index}"), pod_name)
        for name, cid in (("c1", 1), ("c2", 2)):
            asyncio.run(seed(etcds[name], topo, name, cid))
        # k8s objects in c1: the global service (affinity none for now).
        _k8s(apis["c1"], "POST", "/api/v1/namespaces/default/services", _service("none"))
        for node in topo.nodes:
            other = "c2" if node.cluster == "c1" else "c1"
            for port in (etcds["c1"].ports.client, etcds["c2"].ports.client, apis[node.cluster].port):
                fwd.add(node.ns, port)
            d = base / node_name(node)
            (d / "clustermesh").mkdir(parents=True)
            etcds[other].write_config_yaml(d / "clustermesh" / other)
            etcds[node.cluster].write_config_yaml(d / "local-etcd.yaml")
            apis[node.cluster].write_kubeconfig(d / "kubeconfig")
            args = [
                "--cluster-name", node.cluster, "--cluster-id", str(topo.cluster(node.cluster).cluster_id),
                "--node-name", node_name(node), "--clustermesh-config", str(d / "clustermesh"),
                "--kvstore-config", str(d / "local-etcd.yaml"), "--kubeconfig", str(d / "kubeconfig"),
                "--state-dir", str(d / "state"), "--datapath", "bpf", "--pin-root", str(pin_root),
                "--underlay-device", node.underlay_ifname, "--clustermesh-sync-timeout", "20",
                "--log-level", "info",
            ]  # fmt: skip
            if node == topo.node_of(pods["client"]):
                args += ["--cgroup", str(cg_bind)]
            agents[node_name(node)] = Agent(node, args, d / "agent.log", d / "state" / "agent.sock")
        for agent in agents.values():
            agent.start()
        mesh = Mesh(topo, pods, agents, apis, pin_root, cgroup)
        mesh.wait_ready(within=120)
        for name in ("echo1", "echo2"):
            mesh.servers.append(_echo_server(pods[name]))
        yield mesh
    finally:
        for agent in agents.values():
            agent.stop()
        if mesh is not None:
            for proc in mesh.servers:
                proc.kill()
                proc.wait(5)
        fwd.close()
        topo.close()
        for api in apis.values():
            api.stop_thread()
        fleet.close()
        for child in sorted(pin_dir.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            child.unlink() if not child.is_dir() else child.rmdir()
        subprocess.run(["umount", str(pin_root)], check=False, timeout=10)
        pin_root.rmdir()
        pin_dir.rmdir()
        subprocess.run(["umount", str(cg_bind)], check=False, timeout=10)
        cg_bind.rmdir()
        if (cgroup / "cgroup.procs").exists() and not (cgroup / "cgroup.procs").read_text().strip():
            cgroup.rmdir()


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
    cnp = {
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "web-from-c2-frontend", "namespace": "default"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                 "ingress": [{"fromEndpoints": [{"matchLabels": {
                     "app": "frontend", "io.cilium.k8s.policy.cluster": "c2"}}]}]},
    }  # fmt: skip
    _k8s(mesh.apis["c1"], "POST", "/apis/cilium.io/v2/namespaces/default/ciliumnetworkpolicies", cnp)
    web_node = mesh.topo.node_of(web)

    def enforced() -> bool:
        with mesh.maps(web_node) as maps:
            return any(k.endpoint_id == endpoint_id_of(str(web.ip)) for k, _ in maps.policy_enforce.items())

    assert poll_until_sync(enforced, within=20), mesh.agent_of("web").tail()
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
