"""The clustermesh-apiserver daemon: Kubernetes in, one cluster's exported state in etcd out.

Start-up, per Cilium's ``clustermesh-apiserver clustermesh`` (reference §1.3-1.5, §2.2-2.4):

1. connect to etcd (retrying) and Kubernetes; start the lease manager, one sync store per prefix,
   the heartbeat and the cluster config writer, and the health server;
2. (kubernetes mode) read back the identity allocations of a previous run;
3. list-watch Namespaces and wait for their initial list, then every other resource;
4. per job (nodes, identities, ip, services, serviceexports), once the resources it is made of
   have handed over their initial list: delete the keys of a previous run that no object
   produces any more, then write the synced canary. ``ready`` is set when all five are written.

Stopping (cancelling :meth:`ApiServer.run`) leaves every key and lease in etcd: a restarted
server writes the same keys over them, so nothing valid is deleted or re-created.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from clustermesh_apiserver import identitystate, resources
from clustermesh_apiserver.config import ApiServerConfig
from clustermesh_apiserver.converters import IdentityAllocator
from clustermesh_apiserver.exporters import Exporters, ExportSettings, ExportStores
from clustermesh_apiserver.health import HealthServer
from clustermesh_apiserver.metrics import ApiServerMetrics
from clustermesh_apiserver.resources import WatchSpec
from clustermesh_apiserver.stores import ClusterStores, ExportStore
from clustermesh_apiserver.sweep import sweep_stale
from clustermesh_apiserver.synchronizer import ResourceSync
from meshcore.backoff import Backoff
from meshcore.errors import KVStoreError
from meshcore.k8s.client import K8sApi
from meshcore.kvstore.client import EtcdClient
from meshcore.kvstore.leases import LeaseManager
from meshcore.log import get_logger
from meshcore.store.clusterconfig import ClusterConfigWriter
from meshcore.store.heartbeat import HeartbeatWriter
from meshcore.store.syncstore import SyncStoreStatus
from meshcore.wire import ClusterConfig, ClusterConfigCapabilities

DEFAULT_GLOBAL_NAMESPACE_ENV = "CLUSTERMESH_DEFAULT_GLOBAL_NAMESPACE"
JOBS = ("nodes", "identities", "ip", "services", "serviceexports")
HEALTH_NAMES = {
    "nodes": "job-node-sync",
    "identities": "job-identity-sync",
    "ip": "job-ip-sync",
    "services": "job-service-sync",
    "serviceexports": "job-serviceexport-sync",  # Cilium's name, as its test scripts match it
}
_PERSIST_INTERVAL = 1.0


@dataclass
class _Job:
    """One exported prefix: the resources it waits for, and whether its canary is written."""

    store: ExportStore
    syncs: list[ResourceSync] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    swept: list[str] = field(default_factory=list)


class ApiServer:
    """One cluster's clustermesh-apiserver. ``k8s``/``kv`` may be passed in (tests, embedding);
    otherwise they are created from the config and closed on exit."""

    def __init__(self, config: ApiServerConfig, *, k8s: K8sApi | None = None, kv: EtcdClient | None = None) -> None:
        self.config = config
        self.ready = asyncio.Event()
        self.health_url = ""
        self.metrics = ApiServerMetrics()
        self.exporters: Exporters | None = None
        self.stores: ClusterStores | None = None
        self.heartbeat: HeartbeatWriter | None = None
        self.cluster_config: ClusterConfigWriter | None = None
        self._k8s = k8s
        self._kv = kv
        self._jobs: dict[str, _Job] = {}
        self._syncs: dict[str, ResourceSync] = {}
        self._started = 0.0
        self._log = get_logger(__name__, cluster=config.cluster_name)
        self.metrics.watch_stores(self._store_statuses)

    def _store_statuses(self) -> dict[str, SyncStoreStatus]:
        stores = self.stores
        return {} if stores is None else {job: store.status() for job, store in stores.by_job().items()}

    # --- inspection ----------------------------------------------------------------------

    def health(self) -> dict[str, str]:
        """Job name -> ``"ok"`` or ``"degraded: <reason>"``.

        Jobs: ``job-node-sync``, ``job-identity-sync``, ``job-ip-sync``, ``job-service-sync``,
        ``job-serviceexport-sync`` (one per exported prefix, ok once its canary is written),
        ``job-heartbeat`` and ``job-cluster-config``.
        """
        out = {HEALTH_NAMES[job]: self._job_health(job) for job in JOBS}
        if self.heartbeat is not None and self.heartbeat.beats:
            out["job-heartbeat"] = "ok"
        else:
            error = self.heartbeat.last_error if self.heartbeat is not None else ""
            out["job-heartbeat"] = f"degraded: {error or 'not written yet'}"
        if self.cluster_config is not None and self.cluster_config.written.is_set():
            out["job-cluster-config"] = "ok"
        else:
            error = self.cluster_config.last_error if self.cluster_config is not None else ""
            out["job-cluster-config"] = f"degraded: {error or 'not written yet'}"
        return out

    def _job_health(self, name: str) -> str:
        job = self._jobs.get(name)
        if job is None:
            return "degraded: not started"
        if name == "serviceexports" and self.exporters is not None and self.exporters.service_exports.problem:
            return f"degraded: {self.exporters.service_exports.problem}"
        for sync in job.syncs:
            if sync.error:
                return f"degraded: kubernetes {sync.spec.ref.plural}: {sync.error}"
        if not job.done.is_set():
            waiting = [s.spec.ref.plural for s in job.syncs if not s.synced.is_set()]
            return f"degraded: initial sync in progress (waiting for {', '.join(waiting) or 'etcd'})"
        return "ok"

    def swept(self) -> dict[str, list[str]]:
        """Per job, the stale keys deleted at start."""
        return {name: list(job.swept) for name, job in self._jobs.items()}

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled (see the module docstring)."""
        cfg = self.config
        cfg.validate()
        self._started = time.monotonic()
        self.ready.clear()
        self._jobs.clear()
        self._syncs.clear()
        async with AsyncExitStack() as stack:
            kv = self._kv
            if kv is None:
                kv = EtcdClient(cfg.etcd)
                await self._connect_etcd(kv)
                stack.push_async_callback(kv.close)
            k8s = self._k8s
            if k8s is None:
                k8s = await K8sApi.connect(cfg.kubeconfig)
                stack.push_async_callback(k8s.close)

            leases = LeaseManager(kv, ttl=cfg.lease_ttl)
            stores = self.stores = ClusterStores.create(kv, cfg.cluster_name, leases)
            self.heartbeat = HeartbeatWriter(kv, leases, interval=cfg.heartbeat_interval)
            self.cluster_config = ClusterConfigWriter(
                kv,
                leases,
                cfg.cluster_name,
                self._cluster_config_value(),
                reassert_interval=cfg.cluster_config_reassert,
            )
            health = HealthServer(
                cfg.health_address,
                cfg.health_port,
                ready=self.ready,
                health=self.health,
                registry=self.metrics.registry,
            )
            await health.start()
            stack.push_async_callback(health.stop)
            self.health_url = health.url
            self._log.info("health endpoint listening", url=health.url)

            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(leases.run(), name="leases")
                for job, store in stores.by_job().items():
                    tasks.create_task(store.run(), name=f"store {job}")
                tasks.create_task(self.heartbeat.run(), name="heartbeat")
                tasks.create_task(self.cluster_config.run(), name="cluster-config")
                tasks.create_task(self._export(tasks, k8s, kv, stores), name="export")

    async def _connect_etcd(self, kv: EtcdClient) -> None:
        backoff = Backoff(initial=0.5, maximum=10.0)
        while True:
            try:
                await kv.connect()
                return
            except KVStoreError as err:
                self._log.warning("etcd not reachable yet, retrying", error=str(err))
                await backoff.wait()

    def _default_global_namespace(self) -> bool:
        """The config's setting, unless ``CLUSTERMESH_DEFAULT_GLOBAL_NAMESPACE`` says otherwise."""
        env = os.environ.get(DEFAULT_GLOBAL_NAMESPACE_ENV)
        if env is None or env.strip() == "":
            return self.config.default_global_namespace
        value = env.strip().lower() in ("1", "true", "yes", "on")
        if value != self.config.default_global_namespace:
            self._log.info("default global namespace set from the environment", env=DEFAULT_GLOBAL_NAMESPACE_ENV,
                           value=value)
        return value

    def _cluster_config_value(self) -> bytes:
        cfg = self.config
        caps = ClusterConfigCapabilities(
            synced_canaries=True,
            max_connected_clusters=cfg.max_connected_clusters,
            service_exports_enabled=cfg.enable_mcs_api,
            endpoint_slices_export_mode=cfg.endpoint_slices_export_mode,
        )
        return ClusterConfig(id=cfg.cluster_id, capabilities=caps).encode()

    # --- the export pipeline ---------------------------------------------------------------

    async def _export(self, tasks: asyncio.TaskGroup, k8s: K8sApi, kv: EtcdClient, stores: ClusterStores) -> None:
        cfg = self.config
        settings = ExportSettings(
            cluster=cfg.cluster_name,
            cluster_id=cfg.cluster_id,
            default_global=self._default_global_namespace(),
            mcs_api=cfg.enable_mcs_api,
            cilium_endpoint_slice=cfg.enable_cilium_endpoint_slice,
            max_connected_clusters=cfg.max_connected_clusters,
            serviceexport_versions=tuple(cfg.serviceexport_crd_versions),
        )
        allocator = None
        if cfg.source == "kubernetes":
            allocator = IdentityAllocator(
                cfg.cluster_id, await self._load_identities(kv), max_connected_clusters=cfg.max_connected_clusters
            )
        exporters = self.exporters = Exporters(
            ExportStores(
                nodes=stores.nodes,
                identities=stores.identities,
                ip=stores.ip,
                services=stores.services,
                serviceexports=stores.serviceexports,
            ),
            settings,
            allocator=allocator,
        )
        for name, store in stores.by_job().items():
            self._jobs[name] = _Job(store)

        namespaces = self._start_sync(tasks, k8s, resources.NAMESPACES)
        await namespaces.synced.wait()

        def syncs(*specs: WatchSpec) -> list[ResourceSync]:
            return [namespaces, *(self._syncs.get(s.kind) or self._start_sync(tasks, k8s, s) for s in specs)]

        services = syncs(resources.SERVICES, resources.ENDPOINT_SLICES)
        if exporters.pods is not None:
            pods = syncs(resources.NODES, resources.PODS)
            node_syncs, identity_syncs, ip_syncs = pods, pods, pods
            tasks.create_task(self._persist_identities(exporters), name="persist identities")
        else:
            node_syncs = syncs(resources.CILIUM_NODES)
            identity_syncs = syncs(resources.CILIUM_IDENTITIES)
            ip_syncs = syncs(
                resources.CILIUM_ENDPOINT_SLICES if cfg.enable_cilium_endpoint_slice else resources.CILIUM_ENDPOINTS
            )
        release = exporters.pods.release_unused if exporters.pods is not None else None
        tasks.create_task(self._run_job(kv, "nodes", node_syncs), name="job nodes")
        tasks.create_task(self._run_job(kv, "identities", identity_syncs, release), name="job identities")
        tasks.create_task(self._run_job(kv, "ip", ip_syncs), name="job ip")
        tasks.create_task(self._run_job(kv, "services", services), name="job services")
        tasks.create_task(self._serviceexports_job(tasks, k8s, kv, services), name="job serviceexports")

        for job in self._jobs.values():
            await job.done.wait()
        elapsed = time.monotonic() - self._started
        self.metrics.bootstrap_seconds.set(elapsed)
        self.ready.set()
        self._log.info("every synced canary written: ready", seconds=round(elapsed, 3))

    def _start_sync(
        self,
        tasks: asyncio.TaskGroup,
        k8s: K8sApi,
        spec: WatchSpec,
        after: Callable[[], None] | None = None,
    ) -> ResourceSync:
        exporters = self.exporters
        assert exporters is not None

        def handle(kind: str, obj: dict[str, Any], deleted: bool) -> None:
            exporters.handle(kind, obj, deleted=deleted)
            if after is not None:
                after()

        sync = ResourceSync(k8s, spec, handle, count=self.metrics.count_event)
        self._syncs[spec.kind] = sync
        tasks.create_task(sync.run(), name=f"watch {spec.ref.plural}")
        return sync

    async def _run_job(
        self, kv: EtcdClient, name: str, syncs: Sequence[ResourceSync], before: Callable[[], object] | None = None
    ) -> None:
        job = self._jobs[name]
        job.syncs = list(syncs)
        for sync in syncs:
            await sync.synced.wait()
        if before is not None:
            before()
        await self._finish_job(kv, name)

    async def _finish_job(self, kv: EtcdClient, name: str) -> None:
        """Sweep the prefix of a previous run's leftovers, then write the canary."""
        job = self._jobs[name]
        backoff = Backoff(initial=0.2, maximum=5.0)
        while True:
            try:
                job.swept = await sweep_stale(kv, job.store)
                break
            except KVStoreError as err:
                self._log.warning("stale-key sweep failed, retrying", job=name, error=str(err))
                await backoff.wait()
        written = asyncio.Event()
        job.store.synced(written.set)
        await written.wait()
        job.done.set()
        self._log.info("synced canary written", job=name, key=job.store.canary_key)

    async def _serviceexports_job(
        self, tasks: asyncio.TaskGroup, k8s: K8sApi, kv: EtcdClient, services: list[ResourceSync]
    ) -> None:
        exporters = self.exporters
        assert exporters is not None
        job = self._jobs["serviceexports"]
        if not self.config.enable_mcs_api:
            # Written even when MCS-API is off, so that readers' readiness completes.
            await self._finish_job(kv, "serviceexports")
            return
        crd_ready = asyncio.Event()

        def check_crd() -> None:
            if exporters.service_exports.crd_ready:
                crd_ready.set()

        crds = self._start_sync(tasks, k8s, resources.CRDS, after=check_crd)
        job.syncs = [crds]
        await crds.synced.wait()
        if not crd_ready.is_set():
            self._log.warning("MCS-API service export waits for its CRD", problem=exporters.service_exports.problem)
        await crd_ready.wait()
        exporters.service_exports.activate()
        version = exporters.service_exports.version or resources.SERVICE_EXPORTS.ref.version
        exports = self._start_sync(tasks, k8s, resources.service_exports(version))
        job.syncs = [*services, crds, exports]
        for sync in job.syncs:
            await sync.synced.wait()
        await self._finish_job(kv, "serviceexports")

    # --- kubernetes mode: identity persistence ---------------------------------------------

    async def _load_identities(self, kv: EtcdClient) -> dict[Any, int]:
        cfg = self.config
        backoff = Backoff(initial=0.2, maximum=5.0)
        while True:
            try:
                found = await identitystate.load_from_etcd(
                    kv, cluster=cfg.cluster_name, cluster_id=cfg.cluster_id, max_clusters=cfg.max_connected_clusters
                )
                break
            except KVStoreError as err:
                self._log.warning("cannot read previous identities from etcd, retrying", error=str(err))
                await backoff.wait()
        if cfg.state_dir is not None:
            found = identitystate.load_from_file(
                cfg.state_dir / identitystate.STATE_FILE,
                found,
                cluster=cfg.cluster_name,
                cluster_id=cfg.cluster_id,
                max_clusters=cfg.max_connected_clusters,
            )
        self._log.info("identity allocations carried over", count=len(found))
        return found

    async def _persist_identities(self, exporters: Exporters) -> None:
        state_dir = self.config.state_dir
        pods = exporters.pods
        if state_dir is None or pods is None:
            return
        path = state_dir / identitystate.STATE_FILE
        saved = -1
        try:
            while True:
                if pods.allocation_changes != saved:
                    saved = pods.allocation_changes
                    await asyncio.to_thread(identitystate.save_to_file, path, pods.allocator.allocations())
                await asyncio.sleep(_PERSIST_INTERVAL)
        finally:
            if pods.allocation_changes != saved:
                identitystate.save_to_file(path, pods.allocator.allocations())
