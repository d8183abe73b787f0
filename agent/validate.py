"""What the agent checks before remote data may enter its caches (reference §1.6-§1.9).

Pure functions: each takes a decoded record, the key suffix it came from (the watch store's
*name*) and the :class:`RemoteInfo` of the cluster it was read from, and returns the record as the
agent keeps it, or raises :class:`~meshcore.errors.WireError` naming the key and the field. The
watch store turns that error into "skip, count, log once per key", so bad remote data never
reaches a cache, the desired state or a map.

Receiver rules, as Cilium applies them:

- nodes (``pkg/node/store``): ``Cluster`` is the remote's name, ``Name`` the key suffix,
  ``ClusterID`` the remote config's ID; ``Source`` is rewritten to ``clustermesh``;
- services (``pkg/clustermesh/store``): ``cluster``/``namespace``/``name`` non-empty and equal to
  the remote and the key suffix, ``clusterID`` the remote config's ID;
- ipcache pairs (``pkg/ipcache/kvstore.go``): the key suffix is ``PrefixString()``; the ID lies in
  the remote's identity range unless it is reserved (< 256); ID 1 (host) becomes 6 (remote-node);
- identities (``pkg/identity/cache/allocator.go``): the ID lies in the remote's range and the labels
  carry ``k8s:io.cilium.k8s.policy.cluster=<remote>``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from meshcore.errors import WireError
from meshcore.wire import (
    CLUSTER_LABEL,
    ClusterService,
    IPIdentityPair,
    LabelSet,
    Node,
    decode_identity,
    decode_ip_identity,
    decode_node,
    decode_service,
)
from meshcore.wire.clusterinfo import DEFAULT_MAX_CONNECTED_CLUSTERS, MIN_LOCAL_IDENTITY, identity_range
from meshcore.wire.netaddr import canonical_ip

__all__ = [
    "RESERVED_HOST",
    "RESERVED_REMOTE_NODE",
    "RemoteInfo",
    "RemoteIdentity",
    "validate_node",
    "validate_service",
    "validate_ip",
    "validate_identity",
    "node_decoder",
    "service_decoder",
    "ip_decoder",
    "identity_decoder",
]

RESERVED_HOST = 1
RESERVED_REMOTE_NODE = 6
SOURCE_CLUSTERMESH = "clustermesh"

@dataclass(frozen=True, slots=True)
class RemoteInfo:
    """The remote cluster data is read from: its name (the config file's name), the ``id`` of
    its cluster config, and the mesh's ``max-connected-clusters`` (255 or 511)."""

    name: str
    cluster_id: int
    max_connected_clusters: int = DEFAULT_MAX_CONNECTED_CLUSTERS
    _range: tuple[int, int] | None = field(default=None, init=False, repr=False, compare=False)

    def identity_range(self) -> tuple[int, int]:
        """Inclusive range of the identities this remote may allocate."""
        cached = self._range
        if cached is None:  # computed once: it is checked for every entry of the remote
            cached = identity_range(self.cluster_id, self.max_connected_clusters)
            object.__setattr__(self, "_range", cached)
        return cached

    def check_identity(self, identity: int, *, field: str, allow_reserved: bool) -> None:
        """Raise unless ``identity`` is in this remote's range (or reserved, if allowed)."""
        if allow_reserved and 0 < identity < MIN_LOCAL_IDENTITY:
            return
        low, high = self.identity_range()
        if not low <= identity <= high:
            raise WireError(
                f"identity {identity} is outside cluster {self.name!r}'s range {low}..{high}"
                f" (cluster ID {self.cluster_id})",
                field=field,
            )


@dataclass(frozen=True, slots=True)
class RemoteIdentity:
    """A validated remote security identity: its numeric ID and label set."""

    id: int
    labels: LabelSet


def validate_node(remote: RemoteInfo, name: str, node: Node) -> Node:
    """Check a node read from ``<nodes prefix>/<remote>/<name>``; returns it with
    ``Source=clustermesh``."""
    if not node.cluster:
        raise WireError("node has no cluster name", field="Cluster")
    if not node.name:
        raise WireError("node has no name", field="Name")
    if node.cluster != remote.name:
        raise WireError(f"node belongs to cluster {node.cluster!r}, not {remote.name!r}", field="Cluster")
    if node.name != name:
        raise WireError(f"node name {node.name!r} differs from the key suffix {name!r}", field="Name")
    if node.cluster_id != remote.cluster_id:
        raise WireError(
            f"node cluster ID {node.cluster_id} differs from cluster {remote.name!r}'s ID {remote.cluster_id}",
            field="ClusterID",
        )
    if node.source == SOURCE_CLUSTERMESH:
        return node
    return msgspec.structs.replace(node, source=SOURCE_CLUSTERMESH)


def validate_service(remote: RemoteInfo, name: str, svc: ClusterService) -> ClusterService:
    """Check a service read from ``<services prefix>/<remote>/<namespace>/<name>``."""
    for attr in ("cluster", "namespace", "name"):
        if not getattr(svc, attr):
            raise WireError(f"service has no {attr}", field=attr)
    if svc.cluster != remote.name:
        raise WireError(f"service belongs to cluster {svc.cluster!r}, not {remote.name!r}", field="cluster")
    if svc.namespaced_name() != name:
        raise WireError(
            f"service {svc.namespaced_name()!r} differs from the key suffix {name!r}", field="namespace/name"
        )
    if svc.cluster_id != remote.cluster_id:
        raise WireError(
            f"service cluster ID {svc.cluster_id} differs from cluster {remote.name!r}'s ID {remote.cluster_id}",
            field="clusterID",
        )
    return svc


def validate_ip(remote: RemoteInfo, name: str, pair: IPIdentityPair) -> IPIdentityPair:
    """Check an ipcache pair (as :func:`decode_ip_identity` returns it: canonical IPs) read from
    ``<ip prefix>/<prefix>``; ID 1 (host) becomes 6
    (remote-node): a remote cluster's host is a remote node here."""
    if not pair.ip:
        raise WireError("ipcache entry has no IP", field="IP")
    # decode_ip_identity canonicalised the IP already: a host entry's prefix is the IP itself.
    prefix = pair.ip if pair.mask is None else pair.prefix_string()
    if prefix != name:
        raise WireError(f"key suffix {name!r} differs from the entry's prefix {prefix!r}", field="IP")
    if pair.id == 0:
        raise WireError("ipcache entry has identity 0 (unset)", field="ID")
    remote.check_identity(pair.id, field="ID", allow_reserved=True)
    if pair.id == RESERVED_HOST:
        return msgspec.structs.replace(pair, id=RESERVED_REMOTE_NODE)
    return pair


def validate_identity(remote: RemoteInfo, name: str, labels: LabelSet) -> RemoteIdentity:
    """Check an identity read from ``<identities prefix>/<id>``."""
    if not name.isdigit() or (len(name) > 1 and name.startswith("0")):
        raise WireError(f"identity key suffix {name!r} is not a decimal number", field="ID")
    identity = int(name)
    remote.check_identity(identity, field="ID", allow_reserved=False)
    owner = labels.cluster()
    if owner != remote.name:
        found = f"names cluster {owner!r}" if owner is not None else "has none"
        raise WireError(
            f"identity labels must carry k8s:{CLUSTER_LABEL}={remote.name}; the label {found}",
            field="labels",
        )
    return RemoteIdentity(identity, labels)


def node_decoder(info: Callable[[], RemoteInfo]) -> Callable[[str, bytes], Node]:
    """A watch-store decoder for nodes, validating against ``info()`` (read on every call, so a
    new cluster config takes effect at once)."""

    def decode(name: str, raw: bytes) -> Node:
        return validate_node(info(), name, decode_node(raw))

    return decode


def service_decoder(info: Callable[[], RemoteInfo]) -> Callable[[str, bytes], ClusterService]:
    """A watch-store decoder for services (see :func:`node_decoder`)."""

    def decode(name: str, raw: bytes) -> ClusterService:
        return validate_service(info(), name, decode_service(raw))

    return decode


_PAIR_JSON = msgspec.json.Decoder(IPIdentityPair)  # the type decode_ip_identity decodes into
_HOSTS_KEPT = 65536


def _canonical(text: str) -> bool:
    try:
        return canonical_ip(text) == text
    except ValueError:
        return False


def ip_decoder(info: Callable[[], RemoteInfo]) -> Callable[[str, bytes], IPIdentityPair]:
    """A watch-store decoder for ipcache pairs (see :func:`node_decoder`).

    The common entry (a host entry whose IP is its key suffix in canonical form, a canonical
    HostIP, an identity that needs no rewrite) is accepted after exactly the checks of
    :func:`decode_ip_identity` and :func:`validate_ip`, without their per-call overhead (a quarter
    million entries at agent start); HostIPs found canonical are remembered (a node's endpoints
    share one). Every other value takes that reference path, which raises the precise error."""
    decode_json = _PAIR_JSON.decode
    hosts: set[str] = set()

    def decode(name: str, raw: bytes) -> IPIdentityPair:
        remote = info()
        try:
            pair = decode_json(raw)
        except msgspec.MsgspecError:
            pair = None
        if pair is not None and pair.mask is None:
            ip, host, identity = pair.ip, pair.host_ip, pair.id
            if ip and ip == name and _canonical(ip) and (host in hosts or _canonical(host)):
                low, high = remote.identity_range()
                # ID 1 is rewritten and 0 rejected: both go the reference way.
                if low <= identity <= high or RESERVED_HOST < identity < MIN_LOCAL_IDENTITY:
                    if host not in hosts:
                        if len(hosts) >= _HOSTS_KEPT:
                            hosts.clear()
                        hosts.add(host)
                    return pair
        return validate_ip(remote, name, decode_ip_identity(raw))

    return decode


def identity_decoder(info: Callable[[], RemoteInfo]) -> Callable[[str, bytes], RemoteIdentity]:
    """A watch-store decoder for identities (see :func:`node_decoder`)."""

    def decode(name: str, raw: bytes) -> RemoteIdentity:
        return validate_identity(info(), name, decode_identity(raw))

    return decode
