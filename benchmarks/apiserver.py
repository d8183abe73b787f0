"""apiserver benchmark: Kubernetes -> etcd export, bulk and per change, against raw etcd baselines.

One real etcd on loopback, the Kubernetes API emulator on the same event loop (objects are written
into its store in-process, so the figures do not include kubectl or HTTP writes), and the real
:class:`~clustermesh_apiserver.server.ApiServer` reading the emulator through the official client.

- bulk: ``count`` CiliumEndpoints exist before the server starts; time from start until the ip
  canary is in etcd (every key written). Baseline: the same number of ipcache values written by raw
  128-operation transactions, one after another.
- per change: one CiliumEndpoint is updated at a time; time from the update until an etcd watch
  sees its key change. Baseline: a raw etcd put until the same watch sees it.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clustermesh_apiserver.config import ApiServerConfig
from clustermesh_apiserver.server import ApiServer
from lab.etcd import EtcdProcess
from lab.kube.api import K8sApiServer
from meshcore.kvstore.client import EtcdClient
from meshcore.kvstore.types import MAX_TXN_OPS, PutOp, WatchBatch
from meshcore.log import configure as configure_logging
from meshcore.wire import IPIdentityPair
from meshcore.wire import keys as wk

CLUSTER = "bench"
NAMESPACE = "bench"
IP_CANARY = wk.synced_key(CLUSTER, wk.IP)
SAMPLES = 300


@dataclass(frozen=True)
class Results:
    count: int
    export_seconds: float
    raw_seconds: float
    change_ms: list[float]
    raw_change_ms: list[float]


def endpoint_ip(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def cilium_endpoint(i: int, identity: int = 65600) -> dict[str, Any]:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumEndpoint",
        "metadata": {"name": f"pod-{i}", "namespace": NAMESPACE},
        "status": {
            "identity": {"id": identity},
            "networking": {"addressing": [{"ipv4": endpoint_ip(i)}], "node": "172.18.0.2"},
            "service-account": "default",
        },
    }


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def wait_key(client: EtcdClient, key: str, within: float) -> None:
    async with asyncio.timeout(within):
        while await client.get(key) is None:  # noqa: ASYNC110 - another process writes it
            await asyncio.sleep(0.005)


async def raw_bulk(client: EtcdClient, count: int) -> float:
    values = [
        (f"bench/raw/{endpoint_ip(i)}", IPIdentityPair(ip=endpoint_ip(i), host_ip="172.18.0.2", id=65600).encode())
        for i in range(count)
    ]
    started = time.perf_counter()
    for start in range(0, count, MAX_TXN_OPS):
        await client.txn([PutOp(k, v) for k, v in values[start : start + MAX_TXN_OPS]])
    return time.perf_counter() - started


class KeyWatch:
    """Timestamps every put under a prefix, seen by one etcd watch."""

    def __init__(self, client: EtcdClient, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self.seen: dict[str, float] = {}
        self.changed = asyncio.Event()

    async def run(self, start_revision: int) -> None:
        stream = self._client.watch(self._prefix, start_revision=start_revision)
        async with aclosing(stream):
            batch: WatchBatch
            async for batch in stream:
                now = time.perf_counter()
                for event in batch.events:
                    self.seen[event.key] = now
                self.changed.set()

    async def wait_for(self, key: str, after: float) -> float:
        async with asyncio.timeout(10):
            while self.seen.get(key, 0.0) < after:
                self.changed.clear()
                await self.changed.wait()
        return self.seen[key] - after


async def per_change(emulator: K8sApiServer, watch: KeyWatch, count: int) -> list[float]:
    out = []
    for n in range(SAMPLES):
        i = n % count
        key = f"{wk.IP_DEFAULT}/{endpoint_ip(i)}"
        started = time.perf_counter()
        emulator.store.patch(
            "ciliumendpoints.cilium.io", f"pod-{i}", {"status": {"identity": {"id": 65601 + n}}}, namespace=NAMESPACE
        )
        out.append(await watch.wait_for(key, started) * 1000)
    return out


async def raw_per_change(client: EtcdClient, watch: KeyWatch) -> list[float]:
    out = []
    for n in range(SAMPLES):
        key = f"bench/latency/{n % 50}"
        started = time.perf_counter()
        await client.put(key, str(n).encode())
        out.append(await watch.wait_for(key, started) * 1000)
    return out


async def run(count: int) -> Results:
    with tempfile.TemporaryDirectory(prefix="bench-apiserver-") as workdir:
        etcd = EtcdProcess(Path(workdir) / "etcd", name="bench")
        await etcd.start_async()
        try:
            async with K8sApiServer(bookmark_interval=1.0) as emulator, EtcdClient(etcd.client_config()) as client:
                raw_seconds = await raw_bulk(client, count)
                emulator.store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
                for i in range(count):
                    emulator.store.create(cilium_endpoint(i), copy=False)
                config = ApiServerConfig(
                    cluster_name=CLUSTER,
                    cluster_id=1,
                    etcd=etcd.client_config(),
                    kubeconfig=emulator.write_kubeconfig(Path(workdir) / "kubeconfig"),
                    health_port=0,
                )
                server = ApiServer(config)
                async with asyncio.TaskGroup() as tasks:
                    started = time.perf_counter()
                    running = tasks.create_task(server.run())
                    await wait_key(client, IP_CANARY, within=600)
                    export_seconds = time.perf_counter() - started
                    revision = (await client.status()).revision
                    watch = KeyWatch(client, "cilium/state/ip/")
                    raw_watch = KeyWatch(client, "bench/latency/")
                    watching = [
                        tasks.create_task(watch.run(revision + 1)),
                        tasks.create_task(raw_watch.run(revision + 1)),
                    ]
                    await asyncio.sleep(0.2)  # let both watches start
                    raw_change = await raw_per_change(client, raw_watch)
                    change = await per_change(emulator, watch, count)
                    for task in (running, *watching):
                        task.cancel()
        finally:
            etcd.close()
    return Results(count, export_seconds, raw_seconds, change, raw_change)


def main(count: int = 10000) -> None:
    from rich.console import Console
    from rich.table import Table

    configure_logging(level="warning")
    console = Console()
    console.print(
        f"[bold]apiserver[/bold]: {count} CiliumEndpoints, emulator -> ApiServer -> etcd 3.4 on loopback"
    )
    r = asyncio.run(run(count))
    table = Table()
    for column in ("case", "figure", "baseline", "ratio"):
        table.add_column(column, justify="left" if column == "case" else "right")
    table.add_row(
        f"initial export of {r.count} endpoints (s)",
        f"{r.export_seconds:.2f} ({r.count / r.export_seconds:,.0f}/s)",
        f"{r.raw_seconds:.2f} raw 128-op txns",
        f"{r.export_seconds / r.raw_seconds:.2f}x",
    )
    for name, fraction in (("p50", 0.5), ("p99", 0.99)):
        ours, raw = percentile(r.change_ms, fraction), percentile(r.raw_change_ms, fraction)
        table.add_row(
            f"per-change export latency {name} (ms)", f"{ours:.2f}", f"{raw:.2f} raw put->watch", f"{ours / raw:.1f}x"
        )
    console.print(table)
    console.print(
        f"per change: {SAMPLES} CiliumEndpoint updates, one at a time, until an etcd watch sees the key "
        f"(mean {statistics.mean(r.change_ms):.2f} ms). Ratios: ours / baseline (lower is better)."
    )


if __name__ == "__main__":
    main()
