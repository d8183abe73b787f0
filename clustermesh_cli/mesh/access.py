"""Pure: a cluster's mesh facts from its Kubernetes objects (as the API's JSON dicts).

What ``clustermesh connect`` needs from each side, as cilium-cli reads it
(``cilium-cli/clustermesh/clustermesh.go``, reference §7): the cluster's name, ID and
max-connected-clusters from a ConfigMap, the CA and the remote client certificate from Secrets,
the clustermesh-apiserver Service's address, and the Nodes' pod CIDRs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from clustermesh_cli.install import names
from clustermesh_cli.install import secrets as install_secrets
from clustermesh_cli.mesh.peers import (
    APISERVER_SERVICE,
    CA_SECRET,
    CONFIG_KEY_CLUSTER_ID,
    CONFIG_KEY_CLUSTER_NAME,
    CONFIG_KEY_MAX_CONNECTED,
    REMOTE_CERT_SECRET,
    PeerAccess,
)
from meshcore.errors import ConfigError, MeshError
from meshcore.wire.clusterinfo import DEFAULT_MAX_CONNECTED_CLUSTERS

__all__ = [
    "ETCD_PORT",
    "NODEPORT_ADDRESSES_MAX",
    "MeshAccessError",
    "cluster_identity",
    "peer_access",
    "pod_cidrs",
    "secret_data",
    "service_address",
]

Obj = Mapping[str, Any]

ETCD_PORT = names.ETCD_PORT
# A NodePort is served by every node; a few node addresses let agents fail over between them.
NODEPORT_ADDRESSES_MAX = 3
_ETCD_PORT_NAMES = ("etcd", "apiserv", "clustermesh-apiserver")


class MeshAccessError(MeshError):
    """A cluster cannot be read for a connect: its API does not answer, a context is missing,
    or an object the mesh needs is absent or unusable. The message says what to do."""


def secret_data(secret: Obj) -> dict[str, bytes]:
    """A Secret's ``data`` decoded from base64 (the install's
    :func:`~clustermesh_cli.install.secrets.secret_data`), errors as :class:`MeshAccessError`."""
    try:
        return install_secrets.secret_data(secret)
    except ConfigError as err:
        raise MeshAccessError(str(err)) from None


def cluster_identity(data: Mapping[str, str], *, where: str) -> tuple[str, int, int]:
    """``(cluster name, cluster ID, max-connected-clusters)`` from ConfigMap ``data``."""
    name = (data.get(CONFIG_KEY_CLUSTER_NAME) or "").strip()
    raw_id = (data.get(CONFIG_KEY_CLUSTER_ID) or "").strip()
    if not name or not raw_id:
        missing = [k for k, v in ((CONFIG_KEY_CLUSTER_NAME, name), (CONFIG_KEY_CLUSTER_ID, raw_id)) if not v]
        raise MeshAccessError(
            f"{where} has no {' or '.join(missing)}: the cluster is not enabled for the mesh; run "
            "clustermesh enable with --cluster-name and --cluster-id first"
        )
    raw_max = (data.get(CONFIG_KEY_MAX_CONNECTED) or "").strip() or str(DEFAULT_MAX_CONNECTED_CLUSTERS)
    values = []
    for key, raw in ((CONFIG_KEY_CLUSTER_ID, raw_id), (CONFIG_KEY_MAX_CONNECTED, raw_max)):
        try:
            values.append(int(raw, 10))
        except ValueError:
            raise MeshAccessError(f"{where}: {key} is {raw!r}, not a number") from None
    return name, values[0], values[1]


def _etcd_port(ports: Sequence[Obj], *, what: str) -> Obj:
    if len(ports) == 1:
        return ports[0]
    for port in ports:
        if port.get("name") in _ETCD_PORT_NAMES:
            return port
    for port in ports:
        if port.get("port") == ETCD_PORT:
            return port
    listed = ", ".join(f"{p.get('name') or '?'}={p.get('port')}" for p in ports) or "none"
    raise MeshAccessError(f"{what} has no etcd port (named etcd, or port {ETCD_PORT}); its ports: {listed}")


def _ready(node: Obj) -> bool:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def _node_address(node: Obj) -> str | None:
    by_type: dict[str, str] = {}
    for addr in (node.get("status") or {}).get("addresses") or []:
        by_type.setdefault(str(addr.get("type")), str(addr.get("address") or ""))
    return by_type.get("InternalIP") or by_type.get("ExternalIP") or None


def service_address(service: Obj, nodes: Sequence[Obj], *, context: str) -> tuple[tuple[str, ...], int]:
    """``(addresses, port)`` at which other clusters reach the clustermesh-apiserver Service.

    NodePort: the InternalIP (else ExternalIP) of up to :data:`NODEPORT_ADDRESSES_MAX` nodes,
    Ready ones first, by name, with the nodePort. LoadBalancer: the ingress IPs (else hostnames)
    with the service port. Raises :class:`MeshAccessError` when there is no address yet."""
    meta = service.get("metadata") or {}
    what = f"Service {meta.get('namespace')}/{meta.get('name', APISERVER_SERVICE)} (context {context})"
    spec = service.get("spec") or {}
    kind = spec.get("type") or "ClusterIP"
    port = _etcd_port(spec.get("ports") or [], what=what)
    if kind == "NodePort":
        node_port = port.get("nodePort")
        if not node_port:
            raise MeshAccessError(f"{what} is a NodePort Service without a nodePort yet; retry in a moment")
        ordered = sorted(nodes, key=lambda n: (not _ready(n), str((n.get("metadata") or {}).get("name"))))
        addresses = [a for a in (_node_address(n) for n in ordered) if a][:NODEPORT_ADDRESSES_MAX]
        if not addresses:
            raise MeshAccessError(
                f"{what} is a NodePort Service, but no Node has an InternalIP or ExternalIP address yet; "
                "wait for the nodes to register and retry"
            )
        return tuple(addresses), int(node_port)
    if kind == "LoadBalancer":
        ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        ips = [str(i["ip"]) for i in ingress if i.get("ip")]
        names = [str(i["hostname"]) for i in ingress if i.get("hostname")]
        if not ips and not names:
            raise MeshAccessError(
                f"{what} is a LoadBalancer Service without an address yet (status.loadBalancer.ingress is "
                f"empty): wait until `kubectl --context {context} -n {meta.get('namespace')} get service "
                f"{meta.get('name')}` shows an EXTERNAL-IP and retry, or re-enable with --service-type NodePort"
            )
        return tuple(ips or names), int(port.get("port") or ETCD_PORT)
    raise MeshAccessError(
        f"{what} is of type {kind}, which other clusters cannot reach: re-enable the cluster with "
        "--service-type NodePort or --service-type LoadBalancer"
    )


def pod_cidrs(nodes: Sequence[Obj]) -> tuple[str, ...]:
    """Every Node's ``spec.podCIDRs`` (or the older ``spec.podCIDR``), without duplicates."""
    seen: dict[str, None] = {}
    for node in nodes:
        spec = node.get("spec") or {}
        for cidr in spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []):
            seen.setdefault(str(cidr), None)
    return tuple(seen)


def peer_access(addresses: tuple[str, ...], port: int, ca_data: Mapping[str, bytes],
                remote_data: Mapping[str, bytes], *, context: str) -> PeerAccess:
    """The :class:`PeerAccess` from the ``cilium-ca`` and ``clustermesh-apiserver-remote-cert``
    Secrets' decoded data (the CA is ``ca.crt``, else ``tls.crt``, as cilium-cli reads it)."""
    ca = ca_data.get("ca.crt") or ca_data.get("tls.crt")
    if not ca:
        raise MeshAccessError(
            f"Secret {CA_SECRET} (context {context}) has neither ca.crt nor tls.crt; re-run clustermesh enable"
        )
    missing = [k for k in ("tls.crt", "tls.key") if not remote_data.get(k)]
    if missing:
        raise MeshAccessError(
            f"Secret {REMOTE_CERT_SECRET} (context {context}) has no {' or '.join(missing)}; re-run "
            "clustermesh enable to reissue it"
        )
    return PeerAccess(addresses=addresses, port=port, ca_crt=ca, client_crt=remote_data["tls.crt"],
                      client_key=remote_data["tls.key"])
