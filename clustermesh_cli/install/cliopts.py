"""The install options as click flags, shared by ``clustermesh enable`` and the render command.

``@install_options`` adds every manifest-shaping flag except ``--cluster-name``/``--cluster-id``
(the caller owns those: ``enable`` may derive them from the context); :func:`options_from_params`
turns the parsed values into :class:`InstallOptions`, mapping its errors to
:class:`click.UsageError`. Unset flags keep the dataclass defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from clustermesh_cli.install import names
from clustermesh_cli.install.options import (
    DEFAULT_WIREGUARD_DEVICE,
    ENCRYPTION_MODES,
    ENCRYPTION_SCOPES,
    MAX_CONNECTED_CLUSTERS,
    ROUTING_MODES,
    SERVICE_TYPES,
    SOURCES,
    InstallOptions,
    InstallOptionsError,
)
from meshcore.duration import Duration

__all__ = ["INSTALL_PARAMS", "install_options", "options_from_params"]

F = TypeVar("F", bound=Callable[..., Any])

_OPTIONS: tuple[Callable[[Any], Any], ...] = (
    click.option("--namespace", default=None, help="Namespace of the install.  [default: kube-system]"),
    click.option("--image", default=None, help="Image of every container (built from the Containerfile).  "
                 "[default: ghcr.io/clustermesh-py/clustermesh:<version>]"),
    click.option("--etcd-image", default=None, help="Image of the etcd container (any with etcd on its PATH, e.g. "
                 "quay.io/coreos/etcd:v3.5.x).  [default: --image]"),
    click.option("--service-type", type=click.Choice(SERVICE_TYPES), default=None,
                 help="How peers reach the clustermesh-apiserver Service.  [default: NodePort]"),
    click.option("--node-port", type=click.IntRange(1, 65535), default=None,
                 help=f"nodePort with --service-type NodePort.  [default: {names.DEFAULT_NODE_PORT}]"),
    click.option("--source", type=click.Choice(SOURCES), default=None,
                 help="What the API server exports: Cilium's CRDs, or plain Nodes and Pods (clusters "
                 "without Cilium, e.g. kind with kindnet).  [default: cilium]"),
    click.option("--max-connected-clusters", type=click.Choice([str(v) for v in MAX_CONNECTED_CLUSTERS]),
                 default=None, help="255 or 511, the same on every cluster of the mesh.  [default: 255]"),
    click.option("--routing-mode", type=click.Choice(ROUTING_MODES), default=None,
                 help="The agents' datapath mode, the same on every cluster.  [default: tunnel]"),
    click.option("--clustermesh-enable-mcs-api", "enable_mcs_api", is_flag=True, default=None,
                 help="Export ServiceExports (needs the multicluster.x-k8s.io CRDs)."),
    click.option("--enable-cilium-endpoint-slice", is_flag=True, default=None,
                 help="Read pod IPs from CiliumEndpointSlices (--source cilium)."),
    click.option("--cgroup-root", default=None, help="The nodes' cgroup v2 hierarchy (/sys/fs/cgroup/unified on a "
                 "hybrid mount).  [default: /sys/fs/cgroup]"),
    click.option("--underlay-device", default=None, metavar="IFNAME",
                 help="The nodes' device for node-to-node traffic.  [default: the agent's choice]"),
    click.option("--encryption", type=click.Choice(ENCRYPTION_MODES), default=None,
                 help="Transparent encryption of pod traffic between nodes, in this cluster and to every "
                 "connected one: wireguard gives each agent a WireGuard device (port 51871/udp) and key, "
                 "publishes the public key on its Node/CiliumNode (annotation network.cilium.io/wg-pub-key) "
                 "and peers with every other node of the mesh. Use the same mode on every cluster (Cilium "
                 "supports no mixed mode). Cilium: Helm encryption.enabled=true, encryption.type=wireguard.  "
                 "[default: none]"),
    click.option("--encryption-scope", type=click.Choice(ENCRYPTION_SCOPES), default=None,
                 help="With --encryption wireguard: encrypt all pod traffic between nodes, or only traffic "
                 "between clusters (inter-cluster; traffic inside this cluster stays plain). No Cilium "
                 "equivalent (Cilium encrypts all).  [default: all]"),
    click.option("--node-encryption/--no-node-encryption", default=None,
                 help="With --encryption wireguard: also encrypt node-to-node, pod-to-node and node-to-pod "
                 "traffic (nodes matching the agent's --node-encryption-opt-out-labels opt out; Cilium's "
                 "default is node-role.kubernetes.io/control-plane). Cilium: Helm "
                 "encryption.nodeEncryption=true.  [default: off]"),
    click.option("--encryption-strict-mode-cidr", default=None, metavar="CIDR",
                 help="With --encryption wireguard: drop, instead of sending in the clear, pod traffic to "
                 "another node when source and destination are both in this IPv4 CIDR (e.g. the mesh's pod "
                 "CIDRs) and the destination is not reached through WireGuard (no peer or key yet). Cilium: Helm "
                 "encryption.strictMode.enabled=true, encryption.strictMode.cidr=CIDR."),
    click.option("--wireguard-device", default=None, metavar="IFNAME",
                 help="With --encryption wireguard: the agents' WireGuard device; a literal {hash} becomes 8 "
                 "hex characters per node (for hosts where device names are global, like wireguard-go's "
                 "sockets in /var/run/wireguard). Cilium: always cilium_wg0.  "
                 f"[default: {DEFAULT_WIREGUARD_DEVICE}]"),
    click.option("--wireguard-key-rotation-interval", type=Duration(allow_zero=True), default=None,
                 metavar="DURATION",
                 help="With --encryption wireguard: each agent rotates its node's WireGuard key when it is this "
                 "old (seconds, or 720h, 30m ...; 0 = off), make-before-break through a transition device, "
                 "without losing packets; `clustermesh encryption rotate` rotates on demand. No Cilium "
                 "equivalent (Cilium keeps a node's key).  [default: 0, off]"),
)

#: The parameter names ``@install_options`` adds (all fields of :class:`InstallOptions`).
INSTALL_PARAMS = ("namespace", "image", "etcd_image", "service_type", "node_port", "source", "max_connected_clusters",
                  "routing_mode", "enable_mcs_api", "enable_cilium_endpoint_slice", "cgroup_root", "underlay_device",
                  "encryption", "encryption_scope", "node_encryption", "encryption_strict_mode_cidr",
                  "wireguard_device", "wireguard_key_rotation_interval")


def install_options(f: F) -> F:
    """Add the install flags to a click command (its function receives them by name)."""
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def options_from_params(cluster_name: str, cluster_id: int, **params: Any) -> InstallOptions:
    """:class:`InstallOptions` from the flags' values (None means unset); ``click.UsageError`` when
    they are invalid. Keys other than :data:`INSTALL_PARAMS` are rejected (a caller's mistake)."""
    unknown = set(params) - set(INSTALL_PARAMS)
    if unknown:
        raise TypeError(f"not install options: {', '.join(sorted(unknown))}")
    values = {k: v for k, v in params.items() if v is not None}
    if "max_connected_clusters" in values:
        values["max_connected_clusters"] = int(values["max_connected_clusters"])
    try:
        return InstallOptions(cluster_name=cluster_name, cluster_id=cluster_id, **values)
    except InstallOptionsError as err:
        raise click.UsageError(str(err)) from None
