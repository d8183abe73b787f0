"""The project's own exception hierarchy.

Every error a user can meet carries an actionable message: what was wrong, where (key, field,
file), and what to do about it. Callers catch the narrowest class they can handle.
"""

from __future__ import annotations


class MeshError(Exception):
    """Root of every error raised on purpose by this project."""


class ConfigError(MeshError):
    """A configuration file, flag or option is invalid."""


class WireError(MeshError):
    """A value read from or written to the kvstore does not match Cilium's wire format.

    ``key`` names the etcd key the value came from (when known), ``field`` the JSON field at fault.
    """

    def __init__(self, message: str, *, key: str | None = None, field: str | None = None) -> None:
        self.reason = message
        self.key = key
        self.field = field
        where = []
        if key is not None:
            where.append(f"key {key!r}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = f"{', '.join(where)}: " if where else ""
        super().__init__(f"{prefix}{message}")

    def with_key(self, key: str) -> WireError:
        """Return the same error, now also naming the etcd ``key`` the value came from."""
        return WireError(self.reason, key=key, field=self.field)


class KVStoreError(MeshError):
    """An operation against etcd failed."""


class KVStoreUnavailableError(KVStoreError):
    """etcd could not be reached (connection refused, timed out, TLS handshake failed)."""


class KVStoreAuthError(KVStoreError):
    """etcd refused the operation: wrong credentials or a role that does not permit it."""


class WatchCompactedError(KVStoreError):
    """A watch asked for a revision that etcd has compacted away; the caller must re-list."""

    def __init__(self, message: str, *, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        super().__init__(message)


class ClusterChangedError(KVStoreError):
    """The etcd cluster behind an endpoint was replaced (its cluster ID changed); re-list."""


class LeaseExpiredError(KVStoreError):
    """A lease expired or was revoked before it could be kept alive."""


class TxnTooLargeError(KVStoreError):
    """A transaction held more operations than etcd accepts (128 by default)."""


class K8sError(MeshError):
    """A Kubernetes API request failed (unreachable, refused, or answered with an error).

    ``status`` is the HTTP status of the error answer (None: no answer, e.g. unreachable)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class K8sGoneError(K8sError):
    """The requested resourceVersion is too old (HTTP 410): list again."""


class K8sNotFoundError(K8sError):
    """The object or the resource type does not exist (HTTP 404), e.g. a CRD not yet installed."""


class NodePublishError(K8sError):
    """This node's encryption keys could not be published on its Node / CiliumNode; the message
    names the object and, when the API refused (HTTP 403), the RBAC verb the agent lacks."""
