"""The agent process: the composition root of the control plane.

:class:`Agent` wires the remote-cluster layer (:class:`~meshcore.clustermesh.remote.ClusterMesh`,
one :class:`~agent.remote.AgentRemoteWork` per remote) to the caches, recomputes the desired state
when they change (debounced: a full sync is hundreds of thousands of changes), waits for the
initial sync under the ``--clustermesh-sync-timeout`` circuit breaker, and serves the local API.

Stopping (cancellation, SIGTERM) drains nothing: what the datapath holds must survive an agent
restart, which resyncs by mark-and-sweep.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from agent.api import AgentAPI
from agent.caches import MeshCaches
from agent.config import AgentConfig
from agent.datapath.node import NodeDatapath, NodeDatapathConfig, watch_affinities
from agent.desired import DesiredState, LocalInfo, build_desired
from agent.metrics import AgentMetrics
from agent.remote import AgentWorkFactory
from meshcore.clustermesh.remote import ClusterMesh
from meshcore.errors import MeshError
from meshcore.log import get_logger

__all__ = ["Agent"]


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
        self.desired = DesiredState()
        self.desired_version = -1  # the caches' version the desired state was built from
        self.desired_seconds = 0.0  # how long the last build took
        self._desired_json: tuple[int, bytes] | None = None
        self.synced: bool | None = None  # None while waiting, then whether it finished in time
        self._initial_sync = asyncio.Event()
        self._synced_build = asyncio.Event()  # the first desired state built after the initial sync
        self.started_at = time.time()
        self.datapath: NodeDatapath | None = None
        if config.datapath == "bpf":
            self.datapath = NodeDatapath(
                self.local,
                NodeDatapathConfig(
                    pin_root=config.pin_root,
                    tunnel_device=config.tunnel_device,
                    underlay_device=config.underlay_device,
                    cgroup=config.cgroup,
                    routing_mode=config.routing_mode,
                ),
            )
        self.policies: Any = None
        self.api = AgentAPI(
            config.socket_path,
            status=self.status_json,
            desired=self.desired_json,
            registry=self.metrics.registry,
            metrics_port=config.metrics_port,
            metrics_address=config.metrics_address,
        )
        self._log = get_logger(__name__, cluster=config.cluster_name, node=config.node_name)

    async def run(self) -> None:
        """Serve and follow the remote clusters until cancelled."""
        k8s: Any = None
        if self.datapath is not None:
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
                tasks.create_task(self._rebuild_desired(), name="desired state")
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

        def changed() -> object:
            return (self.desired_version, policies.version if policies is not None else 0)

        kv = EtcdClient(local_etcd)
        while True:  # the local etcd may come up after the agent: retry, bounded by cancellation
            try:
                await kv.connect()
                break
            except MeshError as err:
                self._log.warning("local kvstore unreachable, retrying", error=str(err))
                await asyncio.sleep(1.0)
        try:
            await self._datapath_tasks(datapath, k8s, kv, policies, changed)
        finally:
            await kv.close()

    async def _datapath_tasks(
        self, datapath: NodeDatapath, k8s: Any, kv: Any, policies: Any, changed: Callable[[], object]
    ) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(datapath.poll_local(kv), name="local kvstore")
            if policies is not None:
                tasks.create_task(policies.run(), name="policy source")
                tasks.create_task(watch_affinities(k8s, datapath), name="service affinities")
            tasks.create_task(
                datapath.run(lambda: self.desired, self._synced_build.wait(), policies, changed), name="reconcilers"
            )

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
                    "ipcache": len(self.desired.ipcache),
                    "routes": len(self.desired.routes),
                    "wireguard-peers": len(self.desired.wireguard_peers),
                    "services": len(self.desired.services),
                    "identities": len(self.desired.identities),
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
            body = json.dumps(self.desired.to_json()).encode()
            cached = self._desired_json = (self.desired_version, body)
        return cached[1]

    # ---- loops ----

    async def _wait_synced(self) -> None:
        # ClusterMesh logs the one "expect possible disruption" warning when this times out.
        self.synced = await self.mesh.wait_synced(self.config.sync_timeout)
        self._initial_sync.set()
        if self.synced:
            self._log.info("clustermesh initial sync complete", clusters=len(self.mesh.status()))

    async def _rebuild_desired(self) -> None:
        """Rebuild after changes: wait until the caches are quiet for ``debounce`` seconds, but no
        longer than ``max_debounce`` after the first change, then build (in a thread: it is pure
        and works on a snapshot, so the event loop keeps serving meanwhile).

        The first real build waits for the initial sync (or its timeout): like Cilium's fence on
        ``IPIdentitiesSynced``, the datapath must not be programmed from a half-synced view, and
        rebuilding a growing state during the sync would only slow the sync down."""
        await self._build()
        await self._initial_sync.wait()
        if self.caches.version != self.desired_version:
            await self._build()
        self._synced_build.set()
        while True:
            await self.caches.wait_changed(self.desired_version)
            first = time.monotonic()
            while True:
                seen = self.caches.version
                await asyncio.sleep(self.config.debounce)
                if self.caches.version == seen or time.monotonic() - first >= self.config.max_debounce:
                    break
            await self._build()

    async def _build(self) -> None:
        version = self.caches.version
        snapshot = self.caches.snapshot()
        started = time.perf_counter()
        desired = await asyncio.to_thread(build_desired, self.local, snapshot)
        self.desired_seconds = time.perf_counter() - started
        self.desired, self.desired_version = desired, version
        self._log.debug("desired state rebuilt", version=version, seconds=round(self.desired_seconds, 3))
