"""The writer side: keep etcd equal to the entries a component wants under one prefix.

Modelled on Cilium's workqueue ``SyncStore`` (``pkg/kvstore/store/syncstore.go``):

- :meth:`SyncStore.upsert` and :meth:`SyncStore.delete` only record intent and never block or
  fail on etcd; repeated changes to one key coalesce, unchanged values are not written again, and
  a delete goes out only for keys this store wrote.
- A worker writes dirty keys in transactions of up to 128 operations, every key on a lease, and
  retries with backoff while etcd is unreachable.
- :meth:`SyncStore.synced` asks for the *synced canary* ``cilium/synced/<cluster>/<prefix>``: it is
  written only after every change queued before the call has landed.
- When a lease expires, every key this store had on it (the canary included) is written again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from meshcore.backoff import Backoff
from meshcore.errors import KVStoreError, LeaseExpiredError
from meshcore.kvstore.types import MAX_TXN_OPS, DeleteOp, KVStore, PutOp, TxnOp
from meshcore.log import get_logger
from meshcore.wire.keys import synced_key


class LeaseSource(Protocol):
    """Where a store gets the lease for each key (see :class:`meshcore.kvstore.leases.LeaseManager`)."""

    async def acquire(self, key: str) -> int: ...

    def release(self, key: str) -> None: ...

    def on_expired(self, callback: Callable[[int, frozenset[str]], Awaitable[None]]) -> None: ...

    def invalidate(self, lease_id: int) -> None: ...


async def leased_put(kv: KVStore, leases: LeaseSource | None, key: str, value: bytes) -> int:
    """Put ``key`` on its lease from ``leases`` (none: unleased). A lease etcd no longer knows is
    invalidated at once, so the retry gets a fresh one instead of waiting for the keepalive round."""
    lease = await leases.acquire(key) if leases is not None else 0
    try:
        return await kv.put(key, value, lease=lease)
    except LeaseExpiredError:
        if leases is not None:
            leases.invalidate(lease)
        raise


def rfc3339_now() -> str:
    """The current time as Go's ``time.Now().UTC().Format(time.RFC3339)``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class SyncStoreStatus:
    prefix: str
    desired: int
    pending: int
    synced: bool
    writes: int
    failures: int
    last_error: str


class SyncStore:
    """Writes the entries of one prefix (``cilium/state/nodes/v1/<cluster>`` and the like).

    ``name`` arguments are the key with the prefix removed (Cilium's ``GetKeyName``). Run
    :meth:`run` in a task group; without ``leases`` keys are written without a lease.
    ``canary_prefix`` overrides the prefix named in the canary key (Cilium's
    ``WSSWithSyncedKeyOverride``: the identities store writes under ``.../identities/v1/id`` but
    announces ``.../identities/v1``).
    """

    def __init__(
        self,
        kv: KVStore,
        prefix: str,
        *,
        cluster: str,
        leases: LeaseSource | None,
        canary_prefix: str | None = None,
        batch_size: int = MAX_TXN_OPS,
        backoff: Backoff | None = None,
    ) -> None:
        if not 1 <= batch_size <= MAX_TXN_OPS:
            raise ValueError(f"batch_size {batch_size} must be in 1..{MAX_TXN_OPS}")
        self.prefix = prefix.rstrip("/")
        self.canary_key = synced_key(cluster, canary_prefix or self.prefix)
        self._kv = kv
        self._leases = leases
        self._batch_size = batch_size
        self._backoff = backoff or Backoff(initial=0.1, maximum=5.0)
        self._desired: dict[str, bytes] = {}
        self._written: dict[str, bytes] = {}
        # Dirty names with the sequence number of their first change since they were last clean;
        # insertion order is sequence order, so the first item is the oldest pending change.
        self._dirty: dict[str, int] = {}
        self._seq = 0
        self._canary_barrier: int | None = None
        self._canary_written = False
        self._canary_callbacks: list[Callable[[], None]] = []
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.writes = 0
        self.failures = 0
        self.last_error = ""
        self._log = get_logger(__name__, prefix=self.prefix)
        if leases is not None:
            leases.on_expired(self._lease_expired)

    # --- intent (synchronous, never fails on etcd) ----------------------------------------------

    def upsert(self, name: str, value: bytes) -> None:
        """Make ``prefix/name`` hold ``value``."""
        if self._desired.get(name) == value and (name in self._dirty or self._written.get(name) == value):
            return
        self._desired[name] = value
        self._mark(name)

    def delete(self, name: str) -> None:
        """Remove ``prefix/name`` if this store wrote it (or may be writing it right now)."""
        wanted = self._desired.pop(name, None) is not None
        if wanted or name in self._written or name in self._dirty:
            self._mark(name)

    def synced(self, callback: Callable[[], None] | None = None) -> None:
        """Write the synced canary once everything queued so far is written, then call ``callback``."""
        if callback is not None:
            self._canary_callbacks.append(callback)
        self._canary_barrier = self._seq
        self._canary_written = False
        self._wake()

    # --- inspection -------------------------------------------------------------------------------

    @property
    def is_synced(self) -> bool:
        return self._canary_written

    def names(self) -> list[str]:
        return list(self._desired)

    def status(self) -> SyncStoreStatus:
        return SyncStoreStatus(
            prefix=self.prefix,
            desired=len(self._desired),
            pending=len(self._dirty),
            synced=self._canary_written,
            writes=self.writes,
            failures=self.failures,
            last_error=self.last_error,
        )

    async def wait_idle(self) -> None:
        """Return once nothing is waiting to be written (the canary included)."""
        await self._idle.wait()

    # --- the worker -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Write dirty keys until cancelled."""
        while True:
            await self._wakeup.wait()
            try:
                progressed = await self._write_batch()
                progressed = await self._maybe_write_canary() or progressed
            except KVStoreError as err:  # LeaseExpiredError included: its leases were invalidated
                self._note_failure(err)
                await self._backoff.wait()
                continue
            if progressed:
                self._backoff.reset()
            if not self._dirty and not self._canary_due():
                self._wakeup.clear()
                self._idle.set()

    async def _write_batch(self) -> bool:
        names = []
        for name in self._dirty:
            names.append(name)
            if len(names) == self._batch_size:
                break
        if not names:
            return False
        ops: list[TxnOp] = []
        planned: list[tuple[str, bytes | None]] = []
        for name in names:
            key = f"{self.prefix}/{name}"
            value = self._desired.get(name)
            if value is not None:
                lease = await self._leases.acquire(key) if self._leases is not None else 0
                ops.append(PutOp(key, value, lease))
                planned.append((name, value))
            elif name in self._written:
                ops.append(DeleteOp(key))
                planned.append((name, None))
            else:
                self._dirty.pop(name, None)
        if ops:
            try:
                await self._kv.txn(ops)
            except LeaseExpiredError:
                self._invalidate_leases(ops)
                raise
        self.writes += len(ops)
        for name, value in planned:
            if value is None:
                self._written.pop(name, None)
                if self._leases is not None:
                    self._leases.release(f"{self.prefix}/{name}")
            else:
                self._written[name] = value
            # A change that arrived while the transaction was in flight keeps the name dirty.
            if self._desired.get(name) == value:
                self._dirty.pop(name, None)
        return True

    def _canary_due(self) -> bool:
        if self._canary_barrier is None or self._canary_written:
            return False
        oldest = next(iter(self._dirty.values()), None)
        return oldest is None or oldest > self._canary_barrier

    async def _maybe_write_canary(self) -> bool:
        if not self._canary_due():
            return False
        await leased_put(self._kv, self._leases, self.canary_key, rfc3339_now().encode())
        self.writes += 1
        self._canary_written = True
        self._log.debug("wrote synced canary", key=self.canary_key)
        callbacks, self._canary_callbacks = self._canary_callbacks, []
        for callback in callbacks:
            callback()
        return True

    # --- helpers ----------------------------------------------------------------------------------

    def _mark(self, name: str) -> None:
        if name not in self._dirty:
            self._seq += 1
            self._dirty[name] = self._seq
        self._wake()

    def _wake(self) -> None:
        self._idle.clear()
        self._wakeup.set()

    def _note_failure(self, err: Exception) -> None:
        self.failures += 1
        self.last_error = str(err)
        # The first failure of a streak is worth a warning; the retries behind it are not.
        log = self._log.warning if self._backoff.attempt == 0 else self._log.debug
        log("kvstore write failed, retrying", error=str(err), pending=len(self._dirty))

    def _invalidate_leases(self, ops: list[TxnOp]) -> None:
        if self._leases is None:
            return
        for lease in {op.lease for op in ops if isinstance(op, PutOp) and op.lease}:
            self._leases.invalidate(lease)

    async def _lease_expired(self, lease_id: int, keys: frozenset[str]) -> None:
        recreate = 0
        for key in keys:
            if key == self.canary_key and self._canary_written:
                self._canary_written = False
                recreate += 1
            elif key.startswith(self.prefix + "/"):
                name = key[len(self.prefix) + 1 :]
                self._written.pop(name, None)
                if name in self._desired:
                    self._mark(name)
                    recreate += 1
        if recreate:
            if self._canary_barrier is not None:
                self._canary_barrier = self._seq
            self._log.info("lease expired, re-creating keys", lease=lease_id, keys=recreate)
            self._wake()
