"""datapath benchmark: map writes through the reconcilers against raw batch syscalls, and
cross-cluster TCP through the agent-programmed datapath against a hand-built VXLAN mesh.

Both comparisons are measured in one run, on one machine:

- **ipcache map writes**: a :class:`~meshcore.reconcile.Reconciler` over the real pinned ipcache
  LPM trie (:class:`~agent.datapath.targets.IPCacheTarget`, batch size as the agent's) applying
  250k desired entries from scratch, timed from ``set_desired`` to ``wait_synced`` (the first read
  of the empty map, the diff and the packed batch writes). Baseline: bare ``BPF_MAP_UPDATE_BATCH``
  calls from buffers packed beforehand (:func:`bpf.bench.raw_batch_rate`), the mean of two runs
  bracketing the reconciler's, each on a fresh map in a private pin root.
- **cross-cluster TCP throughput**: :func:`lab.net.tcp_throughput` from a pod in c1 to a pod in
  c2 (another node), both ``kubectl apply``-ed into a ``clustermesh lab up --no-mesh`` lab of
  2 x 2 nodes (:func:`lab.meshtest.meshed_lab`, traffic through ``clustermesh lab exec``): first
  over a VXLAN mesh built by hand between the two clusters' node namespaces
  (:func:`lab.meshtest.hand_built_tunnel`: plain routes + a kernel VXLAN device), then, with it
  removed, over the datapath of the agents that ``clustermesh enable`` and ``connect`` installed
  on the same lab (:func:`lab.meshtest.enable_mesh`). Best of several short runs each (single
  runs are noisy on shared CPUs).

The pass marks are DESIGN.md's: reconciler writes at >= 0.5 of the raw batch rate, agent
datapath throughput >= 0.9 of the hand-built tunnel's. Needs root and bpffs (skipped otherwise).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from agent.datapath.targets import IPCacheTarget, ipcache_desired
from agent.desired import IPCacheEntry
from bpf.bench import raw_batch_rate
from bpf.layouts import Direction, Reason
from bpf.maps import NodeMaps
from lab.meshtest import LabPod, enable_mesh, hand_built_tunnel, meshed_lab, node_links, node_routes, remove_hand_built
from lab.net import HAND_BUILT_PROTO, names, tcp_throughput
from lab.prereqs import datapath_unavailable
from meshcore.log import configure as configure_logging
from meshcore.reconcile import Reconciler

ENTRIES = 250_000
RECONCILER_BATCH = 65536  # as agent.datapath.node's ipcache reconciler
MAP_TARGET = 0.5
TCP_TARGET = 0.9
BENCH_PODS = {"src": ("c1", 0, "client"), "dst": ("c2", 1, "server")}
"""A pod in c1/n0 sending to a pod in c2/n1: cross-cluster, cross-node, through the underlay."""


@dataclass(frozen=True)
class MapWrites:
    entries: int
    raw_per_s: list[float]
    reconciler_per_s: float

    @property
    def raw_mean(self) -> float:
        return sum(self.raw_per_s) / len(self.raw_per_s)


@dataclass(frozen=True)
class Throughput:
    seconds: float
    hand_built_bps: list[float]
    agent_bps: list[float]
    to_tunnel_packets: int


def _desired(n: int) -> dict[bytes, bytes]:
    entries = (
        IPCacheEntry(
            prefix=f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32", identity=(2 << 16) + 1000 + i % 1000,
            tunnel_endpoint="192.168.0.1", encrypt_key=0, cluster_id=2, cluster="c2", source="kvstore",
        )
        for i in range(n)
    )  # fmt: skip
    return ipcache_desired(entries)


async def _reconcile(maps: NodeMaps, desired: dict[bytes, bytes]) -> float:
    """Seconds from ``set_desired`` to ``wait_synced`` for a fresh reconciler over ``maps.ipcache``."""
    reconciler: Reconciler[bytes, bytes] = Reconciler("ipcache", IPCacheTarget(maps), batch_size=RECONCILER_BATCH)
    async with asyncio.TaskGroup() as tasks:
        worker = tasks.create_task(reconciler.run())
        start = time.perf_counter()
        reconciler.set_desired(desired)
        await reconciler.wait_synced()
        seconds = time.perf_counter() - start
        worker.cancel()
    status = reconciler.status()
    if not status.synced or status.updates != len(desired) or status.failures:
        raise RuntimeError(f"reconciler did not apply the desired state cleanly: {status}")
    return seconds


def map_writes(entries: int = ENTRIES) -> MapWrites:
    """Raw batch, reconciler, raw batch again: each on a fresh ipcache map in a private pin root."""
    root = Path("/sys/fs/bpf") / f"cmbench-dp-{uuid.uuid4().hex[:8]}"
    root.mkdir()
    try:
        raw: list[float] = []
        reconciler = 0.0
        for step in ("raw-1", "reconciler", "raw-2"):
            maps = NodeMaps(step, root)
            try:
                if step == "reconciler":
                    desired = _desired(entries)  # built before the clock starts
                    reconciler = entries / asyncio.run(_reconcile(maps, desired))
                else:
                    raw.append(raw_batch_rate(maps, entries))
            finally:
                maps.unpin()
        return MapWrites(entries, raw, reconciler)
    finally:
        root.rmdir()


def _best_runs(src: LabPod, dst: LabPod, seconds: float, runs: int, port: int) -> list[float]:
    return [tcp_throughput(src, dst, seconds, port=port + i) for i in range(runs)]


def throughput(seconds: float = 3.0, runs: int = 3) -> Throughput:
    """Hand-built VXLAN first (on the bare lab), then the agents' datapath (the mesh installed on it)."""
    with meshed_lab(pods=BENCH_PODS, mesh=False, service=False, name_prefix="bd", echo=lambda line: None) as lab:
        src, dst = lab.pods["src"], lab.pods["dst"]
        hand_built_tunnel(lab.spec)
        try:
            hand_built = _best_runs(src, dst, seconds, runs, 5601)
        finally:
            remove_hand_built(lab.spec)
        enable_mesh(lab)
        vx = names.vxlan_ifname(lab.spec.name)
        for node in lab.spec.nodes:
            if any(name == vx for name, _ in node_links(node.netns)) or node_routes(node.netns, HAND_BUILT_PROTO):
                raise RuntimeError(f"hand-built mesh still in place on {node.name} while the agents run")
        agent = _best_runs(src, dst, seconds, runs, 5611)
        with lab.maps(lab.node_of("src").name) as maps:
            to_tunnel = maps.counters().get((Reason.TO_TUNNEL, Direction.EGRESS), (0, 0))[0]
    return Throughput(seconds, hand_built, agent, to_tunnel)


def main(entries: int = ENTRIES, seconds: float = 3.0, runs: int = 3) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    reason = datapath_unavailable()
    if reason is not None:
        console.print(f"[bold]datapath[/bold]: skipped ({reason})")
        return
    configure_logging(level="warning")
    console.print(
        f"[bold]datapath[/bold]: ipcache writes of {entries} entries; cross-cluster TCP c1/n0 -> c2/n1 "
        f"on a 2 x 2 lab (clustermesh lab up), best of {runs} x {seconds:g} s runs each"
    )
    writes = map_writes(entries)
    tcp = throughput(seconds, runs)
    map_ratio = writes.reconciler_per_s / writes.raw_mean
    best_hand, best_agent = max(tcp.hand_built_bps), max(tcp.agent_bps)
    tcp_ratio = best_agent / best_hand
    table = Table()
    for column in ("measure", "value", "baseline", "ratio", "target"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    table.add_row(
        "ipcache writes, Reconciler",
        f"{writes.reconciler_per_s:,.0f}/s",
        f"raw UPDATE_BATCH {writes.raw_mean:,.0f}/s",
        f"{map_ratio:.2f}",
        _mark(map_ratio, MAP_TARGET),
    )
    table.add_row(
        "cross-cluster TCP, agent datapath",
        f"{best_agent / 1e9:.2f} Gbit/s",
        f"hand-built VXLAN {best_hand / 1e9:.2f} Gbit/s",
        f"{tcp_ratio:.2f}",
        _mark(tcp_ratio, TCP_TARGET),
    )
    console.print(table)
    console.print(
        f"ipcache: a Reconciler over the pinned map (IPCacheTarget) applying {entries} desired entries from "
        "scratch, set_desired -> wait_synced; raw baseline: mean of two runs bracketing the reconciler's "
        f"({', '.join(f'{r:,.0f}/s' for r in writes.raw_per_s)}), each on a fresh pinned map, buffers packed "
        f"beforehand; reconciler batch size {RECONCILER_BATCH} (the agent's), desired dict built before the clock."
    )
    console.print(
        f"TCP: best of {runs} runs of {seconds:g} s each, as single runs are noisy; hand-built VXLAN "
        f"[{_gbits(tcp.hand_built_bps)}] between the bare lab's clusters, agent datapath "
        f"[{_gbits(tcp.agent_bps)}] after it was removed and the mesh enabled and connected on the same lab "
        f"({tcp.to_tunnel_packets} packets counted to_tunnel egress on the sender's node)."
    )


def _gbits(values: list[float]) -> str:
    return ", ".join(f"{v / 1e9:.2f}" for v in values) + " Gbit/s"


def _mark(ratio: float, target: float) -> str:
    return f">= {target:g} " + ("ok" if ratio >= target else "MISSED")


if __name__ == "__main__":
    main()
