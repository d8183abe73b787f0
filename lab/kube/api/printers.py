"""Server-side printing: objects as ``meta.k8s.io/v1 Table`` rows, as kube-apiserver renders them (pure).

``kubectl get`` asks for a Table and prints its columns (those of priority 1 only with ``-o wide``).
:data:`PRINTERS` has kube-apiserver's columns and cell rules (``pkg/printers/internalversion``) for the
built-in kinds the lab serves: Pods (STATUS computed as kubectl shows it: ``Running``, ``Pending``,
``ContainerCreating``, ``CrashLoopBackOff``, ``Completed``, ``Error``, ``Init:0/1``, ``Terminating``...),
Nodes, Namespaces, Services, Endpoints, EndpointSlices, Secrets, ConfigMaps, ServiceAccounts, Events,
Deployments, ReplicaSets, DaemonSets, RBAC kinds, Leases, PodDisruptionBudgets, NetworkPolicies and CRDs.
Custom resources get Name plus their CRD version's ``additionalPrinterColumns`` (JSONPath subset of
:mod:`lab.kube.api.jsonpath`), or Name and Age without any; other kinds Name and Age. Every function takes
``now`` so that ages are reproducible.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lab.kube.api import jsonpath
from lab.kube.api.kinds import KindInfo, PrinterColumn

Obj = dict[str, Any]
Row = list[Any]
NONE = "<none>"


@dataclass(frozen=True, slots=True)
class Column:
    """One ``TableColumnDefinition``."""

    name: str
    type: str = "string"
    description: str = ""
    priority: int = 0
    format: str = ""

    def definition(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "format": self.format, "description": self.description,
                "priority": self.priority}


NAME = Column("Name", format="name", description="Name must be unique within a namespace.")
AGE = Column("Age", description="CreationTimestamp is a timestamp representing the server time when this object "
             "was created.")
CREATED_AT = Column("Created At", type="date", description="CreationTimestamp of the object.")


# ----- time -----


def parse_time(value: Any) -> datetime.datetime | None:
    """An RFC 3339 timestamp (``Time`` or ``MicroTime``), None if absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=datetime.UTC)


def human_duration(seconds: float) -> str:
    """apimachinery's ``duration.HumanDuration``: ``5s``, ``3m20s``, ``15m``, ``2h5m``, ``3d4h``, ``2y45d``..."""
    secs = int(seconds)
    if secs < -1:
        return "<invalid>"
    if secs < 0:
        return "0s"
    if secs < 120:
        return f"{secs}s"
    minutes = secs // 60
    if minutes < 10:
        s = secs % 60
        return f"{minutes}m" if s == 0 else f"{minutes}m{s}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = secs // 3600
    if hours < 8:
        m = minutes % 60
        return f"{hours}h" if m == 0 else f"{hours}h{m}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        h = hours % 24
        return f"{hours // 24}d" if h == 0 else f"{hours // 24}d{h}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        d = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if d == 0 else f"{hours // 24 // 365}y{d}d"
    return f"{hours // 24 // 365}y"


def since(value: Any, now: datetime.datetime) -> str:
    """``translateTimestampSince``: the age of a timestamp, ``<unknown>`` without one."""
    t = parse_time(value)
    if t is None:
        return "<unknown>"
    return human_duration((now - t).total_seconds())


def _age(obj: Obj, now: datetime.datetime) -> str:
    return since(_md(obj).get("creationTimestamp"), now)


# ----- small helpers (kube's formatters) -----


def _md(obj: Obj) -> Obj:
    md = obj.get("metadata")
    return md if isinstance(md, dict) else {}


def _d(obj: Any, *keys: str) -> Any:
    """``obj[k1][k2]...`` or None (any missing or non-dict level)."""
    for k in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(k)
    return obj


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def format_labels(labels: Any) -> str:
    """``labels.FormatLabels``: ``a=1,b=2`` sorted by key, ``<none>`` if empty."""
    items = sorted(_dict(labels).items())
    return ",".join(f"{k}={v}" for k, v in items) or NONE


def format_label_selector(selector: Any) -> str:
    """``metav1.FormatLabelSelector``: requirements sorted by key (``a=1``, ``b in (x,y)``, ``c``, ``!d``)."""
    if not isinstance(selector, dict):
        return NONE
    reqs: list[tuple[str, str]] = [(k, f"{k}={v}") for k, v in _dict(selector.get("matchLabels")).items()]
    for e in _list(selector.get("matchExpressions")):
        if not isinstance(e, dict):
            continue
        key, op = str(e.get("key", "")), e.get("operator")
        values = ",".join(sorted(str(v) for v in _list(e.get("values"))))
        text = {"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})", "Exists": key,
                "DoesNotExist": f"!{key}"}.get(str(op))
        if text is None:
            return "<error>"
        reqs.append((key, text))
    return ",".join(t for _, t in sorted(reqs, key=lambda r: r[0])) or NONE


def _more(items: list[str], count: int, limit: int = 3, empty: str = "<unset>") -> str:
    """``listWithMoreString``: the first ``limit`` items, then `` + N more...``."""
    text = ",".join(items[:limit])
    if count > limit:
        return f"{text} + {count - limit} more..."
    return text or empty


def _containers_images(template_spec: Any) -> tuple[str, str]:
    cs = [c for c in _list(_d(template_spec, "containers")) if isinstance(c, dict)]
    return ",".join(str(c.get("name", "")) for c in cs), ",".join(str(c.get("image", "")) for c in cs)


# ----- pods -----

POD_COLUMNS = (
    NAME,
    Column("Ready", description="The aggregate readiness state of this pod for accepting traffic."),
    Column("Status", description="The aggregate status of the containers in this pod."),
    Column("Restarts", description="The number of times the containers in this pod have been restarted and when "
           "the last container in this pod has restarted."),
    AGE,
    Column("IP", priority=1, description="podIP address allocated to the pod."),
    Column("Node", priority=1, description="NodeName is a request to schedule this pod onto a specific node."),
    Column("Nominated Node", priority=1, description="nominatedNodeName is set only when this pod preempts other "
           "pods on the node."),
    Column("Readiness Gates", priority=1, description="If specified, all readiness gates will be evaluated for "
           "pod readiness."),
)


def _has_condition(status: Obj, ctype: str) -> bool:
    return any(isinstance(c, dict) and c.get("type") == ctype and c.get("status") == "True"
               for c in _list(status.get("conditions")))


def _later(current: datetime.datetime | None, value: Any) -> datetime.datetime | None:
    t = parse_time(value)
    if t is None:
        return current
    return t if current is None or t > current else current


def pod_row(pod: Obj, now: datetime.datetime) -> Row:
    """kube-apiserver's ``printPod`` (all cells, wide ones included)."""
    spec, status = _dict(pod.get("spec")), _dict(pod.get("status"))
    md = _md(pod)
    init_specs = {str(c.get("name")): c for c in _list(spec.get("initContainers")) if isinstance(c, dict)}

    def sidecar(name: str) -> bool:  # a restartable init container
        return bool(_d(init_specs.get(name), "restartPolicy") == "Always")

    total = len(_list(spec.get("containers"))) + sum(1 for n in init_specs if sidecar(n))
    ready = restarts = sidecar_restarts = 0
    last_restart: datetime.datetime | None = None
    last_sidecar_restart: datetime.datetime | None = None
    phase = str(status.get("phase") or "")
    reason = str(status.get("reason") or phase)
    for c in _list(status.get("conditions")):
        if isinstance(c, dict) and c.get("type") == "PodScheduled" and c.get("reason") == "SchedulingGated":
            reason = "SchedulingGated"

    initializing = False
    init_statuses = [s for s in _list(status.get("initContainerStatuses")) if isinstance(s, dict)]
    for i, cs in enumerate(init_statuses):
        name = str(cs.get("name", ""))
        restarts += _int(cs.get("restartCount"))
        finished = _d(cs, "lastState", "terminated", "finishedAt")
        last_restart = _later(last_restart, finished)
        if sidecar(name):
            sidecar_restarts += _int(cs.get("restartCount"))
            last_sidecar_restart = _later(last_sidecar_restart, finished)
        terminated, waiting = _d(cs, "state", "terminated"), _d(cs, "state", "waiting")
        if isinstance(terminated, dict) and _int(terminated.get("exitCode")) == 0:
            continue
        if sidecar(name) and cs.get("started") is True:
            if cs.get("ready"):
                ready += 1
            continue
        if isinstance(terminated, dict):
            if terminated.get("reason"):
                reason = f"Init:{terminated['reason']}"
            elif _int(terminated.get("signal")):
                reason = f"Init:Signal:{_int(terminated.get('signal'))}"
            else:
                reason = f"Init:ExitCode:{_int(terminated.get('exitCode'))}"
        elif isinstance(waiting, dict) and waiting.get("reason") and waiting.get("reason") != "PodInitializing":
            reason = f"Init:{waiting['reason']}"
        else:
            reason = f"Init:{i}/{len(init_specs)}"
        initializing = True
        break

    if not initializing or _has_condition(status, "Initialized"):
        restarts, last_restart = sidecar_restarts, last_sidecar_restart
        has_running = False
        for cs in reversed([s for s in _list(status.get("containerStatuses")) if isinstance(s, dict)]):
            restarts += _int(cs.get("restartCount"))
            last_restart = _later(last_restart, _d(cs, "lastState", "terminated", "finishedAt"))
            waiting, terminated = _d(cs, "state", "waiting"), _d(cs, "state", "terminated")
            if isinstance(waiting, dict) and waiting.get("reason"):
                reason = str(waiting["reason"])
            elif isinstance(terminated, dict) and terminated.get("reason"):
                reason = str(terminated["reason"])
            elif isinstance(terminated, dict):
                sig = _int(terminated.get("signal"))
                reason = f"Signal:{sig}" if sig else f"ExitCode:{_int(terminated.get('exitCode'))}"
            elif cs.get("ready") and isinstance(_d(cs, "state", "running"), dict):
                has_running = True
                ready += 1
        if reason == "Completed" and has_running:
            reason = "Running" if _has_condition(status, "Ready") else "NotReady"

    if md.get("deletionTimestamp") and status.get("reason") == "NodeLost":
        reason = "Unknown"
    elif md.get("deletionTimestamp") and phase not in ("Succeeded", "Failed"):
        reason = "Terminating"

    restarts_text = str(restarts)
    if restarts and last_restart is not None:
        restarts_text = f"{restarts} ({human_duration((now - last_restart).total_seconds())} ago)"

    ips = [p.get("ip") for p in _list(status.get("podIPs")) if isinstance(p, dict) and p.get("ip")]
    gates = [g.get("conditionType") for g in _list(spec.get("readinessGates")) if isinstance(g, dict)]
    gates_text = NONE
    if gates:
        conds = {c.get("type"): c.get("status") for c in _list(status.get("conditions")) if isinstance(c, dict)}
        gates_text = f"{sum(1 for g in gates if conds.get(g) == 'True')}/{len(gates)}"
    return [md.get("name", ""), f"{ready}/{total}", reason, restarts_text, _age(pod, now),
            str(ips[0]) if ips else NONE, spec.get("nodeName") or NONE, status.get("nominatedNodeName") or NONE,
            gates_text]


def pod_row_conditions(pod: Obj) -> list[dict[str, str]] | None:
    """The row conditions kube-apiserver sets for finished pods (``Completed``)."""
    phase = _d(pod, "status", "phase")
    if phase == "Succeeded":
        return [{"type": "Completed", "status": "True", "reason": "Succeeded",
                 "message": "The pod has completed successfully."}]
    if phase == "Failed":
        return [{"type": "Completed", "status": "True", "reason": "Failed", "message": "The pod failed."}]
    return None


# ----- nodes, namespaces -----

NODE_COLUMNS = (
    NAME,
    Column("Status", description="The status of the node"),
    Column("Roles", description="The roles of the node"),
    AGE,
    Column("Version", description="Kubelet Version reported by the node."),
    Column("Internal-IP", priority=1, description="List of addresses reachable to the node."),
    Column("External-IP", priority=1, description="List of addresses reachable to the node."),
    Column("OS-Image", priority=1, description="OS Image reported by the node from /etc/os-release."),
    Column("Kernel-Version", priority=1, description="Kernel Version reported by the node from 'uname -r'."),
    Column("Container-Runtime", priority=1, description="ContainerRuntime Version reported by the node."),
)

_ROLE_PREFIX = "node-role.kubernetes.io/"


def node_roles(labels: Mapping[str, Any]) -> list[str]:
    """``findNodeRoles``: ``node-role.kubernetes.io/<role>`` keys and ``kubernetes.io/role`` values, sorted."""
    roles = set()
    for k, v in labels.items():
        if k.startswith(_ROLE_PREFIX) and k[len(_ROLE_PREFIX):]:
            roles.add(k[len(_ROLE_PREFIX):])
        elif k == "kubernetes.io/role" and v:
            roles.add(str(v))
    return sorted(roles)


def _node_address(node: Obj, kind: str) -> str:
    for a in _list(_d(node, "status", "addresses")):
        if isinstance(a, dict) and a.get("type") == kind:
            return str(a.get("address", ""))
    return NONE


def node_row(node: Obj, now: datetime.datetime) -> Row:
    """``printNode``."""
    status = _dict(node.get("status"))
    conds = {c.get("type"): c for c in _list(status.get("conditions")) if isinstance(c, dict)}
    states = []
    if "Ready" in conds:
        states.append("Ready" if conds["Ready"].get("status") == "True" else "NotReady")
    if not states:
        states.append("Unknown")
    if _d(node, "spec", "unschedulable"):
        states.append("SchedulingDisabled")
    info = _dict(status.get("nodeInfo"))
    return [_md(node).get("name", ""), ",".join(states), ",".join(node_roles(_dict(_md(node).get("labels")))) or NONE,
            _age(node, now), str(info.get("kubeletVersion") or ""), _node_address(node, "InternalIP"),
            _node_address(node, "ExternalIP"), info.get("osImage") or "<unknown>",
            info.get("kernelVersion") or "<unknown>", info.get("containerRuntimeVersion") or "<unknown>"]


NAMESPACE_COLUMNS = (NAME, Column("Status", description="The status of the namespace"), AGE)


def namespace_row(ns: Obj, now: datetime.datetime) -> Row:
    return [_md(ns).get("name", ""), str(_d(ns, "status", "phase") or ""), _age(ns, now)]


# ----- services and endpoints -----

SERVICE_COLUMNS = (
    NAME,
    Column("Type", description="type determines how the Service is exposed."),
    Column("Cluster-IP", description="clusterIP is the IP address of the service."),
    Column("External-IP", description="externalIPs is a list of IP addresses for which nodes in the cluster will "
           "also accept traffic for this service."),
    Column("Port(s)", description="The list of ports that are exposed by this service."),
    AGE,
    Column("Selector", priority=1, description="Route service traffic to pods with label keys and values matching "
           "this selector."),
)


def service_ports(ports: Sequence[Any]) -> str:
    """``makePortString``: ``80/TCP``, ``80:30080/TCP`` with a nodePort, comma separated."""
    out = []
    for p in ports:
        if not isinstance(p, dict):
            continue
        proto = p.get("protocol") or "TCP"
        node_port = _int(p.get("nodePort"))
        out.append(f"{_int(p.get('port'))}:{node_port}/{proto}" if node_port > 0 else f"{_int(p.get('port'))}/{proto}")
    return ",".join(out)


def service_external_ip(svc: Obj) -> str:
    """``getServiceExternalIP`` (wide: load-balancer addresses are not shortened)."""
    spec = _dict(svc.get("spec"))
    stype = spec.get("type") or "ClusterIP"
    external = [str(ip) for ip in _list(spec.get("externalIPs"))]
    if stype in ("ClusterIP", "NodePort"):
        return ",".join(external) or NONE
    if stype == "LoadBalancer":
        lb = [str(i.get("ip") or i.get("hostname") or "") for i in _list(_d(svc, "status", "loadBalancer", "ingress"))
              if isinstance(i, dict) and (i.get("ip") or i.get("hostname"))]
        return ",".join(lb + external) or "<pending>"
    if stype == "ExternalName":
        return str(spec.get("externalName") or "")
    return "<unknown>"


def service_row(svc: Obj, now: datetime.datetime) -> Row:
    """``printService``."""
    spec = _dict(svc.get("spec"))
    ips = _list(spec.get("clusterIPs")) or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    return [_md(svc).get("name", ""), spec.get("type") or "ClusterIP", str(ips[0]) if ips else NONE,
            service_external_ip(svc), service_ports(_list(spec.get("ports"))) or NONE, _age(svc, now),
            format_labels(spec.get("selector"))]


ENDPOINTS_COLUMNS = (NAME, Column("Endpoints", description="Endpoints of the service"), AGE)


def endpoints_row(ep: Obj, now: datetime.datetime) -> Row:
    """``printEndpoints`` (``formatEndpoints``: ``ip:port``, the first three then `` + N more...``)."""
    items: list[str] = []
    for subset in _list(ep.get("subsets")):
        ports: list[Obj | None] = [p for p in _list(_d(subset, "ports")) if isinstance(p, dict)]
        for port in ports or [None]:
            for addr in _list(_d(subset, "addresses")):
                ip = str(_d(addr, "ip") or "")
                items.append(f"{ip}:{_int(port.get('port'))}" if port is not None else ip)
    return [_md(ep).get("name", ""), _more(items, len(items), empty=NONE), _age(ep, now)]


ENDPOINTSLICE_COLUMNS = (
    NAME,
    Column("AddressType", description="addressType specifies the type of address carried by this EndpointSlice."),
    Column("Ports", description="ports specifies the list of network ports exposed by each endpoint in this slice."),
    Column("Endpoints", description="endpoints is a list of unique endpoints in this slice."),
    AGE,
)


def endpointslice_row(es: Obj, now: datetime.datetime) -> Row:
    """``printEndpointSlice``."""
    ports = []
    for p in _list(es.get("ports")):
        if isinstance(p, dict):
            ports.append(str(p["port"]) if p.get("port") is not None else str(p["name"]) if p.get("name") else "*")
    addrs = [str(a) for e in _list(es.get("endpoints")) for a in _list(_d(e, "addresses"))]
    return [_md(es).get("name", ""), str(es.get("addressType") or ""), _more(ports, len(ports)),
            _more(addrs, len(addrs)), _age(es, now)]


# ----- config -----

SECRET_COLUMNS = (NAME, Column("Type", description="The type of the secret"),
                  Column("Data", type="string", description="The number of entries in the secret"), AGE)
CONFIGMAP_COLUMNS = (NAME, Column("Data", type="string", description="The number of entries in the config map"),
                     AGE)
SERVICEACCOUNT_COLUMNS = (NAME, Column("Secrets", type="string", description="Secrets is a list of the secrets in "
                                       "the same namespace that pods running using this ServiceAccount are allowed "
                                       "to use."), AGE)


def secret_row(s: Obj, now: datetime.datetime) -> Row:
    count = len(_dict(s.get("data"))) + len(_dict(s.get("stringData")))
    return [_md(s).get("name", ""), str(s.get("type") or "Opaque"), count, _age(s, now)]


def configmap_row(cm: Obj, now: datetime.datetime) -> Row:
    return [_md(cm).get("name", ""), len(_dict(cm.get("data"))) + len(_dict(cm.get("binaryData"))), _age(cm, now)]


def serviceaccount_row(sa: Obj, now: datetime.datetime) -> Row:
    return [_md(sa).get("name", ""), len(_list(sa.get("secrets"))), _age(sa, now)]


# ----- events -----

EVENT_COLUMNS = (
    Column("Last Seen", description="The time at which the most recent occurrence of this event was recorded."),
    Column("Type", description="Type of this event (Normal, Warning), new types could be added in the future"),
    Column("Reason", description="This should be a short, machine understandable string that gives the reason "
           "for the transition into the object's current status."),
    Column("Object", description="The object that this event is about."),
    Column("Subobject", priority=1, description="The field of the object this event is about."),
    Column("Source", priority=1, description="The component reporting this event."),
    Column("Message", description="A human-readable description of the status of this operation."),
    Column("First Seen", priority=1, description="The time at which the event was first recorded."),
    Column("Count", priority=1, description="The number of times this event has occurred."),
    Column("Name", priority=1, format="name", description="Name must be unique within a namespace."),
)


def event_row(ev: Obj, now: datetime.datetime) -> Row:
    """``printEvent``."""
    first = since(ev.get("firstTimestamp"), now) if ev.get("firstTimestamp") else since(ev.get("eventTime"), now)
    last = since(ev.get("lastTimestamp"), now) if ev.get("lastTimestamp") else first
    count = _int(ev.get("count"))
    series = ev.get("series")
    if isinstance(series, dict):
        last = since(series.get("lastObservedTime"), now)
        count = _int(series.get("count"))
    elif count == 0:
        count = 1
    obj = _dict(ev.get("involvedObject"))
    kind = str(obj.get("kind") or "").lower()
    target = f"{kind}/{obj['name']}" if obj.get("name") else kind
    component = _d(ev, "source", "component") or ev.get("reportingComponent") or ev.get("reportingController") or ""
    instance = _d(ev, "source", "host") or ev.get("reportingInstance") or ""
    source = "<unknown>" if not component else f"{component}, {instance}" if instance else str(component)
    return [last, str(ev.get("type") or ""), str(ev.get("reason") or ""), target, str(obj.get("fieldPath") or ""),
            source, str(ev.get("message") or "").strip(), first, count, _md(ev).get("name", "")]


# ----- workloads -----

_WIDE_WORKLOAD = (
    Column("Containers", priority=1, description="Names of each container in the template."),
    Column("Images", priority=1, description="Images referenced by each container in the template."),
    Column("Selector", priority=1, description="Label selector for pods."),
)

DEPLOYMENT_COLUMNS = (
    NAME,
    Column("Ready", description="Number of the pod with ready state"),
    Column("Up-to-date", type="integer", description="Total number of non-terminated pods targeted by this "
           "deployment that have the desired template spec."),
    Column("Available", type="integer", description="Total number of available pods (ready for at least "
           "minReadySeconds) targeted by this deployment."),
    AGE,
    *_WIDE_WORKLOAD,
)


def _workload_wide(obj: Obj) -> Row:
    names, images = _containers_images(_d(obj, "spec", "template", "spec"))
    return [names, images, format_label_selector(_d(obj, "spec", "selector"))]


def deployment_row(d: Obj, now: datetime.datetime) -> Row:
    st = _dict(d.get("status"))
    desired = _int(_d(d, "spec", "replicas"), 1)
    return [_md(d).get("name", ""), f"{_int(st.get('readyReplicas'))}/{desired}", _int(st.get("updatedReplicas")),
            _int(st.get("availableReplicas")), _age(d, now), *_workload_wide(d)]


REPLICASET_COLUMNS = (
    NAME,
    Column("Desired", type="integer", description="Replicas is the number of desired replicas."),
    Column("Current", type="integer", description="Replicas is the most recently observed number of replicas."),
    Column("Ready", type="integer", description="readyReplicas is the number of pods targeted by this ReplicaSet "
           "with a Ready Condition."),
    AGE,
    *_WIDE_WORKLOAD,
)


def replicaset_row(rs: Obj, now: datetime.datetime) -> Row:
    st = _dict(rs.get("status"))
    return [_md(rs).get("name", ""), _int(_d(rs, "spec", "replicas"), 1), _int(st.get("replicas")),
            _int(st.get("readyReplicas")), _age(rs, now), *_workload_wide(rs)]


DAEMONSET_COLUMNS = (
    NAME,
    Column("Desired", type="integer", description="The total number of nodes that should be running the daemon "
           "pod."),
    Column("Current", type="integer", description="The number of nodes that are running at least 1 daemon pod and "
           "are supposed to run the daemon pod."),
    Column("Ready", type="integer", description="numberReady is the number of nodes that should be running the "
           "daemon pod and have one or more of the daemon pod running with a Ready Condition."),
    Column("Up-to-date", type="integer", description="The total number of nodes that are running updated daemon "
           "pod"),
    Column("Available", type="integer", description="The number of nodes that should be running the daemon pod and "
           "have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)"),
    Column("Node Selector", description="NodeSelector is a selector which must be true for the pod to fit on a "
           "node."),
    AGE,
    *_WIDE_WORKLOAD,
)


def daemonset_row(ds: Obj, now: datetime.datetime) -> Row:
    st = _dict(ds.get("status"))
    return [_md(ds).get("name", ""), _int(st.get("desiredNumberScheduled")), _int(st.get("currentNumberScheduled")),
            _int(st.get("numberReady")), _int(st.get("updatedNumberScheduled")), _int(st.get("numberAvailable")),
            format_labels(_d(ds, "spec", "template", "spec", "nodeSelector")), _age(ds, now), *_workload_wide(ds)]


# ----- RBAC, coordination, policy, networking, CRDs -----

ROLEBINDING_COLUMNS = (
    NAME,
    Column("Role", description="RoleRef is the reference to the role."),
    AGE,
    Column("Users", priority=1, description="Users in the roleBinding"),
    Column("Groups", priority=1, description="Groups in the roleBinding"),
    Column("ServiceAccounts", priority=1, description="ServiceAccounts in the roleBinding"),
)


def rolebinding_row(rb: Obj, now: datetime.datetime) -> Row:
    ref = _dict(rb.get("roleRef"))
    subjects = [s for s in _list(rb.get("subjects")) if isinstance(s, dict)]

    def names(kind: str) -> str:
        return ",".join(str(s.get("name", "")) for s in subjects if s.get("kind") == kind)

    sas = ",".join(f"{s.get('namespace', '')}/{s.get('name', '')}" for s in subjects
                   if s.get("kind") == "ServiceAccount")
    return [_md(rb).get("name", ""), f"{ref.get('kind', '')}/{ref.get('name', '')}", _age(rb, now),
            names("User"), names("Group"), sas]


def created_at_row(obj: Obj, now: datetime.datetime) -> Row:
    """Name and Created At (RFC 3339), as for Roles, ClusterRoles and CRDs."""
    return [_md(obj).get("name", ""), str(_md(obj).get("creationTimestamp") or "")]


LEASE_COLUMNS = (NAME, Column("Holder", description="The holder of the lease."), AGE)


def lease_row(lease: Obj, now: datetime.datetime) -> Row:
    return [_md(lease).get("name", ""), str(_d(lease, "spec", "holderIdentity") or ""), _age(lease, now)]


PDB_COLUMNS = (
    NAME,
    Column("Min Available", description="The minimum number of pods that must be available."),
    Column("Max Unavailable", description="The maximum number of pods that may be unavailable."),
    Column("Allowed Disruptions", type="integer", description="Calculated number of pods that may be disrupted at "
           "this time."),
    AGE,
)


def pdb_row(pdb: Obj, now: datetime.datetime) -> Row:
    spec = _dict(pdb.get("spec"))
    def value(k: str) -> str:
        return "N/A" if spec.get(k) is None else str(spec[k])

    return [_md(pdb).get("name", ""), value("minAvailable"), value("maxUnavailable"),
            _int(_d(pdb, "status", "disruptionsAllowed")), _age(pdb, now)]


NETWORKPOLICY_COLUMNS = (NAME, Column("Pod-Selector", description="Selects the pods to which this NetworkPolicy "
                                      "object applies."), AGE)


def networkpolicy_row(np: Obj, now: datetime.datetime) -> Row:
    return [_md(np).get("name", ""), format_label_selector(_d(np, "spec", "podSelector")), _age(np, now)]


def default_row(obj: Obj, now: datetime.datetime) -> Row:
    return [_md(obj).get("name", ""), _age(obj, now)]


@dataclass(frozen=True, slots=True)
class Printer:
    """The columns of one kind and the function giving an object's cells (one per column)."""

    columns: tuple[Column, ...]
    row: Callable[[Obj, datetime.datetime], Row]


DEFAULT_PRINTER = Printer((NAME, AGE), default_row)
_CREATED = Printer((NAME, CREATED_AT), created_at_row)
_RBAC = "rbac.authorization.k8s.io"

PRINTERS: dict[tuple[str, str], Printer] = {
    ("", "pods"): Printer(POD_COLUMNS, pod_row),
    ("", "nodes"): Printer(NODE_COLUMNS, node_row),
    ("", "namespaces"): Printer(NAMESPACE_COLUMNS, namespace_row),
    ("", "services"): Printer(SERVICE_COLUMNS, service_row),
    ("", "endpoints"): Printer(ENDPOINTS_COLUMNS, endpoints_row),
    ("", "secrets"): Printer(SECRET_COLUMNS, secret_row),
    ("", "configmaps"): Printer(CONFIGMAP_COLUMNS, configmap_row),
    ("", "serviceaccounts"): Printer(SERVICEACCOUNT_COLUMNS, serviceaccount_row),
    ("", "events"): Printer(EVENT_COLUMNS, event_row),
    ("apps", "deployments"): Printer(DEPLOYMENT_COLUMNS, deployment_row),
    ("apps", "replicasets"): Printer(REPLICASET_COLUMNS, replicaset_row),
    ("apps", "daemonsets"): Printer(DAEMONSET_COLUMNS, daemonset_row),
    ("discovery.k8s.io", "endpointslices"): Printer(ENDPOINTSLICE_COLUMNS, endpointslice_row),
    (_RBAC, "roles"): _CREATED,
    (_RBAC, "clusterroles"): _CREATED,
    (_RBAC, "rolebindings"): Printer(ROLEBINDING_COLUMNS, rolebinding_row),
    (_RBAC, "clusterrolebindings"): Printer(ROLEBINDING_COLUMNS, rolebinding_row),
    ("coordination.k8s.io", "leases"): Printer(LEASE_COLUMNS, lease_row),
    ("policy", "poddisruptionbudgets"): Printer(PDB_COLUMNS, pdb_row),
    ("networking.k8s.io", "networkpolicies"): Printer(NETWORKPOLICY_COLUMNS, networkpolicy_row),
    ("apiextensions.k8s.io", "customresourcedefinitions"): _CREATED,
}


# ----- custom resources -----


def custom_cell(col: PrinterColumn, obj: Obj, now: datetime.datetime) -> Any:
    """One ``additionalPrinterColumns`` cell, as apiextensions' table convertor makes it: the first value the
    JSONPath finds, typed by the column (``string`` cells print non-strings as JSON), None if nothing."""
    try:
        found = jsonpath.find(col.json_path, obj)
    except jsonpath.JSONPathError:
        return None
    if not found:
        return None
    value = found[0]
    if value is None:
        return None
    t = col.type
    if t == "string":
        return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    if t == "integer" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if t == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if t == "boolean" and isinstance(value, bool):
        return value
    if t == "date" and isinstance(value, str):
        stamp = parse_time(value)
        return "<invalid>" if stamp is None else human_duration((now - stamp).total_seconds())
    return None


def custom_printer(columns: Sequence[PrinterColumn]) -> Printer:
    """Name plus the CRD's columns (Name and Age when it has none)."""
    if not columns:
        return DEFAULT_PRINTER
    cols = (NAME, *(Column(c.name, c.type, c.description or f"Custom resource definition column (in JSONPath "
                                                               f"format): {c.json_path}", c.priority, c.format)
                    for c in columns))

    def row(obj: Obj, now: datetime.datetime) -> Row:
        return [_md(obj).get("name", ""), *(custom_cell(c, obj, now) for c in columns)]

    return Printer(cols, row)


def printer_for(info: KindInfo) -> Printer:
    """The printer of a kind: its built-in one, its CRD's columns, or Name and Age."""
    if info.crd:
        return custom_printer(info.printer_columns)
    return PRINTERS.get((info.group, info.plural), DEFAULT_PRINTER)


# ----- the Table -----


def _partial(obj: Obj) -> Obj:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata", {})}


def table(info: KindInfo, items: Sequence[Obj], resource_version: str, *, include_object: str = "Metadata",
          now: datetime.datetime | None = None) -> Obj:
    """Render ``items`` of kind ``info`` as a ``meta.k8s.io/v1 Table`` (``includeObject``: ``None``,
    ``Metadata`` (a PartialObjectMetadata per row, the default) or ``Object``)."""
    now = now or datetime.datetime.now(datetime.UTC)
    printer = printer_for(info)
    rows = []
    for o in items:
        row: Obj = {"cells": printer.row(o, now)}
        if info.group == "" and info.plural == "pods":
            conditions = pod_row_conditions(o)
            if conditions:
                row["conditions"] = conditions
        if include_object == "Object":
            row["object"] = o
        elif include_object != "None":
            row["object"] = _partial(o)
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": [c.definition() for c in printer.columns], "rows": rows}
