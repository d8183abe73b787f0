"""Which Kubernetes object owns a kvstore key when several claim it (Cilium's
``CachedConverter`` and ``entryGroup`` in ``clustermesh-apiserver/clustermesh/converters.go``).

The first object to claim a key is its *primary* owner and its entry is written; later claimants
queue in arrival order. When the primary stops claiming the key (update without it, or delete)
the oldest queued claimant is promoted and its latest entry written; the key is deleted only
when nobody claims it. An update from a queued claimant only refreshes its queued entry.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from meshcore.wire.ipidentity import IPIdentityPair

__all__ = ["Changes", "OwnershipTracker", "ipcache_key_name", "ipcache_tracker"]

E = TypeVar("E")
Owner = TypeVar("Owner", bound=Hashable)


@dataclass(frozen=True)
class Changes(Generic[E]):
    """What the sync store must apply: entries to upsert (in order), key names to delete."""

    upserts: tuple[E, ...] = ()
    deletes: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.upserts or self.deletes)


@dataclass
class _Group(Generic[Owner, E]):
    primary: Owner
    pending: list[tuple[Owner, E]] = field(default_factory=list)

    def claim(self, owner: Owner, entry: E) -> bool:
        """Go's ``entryGroup.upsert``: True when ``owner`` is (now) the primary."""
        if owner == self.primary:
            return True
        for i, (queued, _) in enumerate(self.pending):
            if queued == owner:
                self.pending[i] = (owner, entry)
                return False
        self.pending.append((owner, entry))
        return False

    def release(self, owner: Owner) -> tuple[bool, E | None]:
        """Go's ``entryGroup.release``: ``(still_owned, promoted_entry)``."""
        if owner == self.primary:
            if self.pending:
                self.primary, entry = self.pending.pop(0)
                return True, entry
            return False, None
        self.pending = [(o, e) for o, e in self.pending if o != owner]
        return True, None


class OwnershipTracker(Generic[Owner, E]):
    """Pure, stateful mirror of Cilium's ``CachedConverter``: feed it every object upsert and
    delete (with the object's entries) and apply the returned :class:`Changes` to the store.

    ``key_name`` maps an entry to its key name (the suffix under the store prefix). Owners are
    any hashable object identity, e.g. ``(namespace, name)``.
    """

    def __init__(self, key_name: Callable[[E], str]) -> None:
        self._key_name = key_name
        self._keys_by_owner: dict[Owner, set[str]] = {}
        self._groups: dict[str, _Group[Owner, E]] = {}

    def upsert(self, owner: Owner, entries: Iterable[E]) -> Changes[E]:
        """``owner`` now claims exactly ``entries`` (a Kubernetes upsert event)."""
        stale = set(self._keys_by_owner.get(owner, ()))
        current: set[str] = set()
        upserts: list[E] = []
        for entry in entries:
            key = self._key_name(entry)
            current.add(key)
            group = self._groups.get(key)
            if group is None:
                self._groups[key] = _Group(owner)
                upserts.append(entry)
            elif group.claim(owner, entry):
                upserts.append(entry)
            stale.discard(key)
        if current:
            self._keys_by_owner[owner] = current
        else:
            self._keys_by_owner.pop(owner, None)
        return self._release(owner, stale, upserts)

    def delete(self, owner: Owner) -> Changes[E]:
        """``owner`` claims nothing any more (a Kubernetes delete event)."""
        stale = self._keys_by_owner.pop(owner, set())
        return self._release(owner, stale, [])

    def _release(self, owner: Owner, stale: set[str], upserts: list[E]) -> Changes[E]:
        deletes: list[str] = []
        for key in sorted(stale):
            group = self._groups[key]
            owned, promoted = group.release(owner)
            if promoted is not None:
                upserts.append(promoted)
            if not owned:
                del self._groups[key]
                deletes.append(key)
        return Changes(tuple(upserts), tuple(deletes))

    def primary(self, key: str) -> Owner | None:
        """The owner whose entry is written under ``key``, if any."""
        group = self._groups.get(key)
        return None if group is None else group.primary

    def queued(self, key: str) -> list[Owner]:
        """The owners waiting for ``key``, oldest first."""
        group = self._groups.get(key)
        return [] if group is None else [o for o, _ in group.pending]

    def keys(self, owner: Owner) -> frozenset[str]:
        """The keys ``owner`` currently claims."""
        return frozenset(self._keys_by_owner.get(owner, ()))

    def __len__(self) -> int:
        return len(self._groups)


def ipcache_key_name(pair: IPIdentityPair) -> str:
    """Key name of an ipcache entry under ``cilium/state/ip/v1/default/``."""
    return pair.prefix_string()


def ipcache_tracker() -> OwnershipTracker[tuple[str, str], IPIdentityPair]:
    """A tracker for ipcache entries owned by CiliumEndpoints / CiliumEndpointSlices."""
    return OwnershipTracker(ipcache_key_name)
