"""Being connected to remote clusters: Cilium's ``pkg/clustermesh/common`` (reference §3.1-3.6).

:class:`ClusterMesh` follows the config directory (:class:`~.configdir.ConfigDirWatcher`) and runs
one :class:`RemoteCluster` per remote in a task group. A :class:`RemoteCluster`, for as long as its
config file exists:

1. connects to the remote etcd (bounded by ``connect_timeout``; reconnects with backoff);
2. reads ``cilium/cluster-config/<name>`` (required; retried with backoff up to 30 s between
   tries while missing, with a hint in the status);
3. validates it (Cilium's ``ValidateRemoteConfig``) and reserves its cluster ID with the mesh:
   not 0, not the local ID, not an ID held by another remote; when the ID of a remote changes,
   the work is drained before it runs again;
4. list-watches ``cilium/.heartbeat`` (the initial list must succeed) and declares the remote not
   ready, counts a failure and reconnects once no heartbeat arrived for ``heartbeat_timeout``;
5. runs the injected :class:`~.types.RemoteWork` on the connection until the connection breaks.

The work instance lives as long as the config file: a reconnect runs it again (its state is kept
and reconciled by its own mark-and-sweep); only the removal of the file drains it. Remote etcds are
only read: the work gets a :class:`ReadOnlyKVStore` that refuses every write.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from meshcore.backoff import Backoff
from meshcore.errors import KVStoreError, MeshError, WireError
from meshcore.kvstore.client import EtcdClient
from meshcore.kvstore.types import EndpointStatus, KeyValue, KVStore, ListResult, TxnOp, WatchBatch
from meshcore.log import get_logger
from meshcore.store.listwatch import Connection, Delete, ListStart, Upsert, list_and_watch
from meshcore.store.syncstore import rfc3339_now
from meshcore.wire import ENDPOINT_SLICES_EXPORT_MODES, ClusterConfig, decode_cluster_config
from meshcore.wire.clusterinfo import cluster_id_max, validate_cluster_name
from meshcore.wire.keys import HEARTBEAT, cluster_config_key

from .configdir import ConfigDirWatcher, RemoteConfigFile
from .types import RemoteClusterConfigStatus, RemoteClusterStatus, RemoteWork, WorkFactory

__all__ = [
    "CONFIG_MISSING_HINT",
    "ClusterIDConflictError",
    "ClusterIDs",
    "ClusterMesh",
    "DrainWaiter",
    "ReadOnlyKVStore",
    "RemoteCluster",
    "SYNC_TIMEOUT_WARNING",
    "validate_remote_config",
]

CONFIG_MISSING_HINT = "check that KVStoreMesh is connected and the cluster name is right"
SYNC_TIMEOUT_WARNING = (
    "failed waiting for clustermesh synchronization, expect possible disruption of cross-cluster connections"
)
DEFAULT_HEARTBEAT_TIMEOUT = 120.0
# Cilium retries the cluster config with backoff up to 30 s between tries.
CONFIG_RETRY_MAX = 30.0
RECONNECT_BACKOFF_MAX = 30.0


class ClusterIDConflictError(MeshError):
    """A remote cluster claims a cluster ID that is reserved or held by another cluster."""


@runtime_checkable
class DrainWaiter(Protocol):
    """Optional for a :class:`~.types.RemoteWork` whose :meth:`drain` continues asynchronously
    (KVStoreMesh deletes its cache after a grace period). A cluster re-added meanwhile waits for
    it, as Cilium's tombstones do."""

    async def wait_drained(self) -> None: ...


def validate_remote_config(config: ClusterConfig, *, max_connected_clusters: int) -> None:
    """Cilium's ``ValidateRemoteConfig``: the ID is in 1..ClusterIDMax, a 511-mode mesh requires
    the remote to say 511 too, and the EndpointSlice export mode is known. Raises WireError."""
    limit = cluster_id_max(max_connected_clusters)
    if config.id == 0:
        raise WireError("cluster ID 0 is reserved; the remote cluster has no cluster ID set", field="id")
    if config.id > limit:
        raise WireError(f"cluster ID {config.id} is out of range 1..{limit}", field="id")
    remote_max = config.capabilities.max_connected_clusters
    if max_connected_clusters == 511 and remote_max != max_connected_clusters:
        raise WireError(
            f"mismatched maxConnectedClusters: local={max_connected_clusters}, remote={remote_max}; "
            "every cluster of a mesh must use the same value",
            field="capabilities.maxConnectedClusters",
        )
    if config.capabilities.endpoint_slices_export_mode not in ENDPOINT_SLICES_EXPORT_MODES:
        raise WireError(
            f"unknown endpointSlicesExportMode {config.capabilities.endpoint_slices_export_mode!r}",
            field="capabilities.endpointSlicesExportMode",
        )


class ClusterIDs:
    """Which remote holds which cluster ID (Cilium's ``ClusterIDsManager``)."""

    def __init__(self, local_id: int) -> None:
        self.local_id = local_id
        self._by_id: dict[int, str] = {}
        self._by_name: dict[str, int] = {}

    def held_by(self, name: str) -> int | None:
        """The ID ``name`` holds, if any."""
        return self._by_name.get(name)

    def reserve(self, name: str, cluster_id: int) -> None:
        """Reserve ``cluster_id`` for ``name``; raises :class:`ClusterIDConflictError`."""
        if cluster_id == 0:
            raise ClusterIDConflictError("cluster ID 0 is reserved and cannot be used by a remote cluster")
        if cluster_id == self.local_id:
            raise ClusterIDConflictError(
                f"cluster ID {cluster_id} is the local cluster's own ID; every cluster needs a unique ID"
            )
        holder = self._by_id.get(cluster_id)
        if holder is not None and holder != name:
            raise ClusterIDConflictError(
                f"cluster ID {cluster_id} is already used by remote cluster {holder!r}; "
                "every cluster needs a unique ID"
            )
        self.release(name)
        self._by_id[cluster_id] = name
        self._by_name[name] = cluster_id

    def release(self, name: str) -> None:
        """Free the ID ``name`` holds (if any)."""
        cluster_id = self._by_name.pop(name, None)
        if cluster_id is not None and self._by_id.get(cluster_id) == name:
            del self._by_id[cluster_id]


class ReadOnlyKVStore:
    """A :class:`~meshcore.kvstore.types.KVStore` over a remote etcd that refuses every write:
    remote clusters are only ever read (Cilium gives remote clients a read-only role)."""

    def __init__(self, client: EtcdClient) -> None:
        self._client = client

    @property
    def endpoint(self) -> str:
        """The endpoint calls currently go to."""
        return self._client.endpoint

    @property
    def cluster_id(self) -> int:
        """The etcd cluster ID of the remote etcd."""
        return self._client.cluster_id

    async def get(self, key: str) -> KeyValue | None:
        return await self._client.get(key)

    async def list_prefix(self, prefix: str) -> ListResult:
        return await self._client.list_prefix(prefix)

    def watch(self, prefix: str, *, start_revision: int) -> AsyncGenerator[WatchBatch, None]:
        """Watch without progress notifications, as Cilium's remote watchers do: an agent of a
        250-cluster mesh holds ~1750 remote watches, and one empty response each per etcd progress
        interval arrived in bursts that delayed real changes. What is lost is only a fresher
        resume revision for a quiet prefix (after a compaction: a re-list, mark and sweep)."""
        return self._client.watch(prefix, start_revision=start_revision, progress_notify=False)

    async def status(self) -> EndpointStatus:
        return await self._client.status()

    def _refuse(self, op: str) -> KVStoreError:
        return KVStoreError(f"refusing to {op} on remote etcd {self._client.endpoint}: remote clusters are read-only")

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        raise self._refuse(f"write {key}")

    async def delete(self, key: str) -> int:
        raise self._refuse(f"delete {key}")

    async def delete_prefix(self, prefix: str) -> int:
        raise self._refuse(f"delete {prefix}")

    async def txn(self, ops: Sequence[TxnOp]) -> int:
        raise self._refuse("run a transaction")

    async def grant_lease(self, ttl: int) -> int:
        raise self._refuse("grant a lease")

    async def revoke_lease(self, lease_id: int) -> None:
        raise self._refuse("revoke a lease")


class _AttemptFailed(Exception):
    """A connection attempt (or a live connection) ended; ``str()`` is the reason for status."""


@dataclass
class _Heartbeat:
    """What we know of the remote's ``cilium/.heartbeat``: when it last changed (monotonic) and
    at which revision of which etcd cluster, so a reconnect does not make a stale heartbeat fresh."""

    seen_at: float
    mod_revision: int = 0
    etcd_cluster: int = 0


_PHASE_TEXT = {
    "waiting-removal": "waiting for the removal of the previous configuration to complete",
    "connecting": "connecting",
    "fetching-config": "connected, retrieving the remote cluster configuration",
}


class RemoteCluster:
    """One remote cluster: connection, cluster config, cluster ID, heartbeat and the work on it.

    Created and run by :class:`ClusterMesh`; :meth:`run` takes the config file to use and runs
    until cancelled (a changed file means: cancel, then :meth:`run` with the new file).
    """

    def __init__(
        self,
        name: str,
        work: RemoteWork,
        ids: ClusterIDs,
        *,
        max_connected_clusters: int = 255,
        heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
        connect_timeout: float = 5.0,
        reconnect_backoff: Backoff | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.work = work
        self._ids = ids
        self._max_connected_clusters = max_connected_clusters
        self.heartbeat_timeout = heartbeat_timeout
        self._connect_timeout = connect_timeout
        self._backoff = reconnect_backoff or Backoff(initial=0.5, maximum=RECONNECT_BACKOFF_MAX)
        self._on_change = on_change or (lambda: None)
        self.added_at = time.monotonic()
        self._phase = "connecting"
        self._problem = ""  # status text while not working (config missing/invalid, ID conflict, ...)
        self._connected = False
        self._retrieved = False
        self._running = False  # the work runs on a live connection
        self._config: ClusterConfig | None = None
        self._heartbeat: _Heartbeat | None = None
        self._stale_reconnected = False
        self._worked = False
        self.ever_synced = False
        self.num_failures = 0
        self.last_failure: str | None = None
        self.last_error = ""
        self._log = get_logger(__name__, cluster=name)

    # --- state ------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the remote etcd is connected right now."""
        return self._connected

    @property
    def config(self) -> ClusterConfig | None:
        """The remote cluster config last retrieved (kept across disconnects)."""
        return self._config

    def heartbeat_age(self) -> float | None:
        """Seconds since the heartbeat last changed on this connection (None when not running)."""
        if not self._running or self._heartbeat is None:
            return None
        return time.monotonic() - self._heartbeat.seen_at

    def heartbeat_fresh(self) -> bool:
        """Whether the heartbeat changed within ``heartbeat_timeout``."""
        age = self.heartbeat_age()
        return age is not None and age <= self.heartbeat_timeout

    def ready(self) -> bool:
        """Connected, config retrieved, the work synced, and the heartbeat fresh."""
        return self._connected and self._retrieved and self.ever_synced and self.heartbeat_fresh()

    def blocks_sync(self, ready_timeout: float | None, now: float | None = None) -> bool:
        """Whether :meth:`ClusterMesh.wait_synced` should still wait for this cluster: not synced,
        and either connected (working, or waiting for its config: KVStoreMesh may be starting) or
        still on its first try. A cluster that failed and is not connected does not block, nor
        one that has not got as far as running its work within ``ready_timeout`` of being added."""
        if self.ever_synced:
            return False
        if self._running:
            return True  # connected with a valid config: the sync is under way
        if ready_timeout is not None and (now or time.monotonic()) - self.added_at >= ready_timeout:
            return False
        return self._connected or self.num_failures == 0

    def status(self) -> RemoteClusterStatus:
        """This cluster as ``cilium status`` shows it (see :class:`~.types.RemoteClusterStatus`)."""
        ready = self.ready()
        cfg = self._config
        config_status = RemoteClusterConfigStatus(
            required=True,
            retrieved=self._retrieved,
            cluster_id=cfg.id if cfg is not None else 0,
            kvstoremesh=cfg.capabilities.cached if cfg is not None else False,
            sync_canaries=cfg.capabilities.synced_canaries if cfg is not None else False,
            service_exports_enabled=cfg.capabilities.service_exports_enabled if cfg is not None else None,
        )
        return RemoteClusterStatus(
            name=self.name,
            ready=ready,
            connected=self._connected,
            status=self._status_text(ready),
            counts=self.work.counts(),
            config=config_status,
            num_failures=self.num_failures,
            last_failure=self.last_failure,
        )

    def _status_text(self, ready: bool) -> str:
        if ready:
            return "ready"
        if self._running:
            age = self.heartbeat_age()
            if age is not None and age > self.heartbeat_timeout:
                return (
                    f"heartbeat stale: {HEARTBEAT} not updated for {age:.0f}s "
                    f"(limit {self.heartbeat_timeout:g}s); is the remote clustermesh-apiserver running?"
                )
            return "waiting for initial sync"
        if self._problem:
            return self._problem
        text = _PHASE_TEXT.get(self._phase, self._phase)
        if self._phase == "connecting" and self.last_error:
            return f"{text} (last attempt failed: {self.last_error})"
        return text

    def _set(self, **changes: Any) -> None:
        for attr, value in changes.items():
            setattr(self, attr, value)
        self._on_change()

    def _fail(self, reason: str) -> None:
        self.num_failures += 1
        self.last_failure = rfc3339_now()
        self.last_error = reason
        self._on_change()

    def _synced(self) -> None:
        """The ``synced`` callback handed to the work."""
        if not self.ever_synced:
            self._log.info("initial sync complete")
        self._set(ever_synced=True)

    # --- lifecycle ----------------------------------------------------------------------------

    async def run(self, file: RemoteConfigFile, *, after: asyncio.Future[None] | None = None) -> None:
        """Connect with ``file`` and keep the work running on a live connection until cancelled.

        ``after``: wait for it first (the previous incarnation of this cluster is being drained).
        """
        if after is not None and not after.done():
            self._set(_phase="waiting-removal")
            with contextlib.suppress(Exception):
                await asyncio.shield(after)
        backoff = self._backoff
        while True:
            self._worked = False
            try:
                await self._attempt(file)
            except _AttemptFailed as err:
                reason = str(err)
            except KVStoreError as err:
                reason = f"etcd: {err}"
            except TimeoutError:
                reason = f"could not connect to {', '.join(file.config.endpoints)} within {self._connect_timeout:g}s"
            except Exception as err:  # a bug in the work must not take the whole mesh down
                self._log.exception("remote cluster work failed")
                reason = f"internal error: {type(err).__name__}: {err}"
            else:
                reason = "connection ended"
            self._fail(reason)
            self._log.warning("remote cluster connection failed, reconnecting", error=reason)
            if self._worked:
                backoff.reset()
            await backoff.wait()

    def drain(self) -> None:
        """The cluster was removed: drain the work and release the cluster ID."""
        self.work.drain()
        self._ids.release(self.name)
        self.ever_synced = False

    async def _attempt(self, file: RemoteConfigFile) -> None:
        """One connection, from connect to loss; raises the reason it ended."""
        self._set(_phase="connecting", _problem="")
        client = EtcdClient(file.config)
        try:
            async with asyncio.timeout(self._connect_timeout):
                await client.connect()
            self._set(_connected=True, _phase="fetching-config")
            kv = ReadOnlyKVStore(client)
            config = await self._fetch_config(kv)
            self._accept_config(config)
            await self._run_connected(kv, config)
        finally:
            self._connected = self._retrieved = self._running = False
            self._on_change()
            await asyncio.shield(client.close())

    async def _fetch_config(self, kv: ReadOnlyKVStore) -> ClusterConfig:
        key = cluster_config_key(self.name)
        backoff = Backoff(initial=0.25, maximum=CONFIG_RETRY_MAX)
        missing_reported = False
        while True:
            item = await kv.get(key)
            if item is not None:
                break
            if not missing_reported:
                missing_reported = True
                problem = f"remote cluster configuration not found: {key} does not exist; {CONFIG_MISSING_HINT}"
                self._log.warning("remote cluster configuration not found", key=key, hint=CONFIG_MISSING_HINT)
                self._set(_problem=problem)
                self._fail(problem)
            await backoff.wait()
        try:
            return decode_cluster_config(item.value, key=key)
        except WireError as err:
            raise self._reject(f"invalid remote cluster configuration: {err}") from None

    def _reject(self, problem: str) -> _AttemptFailed:
        self._set(_problem=problem)
        return _AttemptFailed(problem)

    def _accept_config(self, config: ClusterConfig) -> None:
        try:
            validate_remote_config(config, max_connected_clusters=self._max_connected_clusters)
        except WireError as err:
            raise self._reject(f"invalid remote cluster configuration: {err}") from None
        previous = self._ids.held_by(self.name)
        if previous is not None and previous != config.id:
            self._log.warning("remote cluster ID changed, draining its state", old=previous, new=config.id)
            self.work.drain()
            self._ids.release(self.name)
            self.ever_synced = False
        try:
            self._ids.reserve(self.name, config.id)
        except ClusterIDConflictError as err:
            raise self._reject(str(err)) from None
        self._set(_config=config, _retrieved=True, _problem="")

    async def _run_connected(self, kv: ReadOnlyKVStore, config: ClusterConfig) -> None:
        # The initial list of the heartbeat must succeed, or the connection counts as failed.
        listing = await kv.list_prefix(HEARTBEAT)
        item = next((i for i in listing.items if i.key == HEARTBEAT), None)
        etcd_cluster = kv.cluster_id
        prev = self._heartbeat
        revision = item.mod_revision if item is not None else 0
        if prev is not None and prev.mod_revision == revision and prev.etcd_cluster == etcd_cluster:
            heartbeat = prev  # unchanged (or still absent) since we last saw it: a reconnect is no beat
        else:
            heartbeat = _Heartbeat(time.monotonic(), revision, etcd_cluster)
            self._stale_reconnected = False
        self._worked = True
        self._set(_heartbeat=heartbeat, _running=True, _phase="running")
        self._log.info("connected", endpoint=kv.endpoint, cluster_id=config.id)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._watch_heartbeat(kv, heartbeat), name=f"{self.name} heartbeat")
                tasks.create_task(self._check_heartbeat(), name=f"{self.name} heartbeat check")
                tasks.create_task(self._watch_config(kv, config), name=f"{self.name} cluster config")
                tasks.create_task(self.work.run(kv, config, self._synced), name=f"{self.name} work")
        except BaseExceptionGroup as group:
            first = _first_leaf(group)
            if isinstance(first, _AttemptFailed | KVStoreError):
                raise first from None
            raise

    async def _watch_heartbeat(self, kv: KVStore, heartbeat: _Heartbeat) -> None:
        listed = 0
        events = list_and_watch(kv, HEARTBEAT, backoff=Backoff(initial=0.2, maximum=1.0))
        async with aclosing(events):
            async for event in events:
                if isinstance(event, Connection) and not event.connected:
                    raise _AttemptFailed(f"connection lost: {event.reason}")
                if isinstance(event, ListStart):
                    listed += 1
                    if listed > 1 and kv_cluster(kv) != heartbeat.etcd_cluster:
                        raise _AttemptFailed("the remote etcd was replaced (its cluster ID changed)")
                elif isinstance(event, Upsert | Delete) and event.key == HEARTBEAT:
                    if event.mod_revision != heartbeat.mod_revision:
                        heartbeat.mod_revision = event.mod_revision
                        heartbeat.seen_at = time.monotonic()
                        if self._stale_reconnected:
                            self._log.info("heartbeat fresh again")
                        self._stale_reconnected = False
                        self._on_change()

    async def _check_heartbeat(self) -> None:
        interval = max(0.05, min(5.0, self.heartbeat_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            age = self.heartbeat_age()
            if age is None or age <= self.heartbeat_timeout:
                continue
            self._on_change()
            if not self._stale_reconnected:
                # Reconnect once per episode; if the heartbeat is still stale after that, stay
                # connected (not ready) rather than re-listing everything over and over.
                self._stale_reconnected = True
                raise _AttemptFailed(
                    f"heartbeat stale: {HEARTBEAT} not updated for {age:.0f}s (limit {self.heartbeat_timeout:g}s)"
                )

    async def _watch_config(self, kv: KVStore, config: ClusterConfig) -> None:
        """Reconnect when the remote's config changes (e.g. its ID), so it is validated again."""
        key = cluster_config_key(self.name)
        events = list_and_watch(kv, key, backoff=Backoff(initial=0.2, maximum=1.0))
        async with aclosing(events):
            async for event in events:
                if isinstance(event, Upsert) and event.key == key:
                    try:
                        changed = decode_cluster_config(event.value, key=key) != config
                    except WireError:
                        changed = True
                    if changed:
                        raise _AttemptFailed("the remote cluster configuration changed")
                elif isinstance(event, Delete) and event.key == key:
                    raise _AttemptFailed(f"the remote cluster configuration {key} was deleted")


def kv_cluster(kv: KVStore) -> int:
    """The etcd cluster ID behind ``kv`` when it knows it, else 0."""
    return int(getattr(kv, "cluster_id", 0) or 0)


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


class _Changes:
    """Wakes every waiter on the next change."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def waiter(self) -> asyncio.Event:
        return self._event


@dataclass
class _Running:
    remote: RemoteCluster
    task: asyncio.Task[None]
    file: RemoteConfigFile


class ClusterMesh:
    """Every remote cluster of the config directory, each with its injected work.

    ``factory(name)`` makes the work for a cluster when its config appears; :meth:`run` keeps
    them connected until cancelled. ``ready_timeout`` (KVStoreMesh's per-cluster ready timeout):
    a cluster that has not connected within it does not hold up :meth:`wait_synced`.
    """

    def __init__(
        self,
        *,
        local_name: str,
        local_id: int,
        max_connected_clusters: int = 255,
        config_dir: Path,
        factory: WorkFactory,
        heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
        connect_timeout: float = 5.0,
        config_interval: float = 1.0,
        ready_timeout: float | None = None,
        reconnect_backoff: Callable[[], Backoff] | None = None,
    ) -> None:
        cluster_id_max(max_connected_clusters)  # validates 255/511
        self.local_name = local_name
        self.local_id = local_id
        self.max_connected_clusters = max_connected_clusters
        self.heartbeat_timeout = heartbeat_timeout
        self.connect_timeout = connect_timeout
        self.ready_timeout = ready_timeout
        self.watcher = ConfigDirWatcher(config_dir, local_cluster=local_name, interval=config_interval)
        self.ids = ClusterIDs(local_id)
        self._factory = factory
        self._reconnect_backoff = reconnect_backoff
        self._remotes: dict[str, _Running] = {}
        self._tombstones: dict[str, asyncio.Task[None]] = {}
        self._changes = _Changes()
        self._tasks: asyncio.TaskGroup | None = None
        self._log = get_logger(__name__, local=local_name)

    # --- inspection -----------------------------------------------------------------------------

    def remotes(self) -> dict[str, RemoteCluster]:
        """The remote clusters currently configured."""
        return {name: r.remote for name, r in self._remotes.items()}

    def status(self) -> list[RemoteClusterStatus]:
        """Every remote cluster, sorted by name; files that are present but unusable (broken
        YAML, never valid) show up as not ready with the reason."""
        out = {name: r.remote.status() for name, r in self._remotes.items()}
        for name, problem in self.watcher.problems.items():
            if name not in out and name not in self.watcher.current:
                try:
                    validate_cluster_name(name)
                except WireError:
                    continue  # invalid names are rejected, not remote clusters
                out[name] = RemoteClusterStatus(name=name, ready=False, connected=False, status=problem)
        return [out[name] for name in sorted(out)]

    def config_problems(self) -> dict[str, str]:
        """Config files that are present but rejected, with the reason."""
        return dict(self.watcher.problems)

    # --- running --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the config directory and run every remote cluster until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            try:
                async with aclosing(self.watcher.changes()) as changes:
                    async for name, file in changes:
                        if file is None:
                            await self._remove(name)
                        else:
                            await self._upsert(name, file)
                        self._changes.notify()
            finally:
                self._tasks = None
                for running in self._remotes.values():
                    running.task.cancel()

    async def _upsert(self, name: str, file: RemoteConfigFile) -> None:
        assert self._tasks is not None
        running = self._remotes.get(name)
        if running is not None:
            self._log.info("remote cluster config changed, reconnecting", cluster=name)
            await _cancel(running.task)
            remote = running.remote
        else:
            self._log.info("remote cluster added", cluster=name)
            remote = RemoteCluster(
                name,
                self._factory(name),
                self.ids,
                max_connected_clusters=self.max_connected_clusters,
                heartbeat_timeout=self.heartbeat_timeout,
                connect_timeout=self.connect_timeout,
                reconnect_backoff=self._reconnect_backoff() if self._reconnect_backoff else None,
                on_change=self._changes.notify,
            )
        tombstone = self._tombstones.get(name)
        task = self._tasks.create_task(remote.run(file, after=tombstone), name=f"remote cluster {name}")
        self._remotes[name] = _Running(remote, task, file)

    async def _remove(self, name: str) -> None:
        assert self._tasks is not None
        running = self._remotes.pop(name, None)
        if running is None:
            return
        self._log.info("remote cluster removed, draining", cluster=name)
        await _cancel(running.task)
        running.remote.drain()
        work = running.remote.work
        if isinstance(work, DrainWaiter):
            tombstone = self._tasks.create_task(work.wait_drained(), name=f"drain {name}")
            self._tombstones[name] = tombstone
            tombstone.add_done_callback(lambda t, n=name: self._forget_tombstone(n, t))  # type: ignore[misc]

    def _forget_tombstone(self, name: str, task: asyncio.Task[None]) -> None:
        if self._tombstones.get(name) is task:
            del self._tombstones[name]

    async def wait_synced(self, timeout: float) -> bool:  # noqa: ASYNC109 - the circuit breaker is the API
        """Wait until every remote cluster reported its initial sync (Cilium's ``ForAll`` with a
        circuit breaker). Clusters that cannot connect do not block. On timeout, log one warning
        and return False; the caller carries on as if synced."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                await self.watcher.initial_scan.wait()
                while True:
                    changed = self._changes.waiter()
                    now = time.monotonic()
                    pending = [
                        r.remote for r in self._remotes.values() if r.remote.blocks_sync(self.ready_timeout, now)
                    ]
                    if not pending:
                        return True
                    wake = 1.0
                    if self.ready_timeout is not None:
                        wake = min(
                            [wake] + [max(0.01, r.added_at + self.ready_timeout - now) for r in pending]
                        )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), timeout=wake)
        except TimeoutError:
            pending_names = sorted(
                r.remote.name for r in self._remotes.values() if r.remote.blocks_sync(self.ready_timeout)
            )
            self._log.warning(SYNC_TIMEOUT_WARNING, timeout=timeout, waiting_for=pending_names)
            return False


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait (bounded) until it has ended."""
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=30.0)
    if not done:
        get_logger(__name__).error("remote cluster task did not stop within 30s", task=task.get_name())

