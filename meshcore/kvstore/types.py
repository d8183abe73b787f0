"""Plain records and the narrow interface that everything above the etcd client depends on.

The stores (``meshcore.store``) and the agent never see gRPC or protobuf: they see these
frozen records and the :class:`KVStore` protocol, implemented for real by
:class:`meshcore.kvstore.client.EtcdClient` and, for pure-logic unit tests only, by an in-memory
fake beside the tests.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Protocol

# etcd's default --max-txn-ops.
MAX_TXN_OPS = 128
# Cilium's etcdMaxKeysPerLease: a Put slows down with the number of keys on its lease.
MAX_KEYS_PER_LEASE = 1000


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as etcd holds it."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int = 1
    lease: int = 0


@dataclass(frozen=True, slots=True)
class ListResult:
    """Every key under a prefix, consistent at ``revision``."""

    items: list[KeyValue]
    revision: int


@dataclass(frozen=True, slots=True)
class PutOp:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class DeleteOp:
    key: str
    prefix: bool = False


TxnOp = PutOp | DeleteOp


class EventType(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A change seen by a watch. ``value`` is empty for deletes."""

    type: EventType
    key: str
    value: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """The events of one watch response, all at or below ``revision``.

    A batch with no events is a progress notification: nothing under the prefix changed up to
    ``revision``.
    """

    events: Sequence[WatchEvent]
    revision: int


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    """What etcd says about itself (``Maintenance.Status`` plus the response header)."""

    endpoint: str
    version: str
    cluster_id: int
    member_id: int
    revision: int
    leader: int
    db_size: int


class KVStore(Protocol):
    """The operations the stores need from etcd. All keys and prefixes are text."""

    @property
    def cluster_id(self) -> int:
        """The ID of the etcd cluster last answered by (0 before any answer)."""
        ...

    async def get(self, key: str) -> KeyValue | None: ...

    async def list_prefix(self, prefix: str) -> ListResult: ...

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write ``key``; returns the revision of the write."""
        ...

    async def delete(self, key: str) -> int:
        """Delete ``key``; returns how many keys were deleted (0 or 1)."""
        ...

    async def delete_prefix(self, prefix: str) -> int: ...

    async def txn(self, ops: Sequence[TxnOp]) -> int:
        """Apply up to :data:`MAX_TXN_OPS` operations atomically; returns the revision."""
        ...

    async def grant_lease(self, ttl: int) -> int: ...

    async def revoke_lease(self, lease_id: int) -> None: ...

    def watch(self, prefix: str, *, start_revision: int) -> AsyncGenerator[WatchBatch, None]:
        """Watch ``prefix`` from ``start_revision`` (inclusive), with progress notifications
        (empty batches) where the store sends them.

        Raises :class:`~meshcore.errors.WatchCompactedError` when ``start_revision`` is compacted,
        :class:`~meshcore.errors.KVStoreUnavailableError` when the stream breaks, and
        :class:`~meshcore.errors.ClusterChangedError` when the etcd cluster ID changes.
        """
        ...

    async def status(self) -> EndpointStatus: ...
