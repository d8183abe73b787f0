"""EtcdClient.watch against a real etcd: ordering, revisions, progress, compaction, faults."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from lab.etcd import EtcdProcess
from meshcore.clustermesh.remote import ReadOnlyKVStore
from meshcore.errors import ClusterChangedError, KVStoreUnavailableError, WatchCompactedError
from meshcore.kvstore.client import EtcdClient
from meshcore.kvstore.types import EventType, WatchBatch, WatchEvent

WAIT = 5.0  # upper bound for anything that should happen "at once"


async def next_batch(it: AsyncIterator[WatchBatch], within: float = WAIT) -> WatchBatch:
    return await asyncio.wait_for(anext(it), within)


async def watchers_drop_to(etcd: EtcdProcess, count: float) -> float:
    """Poll etcd's watcher gauge (bounded) until it reaches ``count``; returns the last value."""
    value = -1.0
    for _ in range(100):
        value = etcd.metric("etcd_debugging_mvcc_watcher_total") or 0.0
        if value == count:
            break
        await asyncio.sleep(0.05)
    return value


async def events_until(it: AsyncIterator[WatchBatch], count: int) -> list[WatchEvent]:
    got: list[WatchEvent] = []
    deadline = time.monotonic() + WAIT
    while len(got) < count:
        batch = await next_batch(it, deadline - time.monotonic())
        assert all(ev.mod_revision <= batch.revision for ev in batch.events)
        got.extend(batch.events)
    return got


async def test_events_in_order(etcd_client: EtcdClient) -> None:
    start = (await etcd_client.status()).revision + 1
    async with contextlib.aclosing(etcd_client.watch("w/", start_revision=start)) as it:
        r1 = await etcd_client.put("w/a", b"1")
        r2 = await etcd_client.put("w/b", b"2")
        await etcd_client.put("other", b"x")
        r3 = await etcd_client.delete("w/a") and (await etcd_client.status()).revision
        r4 = await etcd_client.put("w/b", b"3")
        events = await events_until(it, 4)
    assert events == [
        WatchEvent(EventType.PUT, "w/a", b"1", r1),
        WatchEvent(EventType.PUT, "w/b", b"2", r2),
        WatchEvent(EventType.DELETE, "w/a", b"", r3),
        WatchEvent(EventType.PUT, "w/b", b"3", r4),
    ]


async def test_start_revision_is_inclusive(etcd_client: EtcdClient) -> None:
    await etcd_client.put("s/1", b"a")
    r2 = await etcd_client.put("s/2", b"b")
    await etcd_client.put("s/3", b"c")
    async with contextlib.aclosing(etcd_client.watch("s/", start_revision=r2)) as it:
        events = await events_until(it, 2)
    assert [(e.key, e.mod_revision) for e in events] == [("s/2", r2), ("s/3", r2 + 1)]


async def test_progress_notifications_arrive_as_empty_batches(etcd_client: EtcdClient) -> None:
    rev = await etcd_client.put("elsewhere", b"x")
    async with contextlib.aclosing(etcd_client.watch("idle/", start_revision=rev + 1)) as it:
        batch = await next_batch(it, 4.0)  # the lab's etcd notifies every second
        assert batch.events == [] and batch.revision == rev
        rev2 = await etcd_client.put("elsewhere", b"y")
        deadline = time.monotonic() + 4.0
        while batch.revision < rev2:
            batch = await next_batch(it, deadline - time.monotonic())
            assert batch.events == []


async def test_without_progress_notify_an_idle_watch_stays_silent(etcd_client: EtcdClient) -> None:
    """What the remote clusters' watches use (ReadOnlyKVStore.watch): no empty batches, events still."""
    rev = await etcd_client.put("elsewhere", b"x")
    remote = ReadOnlyKVStore(etcd_client)
    async with contextlib.aclosing(remote.watch("quiet/", start_revision=rev + 1)) as it:
        pending = asyncio.ensure_future(anext(it))  # not cancelled on a timeout: that would end the watch
        done, _ = await asyncio.wait([pending], timeout=2.5)  # the lab's etcd notifies every second
        assert not done, pending.result()
        r2 = await etcd_client.put("quiet/a", b"1")
        batch = await asyncio.wait_for(pending, WAIT)
    assert [(e.key, e.mod_revision) for e in batch.events] == [("quiet/a", r2)]


async def test_compacted_start_revision(etcd_client: EtcdClient) -> None:
    first = await etcd_client.put("c/k", b"0")
    for i in range(1, 5):
        last = await etcd_client.put("c/k", str(i).encode())
    await etcd_client.compact(last)
    with pytest.raises(WatchCompactedError) as exc:
        async with contextlib.aclosing(etcd_client.watch("c/", start_revision=first)) as it:
            await next_batch(it)
    assert exc.value.compact_revision == last
    assert "re-list" in str(exc.value)


async def test_etcd_killed_mid_watch_raises_unavailable_promptly(etcd: EtcdProcess) -> None:
    async with EtcdClient(etcd.client_config()) as client:
        rev = await client.put("k/a", b"1")
        async with contextlib.aclosing(client.watch("k/", start_revision=rev)) as it:
            await next_batch(it)
            etcd.kill()
            t0 = time.monotonic()
            with pytest.raises(KVStoreUnavailableError, match="k/"):
                await next_batch(it)
            assert time.monotonic() - t0 < 2


async def test_wiped_and_restarted_etcd_is_a_cluster_change(etcd: EtcdProcess) -> None:
    async with EtcdClient(etcd.client_config()) as client:
        for i in range(5):
            rev = await client.put("k/a", str(i).encode())
        etcd.kill()
        etcd.wipe()
        await etcd.start_async()
        with pytest.raises(ClusterChangedError):
            for _ in range(50):  # until gRPC has reconnected
                try:
                    async with contextlib.aclosing(client.watch("k/", start_revision=rev + 1)) as it:
                        await next_batch(it)
                except KVStoreUnavailableError:
                    await asyncio.sleep(0.1)


async def test_revision_behind_start_revision_is_a_cluster_change(etcd: EtcdProcess) -> None:
    # Same cluster ID (a fresh client) but etcd's history is behind what the caller saw.
    async with EtcdClient(etcd.client_config()) as client:
        rev = (await client.status()).revision
        with pytest.raises(ClusterChangedError, match="below the watch's start revision"):
            async with contextlib.aclosing(client.watch("k/", start_revision=rev + 10)) as it:
                await next_batch(it)


async def test_closing_the_iterator_cancels_the_server_watch(
    etcd: EtcdProcess, etcd_client: EtcdClient
) -> None:
    def watchers() -> float:
        return etcd.metric("etcd_debugging_mvcc_watcher_total") or 0.0

    base = watchers()
    rev = await etcd_client.put("x/a", b"1")
    it = etcd_client.watch("x/", start_revision=rev)
    await next_batch(it)
    assert watchers() == base + 1
    await it.aclose()
    assert await watchers_drop_to(etcd, base) == base


async def test_task_cancellation_ends_the_watch(etcd: EtcdProcess, etcd_client: EtcdClient) -> None:
    rev = await etcd_client.put("y/a", b"1")

    async def consume() -> None:
        async with contextlib.aclosing(etcd_client.watch("y/", start_revision=rev)) as it:
            async for _ in it:
                pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, WAIT)
    assert await watchers_drop_to(etcd, 0) == 0
