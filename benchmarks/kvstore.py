"""kvstore benchmark: sync-store write throughput against raw 128-op transactions, and watch rates.

Everything runs against one real etcd on loopback, in one run, with one client, so the figures
that matter are the ratios: the sync store's overhead over the raw transactions it is made of, and
how fast a watch store takes in events compared with how fast they can be written.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lab.etcd import EtcdProcess
from lab.wait import poll_until
from meshcore.kvstore.client import EtcdClient
from meshcore.kvstore.leases import LeaseManager
from meshcore.kvstore.types import MAX_TXN_OPS, PutOp
from meshcore.log import configure as configure_logging
from meshcore.store.syncstore import SyncStore
from meshcore.store.watchstore import WatchStore
from meshcore.wire import IPIdentityPair


@dataclass(frozen=True)
class Rate:
    name: str
    count: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("inf")


def ipcache_values(count: int, offset: int) -> list[tuple[str, bytes]]:
    """``count`` ipcache entries as (name, Cilium JSON), like a cluster's endpoints."""
    out = []
    for i in range(offset, offset + count):
        ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        pair = IPIdentityPair(
            ip=ip, host_ip="172.18.0.2", id=65536 + i % 1000, k8s_namespace="bench", k8s_pod_name=f"pod-{i}"
        )
        out.append((ip, pair.encode()))
    return out


class CountingObserver:
    def __init__(self) -> None:
        self.upserts = 0

    def on_upsert(self, name: str, value: bytes) -> None:
        self.upserts += 1

    def on_delete(self, name: str) -> None:
        pass


async def raw_txn_puts(client: EtcdClient, prefix: str, items: list[tuple[str, bytes]]) -> Rate:
    start = time.perf_counter()
    for i in range(0, len(items), MAX_TXN_OPS):
        await client.txn([PutOp(f"{prefix}/{name}", value) for name, value in items[i : i + MAX_TXN_OPS]])
    return Rate("raw 128-op txn puts", len(items), time.perf_counter() - start)


async def sync_store_puts(client: EtcdClient, prefix: str, items: list[tuple[str, bytes]], *, leased: bool) -> Rate:
    leases = LeaseManager(client, ttl=900) if leased else None
    store = SyncStore(client, prefix, cluster="bench", leases=leases)
    async with asyncio.TaskGroup() as tasks:
        if leases is not None:
            keepalive = tasks.create_task(leases.run())
        worker = tasks.create_task(store.run())
        start = time.perf_counter()
        for name, value in items:
            store.upsert(name, value)
        store.synced()
        await store.wait_idle()
        seconds = time.perf_counter() - start
        worker.cancel()
        if leases is not None:
            keepalive.cancel()
    label = "sync store, leased (as exported)" if leased else "sync store, no lease"
    return Rate(label, len(items), seconds)


async def watch_rates(
    client: EtcdClient, reader: EtcdClient, prefix: str, items: list[tuple[str, bytes]]
) -> list[Rate]:
    """The snapshot rate of a fresh watch store over ``prefix`` (already filled), then the live
    event rate while the same number of new keys is written."""
    observer = CountingObserver()
    store: WatchStore[bytes] = WatchStore(reader, prefix + "/", lambda name, raw: raw, observer)
    async with asyncio.TaskGroup() as tasks:
        start = time.perf_counter()
        watcher = tasks.create_task(store.run())
        await store.synced.wait()
        snapshot = Rate("watch store initial list", observer.upserts, time.perf_counter() - start)
        before = observer.upserts
        start = time.perf_counter()
        await raw_txn_puts(client, prefix, [(f"live-{n}", v) for n, v in items])
        await poll_until(lambda: observer.upserts - before >= len(items), within=120, interval=0.01)
        live = Rate("watch events while written", observer.upserts - before, time.perf_counter() - start)
        watcher.cancel()
    return [snapshot, live]


async def run(count: int) -> list[tuple[Rate, Rate | None]]:
    with tempfile.TemporaryDirectory(prefix="bench-kvstore-") as workdir:
        etcd = EtcdProcess(Path(workdir) / "etcd", name="bench")
        await etcd.start_async()
        try:
            async with EtcdClient(etcd.client_config()) as client, EtcdClient(etcd.client_config()) as reader:
                raw = await raw_txn_puts(client, "bench/raw", ipcache_values(count, 0))
                unleased = await sync_store_puts(client, "bench/store", ipcache_values(count, count), leased=False)
                leased = await sync_store_puts(client, "bench/leased", ipcache_values(count, 2 * count), leased=True)
                raw_again = await raw_txn_puts(client, "bench/raw2", ipcache_values(count, 3 * count))
                baseline = Rate(raw.name, raw.count + raw_again.count, raw.seconds + raw_again.seconds)
                watch = await watch_rates(client, reader, "bench/raw", ipcache_values(count, 4 * count))
        finally:
            etcd.close()
    return [(baseline, None), (unleased, baseline), (leased, baseline), (watch[0], None), (watch[1], baseline)]


def main(count: int = 50000) -> None:
    from rich.console import Console
    from rich.table import Table

    configure_logging(level="warning")
    console = Console()
    console.print(f"[bold]kvstore[/bold]: {count} ipcache-sized values per case, one etcd 3.4 on loopback")
    results = asyncio.run(run(count))
    table = Table()
    for column in ("case", "keys", "seconds", "keys/s", "ratio to raw txn"):
        table.add_column(column, justify="right" if column != "case" else "left")
    for rate, baseline in results:
        ratio = f"{rate.per_second / baseline.per_second:.2f}" if baseline is not None else "-"
        table.add_row(rate.name, str(rate.count), f"{rate.seconds:.2f}", f"{rate.per_second:,.0f}", ratio)
    console.print(table)
    console.print(
        "raw baseline: the mean of two runs bracketing the sync-store runs. "
        "'watch events while written' is bounded by the write rate it is compared with."
    )
