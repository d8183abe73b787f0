"""The ``cilium/.heartbeat`` writer.

Remote Cilium agents list-watch this key and declare the connection broken when it has not changed
for more than two minutes, so an exporting cluster refreshes it well within that.
"""

from __future__ import annotations

import asyncio

from meshcore.backoff import Backoff
from meshcore.errors import KVStoreError
from meshcore.kvstore.types import KVStore
from meshcore.log import get_logger
from meshcore.store.syncstore import LeaseSource, leased_put, rfc3339_now
from meshcore.wire.keys import HEARTBEAT as HEARTBEAT_KEY

# Cilium's HeartbeatWriteInterval.
HEARTBEAT_INTERVAL = 60.0


class HeartbeatWriter:
    """Writes an RFC 3339 timestamp to ``cilium/.heartbeat`` every ``interval`` seconds, leased."""

    def __init__(self, kv: KVStore, leases: LeaseSource | None, *, interval: float = HEARTBEAT_INTERVAL) -> None:
        if interval <= 0:
            raise ValueError(f"heartbeat interval must be positive, got {interval}")
        self._kv = kv
        self._leases = leases
        self._interval = interval
        self.beats = 0
        self.last_error = ""
        self.written = asyncio.Event()
        self._log = get_logger(__name__)

    async def beat(self) -> None:
        """Write one heartbeat now; raises :class:`KVStoreError` if etcd refuses."""
        await leased_put(self._kv, self._leases, HEARTBEAT_KEY, rfc3339_now().encode())
        self.beats += 1
        self.written.set()

    async def run(self) -> None:
        """Beat every ``interval`` seconds until cancelled; failures are retried sooner."""
        backoff = Backoff(initial=0.5, maximum=min(10.0, self._interval))
        while True:
            try:
                await self.beat()
            except KVStoreError as err:
                self.last_error = str(err)
                log = self._log.warning if backoff.attempt == 0 else self._log.debug
                log("heartbeat write failed, retrying", error=str(err))
                await backoff.wait()
                continue
            backoff.reset()
            await asyncio.sleep(self._interval)
