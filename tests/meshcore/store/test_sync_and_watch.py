"""Sync store and watch store together on a real etcd, including etcd dying mid-watch."""

from __future__ import annotations

import asyncio

import pytest

from lab.etcd import EtcdProcess
from meshcore.errors import WireError
from meshcore.kvstore.client import EtcdClient
from meshcore.kvstore.leases import LeaseManager
from meshcore.store.syncstore import SyncStore
from meshcore.store.watchstore import WatchStore
from tests.meshcore.store.helpers import RecordingObserver, etcd_view, eventually, raw, running

PREFIX = "cilium/state/test/v1/c1"


async def test_sync_store_writes_leased_keys_then_canary(etcd_client: EtcdClient) -> None:
    leases = LeaseManager(etcd_client, ttl=30)
    store = SyncStore(etcd_client, PREFIX, cluster="c1", leases=leases)
    async with running(leases.run(), store.run()):
        for i in range(300):
            store.upsert(f"node-{i}", f'{{"n":{i}}}'.encode())
        store.upsert("node-0", b'{"n":"latest"}')  # coalesced with the first write
        synced = asyncio.Event()
        store.synced(synced.set)
        await asyncio.wait_for(synced.wait(), 20)

        listing = await etcd_client.list_prefix(PREFIX + "/")
        assert len(listing.items) == 300
        assert {i.key for i in listing.items} == {f"{PREFIX}/node-{i}" for i in range(300)}
        assert all(i.lease != 0 for i in listing.items), "every key must be leased"
        assert next(i.value for i in listing.items if i.key.endswith("/node-0")) == b'{"n":"latest"}'
        canary = await etcd_client.get("cilium/synced/c1/" + PREFIX)
        assert canary is not None and canary.lease != 0
        assert canary.mod_revision > max(i.mod_revision for i in listing.items)
        assert canary.value.decode().endswith("Z")

        # An unchanged value is not written again; deletes remove only what the store wrote.
        before = (await etcd_client.get(f"{PREFIX}/node-1"))
        store.upsert("node-1", b'{"n":1}')
        store.delete("never-written")
        store.delete("node-2")
        await asyncio.wait_for(store.wait_idle(), 10)
        after = await etcd_client.get(f"{PREFIX}/node-1")
        assert before is not None and after is not None and after.mod_revision == before.mod_revision
        assert await etcd_client.get(f"{PREFIX}/node-2") is None


async def test_canary_waits_for_everything_queued_before_it(etcd: EtcdProcess, etcd_client: EtcdClient) -> None:
    store = SyncStore(etcd_client, PREFIX, cluster="c1", leases=None)
    for i in range(50):
        store.upsert(f"k{i}", b"v")
    store.synced()
    etcd.pause()  # nothing can be written yet
    try:
        async with running(store.run()):
            await asyncio.sleep(0.5)
            assert not store.is_synced
            etcd.resume()
            await eventually(lambda: store.is_synced)
    finally:
        etcd.resume()
    assert len((await etcd_client.list_prefix(PREFIX + "/")).items) == 50


async def test_lease_expiry_recreates_keys(etcd_client: EtcdClient) -> None:
    leases = LeaseManager(etcd_client, ttl=3)
    store = SyncStore(etcd_client, PREFIX, cluster="c1", leases=leases)
    async with running(leases.run(), store.run()):
        for i in range(20):
            store.upsert(f"k{i}", b"v")
        store.synced()
        await asyncio.wait_for(store.wait_idle(), 10)
        old_lease = leases.lease_of(f"{PREFIX}/k0")
        assert old_lease is not None
        # Someone (or etcd) ends the lease: every key on it disappears from etcd ...
        await etcd_client.revoke_lease(old_lease)
        assert (await etcd_client.list_prefix(PREFIX + "/")).items == []
        # ... and the store writes all of them again, the canary included, on a new lease.
        async def recreated() -> bool:
            items = (await etcd_client.list_prefix(PREFIX + "/")).items
            canary = await etcd_client.get("cilium/synced/c1/" + PREFIX)
            return len(items) == 20 and canary is not None
        await eventually(recreated, within=15)
        items = (await etcd_client.list_prefix(PREFIX + "/")).items
        assert {i.lease for i in items} != {old_lease}
        assert all(i.lease != 0 for i in items)


async def test_watch_store_survives_etcd_kill_and_restart(etcd: EtcdProcess, etcd_client: EtcdClient) -> None:
    """etcd is SIGKILLed mid-watch while keys are added and deleted; afterwards the watcher's
    view equals etcd's, with no lost and no phantom keys, and survivors got no events."""
    observer = RecordingObserver()
    async with EtcdClient(etcd.client_config()) as reader:
        writer = SyncStore(etcd_client, PREFIX, cluster="c1", leases=None)
        watcher = WatchStore(reader, PREFIX + "/", raw, observer)
        async with running(writer.run(), watcher.run()):
            for i in range(200):
                writer.upsert(f"k{i:03}", b"v0")
            writer.synced()
            await asyncio.wait_for(writer.wait_idle(), 20)
            await asyncio.wait_for(watcher.synced.wait(), 20)
            await eventually(lambda: len(observer.view) == 200)
            observer.events.clear()

            for i in range(100, 150):
                writer.delete(f"k{i:03}")
            for i in range(200, 260):
                writer.upsert(f"k{i:03}", b"v1")
            await asyncio.sleep(0.02)  # let some, not necessarily all, of that land
            etcd.kill()
            for i in range(150, 200):  # queued while etcd is down
                writer.delete(f"k{i:03}")
            for i in range(260, 300):
                writer.upsert(f"k{i:03}", b"v2")
            for i in range(50, 60):
                writer.upsert(f"k{i:03}", b"changed")
            await eventually(lambda: not watcher.connected, within=10)
            await asyncio.sleep(1.0)
            await etcd.restart_async()
            await asyncio.wait_for(writer.wait_idle(), 30)

            expected = {f"k{i:03}": b"v0" for i in range(100)}
            expected.update({f"k{i:03}": b"changed" for i in range(50, 60)})
            expected.update({f"k{i:03}": b"v1" for i in range(200, 260)})
            expected.update({f"k{i:03}": b"v2" for i in range(260, 300)})

            async def converged() -> bool:
                return observer.view == await etcd_view(reader, PREFIX + "/")
            await eventually(converged, within=20)
            assert observer.view == expected
            assert watcher.connected
            touched = {name for _, name in observer.events}
            survivors = {f"k{i:03}" for i in range(100)} - {f"k{i:03}" for i in range(50, 60)}
            assert not touched & survivors, f"spurious events for surviving keys: {touched & survivors}"


async def test_relist_marks_and_sweeps(etcd_client: EtcdClient) -> None:
    """A watch store run again after the history was compacted away re-lists: vanished keys get
    deletes, changed and new ones upserts, untouched ones nothing."""
    for i in range(10):
        await etcd_client.put(f"{PREFIX}/k{i}", b"v0")
    observer = RecordingObserver()
    watcher = WatchStore(etcd_client, PREFIX + "/", raw, observer)
    async with running(watcher.run()):
        await asyncio.wait_for(watcher.synced.wait(), 10)
    assert len(observer.view) == 10
    observer.events.clear()

    await etcd_client.delete(f"{PREFIX}/k0")
    await etcd_client.delete(f"{PREFIX}/k1")
    await etcd_client.put(f"{PREFIX}/k2", b"v1")
    revision = await etcd_client.put(f"{PREFIX}/k10", b"new")
    await etcd_client.compact(revision)

    async with running(watcher.run()):
        await eventually(lambda: len(observer.events) == 4)
        await asyncio.sleep(0.2)
    assert sorted(observer.events) == [("delete", "k0"), ("delete", "k1"), ("upsert", "k10"), ("upsert", "k2")]
    assert observer.view == await etcd_view(etcd_client, PREFIX + "/")


async def test_replaced_etcd_is_relisted(etcd: EtcdProcess, etcd_client: EtcdClient) -> None:
    """An ephemeral etcd that comes back empty (another cluster ID) is re-listed from scratch."""
    observer = RecordingObserver()
    async with EtcdClient(etcd.client_config()) as reader:
        watcher = WatchStore(reader, PREFIX + "/", raw, observer)
        for i in range(5):
            await etcd_client.put(f"{PREFIX}/k{i}", b"v0")
        async with running(watcher.run()):
            await asyncio.wait_for(watcher.synced.wait(), 10)
            await eventually(lambda: len(observer.view) == 5)
            etcd.kill()
            etcd.wipe()
            await etcd.restart_async()
            async with EtcdClient(etcd.client_config()) as fresh:
                await fresh.put(f"{PREFIX}/k3", b"v0")
                await fresh.put(f"{PREFIX}/other", b"x")
            await eventually(lambda: observer.view == {"k3": b"v0", "other": b"x"}, within=20)


async def test_invalid_entries_are_skipped_and_counted(etcd_client: EtcdClient) -> None:
    def decode(name: str, value: bytes) -> bytes:
        if not value.startswith(b"{"):
            raise WireError("not a JSON object", field="value")
        return value

    observer = RecordingObserver()
    watcher = WatchStore(etcd_client, PREFIX + "/", decode, observer)
    await etcd_client.put(f"{PREFIX}/good", b"{}")
    await etcd_client.put(f"{PREFIX}/bad", b"garbage")
    async with running(watcher.run()):
        await asyncio.wait_for(watcher.synced.wait(), 10)
        await etcd_client.put(f"{PREFIX}/bad", b"still garbage")
        await etcd_client.put(f"{PREFIX}/good", b"nope")  # bad update keeps the last good value
        await etcd_client.put(f"{PREFIX}/later", b"{}")
        await eventually(lambda: "later" in observer.view)
    assert observer.view == {"good": b"{}", "later": b"{}"}
    assert watcher.invalid_total == 3
    assert "bad" in watcher.status().last_error or "good" in watcher.status().last_error


@pytest.mark.parametrize("gated", [True, False])
async def test_watch_store_manager_waits_for_canary(etcd_client: EtcdClient, gated: bool) -> None:
    from meshcore.store.watchstoremgr import WatchStoreManager

    started: list[str] = []

    async def start_nodes() -> None:
        started.append("nodes")
        await asyncio.Event().wait()

    manager = WatchStoreManager(etcd_client, "cilium/synced/c1/", gated=gated)
    manager.register("cilium/state/nodes/v1", start_nodes)
    async with running(manager.run()):
        await asyncio.sleep(0.5)
        assert started == ([] if gated else ["nodes"])
        await etcd_client.put("cilium/synced/c1/cilium/state/nodes/v1x", b"not this one")
        await etcd_client.put("cilium/synced/c1/cilium/state/nodes/v1", b"2026-01-01T00:00:00Z")
        await eventually(lambda: started == ["nodes"])
