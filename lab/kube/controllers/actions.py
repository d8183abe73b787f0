"""What the pure controller logic asks for: writes to the API, as data.

Desired-state functions return lists of these; :meth:`lab.kube.controllers.client.KubeClient.apply`
performs them. Each carries a short ``why`` for the log line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshcore.k8s.resource import ResourceRef

Obj = dict[str, Any]

PODS = ResourceRef("", "v1", "pods", namespaced=True)
NODES = ResourceRef("", "v1", "nodes", namespaced=False)
SERVICES = ResourceRef("", "v1", "services", namespaced=True)
ENDPOINTSLICES = ResourceRef("discovery.k8s.io", "v1", "endpointslices", namespaced=True)
DEPLOYMENTS = ResourceRef("apps", "v1", "deployments", namespaced=True)
REPLICASETS = ResourceRef("apps", "v1", "replicasets", namespaced=True)
DAEMONSETS = ResourceRef("apps", "v1", "daemonsets", namespaced=True)

KIND_OF: dict[ResourceRef, str] = {
    PODS: "Pod", NODES: "Node", SERVICES: "Service", ENDPOINTSLICES: "EndpointSlice",
    DEPLOYMENTS: "Deployment", REPLICASETS: "ReplicaSet", DAEMONSETS: "DaemonSet",
}


@dataclass(frozen=True, slots=True)
class Create:
    """POST ``body`` into ``namespace`` (``metadata.generateName`` allowed)."""

    ref: ResourceRef
    namespace: str
    body: Obj = field(compare=True)
    why: str = ""


@dataclass(frozen=True, slots=True)
class Patch:
    """PATCH one object (JSON merge patch by default), or its ``status`` subresource."""

    ref: ResourceRef
    namespace: str
    name: str
    body: Obj
    subresource: str | None = None
    why: str = ""


@dataclass(frozen=True, slots=True)
class Delete:
    """DELETE one object; ``uid`` as a precondition; ``grace_seconds=0`` forces a pod away at once."""

    ref: ResourceRef
    namespace: str
    name: str
    uid: str | None = None
    grace_seconds: int | None = None
    why: str = ""


@dataclass(frozen=True, slots=True)
class Bind:
    """POST a ``Binding`` to ``pods/<name>/binding``: set the pod's ``spec.nodeName``."""

    namespace: str
    name: str
    node: str
    uid: str | None = None
    why: str = ""


Action = Create | Patch | Delete | Bind
