"""The reconcile engine against an in-memory target (pure logic; the BPF-map target has its own
tests on real maps): restart without flushing, minimal writes, retries."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.backoff import Backoff
from meshcore.reconcile import ColumnTarget, Reconciler
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


class ColumnMemoryTarget(MemoryTarget):
    """A :class:`~meshcore.reconcile.ColumnTarget`: updates arrive as two lists, never as tuples."""

    def __init__(self, content: dict[str, int] | None = None, *, fail: int = 0) -> None:
        super().__init__(content, fail=fail)
        self.column_calls: list[int] = []

    def update_many(self, items: list[tuple[str, int]]) -> None:
        raise AssertionError("a column target must get update_columns")

    def update_columns(self, keys: list[str], values: list[int]) -> None:
        assert len(keys) == len(values)
        self.column_calls.append(len(keys))
        super().update_many(list(zip(keys, values, strict=True)))


async def test_column_target_gets_batches_in_desired_order() -> None:
    target = ColumnMemoryTarget({"k3": 3, "stale": 1})
    assert isinstance(target, ColumnTarget) and not isinstance(MemoryTarget(), ColumnTarget)
    rec: Reconciler[str, int] = Reconciler("t", target, batch_size=4)
    desired = {f"k{i}": i for i in reversed(range(10))}
    async with running(rec.run()):
        rec.set_desired(desired)
        await asyncio.wait_for(rec.wait_synced(), 5)
    assert target.content == desired
    assert target.column_calls == [4, 4, 1]  # k3 was already right
    assert [k for op, k in target.writes if op == "update"] == [k for k in desired if k != "k3"]
    assert [w for w in target.writes if w[0] == "delete"] == [("delete", "stale")]
    assert rec.status().updates == 9 and rec.status().deletes == 1


async def test_change_desired_applies_a_delta_and_survives_failures() -> None:
    target = ColumnMemoryTarget({"a": 1, "b": 2}, fail=1)
    rec: Reconciler[str, int] = Reconciler("t", target, backoff=Backoff(initial=0.01, maximum=0.02))
    rec.change_desired({"a": 1, "b": 2, "c": 3})  # before the first read: compared with the target then
    async with running(rec.run()):
        await asyncio.wait_for(rec.wait_synced(), 5)
        assert target.content == {"a": 1, "b": 2, "c": 3} and target.writes == [("update", "c")]
        target.writes.clear()
        rec.change_desired({"b": 5, "a": 1}, deletes=["c", "absent"])
        await asyncio.wait_for(rec.wait_synced(), 5)
        assert target.writes == [("update", "b"), ("delete", "c")]
        rec.change_desired({"c": 7}, deletes=["c", "a"])  # deletes first, then updates
        await asyncio.wait_for(rec.wait_synced(), 5)
    assert target.content == {"b": 5, "c": 7}
    assert rec.status().failures == 1 and rec.status().desired == 2 and rec.synced


_OPS = st.one_of(
    st.tuples(st.just("set"), st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 3))),
    st.tuples(
        st.just("change"),
        st.tuples(
            st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 3)),
            st.lists(st.sampled_from("abcdefgh"), max_size=4),
        ),
    ),
)


@settings(max_examples=80, deadline=None)
@given(
    start=st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 3)),
    ops=st.lists(_OPS, min_size=1, max_size=6),
    columns=st.booleans(),
    fail=st.integers(0, 2),
)
def test_deltas_and_full_states_converge_to_the_model(
    start: dict[str, int], ops: list[tuple[str, object]], columns: bool, fail: int
) -> None:
    model: dict[str, int] = {}

    async def scenario() -> None:
        target = (ColumnMemoryTarget if columns else MemoryTarget)(start, fail=fail)
        rec: Reconciler[str, int] = Reconciler("t", target, batch_size=2, backoff=Backoff(initial=0.001, maximum=0.002))
        async with running(rec.run()):
            for kind, arg in ops:
                if kind == "set":
                    assert isinstance(arg, dict)
                    rec.set_desired(arg)
                    model.clear()
                    model.update(arg)
                else:
                    assert isinstance(arg, tuple)
                    updates: dict[str, int] = arg[0]
                    deletes: list[str] = arg[1]
                    rec.change_desired(updates, deletes)
                    for k in deletes:
                        model.pop(k, None)
                    model.update(updates)
                await asyncio.sleep(0)
            await asyncio.wait_for(rec.wait_synced(), 5)
        assert target.content == model
        assert rec.status().desired == len(model) and rec.status().pending == 0

    asyncio.run(scenario())
