"""The EndpointSlice controller: the ``discovery.k8s.io/v1`` slices of every Service with a selector.

Pure part: :func:`endpoint` and :func:`endpoint_ports` (one endpoint per selected pod with an IPv4
address, terminating pods included: ``ready`` = Ready and not terminating, ``serving`` = Ready,
``terminating``; ports from the Service's with ``targetPort`` resolved against the pod's container ports,
named ports by name and protocol, unresolvable ports left out as the real controller does), grouped into
slices by port set, at most 100 endpoints each, and :func:`plan_slices`, which reuses existing slices
in place (an unchanged slice is not written), creates what is missing (``generateName: <service>-``,
labels ``kubernetes.io/service-name`` and ``endpointslice.kubernetes.io/managed-by``, a controller
reference to the Service) and deletes the rest; a Service with no endpoints keeps one empty placeholder
slice; a Service that is gone or lost its selector keeps none. Slices managed by others are never touched.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from typing import Any

from lab.kube.controllers import objects as o
from lab.kube.controllers.actions import ENDPOINTSLICES, Action, Create, Delete, Patch
from lab.kube.controllers.client import KubeClient, RequestError
from lab.kube.controllers.informer import Expectations, Informer, ReconcileLoop
from meshcore.log import get_logger

Obj = dict[str, Any]
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "endpointslice-controller.k8s.io"
HEADLESS_LABEL = "service.kubernetes.io/headless"
ZONE_LABEL = "topology.kubernetes.io/zone"
MAX_ENDPOINTS_PER_SLICE = 100


def has_selector(svc: Mapping[str, Any]) -> bool:
    sp = o.spec(svc)
    return bool(sp.get("selector")) and sp.get("type") != "ExternalName"


def selects(svc: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
    return (has_selector(svc) and o.namespace(svc) == o.namespace(pod)
            and o.map_selector_matches(o.spec(svc).get("selector"), o.labels(pod)))


def find_port(pod: Mapping[str, Any], service_port: Mapping[str, Any]) -> int | None:
    """``podutil.FindPort``: a numeric targetPort as is, a named one from the pod's container ports."""
    target = service_port.get("targetPort", service_port.get("port"))
    protocol = service_port.get("protocol") or "TCP"
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    for container in o.spec(pod).get("containers") or []:
        for port in (container or {}).get("ports") or []:
            if port.get("name") == target and (port.get("protocol") or "TCP") == protocol:
                return int(port["containerPort"])
    return None


def pod_ipv4(pod: Mapping[str, Any]) -> str | None:
    """The pod's first IPv4 address (``status.podIPs``, else ``status.podIP``)."""
    st = o.status(pod)
    candidates = [p.get("ip") for p in st.get("podIPs") or [] if isinstance(p, dict)] or [st.get("podIP")]
    for ip in candidates:
        try:
            if ip and ipaddress.ip_address(ip).version == 4:
                return str(ip)
        except ValueError:
            continue
    return None


def endpoint_ports(svc: Mapping[str, Any], pod: Mapping[str, Any]) -> list[Obj]:
    out = []
    for sp in o.spec(svc).get("ports") or []:
        number = find_port(pod, sp)
        if number is None:
            continue
        port: Obj = {"name": sp.get("name") or "", "port": number, "protocol": sp.get("protocol") or "TCP"}
        if sp.get("appProtocol"):
            port["appProtocol"] = sp["appProtocol"]
        out.append(port)
    return out


def endpoint(svc: Mapping[str, Any], pod: Mapping[str, Any], ip: str, zones: Mapping[str, str]) -> Obj:
    """The endpoint of one pod (``podToEndpoint``)."""
    publish = bool(o.spec(svc).get("publishNotReadyAddresses"))
    serving = publish or o.is_ready(pod)
    terminating = o.is_terminating(pod)
    ep: Obj = {
        "addresses": [ip],
        "conditions": {"ready": publish or (serving and not terminating), "serving": serving,
                       "terminating": terminating},
        "targetRef": {"kind": "Pod", "namespace": o.namespace(pod), "name": o.name(pod), "uid": o.uid(pod)},
    }
    node = o.spec(pod).get("nodeName")
    if node:
        ep["nodeName"] = node
        if zones.get(node):
            ep["zone"] = zones[node]
    pspec = o.spec(pod)
    if pspec.get("hostname") and pspec.get("subdomain") == o.name(svc):
        ep["hostname"] = pspec["hostname"]
    return ep


def slice_labels(svc: Mapping[str, Any]) -> dict[str, str]:
    lbls = {k: v for k, v in o.labels(svc).items() if k not in (SERVICE_NAME_LABEL, MANAGED_BY_LABEL)}
    lbls[SERVICE_NAME_LABEL] = o.name(svc)
    lbls[MANAGED_BY_LABEL] = MANAGED_BY
    if o.spec(svc).get("clusterIP") == "None":
        lbls[HEADLESS_LABEL] = ""
    return lbls


def desired_chunks(svc: Mapping[str, Any], pods: Iterable[Mapping[str, Any]], zones: Mapping[str, str]
                   ) -> list[tuple[list[Obj], list[Obj]]]:
    """``(ports, endpoints)`` per slice: pods grouped by resolved port set, at most 100 endpoints per slice."""
    groups: dict[str, tuple[list[Obj], list[Obj]]] = {}
    for pod in sorted(pods, key=o.name):
        if not selects(svc, pod) or o.is_terminal(pod):
            continue
        ip = pod_ipv4(pod)
        if ip is None:
            continue
        ports = endpoint_ports(svc, pod)
        group = groups.setdefault(json.dumps(ports, sort_keys=True), (ports, []))
        group[1].append(endpoint(svc, pod, ip, zones))
    chunks = []
    for pkey in sorted(groups):
        ports, eps = groups[pkey]
        for i in range(0, len(eps), MAX_ENDPOINTS_PER_SLICE):
            chunks.append((ports, eps[i:i + MAX_ENDPOINTS_PER_SLICE]))
    return chunks


def managed_slices(service_namespace: str, service_name: str, slices: Iterable[Mapping[str, Any]]) -> list[Obj]:
    """The slices this controller manages for one Service."""
    return [dict(s) for s in slices
            if o.namespace(s) == service_namespace and o.labels(s).get(SERVICE_NAME_LABEL) == service_name
            and o.labels(s).get(MANAGED_BY_LABEL) == MANAGED_BY]


def _content(slice_: Mapping[str, Any]) -> tuple[Any, ...]:
    return (slice_.get("addressType"), slice_.get("ports") or [], slice_.get("endpoints") or [],
            o.labels(slice_), [r for r in o.owner_refs(slice_) if r.get("controller")])


def plan_slices(service_namespace: str, service_name: str, svc: Mapping[str, Any] | None,
                pods: Iterable[Mapping[str, Any]], slices: Iterable[Mapping[str, Any]],
                zones: Mapping[str, str] | None = None) -> list[Action]:
    """Writes that make the managed slices of one Service what its pods say."""
    existing = sorted(managed_slices(service_namespace, service_name, slices), key=o.name)
    if svc is None or not has_selector(svc) or o.is_terminating(svc):
        return [Delete(ENDPOINTSLICES, service_namespace, o.name(s), o.uid(s), why="service gone or unselected")
                for s in existing]
    chunks = desired_chunks(svc, pods, zones or {}) or [([], [])]
    lbls = slice_labels(svc)
    owner = [o.owner_reference(svc, "v1", "Service")]
    wanted = [("IPv4", ports, eps, lbls, owner) for ports, eps in chunks]
    actions: list[Action] = []
    free = list(existing)
    unmatched = []
    for want in wanted:  # 1. slices already exactly right stay untouched
        same = next((s for s in free if _content(s) == want), None)
        if same is not None:
            free.remove(same)
        else:
            unmatched.append(want)
    for want in unmatched:
        _, ports, eps, _, _ = want
        reuse = next((s for s in free if (s.get("ports") or []) == ports), None) or (free[0] if free else None)
        if reuse is not None:  # 2. update in place (same ports first)
            free.remove(reuse)
            stale = {k: None for k in o.labels(reuse) if k not in lbls}
            actions.append(Patch(ENDPOINTSLICES, service_namespace, o.name(reuse), {
                "metadata": {"labels": {**stale, **lbls}, "ownerReferences": owner},
                "addressType": "IPv4", "ports": ports, "endpoints": eps}, why="endpoints changed"))
        else:  # 3. create
            actions.append(Create(ENDPOINTSLICES, service_namespace, {
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"generateName": f"{service_name}-", "namespace": service_namespace,
                             "labels": lbls, "ownerReferences": owner},
                "addressType": "IPv4", "ports": ports, "endpoints": eps}, why="new slice"))
    actions.extend(Delete(ENDPOINTSLICES, service_namespace, o.name(s), o.uid(s), why="surplus slice") for s in free)
    return actions


class EndpointSliceController:
    """Reconciles the slices of each Service against its selected Pods."""

    def __init__(self, client: KubeClient, services: Informer, pods: Informer, slices: Informer, nodes: Informer,
                 *, resync_period: float = 30.0) -> None:
        self._client = client
        self._svc = services
        self._pods = pods
        self._slices = slices
        self._nodes = nodes
        self._expect = Expectations()
        self._log = get_logger(__name__)
        self.loop = ReconcileLoop("endpointslice", self.reconcile, informers=[services, pods, slices, nodes],
                                  all_keys=self._keys, resync_period=resync_period)
        services.add_handler(lambda old, new: self.loop.enqueue(o.key(new or old or {})))
        pods.add_handler(self._on_pod)
        slices.add_handler(self._on_slice)

    def _keys(self) -> list[str]:
        keys = set(self._svc.keys())
        keys.update(f"{o.namespace(s)}/{o.labels(s)[SERVICE_NAME_LABEL]}" for s in self._slices.items()
                    if o.labels(s).get(MANAGED_BY_LABEL) == MANAGED_BY and o.labels(s).get(SERVICE_NAME_LABEL))
        return sorted(keys)

    def _on_pod(self, old: Obj | None, new: Obj | None) -> None:
        ns = o.namespace(new or old or {})
        for svc in self._svc.items(ns):
            if (old is not None and selects(svc, old)) or (new is not None and selects(svc, new)):
                self.loop.enqueue(o.key(svc))

    def _on_slice(self, old: Obj | None, new: Obj | None) -> None:
        for s in (old, new):
            if s is not None and o.labels(s).get(MANAGED_BY_LABEL) == MANAGED_BY and o.labels(s).get(
                    SERVICE_NAME_LABEL):
                self.loop.enqueue(f"{o.namespace(s)}/{o.labels(s)[SERVICE_NAME_LABEL]}")

    async def reconcile(self, key: str) -> float | None:
        if not self._expect.satisfied(key):
            return 1.0
        ns, name = o.split_key(key)
        ns = ns or "default"
        svc = self._svc.get(ns, name)
        zones = {o.name(n): o.labels(n)[ZONE_LABEL] for n in self._nodes.items() if o.labels(n).get(ZONE_LABEL)}
        actions = plan_slices(ns, name, svc, self._pods.items(ns), self._slices.items(ns), zones)
        for action in actions:
            try:
                result = await self._client.apply(action)
            except RequestError as err:
                if err.status == 404 and not isinstance(action, Create):
                    continue
                raise
            if isinstance(action, Create) and result is not None:
                self._expect.expect_created(key, self._slices, result)
            elif isinstance(action, Delete):
                self._expect.expect_deleted(key, self._slices, {"metadata": {
                    "namespace": ns, "name": action.name, "uid": action.uid or ""}})
            self._log.info("endpointslice written", service=key, action=type(action).__name__,
                           slice=o.name(result or {}) or getattr(action, "name", ""), why=action.why)
        return None
