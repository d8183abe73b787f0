"""agent scale benchmark: Cilium's 250-cluster scale test, on one machine, in one run.

One real etcd on loopback holds 250 mocked remote clusters in the KVStoreMesh cache layout (by
default 25k nodes, 25k identities, 250k ipcache entries, 500 services), with each cluster's
config, heartbeat and synced canaries; a config directory names the 250 clusters, all pointing at
that etcd (as agents behind KVStoreMesh see it). Measured:

- **in-process sync**: a :class:`~meshcore.clustermesh.remote.ClusterMesh` with the agent's work
  (validation, watch stores, caches) from start until ``wait_synced`` returns, then one desired-state
  build on the synced caches. Baseline: a bare :class:`EtcdClient` listing the same 1000 prefixes
  (250 clusters x 4 kinds), concurrently, decoding nothing.
- **agent process**: ``clustermesh-agent --datapath none`` as a subprocess, from start until its
  status socket says all 250 remotes are ready and the desired state holds every entry; then its
  RSS (``VmRSS``) and peak (``VmHWM``). Baseline: the RSS of an idle agent with no remotes.

The pass marks are DESIGN.md's: full sync of 250k remote ipcache entries under 10 s and 300 MB RSS
per agent (Cilium's own scale test allows 5 minutes).

The data is written by :func:`populate` here; ``benchmarks.clustermesh_scale.populate`` (the
remote-layer benchmark's, when it lands) is meant to replace it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from agent.caches import MeshCaches
from agent.desired import LocalInfo, build_desired
from agent.remote import AgentWorkFactory
from lab.etcd import EtcdProcess
from lab.samples import SampleSize, canary_keys, cluster_records
from lab.wait import poll_until
from meshcore.clustermesh.remote import ClusterMesh
from meshcore.kvstore.client import EtcdClient
from meshcore.kvstore.types import MAX_TXN_OPS, PutOp
from meshcore.log import configure as configure_logging
from meshcore.wire import ClusterConfig, ClusterConfigCapabilities
from meshcore.wire import keys as wk
from meshcore.wire.keys import watch_prefix

LOCAL_NAME = "local"
LOCAL_ID = 255
PROJECT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Scale:
    """How big the mesh is."""

    clusters: int = 250
    size: SampleSize = SampleSize(nodes=100, endpoints_per_node=10, identities=100, services=2)

    @property
    def totals(self) -> tuple[int, int, int, int]:
        """(nodes, ipcache entries, identities, services) over all clusters."""
        s = self.size
        return (s.nodes * self.clusters, s.nodes * s.endpoints_per_node * self.clusters,
                s.identities * self.clusters, s.services * self.clusters)


def cluster_name(i: int) -> str:
    return f"cluster{i}"


async def populate(kv: EtcdClient, etcd: EtcdProcess, config_dir: Path, scale: Scale) -> float:
    """Write every cluster (cache layout, canaries, config, heartbeat) and the config directory;
    returns the seconds it took."""
    started = time.perf_counter()
    ops: list[PutOp] = []
    for cid in range(1, scale.clusters + 1):
        name = cluster_name(cid)
        ops += [PutOp(k, v) for k, v in cluster_records(name, cid, scale.size, cached=True)]
        config = ClusterConfig(cid, ClusterConfigCapabilities(synced_canaries=True, cached=True,
                                                              max_connected_clusters=255))
        ops.append(PutOp(wk.cluster_config_key(name), config.encode()))
        ops += [PutOp(k, b"2026-01-01T00:00:00Z") for k in canary_keys(name, cached=True)]
    ops.append(PutOp(wk.HEARTBEAT, b"2026-01-01T00:00:00Z"))
    batches = [ops[i : i + MAX_TXN_OPS] for i in range(0, len(ops), MAX_TXN_OPS)]
    queue = iter(batches)

    async def writer() -> None:
        for batch in queue:
            await kv.txn(batch)

    async with asyncio.TaskGroup() as tasks:
        for _ in range(8):
            tasks.create_task(writer())
    await asyncio.to_thread(write_config_dir, etcd, config_dir, scale)
    return time.perf_counter() - started


def write_config_dir(etcd: EtcdProcess, config_dir: Path, scale: Scale) -> None:
    """One etcd config file per remote cluster, all naming ``etcd``."""
    config_dir.mkdir(parents=True, exist_ok=True)
    for cid in range(1, scale.clusters + 1):
        etcd.write_config_yaml(config_dir / cluster_name(cid))


async def bare_list(kv: EtcdClient, scale: Scale) -> tuple[float, int]:
    """Baseline: list every prefix the agent watches, concurrently; (seconds, keys)."""
    prefixes = [
        watch_prefix(kind, cluster_name(cid), cached=True)
        for cid in range(1, scale.clusters + 1)
        for kind in ("node", "service", "ip", "identity")
    ]
    started = time.perf_counter()
    results = []
    async with asyncio.TaskGroup() as tasks:
        jobs = [tasks.create_task(kv.list_prefix(p)) for p in prefixes]
    results = [job.result() for job in jobs]
    return time.perf_counter() - started, sum(len(r.items) for r in results)


async def in_process_sync(config_dir: Path, scale: Scale) -> tuple[float, float, int]:
    """(seconds to full sync, seconds for one desired-state build, ipcache entries desired)."""
    caches = MeshCaches()
    factory = AgentWorkFactory(caches)
    mesh = ClusterMesh(local_name=LOCAL_NAME, local_id=LOCAL_ID, config_dir=config_dir, factory=factory,
                       config_interval=0.2)
    started = time.perf_counter()
    async with asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(mesh.run())
        synced = await mesh.wait_synced(300)
        sync_seconds = time.perf_counter() - started
        runner.cancel()
    if not synced:
        raise RuntimeError("the in-process agent did not sync within 300 s")
    counts = [w.counts() for w in factory.works.values()]
    got = (sum(c.nodes for c in counts), sum(c.endpoints for c in counts), sum(c.identities for c in counts),
           sum(c.shared_services for c in counts))
    if got != scale.totals:
        raise RuntimeError(f"synced counts {got} differ from what was written {scale.totals}")
    started = time.perf_counter()
    desired = build_desired(LocalInfo(LOCAL_NAME, LOCAL_ID, "bench-node"), caches.snapshot())
    return sync_seconds, time.perf_counter() - started, len(desired.ipcache)


def _proc_status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def _agent_get(sock: Path, path: str) -> object:
    from clustermesh_cli.status import AgentUnreachableError, agent_get

    try:
        return agent_get(sock, path, timeout=30)
    except AgentUnreachableError:
        return None


async def agent_process(
    workdir: Path, config_dir: Path, expected_ipcache: int, clusters: int
) -> tuple[float, int, int]:
    """Run the agent subprocess until all remotes are ready and the desired state is complete;
    (seconds from start, VmRSS kB, VmHWM kB)."""
    sock = workdir / "agent.sock"
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli", "--cluster-name", LOCAL_NAME, "--cluster-id", str(LOCAL_ID),
        "--node-name", "bench-node", "--clustermesh-config", str(config_dir), "--state-dir", str(workdir),
        "--agent-socket", str(sock), "--datapath", "none", "--log-level", "warning",
        "--clustermesh-sync-timeout", "300",
        cwd=PROJECT, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        def done() -> bool:
            doc = _agent_get(sock, "/v1/status")
            if not isinstance(doc, dict):
                return False
            ready = [c for c in doc["cluster-mesh"]["clusters"] if c["ready"]]
            return len(ready) == clusters and doc["local"]["desired"]["ipcache"] >= expected_ipcache

        async def check() -> bool:
            return await asyncio.to_thread(done)

        if not await poll_until(check, within=600, interval=0.25):
            raise RuntimeError("the agent process did not sync within 600 s")
        seconds = time.perf_counter() - started
        return seconds, _proc_status_kb(proc.pid, "VmRSS"), _proc_status_kb(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


async def run(scale: Scale) -> dict[str, float]:
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="agent-scale-") as tmp:
        workdir = Path(tmp)
        etcd = EtcdProcess(workdir / "etcd", name="bench", extra_args=("--quota-backend-bytes=8589934592",))
        etcd.start()
        try:
            async with EtcdClient(etcd.client_config(request_timeout=60)) as kv:
                figures["populate_s"] = await populate(kv, etcd, workdir / "clustermesh", scale)
                figures["bare_list_s"], figures["bare_list_keys"] = await bare_list(kv, scale)
            sync_s, build_s, desired = await in_process_sync(workdir / "clustermesh", scale)
            figures.update(in_process_sync_s=sync_s, desired_build_s=build_s, desired_ipcache=desired)
            (workdir / "empty").mkdir()
            _, idle_rss, _ = await agent_process(workdir / "idle", workdir / "empty", 0, 0)
            figures["idle_rss_mb"] = idle_rss / 1024
            seconds, rss, hwm = await agent_process(workdir / "full", workdir / "clustermesh", desired, scale.clusters)
            figures.update(agent_ready_s=seconds, agent_rss_mb=rss / 1024, agent_peak_rss_mb=hwm / 1024)
        finally:
            etcd.close()
    return figures


def main(clusters: int = 250, nodes: int = 100, endpoints_per_node: int = 10, identities: int = 100) -> None:
    from rich.console import Console
    from rich.table import Table

    configure_logging(level="warning")
    scale = Scale(clusters, SampleSize(nodes=nodes, endpoints_per_node=endpoints_per_node, identities=identities,
                                       services=2))
    total_nodes, total_ips, total_ids, total_svcs = scale.totals
    console = Console()
    console.print(
        f"[bold]agent scale[/bold]: {clusters} remote clusters (KVStoreMesh cache layout) in one etcd 3.4: "
        f"{total_nodes} nodes, {total_ips} ipcache entries, {total_ids} identities, {total_svcs} services"
    )
    f = asyncio.run(run(scale))
    table = Table()
    for column in ("measure", "value", "baseline", "ratio"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    table.add_row("populate etcd (8 concurrent 128-op txns)", f"{f['populate_s']:.2f} s", "", "")
    table.add_row("in-process full sync (validate + caches)", f"{f['in_process_sync_s']:.2f} s",
                  f"{f['bare_list_s']:.2f} s bare list of {int(f['bare_list_keys'])} keys",
                  f"{f['in_process_sync_s'] / f['bare_list_s']:.1f}x")
    table.add_row("desired-state build (one, on synced caches)",
                  f"{f['desired_build_s']:.2f} s", f"{int(f['desired_ipcache'])} ipcache entries", "")
    table.add_row("agent process: start -> all ready + desired", f"{f['agent_ready_s']:.2f} s", "10 s target",
                  f"{f['agent_ready_s'] / 10:.2f} of target")
    table.add_row("agent process RSS after sync", f"{f['agent_rss_mb']:.0f} MB",
                  f"{f['idle_rss_mb']:.0f} MB idle agent", f"+{f['agent_rss_mb'] - f['idle_rss_mb']:.0f} MB")
    table.add_row("agent process peak RSS (VmHWM)", f"{f['agent_peak_rss_mb']:.0f} MB", "300 MB target",
                  f"{f['agent_peak_rss_mb'] / 300:.2f} of target")
    console.print(table)
    if os.environ.get("BENCH_JSON"):
        print(json.dumps(f))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.agent_scale", description=__doc__.split("\n")[0])
    parser.add_argument("--clusters", type=int, default=250)
    parser.add_argument("--nodes", type=int, default=100, help="nodes per cluster (at most 256)")
    parser.add_argument("--endpoints-per-node", type=int, default=10)
    parser.add_argument("--identities", type=int, default=100, help="identities per cluster")
    args = parser.parse_args()
    main(args.clusters, args.nodes, args.endpoints_per_node, args.identities)
