"""Issue 4's acceptance, end to end on real parts.

1. Interop: two remote clusters' etcds seeded with the real ``etcdctl`` with Cilium-format data (as
   a real clustermesh-apiserver writes it, plus some bad entries); the real ``clustermesh-agent``
   shows both ready in ``clustermesh status -o json`` with exact counts, and the bad entries are
   rejected, counted in the metric and absent from ``clustermesh agent dump``.
2. Faults: a remote etcd killed for 30 s and restarted, with keys changed before the agent gets
   back: the agent's view equals etcd's, survivors get no delete events, and the cluster shows
   not ready meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.caches import CacheKind, CacheObserver, MeshCaches
from agent.remote import AgentWorkFactory
from clustermesh_cli.status import agent_get_raw
from lab.etcd import EtcdProcess
from lab.samples import SampleSize, canary_keys, cluster_records, sample_pair, seed_cluster
from lab.wait import poll_until
from meshcore.clustermesh.remote import ClusterMesh
from meshcore.kvstore.client import EtcdClient
from meshcore.wire import ClusterConfig, ClusterConfigCapabilities, IPIdentityPair, LabelSet, Node, NodeAddress
from meshcore.wire import keys as wirekeys
from tests.agent.agentproc import PROJECT, agent_process

SIZE = SampleSize(nodes=2, endpoints_per_node=3, identities=2, services=1)


def etcdctl(etcd: EtcdProcess, *args: str) -> None:
    env = dict(os.environ, ETCDCTL_API="3")
    subprocess.run(["etcdctl", f"--endpoints={etcd.endpoint}", *args], check=True, env=env,
                   capture_output=True, timeout=20)


def seed_with_etcdctl(etcd: EtcdProcess, cluster: str, cluster_id: int, bad: dict[str, bytes]) -> None:
    """What a clustermesh-apiserver of ``cluster`` writes, put key by key with etcdctl."""
    config = ClusterConfig(
        id=cluster_id,
        capabilities=ClusterConfigCapabilities(
            synced_canaries=True, max_connected_clusters=255, service_exports_enabled=False
        ),
    )
    puts: dict[str, bytes] = dict(cluster_records(cluster, cluster_id, SIZE))
    puts.update(bad)
    puts[wirekeys.cluster_config_key(cluster)] = config.encode()
    puts[wirekeys.HEARTBEAT] = b"2026-11-21T00:00:00Z"
    puts.update({key: b"2026-11-21T00:00:00Z" for key in canary_keys(cluster)})
    for key, value in puts.items():
        etcdctl(etcd, "put", key, value.decode())


def bad_entries(cluster: str, cluster_id: int) -> dict[str, bytes]:
    """Entries a correct agent must refuse (reference §1.6–1.9)."""
    foreign = Node(name="evil", cluster="c9", cluster_id=9,
                   ip_addresses=[NodeAddress(type="InternalIP", ip="172.30.9.9")])
    wrong_id = Node(name="wrong-id", cluster=cluster, cluster_id=cluster_id + 40,
                    ip_addresses=[NodeAddress(type="InternalIP", ip="172.30.9.10")])
    out_of_range = (cluster_id + 100) << 16 | 7  # another cluster's identity range
    stray_pair = IPIdentityPair(ip="10.99.0.1", host_ip="172.30.9.9", id=out_of_range)
    unlabelled = LabelSet.from_strings(["k8s:app=no-cluster-label"])
    first_id = cluster_id << 16
    return {
        wirekeys.node_key(cluster, "evil"): foreign.encode(),
        wirekeys.node_key(cluster, "wrong-id"): wrong_id.encode(),
        wirekeys.ip_key("10.99.0.1"): stray_pair.encode(),
        wirekeys.identity_key(out_of_range): LabelSet.from_strings(
            [f"k8s:io.cilium.k8s.policy.cluster={cluster}"]).encode(),
        wirekeys.identity_key(first_id + 999): unlabelled.encode(),
    }


def clustermesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clustermesh_cli.main", *args], cwd=PROJECT,
                          capture_output=True, text=True, timeout=60)


async def test_interop_two_remote_clusters_seeded_with_etcdctl(
    etcd_factory: Callable[..., EtcdProcess], tmp_path: Path
) -> None:
    remotes = {"c2": (2, etcd_factory("c2")), "c3": (3, etcd_factory("c3"))}
    for name, (cid, etcd) in remotes.items():
        seed_with_etcdctl(etcd, name, cid, bad_entries(name, cid))
    config_dir = tmp_path / "clustermesh"  # the agent's --clustermesh-config, as a Secret mounts it
    config_dir.mkdir()
    for name, (_, etcd) in remotes.items():
        etcd.write_config_yaml(config_dir / name)
    async with agent_process(tmp_path) as agent:
        done = await asyncio.to_thread(
            clustermesh, "status", "--agent-socket", str(agent.socket), "-o", "json", "--wait", "--timeout", "30"
        )
        assert done.returncode == 0, done.stdout + done.stderr + agent.log_tail()
        clusters = {c["name"]: c for c in json.loads(done.stdout)["cluster-mesh"]["clusters"]}
        assert set(clusters) == {"c2", "c3"}
        for name, (cid, _) in remotes.items():
            c = clusters[name]
            assert c["ready"] and c["connected"], c
            assert (c["num-nodes"], c["num-endpoints"], c["num-identities"], c["num-shared-services"]) == (
                SIZE.nodes, SIZE.nodes * SIZE.endpoints_per_node, SIZE.identities, SIZE.services
            ), c
            assert c["config"]["cluster-id"] == cid and c["config"]["sync-canaries"] is True
            assert all(c["synced"].values()), c

        metrics = agent_get_raw(agent.socket, "/metrics").decode()
        rejected = {
            line.split("{", 1)[1].split("}", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("clustermesh_remote_cluster_invalid_entries_total{")
        }
        for name in remotes:
            per_kind = {k: v for k, v in rejected.items() if f'source_cluster="{name}"' in k}
            assert sum(per_kind.values()) == 5, (name, rejected)

        dump = await asyncio.to_thread(clustermesh, "agent", "dump", "--agent-socket", str(agent.socket), "-o", "json")
        assert dump.returncode == 0, dump.stderr
        text = dump.stdout
        for absent in ("evil", "wrong-id", "10.99.0.1", "172.30.9.9", "172.30.9.10", "no-cluster-label"):
            assert absent not in text, f"{absent} leaked into the desired state"
        desired = json.loads(text)
        assert desired["ipcache"], "the desired state has ipcache entries"


class RecordingCaches(MeshCaches):
    """The agent's caches, recording every delete they receive."""

    def __init__(self) -> None:
        super().__init__()
        self.deletes: list[tuple[str, str, str]] = []

    def observer(self, name: str, kind: CacheKind) -> CacheObserver:
        inner = super().observer(name, kind)
        deletes = self.deletes

        class Recording(CacheObserver):
            def __init__(self) -> None:
                pass

            def on_upsert(self, key: str, value: object) -> None:
                inner.on_upsert(key, value)

            def on_delete(self, key: str) -> None:
                deletes.append((name, kind, key))
                inner.on_delete(key)

        return Recording()


@pytest.mark.slow
async def test_remote_etcd_down_for_30s_then_back_with_changes(etcd: EtcdProcess, tmp_path: Path) -> None:
    async with EtcdClient(etcd.client_config()) as writer:
        await seed_cluster(writer, "c2", 2, SIZE)
    config_dir = tmp_path / "clustermesh"
    config_dir.mkdir()
    etcd.write_config_yaml(config_dir / "c2")
    caches = RecordingCaches()
    mesh = ClusterMesh(local_name="c1", local_id=1, config_dir=config_dir, factory=AgentWorkFactory(caches),
                       heartbeat_timeout=600)

    def status() -> Any:
        return mesh.status()[0] if mesh.status() else None

    async with asyncio.TaskGroup() as tasks:
        running = tasks.create_task(mesh.run())
        assert await poll_until(lambda: status() is not None and status().ready, within=20)
        before = caches.snapshot()["c2"]
        assert len(before.ipcache) == SIZE.nodes * SIZE.endpoints_per_node

        etcd.kill()
        down_since = time.monotonic()
        samples = []
        while time.monotonic() - down_since < 30:  # bounded: 30 s
            samples.append((status().ready, status().connected))
            await asyncio.sleep(1.0)
        assert samples and all(not ready for ready, _ in samples[2:]), samples
        assert not samples[-1][1], "shown disconnected while etcd is down"
        assert len(caches.snapshot()["c2"].ipcache) == len(before.ipcache), "entries kept while disconnected"

        # etcd comes back and its data changes before the agent (backing off) reconnects.
        await etcd.restart_async()
        gone = sorted(before.ipcache)[:2]
        added = sample_pair(2, 0, 9, SIZE.identities)
        async with EtcdClient(etcd.client_config()) as writer:
            for prefix in gone:
                await writer.delete(wirekeys.ip_key(prefix))
            await writer.put(wirekeys.ip_key(added.prefix_string()), added.encode())
            expected = {kv.key.rsplit("/", 1)[1] for kv in (await writer.list_prefix(wirekeys.IP_DEFAULT + "/")).items}

        def converged() -> bool:
            s = status()
            return s is not None and s.ready and set(caches.snapshot()["c2"].ipcache) == expected

        assert await poll_until(converged, within=60), (status(), sorted(caches.snapshot()["c2"].ipcache))
        assert sorted(key for _, kind, key in caches.deletes if kind == "ipcache") == sorted(gone)
        assert [d for d in caches.deletes if d[1] != "ipcache"] == [], "no delete for any surviving node/identity"
        running.cancel()
