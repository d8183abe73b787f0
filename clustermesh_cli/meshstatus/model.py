"""Pure: a cluster's mesh status, as cilium-cli's ``cilium clustermesh status`` judges it, from the
objects read through the Kubernetes API and each agent's own status document.

Ready means (reference §7 "What status does"):

- the ``clustermesh-apiserver`` Deployment has all its replicas ready;
- its Service has an address other clusters can use (what ``connect`` would write);
- every agent pod's status was read, and it lists every expected peer (the peer entries of the
  ``cilium-clustermesh`` Secret, without the local cluster) as ready, and no other cluster. An
  agent that does not list an expected peer has not read that peer's config yet and is not ready;
  one that still lists a removed peer is still draining it.

:func:`summarise` turns the objects (the API's JSON dicts) into a :class:`MeshStatus`; the
blocking reasons name the node, the peer and why.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clustermesh_cli.enable.readiness import deployment_state, pods_of
from clustermesh_cli.install import names
from clustermesh_cli.mesh.access import MeshAccessError, service_address
from clustermesh_cli.status import cluster_error

__all__ = ["AgentProbe", "AgentStatus", "ApiServerStatus", "MeshStatus", "PeerStatus", "PodLine", "ServiceStatus",
           "summarise"]

Obj = Mapping[str, Any]


@dataclass(frozen=True)
class AgentProbe:
    """What was read of one agent pod: the pod object, and its ``GET /v1/status`` document or why
    it could not be read."""

    pod: Obj
    status: Mapping[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True)
class PodLine:
    """One pod, as ``kubectl get pods`` shows it."""

    name: str
    node: str | None
    phase: str
    ready: bool

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "node": self.node, "phase": self.phase, "ready": self.ready}


@dataclass(frozen=True)
class ApiServerStatus:
    """The ``clustermesh-apiserver`` Deployment."""

    name: str
    exists: bool
    ready_replicas: int
    replicas: int
    available: bool
    pods: tuple[PodLine, ...] = ()
    blockers: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "exists": self.exists, "ready-replicas": self.ready_replicas,
                "replicas": self.replicas, "available": self.available, "pods": [p.to_json() for p in self.pods],
                "blockers": list(self.blockers)}


@dataclass(frozen=True)
class ServiceStatus:
    """The ``clustermesh-apiserver`` Service and the address ``connect`` would give peers."""

    name: str
    type: str | None
    addresses: tuple[str, ...] = ()
    port: int | None = None
    error: str | None = None

    @property
    def ready(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "addresses": list(self.addresses), "port": self.port,
                "error": self.error}


@dataclass(frozen=True)
class PeerStatus:
    """One remote cluster as one agent sees it. ``expected``: a peer entry of the Secret;
    ``listed``: the agent reports it. ``reason`` is None when it is as it should be."""

    name: str
    expected: bool
    listed: bool
    ready: bool = False
    connected: bool = False
    nodes: int = 0
    endpoints: int = 0
    identities: int = 0
    services: int = 0
    failures: int = 0
    last_failure: str | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "expected": self.expected, "listed": self.listed, "ready": self.ready,
                "connected": self.connected, "num-nodes": self.nodes, "num-endpoints": self.endpoints,
                "num-identities": self.identities, "num-shared-services": self.services,
                "num-failures": self.failures, "last-failure": self.last_failure, "reason": self.reason}


@dataclass(frozen=True)
class AgentStatus:
    """One agent pod (one node). ``error``: why its status could not be read (None: it was);
    ``clusters``: the agent's own RemoteCluster records, as it reported them."""

    node: str
    pod: str
    phase: str
    pod_ready: bool
    error: str | None
    peers: tuple[PeerStatus, ...] = ()
    clusters: tuple[Mapping[str, Any], ...] = ()
    local: Mapping[str, Any] = field(default_factory=dict)

    @property
    def reachable(self) -> bool:
        return self.error is None

    @property
    def ready(self) -> bool:
        return self.reachable and all(p.ok for p in self.peers)

    @property
    def peers_ready(self) -> int:
        """Expected peers this agent has ready."""
        return sum(1 for p in self.peers if p.expected and p.ok)

    def blockers(self) -> list[str]:
        where = f"node {self.node} (agent pod {self.pod})"
        if self.error is not None:
            return [f"{where}: status cannot be read: {self.error}"]
        return [f"{where}: peer {p.name}: {p.reason}" for p in self.peers if p.reason is not None]

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "pod": self.pod, "phase": self.phase, "pod-ready": self.pod_ready,
                "ready": self.ready, "error": self.error, "peers-ready": self.peers_ready,
                "peers": [p.to_json() for p in self.peers], "clusters": [dict(c) for c in self.clusters],
                "local": dict(self.local), "blockers": self.blockers()}


@dataclass(frozen=True)
class MeshStatus:
    """Everything ``clustermesh status --context`` shows, and whether the mesh is ready."""

    context: str
    namespace: str
    cluster: str | None
    apiserver: ApiServerStatus
    service: ServiceStatus
    peers: tuple[str, ...]
    agents: tuple[AgentStatus, ...]
    agents_expected: int
    agent_blockers: tuple[str, ...] = ()  # about the DaemonSet as a whole (missing pods, ...)

    @property
    def agents_ready(self) -> int:
        return sum(1 for a in self.agents if a.ready)

    def peers_per_agent(self) -> tuple[int, float, int]:
        """``(min, avg, max)`` of the expected peers each agent has ready (0s without agents)."""
        counts = [a.peers_ready for a in self.agents] + [0] * max(0, self.agents_expected - len(self.agents))
        if not counts:
            return 0, 0.0, 0
        return min(counts), sum(counts) / len(counts), max(counts)

    def blockers(self) -> list[str]:
        """Why the mesh is not ready, one line each (empty when it is)."""
        out = list(self.apiserver.blockers)
        if self.service.error is not None:
            out.append(self.service.error)
        out += self.agent_blockers
        for agent in self.agents:
            out += agent.blockers()
        return out

    @property
    def ready(self) -> bool:
        return not self.blockers()

    def to_json(self) -> dict[str, Any]:
        low, avg, high = self.peers_per_agent()
        return {
            "context": self.context,
            "namespace": self.namespace,
            "cluster": self.cluster,
            "ready": self.ready,
            "deployment": self.apiserver.to_json(),
            "service": self.service.to_json(),
            "expected-peers": list(self.peers),
            "agents": [a.to_json() for a in self.agents],
            "summary": {"agents": self.agents_expected, "agents-ready": self.agents_ready,
                        "peers": len(self.peers), "peers-ready-per-agent": {"min": low, "avg": avg, "max": high}},
            "blockers": self.blockers(),
        }


# ---- building it ----

def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _pod_ready(pod: Obj) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _pod_line(pod: Obj) -> PodLine:
    md, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    phase = "Terminating" if md.get("deletionTimestamp") else str(status.get("phase") or "Pending")
    return PodLine(str(md.get("name")), spec.get("nodeName"), phase, _pod_ready(pod))


def _apiserver(deployment: Obj | None, pods: Sequence[Obj]) -> ApiServerStatus:
    name = names.APISERVER
    state = deployment_state(name, deployment, pods)
    if deployment is None:
        return ApiServerStatus(name, False, 0, 0, False,
                               blockers=(f"Deployment {name} does not exist: is clustermesh enabled in this cluster "
                                         "(clustermesh enable --context ...) and is the namespace right?",))
    selector = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    mine = pods_of(pods, selector)
    blockers = () if state.ready else tuple(f"Deployment {name} is not available ({state.summary}): {b}"
                                            for b in state.blockers or ("not all replicas are ready",))
    return ApiServerStatus(
        name, True, _int((deployment.get("status") or {}).get("readyReplicas")),
        _int((deployment.get("spec") or {}).get("replicas", 1)), state.ready,
        tuple(_pod_line(p) for p in sorted(mine, key=lambda p: str((p.get("metadata") or {}).get("name")))),
        blockers)


def _service(service: Obj | None, nodes: Sequence[Obj], context: str, namespace: str) -> ServiceStatus:
    name = names.APISERVER
    if service is None:
        return ServiceStatus(name, None, error=f"Service {namespace}/{name} does not exist: run clustermesh enable "
                                               f"--context {context}")
    kind = str((service.get("spec") or {}).get("type") or "ClusterIP")
    try:
        addresses, port = service_address(service, nodes, context=context)
    except MeshAccessError as err:
        return ServiceStatus(name, kind, error=str(err))
    return ServiceStatus(name, kind, addresses, port)


def _missing_reason(peer: str, local: Mapping[str, Any]) -> str:
    problems = local.get("config-problems") or {}
    if isinstance(problems, Mapping) and problems.get(peer):
        return f"its config for peer {peer} is rejected: {problems[peer]}"
    return (f"has not read the config for peer {peer} yet (not in its {names.CLUSTERMESH_CONFIG_DIR}: the "
            f"{names.CLUSTERMESH_SECRET} volume is not updated yet)")


def _peer(name: str, record: Mapping[str, Any] | None, *, expected: bool, local: Mapping[str, Any]) -> PeerStatus:
    if record is None:
        return PeerStatus(name, expected=True, listed=False, reason=_missing_reason(name, local))
    ready = bool(record.get("ready"))
    if not expected:
        reason: str | None = (f"the agent still lists cluster {name}, which is no peer in Secret "
                              f"{names.CLUSTERMESH_SECRET} (draining it after a disconnect?)")
    else:
        reason = None if ready else (cluster_error(record) or str(record.get("status") or "not ready"))
    return PeerStatus(
        name, expected=expected, listed=True, ready=ready, connected=bool(record.get("connected")),
        nodes=_int(record.get("num-nodes")), endpoints=_int(record.get("num-endpoints")),
        identities=_int(record.get("num-identities")), services=_int(record.get("num-shared-services")),
        failures=_int(record.get("num-failures")),
        last_failure=str(record["last-failure"]) if record.get("last-failure") else None, reason=reason)


def _agent(probe: AgentProbe, peers: Sequence[str]) -> AgentStatus:
    line = _pod_line(probe.pod)
    node = line.node or "(not scheduled)"
    doc = probe.status
    if doc is None:
        error = probe.error or "not read"
        return AgentStatus(node, line.name, line.phase, line.ready, error)
    local = doc.get("local") or {}
    records = [c for c in (doc.get("cluster-mesh") or {}).get("clusters") or [] if isinstance(c, Mapping)]
    by_name = {str(c.get("name")): c for c in records}
    out = [_peer(p, by_name.get(p), expected=True, local=local) for p in peers]
    out += [_peer(n, by_name[n], expected=False, local=local) for n in sorted(set(by_name) - set(peers))]
    return AgentStatus(node, line.name, line.phase, line.ready, None, tuple(out), tuple(records),
                       dict(local) if isinstance(local, Mapping) else {})


def _current_agents(agents: Iterable[AgentProbe]) -> list[AgentProbe]:
    """One probe per node: a pod being deleted only where its node has no other agent pod."""
    by_node: dict[str, AgentProbe] = {}
    unscheduled: list[AgentProbe] = []
    for probe in agents:
        md, spec = probe.pod.get("metadata") or {}, probe.pod.get("spec") or {}
        node = spec.get("nodeName")
        if not node:
            unscheduled.append(probe)
            continue
        seen = by_node.get(str(node))
        if seen is None or ((seen.pod.get("metadata") or {}).get("deletionTimestamp")
                            and not md.get("deletionTimestamp")):
            by_node[str(node)] = probe
    return [by_node[n] for n in sorted(by_node)] + unscheduled


def _agent_set_blockers(daemonset: Obj | None, agents: Sequence[AgentStatus], nodes: Sequence[Obj]) -> list[str]:
    name = names.AGENT
    if daemonset is None and not agents:
        return [f"DaemonSet {name} does not exist, so no node runs an agent: is clustermesh enabled in this "
                "cluster (clustermesh enable --context ...)?"]
    desired = _int(((daemonset or {}).get("status") or {}).get("desiredNumberScheduled"))
    have = {a.node for a in agents}
    if desired <= len(agents):
        return []
    node_names = sorted(str((n.get("metadata") or {}).get("name")) for n in nodes)
    without = [n for n in node_names if n not in have]
    detail = f" (nodes without one: {', '.join(without)})" if without else ""
    return [f"DaemonSet {name} schedules {desired} agent pods, {len(agents)} exist{detail}"]


def summarise(deployment: Obj | None, service: Obj | None, peers: Iterable[str], agents: Iterable[AgentProbe], *,
              deployment_pods: Sequence[Obj] = (), nodes: Sequence[Obj] = (), daemonset: Obj | None = None,
              cluster: str | None = None, context: str = "", namespace: str = "kube-system") -> MeshStatus:
    """The :class:`MeshStatus` of one cluster.

    ``deployment``, ``service`` and ``daemonset`` are the ``clustermesh-apiserver`` Deployment and
    Service and the ``clustermesh-agent`` DaemonSet (None: absent); ``peers`` the expected peers
    (the peer entries of ``cilium-clustermesh``; ``cluster``, the local name, is left out as
    cilium-cli does); ``agents`` one :class:`AgentProbe` per agent pod; ``deployment_pods`` the
    API server's pods (for the reasons) and ``nodes`` the Nodes (for a NodePort's addresses)."""
    expected = tuple(sorted({str(p) for p in peers} - ({cluster} if cluster else set())))
    statuses = tuple(_agent(probe, expected) for probe in _current_agents(agents))
    desired = _int(((daemonset or {}).get("status") or {}).get("desiredNumberScheduled"))
    return MeshStatus(
        context=context, namespace=namespace, cluster=cluster,
        apiserver=_apiserver(deployment, deployment_pods),
        service=_service(service, nodes, context, namespace),
        peers=expected, agents=statuses, agents_expected=max(desired, len(statuses)),
        agent_blockers=tuple(_agent_set_blockers(daemonset, statuses, nodes)))
