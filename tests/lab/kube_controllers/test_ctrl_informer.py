"""The shared machinery without an API: the work queue, informer caches and handlers, expectations, and the
reconcile loop's retry and resync behaviour."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

from lab.kube.controllers.actions import PODS
from lab.kube.controllers.informer import Expectations, Informer, ReconcileLoop, WorkQueue
from lab.wait import poll_until
from meshcore.errors import K8sError
from meshcore.k8s.client import K8sApi

Obj = dict[str, Any]


def offline_informer() -> Informer:
    """An informer fed by hand (``feed``), never run."""
    inf = Informer(cast(K8sApi, None), PODS)
    inf.synced.set()
    return inf


def pod(name: str, uid: str, **md: Any) -> Obj:
    return {"metadata": {"name": name, "namespace": "default", "uid": uid, **md}}


async def test_work_queue_dedupes_and_delays() -> None:
    q = WorkQueue()
    q.add("a")
    q.add("b")
    q.add("a")
    assert len(q) == 2
    assert [await q.get(max_wait=0.1), await q.get(max_wait=0.1)] == ["a", "b"]
    assert await q.get(max_wait=0.05) is None
    q.add_after("c", 0.2)
    assert await q.get(max_wait=0.05) is None
    assert await q.get(max_wait=2.0) == "c"


async def test_informer_cache_handlers_and_uid_index() -> None:
    inf = offline_informer()
    seen: list[tuple[str | None, str | None]] = []
    inf.add_handler(lambda old, new: seen.append(((old or {}).get("metadata", {}).get("uid"),
                                                  (new or {}).get("metadata", {}).get("uid"))))

    def broken(old: Obj | None, new: Obj | None) -> None:
        raise RuntimeError("handler bug")

    inf.add_handler(broken)  # must not stop the cache or the other handlers
    inf.feed(None, pod("a", "u1"))
    inf.feed(inf.get("default", "a"), pod("a", "u2"))
    assert inf.get("default", "a") == pod("a", "u2")
    assert inf.has_uid("u2") and not inf.has_uid("u1")
    inf.feed(pod("a", "u2"), None)
    assert inf.items() == [] and not inf.has_uid("u2")
    assert seen == [(None, "u1"), ("u1", "u2"), ("u2", None)]


async def test_expectations_until_observed() -> None:
    inf = offline_informer()
    exp = Expectations(ttl=30)
    exp.expect_created("rs", inf, pod("p1", "u1"))
    assert not exp.satisfied("rs")
    inf.feed(None, pod("p1", "u1"))
    assert exp.satisfied("rs")
    exp.expect_deleted("rs", inf, pod("p1", "u1"))
    assert not exp.satisfied("rs")
    inf.feed(pod("p1", "u1"), pod("p1", "u1", deletionTimestamp="2030-01-01T00:00:00Z"))  # terminating counts
    assert exp.satisfied("rs")
    short = Expectations(ttl=0.0)
    short.expect_created("rs", inf, pod("never", "u9"))
    assert short.satisfied("rs")  # expired: a lost event cannot wedge the key


async def test_reconcile_loop_retries_with_backoff_and_resyncs() -> None:
    inf = offline_informer()
    inf.feed(None, pod("a", "u1"))
    calls: list[str] = []
    fail = {"n": 2}

    async def reconcile(key: str) -> float | None:
        calls.append(key)
        if fail["n"] > 0:
            fail["n"] -= 1
            raise K8sError("API down")
        return None

    loop = ReconcileLoop("t", reconcile, informers=[inf], all_keys=inf.keys, resync_period=0.5, max_backoff=0.3)
    task = asyncio.create_task(loop.run())
    try:
        assert await poll_until(lambda: len(calls) >= 3, within=5)  # 2 failures, then success
        assert loop.failures == {}
        before = len(calls)
        assert await poll_until(lambda: len(calls) > before, within=5)  # the periodic resync
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_reconcile_loop_waits_for_sync_and_stops_on_cancel() -> None:
    inf = Informer(cast(K8sApi, None), PODS)
    calls: list[str] = []

    async def reconcile(key: str) -> float | None:
        calls.append(key)
        return None

    loop = ReconcileLoop("t", reconcile, informers=[inf], all_keys=lambda: ["k"])
    task = asyncio.create_task(loop.run())
    await asyncio.sleep(0.2)
    assert calls == []  # not synced yet
    inf.synced.set()
    assert await poll_until(lambda: calls == ["k"], within=5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert task.done()


async def test_work_queue_get_never_swallows_a_cancellation() -> None:
    """A key arriving in the same loop iteration as the cancellation must not win (Python 3.11's
    ``asyncio.wait_for`` returns the result then, and the reconcile loop would run on after SIGTERM)."""
    for _ in range(20):
        q = WorkQueue()
        task = asyncio.create_task(q.get(max_wait=5))
        await asyncio.sleep(0)  # the task is now waiting for a key
        q.add("k")
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done and task.cancelled(), task
