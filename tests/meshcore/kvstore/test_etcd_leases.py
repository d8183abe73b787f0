"""Leases and LeaseManager against a real etcd."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from lab.etcd import EtcdProcess
from meshcore.errors import LeaseExpiredError
from meshcore.kvstore.client import EtcdClient
from meshcore.kvstore.leases import LeaseManager
from meshcore.kvstore.types import MAX_TXN_OPS, PutOp


async def eventually(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within}s: {what}")
        await asyncio.sleep(0.1)


class Expiries:
    """Records on_expired callbacks."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, frozenset[str]]] = []
        self.event = asyncio.Event()

    async def __call__(self, lease: int, keys: frozenset[str]) -> None:
        self.calls.append((lease, keys))
        self.event.set()


@pytest.fixture
async def running_manager(etcd_client: EtcdClient) -> AsyncIterator[tuple[LeaseManager, Expiries]]:
    manager = LeaseManager(etcd_client, ttl=2)
    expiries = Expiries()
    manager.on_expired(expiries)
    task = asyncio.create_task(manager.run())
    try:
        yield manager, expiries
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_revoked_lease_deletes_its_keys(etcd_client: EtcdClient) -> None:
    lease = await etcd_client.grant_lease(30)
    await etcd_client.put("l/a", b"1", lease=lease)
    await etcd_client.txn([PutOp("l/b", b"2", lease), PutOp("l/c", b"3")])
    kv = await etcd_client.get("l/a")
    assert kv is not None and kv.lease == lease
    assert 0 < await etcd_client.lease_ttl(lease) <= 30
    await etcd_client.revoke_lease(lease)
    assert [kv.key for kv in (await etcd_client.list_prefix("l/")).items] == ["l/c"]
    with pytest.raises(LeaseExpiredError, match="expired or was revoked"):
        await etcd_client.keepalive_once(lease)
    with pytest.raises(LeaseExpiredError):
        await etcd_client.lease_ttl(lease)
    await etcd_client.revoke_lease(lease)  # already gone: not an error
    with pytest.raises(LeaseExpiredError, match="grant a new one"):
        await etcd_client.put("l/d", b"4", lease=lease)


async def test_expired_lease_deletes_its_keys(etcd_client: EtcdClient) -> None:
    lease = await etcd_client.grant_lease(1)
    await etcd_client.put("e/a", b"1", lease=lease)

    async def gone() -> bool:
        return await etcd_client.get("e/a") is None

    await eventually(gone, 4.0, "key of an expired lease deleted")


async def test_keepalive_once_returns_ttl(etcd_client: EtcdClient) -> None:
    lease = await etcd_client.grant_lease(10)
    assert await etcd_client.keepalive_once(lease) == 10


async def test_manager_spreads_keys_over_leases(etcd_client: EtcdClient) -> None:
    manager = LeaseManager(etcd_client, ttl=30)
    keys = [f"m/{i:05d}" for i in range(2500)]
    leases = [await manager.acquire(k) for k in keys]
    assert sorted(manager.leases.values()) == [500, 1000, 1000]
    assert leases[0] == leases[999] != leases[1000] == leases[1999] != leases[2000]
    assert await manager.acquire(keys[5]) == leases[5]  # stable per key
    for start in range(0, len(keys), MAX_TXN_OPS):
        await etcd_client.txn(
            [PutOp(k, b"v", manager.lease_of(k) or 0) for k in keys[start : start + MAX_TXN_OPS]]
        )
    listed = await etcd_client.list_prefix("m/")
    assert len({kv.lease for kv in listed.items}) == 3
    await manager.revoke_all()
    assert (await etcd_client.list_prefix("m/")).items == []


async def test_concurrent_acquires_share_one_grant(etcd_client: EtcdClient) -> None:
    manager = LeaseManager(etcd_client, ttl=30, max_keys_per_lease=10)
    leases = await asyncio.gather(*(manager.acquire(f"k/{i}") for i in range(25)))
    assert sorted(manager.leases.values()) == [5, 10, 10]
    assert len(set(leases)) == 3


async def test_release_and_emptied_leases(etcd_client: EtcdClient) -> None:
    manager = LeaseManager(etcd_client, ttl=30, max_keys_per_lease=2)
    a = await manager.acquire("a")
    await manager.acquire("b")
    c = await manager.acquire("c")
    assert a != c
    manager.release("a")
    manager.release("b")
    assert a not in manager.leases  # emptied, not current: left to expire
    manager.release("c")
    assert manager.leases == {c: 0}  # the current lease stays for the next keys
    assert await manager.acquire("d") == c


async def test_manager_keeps_keys_alive_past_ttl(
    etcd_client: EtcdClient, running_manager: tuple[LeaseManager, Expiries]
) -> None:
    manager, expiries = running_manager
    lease = await manager.acquire("alive/a")
    await etcd_client.put("alive/a", b"1", lease=lease)
    await asyncio.sleep(4.5)  # more than twice the TTL
    assert await etcd_client.get("alive/a") is not None
    assert expiries.calls == []


async def test_revoked_behind_the_managers_back_notifies(
    etcd_client: EtcdClient, running_manager: tuple[LeaseManager, Expiries]
) -> None:
    manager, expiries = running_manager
    keys = {f"r/{i}" for i in range(5)}
    leases = {await manager.acquire(k) for k in keys}
    (lease,) = leases
    await etcd_client.revoke_lease(lease)
    await asyncio.wait_for(expiries.event.wait(), 3.0)
    assert expiries.calls == [(lease, frozenset(keys))]
    assert manager.leases == {}
    assert await manager.acquire("r/0") != lease


async def test_invalidate_notifies_at_once(running_manager: tuple[LeaseManager, Expiries]) -> None:
    manager, expiries = running_manager
    lease = await manager.acquire("i/a")
    await manager.acquire("i/b")
    manager.invalidate(lease)
    assert manager.lease_of("i/a") is None
    await asyncio.wait_for(expiries.event.wait(), 1.0)
    assert expiries.calls == [(lease, frozenset({"i/a", "i/b"}))]


async def test_unreachable_etcd_is_not_expiry(etcd: EtcdProcess, etcd_client: EtcdClient) -> None:
    manager = LeaseManager(etcd_client, ttl=3)
    expiries = Expiries()
    manager.on_expired(expiries)
    lease = await manager.acquire("u/a")
    await etcd_client.put("u/a", b"1", lease=lease)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(manager.run())
        etcd.stop()
        await asyncio.sleep(2.0)  # several failed keepalive rounds
        await etcd.start_async()  # etcd renews surviving leases on restart
        await asyncio.sleep(2.0)
        task.cancel()
    assert expiries.calls == []
    assert manager.lease_of("u/a") == lease
    assert await etcd_client.get("u/a") is not None


async def test_wiped_etcd_expires_every_lease(etcd: EtcdProcess, etcd_client: EtcdClient) -> None:
    manager = LeaseManager(etcd_client, ttl=2, max_keys_per_lease=2)
    expiries = Expiries()
    manager.on_expired(expiries)
    for key in ("w/a", "w/b", "w/c"):
        await etcd_client.put(key, b"1", lease=await manager.acquire(key))
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(manager.run())
        etcd.kill()
        etcd.wipe()
        await etcd.start_async()

        async def all_expired() -> bool:
            return len(expiries.calls) == 2

        await eventually(all_expired, 5.0, "both leases reported expired")
        task.cancel()
    assert set().union(*(keys for _, keys in expiries.calls)) == {"w/a", "w/b", "w/c"}
    assert manager.leases == {}
