"""The reconcile engine against an in-memory target (pure logic; the BPF-map target has its own
tests on real maps): restart without flushing, minimal writes, retries."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.backoff import Backoff
from meshcore.reconcile import Reconciler
from tests.meshcore.store.helpers import running


class MemoryTarget:
    def __init__(self, content: dict[str, int] | None = None, *, fail: int = 0) -> None:
        self.content = dict(content or {})
        self.writes: list[tuple[str, object]] = []
        self.fail = fail

    def items(self) -> Iterable[tuple[str, int]]:
        return list(self.content.items())

    def _maybe_fail(self) -> None:
        if self.fail:
            self.fail -= 1
            raise OSError("EAGAIN: injected")

    def update_many(self, items: list[tuple[str, int]]) -> None:
        self._maybe_fail()
        for k, v in items:
            self.content[k] = v
            self.writes.append(("update", k))

    def delete_many(self, keys: list[str]) -> None:
        self._maybe_fail()
        for k in keys:
            del self.content[k]
            self.writes.append(("delete", k))


async def test_restart_against_a_populated_target_writes_only_the_difference() -> None:
    target = MemoryTarget({"a": 1, "b": 2, "stale": 9})
    rec: Reconciler[str, int] = Reconciler("t", target, batch_size=2)
    async with running(rec.run()):
        rec.set_desired({"a": 1, "b": 3, "c": 4})
        await asyncio.wait_for(rec.wait_synced(), 5)
    assert target.content == {"a": 1, "b": 3, "c": 4}
    assert sorted(target.writes) == [("delete", "stale"), ("update", "b"), ("update", "c")]  # "a" untouched
    assert rec.synced


async def test_failures_are_retried_and_nothing_is_lost() -> None:
    target = MemoryTarget(fail=3)
    rec: Reconciler[str, int] = Reconciler("t", target, backoff=Backoff(initial=0.01, maximum=0.02))
    async with running(rec.run()):
        rec.set_desired({f"k{i}": i for i in range(10)})
        await asyncio.wait_for(rec.wait_synced(), 5)
        rec.set_desired({"k0": 0})
        await asyncio.wait_for(rec.wait_synced(), 5)
    assert target.content == {"k0": 0}
    assert rec.status().failures == 3 and "injected" in rec.status().last_error


@settings(max_examples=60, deadline=None)
@given(
    start=st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 3)),
    steps=st.lists(st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 3)), min_size=1, max_size=4),
)
def test_target_always_converges_to_the_last_desired_state(start: dict[str, int], steps: list[dict[str, int]]) -> None:
    async def scenario() -> None:
        target = MemoryTarget(start)
        rec: Reconciler[str, int] = Reconciler("t", target, batch_size=3)
        async with running(rec.run()):
            for desired in steps:
                rec.set_desired(desired)
                await asyncio.sleep(0)
            await asyncio.wait_for(rec.wait_synced(), 5)
        assert target.content == steps[-1]
        unchanged = {k for k, v in steps[-1].items() if start.get(k) == v and all(s.get(k) == v for s in steps)}
        assert not unchanged & {k for _, k in target.writes}, "entries equal all along were never written"

    asyncio.run(scenario())
