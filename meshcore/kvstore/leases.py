"""Leases for many keys: at most :data:`MAX_KEYS_PER_LEASE` keys share one, all kept alive.

Cilium attaches every exported key to a lease so that a dead exporter's keys disappear, and caps
the keys per lease because a Put slows down with the number of keys already on its lease. The
:class:`LeaseManager` grants leases lazily, refreshes them every ``ttl / 3`` from :meth:`run`, and
when one is gone (revoked, expired, or lost because etcd was wiped) tells subscribers which keys
were on it, so a sync store can write them again. etcd being unreachable is not expiry: the loop
retries with backoff and, once etcd answers, its keepalive says whether each lease survived.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

from meshcore.backoff import Backoff
from meshcore.errors import ClusterChangedError, KVStoreError, LeaseExpiredError
from meshcore.kvstore.types import MAX_KEYS_PER_LEASE
from meshcore.log import get_logger

ExpiredCallback = Callable[[int, frozenset[str]], Awaitable[None]]
_Outcome = Literal["ok", "expired", "cluster-changed", "unavailable"]

_MIN_INTERVAL = 0.2
_RETRY_INITIAL = 0.25


class LeaseClient(Protocol):
    """The lease operations the manager needs (implemented by :class:`EtcdClient`)."""

    async def grant_lease(self, ttl: int) -> int: ...

    async def revoke_lease(self, lease_id: int) -> None: ...

    async def keepalive_once(self, lease_id: int) -> int: ...


class LeaseManager:
    """Hands out lease IDs for keys and keeps those leases alive; run :meth:`run` in a TaskGroup."""

    def __init__(
        self, client: LeaseClient, *, ttl: int, max_keys_per_lease: int = MAX_KEYS_PER_LEASE
    ) -> None:
        if ttl < 1:
            raise ValueError("lease ttl must be at least 1 second")
        if max_keys_per_lease < 1:
            raise ValueError("max_keys_per_lease must be positive")
        self._client = client
        self.ttl = ttl
        self.max_keys_per_lease = max_keys_per_lease
        self.interval = max(_MIN_INTERVAL, ttl / 3)
        self._key_lease: dict[str, int] = {}
        self._lease_keys: dict[int, set[str]] = {}
        self._current: int | None = None
        self._grant_lock = asyncio.Lock()
        self._callbacks: list[ExpiredCallback] = []
        # Leases found gone by invalidate(), whose subscribers run() has yet to notify.
        self._invalidated: dict[int, set[str]] = {}
        self._wakeup = asyncio.Event()
        self._log = get_logger(__name__)

    def on_expired(self, callback: ExpiredCallback) -> None:
        """Call ``callback(lease_id, keys)`` whenever a lease is found gone."""
        self._callbacks.append(callback)

    @property
    def leases(self) -> dict[int, int]:
        """Lease ID -> number of keys on it."""
        return {lease: len(keys) for lease, keys in self._lease_keys.items()}

    def lease_of(self, key: str) -> int | None:
        """The lease ``key`` is on, if any."""
        return self._key_lease.get(key)

    async def acquire(self, key: str) -> int:
        """The lease ID to write ``key`` with; grants a new lease when the current one is full.

        Raises :class:`~meshcore.errors.KVStoreError` subclasses when a lease cannot be granted.
        """
        lease = self._key_lease.get(key)
        if lease is not None:
            return lease
        lease = self._current
        if lease is None or len(self._lease_keys[lease]) >= self.max_keys_per_lease:
            async with self._grant_lock:
                lease = self._current
                if lease is None or len(self._lease_keys[lease]) >= self.max_keys_per_lease:
                    lease = await self._client.grant_lease(self.ttl)
                    self._lease_keys[lease] = set()
                    self._current = lease
            existing = self._key_lease.get(key)  # another task may have acquired it meanwhile
            if existing is not None:
                return existing
        self._key_lease[key] = lease
        self._lease_keys[lease].add(key)
        return lease

    def release(self, key: str) -> None:
        """Forget ``key`` (deleted). An emptied lease other than the current one is left to expire."""
        lease = self._key_lease.pop(key, None)
        if lease is None:
            return
        keys = self._lease_keys.get(lease)
        if keys is None:
            return
        keys.discard(key)
        if not keys and lease != self._current:
            del self._lease_keys[lease]

    def invalidate(self, lease_id: int) -> None:
        """Declare ``lease_id`` gone (a write with it failed with ``LeaseExpiredError``).

        New :meth:`acquire` calls get another lease at once; :meth:`run` notifies the subscribers
        with the keys that were on it.
        """
        keys = self._detach(lease_id)
        if keys is not None:
            self._invalidated[lease_id] = keys
            self._wakeup.set()

    async def run(self) -> None:
        """Keep every lease alive until cancelled; never returns on its own."""
        backoff = Backoff(initial=_RETRY_INITIAL, maximum=self.interval)
        delay = self.interval
        while True:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a racing cancellation.
            try:
                async with asyncio.timeout(delay):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
            if self._wakeup.is_set():
                self._wakeup.clear()
                await self._notify_invalidated()
                continue
            if await self.keepalive_all():
                backoff.reset()
                delay = self.interval
            else:
                # etcd unreachable: retry sooner than the regular interval, backing off up to it.
                delay = backoff.next_delay()

    async def keepalive_all(self) -> bool:
        """Refresh every lease once and handle expiries; False if etcd could not be reached."""
        await self._notify_invalidated()
        leases = list(self._lease_keys)
        if not leases:
            return True
        results = await asyncio.gather(*(self._keepalive(lease) for lease in leases))
        reachable = True
        for lease, result in zip(leases, results, strict=True):
            if result == "expired":
                await self._expire(lease)
            elif result == "cluster-changed":
                # A new etcd cluster knows none of our leases.
                for lost in list(self._lease_keys):
                    await self._expire(lost)
                return True
            elif result == "unavailable":
                reachable = False
        return reachable

    async def _keepalive(self, lease: int) -> _Outcome:
        try:
            await self._client.keepalive_once(lease)
        except LeaseExpiredError:
            return "expired"
        except ClusterChangedError:
            return "cluster-changed"
        except KVStoreError as e:
            self._log.warning("lease keepalive failed, will retry", lease=f"{lease:x}", error=str(e))
            return "unavailable"
        return "ok"

    def _detach(self, lease: int) -> set[str] | None:
        keys = self._lease_keys.pop(lease, None)
        if keys is None:
            return None
        if self._current == lease:
            self._current = None
        for key in keys:
            if self._key_lease.get(key) == lease:
                del self._key_lease[key]
        return keys

    async def _expire(self, lease: int) -> None:
        keys = self._detach(lease)
        if keys is not None:
            await self._notify(lease, frozenset(keys))

    async def _notify_invalidated(self) -> None:
        while self._invalidated:
            lease = next(iter(self._invalidated))
            await self._notify(lease, frozenset(self._invalidated.pop(lease)))

    async def _notify(self, lease: int, keys: frozenset[str]) -> None:
        self._log.warning(
            "etcd lease is gone, its keys must be written again", lease=f"{lease:x}", keys=len(keys)
        )
        for callback in self._callbacks:
            try:
                await callback(lease, keys)
            except Exception as e:
                self._log.error("lease-expiry callback failed", lease=f"{lease:x}", error=repr(e))

    async def revoke_all(self) -> None:
        """Revoke every lease (deleting their keys in etcd) and forget them; for clean shutdown."""
        leases = list(self._lease_keys)
        self._lease_keys.clear()
        self._key_lease.clear()
        self._invalidated.clear()
        self._current = None
        for lease in leases:
            await self._client.revoke_lease(lease)
