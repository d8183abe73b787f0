"""Thin I/O for ``clustermesh status --context``: read the install's objects through the official
Kubernetes client, and each agent's status by exec'ing ``clustermesh status -o json`` in its pod
(as cilium-cli runs ``cilium status -o json`` in every Cilium pod), then :func:`summarise` it all.

The exec is ``kubernetes.stream.stream(CoreV1Api.connect_get_namespaced_pod_exec, ...)`` (a
WebSocket, v5 or v4 channel protocol). ``stream`` swaps its ``ApiClient``'s ``call_api`` while it
connects, so each exec gets an ``ApiClient`` of its own: the agents are asked in parallel threads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import websocket
from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

from clustermesh_cli.enable.kube import KubeError, KubeObjects
from clustermesh_cli.enable.readiness import pod_problems
from clustermesh_cli.install import names
from clustermesh_cli.install.manifests import agent_socket_path
from clustermesh_cli.install.secrets import secret_peers
from clustermesh_cli.mesh.peers import CLUSTER_CONFIG_MAPS, CONFIG_KEY_CLUSTER_NAME
from clustermesh_cli.meshstatus.model import AgentProbe, MeshStatus, summarise
from clustermesh_cli.podexec import exec_json
from meshcore.errors import ConfigError

__all__ = ["AGENT_COMMAND", "EXEC_PARALLEL", "AgentExec", "agent_command", "collect", "exec_agent_status"]

AGENT_COMMAND: Final = "clustermesh"  # the image's CLI (Containerfile), on the agent container's PATH
EXEC_PARALLEL: Final = 8  # agents asked at once
_STARTUP_ALLOWANCE: Final = 1.5  # seconds the in-pod CLI may take to start, out of one exec's budget

#: Runs one exec: (pod, timeout) -> probe. :func:`collect` takes one for tests and other transports.
AgentExec = Callable[[Mapping[str, Any], float], AgentProbe]


def agent_command(node: str, timeout: float) -> list[str]:
    """What runs in the agent container: this CLI's socket mode on the node's agent socket, with
    the agent's answer bounded a little below the exec's own ``timeout``."""
    inner = max(1.0, timeout - _STARTUP_ALLOWANCE)
    return [AGENT_COMMAND, "status", "-o", "json", "--agent-socket", agent_socket_path(node),
            "--request-timeout", f"{inner:g}"]


def _load_configuration(context: str, kubeconfig: str | Path | None) -> client.Configuration:
    configuration = client.Configuration()
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig) if kubeconfig is not None else None, context=context,
            client_configuration=configuration, persist_config=False)
    except (ConfigException, OSError, ValueError) as err:
        raise KubeError(f"cannot use context {context!r} of kubeconfig {kubeconfig or '(default)'}: {err}") from None
    configuration.retries = 1
    return configuration


def exec_agent_status(configuration: client.Configuration, pod: Mapping[str, Any], timeout: float) -> AgentProbe:
    """Exec :func:`agent_command` in ``pod`` (its ``agent`` container), at most ``timeout`` seconds
    once connected, and parse its JSON; the probe carries the reason when that fails."""
    md, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    result = exec_json(configuration, str(md.get("namespace")), str(md.get("name")), names.AGENT_CONTAINER,
                       agent_command(str(spec.get("nodeName")), timeout), timeout, what=f"{AGENT_COMMAND} status")
    if result.doc is None:
        return AgentProbe(pod, error=result.error)
    return AgentProbe(pod, status=result.doc)


def _not_running(pod: Mapping[str, Any]) -> str | None:
    """Why an exec into ``pod`` cannot work (None: it can be tried)."""
    md, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    if spec.get("nodeName") and status.get("phase") == "Running" and not md.get("deletionTimestamp"):
        return None
    return "; ".join(pod_problems(pod)) or f"pod phase {status.get('phase') or 'Pending'}"


def probe_agents(pods: Sequence[Mapping[str, Any]], run: AgentExec, timeout: float) -> list[AgentProbe]:
    """A probe per pod: pods that do not run are not exec'd; the others in parallel."""
    probes: dict[int, AgentProbe] = {}
    todo = []
    for i, pod in enumerate(pods):
        why = _not_running(pod)
        if why is None:
            todo.append(i)
        else:
            probes[i] = AgentProbe(pod, error=why)
    if todo:
        with ThreadPoolExecutor(max_workers=min(EXEC_PARALLEL, len(todo)), thread_name_prefix="agent-exec") as pool:
            for i, probe in zip(todo, pool.map(lambda i: run(pods[i], timeout), todo), strict=True):
                probes[i] = probe
    return [probes[i] for i in range(len(pods))]


def _cluster_name(kube: KubeObjects, namespace: str) -> str | None:
    for name in CLUSTER_CONFIG_MAPS:
        cm = kube.get("ConfigMap", name, namespace)
        value = str(((cm or {}).get("data") or {}).get(CONFIG_KEY_CLUSTER_NAME) or "").strip()
        if value:
            return value
    return None


def collect(context: str, *, kubeconfig: str | Path | None = None, namespace: str = "kube-system",
            exec_timeout: float = 10.0, run: AgentExec | None = None) -> MeshStatus:
    """Read the cluster behind ``context`` and ask every agent; the :class:`MeshStatus`.

    Raises :class:`~clustermesh_cli.enable.kube.KubeError` when the API cannot be read, and when
    nothing of the install is there (no Deployment, DaemonSet or cluster ConfigMap)."""
    configuration = _load_configuration(context, kubeconfig)
    if run is None:
        # The WebSocket client has no connect timeout of its own; this bounds its handshake too.
        websocket.setdefaulttimeout(max(exec_timeout, 1.0))

        def run(pod: Mapping[str, Any], timeout: float) -> AgentProbe:
            return exec_agent_status(configuration, pod, timeout)

    kube = KubeObjects(context, kubeconfig=kubeconfig)
    try:
        deployment = kube.get("Deployment", names.APISERVER, namespace)
        daemonset = kube.get("DaemonSet", names.AGENT, namespace)
        cluster = _cluster_name(kube, namespace)
        if deployment is None and daemonset is None and cluster is None:
            raise KubeError(f"context {context}: clustermesh is not installed in namespace {namespace} (no Deployment "
                            f"{names.APISERVER}, DaemonSet {names.AGENT} or ConfigMap {names.CONFIG_MAP}): run "
                            f"clustermesh enable --context {context} first, or pass the right --namespace")
        service = kube.get("Service", names.APISERVER, namespace)
        secret = kube.get("Secret", names.CLUSTERMESH_SECRET, namespace)
        api_pods = kube.list("Pod", namespace, selector=f"{names.APP_LABEL}={names.APISERVER}")
        agent_pods = kube.list("Pod", namespace, selector=f"{names.APP_LABEL}={names.AGENT}")
        nodes = kube.list("Node")
    finally:
        kube.close()
    try:
        peers = secret_peers(secret)
    except ConfigError as err:
        raise KubeError(f"context {context}: Secret {namespace}/{names.CLUSTERMESH_SECRET}: {err}") from None
    agent_pods.sort(key=lambda p: (str((p.get("spec") or {}).get("nodeName")), str(p["metadata"].get("name"))))
    probes = probe_agents(agent_pods, run, exec_timeout)
    return summarise(deployment, service, peers, probes, deployment_pods=api_pods, nodes=nodes, daemonset=daemonset,
                     cluster=cluster, context=context, namespace=namespace)
