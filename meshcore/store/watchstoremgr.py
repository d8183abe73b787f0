"""Start watch stores only once the writer says their prefix is complete.

Cilium's ``WatchStoreManager``: the writer of a prefix puts a *synced canary* under
``cilium/synced/<cluster>/<prefix>`` after its initial full write. A reader that started watching
earlier would take a half-filled (for example freshly restarted, ephemeral) etcd for the whole
truth and delete entries wrongly. So with ``syncedCanaries`` in the remote cluster config, each
store starts when its canary appears; without it, every store starts at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from contextlib import aclosing
from typing import Any

from meshcore.backoff import Backoff
from meshcore.kvstore.types import KVStore
from meshcore.log import get_logger
from meshcore.store.listwatch import Upsert, list_and_watch

StartFunc = Callable[[], Coroutine[Any, Any, None]]


class WatchStoreManager:
    """Runs registered functions, each once its canary exists (or at once when not gated).

    ``synced_prefix`` is ``cilium/synced/<cluster>/``; a function registered for ``prefix`` starts
    when the key ``synced_prefix + prefix`` appears. Register everything before :meth:`run`.
    """

    def __init__(
        self, kv: KVStore | None, synced_prefix: str, *, gated: bool = True, backoff: Backoff | None = None
    ) -> None:
        if gated and kv is None:
            raise ValueError("a canary-gated WatchStoreManager needs a kvstore to watch canaries in")
        self._kv = kv
        self._synced_prefix = synced_prefix if synced_prefix.endswith("/") else synced_prefix + "/"
        self._gated = gated
        self._backoff = backoff
        self._pending: dict[str, StartFunc] = {}
        self._running = False
        self._log = get_logger(__name__, synced_prefix=self._synced_prefix)

    def register(self, prefix: str, start: StartFunc) -> None:
        """Run ``start`` once the canary for ``prefix`` exists. ``start`` runs until cancelled."""
        if self._running:
            raise RuntimeError("WatchStoreManager.register called after run")
        self._pending[prefix] = start

    async def run(self) -> None:
        """Start the registered functions as their canaries appear; runs until cancelled."""
        self._running = True
        async with asyncio.TaskGroup() as tasks:
            if not self._gated:
                for prefix, start in self._pending.items():
                    tasks.create_task(start(), name=f"watch {prefix}")
                self._pending.clear()
                return
            assert self._kv is not None
            events = list_and_watch(self._kv, self._synced_prefix, backoff=self._backoff)
            async with aclosing(events):
                async for event in events:
                    if not isinstance(event, Upsert):
                        continue
                    prefix = event.key[len(self._synced_prefix) :]
                    if prefix in self._pending:
                        start = self._pending.pop(prefix)
                        self._log.debug("canary found, starting watcher", prefix=prefix)
                        tasks.create_task(start(), name=f"watch {prefix}")
                    if not self._pending:
                        break
