"""The agent process: the composition root of the control plane.

:class:`Agent` wires the remote-cluster layer (:class:`~meshcore.clustermesh.remote.ClusterMesh`,
one :class:`~agent.remote.AgentRemoteWork` per remote) to the caches, waits for the initial sync
under the ``--clustermesh-sync-timeout`` circuit breaker, and serves the local API.

The change path (:meth:`Agent._follow_changes`) is one loop: after the initial sync the desired
state is loaded whole from the caches (the full rebuild), then changes enter at one place
(:meth:`~agent.caches.MeshCaches.next_changes`: per-key, coalesced), each is applied to the
:class:`~agent.incremental.DesiredIndex`, and the resulting delta leaves at one place
(:meth:`Agent._publish`) for the datapath. The cost of a change is the change's, not the mesh's.

Stopping (cancellation, SIGTERM) drains nothing: what the datapath holds must survive an agent
restart, which resyncs by mark-and-sweep.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from typing import Any

from agent.api import AgentAPI
from agent.caches import CacheChange, MeshCaches, apply_changes
from agent.config import AgentConfig
from agent.datapath.node import NodeDatapath, NodeDatapathConfig, watch_affinities
from agent.desired import LocalInfo, build_desired
from agent.incremental import DesiredDelta, DesiredIndex
from agent.metrics import AgentMetrics
from agent.remote import AgentWorkFactory
from meshcore.clustermesh.remote import ClusterMesh
from meshcore.errors import MeshError
from meshcore.log import get_logger

__all__ = ["Agent", "CHANGE_BATCH"]

CHANGE_BATCH = 4096
"""Changes applied per delta: bounds the time between two turns of the event loop."""


def _no_key_rotation() -> dict[str, Any]:
    raise MeshError(
        "WireGuard key rotation needs the node datapath (--datapath bpf --encryption wireguard); "
        "this agent runs --datapath none"
    )


class Agent:
    """One node's agent (see the module docstring). Construct, then ``await run()``."""

    def __init__(self, config: AgentConfig) -> None:
        config.validate()
        self.config = config
        self.local = LocalInfo(config.cluster_name, config.cluster_id, config.node_name)
        self.local_etcd = config.local_etcd()
        self.caches = MeshCaches()
        self.metrics = AgentMetrics(local_cluster=config.cluster_name, node_name=config.node_name)
        self.factory = AgentWorkFactory(
            self.caches, self.metrics, max_connected_clusters=config.max_connected_clusters
        )
        self.mesh = ClusterMesh(
            local_name=config.cluster_name,
            local_id=config.cluster_id,
            max_connected_clusters=config.max_connected_clusters,
            config_dir=config.clustermesh_config,
            factory=self.factory,
            heartbeat_timeout=config.heartbeat_timeout,
            config_interval=config.config_interval,
        )
        self.metrics.watch_status(self.mesh.status)
        self.index = DesiredIndex(self.local)
        self.desired_version = -1  # bumped per applied batch of changes; 0 after the initial load
        self.desired_seconds = 0.0  # how long the initial load, then the last batch, took
        self.changes_applied = 0
        self._desired_json: tuple[int, bytes] | None = None
        self.synced: bool | None = None  # None while waiting, then whether it finished in time
        self._initial_sync = asyncio.Event()
        self._loaded = asyncio.Event()  # the desired state was loaded after the initial sync
        self.started_at = time.time()
        self.datapath: NodeDatapath | None = None
        if config.datapath == "bpf":
            self.datapath = NodeDatapath(self.local, NodeDatapathConfig.from_agent(config))
            self.metrics.watch_encryption(self.datapath.encryption_status)
        self.policies: Any = None
        self.api = AgentAPI(
            config.socket_path,
            status=self.status_json,
            desired=self.desired_json,
            registry=self.metrics.registry,
            metrics_port=config.metrics_port,
            metrics_address=config.metrics_address,
            rotate=self.datapath.request_key_rotation if self.datapath is not None else _no_key_rotation,
        )
        self._log = get_logger(__name__, cluster=config.cluster_name, node=config.node_name)

    async def run(self) -> None:
        """Serve and follow the remote clusters until cancelled."""
        k8s: Any = None
        if self.datapath is not None:
            await self.datapath.prepare()  # the node's migration label, before the device is made
            # bcc compiles here (seconds); a failure is fatal (exit 1) with the compiler's message.
            await asyncio.to_thread(self.datapath.start)
            if self.config.kubeconfig is not None:
                from agent.policy.source import PolicySource
                from meshcore.k8s.client import K8sApi

                k8s = await K8sApi.from_kubeconfig(self.config.kubeconfig)
                self.policies = PolicySource(k8s)
        await self.api.start()
        self._log.info("agent API listening", socket=str(self.config.socket_path), metrics=self.api.metrics_url)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.mesh.run(), name="clustermesh")
                tasks.create_task(self._follow_changes(), name="desired state")
                tasks.create_task(self._wait_synced(), name="initial sync")
                if self.datapath is not None:
                    tasks.create_task(self._run_datapath(self.datapath, k8s), name="datapath")
        finally:
            await self.api.stop()
            if k8s is not None:
                await k8s.close()
            if self.datapath is not None:
                self.datapath.close()  # releases fds only: maps and programs stay

    async def _run_datapath(self, datapath: NodeDatapath, k8s: Any) -> None:
        from meshcore.kvstore.client import EtcdClient

        local_etcd = self.local_etcd
        assert local_etcd is not None  # validated: bpf needs --kvstore-config
        policies = self.policies
        kv = EtcdClient(local_etcd)
        while True:  # the local etcd may come up after the agent: retry, bounded by cancellation
            try:
                await kv.connect()
                break
            except MeshError as err:
                self._log.warning("local kvstore unreachable, retrying", error=str(err))
                await asyncio.sleep(1.0)
        try:
            await self._datapath_tasks(datapath, k8s, kv, policies)
        finally:
            await kv.close()

    async def _datapath_tasks(self, datapath: NodeDatapath, k8s: Any, kv: Any, policies: Any) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(datapath.watch_local(kv), name="local kvstore")
            if policies is not None:
                tasks.create_task(policies.run(), name="policy source")
                tasks.create_task(watch_affinities(k8s, datapath), name="service affinities")
            tasks.create_task(datapath.run(self.index, self._loaded.wait(), policies), name="reconcilers")

    # ---- status ----

    def status_json(self) -> dict[str, Any]:
        """The ``GET /v1/status`` document."""
        return {
            "cluster-mesh": {"clusters": [s.to_json() for s in self.mesh.status()]},
            "local": {
                "cluster-name": self.config.cluster_name,
                "cluster-id": self.config.cluster_id,
                "node-name": self.config.node_name,
                "datapath": self.config.datapath,
                "clustermesh-synced": self.synced,
                "kvstore": list(self.local_etcd.endpoints) if self.local_etcd is not None else None,
                "config-problems": self.mesh.config_problems(),
                "desired": {
                    "version": self.desired_version,
                    "build-seconds": round(self.desired_seconds, 4),
                    "changes-applied": self.changes_applied,
                    **self.index.counts(),
                },
                "uptime-seconds": round(time.time() - self.started_at, 1),
            },
            "datapath": self.datapath.status_json() if self.datapath is not None else None,
            "policy": self.policies.status() if self.policies is not None else None,
        }

    def desired_json(self) -> bytes:
        """The ``GET /v1/desired`` body, encoded once per desired-state version."""
        cached = self._desired_json
        if cached is None or cached[0] != self.desired_version:
            body = json.dumps(self.index.state().to_json()).encode()
            cached = self._desired_json = (self.desired_version, body)
        return cached[1]

    # ---- loops ----

    async def _wait_synced(self) -> None:
        # ClusterMesh logs the one "expect possible disruption" warning when this times out.
        self.synced = await self.mesh.wait_synced(self.config.sync_timeout)
        self._initial_sync.set()
        if self.synced:
            self._log.info("clustermesh initial sync complete", clusters=len(self.mesh.status()))

    async def _follow_changes(self) -> None:
        """The change path (see the module docstring). Like Cilium's fence on
        ``IPIdentitiesSynced``, nothing is loaded before the initial sync (or its timeout): the
        datapath must not be programmed from a half-synced view."""
        await self._initial_sync.wait()
        started = time.perf_counter()
        self.caches.track()  # with the load below in one step of the loop: no change is missed
        self.index.load(self.caches.snapshot(copy=False))  # the datapath reads the loaded state whole
        # What is loaded now lives as long as the agent: keep it out of the cyclic collector's
        # full passes, which would otherwise walk ~1M objects (tens of ms) now and then.
        gc.freeze()
        self.desired_seconds = time.perf_counter() - started
        self.desired_version = 0
        self._loaded.set()
        self._log.info("desired state loaded", seconds=round(self.desired_seconds, 3), **self.index.counts())
        while True:
            changes = await self.caches.next_changes()  # where changes enter
            for start in range(0, len(changes), CHANGE_BATCH):
                started = time.perf_counter()
                delta = self._apply(changes[start : start + CHANGE_BATCH])
                self.desired_seconds = time.perf_counter() - started
                self._publish(delta)  # where deltas leave
                await asyncio.sleep(0)  # a large batch (a new cluster's list) must not stall the loop

    def _apply(self, changes: list[CacheChange]) -> DesiredDelta:
        self.changes_applied += len(changes)
        return apply_changes(self.index, self.caches, changes)

    def _publish(self, delta: DesiredDelta) -> None:
        self.desired_version += 1
        if self.datapath is not None and delta:
            self.datapath.desired_changed(delta)

    def self_check(self) -> bool:
        """Whether the incremental desired state equals a full rebuild from the caches now."""
        return self.index.state() == build_desired(self.local, self.caches.snapshot())
