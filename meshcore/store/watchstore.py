"""The reader side: an exact, validated copy of one etcd prefix, pushed to an observer.

Modelled on Cilium's restartable ``WatchStore``: every snapshot (the first, and each re-list after
the history was lost) marks all known entries stale, refreshes the ones that come back, and then
emits deletes only for those that did not. Keys whose value did not change produce no event, so
an observer programming a datapath sees no churn from reconnects.

Per key the store keeps a 64-bit hash of the raw value (it only has to tell "unchanged" on a
re-list; at 250k remote entries the raw bytes would cost more than the records) and, unless
``keep_values=False`` (an observer that keeps its own copy), the decoded value. With
``keep_digests=False`` it keeps only the key: an unchanged value is then decoded again and
handed to the observer, which must itself ignore a value equal to the one it has (the agent's
caches compare their compact records; 10 MB less at 300k keys).

Values are decoded by a caller-supplied function; a value that fails to decode is skipped, counted
and logged once per key, and never reaches the observer (a bad remote must not crash the reader).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from meshcore.backoff import Backoff
from meshcore.errors import WireError
from meshcore.kvstore.types import KVStore
from meshcore.log import get_logger
from meshcore.store.listwatch import (
    Connection,
    Delete,
    ListDone,
    ListItems,
    ListStart,
    ListWatchEvent,
    Upsert,
    list_and_watch,
)

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)

# Decodes the value of key ``name`` (the key with the store's prefix removed); raises WireError.
Decoder = Callable[[str, bytes], T]


class Observer(Protocol[T_contra]):
    """Receives the entries of a watch store. Calls are synchronous and must not block."""

    def on_upsert(self, name: str, value: T_contra) -> None: ...

    def on_delete(self, name: str) -> None: ...


@dataclass(frozen=True, slots=True)
class WatchStoreStatus:
    """What a watch store knows about itself, for status output."""

    prefix: str
    entries: int
    synced: bool
    connected: bool
    invalid: int
    last_error: str


_ABSENT = object()


class WatchStore(Generic[T]):
    """Keeps ``observer`` equal to the valid entries under ``prefix``.

    Run :meth:`run` in a task group. :attr:`synced` is set after the first complete snapshot.
    """

    def __init__(
        self,
        kv: KVStore | None,
        prefix: str,
        decode: Decoder[T],
        observer: Observer[T],
        *,
        backoff: Backoff | None = None,
        keep_values: bool = True,
        keep_digests: bool = True,
        list_slots: asyncio.Semaphore | None = None,
    ) -> None:
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self._kv = kv
        self._decode = decode
        self._observer = observer
        self._backoff = backoff
        self._list_slots = list_slots
        self._keep_digests = keep_digests
        self._digests: dict[str, int | None] = {}  # None: known, value not hashed (keep_digests=False)
        self._values: dict[str, T] | None = {} if keep_values else None
        self._stale: set[str] = set()  # during a snapshot: known keys not seen again yet
        self._reported_invalid: set[str] = set()
        self._sync_callbacks: list[Callable[[], None]] = []
        self.synced = asyncio.Event()
        self.connected = False
        self.invalid_total = 0
        self.last_error = ""
        self._log = get_logger(__name__, prefix=self.prefix)

    def on_synced(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, after the first complete snapshot (at once if already synced)."""
        if self.synced.is_set():
            callback()
        else:
            self._sync_callbacks.append(callback)

    def __len__(self) -> int:
        return len(self._digests)

    def names(self) -> list[str]:
        return list(self._digests)

    def get(self, name: str) -> T | None:
        """The decoded value of ``name`` (always None with ``keep_values=False``)."""
        return self._values.get(name) if self._values is not None else None

    def status(self) -> WatchStoreStatus:
        return WatchStoreStatus(
            prefix=self.prefix,
            entries=len(self._digests),
            synced=self.synced.is_set(),
            connected=self.connected,
            invalid=self.invalid_total,
            last_error=self.last_error,
        )

    async def run(self, kv: KVStore | None = None) -> None:
        """List and watch until cancelled. Entries are kept on cancellation (see :meth:`drain`).

        ``kv`` replaces the connection given at construction: a store run again on a new
        connection (after a reconnect) starts with a snapshot and sweeps what did not come back.
        """
        if kv is not None:
            self._kv = kv
        if self._kv is None:
            raise ValueError(f"WatchStore {self.prefix}: no kvstore to watch")
        events = list_and_watch(
            self._kv, self.prefix, backoff=self._backoff, list_slots=self._list_slots, batched=True
        )
        async with aclosing(events):
            async for event in events:
                self._handle(event)

    def _handle(self, event: ListWatchEvent) -> None:
        if isinstance(event, Upsert):
            self._upsert(event.key, event.value)
        elif isinstance(event, ListItems):
            upsert = self._upsert
            for item in event.items:
                upsert(item.key, item.value)
        elif isinstance(event, Delete):
            self._delete(event.key[len(self.prefix) :])
        elif isinstance(event, ListStart):
            self.connected = True
            self._stale = set(self._digests)
        elif isinstance(event, ListDone):
            self._sweep()
        elif isinstance(event, Connection):
            self.connected = event.connected
            if not event.connected:
                self.last_error = event.reason

    def drain(self) -> None:
        """Delete every entry (the remote cluster was removed, not merely disconnected)."""
        for name in list(self._digests):
            self._delete(name)

    def _upsert(self, key: str, raw: bytes) -> None:
        name = key[len(self.prefix) :]
        known = self._digests.get(name)
        digest = hash(raw) if self._keep_digests else None
        if self._stale:
            self._stale.discard(name)
        if known is not None and known == digest:
            return
        try:
            value = self._decode(name, raw)
        except WireError as err:
            self.invalid_total += 1
            self.last_error = str(err.with_key(key))
            if key not in self._reported_invalid:
                self._reported_invalid.add(key)
                self._log.warning("skipping invalid kvstore entry", key=key, error=err.reason)
            # Like Cilium, keep the last valid value: the entry is still owned by the remote.
            return
        self._reported_invalid.discard(key)
        self._digests[name] = digest
        if self._values is not None:
            self._values[name] = value
        self._observer.on_upsert(name, value)

    def _delete(self, name: str) -> None:
        self._reported_invalid.discard(self.prefix + name)
        if self._digests.pop(name, _ABSENT) is not _ABSENT:
            if self._values is not None:
                self._values.pop(name, None)
            self._stale.discard(name)
            self._observer.on_delete(name)

    def _sweep(self) -> None:
        stale, self._stale = self._stale, set()
        for name in stale:
            self._delete(name)
        if not self.synced.is_set():
            self.synced.set()
            callbacks, self._sync_callbacks = self._sync_callbacks, []
            for callback in callbacks:
                callback()
