"""Bounded polling for conditions that have no event to wait on (the state of another process)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def poll_until(
    check: Callable[[], bool] | Callable[[], Awaitable[bool]], *, within: float, interval: float = 0.05
) -> bool:
    """Call ``check`` every ``interval`` seconds until it returns true (then return True) or
    ``within`` seconds have passed (then return False)."""
    deadline = time.monotonic() + within
    while True:  # noqa: ASYNC110 - the condition lives in another process; there is no event
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)
