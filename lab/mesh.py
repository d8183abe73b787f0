"""The mesh of a lab: ``clustermesh enable`` on every cluster, ``connect`` on every pair, and the
agents' own word that every peer is ready.

The lab runs the very manifests a real cluster gets; only some install options differ, because
the lab's "containers" are host processes in the lab's namespaces (lab/README.md):

- no cluster DNS: agents (host network, i.e. the node namespace) reach their cluster's
  clustermesh etcd through the lab's node proxy on their own node, ``127.0.0.1:<nodePort>``, as
  ``https://clustermesh-apiserver.<ns>.svc:<nodePort>`` with a host alias (so the server
  certificate's name matches), and the Kubernetes API at ``https://<api service ip>:443``;
- host paths per lab, so that labs coexist and ``lab down`` removes them: pins under the lab's
  bpffs directory, agent state (and API sockets) under the lab's state directory, each agent's
  socket load-balancing cgroup the lab's node cgroup ``<lab cgroup dir>/<node name>``;
- the node namespace's underlay device is named, since its ``lo`` also holds a global address
  (the API service IP);
- with ``lab up --encryption wireguard``, the WireGuard device is ``cmwg<lab>{hash}`` (3 hex
  digits for the lab; the agent puts 8 hex digits per node in place of ``{hash}``):
  wireguard-go's devices and control sockets (``/var/run/wireguard/<name>.sock``) are global on
  this host, so every node of every lab needs its own name (``spec.wireguard_device_template``).

The agents' API sockets are on the host (a hostPath), so :func:`agent_status` reads them directly.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Final

from clustermesh_cli.enable.apply import wait_ready
from clustermesh_cli.enable.kube import KubeObjects, open_context
from clustermesh_cli.enable.run import run_enable
from clustermesh_cli.install import names
from clustermesh_cli.install.manifests import AGENT_STATE_MOUNT, agent_socket_path
from clustermesh_cli.install.options import InstallOptions
from clustermesh_cli.mesh.commands import run_connect
from clustermesh_cli.status import AgentUnreachableError, agent_get, cluster_error
from lab.net.names import node_underlay_ifname
from lab.supervisor import apiclient, control
from lab.supervisor.spec import (
    API_SERVICE_PORT,
    BPFFS,
    ClusterSpec,
    LabSpec,
    LabSpecError,
    NodeSpec,
    cgroup_unified_root,
    labs_present,
    load,
)
from meshcore.duration import format_duration
from meshcore.errors import MeshError

__all__ = ["DEFAULT_SOURCE", "MeshNotReady", "agent_pin_root", "agent_socket",
           "agent_state_root", "agent_status", "install_mesh", "lab_cluster_at", "lab_install_options",
           "peer_blockers"]

DEFAULT_SOURCE: Final = "kubernetes"  # a lab's pods have no Cilium CRDs
NAMESPACE: Final = "kube-system"
#: An agent up this long without a peer's config file has a Secret volume that did not follow
#: ``connect`` (a node runtime that writes volumes only at pod start): its pod is restarted once.
STALE_CONFIG_AFTER: Final = 15.0
POLL: Final = 1.0
Echo = Callable[[str], None]


class MeshNotReady(MeshError):
    """The lab's mesh did not come up in time; the message names what is missing."""


# ---- the lab's install options ----

def agent_state_root(spec: LabSpec) -> Path:
    """Where the agents of lab ``spec`` keep their state (``<root>/<node>/agent.sock``, ...)."""
    return spec.state_dir / "agents"


def agent_pin_root(spec: LabSpec) -> Path:
    """The agents' pin root (each node pins in ``<pin root>/<node>/``): the lab's bpffs directory.
    ``clustermesh bpf dump ipcache --node N --pin-root <this>`` reads a node's maps."""
    return spec.bpffs_dir


def lab_install_options(spec: LabSpec, cluster: ClusterSpec, source: str = DEFAULT_SOURCE) -> InstallOptions:
    """The install options of ``cluster`` (name ``cN``, ID ``N``) in lab ``spec`` (see the module docstring)."""
    defaults = InstallOptions(cluster_name=cluster.name, cluster_id=cluster.cluster_id)
    node_port = defaults.node_port or names.DEFAULT_NODE_PORT
    return InstallOptions(
        cluster_name=cluster.name,
        cluster_id=cluster.cluster_id,
        namespace=NAMESPACE,
        source=source,
        routing_mode=spec.routing_mode,
        node_port=node_port,
        bpffs_root=str(BPFFS),
        pin_root=str(agent_pin_root(spec)),
        cgroup_root=str(cgroup_unified_root()),
        agent_cgroup=f"{spec.cgroup_dir}/$(NODE_NAME)",
        agent_state_root=str(agent_state_root(spec)),
        kube_api_server=f"https://{cluster.api_service_ip}:{API_SERVICE_PORT}",
        agent_kvstore_endpoint=f"https://{names.service_dns_name(NAMESPACE)}:{node_port}",
        agent_kvstore_host_ips=("127.0.0.1",),
        underlay_device=node_underlay_ifname(spec.name),
        **_encryption_options(spec),
    )


def _encryption_options(spec: LabSpec) -> dict[str, Any]:
    """The lab's encryption install options (a strict-mode CIDR or a rotation interval without
    encryption is passed on, so that the options refuse it)."""
    out: dict[str, Any] = {}
    if spec.encryption_strict_mode_cidr is not None:
        out["encryption_strict_mode_cidr"] = spec.encryption_strict_mode_cidr
    if spec.wireguard_key_rotation_interval:
        out["wireguard_key_rotation_interval"] = spec.wireguard_key_rotation_interval
    if spec.encryption != "none":
        out |= {"encryption": spec.encryption, "wireguard_device": spec.wireguard_device}
    return out


def lab_cluster_at(server: str) -> tuple[LabSpec, ClusterSpec] | None:
    """The running lab cluster whose Kubernetes API is ``server`` (a kubeconfig's server URL)."""
    url = server.rstrip("/")
    for name in labs_present():
        try:
            spec = load(name)
        except LabSpecError:
            continue
        for cluster in spec.clusters:
            if apiclient.api_url(cluster) == url and control.supervisor_pid(name) is not None:
                return spec, cluster
    return None


# ---- the agents, through their sockets on the host ----

def agent_socket(spec: LabSpec, node: str) -> Path:
    """The host path of the agent API socket of ``node`` (the install's socket path, below the
    lab's agent state hostPath)."""
    inside = PurePosixPath(agent_socket_path(node)).relative_to(AGENT_STATE_MOUNT)
    return agent_state_root(spec) / inside


def agent_status(spec: LabSpec, node: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """``GET /v1/status`` of the agent on ``node`` (:class:`AgentUnreachableError` if it does not answer)."""
    return dict(agent_get(agent_socket(spec, node), "/v1/status", timeout=timeout))


def peer_blockers(doc: Mapping[str, Any], peers: set[str]) -> list[str]:
    """What keeps an agent (its status document) from having every one of ``peers`` ready:
    missing configs and clusters not connected or not synced (cilium-cli's wording)."""
    clusters = {str(c.get("name")): c for c in (doc.get("cluster-mesh") or {}).get("clusters") or []}
    out = [f"{p}: no config (not in its cilium-clustermesh volume)" for p in sorted(peers - set(clusters))]
    for name in sorted(peers & set(clusters)):
        c = clusters[name]
        if not c.get("ready"):
            out.append(f"{name}: {cluster_error(c) or c.get('status') or 'not ready'}")
    return out


# ---- bring-up ----

def _prefixed(echo: Echo, prefix: str) -> Echo:
    return lambda line: echo(f"{prefix}{line}")


def _agent_pods(kube: KubeObjects) -> dict[str, str]:
    """node name -> agent pod name."""
    pods = kube.list("Pod", NAMESPACE, selector=f"{names.APP_LABEL}={names.AGENT}")
    return {str(p["spec"]["nodeName"]): str(p["metadata"]["name"]) for p in pods
            if (p.get("spec") or {}).get("nodeName") and not p["metadata"].get("deletionTimestamp")}


def _wait_agents(spec: LabSpec, kubeconfig: Path, deadline: float, echo: Echo) -> None:
    """Until every agent of every cluster has every other cluster ready. An agent that has run
    :data:`STALE_CONFIG_AFTER` seconds without a peer's config file is restarted once (a fallback
    for a node runtime that does not update Secret volumes, as kubelet does, after the pod started)."""
    want: dict[str, set[str]] = {c.name: {o.name for o in spec.clusters if o is not c} for c in spec.clusters}
    restarted: set[str] = set()
    t0 = time.monotonic()
    shown = ""
    while True:
        blockers: dict[str, list[str]] = {}
        stale: list[NodeSpec] = []
        for node in spec.nodes:
            try:
                doc = agent_status(spec, node.name)
            except AgentUnreachableError as err:
                missing = not agent_socket(spec, node.name).exists()
                blockers[node.name] = ["agent not started yet" if missing else f"agent not answering ({err.message})"]
                continue
            problems = peer_blockers(doc, want[node.cluster])
            if problems:
                blockers[node.name] = problems
            uptime = float((doc.get("local") or {}).get("uptime-seconds") or 0)
            if any("no config" in p for p in problems) and uptime > STALE_CONFIG_AFTER:
                stale.append(node)
        now = time.monotonic()
        if not blockers:
            echo(f"every agent has every peer ready ({len(spec.nodes)} agents, {now - t0:.0f}s)")
            return
        for cluster in {n.cluster for n in stale if n.name not in restarted}:
            with open_context(spec.cluster(cluster).context, kubeconfig=kubeconfig) as kube:
                pods = _agent_pods(kube)
                for node in [n for n in stale if n.cluster == cluster and n.name not in restarted]:
                    if node.name in pods:
                        echo(f"restarting agent pod {pods[node.name]} on {node.name}: its {names.CLUSTERMESH_SECRET} "
                             f"volume still lacks a peer after {STALE_CONFIG_AFTER:.0f}s (not updated since the pod "
                             "started)")
                        kube.delete("Pod", pods[node.name], NAMESPACE)
                        restarted.add(node.name)
        line = "; ".join(f"{n}: {b[0]}" for n, b in sorted(blockers.items()))
        if line != shown:
            echo(f"[{now - t0:4.0f}s] agents waiting: {line}")
            shown = line
        if now >= deadline:
            detail = "\n  ".join(f"{n}: {', '.join(b)}" for n, b in sorted(blockers.items()))
            raise MeshNotReady(f"the agents do not have every peer ready after {now - t0:.0f}s:\n  {detail}\n"
                               f"(agent logs: clustermesh lab logs --name {spec.name} --context <lab>-cN "
                               f"-n {NAMESPACE} <agent pod>)")
        time.sleep(POLL)


def _encryption_flags(spec: LabSpec) -> str:
    """The encryption flags of the lab's installs, as a user would type them (for the progress lines)."""
    if spec.encryption == "none":
        return ""
    text = f" --encryption {spec.encryption} --wireguard-device '{spec.wireguard_device}'"
    if spec.encryption_strict_mode_cidr:
        text += f" --encryption-strict-mode-cidr {spec.encryption_strict_mode_cidr}"
    if spec.wireguard_key_rotation_interval:
        text += f" --wireguard-key-rotation-interval {format_duration(spec.wireguard_key_rotation_interval)}"
    return text


def install_mesh(spec: LabSpec, *, kubeconfig: Path | None = None, source: str = DEFAULT_SOURCE,
                 timeout: float = 240.0, echo: Echo) -> None:
    """Enable clustermesh on every cluster of the lab (cluster ``cN``, ID ``N``, the lab's install
    options), connect every pair, and wait (at most ``timeout`` seconds in all) until the API
    servers and agents are ready and every agent has every peer ready. Raises a
    :class:`~meshcore.errors.MeshError` subclass saying what failed."""
    config = kubeconfig or spec.kubeconfig
    deadline = time.monotonic() + timeout
    for cluster in spec.clusters:
        echo(f"{cluster.name}: clustermesh enable --context {cluster.context} --cluster-name {cluster.name} "
             f"--cluster-id {cluster.cluster_id} --source {source}{_encryption_flags(spec)} "
             "(the lab's install options)")
        run_enable(cluster.context, kubeconfig=config, cluster_name=cluster.name, cluster_id=cluster.cluster_id,
                   base=lab_install_options(spec, cluster, source), wait=False,
                   echo=_prefixed(echo, f"{cluster.name}: "))
    for a, b in itertools.combinations(spec.clusters, 2):
        echo(f"clustermesh connect --context {a.context} --destination-context {b.context}")
        run_connect(a.context, b.context, kubeconfig=config)
    for cluster in spec.clusters:
        with open_context(cluster.context, kubeconfig=config) as kube:
            wait_ready(kube, NAMESPACE, duration=max(1.0, deadline - time.monotonic()),
                       echo=_prefixed(echo, f"{cluster.name}: "))
    if len(spec.clusters) > 1:
        _wait_agents(spec, config, deadline, echo)
