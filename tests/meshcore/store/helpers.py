"""Shared helpers for the store tests: recording observers and bounded waits."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from lab.wait import poll_until
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
    if not await poll_until(check, within=within):
        raise AssertionError(f"condition not met within {within}s")


async def etcd_view(kv: KVStore, prefix: str) -> dict[str, bytes]:
    """What etcd holds under ``prefix``, keyed like a watch store names entries."""
    result = await kv.list_prefix(prefix)
    return {item.key[len(prefix) :]: item.value for item in result.items}


@contextlib.asynccontextmanager
async def running(*coros: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run ``coros`` as tasks for the duration of the block, then cancel them."""
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        _, stuck = await asyncio.wait(tasks, timeout=10)
        assert not stuck, f"tasks ignored cancellation: {stuck}"
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
