"""What the agent does with one connected remote cluster: :class:`AgentRemoteWork`.

The remote-cluster layer (:mod:`meshcore.clustermesh`) owns the connection; on every (re)connection
it calls :meth:`AgentRemoteWork.run` with a fresh kvstore and the remote's cluster config. Per
connection the work:

1. picks the state layout (a direct connection to the remote's clustermesh-apiserver) or the cache
   layout (``capabilities.cached``: a KVStoreMesh mirror, cluster-scoped
   ``cilium/cache/{nodes,services,ip,identities}/v1/<remote>/...``);
2. starts four watch stores (nodes, services, ipcache, identities), each once its synced canary
   ``cilium/synced/<remote>/<prefix>`` exists when the remote advertises ``syncedCanaries``, else at
   once (Cilium's ``WatchStoreManager``);
3. calls ``synced()`` once all four have a complete snapshot.

The watch stores outlive connections: on a reconnect they run again on the new kvstore, so what came
back is refreshed silently and only what did not is deleted (mark-and-sweep). If the remote's
cluster ID changes, or its layout switches between state and cache, everything known from it is
drained first, as Cilium drains before reconnecting with a new ID. :meth:`drain` (the remote was
removed from the configuration) forgets everything; a mere disconnect forgets nothing.

Every value is validated (:mod:`agent.validate`); a rejected one is skipped, counted in
``clustermesh_remote_cluster_invalid_entries_total`` and logged once per key by the watch store.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.caches import CacheKind, MeshCaches
from agent.metrics import AgentMetrics
from agent.validate import RemoteInfo, identity_decoder, ip_decoder, node_decoder, service_decoder
from meshcore.clustermesh.types import RemoteCounts, RemoteWork
from meshcore.errors import WireError
from meshcore.kvstore.types import KVStore
from meshcore.log import get_logger
from meshcore.store.watchstore import WatchStore, WatchStoreStatus
from meshcore.store.watchstoremgr import WatchStoreManager
from meshcore.wire import ClusterConfig
from meshcore.wire.clusterinfo import DEFAULT_MAX_CONNECTED_CLUSTERS
from meshcore.wire.keys import IDENTITIES, IP, NODES, SERVICES, state_to_cache, watch_prefix

__all__ = ["KINDS", "AgentRemoteWork", "AgentWorkFactory"]

KINDS: tuple[str, ...] = ("nodes", "services", "endpoints", "identities")
"""The watched kinds, named as in Cilium's ``synced`` status (``endpoints`` is the ipcache)."""


@dataclass(frozen=True, slots=True)
class _KindSpec:
    cache: CacheKind
    wire_kind: Any  # a meshcore.wire.keys.Kind
    state_prefix: str  # also the synced canary's suffix (mapped to cache when cached)
    decoder: Callable[[Callable[[], RemoteInfo]], Callable[[str, bytes], Any]]


_SPECS: dict[str, _KindSpec] = {
    "nodes": _KindSpec("nodes", "node", NODES, node_decoder),
    "services": _KindSpec("services", "service", SERVICES, service_decoder),
    "endpoints": _KindSpec("ipcache", "ip", IP, ip_decoder),
    "identities": _KindSpec("identities", "identity", IDENTITIES, identity_decoder),
}


class AgentRemoteWork:
    """The agent's :class:`~meshcore.clustermesh.types.RemoteWork` for the remote ``name``."""

    def __init__(
        self,
        name: str,
        *,
        caches: MeshCaches,
        metrics: AgentMetrics | None = None,
        max_connected_clusters: int = DEFAULT_MAX_CONNECTED_CLUSTERS,
        list_slots: asyncio.Semaphore | None = None,
    ) -> None:
        self.name = name
        self._list_slots = list_slots
        self._caches = caches
        self._metrics = metrics
        self._max_connected_clusters = max_connected_clusters
        self._info: RemoteInfo | None = None
        self._cached: bool | None = None
        self._stores: dict[str, WatchStore[Any]] = {}
        self._invalid: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._log = get_logger(__name__, cluster=name)

    # ---- RemoteWork ----

    async def run(self, kv: KVStore, config: ClusterConfig, synced: Callable[[], None]) -> None:
        """Watch the remote on ``kv`` until cancelled (see the module docstring)."""
        cached = config.capabilities.cached
        self._prepare(config.id, cached)
        gated = config.capabilities.synced_canaries
        manager = WatchStoreManager(kv, watch_prefix("synced", self.name), gated=gated)
        for kind, store in self._stores.items():
            canary = _SPECS[kind].state_prefix
            manager.register(state_to_cache(canary) if cached else canary, functools.partial(store.run, kv))
        self._log.info(
            "watching remote cluster",
            cluster_id=config.id,
            layout="cache" if cached else "state",
            sync_canaries=gated,
        )
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(manager.run(), name=f"watch stores {self.name}")
            tasks.create_task(self._signal_synced(synced), name=f"synced {self.name}")

    def drain(self) -> None:
        """Forget everything known from this remote (it was removed from the configuration)."""
        for store in self._stores.values():
            store.drain()
        self._stores = {}
        self._info = None
        self._cached = None
        self._caches.remove_cluster(self.name)
        if self._metrics is not None:
            self._metrics.forget_cluster(self.name, KINDS)

    def counts(self) -> RemoteCounts:
        """What this remote contributes now (from the caches: unshared services do not count)."""
        cache = self._caches.get(self.name)
        synced = {kind: store.synced.is_set() for kind, store in self._stores.items()}
        if cache is None:
            return RemoteCounts()
        return RemoteCounts(
            nodes=len(cache.nodes),
            endpoints=len(cache.ipcache),
            identities=len(cache.identities),
            shared_services=len(cache.services),
            synced_nodes=synced.get("nodes", False),
            synced_endpoints=synced.get("endpoints", False),
            synced_identities=synced.get("identities", False),
            synced_services=synced.get("services", False),
        )

    # ---- extras for status and tests ----

    def invalid_counts(self) -> dict[str, int]:
        """Entries rejected so far, per kind (every rejection, not once per key)."""
        return dict(self._invalid)

    def store_status(self) -> dict[str, WatchStoreStatus]:
        """The watch stores' own status, per kind."""
        return {kind: store.status() for kind, store in self._stores.items()}

    def prefixes(self) -> dict[str, str]:
        """The prefix watched per kind (empty before the first run)."""
        return {kind: store.prefix for kind, store in self._stores.items()}

    # ---- internals ----

    def _remote_info(self) -> RemoteInfo:
        info = self._info
        if info is None:  # only a drained work has none; its stores are gone
            raise WireError(f"remote cluster {self.name!r} has no configuration")
        return info

    def _prepare(self, cluster_id: int, cached: bool) -> None:
        """Keep the stores for a reconnect, or drain and rebuild them when the remote changed."""
        if self._stores and self._info is not None and self._info.cluster_id != cluster_id:
            self._log.warning(
                "remote cluster ID changed, draining its entries", old=self._info.cluster_id, new=cluster_id
            )
            self.drain()
        elif self._stores and self._cached != cached:
            self._log.warning("remote cluster switched kvstore layout, draining its entries", cached=cached)
            self.drain()
        self._info = RemoteInfo(self.name, cluster_id, self._max_connected_clusters)
        self._caches.set_cluster_id(self.name, cluster_id)
        if self._stores:
            return
        self._cached = cached
        for kind, spec in _SPECS.items():
            self._stores[kind] = WatchStore(
                None,
                watch_prefix(spec.wire_kind, self.name, cached=cached),
                self._counting(kind, spec.decoder(self._remote_info)),
                self._caches.observer(self.name, spec.cache),
                # The caches keep the compact record and ignore an equal one: the store keeps
                # only the key.
                keep_values=False,
                keep_digests=False,
                list_slots=self._list_slots,
            )

    def _counting(self, kind: str, decode: Callable[[str, bytes], Any]) -> Callable[[str, bytes], Any]:
        """Wrap ``decode`` to count rejections; never let anything but WireError out."""

        def counted(name: str, raw: bytes) -> Any:
            try:
                return decode(name, raw)
            except WireError:
                self._reject(kind)
                raise
            except Exception as exc:  # remote data must never crash the agent
                self._reject(kind)
                raise WireError(f"unexpected {type(exc).__name__} while validating: {exc}") from exc

        return counted

    def _reject(self, kind: str) -> None:
        self._invalid[kind] += 1
        if self._metrics is not None:
            self._metrics.count_invalid(self.name, kind)

    async def _signal_synced(self, synced: Callable[[], None]) -> None:
        # As in Cilium, a store's synced flag stays set across reconnects: once every store had
        # one complete snapshot, the remote counts as synced on every later connection too.
        for store in list(self._stores.values()):
            await store.synced.wait()
        self._log.info("remote cluster synced", **{k: len(s) for k, s in self._stores.items()})
        synced()


INITIAL_LIST_SLOTS = 48
"""Snapshots (one per remote and kind) listed and decoded at once, over all remotes: enough to
keep etcd busy while the agent decodes, few enough that 250 clusters' raw lists are never all in
memory together."""


class AgentWorkFactory:
    """The ``WorkFactory`` the agent hands to :class:`~meshcore.clustermesh.remote.ClusterMesh`:
    one :class:`AgentRemoteWork` per remote, all feeding the same caches and metrics, kept in
    :attr:`works` by cluster name."""

    def __init__(
        self,
        caches: MeshCaches,
        metrics: AgentMetrics | None = None,
        *,
        max_connected_clusters: int = DEFAULT_MAX_CONNECTED_CLUSTERS,
        list_slots: int = INITIAL_LIST_SLOTS,
    ) -> None:
        self.caches = caches
        self.metrics = metrics
        self.max_connected_clusters = max_connected_clusters
        self.works: dict[str, AgentRemoteWork] = {}
        # One bound for every remote: what is held at once while the mesh syncs.
        self._list_slots = asyncio.Semaphore(list_slots)

    def __call__(self, name: str) -> RemoteWork:
        work = AgentRemoteWork(
            name, caches=self.caches, metrics=self.metrics, max_connected_clusters=self.max_connected_clusters,
            list_slots=self._list_slots,
        )
        self.works[name] = work
        return work


def _implements(work: AgentRemoteWork) -> RemoteWork:
    return work  # mypy checks here that AgentRemoteWork satisfies the RemoteWork protocol
