"""The shared machinery of every controller: informers, a work queue, expectations, a reconcile loop.

- :class:`Informer` keeps a local cache of one resource from a
  :class:`~meshcore.k8s.resource.ResourceWatch` (list, then watch from the list's resourceVersion with
  bookmarks; resume from the last version after a dropped stream; list again on 410 Gone; retry with a
  capped backoff while the API is unreachable) and calls handlers with ``(old, new)`` on every change.
- :class:`WorkQueue` is a deduplicating queue of keys with delayed re-adds.
- :class:`Expectations` remembers the creates and deletes a controller made until its informer has seen
  them, so a reconcile never acts twice on a stale cache (client-go's ControllerExpectations, by name).
- :class:`ReconcileLoop` waits for its informers' first sync, then feeds queued keys to one reconcile
  function at a time, re-queues failures with per-key backoff and re-queues everything periodically.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from lab.kube.controllers import objects as o
from meshcore.backoff import Backoff
from meshcore.errors import K8sError
from meshcore.k8s.client import K8sApi
from meshcore.k8s.resource import Delete, ResourceRef, ResourceWatch, Synced, Upsert
from meshcore.log import get_logger

Obj = dict[str, Any]
Handler = Callable[[Obj | None, Obj | None], None]
Reconcile = Callable[[str], Awaitable[float | None]]

_log = get_logger(__name__)


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``event``; whether it is set. Not ``asyncio.wait_for``: on Python 3.11 that
    swallows a cancellation arriving just as the event fires, and a loop around it would never stop."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        pass
    return event.is_set()


class Informer:
    """A cache of one resource, kept current by list+watch; handlers see every change as ``(old, new)``
    (``old`` None for an add, ``new`` None for a delete). Run :meth:`run` in a task group."""

    def __init__(self, api: K8sApi, ref: ResourceRef, *, backoff: Backoff | None = None,
                 watch_timeout: int = 300) -> None:
        self.ref = ref
        self.synced = asyncio.Event()
        self._watch = ResourceWatch(api, ref, watch_timeout=watch_timeout,
                                    backoff=backoff or Backoff(initial=0.2, maximum=3.0))
        self._cache: dict[str, Obj] = {}
        self._uids: dict[str, str] = {}  # uid -> key
        self._handlers: list[Handler] = []
        self._log = get_logger(__name__, resource=ref.plural)

    @property
    def error(self) -> str:
        """The last list/watch error (empty while healthy)."""
        return self._watch.error

    def add_handler(self, handler: Handler) -> None:
        """Call ``handler(old, new)`` on every change; handlers must be quick and must not raise."""
        self._handlers.append(handler)

    def get(self, namespace: str | None, name: str) -> Obj | None:
        return self._cache.get(f"{namespace}/{name}" if namespace and self.ref.namespaced else name)

    def get_key(self, key: str) -> Obj | None:
        return self._cache.get(key)

    def items(self, namespace: str | None = None) -> list[Obj]:
        """Cached objects (of one namespace if given), in key order."""
        if namespace is None:
            return [self._cache[k] for k in sorted(self._cache)]
        prefix = f"{namespace}/"
        return [self._cache[k] for k in sorted(self._cache) if k.startswith(prefix)]

    def keys(self) -> list[str]:
        return sorted(self._cache)

    def has_uid(self, uid: str) -> bool:
        """Whether an object with this uid is in the cache."""
        return uid in self._uids

    def feed(self, old: Obj | None, new: Obj | None) -> None:
        """Apply one change to the cache and tell the handlers (the watch does this; tests may too)."""
        obj = new if new is not None else old
        if obj is None:
            return
        k = o.key(obj)
        previous = self._cache.get(k)
        if previous is not None:
            self._uids.pop(o.uid(previous), None)
        if new is None:
            self._cache.pop(k, None)
        else:
            self._cache[k] = new
            self._uids[o.uid(new)] = k
        for handler in self._handlers:
            try:
                handler(old, new)
            except Exception:  # a handler bug must not stop the cache
                self._log.exception("informer handler failed", object=k)

    async def run(self) -> None:
        """List and watch until cancelled."""
        async with aclosing(self._watch.events()) as events:
            async for event in events:
                if isinstance(event, Synced):
                    self.synced.set()
                    self._log.info("informer synced", objects=len(self._cache))
                elif isinstance(event, Upsert):
                    self.feed(self._cache.get(o.key(event.obj)), event.obj)
                elif isinstance(event, Delete):
                    self.feed(self._cache.get(o.key(event.obj), event.obj), None)


class WorkQueue:
    """Keys to reconcile: each key at most once in the queue; ``add_after`` schedules a later add."""

    def __init__(self) -> None:
        self._ready: dict[str, None] = {}
        self._delayed: list[tuple[float, int, str]] = []
        self._seq = 0
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._ready)

    def add(self, key: str) -> None:
        self._ready[key] = None
        self._wake.set()

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        self._seq += 1
        heapq.heappush(self._delayed, (time.monotonic() + delay, self._seq, key))
        self._wake.set()

    def _promote(self) -> float | None:
        """Move due delayed keys to the ready set; seconds until the next one is due."""
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, k = heapq.heappop(self._delayed)
            self._ready[k] = None
        return self._delayed[0][0] - now if self._delayed else None

    async def get(self, *, max_wait: float = 5.0) -> str | None:
        """The next key, or None if none became ready within ``max_wait`` seconds."""
        deadline = time.monotonic() + max_wait
        while True:
            due = self._promote()
            if self._ready:
                k = next(iter(self._ready))
                del self._ready[k]
                return k
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._wake.clear()
            await _wait(self._wake, min(left, due) if due is not None else left)


@dataclass
class _Expected:
    informer: Informer
    namespace: str | None
    name: str
    uid: str
    present: bool
    deadline: float

    def met(self) -> bool:
        obj = self.informer.get(self.namespace, self.name)
        if self.present:
            return obj is not None and (not self.uid or o.uid(obj) == self.uid)
        return obj is None or o.uid(obj) != self.uid or o.is_terminating(obj)


class Expectations:
    """Writes a controller made and its informers have not shown yet, per controller key.

    A reconcile of a key with unmet expectations is skipped (the informer event that meets them
    re-queues the key); expectations expire after ``ttl`` seconds so a lost event cannot wedge a key.
    """

    def __init__(self, ttl: float = 30.0) -> None:
        self.ttl = ttl
        self._pending: dict[str, list[_Expected]] = {}

    def expect_created(self, key: str, informer: Informer, obj: Obj) -> None:
        self._add(key, _Expected(informer, o.namespace(obj) or None, o.name(obj), o.uid(obj), True,
                                 time.monotonic() + self.ttl))

    def expect_deleted(self, key: str, informer: Informer, obj: Obj) -> None:
        self._add(key, _Expected(informer, o.namespace(obj) or None, o.name(obj), o.uid(obj), False,
                                 time.monotonic() + self.ttl))

    def _add(self, key: str, exp: _Expected) -> None:
        self._pending.setdefault(key, []).append(exp)

    def satisfied(self, key: str) -> bool:
        """True when every expectation of ``key`` has been observed (or has expired)."""
        pending = self._pending.get(key)
        if not pending:
            return True
        now = time.monotonic()
        left = [e for e in pending if not e.met() and e.deadline > now]
        if left:
            self._pending[key] = left
            return False
        del self._pending[key]
        return True

    def forget(self, key: str) -> None:
        self._pending.pop(key, None)


class ReconcileLoop:
    """Runs ``reconcile(key)`` for queued keys, one at a time, after ``informers`` have synced.

    ``reconcile`` returns None, or seconds after which to look at the key again. Exceptions re-queue the
    key with a backoff that doubles per consecutive failure (up to ``max_backoff``). Every
    ``resync_period`` seconds all keys from ``all_keys()`` are queued again.
    """

    def __init__(self, name: str, reconcile: Reconcile, *, informers: Sequence[Informer],
                 all_keys: Callable[[], Iterable[str]], resync_period: float = 30.0,
                 max_backoff: float = 10.0) -> None:
        self.name = name
        self.queue = WorkQueue()
        self.failures: dict[str, int] = {}
        self.reconciles = 0
        self._reconcile = reconcile
        self._informers = list(informers)
        self._all_keys = all_keys
        self._resync_period = resync_period
        self._max_backoff = max_backoff
        self._log = get_logger(__name__, controller=name)

    def enqueue(self, key: str) -> None:
        self.queue.add(key)

    async def _wait_synced(self) -> None:
        waited = 0.0
        for inf in self._informers:
            while not inf.synced.is_set():
                if not await _wait(inf.synced, 10.0):
                    waited += 10.0
                    self._log.info("waiting for informer", resource=inf.ref.plural, seconds=waited,
                                   error=inf.error or None)

    async def run(self) -> None:
        """Wait for the informers, then reconcile until cancelled."""
        await self._wait_synced()
        self._log.info("controller started")
        for key in self._all_keys():
            self.queue.add(key)
        next_resync = time.monotonic() + self._resync_period
        while True:
            if time.monotonic() >= next_resync:
                for key in self._all_keys():
                    self.queue.add(key)
                next_resync = time.monotonic() + self._resync_period
            k = await self.queue.get(max_wait=max(0.05, min(5.0, next_resync - time.monotonic())))
            if k is not None:
                await self._one(k)

    async def _one(self, k: str) -> None:
        self.reconciles += 1
        try:
            again = await self._reconcile(k)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            n = self.failures.get(k, 0) + 1
            self.failures[k] = n
            delay = min(self._max_backoff, 0.1 * 2 ** min(n, 10))
            log = self._log.warning if n <= 3 or n % 10 == 0 else self._log.debug
            log("reconcile failed", key=k, attempt=n, retry_in=round(delay, 2),
                error=f"{type(err).__name__}: {err}", exc_info=not isinstance(err, K8sError))
            self.queue.add_after(k, delay)
            return
        self.failures.pop(k, None)
        if again is not None:
            self.queue.add_after(k, again)
