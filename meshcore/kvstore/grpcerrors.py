"""Translate gRPC failures from etcd into the :mod:`meshcore.errors` hierarchy.

etcd reports most failures as a gRPC status code plus an ``etcdserver: ...`` message; the mapping
looks at both, and every resulting message says where (endpoint, user, key) and what to check.
"""

from __future__ import annotations

import grpc

from meshcore.errors import (
    KVStoreAuthError,
    KVStoreError,
    KVStoreUnavailableError,
    LeaseExpiredError,
    TxnTooLargeError,
)


class RevisionCompactedError(KVStoreError):
    """A read asked for a revision that etcd has compacted away (``etcdserver: mvcc: required
    revision has been compacted``); the caller retries at a newer revision."""


_TLS_HINTS = ("ssl", "handshake", "certificate", "tls", "tsi_", "unwrap failed", "verif")
_AUTH_DETAILS = ("permission denied", "user name is empty", "invalid auth token", "authentication failed")


def map_rpc_error(
    err: grpc.aio.AioRpcError,
    *,
    endpoint: str,
    op: str,
    key: str | None = None,
    user: str | None = None,
) -> KVStoreError:
    """Return the project error for a failed etcd RPC (the caller raises it ``from err``)."""
    code = err.code()
    details = err.details() or code.name
    where = f"etcd {op}" + (f" on key {key!r}" if key is not None else "") + f" at {endpoint}"
    low = details.lower()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        hint = "check that etcd is running and reachable"
        if any(h in low for h in _TLS_HINTS):
            hint = (
                "the TLS handshake failed: check that trusted-ca-file is the CA that signed the etcd "
                "server certificate, that the server name matches its SANs, and that cert-file/"
                "key-file hold a client certificate the server's CA signed"
            )
        what = "timed out" if code is grpc.StatusCode.DEADLINE_EXCEEDED else "failed: etcd unavailable"
        return KVStoreUnavailableError(f"{where} {what} ({details}); {hint}")
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED) or any(
        a in low for a in _AUTH_DETAILS
    ):
        who = f"user {user!r}" if user else "this client (no user known: no client certificate)"
        return KVStoreAuthError(
            f"{where} denied for {who}: {details}; check the client certificate's CN and the etcd "
            "roles granted to that user"
        )
    if "required revision has been compacted" in low:
        return RevisionCompactedError(f"{where}: {details}; read again at a newer revision")
    if "too many operations in txn" in low:
        return TxnTooLargeError(f"{where}: {details}; split the transaction (at most 128 operations)")
    if "duplicate key given in txn" in low:
        return KVStoreError(
            f"{where}: {details}; a key occurs more than once in the transaction (a put inside a "
            "deleted prefix counts too): split it"
        )
    if "lease not found" in low:
        return LeaseExpiredError(f"{where}: {details}; the lease expired or was revoked, grant a new one")
    if "request is too large" in low or code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return KVStoreError(f"{where}: {details}; the request or response exceeds etcd's size limits")
    return KVStoreError(f"{where} failed: {code.name}: {details}")
