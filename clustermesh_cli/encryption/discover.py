"""What the audit captures on, read from each cluster's API: nodes (InternalIPs, podCIDRs, also
from Cilium's ``CiliumNode`` records where the CRD exists), the agent pod on each node, and the
cluster's name. :func:`plan_targets` (pure) turns that into the capture plan and one target per node.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from clustermesh_cli.enable.kube import KubeError
from clustermesh_cli.install import names
from clustermesh_cli.kubecontext import context_configuration
from clustermesh_cli.mesh.peers import CLUSTER_CONFIG_MAPS, CONFIG_KEY_CLUSTER_NAME
from encryption.audit.classify import AuditPlan
from meshcore.errors import ConfigError

__all__ = ["AGENT_SELECTOR", "ClusterObjects", "Target", "plan_targets", "read_cluster"]

AGENT_SELECTOR: Final = f"{names.APP_LABEL}={names.AGENT}"
REQUEST_TIMEOUT: Final = 15.0
CILIUM_NODES_PATH: Final = "/apis/cilium.io/v2/ciliumnodes"
Obj = dict[str, Any]


@dataclass(frozen=True)
class ClusterObjects:
    """What was read from one context."""

    context: str
    cluster: str
    nodes: Sequence[Obj]
    cilium_nodes: Sequence[Obj] = ()
    agent_pods: Sequence[Obj] = ()


@dataclass(frozen=True)
class Target:
    """One node to capture on: where (its agent pod) and as which address, or why it cannot be."""

    context: str
    node: str  # cluster/name
    node_ip: str | None
    pod: Obj | None = None
    problem: str | None = None
    pod_cidrs: tuple[str, ...] = field(default=())


def _internal_ips(addresses: Any, type_key: str, ip_key: str) -> list[str]:
    out = []
    for a in addresses or []:
        if isinstance(a, dict) and a.get(type_key) == "InternalIP" and a.get(ip_key):
            with contextlib.suppress(ValueError):
                out.append(str(ipaddress.ip_address(str(a[ip_key]))))
    return out


def _cidrs(values: Any) -> list[str]:
    out = []
    for v in values or []:
        if not v:
            continue
        with contextlib.suppress(ValueError, TypeError):
            out.append(str(ipaddress.ip_network(str(v), strict=False)))
    return out


def _running(pod: Mapping[str, Any]) -> bool:
    md, status = pod.get("metadata") or {}, pod.get("status") or {}
    return status.get("phase") == "Running" and not md.get("deletionTimestamp")


def _agent_pod(candidates: Sequence[Obj], node_ip: str | None, selector: str) -> tuple[Obj | None, str | None]:
    """The node's agent pod to capture in (a running one first), or why there is none."""
    if node_ip is None:
        return None, "the node has no InternalIP address (Node status.addresses, CiliumNode spec.addresses)"
    ordered = sorted(candidates, key=lambda p: (not _running(p), str((p.get("metadata") or {}).get("name"))))
    if not ordered:
        return None, f"no agent pod ({selector}) runs on this node: nowhere to capture"
    if not _running(ordered[0]):
        phase = (ordered[0].get("status") or {}).get("phase") or "Pending"
        return None, f"agent pod {(ordered[0].get('metadata') or {}).get('name')} is not running (phase {phase})"
    return ordered[0], None


def plan_targets(clusters: Sequence[ClusterObjects], *, wireguard_ports: Sequence[int] = (),
                 selector: str = AGENT_SELECTOR) -> tuple[AuditPlan, list[Target]]:
    """The plan (every node IP and pod CIDR of every cluster) and a target per node (pure).

    A node's addresses and podCIDRs are its Node object's (``status.addresses`` InternalIP,
    ``spec.podCIDRs``) together with its CiliumNode's (``spec.addresses``, ``spec.ipam.podCIDRs``).
    The target's address is its first IPv4 InternalIP (else the first)."""
    node_ips: dict[str, str] = {}
    pod_cidrs: dict[str, str] = {}
    targets: list[Target] = []
    for c in clusters:
        cilium = {str((cn.get("metadata") or {}).get("name")): cn for cn in c.cilium_nodes}
        pods: dict[str, list[Obj]] = {}
        for agent in c.agent_pods:
            pods.setdefault(str((agent.get("spec") or {}).get("nodeName") or ""), []).append(agent)
        for n in sorted(c.nodes, key=lambda o: str((o.get("metadata") or {}).get("name"))):
            name = str((n.get("metadata") or {}).get("name"))
            spec, status = n.get("spec") or {}, n.get("status") or {}
            cn = cilium.get(name) or {}
            cn_spec = cn.get("spec") or {}
            ips = _internal_ips(status.get("addresses"), "type", "address")
            ips += [ip for ip in _internal_ips(cn_spec.get("addresses"), "type", "ip") if ip not in ips]
            cidrs: list[str] = []
            for cidr in _cidrs([*(spec.get("podCIDRs") or []), spec.get("podCIDR"),
                                *((cn_spec.get("ipam") or {}).get("podCIDRs") or [])]):
                if cidr not in cidrs:
                    cidrs.append(cidr)
            full = f"{c.cluster}/{name}"
            for ip in ips:
                node_ips.setdefault(ip, full)
            for cidr in cidrs:
                pod_cidrs.setdefault(cidr, full)
            v4 = [ip for ip in ips if ":" not in ip]
            node_ip = (v4 or ips)[0] if ips else None
            pod, problem = _agent_pod(pods.get(name, []), node_ip, selector)
            targets.append(Target(c.context, full, node_ip, pod, problem, tuple(cidrs)))
    plan = AuditPlan.build(node_ips, sorted(pod_cidrs.items()), wireguard_ports)
    return plan, targets


class _Reader:
    """GETs on one context's API, as JSON dicts."""

    def __init__(self, context: str, kubeconfig: str | Path | None) -> None:
        self.context = context
        try:
            configuration = context_configuration(context, kubeconfig)
        except ConfigError as err:
            raise KubeError(str(err)) from None
        self.server = str(configuration.host)
        self.api = client.ApiClient(configuration)

    def get(self, path: str, what: str, query: Mapping[str, str] | None = None, *, optional: bool = False
            ) -> Obj | None:
        api = self.api
        try:
            m, url, headers, data, _ = api.param_serialize(
                method="GET", resource_path=path, query_params=list((query or {}).items()) or None,
                header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
            response = api.call_api(m, url, header_params=headers, body=data, _request_timeout=REQUEST_TIMEOUT)
            response.read()  # type: ignore[no-untyped-call]
            doc = api.response_deserialize(response, {"2XX": "object"}).data
        except ApiException as err:
            if optional and err.status in (403, 404):
                return None
            raise KubeError(f"context {self.context}: {what}: HTTP {err.status} {err.reason}") from None
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as err:
            raise KubeError(f"the Kubernetes API of context {self.context} ({self.server}) does not answer ({what}): "
                            f"{type(err).__name__}: {err}; check that the cluster is running and the context is "
                            "right") from None
        return doc if isinstance(doc, dict) else {}

    def items(self, path: str, what: str, query: Mapping[str, str] | None = None, *, optional: bool = False
              ) -> list[Obj]:
        doc = self.get(path, what, query, optional=optional)
        return [dict(i) for i in (doc or {}).get("items") or [] if isinstance(i, dict)]

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]


def read_cluster(context: str, *, kubeconfig: str | Path | None = None, namespace: str = "kube-system",
                 selector: str = AGENT_SELECTOR) -> ClusterObjects:
    """Read ``context``'s nodes, CiliumNodes (if the CRD exists), agent pods and cluster name (the
    ``cluster-name`` of clustermesh-config or cilium-config; else the context's name).

    Raises :class:`~clustermesh_cli.enable.kube.KubeError` when the API cannot be read."""
    reader = _Reader(context, kubeconfig)
    try:
        nodes = reader.items("/api/v1/nodes", "list nodes")
        cilium_nodes = reader.items(CILIUM_NODES_PATH, "list ciliumnodes", optional=True)
        pods = reader.items(f"/api/v1/namespaces/{namespace}/pods", f"list pods in {namespace} with {selector}",
                            {"labelSelector": selector})
        cluster = context
        for cm_name in CLUSTER_CONFIG_MAPS:
            cm = reader.get(f"/api/v1/namespaces/{namespace}/configmaps/{cm_name}", f"read ConfigMap {cm_name}",
                            optional=True)
            value = str(((cm or {}).get("data") or {}).get(CONFIG_KEY_CLUSTER_NAME) or "").strip()
            if value:
                cluster = value
                break
    finally:
        reader.close()
    return ClusterObjects(context, cluster, nodes, cilium_nodes, pods)
