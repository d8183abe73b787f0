"""A meshed lab with a few workload pods, for the datapath tests and benchmarks.

:func:`meshed_lab` runs ``clustermesh lab up --clusters 2 --nodes 2 [--routing-mode native]
[--no-mesh]`` (so the clustermesh-apiserver and the agents are pods of the install manifests,
exporting from and watching each cluster's Kubernetes API), then ``kubectl apply`` of the pods
(:data:`PODS`: pinned to nodes with ``nodeName``, labelled ``app=<app>``; the ``echo`` pods run
``clustermesh lab echo``) and, in both clusters, of the global Service ``echo``
(``service.cilium.io/global: "true"`` and an affinity). It waits until the pods are Ready and, with
the mesh, until every agent has programmed them (endpoints attached, every pod IP in every node's
ipcache, the global service with all its backends), yields a :class:`MeshLab` and takes the lab
down again (``clustermesh lab down``), also when bring-up fails.

Everything goes through what a user has: the ``clustermesh`` CLI and ``kubectl``
(:class:`~lab.driver.LabDriver`), the agents' API sockets (:func:`lab.mesh.agent_status`) and their
pinned maps (``<LabSpec.bpffs_dir>/<node>/``, :func:`lab.mesh.agent_pin_root`). Traffic runs in the
pods with ``clustermesh lab exec`` (:class:`LabPod` is a :class:`lab.net.traffic.Endpoint`), so it
is in the pod's cgroup (below the agent's socket load-balancing cgroup, the node's
``<lab cgroup>/<node name>``), network and mount namespaces.

For baselines without the mesh (``mesh=False``): :func:`hand_built_tunnel` meshes the two
clusters' node namespaces by hand over VXLAN (the lab routes within a cluster already), and
:func:`enable_mesh` then installs the mesh as ``lab up`` does (``clustermesh enable`` on each
cluster, ``connect``). Needs root, bpffs and bcc (:func:`lab.prereqs.datapath_unavailable`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar

import yaml

from bpf.layouts import ip_text
from bpf.maps import NodeMaps
from clustermesh_cli.install import names as install_names
from clustermesh_cli.status import AgentUnreachableError
from lab.driver import CLI, LabCommandError, LabDriver, running_ready
from lab.mesh import agent_pin_root, agent_status, install_mesh
from lab.net import handbuilt, names, nsutil
from lab.supervisor.spec import LabSpec, NodeSpec

__all__ = [
    "AGENT_NAMESPACE",
    "ECHO_PORT",
    "IMAGE",
    "NAMESPACE",
    "PODS",
    "SERVICE_PORT",
    "LabNode",
    "LabPod",
    "MeshLab",
    "PodPlan",
    "echo_service",
    "enable_mesh",
    "hand_built_tunnel",
    "lab_nodes",
    "meshed_lab",
    "node_links",
    "node_routes",
    "pod_manifest",
    "poll_until",
    "remove_hand_built",
    "web_from_c2_frontend_policy",
]

NAMESPACE: Final = "default"
AGENT_NAMESPACE: Final = "kube-system"
IMAGE: Final = "ghcr.io/clustermesh-py/lab:latest"  # recorded, never pulled
ECHO_PORT: Final = 8080
"""The port ``clustermesh lab echo`` serves on every pod with app ``echo``."""
SERVICE_PORT: Final = 80
"""The global Service ``echo``'s port (target: :data:`ECHO_PORT`)."""
UP_TIMEOUT: Final = 420.0

PodPlan = Mapping[str, tuple[str, int, str]]
"""pod name -> (cluster, node index, app label)."""

PODS: Final[dict[str, tuple[str, int, str]]] = {
    "web": ("c1", 0, "web"),
    "client": ("c1", 0, "client"),
    "echo1": ("c1", 1, "echo"),
    "frontend": ("c2", 0, "frontend"),
    "backend": ("c2", 1, "backend"),
    "echo2": ("c2", 1, "echo"),
}
"""The datapath acceptance tests' pods."""

T = TypeVar("T")


def poll_until(check: Callable[[], T | None], *, within: float, interval: float = 0.3) -> T | None:
    """Call ``check`` until it returns something truthy (returned) or ``within`` seconds pass (None)."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


# ---- the objects applied (pure) ----

def pod_manifest(name: str, app: str, node: str, *, namespace: str = NAMESPACE) -> dict[str, Any]:
    """A Pod ``name`` labelled ``app=<app>``, bound to ``node``: ``clustermesh lab echo`` on
    :data:`ECHO_PORT` (with a readiness probe) for app ``echo``, ``sleep infinity`` otherwise."""
    container: dict[str, Any] = {"name": "main", "image": IMAGE, "command": ["sleep", "infinity"]}
    if app == "echo":
        field_env = {"NODE_NAME": "spec.nodeName", "POD_NAME": "metadata.name",
                     "POD_NAMESPACE": "metadata.namespace", "POD_IP": "status.podIP"}
        container = {
            "name": "echo", "image": IMAGE, "command": ["clustermesh", "lab", "echo", "--port", str(ECHO_PORT)],
            "ports": [{"name": "http", "containerPort": ECHO_PORT}],
            "env": [{"name": k, "valueFrom": {"fieldRef": {"fieldPath": v}}} for k, v in field_env.items()],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
        }  # fmt: skip
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1, "containers": [container]},
    }  # fmt: skip


def echo_service(affinity: str = "none", *, namespace: str = NAMESPACE) -> dict[str, Any]:
    """The global Service ``echo`` (pods with app ``echo``) with ``service.cilium.io/affinity: <affinity>``."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "echo", "namespace": namespace, "annotations": {
            "service.cilium.io/global": "true", "service.cilium.io/affinity": affinity}},
        "spec": {"selector": {"app": "echo"}, "ports": [
            {"name": "http", "port": SERVICE_PORT, "targetPort": ECHO_PORT, "protocol": "TCP"}]},
    }  # fmt: skip


def web_from_c2_frontend_policy(namespace: str = NAMESPACE) -> dict[str, Any]:
    """A CiliumNetworkPolicy admitting into ``app=web`` only ``app=frontend`` of cluster c2."""
    return {
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "web-from-c2-frontend", "namespace": namespace},
        "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                 "ingress": [{"fromEndpoints": [{"matchLabels": {
                     "app": "frontend", "io.cilium.k8s.policy.cluster": "c2"}}]}]},
    }  # fmt: skip


def _as_yaml(objects: list[dict[str, Any]]) -> str:
    """One YAML document per object (the emulator's OpenAPI has no schema for ``kind: List``)."""
    return yaml.safe_dump_all(objects, sort_keys=False)


# ---- pods and nodes of a running lab ----

@dataclass(frozen=True)
class LabPod:
    """A running pod of a lab; commands run in it through ``clustermesh lab exec``."""

    lab: str
    context: str
    cluster: str
    namespace: str
    name: str
    node: str
    app: str
    ip: ipaddress.IPv4Address

    def exec_argv(self, *argv: str) -> list[str]:
        """``clustermesh lab exec --context C -n NS POD -- argv`` (the command dies with its parent)."""
        return [*CLI, "lab", "exec", "--name", self.lab, "--context", self.context, "-n", self.namespace, self.name,
                "--", *nsutil.die_with_parent_prefix(), *argv]


@dataclass(frozen=True)
class LabNode:
    """A node namespace of a lab as :mod:`lab.net.handbuilt` sees it."""

    name: str
    cluster: str
    ns: str
    underlay_ifname: str
    underlay_ip: ipaddress.IPv4Address
    pod_cidr: ipaddress.IPv4Network


def lab_nodes(spec: LabSpec) -> list[LabNode]:
    """Every node of the lab (the lab's node namespaces are a :class:`lab.net.Topology` named after the lab)."""
    return [LabNode(n.name, n.cluster, n.netns, names.node_underlay_ifname(spec.name),
                    ipaddress.IPv4Address(n.internal_ip), ipaddress.IPv4Network(n.pod_cidr)) for n in spec.nodes]


def node_links(ns: str) -> list[tuple[str, str]]:
    """(name, kind) of every device in namespace ``ns`` (kind ``""`` for devices without one)."""
    out = []
    with nsutil.iproute(ns) as ipr:
        for link in ipr.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else ""
            out.append((str(link.get_attr("IFLA_IFNAME")), str(kind or "")))
    return out


def node_routes(ns: str, proto: int | None = None) -> set[tuple[str, int, str]]:
    """(prefix, protocol, gateway) of the IPv4 main-table routes in ``ns`` (of ``proto`` if given)."""
    out = set()
    with nsutil.iproute(ns) as ipr:
        for r in ipr.get_routes(family=2, table=254):
            if r.get_attr("RTA_TABLE") != 254 or (proto is not None and r["proto"] != proto):
                continue
            dst = r.get_attr("RTA_DST") or "0.0.0.0"
            out.add((f"{dst}/{r['dst_len']}", int(r["proto"]), str(r.get_attr("RTA_GATEWAY") or "")))
    return out


def hand_built_tunnel(spec: LabSpec) -> None:
    """Mesh the lab's clusters by hand over VXLAN (:func:`lab.net.handbuilt.build_tunnel`, device
    ``<lab>vx``), cross-cluster pairs only: within a cluster the lab routes by itself."""
    handbuilt.build_tunnel(lab_nodes(spec), names.vxlan_ifname(spec.name), routed=handbuilt.across_clusters)


def remove_hand_built(spec: LabSpec) -> None:
    """Undo :func:`hand_built_tunnel` (its devices and its routes, nothing else)."""
    handbuilt.remove(lab_nodes(spec), names.vxlan_ifname(spec.name))


# ---- the lab ----

@dataclass
class MeshLab:
    """A running lab with the pods of a :data:`PodPlan`."""

    driver: LabDriver
    spec: LabSpec
    pods: dict[str, LabPod] = field(default_factory=dict)
    frontends: dict[str, str] = field(default_factory=dict)
    """cluster -> the ClusterIP of its Service ``echo`` (when applied)."""

    @property
    def pin_root(self) -> Path:
        return agent_pin_root(self.spec)

    def node_of(self, pod: str) -> NodeSpec:
        return self.spec.node(self.pods[pod].node)

    def maps(self, node: str) -> NodeMaps:
        """The pinned maps of ``node``'s agent (open them only once the agent has pinned them)."""
        return NodeMaps(node, self.pin_root)

    def ipcache_prefixes(self, node: str) -> set[str]:
        with self.maps(node) as maps:
            return {f"{ip_text(k.family, bytes(k.ip))}/{k.prefixlen - 32}" for k, _ in maps.ipcache.items()}

    def bpf_dump(self, kind: str, node: str) -> list[dict[str, Any]]:
        """``clustermesh bpf dump KIND --node NODE --pin-root <the lab's> -o json``."""
        out = self.driver.clustermesh("bpf", "dump", kind, "--node", node, "--pin-root", str(self.pin_root),
                                      "-o", "json")
        return list(json.loads(out.stdout))

    # ---- agents ----

    def agent_status(self, node: str) -> dict[str, Any]:
        """``GET /v1/status`` of ``node``'s agent (:class:`AgentUnreachableError` if it does not answer)."""
        return agent_status(self.spec, node)

    def agent_ready(self, node: str, *, started_after: float | None = None) -> bool:
        """The agent answers, its datapath is programmed and every reconciler is synced; with
        ``started_after`` (a ``time.time()``), only an agent process started after it counts."""
        try:
            doc = self.agent_status(node)
        except AgentUnreachableError:
            return False
        dp = doc.get("datapath") or {}
        if started_after is not None:
            uptime = float((doc.get("local") or {}).get("uptime-seconds") or 1e9)
            if time.time() - uptime < started_after:
                return False
        return bool(dp.get("programmed") and all(r["synced"] for r in (dp.get("reconcilers") or {}).values()))

    def wait_agents(self, nodes: list[str] | None = None, *, within: float = 120,
                    started_after: float | None = None) -> None:
        """Until the agents of ``nodes`` (default: all) are ready (see :meth:`agent_ready`)."""
        for node in nodes or [n.name for n in self.spec.nodes]:
            if not poll_until(partial(self.agent_ready, node, started_after=started_after), within=within):
                raise AssertionError(f"agent on {node} not ready within {within} s: {self._agent_summary(node)}\n"
                                     f"{self.agent_log(node)}")

    def agent_pod(self, node: str) -> dict[str, Any]:
        """The (live) agent pod object of ``node``."""
        cluster = self.spec.node(node).cluster
        pods = self.driver.pods(cluster, f"{install_names.APP_LABEL}={install_names.AGENT}", namespace=AGENT_NAMESPACE)
        live = [p for p in pods if (p.get("spec") or {}).get("nodeName") == node
                and not p["metadata"].get("deletionTimestamp")]
        if len(live) != 1:
            raise LabCommandError(f"{len(live)} live agent pods on {node}")
        return live[0]

    def agent_log(self, node: str) -> str:
        """The tail of ``node``'s agent log (``clustermesh lab logs``), for failure messages."""
        with contextlib.suppress(LabCommandError):
            name = self.agent_pod(node)["metadata"]["name"]
            out = self.driver.cli("logs", "--name", self.driver.name, "--context", self.spec.node(node).cluster,
                                  "-n", AGENT_NAMESPACE, name, check=False)
            return out.stdout[-3000:]
        return "(no agent log)"

    def _agent_summary(self, node: str) -> str:
        try:
            dp = self.agent_status(node).get("datapath") or {}
        except AgentUnreachableError as err:
            return f"unreachable ({err.message})"
        recs = {k: (v.get("synced"), v.get("pending"), v.get("last-error"))
                for k, v in (dp.get("reconcilers") or {}).items()}
        return f"programmed={dp.get('programmed')} reconcilers={recs}"

    # ---- workloads ----

    def kubectl_apply(self, cluster: str, objects: list[dict[str, Any]]) -> None:
        self.driver.kubectl(cluster, "apply", "-f", "-", stdin=_as_yaml(objects))

    def set_affinity(self, affinity: str, cluster: str = "c1") -> None:
        """``kubectl annotate service echo service.cilium.io/affinity=<affinity> --overwrite``."""
        self.driver.kubectl(cluster, "annotate", "-n", NAMESPACE, "service", "echo",
                            f"service.cilium.io/affinity={affinity}", "--overwrite")

    def apply_policy_and_wait(self, cnp: dict[str, Any], pod: str, *, cluster: str = "c1") -> NodeSpec:
        """``kubectl apply`` ``cnp`` in ``cluster`` and wait (bounded) until the datapath of
        ``pod``'s node enforces policy for that pod; returns that node."""
        from agent.datapath.node import endpoint_id_of

        self.kubectl_apply(cluster, [cnp])
        node = self.node_of(pod)
        endpoint = endpoint_id_of(str(self.pods[pod].ip))

        def enforced() -> bool:
            with self.maps(node.name) as maps:
                return any(k.endpoint_id == endpoint for k, _ in maps.policy_enforce.items())

        if not poll_until(enforced, within=30):
            raise AssertionError(f"policy never enforced for {pod}:\n{self.agent_log(node.name)}")
        return node

    def wait_datapath(self, *, within: float = 120) -> None:
        """Until every agent is ready and has programmed every pod of :attr:`pods`: its endpoint
        attached on its node, its IP in every node's ipcache, and each cluster's ``echo`` frontend
        (if any) with every echo pod of the mesh as a backend on the nodes of that cluster."""
        self.wait_agents(within=within)
        ips = {f"{p.ip}/32" for p in self.pods.values()}
        echo_backends = sum(p.app == "echo" for p in self.pods.values())
        for node in self.spec.nodes:
            mine = {str(p.ip) for p in self.pods.values() if p.node == node.name}

            def attached(node: NodeSpec = node, mine: set[str] = mine) -> bool:
                with contextlib.suppress(AgentUnreachableError):
                    eps = {e["ip"] for e in (self.agent_status(node.name).get("datapath") or {}).get("endpoints", [])}
                    return mine <= eps
                return False

            def known(node: NodeSpec = node) -> bool:
                return ips <= self.ipcache_prefixes(node.name)

            def served(node: NodeSpec = node) -> bool:
                frontend = self.frontends.get(node.cluster)
                if frontend is None or not echo_backends:
                    return True
                rows = self.bpf_dump("services", node.name)
                return any(r["frontend"] == f"{frontend}:{SERVICE_PORT}" and r["backend-count"] == echo_backends
                           for r in rows)

            for what, check in (("endpoints attached", attached), ("every pod IP in the ipcache", known),
                                ("echo service with all backends", served)):
                if not poll_until(check, within=within):
                    raise AssertionError(f"{node.name}: {what} not within {within} s: "
                                         f"{self._agent_summary(node.name)}\n{self.agent_log(node.name)}")


def _lab_name(prefix: str) -> str:
    return prefix + secrets.token_hex(3)[: 6 - len(prefix)]


def _wait_pods(lab: MeshLab, plan: PodPlan, within: float) -> None:
    def ready() -> dict[str, LabPod] | None:
        out = {}
        for cluster in sorted({c for c, _, _ in plan.values()}):
            for pod in lab.driver.pods(cluster):
                name = pod["metadata"]["name"]
                if name in plan and plan[name][0] == cluster and running_ready(pod):
                    ip = ipaddress.IPv4Address(pod["status"]["podIP"])
                    out[name] = LabPod(lab.driver.name, lab.spec.cluster(cluster).context, cluster, NAMESPACE, name,
                                       pod["spec"]["nodeName"], plan[name][2], ip)
        return out if len(out) == len(plan) else None

    pods = poll_until(ready, within=within, interval=0.5)
    if pods is None:
        raise AssertionError(f"pods {sorted(plan)} not Running and Ready within {within} s: "
                             f"{lab.driver.cli('status', '--name', lab.driver.name, check=False).stdout[-3000:]}")
    lab.pods.update(pods)


@contextlib.contextmanager
def meshed_lab(*, pods: PodPlan = PODS, routing_mode: str = "tunnel", mesh: bool = True,
               service: bool = True, name_prefix: str = "d", echo: Callable[[str], None] | None = None,
               ) -> Iterator[MeshLab]:
    """``clustermesh lab up --clusters 2 --nodes 2`` (``--routing-mode``; ``--no-mesh`` unless
    ``mesh``), ``kubectl apply`` of ``pods`` (and, with ``service``, of the global Service
    ``echo`` with affinity ``none`` in both clusters), wait as the module docstring says, yield the
    lab, and ``lab down`` on exit. ``echo`` receives progress lines."""
    say = echo or (lambda line: print(line, file=sys.stderr))
    with tempfile.TemporaryDirectory(prefix="meshtest-") as workdir:
        driver = LabDriver(_lab_name(name_prefix), Path(workdir) / "kubeconfig")
        try:
            t0 = time.monotonic()
            args = ["--routing-mode", routing_mode] + ([] if mesh else ["--no-mesh"])
            driver.up(2, 2, *args, timeout=UP_TIMEOUT)
            say(f"lab {driver.name} up ({routing_mode}, mesh={mesh}) in {time.monotonic() - t0:.0f} s")
            lab = MeshLab(driver, driver.spec)
            for cluster in sorted({c for c, _, _ in pods.values()}):
                objects = [pod_manifest(name, app, f"{cluster}-n{index}")
                           for name, (c, index, app) in pods.items() if c == cluster]
                if service:
                    objects.append(echo_service("none"))
                lab.kubectl_apply(cluster, objects)
                if service:
                    lab.frontends[cluster] = str(driver.get(cluster, "service", "echo", "-n", NAMESPACE)
                                                 ["spec"]["clusterIP"])
            _wait_pods(lab, pods, within=60)
            if mesh:
                lab.wait_datapath()
            say(f"lab {driver.name}: {len(pods)} pods ready{' and programmed' if mesh else ''} "
                f"({time.monotonic() - t0:.0f} s)")
            yield lab
        finally:
            with contextlib.suppress(LabCommandError):
                driver.down()


def enable_mesh(lab: MeshLab, *, echo: Callable[[str], None] | None = None) -> None:
    """Install the mesh on a lab brought up with ``mesh=False``, as ``lab up`` does
    (:func:`lab.mesh.install_mesh`: ``clustermesh enable`` with the lab's install options on each
    cluster, ``connect`` on the pair, every agent with its peer ready), then wait until the
    datapath has the pods (:meth:`MeshLab.wait_datapath`)."""
    install_mesh(lab.spec, echo=echo or (lambda line: None))
    lab.wait_datapath()
