"""ServiceExport + Service -> ``MCSAPIServiceSpec`` (``cilium/state/serviceexports/v1/...``,
reference §1.10; Cilium's ``FromCiliumServiceToMCSAPIServiceSpec``)."""

from __future__ import annotations

from clustermesh_apiserver.converters._k8s import (
    KubeObject,
    as_int,
    as_list,
    as_map,
    as_str,
    metadata,
    name_of,
    namespace_of,
    parse_time,
    str_map,
)
from meshcore.wire.serviceexport import ClientIPConfig, MCSAPIServiceSpec, ServicePort, SessionAffinityConfig

__all__ = ["SERVICE_EXPORT_API_VERSION", "service_valid_for_export", "service_export_to_spec"]

SERVICE_EXPORT_API_VERSION = "multicluster.x-k8s.io/v1beta1"
"""The ServiceExport version the newest Cilium requires (its CRD must serve ``v1beta1``)."""


def service_valid_for_export(service: KubeObject) -> bool:
    """Cilium's ``CheckLocalSlimSvcValidForExport``: every type but ``ExternalName``."""
    return as_str(as_map(service.get("spec")).get("type")) != "ExternalName"


def service_export_to_spec(
    service_export: KubeObject, service: KubeObject, *, cluster: str
) -> MCSAPIServiceSpec | None:
    """Mirror of Cilium's ``FromCiliumServiceToMCSAPIServiceSpec``, or ``None`` when the
    Service cannot be exported (``ExternalName``: the key must be deleted).

    From the Service: ``ports`` (name, protocol, appProtocol, port; ``[]`` when none),
    ``type`` (``Headless`` when ``spec.clusterIP`` is exactly ``None``, else ``ClusterSetIP``),
    ``sessionAffinity`` verbatim, ``sessionAffinityConfig`` only with a ClientIP timeout,
    ``ipFamilies``, ``internalTrafficPolicy``, ``trafficDistribution``. From the ServiceExport:
    ``annotations``/``labels`` (``spec.exportedAnnotations``/``spec.exportedLabels``) and
    ``exportCreationTimestamp`` (its ``metadata.creationTimestamp``).

    The caller must delete the key instead when the namespace is not global, or when either
    object is missing (Cilium's ``syncMCSAPIServiceSpec``).
    """
    if not service_valid_for_export(service):
        return None
    spec = as_map(service.get("spec"))
    ports = []
    for port in map(as_map, as_list(spec.get("ports"))):
        app_protocol = port.get("appProtocol")
        ports.append(
            ServicePort(
                name=as_str(port.get("name")),
                protocol=as_str(port.get("protocol")),
                app_protocol=None if app_protocol is None else as_str(app_protocol),
                port=as_int(port.get("port")),
            )
        )
    affinity_config = None
    timeout = as_map(as_map(spec.get("sessionAffinityConfig")).get("clientIP")).get("timeoutSeconds")
    if timeout is not None:
        affinity_config = SessionAffinityConfig(client_ip=ClientIPConfig(timeout_seconds=as_int(timeout)))
    itp = spec.get("internalTrafficPolicy")
    distribution = spec.get("trafficDistribution")
    export_spec = as_map(service_export.get("spec"))
    return MCSAPIServiceSpec(
        cluster=cluster,
        name=name_of(service),
        namespace=namespace_of(service),
        annotations=str_map(export_spec.get("exportedAnnotations")),
        labels=str_map(export_spec.get("exportedLabels")),
        export_creation_timestamp=parse_time(metadata(service_export).get("creationTimestamp")),
        ports=ports,
        type="Headless" if as_str(spec.get("clusterIP")) == "None" else "ClusterSetIP",
        session_affinity=as_str(spec.get("sessionAffinity")),
        session_affinity_config=affinity_config,
        ip_families=[as_str(f) for f in as_list(spec.get("ipFamilies"))] or None,
        internal_traffic_policy=None if itp is None else as_str(itp),
        traffic_distribution=None if distribution is None else as_str(distribution),
    )
