"""Shared helpers for the store tests: recording observers and bounded waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from meshcore.kvstore.types import KVStore


class RecordingObserver:
    """An observer that keeps the current view and every event it received."""

    def __init__(self) -> None:
        self.view: dict[str, bytes] = {}
        self.events: list[tuple[str, str]] = []

    def on_upsert(self, name: str, value: bytes) -> None:
        self.view[name] = value
        self.events.append(("upsert", name))

    def on_delete(self, name: str) -> None:
        assert name in self.view, f"delete for unknown entry {name}"
        del self.view[name]
        self.events.append(("delete", name))


def raw(name: str, value: bytes) -> bytes:
    return value


async def eventually(check: Callable[[], Awaitable[bool]] | Callable[[], bool], *, within: float = 20.0) -> None:
    """Poll ``check`` until it is true; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.05)


async def etcd_view(kv: KVStore, prefix: str) -> dict[str, bytes]:
    """What etcd holds under ``prefix``, keyed like a watch store names entries."""
    result = await kv.list_prefix(prefix)
    return {item.key[len(prefix) :]: item.value for item in result.items}
