"""A generic reconciler: keep a target (a BPF map, routes, WireGuard peers) equal to a desired
state, in the manner of Cilium's StateDB reconcilers.

Business logic produces a complete desired mapping (pure), or a change to it; the reconciler turns
the difference against what the target holds into batched ``update_many`` (or ``update_columns``)
/ ``delete_many`` calls. On its first run it reads the target's current content instead of
assuming it empty, so a restarted agent facing pinned maps writes only what changed and deletes
only what is no longer wanted: mark and sweep, never a flush. Failures are retried with backoff;
the target is never left half-known (a failed batch keeps its keys pending).
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from itertools import islice
from types import MappingProxyType
from typing import Generic, Protocol, TypeVar, runtime_checkable

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


@runtime_checkable
class ColumnTarget(Target[K, V], Protocol):
    """A target that also takes its updates as two parallel lists (no tuple per element): the
    reconciler then calls :meth:`update_columns` instead of ``update_many``."""

    def update_columns(self, keys: list[K], values: list[V]) -> None:
        """Write ``keys[i] -> values[i]`` for every i, in the order given."""
        ...


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
    """Applies :meth:`set_desired` (or :meth:`change_desired`) to ``target`` from :meth:`run`
    (run it in a task group).

    Pending work is kept as ordered ``key -> value`` writes and key deletes, written in the order
    of the desired mapping: for a BPF LPM trie an insert in key order runs about twice as fast as
    one in hash order. A :class:`ColumnTarget` gets each batch as two lists (no tuple per entry).
    """

    def __init__(self, name: str, target: Target[K, V], *, batch_size: int = 4096, backoff: Backoff | None = None):
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.name = name
        self._target = target
        self._columns = target if isinstance(target, ColumnTarget) else None
        self._batch_size = batch_size
        self._backoff = backoff or Backoff(initial=0.05, maximum=5.0)
        self._desired: dict[K, V] = {}
        self._applied: dict[K, V] | None = None  # None until the target was read
        # Once the target was read: to_write[k] == desired[k] != applied.get(k) (or not yet known
        # equal), and to_delete holds keys gone from desired (written off only if applied has them).
        self._to_write: dict[K, V] = {}
        self._to_delete: dict[K, None] = {}
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self.updates = 0
        self.deletes = 0
        self.failures = 0
        self.last_error = ""
        self._log = get_logger(__name__, reconciler=name)

    @property
    def desired(self) -> Mapping[K, V]:
        """The desired state as last set (read only: change it with the methods below)."""
        return MappingProxyType(self._desired)

    def set_desired(self, desired: Mapping[K, V]) -> None:
        """Replace the whole desired state; only the difference will be written."""
        old = self._desired
        new = dict(desired)
        if self._applied is not None:
            self._mark(_changed(new, old), [k for k in old if k not in new])
        self._desired = new
        self._poke()

    def change_desired(self, updates: Mapping[K, V] | None = None, deletes: Iterable[K] = ()) -> None:
        """Change part of the desired state: remove ``deletes`` (absent keys are ignored), then set
        ``updates``. Costs in proportion to the change, not to the whole state."""
        desired = self._desired
        removed = [k for k in deletes if desired.pop(k, _MISSING) is not _MISSING]
        changed = _changed(updates, desired) if updates else {}
        desired.update(changed)
        if self._applied is None:
            self._poke()  # the first run reads the target and compares everything
        elif removed or changed:
            self._mark(changed, removed)
            self._poke()

    def _poke(self) -> None:
        self._idle.clear()
        self._wakeup.set()

    def _mark(self, changed: dict[K, V], removed: list[K]) -> None:
        """Record desired-state changes as pending work (``removed`` first, then ``changed``)."""
        to_write, to_delete = self._to_write, self._to_delete
        for k in removed:
            to_write.pop(k, None)
            to_delete[k] = None
        if to_delete:
            for k in changed:
                to_delete.pop(k, None)
        to_write.update(changed)

    @property
    def synced(self) -> bool:
        """The target equals the desired state as last set."""
        return self._applied is not None and not self._to_write and not self._to_delete

    def status(self) -> ReconcilerStatus:
        return ReconcilerStatus(
            name=self.name,
            desired=len(self._desired),
            pending=len(self._to_write) + len(self._to_delete),
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
                    applied = dict(self._target.items())
                    self._to_write, self._to_delete = {}, {}
                    self._applied = applied
                    self._mark(_changed(self._desired, applied), [k for k in applied if k not in self._desired])
                    self._log.info("target read", entries=len(applied), to_change=self.status().pending)
                self._apply_pending()
            except Exception as err:  # a target error of any kind: keep state, retry
                self.failures += 1
                self.last_error = f"{type(err).__name__}: {err}"
                log = self._log.warning if self._backoff.attempt == 0 else self._log.debug
                log("reconcile failed, retrying", error=self.last_error, pending=self.status().pending)
                await self._backoff.wait()
                continue
            self._backoff.reset()
            if self.synced:
                self._wakeup.clear()
                self._idle.set()
            else:
                await asyncio.sleep(0)  # let producers in between large batches

    def _apply_pending(self) -> None:
        """One batch of writes and one of deletes; a failed call leaves its keys pending."""
        applied, to_write, to_delete, n = self._applied, self._to_write, self._to_delete, self._batch_size
        assert applied is not None
        if to_write:
            whole = len(to_write) <= n
            keys = list(to_write) if whole else list(islice(to_write, n))
            values = list(to_write.values()) if whole else list(islice(to_write.values(), n))
            if self._columns is not None:
                self._columns.update_columns(keys, values)
            else:
                self._target.update_many(list(zip(keys, values, strict=True)))
            self.updates += len(keys)
            if whole:
                applied.update(to_write)
                to_write.clear()
            else:
                applied.update(zip(keys, values, strict=True))
                for k in keys:
                    del to_write[k]
        if to_delete:
            keys = list(to_delete) if len(to_delete) <= n else list(islice(to_delete, n))
            gone = [k for k in keys if k in applied]
            if gone:
                self._target.delete_many(gone)
                self.deletes += len(gone)
                for k in gone:
                    del applied[k]
            if len(keys) == len(to_delete):
                to_delete.clear()
            else:
                for k in keys:
                    del to_delete[k]


def _changed(new: Mapping[K, V], old: Mapping[K, V]) -> dict[K, V]:
    """The items of ``new`` whose value differs from ``old``'s (or that ``old`` lacks), in order."""
    if not old:
        return dict(new)
    get = old.get
    return {k: v for k, v in new.items() if (c := get(k, _MISSING)) is _MISSING or c != v}


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()
