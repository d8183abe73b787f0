"""A generic reconciler: keep a target (a BPF map, routes, WireGuard peers) equal to a desired
state, in the manner of Cilium's StateDB reconcilers.

Business logic produces a complete desired mapping (pure); the reconciler turns the difference
against what the target holds into batched ``update_many`` / ``delete_many`` calls. On its first run
it reads the target's current content instead of assuming it empty, so a restarted agent facing
pinned maps writes only what changed and deletes only what is no longer wanted: mark and sweep,
never a flush. Failures are retried with backoff; the target is never left half-known (a failed
batch keeps its keys pending).
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Generic, Protocol, TypeVar

from meshcore.backoff import Backoff
from meshcore.log import get_logger

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Target(Protocol[K, V]):
    """What a reconciler writes to. Calls may raise; they are retried."""

    def items(self) -> Iterable[tuple[K, V]]:
        """Everything the target holds now (read once, at the first run)."""
        ...

    def update_many(self, items: list[tuple[K, V]]) -> None: ...

    def delete_many(self, keys: list[K]) -> None: ...


@dataclass(frozen=True, slots=True)
class ReconcilerStatus:
    name: str
    desired: int
    pending: int
    updates: int
    deletes: int
    failures: int
    last_error: str
    synced: bool


class Reconciler(Generic[K, V]):
    """Applies :meth:`set_desired` to ``target`` from :meth:`run` (run it in a task group)."""

    def __init__(self, name: str, target: Target[K, V], *, batch_size: int = 4096, backoff: Backoff | None = None):
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.name = name
        self._target = target
        self._batch_size = batch_size
        self._backoff = backoff or Backoff(initial=0.05, maximum=5.0)
        self._desired: dict[K, V] = {}
        self._applied: dict[K, V] | None = None  # None until the target was read
        self._dirty: set[K] = set()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self.updates = 0
        self.deletes = 0
        self.failures = 0
        self.last_error = ""
        self._log = get_logger(__name__, reconciler=name)

    def set_desired(self, desired: Mapping[K, V]) -> None:
        """Replace the whole desired state; only the difference will be written."""
        old = self._desired
        new = dict(desired)
        if self._applied is not None:
            self._dirty.update(_changed(new, old))
            self._dirty.update(k for k in old if k not in new)
        self._desired = new
        self._idle.clear()
        self._wakeup.set()

    @property
    def synced(self) -> bool:
        """The target equals the desired state as last set."""
        return self._applied is not None and not self._dirty

    def status(self) -> ReconcilerStatus:
        return ReconcilerStatus(
            name=self.name,
            desired=len(self._desired),
            pending=len(self._dirty),
            updates=self.updates,
            deletes=self.deletes,
            failures=self.failures,
            last_error=self.last_error,
            synced=self.synced,
        )

    async def wait_synced(self) -> None:
        await self._idle.wait()

    async def run(self) -> None:
        """Read the target once, then apply differences until cancelled."""
        while True:
            await self._wakeup.wait()
            try:
                if self._applied is None:
                    self._applied = dict(self._target.items())
                    self._dirty = set(_changed(self._desired, self._applied))
                    self._dirty.update(k for k in self._applied if k not in self._desired)
                    self._log.info("target read", entries=len(self._applied), to_change=len(self._dirty))
                self._apply_pending()
            except Exception as err:  # a target error of any kind: keep state, retry
                self.failures += 1
                self.last_error = f"{type(err).__name__}: {err}"
                log = self._log.warning if self._backoff.attempt == 0 else self._log.debug
                log("reconcile failed, retrying", error=self.last_error, pending=len(self._dirty))
                await self._backoff.wait()
                continue
            self._backoff.reset()
            if not self._dirty:
                self._wakeup.clear()
                self._idle.set()
            else:
                await asyncio.sleep(0)  # let producers in between large batches

    def _apply_pending(self) -> None:
        applied, desired = self._applied, self._desired
        assert applied is not None
        keys = list(islice(self._dirty, self._batch_size))
        updates: list[tuple[K, V]] = []
        deletes: list[K] = []
        for k in keys:
            v = desired.get(k, _MISSING)
            if v is not _MISSING:
                updates.append((k, v))  # type: ignore[arg-type]
            elif k in applied:
                deletes.append(k)
        if updates:
            self._target.update_many(updates)
            self.updates += len(updates)
            applied.update(updates)
        if deletes:
            self._target.delete_many(deletes)
            self.deletes += len(deletes)
            for k in deletes:
                del applied[k]
        if len(keys) == len(self._dirty):
            self._dirty.clear()
        else:
            self._dirty.difference_update(keys)


def _changed(new: Mapping[K, V], old: Mapping[K, V]) -> Iterator[K]:
    """Keys of ``new`` whose value differs from ``old`` (or that ``old`` lacks)."""
    for k, v in new.items():
        current = old.get(k, _MISSING)
        if current is _MISSING or current != v:
            yield k


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()
