"""KV operations of EtcdClient against a real etcd."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from lab.etcd import EtcdProcess
from meshcore.errors import (
    ClusterChangedError,
    KVStoreError,
    KVStoreUnavailableError,
    TxnTooLargeError,
    WireError,
)
from meshcore.kvstore.client import EtcdClient
from meshcore.kvstore.codec import prefix_range_end
from meshcore.kvstore.etcdpb import rpc_pb2
from meshcore.kvstore.types import MAX_TXN_OPS, DeleteOp, KVStore, PutOp


async def test_put_get_delete(etcd_client: EtcdClient) -> None:
    assert await etcd_client.get("a/1") is None
    rev1 = await etcd_client.put("a/1", b"one")
    rev2 = await etcd_client.put("a/1", b"uno")
    assert rev2 == rev1 + 1
    kv = await etcd_client.get("a/1")
    assert kv is not None
    assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (
        "a/1",
        b"uno",
        rev1,
        rev2,
        2,
        0,
    )
    assert await etcd_client.delete("a/1") == 1
    assert await etcd_client.delete("a/1") == 0
    assert await etcd_client.get("a/1") is None


async def test_prefix_ops(etcd_client: EtcdClient) -> None:
    for key in ("p/a", "p/b", "p/c/d", "pq", "o"):
        await etcd_client.put(key, key.encode())
    listed = await etcd_client.list_prefix("p/")
    assert [kv.key for kv in listed.items] == ["p/a", "p/b", "p/c/d"]
    assert listed.revision == (await etcd_client.status()).revision
    assert await etcd_client.delete_prefix("p/") == 3
    assert [kv.key for kv in (await etcd_client.list_prefix("")).items] == ["o", "pq"]


def test_prefix_range_end() -> None:
    assert prefix_range_end(b"a/") == b"a0"
    assert prefix_range_end(b"a\xff") == b"b"
    assert prefix_range_end(b"\xff\xff") == b"\0"
    assert prefix_range_end(b"") == b"\0"


def test_client_satisfies_kvstore_protocol() -> None:
    def accepts(kv: KVStore) -> None:
        del kv

    accepts(EtcdClient.__new__(EtcdClient))


async def test_list_paginates_at_one_pinned_revision(etcd: EtcdProcess, etcd_client: EtcdClient) -> None:
    n = 1050
    for start in range(0, n, MAX_TXN_OPS):
        await etcd_client.txn(
            [PutOp(f"big/{i:05d}", b"x" * 50) for i in range(start, min(n, start + MAX_TXN_OPS))]
        )
    async with EtcdClient(etcd.client_config(), page_size=100) as lister:
        ranges: list[Any] = []
        orig = lister._conn.unary

        async def spy(service: str, method: str, request: Any, **kw: Any) -> Any:
            resp = await orig(service, method, request, **kw)
            if method == "Range":
                ranges.append(request)
                # Writes between pages must not show up: the list is pinned to its first revision.
                await etcd_client.put(f"big/zz-{len(ranges)}", b"late")
                await etcd_client.delete("big/00000")
            return resp

        lister._conn.unary = spy  # type: ignore[method-assign]
        result = await lister.list_prefix("big/")
    assert len(ranges) == 11
    assert all(r.limit == 100 for r in ranges)
    assert ranges[0].revision == 0 and {r.revision for r in ranges[1:]} == {result.revision}
    assert [kv.key for kv in result.items] == [f"big/{i:05d}" for i in range(n)]
    assert max(kv.mod_revision for kv in result.items) <= result.revision


async def test_txn_limits(etcd_client: EtcdClient) -> None:
    ops = [PutOp(f"t/{i:03d}", b"v") for i in range(MAX_TXN_OPS)]
    rev = await etcd_client.txn(ops)
    listed = await etcd_client.list_prefix("t/")
    assert len(listed.items) == MAX_TXN_OPS
    assert {kv.mod_revision for kv in listed.items} == {rev}
    with pytest.raises(TxnTooLargeError, match="129 operations"):
        await etcd_client.txn([*ops, PutOp("t/extra", b"v")])
    rev2 = await etcd_client.txn([DeleteOp("t/0", prefix=True), PutOp("t/new", b"n"), DeleteOp("nothing")])
    assert rev2 == rev + 1
    assert [kv.key for kv in (await etcd_client.list_prefix("t/")).items] == [
        *(f"t/{i}" for i in range(100, MAX_TXN_OPS)),
        "t/new",
    ]
    with pytest.raises(KVStoreError, match="more than once"):
        await etcd_client.txn([DeleteOp("t/", prefix=True), PutOp("t/new", b"n")])


async def test_non_utf8_key_is_a_clear_error(etcd_client: EtcdClient) -> None:
    await etcd_client._conn.unary("kv", "Put", rpc_pb2.PutRequest(key=b"u/\xff", value=b""), op="put")
    with pytest.raises(WireError, match="not valid UTF-8") as exc:
        await etcd_client.list_prefix("u/")
    assert "\\xff" in str(exc.value)


async def test_status(etcd: EtcdProcess, etcd_client: EtcdClient) -> None:
    status = await etcd_client.status()
    assert status.endpoint == etcd.endpoint
    assert status.version == "3.4.23"
    assert status.cluster_id == etcd_client.cluster_id != 0
    assert status.leader == status.member_id


async def test_compact_then_list_still_works(etcd_client: EtcdClient) -> None:
    for i in range(5):
        rev = await etcd_client.put("c/k", str(i).encode())
    await etcd_client.compact(rev, physical=True)
    kv = await etcd_client.get("c/k")
    assert kv is not None and kv.value == b"4"


async def test_unreachable_endpoint(etcd_factory: Callable[..., EtcdProcess]) -> None:
    etcd = etcd_factory()
    cfg = etcd.client_config(dial_timeout=1.0, request_timeout=1.0)
    etcd.stop()
    t0 = time.monotonic()
    with pytest.raises(KVStoreUnavailableError, match=etcd.endpoint.replace(".", r"\.")):
        async with EtcdClient(cfg):
            pass
    assert time.monotonic() - t0 < 3


async def test_call_fails_fast_when_etcd_dies_then_recovers(etcd: EtcdProcess) -> None:
    async with EtcdClient(etcd.client_config(request_timeout=2.0)) as client:
        await client.put("k", b"v")
        etcd.kill()
        t0 = time.monotonic()
        with pytest.raises(KVStoreUnavailableError, match="check that etcd is running"):
            await client.get("k")
        assert time.monotonic() - t0 < 2.5
        await etcd.start_async()
        # gRPC reconnects by itself within its (shortened) backoff.
        for _ in range(50):
            try:
                kv = await client.get("k")
                break
            except KVStoreUnavailableError:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("client did not reconnect within 5 s")
        assert kv is not None and kv.value == b"v"


async def test_failover_to_next_endpoint(etcd_factory: Callable[..., EtcdProcess]) -> None:
    dead = etcd_factory("dead")
    live = etcd_factory("live")
    dead.stop()
    cfg = live.client_config(endpoints=[dead.endpoint, live.endpoint])
    async with EtcdClient(cfg) as client:
        assert client.endpoint == live.endpoint
        await client.put("k", b"v")


async def test_failover_to_another_cluster_is_detected(etcd_factory: Callable[..., EtcdProcess]) -> None:
    a = etcd_factory("a")
    b = etcd_factory("b")
    async with EtcdClient(a.client_config(endpoints=[a.endpoint, b.endpoint])) as client:
        await client.put("k", b"v")
        a.kill()
        with pytest.raises(ClusterChangedError, match="re-list"):
            await client.get("k")
        assert client.cluster_id == (await client.status()).cluster_id  # raised once, then adopted
        assert await client.get("k") is None


async def test_wiped_etcd_raises_cluster_changed_once(etcd: EtcdProcess) -> None:
    async with EtcdClient(etcd.client_config()) as client:
        await client.put("k", b"v")
        old_id = client.cluster_id
        etcd.stop()
        etcd.wipe()
        await etcd.start_async()
        with pytest.raises(ClusterChangedError, match="wiped or replaced"):
            for _ in range(50):
                try:
                    await client.get("k")
                except KVStoreUnavailableError:
                    await asyncio.sleep(0.1)
        assert client.cluster_id != old_id
        assert await client.get("k") is None  # the caller re-lists on the same client
        await client.reconnect()
        assert await client.get("k") is None


async def test_not_connected_is_a_clear_error(etcd: EtcdProcess) -> None:
    client = EtcdClient(etcd.client_config())
    with pytest.raises(KVStoreError, match="not connected"):
        await client.get("k")
