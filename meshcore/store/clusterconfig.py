"""The ``cilium/cluster-config/<cluster>`` writer, which keeps the key as the cluster says.

Cilium's enforcer (``pkg/clustermesh/clustercfg/enforce.go``): the config is written at start,
re-asserted every five minutes, and rewritten at once when anyone else changes or deletes it,
because remote agents refuse to connect to a cluster whose config they cannot read.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing

from meshcore.backoff import Backoff
from meshcore.errors import KVStoreError
from meshcore.kvstore.types import KVStore
from meshcore.log import get_logger
from meshcore.store.listwatch import Delete, ListDone, ListStart, Upsert, list_and_watch
from meshcore.store.syncstore import LeaseSource, leased_put
from meshcore.wire.keys import cluster_config_key

REASSERT_INTERVAL = 300.0


class ClusterConfigWriter:
    """Holds ``cilium/cluster-config/<cluster>`` at ``value`` (the encoded CiliumClusterConfig)."""

    def __init__(
        self,
        kv: KVStore,
        leases: LeaseSource | None,
        cluster: str,
        value: bytes,
        *,
        reassert_interval: float = REASSERT_INTERVAL,
    ) -> None:
        self.key = cluster_config_key(cluster)
        self.value = value
        self._kv = kv
        self._leases = leases
        self._reassert_interval = reassert_interval
        self.written = asyncio.Event()
        self.rewrites = 0
        self.last_error = ""
        self._log = get_logger(__name__, key=self.key)

    async def run(self) -> None:
        """Write, watch and re-assert until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._watch(), name=f"enforce {self.key}")
            tasks.create_task(self._reassert(), name=f"reassert {self.key}")

    async def _write(self) -> None:
        backoff = Backoff(initial=0.2, maximum=5.0)
        while True:
            try:
                await leased_put(self._kv, self._leases, self.key, self.value)
            except KVStoreError as err:
                self.last_error = str(err)
                log = self._log.warning if backoff.attempt == 0 else self._log.debug
                log("cluster config write failed, retrying", error=str(err))
                await backoff.wait()
                continue
            self.written.set()
            return

    async def _reassert(self) -> None:
        while True:
            await asyncio.sleep(self._reassert_interval)
            await self._write()

    async def _watch(self) -> None:
        # The prefix also matches longer cluster names (cluster3 vs cluster30): filter exact keys.
        current: bytes | None = None
        events = list_and_watch(self._kv, self.key)
        async with aclosing(events):
            async for event in events:
                if isinstance(event, ListStart):
                    current = None
                elif isinstance(event, Upsert) and event.key == self.key:
                    current = event.value
                    if current != self.value and self.written.is_set():
                        self._log.info("cluster config changed from outside, restoring")
                        self.rewrites += 1
                        await self._write()
                elif isinstance(event, Delete) and event.key == self.key:
                    current = None
                    if self.written.is_set():
                        self._log.info("cluster config deleted from outside, restoring")
                        self.rewrites += 1
                        await self._write()
                elif isinstance(event, ListDone) and (current != self.value or not self.written.is_set()):
                    # Also when the value is already there: a previous run's lease may be about to
                    # expire, so take the key over with our own lease (same value, same key).
                    await self._write()
