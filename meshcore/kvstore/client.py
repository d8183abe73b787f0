"""The etcd v3 client: :class:`EtcdClient` implements :class:`~meshcore.kvstore.types.KVStore`.

Built on ``grpc.aio`` and the generated stubs in :mod:`meshcore.kvstore.etcdpb`. Lists are
paginated at one pinned revision so any number of keys stays within gRPC message limits; watches
are in :mod:`meshcore.kvstore.watch`, the user/role API in :mod:`meshcore.kvstore.auth`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from meshcore.errors import (
    KVStoreError,
    KVStoreUnavailableError,
    LeaseExpiredError,
    TxnTooLargeError,
)
from meshcore.kvstore.auth import AuthAPI
from meshcore.kvstore.codec import decode_kvs, prefix_range
from meshcore.kvstore.config import EtcdClientConfig
from meshcore.kvstore.connection import DEFAULT_MAX_RECEIVE_BYTES, EtcdConnection, _Stubs
from meshcore.kvstore.etcdpb import rpc_pb2
from meshcore.kvstore.grpcerrors import RevisionCompactedError
from meshcore.kvstore.types import (
    MAX_TXN_OPS,
    DeleteOp,
    EndpointStatus,
    KeyValue,
    ListResult,
    PutOp,
    TxnOp,
    WatchBatch,
)
from meshcore.kvstore.watch import watch_prefix

# etcd 3.4 walks the rest of the range to count it on every page, so small pages make a list
# quadratic (250k keys: 6 s at 1000 per page, 1.4 s at 10000); 10000 keys stay a few MB per page.
DEFAULT_PAGE_SIZE = 10000
_LIST_ATTEMPTS = 3


class EtcdClient(AuthAPI):
    """An asyncio etcd v3 client for one cluster.

    Use ``async with EtcdClient(config) as client:`` or ``await client.connect()`` /
    ``await client.close()``. Every unary call carries ``config.request_timeout`` as deadline.
    Failures raise :mod:`meshcore.errors` classes: :class:`KVStoreUnavailableError` (unreachable,
    timed out, TLS refused), :class:`KVStoreAuthError` (role does not permit),
    :class:`ClusterChangedError` (the cluster behind the endpoint was replaced: re-list; raised
    once, to the call that noticed, after which the client works against the new cluster).
    """

    def __init__(
        self,
        config: EtcdClientConfig,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        max_receive_bytes: int = DEFAULT_MAX_RECEIVE_BYTES,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be positive")
        self.config = config
        self.page_size = page_size
        self._conn = EtcdConnection(config, max_receive_bytes=max_receive_bytes)

    # ---- lifecycle ----

    async def connect(self) -> None:
        """Open channels and reach an endpoint; raises :class:`KVStoreUnavailableError` if none."""
        await self._conn.open()

    async def close(self) -> None:
        """Close all channels (idempotent)."""
        await self._conn.close()

    async def reconnect(self) -> None:
        """Close the channels and connect again (e.g. after the config's files changed)."""
        await self._conn.open()

    async def __aenter__(self) -> EtcdClient:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def endpoint(self) -> str:
        """The endpoint calls currently go to."""
        return self._conn.endpoint

    @property
    def cluster_id(self) -> int:
        """The ID of the etcd cluster this client talks to (0 before connecting)."""
        return self._conn.cluster_id

    @property
    def user(self) -> str | None:
        """The etcd user this client authenticates as (its client certificate's CN), if any."""
        return self._conn.user

    # ---- KV ----

    async def get(self, key: str) -> KeyValue | None:
        """Return ``key`` or None if absent."""
        resp = await self._conn.unary(
            "kv", "Range", rpc_pb2.RangeRequest(key=key.encode()), op="get", key=key
        )
        if not resp.kvs:
            return None
        return decode_kvs(resp.kvs)[0]

    async def list_prefix(self, prefix: str) -> ListResult:
        """Every key under ``prefix``, read page by page at one revision."""
        for attempt in range(_LIST_ATTEMPTS):
            try:
                return await self._list_once(prefix)
            except RevisionCompactedError:
                # The pinned revision was compacted between pages: start over at a newer one.
                if attempt + 1 == _LIST_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    async def _list_once(self, prefix: str) -> ListResult:
        start, end = prefix_range(prefix)
        items: list[KeyValue] = []
        revision = 0
        conn = self._conn
        limit = self.page_size
        while True:
            req = rpc_pb2.RangeRequest(key=start, range_end=end, limit=limit, revision=revision)
            resp = await conn.unary("kv", "Range", req, op="list", key=prefix)
            if revision == 0:
                revision = resp.header.revision
            kvs = resp.kvs
            items.extend(decode_kvs(kvs))
            if not resp.more or not kvs:
                return ListResult(items, revision)
            start = kvs[-1].key + b"\0"

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write ``key``; returns the revision of the write."""
        req = rpc_pb2.PutRequest(key=key.encode(), value=value, lease=lease)
        resp = await self._conn.unary("kv", "Put", req, op="put", key=key)
        return int(resp.header.revision)

    async def delete(self, key: str) -> int:
        """Delete ``key``; returns 1 if it existed, else 0."""
        req = rpc_pb2.DeleteRangeRequest(key=key.encode())
        resp = await self._conn.unary("kv", "DeleteRange", req, op="delete", key=key)
        return int(resp.deleted)

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; returns how many were deleted."""
        k, end = prefix_range(prefix)
        req = rpc_pb2.DeleteRangeRequest(key=k, range_end=end)
        resp = await self._conn.unary("kv", "DeleteRange", req, op="delete prefix", key=prefix)
        return int(resp.deleted)

    async def txn(self, ops: Sequence[TxnOp]) -> int:
        """Apply up to :data:`MAX_TXN_OPS` puts/deletes atomically; returns the revision."""
        if len(ops) > MAX_TXN_OPS:
            raise TxnTooLargeError(
                f"etcd transaction has {len(ops)} operations, more than etcd's limit of {MAX_TXN_OPS}; "
                "split it into several transactions"
            )
        success = []
        for op in ops:
            if isinstance(op, PutOp):
                success.append(
                    rpc_pb2.RequestOp(
                        request_put=rpc_pb2.PutRequest(key=op.key.encode(), value=op.value, lease=op.lease)
                    )
                )
            elif isinstance(op, DeleteOp):
                k, end = prefix_range(op.key) if op.prefix else (op.key.encode(), b"")
                dr = rpc_pb2.DeleteRangeRequest(key=k, range_end=end)
                success.append(rpc_pb2.RequestOp(request_delete_range=dr))
            else:
                raise TypeError(f"not a transaction operation: {op!r}")
        first = ops[0].key if ops else None
        resp = await self._conn.unary("kv", "Txn", rpc_pb2.TxnRequest(success=success), op="txn", key=first)
        return int(resp.header.revision)

    async def compact(self, revision: int, *, physical: bool = False) -> None:
        """Compact history up to ``revision``; ``physical`` waits until it is applied to disk."""
        req = rpc_pb2.CompactionRequest(revision=revision, physical=physical)
        await self._conn.unary("kv", "Compact", req, op=f"compact to revision {revision}")

    # ---- leases ----

    async def grant_lease(self, ttl: int) -> int:
        """Grant a lease of ``ttl`` seconds; returns its ID."""
        resp = await self._conn.unary(
            "lease", "LeaseGrant", rpc_pb2.LeaseGrantRequest(TTL=ttl), op="lease grant"
        )
        if resp.error:
            raise KVStoreError(f"etcd at {self.endpoint} refused to grant a {ttl}s lease: {resp.error}")
        return int(resp.ID)

    async def revoke_lease(self, lease_id: int) -> None:
        """Revoke a lease, deleting its keys; a lease that is already gone is not an error."""
        try:
            await self._conn.unary(
                "lease",
                "LeaseRevoke",
                rpc_pb2.LeaseRevokeRequest(ID=lease_id),
                op=f"revoke lease {lease_id:x}",
            )
        except LeaseExpiredError:
            pass

    async def keepalive_once(self, lease_id: int) -> int:
        """Refresh a lease once; returns its new TTL. Raises :class:`LeaseExpiredError` if gone."""
        conn = self._conn
        timeout = conn.request_timeout
        op = f"keepalive lease {lease_id:x}"

        async def run(stubs: _Stubs) -> Any:
            call = stubs.lease.LeaseKeepAlive(timeout=timeout)
            try:
                await call.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))
                return await call.read()
            except asyncio.InvalidStateError:
                # The stream ended before we could use it; its status tells why.
                await call.code()
                return grpc.aio.EOF
            finally:
                call.cancel()

        resp = await conn.call(run, op=op)
        if resp is grpc.aio.EOF:
            raise KVStoreUnavailableError(f"etcd {op} at {self.endpoint}: stream closed without an answer")
        conn.observe(resp.header)
        if resp.TTL <= 0:
            raise LeaseExpiredError(f"etcd lease {lease_id:x} at {self.endpoint} has expired or was revoked")
        return int(resp.TTL)

    async def lease_ttl(self, lease_id: int) -> int:
        """Remaining TTL of a lease in seconds; raises :class:`LeaseExpiredError` if it is gone."""
        resp = await self._conn.unary(
            "lease", "LeaseTimeToLive", rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id), op="lease ttl"
        )
        if resp.TTL < 0:
            raise LeaseExpiredError(f"etcd lease {lease_id:x} at {self.endpoint} has expired or was revoked")
        return int(resp.TTL)

    # ---- watch and maintenance ----

    def watch(
        self, prefix: str, *, start_revision: int, progress_notify: bool = True
    ) -> AsyncGenerator[WatchBatch, None]:
        """Watch ``prefix`` from ``start_revision`` (inclusive), with progress notifications unless
        ``progress_notify=False``.

        Yields one :class:`WatchBatch` per etcd response; an empty batch is a progress
        notification. Stop with ``aclose()`` (or ``contextlib.aclosing``) to cancel the server-side
        watch at once. See :func:`meshcore.kvstore.watch.watch_prefix` for the errors raised.
        """
        return watch_prefix(self._conn, prefix, start_revision=start_revision, progress_notify=progress_notify)

    async def status(self) -> EndpointStatus:
        """What the current endpoint says about itself."""
        resp = await self._conn.unary("maintenance", "Status", rpc_pb2.StatusRequest(), op="status")
        h = resp.header
        return EndpointStatus(
            endpoint=self.endpoint,
            version=resp.version,
            cluster_id=h.cluster_id,
            member_id=h.member_id,
            revision=h.revision,
            leader=resp.leader,
            db_size=resp.dbSize,
        )
