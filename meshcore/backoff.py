"""Exponential backoff with jitter for reconnect and retry loops."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays that double from ``initial`` up to ``maximum`` seconds, with +-``jitter`` spread.

    ``reset()`` after a success so the next failure starts small again.
    """

    initial: float = 0.1
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2
    attempt: int = field(default=0, init=False)

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        base = min(self.maximum, self.initial * (self.factor**self.attempt))
        self.attempt = min(self.attempt + 1, 64)
        spread = base * self.jitter
        return max(0.0, base + random.uniform(-spread, spread))

    async def wait(self) -> None:
        """Sleep for :meth:`next_delay` seconds."""
        await asyncio.sleep(self.next_delay())

    def reset(self) -> None:
        self.attempt = 0
