"""Cluster names, cluster IDs and identity ranges (reference §4, ``pkg/clustermesh/types``,
``pkg/identity/numericidentity.go``)."""

from __future__ import annotations

import re

from meshcore.errors import WireError

__all__ = [
    "CLUSTER_NAME_MAX_LEN",
    "DEFAULT_MAX_CONNECTED_CLUSTERS",
    "IDENTITY_BITS",
    "MIN_LOCAL_IDENTITY",
    "validate_cluster_name",
    "cluster_id_max",
    "validate_cluster_id",
    "cluster_id_bits",
    "cluster_id_shift",
    "identity_range",
    "cluster_id_of_identity",
    "identity_in_cluster_range",
]

CLUSTER_NAME_MAX_LEN = 32
DEFAULT_MAX_CONNECTED_CLUSTERS = 255
IDENTITY_BITS = 24
MIN_LOCAL_IDENTITY = 256
"""IDs below this are reserved (1-255); the local cluster (ID 0) allocates from here."""

_NAME = re.compile(r"([a-z0-9][-a-z0-9]*)?[a-z0-9]")


def validate_cluster_name(name: str, *, cluster_id: int | None = None) -> None:
    """Cilium's ``ValidateClusterName``: non-empty, at most 32 characters, lowercase
    alphanumerics and ``-`` starting and ending alphanumeric; ``default`` is refused when the
    cluster ID is non-zero. Raises :class:`WireError`."""
    if not name:
        raise WireError("cluster name must not be empty", field="cluster-name")
    if len(name) > CLUSTER_NAME_MAX_LEN:
        raise WireError(
            f"cluster name {name!r} is longer than {CLUSTER_NAME_MAX_LEN} characters",
            field="cluster-name",
        )
    if _NAME.fullmatch(name) is None:
        raise WireError(
            f"cluster name {name!r} must consist of lowercase alphanumerics and '-', and start and"
            " end with an alphanumeric character",
            field="cluster-name",
        )
    if cluster_id and name == "default":
        raise WireError(
            "cluster name 'default' is not allowed with a non-zero cluster ID", field="cluster-name"
        )


def cluster_id_max(max_connected_clusters: int = DEFAULT_MAX_CONNECTED_CLUSTERS) -> int:
    """``ClusterIDMax`` for a ``max-connected-clusters`` setting, which must be 255 or 511."""
    if max_connected_clusters not in (255, 511):
        raise WireError(
            f"max-connected-clusters must be 255 or 511, got {max_connected_clusters}",
            field="maxConnectedClusters",
        )
    return max_connected_clusters


def validate_cluster_id(
    cluster_id: int, max_connected_clusters: int = DEFAULT_MAX_CONNECTED_CLUSTERS
) -> None:
    """Cilium's ``ValidateClusterID`` for a remote: 1 <= id <= ClusterIDMax (0 is reserved)."""
    limit = cluster_id_max(max_connected_clusters)
    if cluster_id == 0:
        raise WireError("cluster ID 0 is reserved", field="id")
    if not 0 < cluster_id <= limit:
        raise WireError(f"cluster ID {cluster_id} is out of range 1..{limit}", field="id")


def cluster_id_bits(max_connected_clusters: int = DEFAULT_MAX_CONNECTED_CLUSTERS) -> int:
    """Bits of a numeric identity holding the cluster ID: 8 (255) or 9 (511)."""
    return (cluster_id_max(max_connected_clusters) + 1).bit_length() - 1


def cluster_id_shift(max_connected_clusters: int = DEFAULT_MAX_CONNECTED_CLUSTERS) -> int:
    """Left shift of the cluster ID inside an identity: 16 (255) or 15 (511)."""
    return IDENTITY_BITS - cluster_id_bits(max_connected_clusters)


def identity_range(
    cluster_id: int, max_connected_clusters: int = DEFAULT_MAX_CONNECTED_CLUSTERS
) -> tuple[int, int]:
    """Inclusive ``(min, max)`` identity range of a cluster; e.g. cluster 3 in 255 mode is
    ``(196608, 262143)``. Cluster 0 (local, no ClusterMesh) starts at 256."""
    limit = cluster_id_max(max_connected_clusters)
    if not 0 <= cluster_id <= limit:
        raise WireError(f"cluster ID {cluster_id} is out of range 0..{limit}", field="id")
    shift = cluster_id_shift(max_connected_clusters)
    low = cluster_id << shift
    high = ((cluster_id + 1) << shift) - 1
    return (max(low, MIN_LOCAL_IDENTITY), high)


def cluster_id_of_identity(
    identity: int, max_connected_clusters: int = DEFAULT_MAX_CONNECTED_CLUSTERS
) -> int:
    """The cluster ID encoded in a (24-bit) numeric identity."""
    shift = cluster_id_shift(max_connected_clusters)
    return (identity & ((1 << IDENTITY_BITS) - 1)) >> shift


def identity_in_cluster_range(
    identity: int, cluster_id: int, max_connected_clusters: int = DEFAULT_MAX_CONNECTED_CLUSTERS
) -> bool:
    """Whether ``identity`` lies in ``cluster_id``'s allocation range."""
    low, high = identity_range(cluster_id, max_connected_clusters)
    return low <= identity <= high
