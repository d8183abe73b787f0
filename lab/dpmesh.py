"""A real datapath mesh in network namespaces: 2 clusters x 2 nodes with pods (lab.net), one etcd
per cluster, a Kubernetes API emulator per cluster, and one ``clustermesh-agent --datapath bpf``
process per node run inside its node namespace (``ip netns exec``), with a clustermesh config dir
naming the OTHER cluster's etcd and ``--kvstore-config`` its own.

Each cluster's etcd is seeded with Cilium-format records (meshcore.wire) of the topology's nodes,
pods (ipcache pairs with HostIP = node underlay IP), identities and the global service, as a
clustermesh-apiserver in kubernetes mode would export them (the apiserver itself is not run).
etcd and the emulators listen on the host's loopback; a :class:`Forwarder` makes each port
reachable as the same loopback port inside each node namespace. Nothing touches the host's
interfaces, and nothing is routed by hand while the agents run.

:func:`datapath_mesh` builds it all and takes it all down again; the issue 5 acceptance tests and
``benchmarks.datapath`` use it. Needs root, bpffs on ``/sys/fs/bpf``, bcc and iproute2.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpf.maps import NodeMaps
from clustermesh_cli.status import agent_get
from lab.etcd import EtcdFleet, EtcdProcess
from lab.kube.api.server import K8sApiServer
from lab.net import Pod, Topology, unique_prefix
from lab.net.topology import Node
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

__all__ = [
    "APPS",
    "CLUSTERS",
    "ECHO_PORT",
    "FRONTEND",
    "PODS",
    "Agent",
    "Forwarder",
    "Mesh",
    "PodSpec",
    "datapath_mesh",
    "global_service",
    "identity_of",
    "k8s_request",
    "node_name",
    "poll_until_sync",
    "seed",
]

PROJECT = Path(__file__).resolve().parents[1]
CGROUP_ROOTS = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")
FRONTEND = "10.96.0.10"
"""The global service's ClusterIP."""
ECHO_PORT = 8080
"""The global service's backend port (on pods with app ``echo``)."""
CLUSTERS = (("c1", 1), ("c2", 2))
"""(name, cluster id) of the two clusters; each has nodes ``n0`` and ``n1``."""
NODES_PER_CLUSTER = 2

PodSpec = Mapping[str, tuple[str, int, str]]
"""pod name -> (cluster, node index, app label)."""

PODS: dict[str, tuple[str, int, str]] = {
    "web": ("c1", 0, "web"),
    "client": ("c1", 0, "client"),
    "echo1": ("c1", 1, "echo"),
    "frontend": ("c2", 0, "frontend"),
    "backend": ("c2", 1, "backend"),
    "echo2": ("c2", 1, "echo"),
}
"""The acceptance tests' pods."""
APPS = sorted({app for _, _, app in PODS.values()})

_CLONE_NEWNET = 0x40000000


def _apps(pods: PodSpec) -> list[str]:
    return sorted({app for _, _, app in pods.values()})


def identity_of(cluster_id: int, app: str, apps: list[str] | None = None) -> int:
    """The numeric identity of ``app`` in cluster ``cluster_id`` (``apps``: all app labels, sorted)."""
    return (cluster_id << 16) + 1000 + (APPS if apps is None else apps).index(app)


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
    """The Kubernetes/Cilium node name of a topology node (``<cluster>-<node>``)."""
    return f"{node.cluster}-{node.name}"


# ---- loopback forwarding into node namespaces ----


def _listen_in_netns(ns: str, port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:port created inside namespace ``ns`` (by a throwaway thread
    that enters it; a socket stays in the namespace it was created in)."""
    result: list[socket.socket | BaseException] = []

    def make() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {ns}")
            finally:
                os.close(fd)
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen(64)
            s.settimeout(0.5)
            result.append(s)
        except BaseException as exc:  # reported to the caller
            result.append(exc)

    t = threading.Thread(target=make)  # the thread ends inside ns; it never runs anything else
    t.start()
    t.join(10)
    if not result or isinstance(result[0], BaseException):
        raise RuntimeError(f"cannot listen in {ns}:{port}: {result}")
    return result[0]


class Forwarder:
    """Forward 127.0.0.1:port inside several namespaces to 127.0.0.1:port here."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []

    def add(self, ns: str, port: int) -> None:
        """Make 127.0.0.1:``port`` in namespace ``ns`` reach 127.0.0.1:``port`` here."""
        lsock = _listen_in_netns(ns, port)
        self._sockets.append(lsock)
        t = threading.Thread(target=self._accept, args=(lsock, port), daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self, lsock: socket.socket, port: int) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = lsock.accept()
            except (TimeoutError, OSError):
                continue
            try:
                up = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                conn.close()
                continue
            up.settimeout(None)
            conn.settimeout(None)
            self._sockets += [conn, up]
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        """Stop accepting and close every socket (listeners and forwarded connections)."""
        self._stop.set()
        for s in self._sockets:
            try:
                s.close()
            except OSError:
                pass
        for t in self._threads:
            t.join(2)


# ---- agents and the mesh ----


@dataclass
class Agent:
    """One ``clustermesh-agent`` process inside its node's namespace."""

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
        """The datapath is programmed and every reconciler is synced."""
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
    """A running mesh. ``servers``: extra processes the user started, killed at teardown."""

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


def k8s_request(api: K8sApiServer, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One JSON request to a Kubernetes API emulator."""
    req = urllib.request.Request(
        api.url + path, method=method, data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", "Authorization": "Bearer x"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def global_service(affinity: str) -> dict[str, Any]:
    """The global ``default/echo`` Service with ``service.cilium.io/affinity: <affinity>``."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "echo", "namespace": "default", "annotations": {
            "service.cilium.io/global": "true", "service.cilium.io/affinity": affinity}},
        "spec": {"clusterIP": FRONTEND, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    }  # fmt: skip


def web_from_c2_frontend_policy() -> dict[str, Any]:
    """A CiliumNetworkPolicy in c1 admitting into ``app=web`` only ``app=frontend`` of cluster c2."""
    return {
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "web-from-c2-frontend", "namespace": "default"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                 "ingress": [{"fromEndpoints": [{"matchLabels": {
                     "app": "frontend", "io.cilium.k8s.policy.cluster": "c2"}}]}]},
    }  # fmt: skip


def apply_policy_and_wait(mesh: Mesh, cnp: dict[str, Any], pod: str, *, cluster: str = "c1") -> Node:
    """Create ``cnp`` in ``cluster``'s Kubernetes API and wait (bounded) until the datapath of
    ``pod``'s node enforces policy for that pod; returns that node."""
    from agent.datapath.node import endpoint_id_of

    namespace = cnp["metadata"]["namespace"]
    k8s_request(mesh.apis[cluster], "POST", f"/apis/cilium.io/v2/namespaces/{namespace}/ciliumnetworkpolicies", cnp)
    target = mesh.pods[pod]
    node = mesh.topo.node_of(target)
    endpoint = endpoint_id_of(str(target.ip))

    def enforced() -> bool:
        with mesh.maps(node) as maps:
            return any(k.endpoint_id == endpoint for k, _ in maps.policy_enforce.items())

    if not poll_until_sync(enforced, within=20):
        raise AssertionError(f"policy never enforced for {pod}:\n{mesh.agent_of(pod).tail()}")
    return node


async def seed(etcd: EtcdProcess, topo: Topology, cluster: str, cluster_id: int, pods: PodSpec = PODS) -> None:
    """Write ``cluster``'s Cilium records (nodes, ipcache, identities, the global service, cluster
    config, heartbeat and synced canaries) into its etcd, as the clustermesh-apiserver exports them."""
    apps = _apps(pods)
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
        app = pods[pod.name][2]
        pair = IPIdentityPair(
            ip=str(pod.ip), host_ip=str(topo.node_of(pod).underlay_ip), id=identity_of(cluster_id, app, apps),
            k8s_namespace="default", k8s_pod_name=pod.name,
        )  # fmt: skip
        ops.append(PutOp(wirekeys.ip_key(pair.prefix_string()), pair.encode()))
        if app == "echo":
            backends[str(pod.ip)] = {"http": L4Addr("TCP", ECHO_PORT)}
    for app in apps:
        labels = LabelSet.from_strings(
            [f"k8s:app={app}", f"k8s:io.cilium.k8s.policy.cluster={cluster}", "k8s:io.kubernetes.pod.namespace=default"]
        )
        ops.append(PutOp(wirekeys.identity_key(identity_of(cluster_id, app, apps)), labels.encode()))
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


def _rm_pins(directory: Path) -> None:
    for child in sorted(directory.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        child.unlink() if not child.is_dir() else child.rmdir()


@contextlib.contextmanager
def _bind_mount(source: Path, target: Path) -> Iterator[Path]:
    """``mount --bind source target`` (``target`` created), unmounted and removed on exit."""
    target.mkdir()
    try:
        subprocess.run(["mount", "--bind", str(source), str(target)], check=True, timeout=10)
        try:
            yield target
        finally:
            subprocess.run(["umount", str(target)], check=False, timeout=10)
    finally:
        target.rmdir()


def _rmdir_if_empty_cgroup(cgroup: Path) -> None:
    if (cgroup / "cgroup.procs").exists() and not (cgroup / "cgroup.procs").read_text().strip():
        cgroup.rmdir()


@contextlib.contextmanager
def datapath_mesh(
    base_dir: Path,
    *,
    pods: PodSpec = PODS,
    before_agents: Callable[[Topology, dict[str, Pod]], None] | None = None,
    cgroup_pod: str | None = "client",
    ready_within: float = 120,
    agent_args: Sequence[str] = (),
) -> Iterator[Mesh]:
    """Build the mesh (files under ``base_dir``), start the agents, wait until all are ready and
    yield it; on exit stop the agents and ``mesh.servers``, and remove everything: forwarders,
    namespaces, API emulators, etcds, pins, bind mounts and the cgroup, also when bring-up fails.

    ``pods``: pod name -> (cluster, node index, app); pods with app ``echo`` back the global
    service. ``before_agents(topo, pods)`` runs on the complete topology (pods addressed, records
    seeded) before any agent starts: the place for hand-built baselines, which it must remove
    again. The node of ``cgroup_pod`` (if it is one of ``pods``) gets ``--cgroup``: a fresh cgroup
    (``mesh.cgroup``) whose sockets the agent's socket-level load balancer serves. ``agent_args``
    are appended to every agent's command line (e.g. ``("--routing-mode", "native")``).
    """
    with contextlib.ExitStack() as stack:
        # `ip netns exec` remounts /sys, hiding /sys/fs/bpf from the agents: bind it outside /sys.
        tag = uuid.uuid4().hex[:8]
        pin_dir = Path("/sys/fs/bpf") / f"cmacc-{tag}"
        pin_dir.mkdir()
        stack.callback(pin_dir.rmdir)
        stack.callback(_rm_pins, pin_dir)  # before the rmdir above, after everything below
        pin_root = stack.enter_context(_bind_mount(pin_dir, Path("/run") / f"cmacc-bpf-{tag}"))
        cg_root = next(Path(r) for r in CGROUP_ROOTS if (Path(r) / "cgroup.controllers").exists())
        cgroup = cg_root / f"cmacc-{uuid.uuid4().hex[:8]}"
        cgroup.mkdir()
        stack.callback(_rmdir_if_empty_cgroup, cgroup)
        # /sys is remounted under `ip netns exec` as well
        cg_bind = stack.enter_context(_bind_mount(cgroup, Path("/run") / f"cmacc-cg-{tag}"))
        fleet = EtcdFleet(base_dir / "etcd")
        stack.callback(fleet.close)
        apis: dict[str, K8sApiServer] = {}
        stack.callback(_stop_apis, apis)
        topo = Topology(unique_prefix("dp"))
        stack.callback(topo.close)
        fwd = Forwarder()
        stack.callback(fwd.close)
        servers: list[subprocess.Popen[bytes]] = []
        stack.callback(_kill_all, servers)
        agents: dict[str, Agent] = {}
        stack.callback(_stop_agents, agents)

        etcds = {}
        for name, cid in CLUSTERS:
            topo.add_cluster(name, cid)
            for i in range(NODES_PER_CLUSTER):
                topo.add_node(name, f"n{i}")
            etcds[name] = fleet.start(name)
            apis[name] = K8sApiServer().start_in_thread()
        made: dict[str, Pod] = {}
        for pod_name, (cluster, index, _) in pods.items():
            made[pod_name] = topo.add_pod(topo.node(cluster, f"n{index}"), pod_name)
        for name, cid in CLUSTERS:
            asyncio.run(seed(etcds[name], topo, name, cid, pods))
        # k8s objects in c1: the global service (affinity none for now).
        k8s_request(apis["c1"], "POST", "/api/v1/namespaces/default/services", global_service("none"))
        lb_node = topo.node_of(made[cgroup_pod]) if cgroup_pod in made else None
        for node in topo.nodes:
            other = "c2" if node.cluster == "c1" else "c1"
            for port in (etcds["c1"].ports.client, etcds["c2"].ports.client, apis[node.cluster].port):
                fwd.add(node.ns, port)
            d = base_dir / node_name(node)
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
            if node == lb_node:
                args += ["--cgroup", str(cg_bind)]
            args += list(agent_args)
            agents[node_name(node)] = Agent(node, args, d / "agent.log", d / "state" / "agent.sock")
        if before_agents is not None:
            before_agents(topo, made)
        for agent in agents.values():
            agent.start()
        mesh = Mesh(topo, made, agents, apis, pin_root, cgroup, servers)
        mesh.wait_ready(within=ready_within)
        yield mesh


def _stop_apis(apis: dict[str, K8sApiServer]) -> None:
    for api in apis.values():
        api.stop_thread()


def _stop_agents(agents: dict[str, Agent]) -> None:
    for agent in agents.values():
        agent.stop()


def _kill_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.kill()
        proc.wait(5)
