"""Pure planning of ``clustermesh connect`` / ``disconnect``: which keys of each side's
``cilium-clustermesh`` Secret change, or why the two clusters must not be joined.

A peer entry is what cilium-cli and Cilium's Helm chart put into that Secret (reference §3.1),
mounted by the agents at ``/var/lib/cilium/clustermesh/``:

- ``<peer>``: the etcd client YAML (``endpoints``, ``trusted-ca-file``, ``cert-file``,
  ``key-file``); this file's name is the peer cluster's name;
- ``<peer>.etcd-client-ca.crt``: the peer's CA (``cilium-ca``), which verifies the peer's etcd
  server certificate; carrying it in the entry is what lets clusters with different CAs mesh;
- ``<peer>.etcd-client.crt`` / ``<peer>.etcd-client.key``: the peer's
  ``clustermesh-apiserver-remote-cert``, a client certificate the peer's etcd accepts (CN
  ``remote``, a read-only etcd user).

When the peer is reached by IP addresses (NodePort, or a LoadBalancer with ingress IPs) the
endpoint is ``https://<peer>.mesh.cilium.io:<port>`` with a ``cilium-host-aliases`` entry mapping
that name to the addresses: the agent dials the IPs and verifies the server certificate for the
name, which Cilium's server certificate carries as ``*.mesh.cilium.io`` (an IP address is usually
not among its SANs). A LoadBalancer that only has hostnames is dialled by the first one.

Names and the entry's rendering come from the install (:mod:`clustermesh_cli.install.names`,
:mod:`clustermesh_cli.install.secrets`), so ``enable`` and ``connect`` cannot disagree on them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from clustermesh_cli.install import names
from clustermesh_cli.install import secrets as install_secrets
from meshcore.errors import ConfigError, MeshError, WireError
from meshcore.wire.clusterinfo import (
    DEFAULT_MAX_CONNECTED_CLUSTERS,
    validate_cluster_id,
    validate_cluster_name,
)

__all__ = [
    "APISERVER_SERVICE",
    "CA_SECRET",
    "CLIENT_CA_SUFFIX",
    "CLIENT_CERT_SUFFIX",
    "CLIENT_KEY_SUFFIX",
    "CLUSTER_CONFIG_MAPS",
    "CONFIG_KEY_CLUSTER_ID",
    "CONFIG_KEY_CLUSTER_NAME",
    "CONFIG_KEY_MAX_CONNECTED",
    "DEFAULT_CONFIG_DIR",
    "DEFAULT_NAMESPACE",
    "MESH_DOMAIN",
    "MESH_SECRET",
    "REMOTE_CERT_SECRET",
    "SECRET_LABELS",
    "ClusterInfo",
    "ConnectPlan",
    "ConnectRefused",
    "PeerAccess",
    "SecretChange",
    "describe",
    "peer_entry",
    "peer_keys",
    "peers_in_secret",
    "plan_connect",
    "plan_disconnect",
    "render_etcd_config",
]

# --- names shared with the install (clustermesh_cli.install.names; Cilium's where Cilium has them) ---
DEFAULT_NAMESPACE = "kube-system"
MESH_SECRET = names.CLUSTERMESH_SECRET
CA_SECRET = names.CA_SECRET
REMOTE_CERT_SECRET = names.REMOTE_CERT_SECRET
APISERVER_SERVICE = names.APISERVER
# ConfigMaps holding the cluster's name and ID, tried in order: the install's, then Cilium's own
# (which cilium-cli reads), so that a Cilium cluster can be a peer too.
CLUSTER_CONFIG_MAPS: tuple[str, ...] = (names.CONFIG_MAP, "cilium-config")
CONFIG_KEY_CLUSTER_NAME = "cluster-name"
CONFIG_KEY_CLUSTER_ID = "cluster-id"
CONFIG_KEY_MAX_CONNECTED = "max-connected-clusters"
# Labels of a cilium-clustermesh Secret this command creates (``clustermesh disable`` finds it).
SECRET_LABELS: Mapping[str, str] = {names.PART_OF_LABEL: names.PART_OF}

# --- the peer entry -------------------------------------------------------------------------------
DEFAULT_CONFIG_DIR = PurePosixPath(names.CLUSTERMESH_CONFIG_DIR)
MESH_DOMAIN = names.MESH_DOMAIN
CLIENT_CA_SUFFIX = names.peer_ca_key("")
CLIENT_CERT_SUFFIX = names.peer_cert_key("")
CLIENT_KEY_SUFFIX = names.peer_key_key("")
# What makes a Secret key a cluster config (the agent's and Cilium's isEtcdConfigFile).
_CONFIG_MARKER = b"endpoints:"


class ConnectRefused(MeshError):
    """The two clusters must not be connected (or disconnected) as asked; nothing was changed.

    The message says why and what to do about it."""


@dataclass(frozen=True)
class PeerAccess:
    """How other clusters reach this cluster's clustermesh-apiserver etcd.

    ``addresses`` are IPs or DNS names (all on ``port``); ``ca_crt`` is the ``cilium-ca``
    certificate (PEM); ``client_crt``/``client_key`` the ``clustermesh-apiserver-remote-cert``."""

    addresses: tuple[str, ...]
    port: int
    ca_crt: bytes
    client_crt: bytes
    client_key: bytes


@dataclass(frozen=True)
class ClusterInfo:
    """One side of a connect or disconnect, as read from its Kubernetes API.

    ``context`` is the kubeconfig context (used in messages). ``mesh_secret`` is the data of the
    current ``cilium-clustermesh`` Secret (``None``: it does not exist) and
    ``mesh_secret_version`` its resourceVersion. ``access`` may be ``None`` for a disconnect,
    which needs only the name and the Secret."""

    context: str
    name: str
    cluster_id: int
    namespace: str = DEFAULT_NAMESPACE
    max_connected_clusters: int = DEFAULT_MAX_CONNECTED_CLUSTERS
    pod_cidrs: tuple[str, ...] = ()
    access: PeerAccess | None = None
    mesh_secret: Mapping[str, bytes] | None = None
    mesh_secret_version: str | None = None

    @property
    def label(self) -> str:
        """``name (context ctx)`` for messages."""
        return f"{self.name} (context {self.context})"

    def peers(self) -> list[str]:
        """The peers configured in this cluster's Secret (see :func:`peers_in_secret`)."""
        return peers_in_secret(self.mesh_secret or {}, local_cluster=self.name)


@dataclass(frozen=True)
class SecretChange:
    """The desired data of one cluster's ``cilium-clustermesh`` Secret.

    ``before`` is the current data (``None``: the Secret does not exist), ``after`` the data to
    write. ``resource_version`` is the version ``before`` was read at: a write must fail if the
    Secret changed since."""

    context: str
    namespace: str
    cluster: str
    before: Mapping[str, bytes] | None
    after: Mapping[str, bytes]
    resource_version: str | None = None
    name: str = MESH_SECRET

    @property
    def changed(self) -> bool:
        """True when a write is needed (an absent Secret left empty is no change)."""
        return dict(self.before or {}) != dict(self.after)

    @property
    def create(self) -> bool:
        """True when the Secret must be created."""
        return self.before is None and self.changed

    @property
    def added(self) -> list[str]:
        return sorted(set(self.after) - set(self.before or {}))

    @property
    def removed(self) -> list[str]:
        return sorted(set(self.before or {}) - set(self.after))

    @property
    def updated(self) -> list[str]:
        before = self.before or {}
        return sorted(k for k in self.after if k in before and before[k] != self.after[k])


@dataclass(frozen=True)
class ConnectPlan:
    """The Secret changes of a connect or disconnect (one per side) and notes for the user."""

    changes: tuple[SecretChange, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def changed(self) -> bool:
        return any(c.changed for c in self.changes)


# --- keys and rendering ---------------------------------------------------------------------------


def peer_keys(peer: str) -> tuple[str, str, str, str]:
    """The Secret keys of ``peer``'s entry: config, CA, client certificate, client key."""
    return (names.peer_config_key(peer), names.peer_ca_key(peer), names.peer_cert_key(peer),
            names.peer_key_key(peer))


def peers_in_secret(data: Mapping[str, bytes], *, local_cluster: str | None = None) -> list[str]:
    """Names of the clusters configured in a ``cilium-clustermesh`` Secret's data: keys that are
    valid cluster names whose value holds ``endpoints:``, as the agent decides (the local
    cluster's own key is not a peer)."""
    names = []
    for key, value in data.items():
        if key == local_cluster or _CONFIG_MARKER not in value:
            continue
        try:
            validate_cluster_name(key)
        except WireError:
            continue
        names.append(key)
    return sorted(names)


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def render_etcd_config(peer: str, access: PeerAccess, *, config_dir: PurePosixPath = DEFAULT_CONFIG_DIR) -> bytes:
    """The etcd client YAML by which agents reach ``peer`` (file names under ``config_dir``),
    rendered by the install's :func:`~clustermesh_cli.install.secrets.peer_etcd_config`: IPs
    become host aliases of ``<peer>.mesh.cilium.io``; without IPs the first hostname is dialled."""
    ips = [a for a in access.addresses if _is_ip(a)]
    if not ips and not access.addresses:
        raise ConnectRefused(f"{peer} has no address to reach its clustermesh-apiserver")
    try:
        text = install_secrets.peer_etcd_config(peer, ips=ips, port=access.port,
                                                address=None if ips else access.addresses[0],
                                                config_dir=str(config_dir))
    except ConfigError as err:
        raise ConnectRefused(f"cannot write an entry for {peer}: {err}") from None
    return text.encode()


def peer_entry(peer: str, access: PeerAccess, *, config_dir: PurePosixPath = DEFAULT_CONFIG_DIR) -> dict[str, bytes]:
    """The four Secret keys (see :func:`peer_keys`) that configure ``peer`` on the other side."""
    config = render_etcd_config(peer, access, config_dir=config_dir).decode()
    entry = install_secrets.PeerEntry(peer, config, access.ca_crt, access.client_crt, access.client_key)
    return entry.data()


# --- checks ---------------------------------------------------------------------------------------


def _check_identity(side: ClusterInfo) -> None:
    try:
        validate_cluster_name(side.name, cluster_id=side.cluster_id)
    except WireError as err:
        raise ConnectRefused(
            f"{side.label} has an unusable cluster name: {err.reason}; re-enable it with a valid "
            f"--cluster-name (clustermesh enable --context {side.context} --cluster-name ...)"
        ) from None
    try:
        validate_cluster_id(side.cluster_id, side.max_connected_clusters)
    except WireError as err:
        raise ConnectRefused(
            f"{side.label} has an unusable cluster ID: {err.reason}; re-enable it with --cluster-id "
            f"in 1..{side.max_connected_clusters} (clustermesh enable --context {side.context} --cluster-id N)"
        ) from None


def _check_certificates(side: ClusterInfo, access: PeerAccess) -> list[str]:
    """Refuse unparsable PEM; warn when the client certificate is not issued by the CA."""
    try:
        ca = x509.load_pem_x509_certificate(access.ca_crt)
    except ValueError:
        raise ConnectRefused(
            f"{side.label}: Secret {CA_SECRET} does not hold a PEM certificate in ca.crt; "
            f"re-run clustermesh enable --context {side.context} to recreate it"
        ) from None
    try:
        cert = x509.load_pem_x509_certificate(access.client_crt)
    except ValueError:
        raise ConnectRefused(
            f"{side.label}: Secret {REMOTE_CERT_SECRET} does not hold a PEM certificate in tls.crt; "
            f"re-run clustermesh enable --context {side.context} to reissue it"
        ) from None
    if not access.client_key.strip():
        raise ConnectRefused(f"{side.label}: Secret {REMOTE_CERT_SECRET} has an empty tls.key")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return [
            f"{side.label}: {REMOTE_CERT_SECRET} is not issued by its {CA_SECRET}; its etcd may refuse "
            "the peers' connections (re-run clustermesh enable to reissue the certificates)"
        ]
    return []


def _overlapping_cidrs(a: ClusterInfo, b: ClusterInfo) -> tuple[str, str] | None:
    def parse(side: ClusterInfo) -> list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]]:
        nets = []
        for cidr in side.pod_cidrs:
            try:
                nets.append((cidr, ipaddress.ip_network(cidr, strict=False)))
            except ValueError:
                raise ConnectRefused(f"{side.label}: a Node has pod CIDR {cidr!r}, which is not a CIDR") from None
        return nets

    for a_cidr, a_net in parse(a):
        for b_cidr, b_net in parse(b):
            if a_net.version == b_net.version and a_net.overlaps(b_net):
                return a_cidr, b_cidr
    return None


def _check_capacity(side: ClusterInfo, new_peer: str) -> None:
    peers = side.peers()
    after = sorted(set(peers) | {new_peer})
    mesh_size = len(after) + 1
    if mesh_size > side.max_connected_clusters:
        shown = ", ".join(peers[:5]) + (f", ... ({len(peers)} in all)" if len(peers) > 5 else "")
        raise ConnectRefused(
            f"{side.label} already has {len(peers)} peer(s) in its {MESH_SECRET} Secret ({shown}); "
            f"connecting {new_peer} would make it part of a mesh of {mesh_size} clusters, more than its "
            f"max-connected-clusters={side.max_connected_clusters}: disconnect a cluster first "
            "(clustermesh disconnect)"
        )


def _with_peer(side: ClusterInfo, peer: ClusterInfo, access: PeerAccess, config_dir: PurePosixPath
               ) -> tuple[dict[str, bytes], list[str]]:
    data = dict(side.mesh_secret or {})
    entry = peer_entry(peer.name, access, config_dir=config_dir)
    notes = []
    old = {k: data[k] for k in entry if k in data}
    if old and old != entry:
        what = [k for k in entry if old.get(k) != entry[k]]
        notes.append(f"{side.label}: replacing the existing entry for {peer.name} ({', '.join(what)} changed)")
    data.update(entry)
    return data, notes


def _change(side: ClusterInfo, after: Mapping[str, bytes]) -> SecretChange:
    return SecretChange(
        context=side.context,
        namespace=side.namespace,
        cluster=side.name,
        before=None if side.mesh_secret is None else dict(side.mesh_secret),
        after=dict(after),
        resource_version=side.mesh_secret_version,
    )


# --- plans ----------------------------------------------------------------------------------------


def _refuse_self(a: ClusterInfo, b: ClusterInfo, verb: str) -> None:
    if a.context == b.context:
        raise ConnectRefused(
            f"cannot {verb} context {a.context} to itself: --context and --destination-context name the "
            "same context; pass the other cluster's context as --destination-context"
        )


def plan_connect(a: ClusterInfo, b: ClusterInfo, *, config_dir: PurePosixPath = DEFAULT_CONFIG_DIR) -> ConnectPlan:
    """The Secret changes that connect ``a`` and ``b`` both ways (``b``'s entry into ``a``'s
    Secret, ``a``'s into ``b``'s), or :class:`ConnectRefused` saying why they must not be.

    Refused: the same cluster twice, an invalid name or ID, different max-connected-clusters,
    equal names, equal IDs, overlapping pod CIDRs, and a Secret already holding as many peers as
    max-connected-clusters allows. Connecting already connected clusters plans no change."""
    _refuse_self(a, b, "connect")
    if a.access is None or b.access is None:
        raise ValueError("plan_connect needs both sides' access information (ClusterInfo.access)")
    if a.access == b.access:
        raise ConnectRefused(
            f"contexts {a.context} and {b.context} are the same cluster ({a.name}: same clustermesh-apiserver "
            "address and certificates); pass another cluster's context as --destination-context"
        )
    _check_identity(a)
    _check_identity(b)
    if a.max_connected_clusters != b.max_connected_clusters:
        raise ConnectRefused(
            f"{a.label} has max-connected-clusters={a.max_connected_clusters} but {b.label} has "
            f"{b.max_connected_clusters}: the setting must be the same across the mesh (and cannot change on a "
            "live cluster); connect only clusters enabled with the same value"
        )
    if a.name == b.name:
        raise ConnectRefused(
            f"both clusters are named {a.name!r} (contexts {a.context} and {b.context}); cluster names must be "
            f"unique across the mesh: re-enable one of them with another --cluster-name "
            f"(clustermesh enable --context {b.context} --cluster-name NAME)"
        )
    if a.cluster_id == b.cluster_id:
        raise ConnectRefused(
            f"{a.label} and {b.label} both have cluster ID {a.cluster_id}; cluster IDs must be unique across "
            f"the mesh: re-enable one of them with another --cluster-id, one no cluster of the mesh uses "
            f"(clustermesh enable --context {b.context} --cluster-id N, N in 1..{a.max_connected_clusters})"
        )
    overlap = _overlapping_cidrs(a, b)
    if overlap is not None:
        raise ConnectRefused(
            f"pod CIDR {overlap[0]} of {a.label} overlaps pod CIDR {overlap[1]} of {b.label}; pod CIDRs must "
            "not overlap across the mesh (remote pod IPs would be ambiguous): give one cluster other pod CIDRs"
        )
    _check_capacity(a, b.name)
    _check_capacity(b, a.name)
    warnings = _check_certificates(a, a.access) + _check_certificates(b, b.access)
    for side in (a, b):
        if not side.pod_cidrs:
            warnings.append(f"{side.label}: no Node has spec.podCIDRs; pod CIDR overlap was not checked")
    a_after, notes_a = _with_peer(a, b, b.access, config_dir)
    b_after, notes_b = _with_peer(b, a, a.access, config_dir)
    return ConnectPlan(changes=(_change(a, a_after), _change(b, b_after)),
                       warnings=tuple(warnings + notes_a + notes_b))


def _without_peer(side: ClusterInfo, peer: str) -> dict[str, bytes]:
    drop = set(peer_keys(peer))
    return {k: v for k, v in (side.mesh_secret or {}).items() if k not in drop}


def plan_disconnect(a: ClusterInfo, b: ClusterInfo) -> ConnectPlan:
    """The Secret changes that remove ``b``'s entry (all its keys) from ``a``'s Secret and ``a``'s
    from ``b``'s. Disconnecting clusters that are not connected plans no change."""
    _refuse_self(a, b, "disconnect")
    if a.name == b.name:
        raise ConnectRefused(
            f"contexts {a.context} and {b.context} both have cluster name {a.name!r}: they cannot be peers of "
            "each other, so there is nothing to disconnect"
        )
    changes = (_change(a, _without_peer(a, b.name)), _change(b, _without_peer(b, a.name)))
    # Connected one way only (e.g. after a failed connect): say which side had nothing to remove.
    warnings = [
        f"{side.label} had no entry for {peer.name}"
        for side, peer, change in ((a, b, changes[0]), (b, a, changes[1]))
        if not change.changed and any(c.changed for c in changes)
    ]
    return ConnectPlan(changes=changes, warnings=tuple(warnings))


def describe(change: SecretChange) -> str:
    """One line saying what a change does to a Secret, for the CLI."""
    if not change.changed:
        return f"{change.cluster} (context {change.context}): {change.name} unchanged"
    parts = []
    for label, keys in (("added", change.added), ("updated", change.updated), ("removed", change.removed)):
        if keys:
            parts.append(f"{label} {', '.join(_entries(keys))}")
    verb = "created" if change.create else "updated"
    return f"{change.cluster} (context {change.context}): {verb} {change.name}: {'; '.join(parts)}"


def _entries(keys: Iterable[str]) -> list[str]:
    """Keys grouped by the peer entry they belong to: ``c2`` stands for all four of c2's keys."""
    peers = sorted({k.split(".", 1)[0] for k in keys})
    return [f"peer {p}" for p in peers]
