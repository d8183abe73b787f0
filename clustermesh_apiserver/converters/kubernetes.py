"""Kubernetes mode: clusters whose CNI is not Cilium have no CiliumNodes, CiliumIdentities or
CiliumEndpoints, so the apiserver derives them from core Nodes and Pods, following the rules the
Cilium agent uses for the same objects.
"""

from __future__ import annotations

from typing import Any

from clustermesh_apiserver.converters._k8s import (
    KubeObject,
    annotations_of,
    as_list,
    as_map,
    as_str,
    labels_of,
    name_of,
    namespace_of,
    parse_ip,
    parse_v4,
    parse_v6,
)
from clustermesh_apiserver.converters.annotations import (
    WIREGUARD_NEXT_PUB_KEY,
    WIREGUARD_PUB_KEY,
    WIREGUARD_PUB_KEY_ALIAS,
    get_annotation,
)
from clustermesh_apiserver.converters.ciliumnode import AllocCIDRs
from clustermesh_apiserver.converters.labelfilter import DEFAULT_LABEL_FILTER, LabelFilter
from meshcore.wire.identity import CLUSTER_LABEL, Label, LabelSet
from meshcore.wire.ipidentity import IPIdentityPair, NamedPort
from meshcore.wire.node import Node, NodeAddress

__all__ = [
    "SOURCE_KUBERNETES",
    "CILIUM_ANNOTATION_PREFIX",
    "node_to_node",
    "pod_identity_labels",
    "pod_to_pairs",
    "pod_is_exported",
]

SOURCE_KUBERNETES = "k8s"
"""``source.Kubernetes``: the ``Source`` of nodes parsed from a core Node."""

CILIUM_ANNOTATION_PREFIX = "cilium.io/"
"""Only annotations whose key contains a ``cilium.io/`` domain are propagated (Cilium's
``CiliumPrefixRegex``), and :data:`~.annotations.WIREGUARD_NEXT_PUB_KEY`."""

LABEL_SOURCE_K8S = "k8s"
POD_NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
NAMESPACE_META_LABELS = "io.cilium.k8s.namespace.labels"
SERVICE_ACCOUNT_LABEL = "io.cilium.k8s.policy.serviceaccount"
CILIUM_K8S_LABEL_PREFIX = "io.cilium.k8s"

# Node annotations Cilium reads when it annotates core Nodes (``pkg/annotation/k8s.go``).
_ANN_V4_CIDR = "network.cilium.io/ipv4-pod-cidr"
_ANN_V6_CIDR = "network.cilium.io/ipv6-pod-cidr"
_ANN_V4_HEALTH = "network.cilium.io/ipv4-health-ip"
_ANN_V6_HEALTH = "network.cilium.io/ipv6-health-ip"
_ANN_V4_INGRESS = "network.cilium.io/ipv4-Ingress-ip"
_ANN_V6_INGRESS = "network.cilium.io/ipv6-Ingress-ip"
_ANN_V4_HOST = "network.cilium.io/ipv4-cilium-host"
_ANN_V6_HOST = "network.cilium.io/ipv6-cilium-host"
_ANN_ENCRYPTION_KEY = "network.cilium.io/encryption-key"


def _is_exported_annotation(key: str) -> bool:
    if key == WIREGUARD_NEXT_PUB_KEY:  # this mesh's own, not Cilium's (only it of clustermesh.io)
        return True
    domain, sep, _ = key.partition("/")
    return bool(sep) and (domain == "cilium.io" or domain.endswith(".cilium.io"))


def node_to_node(node: KubeObject, *, cluster: str, cluster_id: int) -> Node:
    """Mirror of Cilium's ``k8s.ParseNode`` (with node annotations enabled) for a core Node,
    plus ``Cluster``/``ClusterID``, the WireGuard key annotation and the boot ID.

    * ``IPAddresses``: ``status.addresses`` of type InternalIP and ExternalIP, the first of each
      (type, family); Hostname/InternalDNS entries are not IPs and are ignored, as in Cilium.
      ``network.cilium.io/ipv{4,6}-cilium-host`` add CiliumInternalIP entries.
    * Alloc CIDRs: ``spec.podCIDRs`` (at most 2; else ``spec.podCIDR``), falling back to the
      ``network.cilium.io/ipv{4,6}-pod-cidr`` annotations.
    * Health/ingress IPs and the encryption key from their ``network.cilium.io/`` annotations.
    * ``Labels``: all node labels (``{}`` when none); ``Annotations``: only ``*cilium.io/`` ones
      and ``clustermesh.io/wg-next-pub-key`` (a rotating node's next WireGuard key).
    * ``WireguardPubKey``: ``network.cilium.io/wg-pub-key``; ``BootID``:
      ``status.nodeInfo.bootID``; ``Source``: ``k8s``.
    """
    spec = as_map(node.get("spec"))
    status = as_map(node.get("status"))
    raw_annotations = annotations_of(node) or {}

    addresses: list[NodeAddress] = []
    seen: set[tuple[str, bool]] = set()
    for entry in map(as_map, as_list(status.get("addresses"))):
        kind = as_str(entry.get("type"))
        if kind not in ("InternalIP", "ExternalIP"):
            continue
        ip = parse_ip(entry.get("address"))
        if ip is None or (kind, ":" in ip) in seen:
            continue
        seen.add((kind, ":" in ip))
        addresses.append(NodeAddress(type=kind, ip=ip))
    for ann in (_ANN_V4_HOST, _ANN_V6_HOST):
        ip = parse_ip(raw_annotations.get(ann))
        if ip is not None:
            addresses.append(NodeAddress(type="CiliumInternalIP", ip=ip))

    cidrs = AllocCIDRs()
    pod_cidrs = as_list(spec.get("podCIDRs"))
    if pod_cidrs:
        if len(pod_cidrs) <= 2:
            for text in pod_cidrs:
                cidrs.append_text(text)
    elif spec.get("podCIDR"):
        cidrs.append_text(spec.get("podCIDR"))
    if cidrs.v4 is None:
        cidrs.append_text(raw_annotations.get(_ANN_V4_CIDR))
    if cidrs.v6 is None:
        cidrs.append_text(raw_annotations.get(_ANN_V6_CIDR))

    key_text = raw_annotations.get(_ANN_ENCRYPTION_KEY, "")
    encryption_key = int(key_text) if key_text.isdigit() and int(key_text) <= 0xFF else 0

    return Node(
        name=name_of(node),
        cluster=cluster,
        ip_addresses=addresses,
        ipv4_alloc_cidr=cidrs.v4,
        ipv4_secondary_alloc_cidrs=cidrs.v4_secondary,
        ipv6_alloc_cidr=cidrs.v6,
        ipv6_secondary_alloc_cidrs=cidrs.v6_secondary,
        ipv4_health_ip=parse_ip(raw_annotations.get(_ANN_V4_HEALTH)) or "",
        ipv6_health_ip=parse_ip(raw_annotations.get(_ANN_V6_HEALTH)) or "",
        ipv4_ingress_ip=parse_ip(raw_annotations.get(_ANN_V4_INGRESS)) or "",
        ipv6_ingress_ip=parse_ip(raw_annotations.get(_ANN_V6_INGRESS)) or "",
        cluster_id=cluster_id,
        source=SOURCE_KUBERNETES,
        encryption_key=encryption_key,
        labels=labels_of(node) or {},
        annotations={k: v for k, v in raw_annotations.items() if _is_exported_annotation(k)},
        wireguard_pub_key=get_annotation(raw_annotations, WIREGUARD_PUB_KEY, WIREGUARD_PUB_KEY_ALIAS) or "",
        boot_id=as_str(as_map(status.get("nodeInfo")).get("bootID")),
    )


def pod_identity_labels(
    pod: KubeObject,
    namespace: KubeObject | None,
    *,
    cluster: str,
    label_filter: LabelFilter = DEFAULT_LABEL_FILTER,
) -> LabelSet:
    """Mirror of Cilium's ``SanitizePodLabels`` followed by the identity label filter.

    Pod labels (minus any ``io.cilium.k8s*`` ones a user may have set) get the ``k8s`` source;
    each namespace label ``k`` becomes ``k8s:io.cilium.k8s.namespace.labels.<k>``; then
    ``k8s:io.kubernetes.pod.namespace``, ``k8s:io.cilium.k8s.policy.serviceaccount`` (when the
    pod has one) and ``k8s:io.cilium.k8s.policy.cluster`` are forced. Labels the default filter
    excludes (``pod-template-hash``, ``controller-revision-hash``, other ``kubernetes.io``
    labels, ...) are dropped; see :mod:`clustermesh_apiserver.converters.labelfilter`.
    """
    merged: dict[str, str] = {
        k: v for k, v in (labels_of(pod) or {}).items() if not k.startswith(CILIUM_K8S_LABEL_PREFIX)
    }
    ns_name = namespace_of(pod)
    if namespace is not None:
        ns_name = name_of(namespace) or ns_name
        for k, v in (labels_of(namespace) or {}).items():
            merged[f"{NAMESPACE_META_LABELS}.{k}"] = v
    merged[POD_NAMESPACE_LABEL] = ns_name
    service_account = as_str(as_map(pod.get("spec")).get("serviceAccountName"))
    if service_account:
        merged[SERVICE_ACCOUNT_LABEL] = service_account
    else:
        merged.pop(SERVICE_ACCOUNT_LABEL, None)
    merged[CLUSTER_LABEL] = cluster
    labels = (Label(LABEL_SOURCE_K8S, k, v) for k, v in merged.items() if k and "=" not in k and ";" not in k + v)
    return LabelSet.from_labels(label_filter.filter(labels))


def pod_is_exported(pod: KubeObject) -> bool:
    """Whether a pod's IPs belong in the ipcache: not host-network (its IPs are the node's)
    and not terminated (``Succeeded``/``Failed`` pods no longer own their IPs)."""
    if as_map(pod.get("spec")).get("hostNetwork") is True:
        return False
    return as_str(as_map(pod.get("status")).get("phase")) not in ("Succeeded", "Failed")


def _pod_named_ports(pod: KubeObject) -> list[NamedPort] | None:
    ports: list[NamedPort] = []
    seen: set[str] = set()
    spec = as_map(pod.get("spec"))
    for container in map(as_map, as_list(spec.get("containers"))):
        for port in map(as_map, as_list(container.get("ports"))):
            name = as_str(port.get("name"))
            number: Any = port.get("containerPort")
            if not name or name in seen or not isinstance(number, int):
                continue
            seen.add(name)
            ports.append(NamedPort(name=name, port=number & 0xFFFF, protocol=as_str(port.get("protocol")) or "TCP"))
    return ports or None


def pod_to_pairs(pod: KubeObject, identity: int, *, host_ip: str, encryption_key: int = 0) -> list[IPIdentityPair]:
    """ipcache entries for a pod, shaped as the clustermesh-apiserver writes them for a
    CiliumEndpoint: one per ``status.podIPs`` entry (``status.podIP`` as fallback), with
    ``HostIP`` = ``host_ip`` (the node IP, tunnel endpoint), the pod's name, namespace, UID and
    service account, and its named container ports. Host-network and terminated pods give no
    entries (see :func:`pod_is_exported`)."""
    if not pod_is_exported(pod):
        return []
    status = as_map(pod.get("status"))
    texts = [as_map(entry).get("ip") for entry in as_list(status.get("podIPs"))] or [status.get("podIP")]
    ips: list[str] = []
    for text in texts:
        ip = parse_v4(text) or parse_v6(text)
        if ip is not None and ip not in ips:
            ips.append(ip)
    named_ports = _pod_named_ports(pod)
    meta = as_map(pod.get("metadata"))
    return [
        IPIdentityPair(
            ip=ip,
            host_ip=parse_ip(host_ip) or "",
            id=identity,
            key=encryption_key & 0xFF,
            k8s_namespace=namespace_of(pod),
            k8s_pod_name=name_of(pod),
            k8s_pod_uid=as_str(meta.get("uid")),
            k8s_service_account=as_str(as_map(pod.get("spec")).get("serviceAccountName")),
            named_ports=named_ports,
        )
        for ip in ips
    ]
