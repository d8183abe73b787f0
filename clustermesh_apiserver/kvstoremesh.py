"""KVStoreMesh: mirror every remote cluster's state into the local etcd (reference §2.7).

A second consumer of :mod:`meshcore.clustermesh` (Cilium's ``pkg/clustermesh/kvstoremesh``): the
common layer owns the connections, and :class:`KvstoreMeshWork` is what runs on each one.

Per remote cluster ``<r>``, into the local etcd:

- ``cilium/cluster-config/<r>``: the remote's config with ``syncedCanaries`` and ``cached``
  forced to true, enforced by a :class:`~meshcore.store.clusterconfig.ClusterConfigWriter`;
- one reflector per kind, each started once the remote's synced canary for it exists (when the
  remote announces ``syncedCanaries``), copying values verbatim and re-keyed state -> cache:

  ====================================== ==========================================
  remote (``cilium/cache/...`` if cached) local
  ====================================== ==========================================
  ``cilium/state/nodes/v1/<r>/``         ``cilium/cache/nodes/v1/<r>/``
  ``cilium/state/services/v1/<r>/``      ``cilium/cache/services/v1/<r>/``
  ``cilium/state/identities/v1/id/``     ``cilium/cache/identities/v1/<r>/id/``
  ``cilium/state/ip/v1/default/``        ``cilium/cache/ip/v1/<r>/``
  ``cilium/state/serviceexports/v1/<r>/`` ``cilium/cache/serviceexports/v1/<r>/`` (only when the
                                          remote's ``serviceExportsEnabled`` is set)
  ====================================== ==========================================

- after each reflector's initial list, the canary ``cilium/synced/<r>/cilium/cache/<type>/v1``.

Every local key is leased (one lease manager per remote). A disconnect keeps the cache; a reconnect
re-lists and deletes only what disappeared meanwhile. Removing the remote's config file deletes
``cilium/cluster-config/<r>`` first (agents stop), then, after a grace period, the canaries and the
cache prefixes, retried up to 5 times with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from meshcore.backoff import Backoff
from meshcore.clustermesh.remote import ClusterMesh
from meshcore.clustermesh.types import RemoteClusterStatus, RemoteCounts
from meshcore.errors import KVStoreError
from meshcore.httpserver import HttpServer
from meshcore.kvstore.client import EtcdClient
from meshcore.kvstore.config import EtcdClientConfig
from meshcore.kvstore.leases import LeaseManager
from meshcore.kvstore.types import DeleteOp, KVStore
from meshcore.log import get_logger
from meshcore.store.clusterconfig import ClusterConfigWriter
from meshcore.store.heartbeat import HEARTBEAT_INTERVAL, HeartbeatWriter
from meshcore.store.syncstore import SyncStore
from meshcore.store.watchstore import WatchStore
from meshcore.store.watchstoremgr import WatchStoreManager
from meshcore.wire import ClusterConfig
from meshcore.wire.keys import (
    CACHE_ENDPOINT_SLICES,
    CACHE_IDENTITIES,
    CACHE_IP,
    CACHE_NODES,
    CACHE_SERVICE_EXPORTS,
    CACHE_SERVICES,
    IDENTITIES,
    IP,
    NODES,
    SERVICE_EXPORTS,
    SERVICES,
    SYNCED,
    Kind,
    cluster_config_key,
    state_to_cache,
    watch_prefix,
)

__all__ = [
    "DEFAULT_DRAIN_GRACE",
    "KvstoreMesh",
    "KvstoreMeshConfig",
    "KvstoreMeshWork",
    "cache_prefixes",
    "run_kvstoremesh",
]

DEFAULT_LEASE_TTL = 900
DEFAULT_DRAIN_GRACE = 180.0
DEFAULT_PER_CLUSTER_READY_TIMEOUT = 15.0
DEFAULT_GLOBAL_READY_TIMEOUT = 600.0
DRAIN_ATTEMPTS = 5
DRAIN_RETRY_INITIAL = 2.0

Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]


@dataclass(frozen=True, slots=True)
class _Kind:
    """One mirrored type: its state base prefix and its :func:`watch_prefix` kind."""

    name: str
    base: str
    kind: Kind


_KINDS = (
    _Kind("nodes", NODES, "node"),
    _Kind("services", SERVICES, "service"),
    _Kind("identities", IDENTITIES, "identity"),
    _Kind("ip", IP, "ip"),
    _Kind("serviceexports", SERVICE_EXPORTS, "serviceexport"),
)


def cache_prefixes(remote: str) -> list[str]:
    """Every local prefix (trailing ``/``) KVStoreMesh may hold for ``remote``: canaries first."""
    return [f"{SYNCED}/{remote}/"] + [
        f"{base}/{remote}/"
        for base in (
            CACHE_NODES,
            CACHE_SERVICES,
            CACHE_IDENTITIES,
            CACHE_IP,
            CACHE_SERVICE_EXPORTS,
            CACHE_ENDPOINT_SLICES,
        )
    ]


def _raw(name: str, value: bytes) -> bytes:
    return value


class _Reflector:
    """Mirrors one remote prefix into one local sync store, keeping the remote's entries (for
    mark-and-sweep across reconnects) in a :class:`WatchStore`."""

    def __init__(self, remote: str, spec: _Kind, *, cached: bool, local: KVStore, leases: LeaseManager) -> None:
        self.spec = spec
        self.source_prefix = watch_prefix(spec.kind, remote, cached=cached)
        # The canary key the remote writes, relative to cilium/synced/<remote>/.
        self.source_canary = state_to_cache(spec.base) if cached else spec.base
        self.target = SyncStore(
            local,
            watch_prefix(spec.kind, remote, cached=True),
            cluster=remote,
            leases=leases,
            canary_prefix=state_to_cache(spec.base),
        )
        self.watch: WatchStore[bytes] = WatchStore(None, self.source_prefix, _raw, self)
        self.canary_written = asyncio.Event()
        self.watch.on_synced(lambda: self.target.synced(self.canary_written.set))

    # Observer of the watch store: every change goes to the local sync store as is.
    def on_upsert(self, name: str, value: bytes) -> None:
        self.target.upsert(name, value)

    def on_delete(self, name: str) -> None:
        self.target.delete(name)


class KvstoreMeshWork:
    """The :class:`~meshcore.clustermesh.types.RemoteWork` of KVStoreMesh for one remote cluster.

    ``spawn(coro, name)`` starts tasks that outlive one connection (the lease manager, the local
    sync stores, the drain); KvstoreMesh passes its task group's ``create_task``.
    """

    def __init__(
        self,
        name: str,
        local: EtcdClient,
        spawn: Spawn,
        *,
        lease_ttl: int = DEFAULT_LEASE_TTL,
        drain_grace: float = DEFAULT_DRAIN_GRACE,
        drain_retry_initial: float = DRAIN_RETRY_INITIAL,
    ) -> None:
        self.name = name
        self._local = local
        self._spawn = spawn
        self._lease_ttl = lease_ttl
        self._drain_grace = drain_grace
        self._drain_retry_initial = drain_retry_initial
        self._leases: LeaseManager | None = None
        self._reflectors: dict[str, _Reflector] = {}
        self._lifetime: list[asyncio.Task[None]] = []
        self._cleanup: asyncio.Task[None] | None = None
        self._skip_grace = asyncio.Event()
        self.config_writer: ClusterConfigWriter | None = None
        self.drained = asyncio.Event()
        self._log = get_logger(__name__, cluster=name)

    # --- RemoteWork -------------------------------------------------------------------------

    async def run(self, kv: KVStore, config: ClusterConfig, synced: Callable[[], None]) -> None:
        """Mirror the remote on this connection until cancelled."""
        await self._finish_drain()  # the cluster ID changed: the old cache goes first, at once
        leases = self._ensure_leases()
        caps = config.capabilities
        wanted = [k for k in _KINDS if k.name != "serviceexports" or caps.service_exports_enabled is not None]
        reflectors = [self._reflector(spec, cached=caps.cached, leases=leases) for spec in wanted]
        retired = [name for name in self._reflectors if name not in {k.name for k in wanted}]
        cached_config = ClusterConfig(
            id=config.id, capabilities=msgspec.structs.replace(caps, synced_canaries=True, cached=True)
        )
        writer = self.config_writer
        if writer is None or writer.value != cached_config.encode():
            # A writer kept across reconnects leaves an unchanged key alone (no rewrite churn).
            writer = self.config_writer = ClusterConfigWriter(self._local, leases, self.name, cached_config.encode())
        gate = WatchStoreManager(kv, f"{SYNCED}/{self.name}/", gated=caps.synced_canaries)
        for reflector in reflectors:
            gate.register(reflector.source_canary, functools.partial(reflector.watch.run, kv))
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(writer.run(), name=f"kvstoremesh {self.name} cluster config")
            tasks.create_task(gate.run(), name=f"kvstoremesh {self.name} reflectors")
            for name in retired:
                tasks.create_task(self._retire(name), name=f"kvstoremesh {self.name} retire {name}")
            await asyncio.gather(*(r.canary_written.wait() for r in reflectors))
            self._log.info("initial sync complete: every cache canary written")
            synced()

    def drain(self) -> None:
        """The remote was removed (or changed its cluster ID): delete its cluster config from the
        local etcd now, and its canaries and cache after the grace period."""
        tasks, self._lifetime = self._lifetime, []
        leases, self._leases = self._leases, None
        self._reflectors = {}
        self.config_writer = None
        self.drained.clear()
        self._skip_grace = asyncio.Event()
        self._cleanup = self._spawn(
            self._remove_from_local(tasks, leases, self._skip_grace), f"kvstoremesh drain {self.name}"
        )

    async def wait_drained(self) -> None:
        """Return once a drain's deletions are done (at once if none is pending)."""
        if self._cleanup is not None:
            await asyncio.wait([self._cleanup])

    def counts(self) -> RemoteCounts:
        """What is mirrored from this cluster right now."""
        r = self._reflectors

        def n(kind: str) -> int:
            return len(r[kind].watch) if kind in r else 0

        def s(kind: str) -> bool:
            return kind in r and r[kind].canary_written.is_set()

        return RemoteCounts(
            nodes=n("nodes"),
            endpoints=n("ip"),
            identities=n("identities"),
            shared_services=n("services"),
            service_exports=n("serviceexports"),
            synced_nodes=s("nodes"),
            synced_endpoints=s("ip"),
            synced_identities=s("identities"),
            synced_services=s("services"),
        )

    # --- internals ------------------------------------------------------------------------------

    def _ensure_leases(self) -> LeaseManager:
        if self._leases is None:
            self._leases = LeaseManager(self._local, ttl=self._lease_ttl)
            self._lifetime.append(self._spawn(self._leases.run(), f"kvstoremesh {self.name} leases"))
        return self._leases

    def _reflector(self, spec: _Kind, *, cached: bool, leases: LeaseManager) -> _Reflector:
        existing = self._reflectors.get(spec.name)
        source = watch_prefix(spec.kind, self.name, cached=cached)
        if existing is not None and existing.source_prefix == source:
            return existing
        reflector = _Reflector(self.name, spec, cached=cached, local=self._local, leases=leases)
        if existing is not None:
            # The remote switched between state and cache layouts: start over from the new one,
            # reusing the local store so unchanged entries are not rewritten.
            reflector.target = existing.target
            existing.watch.drain()
        else:
            self._lifetime.append(self._spawn(reflector.target.run(), f"kvstoremesh {self.name} {spec.name}"))
        self._reflectors[spec.name] = reflector
        return reflector

    async def _retire(self, name: str) -> None:
        """A kind the remote no longer exports (serviceExportsEnabled went away): empty it."""
        reflector = self._reflectors.pop(name)
        reflector.watch.drain()
        await reflector.target.wait_idle()
        with contextlib.suppress(KVStoreError):
            await self._local.delete(reflector.target.canary_key)

    async def _finish_drain(self) -> None:
        if self._cleanup is not None and not self._cleanup.done():
            self._skip_grace.set()
            await asyncio.wait([self._cleanup])

    async def _remove_from_local(
        self, tasks: list[asyncio.Task[None]], leases: LeaseManager | None, skip_grace: asyncio.Event
    ) -> None:
        try:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=10)
            key = cluster_config_key(self.name)
            await self._retry("delete the cached cluster config", lambda: self._local.delete(key))
            self._log.info("remote cluster removed: cached config deleted, cache follows after grace",
                           grace=self._drain_grace)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(skip_grace.wait(), timeout=self._drain_grace)
            ops = [DeleteOp(key)] + [DeleteOp(prefix, prefix=True) for prefix in cache_prefixes(self.name)]
            await self._retry("delete the cached state", lambda: self._local.txn(ops))
            if leases is not None:
                with contextlib.suppress(KVStoreError):
                    await leases.revoke_all()
            self._log.info("cached state of the removed cluster deleted")
        except Exception:
            self._log.exception("draining the removed cluster's cache failed")
        finally:
            self.drained.set()

    async def _retry(self, what: str, op: Callable[[], Awaitable[object]]) -> None:
        backoff = Backoff(initial=self._drain_retry_initial, maximum=60.0, jitter=0.0)
        for attempt in range(1, DRAIN_ATTEMPTS + 1):
            try:
                await op()
                return
            except KVStoreError as err:
                if attempt == DRAIN_ATTEMPTS:
                    self._log.error("drain step failed, giving up", step=what, attempts=attempt, error=str(err))
                    return
                self._log.warning("drain step failed, retrying", step=what, attempt=attempt, error=str(err))
                await backoff.wait()


class KvstoreMesh:
    """KVStoreMesh over a connected local etcd client: a :class:`ClusterMesh` whose work mirrors
    each remote (see the module docstring). :attr:`ready` is set once every remote synced, or
    when the timeouts fire (per cluster: not connected within ``per_cluster_ready_timeout``;
    globally: ``global_ready_timeout``), as Cilium's kvstoremesh readiness does."""

    def __init__(
        self,
        local_kv: EtcdClient,
        *,
        cluster_name: str,
        cluster_id: int,
        config_dir: Path,
        max_connected_clusters: int = 255,
        lease_ttl: int = DEFAULT_LEASE_TTL,
        drain_grace: float = DEFAULT_DRAIN_GRACE,
        drain_retry_initial: float = DRAIN_RETRY_INITIAL,
        heartbeat_timeout: float = 120.0,
        connect_timeout: float = 5.0,
        per_cluster_ready_timeout: float = DEFAULT_PER_CLUSTER_READY_TIMEOUT,
        global_ready_timeout: float = DEFAULT_GLOBAL_READY_TIMEOUT,
        heartbeat_interval: float | None = HEARTBEAT_INTERVAL,
        config_interval: float = 1.0,
        reconnect_backoff: Callable[[], Backoff] | None = None,
    ) -> None:
        self.local = local_kv
        self.cluster_name = cluster_name
        self._lease_ttl = lease_ttl
        self._drain_grace = drain_grace
        self._drain_retry_initial = drain_retry_initial
        self._global_ready_timeout = global_ready_timeout
        self._heartbeat_interval = heartbeat_interval
        self.mesh = ClusterMesh(
            local_name=cluster_name,
            local_id=cluster_id,
            max_connected_clusters=max_connected_clusters,
            config_dir=config_dir,
            factory=self._new_work,
            heartbeat_timeout=heartbeat_timeout,
            connect_timeout=connect_timeout,
            config_interval=config_interval,
            ready_timeout=per_cluster_ready_timeout,
            reconnect_backoff=reconnect_backoff,
        )
        self.works: dict[str, KvstoreMeshWork] = {}
        self.ready = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._log = get_logger(__name__, cluster=cluster_name)

    def status(self) -> list[RemoteClusterStatus]:
        """Every remote cluster (``kvstoremesh-dbg status``), sorted by name."""
        return self.mesh.status()

    def _new_work(self, name: str) -> KvstoreMeshWork:
        tasks = self._tasks
        if tasks is None:
            raise RuntimeError("KvstoreMesh.run is not running")

        def spawn(coro: Coroutine[Any, Any, None], task_name: str) -> asyncio.Task[None]:
            return tasks.create_task(coro, name=task_name)

        work = KvstoreMeshWork(
            name,
            self.local,
            spawn,
            lease_ttl=self._lease_ttl,
            drain_grace=self._drain_grace,
            drain_retry_initial=self._drain_retry_initial,
        )
        self.works[name] = work
        return work

    async def run(self) -> None:
        """Mirror every configured remote until cancelled."""
        self.ready.clear()
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            if self._heartbeat_interval is not None:
                leases = LeaseManager(self.local, ttl=self._lease_ttl)
                tasks.create_task(leases.run(), name="kvstoremesh heartbeat lease")
                heartbeat = HeartbeatWriter(self.local, leases, interval=self._heartbeat_interval)
                tasks.create_task(heartbeat.run(), name="kvstoremesh heartbeat")
            tasks.create_task(self.mesh.run(), name="kvstoremesh clustermesh")
            tasks.create_task(self._readiness(), name="kvstoremesh readiness")

    async def _readiness(self) -> None:
        started = time.monotonic()
        synced = await self.mesh.wait_synced(self._global_ready_timeout)
        self.ready.set()
        self._log.info(
            "ready" if synced else "ready (global timeout expired before every remote synced)",
            seconds=round(time.monotonic() - started, 3),
        )


# ---- the daemon: ``clustermesh-apiserver kvstoremesh`` ------------------------------------------


@dataclass(frozen=True)
class KvstoreMeshConfig:
    """Settings of the ``kvstoremesh`` command."""

    cluster_name: str
    cluster_id: int
    config_dir: Path
    etcd: EtcdClientConfig
    max_connected_clusters: int = 255
    health_address: str = "127.0.0.1"
    health_port: int = 9881
    lease_ttl: int = DEFAULT_LEASE_TTL
    per_cluster_ready_timeout: float = DEFAULT_PER_CLUSTER_READY_TIMEOUT
    global_ready_timeout: float = DEFAULT_GLOBAL_READY_TIMEOUT
    drain_grace: float = DEFAULT_DRAIN_GRACE
    heartbeat_interval: float | None = HEARTBEAT_INTERVAL


class KvstoreMeshHTTP:
    """``/healthz``, ``/readyz`` (200 ``Ready`` / 500 ``NotReady``) and ``/v1/cluster`` (the
    remote clusters as a JSON list of Cilium's ``RemoteCluster``)."""

    def __init__(self, kvstoremesh: KvstoreMesh, address: str, port: int) -> None:
        self._kvstoremesh = kvstoremesh
        self._address = address
        self._port = port
        self._server: HttpServer | None = None
        self.url = ""

    async def start(self) -> None:
        routes = {"/healthz": self._healthz, "/readyz": self._readyz, "/v1/cluster": self._clusters}
        self._server = HttpServer(routes, address=self._address, port=self._port)
        await self._server.start()
        self.url = self._server.url

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop()

    async def _healthz(self, _: web.Request) -> web.Response:
        statuses = self._kvstoremesh.status()
        body = {"remote-clusters": len(statuses), "ready": sum(s.ready for s in statuses)}
        return web.Response(text=json.dumps(body) + "\n", content_type="application/json")

    async def _readyz(self, _: web.Request) -> web.Response:
        if self._kvstoremesh.ready.is_set():
            return web.Response(text="Ready")
        return web.Response(status=500, text="NotReady")

    async def _clusters(self, _: web.Request) -> web.Response:
        body = [s.to_json() for s in self._kvstoremesh.status()]
        return web.Response(text=json.dumps(body, indent=1) + "\n", content_type="application/json")


async def run_kvstoremesh(
    config: KvstoreMeshConfig, *, on_started: Callable[[KvstoreMesh, str], None] | None = None
) -> None:
    """Connect to the local etcd (retrying), serve the health endpoint and run KVStoreMesh until
    cancelled. ``on_started(kvstoremesh, health_url)`` is called once everything listens."""
    log = get_logger(__name__, cluster=config.cluster_name)
    backoff = Backoff(initial=0.5, maximum=10.0)
    async with contextlib.AsyncExitStack() as stack:
        local = EtcdClient(config.etcd)
        while True:
            try:
                await local.connect()
                break
            except KVStoreError as err:
                log.warning("local etcd not reachable yet, retrying", error=str(err))
                await backoff.wait()
        stack.push_async_callback(local.close)
        kvstoremesh = KvstoreMesh(
            local,
            cluster_name=config.cluster_name,
            cluster_id=config.cluster_id,
            config_dir=config.config_dir,
            max_connected_clusters=config.max_connected_clusters,
            lease_ttl=config.lease_ttl,
            drain_grace=config.drain_grace,
            per_cluster_ready_timeout=config.per_cluster_ready_timeout,
            global_ready_timeout=config.global_ready_timeout,
            heartbeat_interval=config.heartbeat_interval,
        )
        http = KvstoreMeshHTTP(kvstoremesh, config.health_address, config.health_port)
        await http.start()
        stack.push_async_callback(http.stop)
        log.info("kvstoremesh health endpoint listening", url=http.url, config_dir=str(config.config_dir))
        if on_started is not None:
            on_started(kvstoremesh, http.url)
        await kvstoremesh.run()
