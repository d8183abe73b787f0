"""Feeding the ipcache reconciler from the desired-state index: whole once, then per delta.

The map holds the remote clusters' entries (:class:`~agent.incremental.DesiredIndex`) and the
local cluster's; a remote entry wins a prefix both claim (as :func:`ipcache_desired` lets the
first entry of a prefix win). :meth:`IPCacheFeed.load` packs and sets the whole content (the
initial sync, or a retry after a failure); :meth:`IPCacheFeed.apply` re-resolves only the prefixes
a delta or a local change named, and hands the packed differences to
:meth:`~meshcore.reconcile.Reconciler.change_desired`. Packing itself is the targets' business
(:func:`~agent.datapath.targets.ipcache_desired`, :func:`bpf.layouts.pack_ipcache_key`).

``encrypt_key`` follows :attr:`IPCacheFeed.encrypt_hosts` (the WireGuard peers' node IPs; empty
without encryption): an ordinary change packs its entries against the current set (one set lookup
per entry). When the set changes (:meth:`IPCacheFeed.set_encrypt_hosts`: a peer came or went, a
rare event) only the entries hosted on the nodes that changed are re-emitted; finding them walks
the index in slices, yielding to the event loop in between (the index keeps no per-host table:
that would cost memory on every entry for an event that is rare).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Set
from functools import partial
from typing import Any

from agent.datapath.targets import ipcache_desired
from agent.desired import IPCacheEntry
from agent.incremental import DesiredIndex
from bpf.layouts import pack_ipcache_key
from meshcore.reconcile import Reconciler

__all__ = ["IPCacheFeed", "WALK_SLICE"]

WALK_SLICE = 16384
"""Index entries looked at between two yields to the event loop in :meth:`IPCacheFeed.set_encrypt_hosts`."""


class IPCacheFeed:
    """The ipcache part of the node datapath's programming (see the module docstring)."""

    def __init__(self, reconciler: Reconciler[bytes, Any], *, native: bool = False) -> None:
        self.reconciler = reconciler
        self.native = native
        self.local: dict[str, IPCacheEntry] = {}
        self.encrypt_hosts: frozenset[str] = frozenset()

    def set_local(self, entries: Iterable[IPCacheEntry]) -> set[str]:
        """Replace the local cluster's entries; the prefixes whose local entry changed."""
        old, self.local = self.local, {e.prefix: e for e in entries}
        return {p for p in old.keys() | self.local.keys() if old.get(p) != self.local.get(p)}

    async def load(self, index: DesiredIndex) -> None:
        """Set the whole map content (packing in a thread: it is hundreds of thousands of entries)."""
        entries = list(index.ipcache_entries())
        entries += [e for p, e in self.local.items() if index.ipcache_entry(p) is None]
        pack = partial(ipcache_desired, native=self.native, encrypt_hosts=self.encrypt_hosts)
        packed = await asyncio.to_thread(pack, entries)
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
                updates.update(ipcache_desired([entry], native=self.native, encrypt_hosts=self.encrypt_hosts))
        self.reconciler.change_desired(updates, deletes)
        return len(updates) + len(deletes)

    async def set_encrypt_hosts(self, index: DesiredIndex, hosts: Set[str]) -> int:
        """Make ``hosts`` the encrypted node IPs and re-emit the entries whose tunnel endpoint
        gained or lost encryption; returns how many. Changes of the index while this yields are
        safe: each entry is read when reached, and later deltas pack against the new set."""
        new = frozenset(hosts)
        changed = self.encrypt_hosts ^ new
        self.encrypt_hosts = new
        if not changed:
            return 0
        pack = partial(ipcache_desired, native=self.native, encrypt_hosts=new)
        updates: dict[bytes, Any] = {}
        for n, entry in enumerate(index.ipcache_entries(), 1):
            if entry.tunnel_endpoint in changed:
                updates.update(pack([entry]))
            if n % WALK_SLICE == 0:
                await asyncio.sleep(0)
        for prefix, entry in self.local.items():
            if entry.tunnel_endpoint in changed and index.ipcache_entry(prefix) is None:
                updates.update(pack([entry]))
        self.reconciler.change_desired(updates)
        return len(updates)
