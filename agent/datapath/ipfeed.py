"""Feeding the ipcache reconciler from the desired-state index: whole once, then per delta.

The map holds the remote clusters' entries (:class:`~agent.incremental.DesiredIndex`) and the
local cluster's; a remote entry wins a prefix both claim (as :func:`ipcache_desired` lets the
first entry of a prefix win). :meth:`IPCacheFeed.load` packs and sets the whole content (the
initial sync, or a retry after a failure); :meth:`IPCacheFeed.apply` re-resolves only the prefixes
a delta or a local change named, and hands the packed differences to
:meth:`~meshcore.reconcile.Reconciler.change_desired`. Packing itself is the targets' business
(:func:`~agent.datapath.targets.ipcache_desired`, :func:`bpf.layouts.pack_ipcache_key`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any

from agent.datapath.targets import ipcache_desired
from agent.desired import IPCacheEntry
from agent.incremental import DesiredIndex
from bpf.layouts import pack_ipcache_key
from meshcore.reconcile import Reconciler

__all__ = ["IPCacheFeed"]


class IPCacheFeed:
    """The ipcache part of the node datapath's programming (see the module docstring)."""

    def __init__(self, reconciler: Reconciler[bytes, Any], *, native: bool = False) -> None:
        self.reconciler = reconciler
        self.native = native
        self.local: dict[str, IPCacheEntry] = {}

    def set_local(self, entries: Iterable[IPCacheEntry]) -> set[str]:
        """Replace the local cluster's entries; the prefixes whose local entry changed."""
        old, self.local = self.local, {e.prefix: e for e in entries}
        return {p for p in old.keys() | self.local.keys() if old.get(p) != self.local.get(p)}

    async def load(self, index: DesiredIndex) -> None:
        """Set the whole map content (packing in a thread: it is hundreds of thousands of entries)."""
        entries = list(index.ipcache_entries())
        entries += [e for p, e in self.local.items() if index.ipcache_entry(p) is None]
        packed = await asyncio.to_thread(partial(ipcache_desired, native=self.native), entries)
        self.reconciler.set_desired(packed)

    def apply(
        self, index: DesiredIndex, remote: Mapping[str, IPCacheEntry | None], local_changed: Iterable[str] = ()
    ) -> int:
        """Re-resolve the prefixes of ``remote`` (a delta's ipcache part) and ``local_changed``;
        returns how many map entries were handed to the reconciler."""
        updates: dict[bytes, Any] = {}
        deletes: list[bytes] = []
        for prefix in remote.keys() | set(local_changed):
            entry = remote[prefix] if prefix in remote else index.ipcache_entry(prefix)
            if entry is None:
                entry = self.local.get(prefix)
            if entry is None:
                deletes.append(pack_ipcache_key(prefix))
            else:
                updates.update(ipcache_desired([entry], native=self.native))
        self.reconciler.change_desired(updates, deletes)
        return len(updates) + len(deletes)
