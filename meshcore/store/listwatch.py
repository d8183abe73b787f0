"""List a prefix, then watch it, for as long as the caller iterates.

The stream of events it yields is what a reader needs to keep an exact copy of a prefix:

- :class:`ListStart`, then one :class:`Upsert` per key, then :class:`ListDone`: a full snapshot.
  It comes first, and again whenever the history needed to resume is gone (the revision was
  compacted, or the etcd behind the endpoint was replaced by another cluster). A reader marks its
  entries stale at ``ListStart`` and sweeps the ones still stale at ``ListDone``.
  With ``batched=True`` the snapshot's entries come as one :class:`ListItems` instead.
- :class:`Upsert` and :class:`Delete` for changes after the snapshot, in revision order.
- :class:`Connection` when the connection is lost or back. While etcd is unreachable the stream
  waits (with backoff) and then resumes the watch from the next revision, so no change is lost
  and nothing that survived is reported again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing, nullcontext
from dataclasses import dataclass

from meshcore.backoff import Backoff
from meshcore.errors import (
    ClusterChangedError,
    KVStoreAuthError,
    KVStoreError,
    WatchCompactedError,
)
from meshcore.kvstore.types import EventType, KeyValue, KVStore
from meshcore.log import get_logger


@dataclass(frozen=True, slots=True)
class ListStart:
    """A full snapshot of the prefix follows."""


@dataclass(frozen=True, slots=True)
class ListDone:
    """The snapshot that began at the last :class:`ListStart` is complete at ``revision``."""

    revision: int


@dataclass(frozen=True, slots=True)
class ListItems:
    """The snapshot's entries in one event (``list_and_watch(batched=True)``, instead of one
    :class:`Upsert` each: at 300k keys the per-event cost is a tenth of the agent's start)."""

    items: Sequence[KeyValue]


@dataclass(frozen=True, slots=True)
class Upsert:
    key: str
    value: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Delete:
    key: str
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Connection:
    """The connection to etcd was lost (``connected=False``, with the reason) or is back."""

    connected: bool
    reason: str = ""


ListWatchEvent = ListStart | ListItems | ListDone | Upsert | Delete | Connection


async def list_and_watch(
    kv: KVStore,
    prefix: str,
    *,
    backoff: Backoff | None = None,
    list_slots: asyncio.Semaphore | None = None,
    batched: bool = False,
) -> AsyncGenerator[ListWatchEvent, None]:
    """Yield a snapshot of ``prefix`` and then every change to it, until the caller stops.

    Errors never end the stream: unreachable etcd is retried with ``backoff``; a compacted
    revision or a replaced cluster leads to a fresh snapshot. Only cancellation ends it.

    ``list_slots``, shared by many streams, bounds how many snapshots are in memory at once: a
    slot is held from the list request until the consumer has taken the snapshot's last entry
    (an agent starting on 250 clusters would otherwise hold all 1000 raw lists together).
    ``batched`` gives a snapshot's entries as one :class:`ListItems`.
    """
    log = get_logger(__name__, prefix=prefix)
    backoff = backoff or Backoff(initial=0.2, maximum=10.0)
    revision = 0  # the last revision we have seen everything up to; 0 = need a snapshot
    cluster = 0  # the etcd cluster that revision belongs to
    connected = True
    while True:
        try:
            if revision == 0:
                async with list_slots or nullcontext():
                    snapshot = await kv.list_prefix(prefix)
                    if not connected:
                        connected = True
                        yield Connection(True)
                    yield ListStart()
                    if batched:
                        yield ListItems(snapshot.items)
                    else:
                        for item in snapshot.items:
                            yield Upsert(item.key, item.value, item.mod_revision)
                    revision = snapshot.revision
                    del snapshot  # not kept while watching: at 250k remote keys the raw list is ~100 MB
                cluster = kv.cluster_id
                yield ListDone(revision)
            elif not connected:
                # A resumed watch may stay silent for long: confirm etcd answers before saying so.
                await kv.get(prefix)
                connected = True
                yield Connection(True)
                if kv.cluster_id != cluster:
                    # Replaced behind our back (another user of this client saw the change first):
                    # our revision means nothing there.
                    log.info("kvstore cluster replaced, re-listing", old=f"{cluster:x}", new=f"{kv.cluster_id:x}")
                    revision = 0
                    continue
            # aclosing: when our consumer stops, end the gRPC stream now, not at garbage collection.
            async with aclosing(kv.watch(prefix, start_revision=revision + 1)) as batches:
                async for batch in batches:
                    if not connected:
                        connected = True
                        yield Connection(True)
                    backoff.reset()
                    for event in batch.events:
                        if event.type is EventType.PUT:
                            yield Upsert(event.key, event.value, event.mod_revision)
                        else:
                            yield Delete(event.key, event.mod_revision)
                    revision = max(revision, batch.revision)
            # The server ended the stream without an error: watch again from where we are.
        except (WatchCompactedError, ClusterChangedError) as err:
            log.info("kvstore history gone, re-listing", reason=str(err))
            revision = 0
        except KVStoreAuthError as err:
            # Not transient in the usual sense, but a role can be granted later: keep trying slowly.
            if connected:
                connected = False
                yield Connection(False, str(err))
            log.warning("kvstore denied the watch, retrying", error=str(err))
            await backoff.wait()
        except KVStoreError as err:
            if connected:
                connected = False
                yield Connection(False, str(err))
                log.warning("kvstore connection lost, retrying", error=str(err))
            await backoff.wait()
