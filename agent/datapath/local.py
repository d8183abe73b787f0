"""The local cluster's state as the node datapath needs it, followed by watches on the local etcd.

:class:`LocalWatch` runs one :class:`~meshcore.store.watchstore.WatchStore` per prefix (ipcache
entries, identities, the cluster's services and, in native routing mode, its nodes): list, then
watch, resuming after disconnects and re-listing with mark-and-sweep when the history is gone.
Every change wakes :meth:`LocalWatch.next_state`, which returns the whole (small: one cluster's)
:class:`LocalState` once every store has had its first snapshot. A local pod or service change
therefore reaches the datapath as soon as etcd sends the event, not at the next poll.

Values that do not decode are skipped (and logged once per key) by the watch store, as the poll
this replaces skipped them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from meshcore.errors import WireError
from meshcore.kvstore.types import KVStore
from meshcore.store.watchstore import WatchStore
from meshcore.wire import ClusterService, IPIdentityPair, LabelSet
from meshcore.wire import Node as WireNode
from meshcore.wire import keys as wirekeys

__all__ = ["LocalState", "LocalWatch"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class LocalState:
    """What the local cluster's etcd says: its ipcache entries, identities, services and nodes."""

    pairs: tuple[IPIdentityPair, ...] = ()
    identities: Mapping[int, LabelSet] = field(default_factory=dict)
    services: tuple[ClusterService, ...] = ()
    nodes: tuple[WireNode, ...] = ()


class _Table:
    """A watch-store observer keeping values by name and waking the watch on every change."""

    def __init__(self, changed: Callable[[], None]) -> None:
        self.values: dict[str, Any] = {}
        self._changed = changed

    def on_upsert(self, name: str, value: Any) -> None:
        self.values[name] = value
        self._changed()

    def on_delete(self, name: str) -> None:
        self.values.pop(name, None)
        self._changed()


def _decoder(decode: Callable[..., _T]) -> Callable[[str, bytes], _T]:
    def checked(name: str, raw: bytes) -> _T:
        try:
            return decode(raw, key=name)
        except WireError:
            raise
        except Exception as exc:  # local data must not crash the agent either
            raise WireError(f"{type(exc).__name__}: {exc}") from exc

    return checked


def _identity(name: str, raw: bytes) -> LabelSet:
    if not name.isdigit():
        raise WireError(f"identity key suffix {name!r} is not a number", field="ID")
    return LabelSet.decode(raw, key=name)


class LocalWatch:
    """Watches of the local cluster's etcd (see the module docstring). Run :meth:`run` in a task
    group and read states with :meth:`next_state`."""

    def __init__(self, kv: KVStore, cluster: str, *, nodes: bool = False) -> None:
        self._changed = asyncio.Event()
        self._tables: dict[str, _Table] = {}
        self._stores: list[WatchStore[Any]] = []
        specs: list[tuple[str, str, Callable[[str, bytes], Any]]] = [
            ("pairs", wirekeys.IP_DEFAULT + "/", _decoder(IPIdentityPair.decode)),
            ("identities", wirekeys.IDENTITIES_ID + "/", _identity),
            ("services", wirekeys.watch_prefix("service", cluster), _decoder(ClusterService.decode)),
        ]
        if nodes:
            specs.append(("nodes", wirekeys.watch_prefix("node", cluster), _decoder(WireNode.decode)))
        for kind, prefix, decode in specs:
            table = self._tables[kind] = _Table(self._changed.set)
            store: WatchStore[Any] = WatchStore(kv, prefix, decode, table, keep_values=False)
            store.on_synced(self._changed.set)
            self._stores.append(store)

    async def run(self) -> None:
        """Watch every prefix until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            for store in self._stores:
                tasks.create_task(store.run(), name=f"local watch {store.prefix}")

    def synced(self) -> bool:
        return all(store.synced.is_set() for store in self._stores)

    def last_error(self) -> str:
        return next((s.last_error for s in self._stores if s.last_error), "")

    def state(self) -> LocalState:
        tables = self._tables
        nodes = tables.get("nodes")
        return LocalState(
            pairs=tuple(tables["pairs"].values[k] for k in sorted(tables["pairs"].values)),
            identities={int(k): v for k, v in sorted(tables["identities"].values.items())},
            services=tuple(tables["services"].values[k] for k in sorted(tables["services"].values)),
            nodes=tuple(nodes.values[k] for k in sorted(nodes.values)) if nodes is not None else (),
        )

    async def next_state(self) -> LocalState:
        """Wait for a change (for the first complete snapshot, the first time); the state then.

        Changes that arrive together (one watch response, a re-list) come out as one state."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            await asyncio.sleep(0)  # let the rest of a burst of events in
            if self.synced():
                return self.state()
