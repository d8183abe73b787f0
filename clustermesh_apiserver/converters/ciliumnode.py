"""CiliumNode -> ``nodeTypes.Node`` (``cilium/state/nodes/v1/<cluster>/<name>``, reference §1.6)."""

from __future__ import annotations

from clustermesh_apiserver.converters._k8s import (
    KubeObject,
    annotations_of,
    as_int,
    as_list,
    as_map,
    as_str,
    labels_of,
    name_of,
    parse_cidr,
    parse_ip,
    parse_v4,
    parse_v6,
)
from clustermesh_apiserver.converters.annotations import (
    WIREGUARD_PUB_KEY,
    WIREGUARD_PUB_KEY_ALIAS,
    get_annotation,
)
from meshcore.wire.node import CIDR, Node, NodeAddress

__all__ = ["SOURCE_CUSTOM_RESOURCE", "cilium_node_to_node", "AllocCIDRs"]

SOURCE_CUSTOM_RESOURCE = "custom-resource"
"""``source.CustomResource``: the ``Source`` of nodes parsed from a CiliumNode."""


class AllocCIDRs:
    """Go's ``Node.appendAllocCDIR``: the first CIDR of each family becomes the primary alloc
    CIDR, later ones are appended to the secondary list (``None`` = nil until one is)."""

    def __init__(self) -> None:
        self.v4: CIDR | None = None
        self.v6: CIDR | None = None
        self.v4_secondary: list[CIDR | None] | None = None
        self.v6_secondary: list[CIDR | None] | None = None

    def append(self, cidr: CIDR) -> None:
        """Add one CIDR to its family."""
        if ":" not in cidr.ip:
            if self.v4 is None:
                self.v4 = cidr
            else:
                self.v4_secondary = [*(self.v4_secondary or []), cidr]
        elif self.v6 is None:
            self.v6 = cidr
        else:
            self.v6_secondary = [*(self.v6_secondary or []), cidr]

    def append_text(self, text: object) -> None:
        """Parse and add ``text``; invalid CIDRs are silently ignored, as Cilium does."""
        cidr = parse_cidr(text)
        if cidr is not None:
            self.append(cidr)


def cilium_node_to_node(obj: KubeObject, *, cluster: str, cluster_id: int) -> Node:
    """Mirror of Cilium's ``nodeTypes.ParseCiliumNode`` followed by the clustermesh-apiserver's
    ``CiliumNodeConverter`` (which sets ``Cluster`` and ``ClusterID``).

    Invalid IPs and CIDRs are silently dropped. Alloc CIDRs come from ``spec.ipam.podCIDRs`` then
    ``spec.ipam.pools.allocated[].cidrs``; health and ingress IPs are taken only when they are of
    the right family; ``Labels``/``Annotations`` are ``null`` when the object has none.
    """
    spec = as_map(obj.get("spec"))
    ipam = as_map(spec.get("ipam"))
    cidrs = AllocCIDRs()
    for text in as_list(ipam.get("podCIDRs")):
        cidrs.append_text(text)
    for pool in as_list(as_map(ipam.get("pools")).get("allocated")):
        for text in as_list(as_map(pool).get("cidrs")):
            cidrs.append_text(text)

    addresses: list[NodeAddress] | None = None
    for entry in as_list(spec.get("addresses")):
        entry = as_map(entry)
        ip = parse_ip(entry.get("ip"))
        if ip is not None:
            addresses = [*(addresses or []), NodeAddress(type=as_str(entry.get("type")), ip=ip)]

    health = as_map(spec.get("health"))
    ingress = as_map(spec.get("ingress"))
    annotations = annotations_of(obj)
    return Node(
        name=name_of(obj),
        cluster=cluster,
        ip_addresses=addresses,
        ipv4_alloc_cidr=cidrs.v4,
        ipv4_secondary_alloc_cidrs=cidrs.v4_secondary,
        ipv6_alloc_cidr=cidrs.v6,
        ipv6_secondary_alloc_cidrs=cidrs.v6_secondary,
        ipv4_health_ip=parse_v4(health.get("ipv4")) or "",
        ipv6_health_ip=parse_v6(health.get("ipv6")) or "",
        ipv4_ingress_ip=parse_v4(ingress.get("ipv4")) or "",
        ipv6_ingress_ip=parse_v6(ingress.get("ipv6")) or "",
        cluster_id=cluster_id,
        source=SOURCE_CUSTOM_RESOURCE,
        encryption_key=as_int(as_map(spec.get("encryption")).get("key")) & 0xFF,
        labels=labels_of(obj),
        annotations=annotations,
        wireguard_pub_key=get_annotation(annotations, WIREGUARD_PUB_KEY, WIREGUARD_PUB_KEY_ALIAS) or "",
        boot_id=as_str(spec.get("bootid")),
    )
