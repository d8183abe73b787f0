"""One etcd watch stream over a prefix, as an async iterator of :class:`WatchBatch`.

The stream is opened with ``progress_notify`` (unless the caller says otherwise) so an idle prefix
still reports the revision it is current at. The ``created`` response is not yielded: its header
revision can be ahead of events still to be replayed from ``start_revision``. Leaving the
iteration (``aclose()``, ``break`` inside ``contextlib.aclosing``, task cancellation) cancels the
watch on the server and the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import grpc
import grpc.aio

from meshcore.errors import (
    ClusterChangedError,
    KVStoreAuthError,
    KVStoreError,
    KVStoreUnavailableError,
    WatchCompactedError,
)
from meshcore.kvstore.codec import decode_events, prefix_range
from meshcore.kvstore.connection import EtcdConnection, _Stubs
from meshcore.kvstore.etcdpb import rpc_pb2
from meshcore.kvstore.types import WatchBatch

_CANCEL_WRITE_TIMEOUT = 1.0
# Makes etcd end the stream if the member loses its leader, as clientv3's WithRequireLeader does.
_REQUIRE_LEADER = (("hasleader", "true"),)


async def watch_prefix(
    conn: EtcdConnection, prefix: str, *, start_revision: int, progress_notify: bool = True
) -> AsyncGenerator[WatchBatch, None]:
    """Watch every key under ``prefix`` from ``start_revision`` (inclusive); with
    ``progress_notify``, etcd also sends an empty batch per progress interval while nothing changes.

    Raises :class:`WatchCompactedError` (with ``compact_revision``) when ``start_revision`` is
    compacted, :class:`KVStoreUnavailableError` when the stream cannot be opened or breaks,
    :class:`ClusterChangedError` when the cluster ID changes or etcd's revision is below
    ``start_revision - 1`` (its data was replaced), :class:`KVStoreAuthError` when the user may
    not read the prefix.
    """
    key, end = prefix_range(prefix)
    create = rpc_pb2.WatchRequest(
        create_request=rpc_pb2.WatchCreateRequest(
            key=key, range_end=end, start_revision=start_revision, progress_notify=progress_notify
        )
    )
    call, stubs, watch_id = await _open(conn, create, prefix, start_revision)
    label = stubs.target.endpoint
    try:
        while True:
            try:
                resp = await call.read()
            except grpc.aio.AioRpcError as e:
                err = conn.error(e, stubs, "watch", prefix)
                if not isinstance(err, KVStoreUnavailableError | KVStoreAuthError):
                    err = KVStoreUnavailableError(f"etcd watch on {prefix!r} at {label} broke: {err}")
                raise err from e
            if resp is grpc.aio.EOF:
                raise KVStoreUnavailableError(f"etcd watch on {prefix!r} at {label}: etcd closed the stream")
            conn.observe(resp.header)
            if resp.canceled or resp.compact_revision:
                raise _cancel_error(resp, prefix, label)
            if resp.created:
                continue
            yield WatchBatch(decode_events(resp.events), resp.header.revision)
    finally:
        await _cancel(call, watch_id)


async def _open(
    conn: EtcdConnection, create: Any, prefix: str, start_revision: int
) -> tuple[grpc.aio.StreamStreamCall, _Stubs, int]:
    """Open the stream and wait for the ``created`` response, failing over on unavailability."""
    timeout = conn.request_timeout

    async def run(stubs: _Stubs) -> tuple[grpc.aio.StreamStreamCall, _Stubs, int]:
        call = stubs.watch.Watch(metadata=_REQUIRE_LEADER)
        try:
            await call.write(create)
            async with asyncio.timeout(timeout):
                resp = await call.read()
        except TimeoutError:
            call.cancel()
            raise KVStoreUnavailableError(
                f"etcd watch on {prefix!r} at {stubs.target.endpoint}: no answer within {timeout}s"
            ) from None
        except asyncio.InvalidStateError:
            await call.code()  # raises the stream's AioRpcError when it failed
            raise KVStoreUnavailableError(f"etcd watch on {prefix!r}: stream ended at once") from None
        except BaseException:
            call.cancel()
            raise
        try:
            if resp is grpc.aio.EOF:
                raise KVStoreUnavailableError(
                    f"etcd watch on {prefix!r} at {stubs.target.endpoint}: etcd closed the stream"
                )
            conn.observe(resp.header)
            if resp.canceled or resp.compact_revision:
                raise _cancel_error(resp, prefix, stubs.target.endpoint)
            if resp.header.revision < start_revision - 1:
                raise ClusterChangedError(
                    f"etcd at {stubs.target.endpoint} is at revision {resp.header.revision}, below the "
                    f"watch's start revision {start_revision}: its data was replaced (wiped or restored); "
                    "reconnect and re-list"
                )
        except BaseException:
            call.cancel()
            raise
        return call, stubs, resp.watch_id

    return await conn.call(run, op="watch", key=prefix)


def _cancel_error(resp: Any, prefix: str, endpoint: str) -> KVStoreError:
    if resp.compact_revision:
        return WatchCompactedError(
            f"etcd watch on {prefix!r} at {endpoint}: the start revision was compacted (oldest "
            f"available is {resp.compact_revision}); re-list and watch from the list's revision",
            compact_revision=resp.compact_revision,
        )
    reason = resp.cancel_reason or "no reason given"
    if "permission denied" in reason.lower():
        return KVStoreAuthError(
            f"etcd refused to watch {prefix!r} at {endpoint}: {reason}; the client certificate's user "
            "needs read permission on this prefix"
        )
    return KVStoreError(f"etcd cancelled the watch on {prefix!r} at {endpoint}: {reason}")


async def _cancel(call: grpc.aio.StreamStreamCall, watch_id: int) -> None:
    """Tell etcd to drop the watch, then end the stream (which drops it in any case)."""
    try:
        if not call.done():
            req = rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=watch_id))
            async with asyncio.timeout(_CANCEL_WRITE_TIMEOUT):
                await call.write(req)
    except Exception:
        pass  # best effort: cancelling the stream below drops the watch as well
    finally:
        call.cancel()
