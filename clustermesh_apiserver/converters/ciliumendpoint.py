"""CiliumEndpoint / CiliumEndpointSlice -> ipcache entries (``cilium/state/ip/v1/default/<ip>``,
reference §1.8).

One :class:`IPIdentityPair` per IPv4 and IPv6 address of every endpoint. Several objects may
claim the same IP; :mod:`clustermesh_apiserver.converters.ownership` decides which one is written.
"""

from __future__ import annotations

from typing import Any

from clustermesh_apiserver.converters._k8s import (
    KubeObject,
    as_int,
    as_list,
    as_map,
    as_str,
    metadata,
    name_of,
    namespace_of,
    parse_ip,
)
from meshcore.wire.ipidentity import IPIdentityPair, NamedPort

__all__ = [
    "cilium_endpoint_to_pairs",
    "cilium_endpoint_slice_to_pairs",
    "cilium_endpoint_owner",
    "cilium_endpoint_slice_owner",
    "cilium_endpoint_slice_namespace",
    "pod_uid_from_owner_references",
]


def pod_uid_from_owner_references(obj: KubeObject) -> str:
    """The UID of the first ``kind: Pod`` owner reference (how a CiliumEndpoint names its pod)."""
    for ref in as_list(metadata(obj).get("ownerReferences")):
        ref = as_map(ref)
        if as_str(ref.get("kind")) == "Pod":
            return as_str(ref.get("uid"))
    return ""


def _named_ports(value: Any) -> list[NamedPort] | None:
    ports = [
        NamedPort(
            name=as_str(p.get("name")),
            port=as_int(p.get("port")) & 0xFFFF,
            protocol=as_str(p.get("protocol")),
        )
        for p in map(as_map, as_list(value))
    ]
    return ports or None


def _pairs(
    networking: Any,
    *,
    identity: int,
    key: int,
    namespace: str,
    pod_name: str,
    pod_uid: str,
    service_account: str,
    named_ports: list[NamedPort] | None,
) -> list[IPIdentityPair]:
    networking = as_map(networking)
    host_ip = parse_ip(networking.get("node")) or ""
    pairs: list[IPIdentityPair] = []
    for address in map(as_map, as_list(networking.get("addressing"))):
        for field in ("ipv4", "ipv6"):
            ip = parse_ip(address.get(field))
            if ip is None:  # empty (skipped by Cilium) or unparsable (unusable as a key)
                continue
            pairs.append(
                IPIdentityPair(
                    ip=ip,
                    host_ip=host_ip,
                    id=identity & 0xFFFFFFFF,
                    key=key & 0xFF,
                    k8s_namespace=namespace,
                    k8s_pod_name=pod_name,
                    k8s_pod_uid=pod_uid,
                    k8s_service_account=service_account,
                    named_ports=named_ports,
                )
            )
    return pairs


def cilium_endpoint_to_pairs(obj: KubeObject) -> list[IPIdentityPair]:
    """Mirror of the clustermesh-apiserver's ``ciliumEndpointMapper``.

    ``HostIP`` is ``status.networking.node``, ``ID`` ``status.identity.id``, ``Key``
    ``status.encryption.key``, ``K8sPodName``/``K8sNamespace`` the CEP's own name and namespace,
    ``K8sPodUID`` the UID of its ``Pod`` owner reference, ``K8sServiceAccount``
    ``status.service-account`` and ``NamedPorts`` ``status.named-ports``.
    """
    status = as_map(obj.get("status"))
    return _pairs(
        status.get("networking"),
        identity=as_int(as_map(status.get("identity")).get("id")),
        key=as_int(as_map(status.get("encryption")).get("key")),
        namespace=namespace_of(obj),
        pod_name=name_of(obj),
        pod_uid=pod_uid_from_owner_references(obj),
        service_account=as_str(status.get("service-account")),
        named_ports=_named_ports(status.get("named-ports")),
    )


def cilium_endpoint_slice_namespace(obj: KubeObject) -> str:
    """The namespace of a (cluster-scoped) CiliumEndpointSlice: its top-level ``namespace``."""
    return as_str(obj.get("namespace"))


def cilium_endpoint_slice_to_pairs(obj: KubeObject) -> list[IPIdentityPair]:
    """Mirror of the clustermesh-apiserver's ``ciliumEndpointSliceMapper``: every endpoint of the
    slice as in :func:`cilium_endpoint_to_pairs`, with the slice's ``namespace``, the
    endpoint's ``name``, ``id``, ``encryption.key``, ``pod-uid``, ``service-account`` and
    ``named-ports``."""
    namespace = cilium_endpoint_slice_namespace(obj)
    pairs: list[IPIdentityPair] = []
    for endpoint in map(as_map, as_list(obj.get("endpoints"))):
        pairs.extend(
            _pairs(
                endpoint.get("networking"),
                identity=as_int(endpoint.get("id")),
                key=as_int(as_map(endpoint.get("encryption")).get("key")),
                namespace=namespace,
                pod_name=as_str(endpoint.get("name")),
                pod_uid=as_str(endpoint.get("pod-uid")),
                service_account=as_str(endpoint.get("service-account")),
                named_ports=_named_ports(endpoint.get("named-ports")),
            )
        )
    return pairs


def cilium_endpoint_owner(obj: KubeObject) -> tuple[str, str]:
    """The ownership key of a CiliumEndpoint: ``(namespace, name)``."""
    return (namespace_of(obj), name_of(obj))


def cilium_endpoint_slice_owner(obj: KubeObject) -> tuple[str, str]:
    """The ownership key of a (cluster-scoped) CiliumEndpointSlice: ``("", name)``."""
    return ("", name_of(obj))
