"""The Secrets and ConfigMaps this node's pods read, kept current by watches (the kubelet's
watch-based Secret/ConfigMap manager).

Each object a pod reads gets one list+watch of its own (``fieldSelector=metadata.namespace=<ns>,
metadata.name=<name>``), shared by every pod of the node that reads it and stopped when the last of
them lets go. A pod worker :meth:`~ObjectWatches.subscribe`\\ s with the objects its spec names and a
callback; the callback runs whenever one of them is created, changed or deleted, and the worker then
reads :meth:`~ObjectWatches.current` and rewrites its volumes. While the API is unreachable the last
known data stays in effect (the watches retry with backoff).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from contextlib import aclosing
from dataclasses import dataclass, field

from lab.node.podspec import object_data
from lab.node.volumes import VolumeError
from meshcore.backoff import Backoff
from meshcore.k8s.client import K8sApi
from meshcore.k8s.resource import Delete, ResourceRef, ResourceWatch, Synced, Upsert
from meshcore.log import get_logger

SECRETS = ResourceRef("", "v1", "secrets", namespaced=True)
CONFIGMAPS = ResourceRef("", "v1", "configmaps", namespaced=True)
#: ``("secret" | "configmap", namespace, name)``
ObjectKey = tuple[str, str, str]
#: ``("secret" | "configmap", name) -> data`` (None: the object does not exist), as :data:`lab.node.podspec.Refs`
RefData = dict[tuple[str, str], dict[str, bytes] | None]

_log = get_logger(__name__)


@dataclass
class _Entry:
    key: ObjectKey
    owners: dict[str, Callable[[], None]] = field(default_factory=dict)
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    data: dict[str, bytes] | None = None
    watch: ResourceWatch | None = None
    task: asyncio.Task[None] | None = None


class ObjectWatches:
    """Watches of the objects the node's pods read (see the module docstring); :meth:`run` owns them."""

    def __init__(self, api: K8sApi, *, backoff_max: float = 5.0, watch_timeout: int = 300) -> None:
        self._api = api
        self._backoff_max = backoff_max
        self._watch_timeout = watch_timeout
        self._entries: dict[ObjectKey, _Entry] = {}
        self._owned: dict[str, set[ObjectKey]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._closed = asyncio.Event()

    async def run(self) -> None:
        """Run the watches until :meth:`close` (or cancellation)."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                for entry in self._entries.values():
                    self._start(entry)
                await self._closed.wait()
                for entry in self._entries.values():
                    if entry.task is not None:
                        entry.task.cancel()
            finally:
                self._tg = None

    def close(self) -> None:
        """Stop the watches (:meth:`run` returns)."""
        self._closed.set()

    def watched(self) -> set[ObjectKey]:
        """The objects being watched."""
        return set(self._entries)

    def subscribe(self, owner: str, namespace: str, refs: Iterable[tuple[str, str]],
                  changed: Callable[[], None]) -> None:
        """``owner`` (a pod uid) reads exactly ``refs`` (``(kind, name)`` in ``namespace``): watch those
        nobody watched yet, stop those nobody reads any more; ``changed()`` whenever one changes."""
        wanted = {(kind, namespace, name) for kind, name in refs}
        for key in self._owned.get(owner, set()) - wanted:
            self._let_go(key, owner)
        for key in wanted:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry(key)
                self._start(entry)
            entry.owners[owner] = changed
        self._owned[owner] = wanted

    def unsubscribe(self, owner: str) -> None:
        """``owner`` reads nothing any more."""
        for key in self._owned.pop(owner, set()):
            self._let_go(key, owner)

    def current(self, namespace: str, refs: Iterable[tuple[str, str]]) -> RefData | None:
        """The data of ``refs`` as last seen; None while one of them has not been listed yet."""
        out: RefData = {}
        for kind, name in refs:
            entry = self._entries.get((kind, namespace, name))
            if entry is None or not entry.synced.is_set():
                return None
            out[(kind, name)] = entry.data
        return out

    async def wait(self, namespace: str, refs: Iterable[tuple[str, str]], *, within: float) -> RefData:
        """The data of ``refs`` (subscribed first), once each has been listed; :class:`VolumeError`
        naming what could not be read if that takes longer than ``within`` seconds."""
        wanted = sorted(set(refs))
        entries = [self._entries[(kind, namespace, name)] for kind, name in wanted]
        try:
            async with asyncio.timeout(within):
                for entry in entries:
                    await entry.synced.wait()
        except TimeoutError:
            for entry in entries:
                if not entry.synced.is_set():
                    kind, _, name = entry.key
                    error = entry.watch.error if entry.watch is not None else ""
                    raise VolumeError(f"cannot read {kind} {name}: {error or 'no answer from the API yet'}") from None
        data = self.current(namespace, wanted)
        assert data is not None
        return data

    # ----- internals -----

    def _start(self, entry: _Entry) -> None:
        if self._tg is None or entry.task is not None:
            return  # run() starts it
        kind, namespace, name = entry.key
        try:
            entry.task = self._tg.create_task(self._follow(entry), name=f"watch-{kind}-{namespace}-{name}")
        except RuntimeError:  # the group is shutting down (the runtime stops): nothing to watch for
            pass

    def _let_go(self, key: ObjectKey, owner: str) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        entry.owners.pop(owner, None)
        if not entry.owners:
            del self._entries[key]
            if entry.task is not None:
                entry.task.cancel()

    async def _follow(self, entry: _Entry) -> None:
        kind, namespace, name = entry.key
        watch = entry.watch = ResourceWatch(
            self._api, SECRETS if kind == "secret" else CONFIGMAPS,
            field_selector=f"metadata.namespace={namespace},metadata.name={name}",
            watch_timeout=self._watch_timeout, backoff=Backoff(initial=0.2, maximum=self._backoff_max))
        async with aclosing(watch.events()) as events:
            async for event in events:
                try:
                    if isinstance(event, Synced):
                        objects = watch.objects()
                        data = object_data(kind, objects[0]) if objects else None
                    elif isinstance(event, Upsert):
                        data = object_data(kind, event.obj)
                    elif isinstance(event, Delete):
                        data = None
                    else:
                        continue
                except ValueError as err:  # data that is not base64: keep what we had
                    _log.warning(f"cannot decode {kind}", namespace=namespace, name=name, error=str(err))
                    continue
                if not watch.synced:
                    continue  # the initial list: its Synced reports the result
                first = not entry.synced.is_set()
                if first or data != entry.data:
                    entry.data = data
                    entry.synced.set()
                    if not first:
                        _log.info(f"{kind} changed", namespace=namespace, name=name,
                                  exists=data is not None, keys=sorted(data or {}))
                    for changed in list(entry.owners.values()):
                        changed()
