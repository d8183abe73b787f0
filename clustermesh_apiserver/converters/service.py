"""Service + EndpointSlices -> ``ClusterService`` (``cilium/state/services/v1/<c>/<ns>/<name>``,
reference §1.7, newest rules of ``operator/watchers/service_sync.go``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from clustermesh_apiserver.converters._k8s import (
    KubeObject,
    annotations_of,
    as_int,
    as_list,
    as_map,
    as_str,
    labels_of,
    name_of,
    namespace_of,
    parse_ip,
    str_map,
)
from clustermesh_apiserver.converters.annotations import is_shared_service
from meshcore.wire.service import BackendZone, ClusterService, ForZone, L4Addr, PortConfiguration

__all__ = [
    "SERVICE_NAME_LABEL",
    "HEADLESS_LABEL",
    "is_headless",
    "endpoint_slice_service_name",
    "endpoint_slice_backends",
    "service_to_cluster_service",
]

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
"""Label of an EndpointSlice naming its Service (``discovery/v1.LabelServiceName``)."""
HEADLESS_LABEL = "service.kubernetes.io/headless"
"""``v1.IsHeadlessService``: an EndpointSlice-controller label marking headless Services."""

_PROTOCOLS = {"TCP": "TCP", "UDP": "UDP", "SCTP": "SCTP"}


def is_headless(service: KubeObject) -> bool:
    """Cilium's ``isHeadless``: the headless label, or ``spec.clusterIP`` equal to ``None``
    (case-insensitive)."""
    if HEADLESS_LABEL in (labels_of(service) or {}):
        return True
    return as_str(as_map(service.get("spec")).get("clusterIP")).lower() == "none"


def endpoint_slice_service_name(slice_obj: KubeObject) -> str:
    """The Service an EndpointSlice belongs to (``""`` when unlabelled)."""
    return (labels_of(slice_obj) or {}).get(SERVICE_NAME_LABEL, "")


def _slice_ports(slice_obj: KubeObject) -> dict[str, L4Addr]:
    """Cilium's ``parseEndpointPortV1`` over ``ports``: protocol defaults to TCP, ports with
    another protocol or without a number are dropped, an unnamed port is named ``""``."""
    ports: dict[str, L4Addr] = {}
    for port in map(as_map, as_list(slice_obj.get("ports"))):
        protocol = port.get("protocol")
        proto = "TCP" if protocol is None else _PROTOCOLS.get(as_str(protocol))
        number = port.get("port")
        if proto is None or number is None:
            continue
        ports[as_str(port.get("name"))] = L4Addr(protocol=proto, port=as_int(number) & 0xFFFF)
    return ports


def _condition(conditions: Mapping[str, Any], name: str) -> bool:
    """A missing condition counts as true (Kubernetes: unknown ready/serving means ready)."""
    value = conditions.get(name)
    return value is None or value is True


def endpoint_slice_backends(
    slice_obj: KubeObject,
) -> list[tuple[str, PortConfiguration, str, BackendZone | None]]:
    """Cilium's ``ParseEndpointSliceV1`` restricted to what a ClusterService exports: for every
    ready-or-serving address of an IPv4/IPv6 slice, ``(ip, ports, hostname, zone)``."""
    if as_str(slice_obj.get("addressType")) not in ("IPv4", "IPv6"):
        return []
    ports = _slice_ports(slice_obj)
    out: list[tuple[str, PortConfiguration, str, BackendZone | None]] = []
    for endpoint in map(as_map, as_list(slice_obj.get("endpoints"))):
        conditions = as_map(endpoint.get("conditions"))
        if not (_condition(conditions, "ready") or _condition(conditions, "serving")):
            continue
        zone_name = as_str(endpoint.get("zone"))
        if endpoint.get("zone") is None:
            zone_name = (str_map(endpoint.get("deprecatedTopology")) or {}).get("topology.kubernetes.io/zone", "")
        zone = None
        if zone_name:
            hints = as_list(as_map(endpoint.get("hints")).get("forZones"))
            zone = BackendZone(zone=zone_name, for_zones=[ForZone(name=as_str(as_map(h).get("name"))) for h in hints])
        hostname = as_str(endpoint.get("hostname"))
        for address in as_list(endpoint.get("addresses")):
            ip = parse_ip(as_str(address).split("@", 1)[0])
            if ip is not None:
                out.append((ip, dict(ports), hostname, zone))
    return out


def service_to_cluster_service(
    service: KubeObject,
    endpoint_slices: Iterable[KubeObject],
    *,
    cluster: str,
    cluster_id: int,
) -> ClusterService | None:
    """Mirror of Cilium's ``DefaultClusterServiceConverter.Convert`` (main): the exported
    ClusterService, or ``None`` when the key must be deleted because the Service is not shared
    (``service.cilium.io/global: "true"`` and shared not ``"false"``).

    The caller applies the other half of Cilium's rule: delete the key too when the Service's
    namespace is not global (:func:`~clustermesh_apiserver.converters.namespaces.namespace_is_global`).

    ``endpoint_slices`` may hold any slices; those of this Service (same namespace, label
    ``kubernetes.io/service-name``) are used, in name order, later ones overriding earlier ones
    for a repeated address. Deviations, both only for objects the API server would never store:
    a Service port without ``protocol`` counts as TCP (the API server defaults it), and empty
    cluster IPs are skipped instead of producing an unparsable ``""`` frontend.
    """
    if not is_shared_service(annotations_of(service)):
        return None
    name, namespace = name_of(service), namespace_of(service)
    spec = as_map(service.get("spec"))

    frontends: dict[str, PortConfiguration | None] = {}
    if not is_headless(service):
        ports: PortConfiguration = {}
        for port in map(as_map, as_list(spec.get("ports"))):
            protocol = as_str(port.get("protocol")) or "TCP"
            ports[as_str(port.get("name"))] = L4Addr(protocol=protocol, port=as_int(port.get("port")) & 0xFFFF)
        cluster_ips = [as_str(ip) for ip in as_list(spec.get("clusterIPs"))] or [as_str(spec.get("clusterIP"))]
        for ip in cluster_ips:
            if ip:
                frontends[ip] = dict(ports)

    backends: dict[str, PortConfiguration | None] = {}
    hostnames: dict[str, str] = {}
    zones: dict[str, BackendZone] = {}
    mine = [s for s in endpoint_slices if namespace_of(s) == namespace and endpoint_slice_service_name(s) == name]
    for slice_obj in sorted(mine, key=name_of):
        for ip, port_config, hostname, zone in endpoint_slice_backends(slice_obj):
            backends[ip] = port_config
            if hostname:
                hostnames[ip] = hostname
            if zone is not None:
                zones[ip] = zone

    return ClusterService(
        cluster=cluster,
        namespace=namespace,
        name=name,
        frontends=frontends,
        backends=backends,
        hostnames=hostnames,
        zones=zones,
        labels=labels_of(service) or {},
        selector=str_map(spec.get("selector")) or {},
        include_external=True,
        shared=True,
        cluster_id=cluster_id,
    )
