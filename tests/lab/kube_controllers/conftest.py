"""Fixtures: a restartable API emulator in a thread, its kubeconfig, the controllers running in the
test's event loop, and a simulated node runtime (see :mod:`tests.lab.kube_controllers.cluster`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from lab.kube.controllers.client import KubeClient
from lab.kube.controllers.manager import ControllerManager, build
from tests.lab.kube_controllers.cluster import FakeKubelet, RestartableApi


@pytest.fixture
def api() -> Iterator[RestartableApi]:
    server = RestartableApi()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def kubeconfig(api: RestartableApi, tmp_path: Path) -> Path:
    return api.server.write_kubeconfig(tmp_path / "kubeconfig", context_name="lab-c1")


@contextlib.asynccontextmanager
async def running(coro_factory: object) -> AsyncIterator[asyncio.Task[None]]:
    """Run a coroutine in a task for the body of the ``async with``; cancel and await it afterwards."""
    task: asyncio.Task[None] = asyncio.create_task(coro_factory)  # type: ignore[arg-type]
    try:
        yield task
    finally:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=10)
        stuck = not done
        for _ in range(100):  # cleanup even after a failure to stop: cancel until it ends (bounded)
            if task.done():
                break
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
        assert not stuck, "the task did not stop within 10 s of being cancelled"


@pytest.fixture
async def controllers(kubeconfig: Path) -> AsyncIterator[ControllerManager]:
    """Every controller, in-process, with a short resync period."""
    client = await KubeClient.from_kubeconfig(kubeconfig)
    manager = build(client, resync_period=2.0, max_backoff=1.0)
    try:
        async with running(manager.run()) as task:
            yield manager
            assert not task.done(), task  # the controllers must never end by themselves
    finally:
        await client.close()


@pytest.fixture
async def kubelet(api: RestartableApi) -> AsyncIterator[FakeKubelet]:
    fake = FakeKubelet(api.store)
    async with running(fake.run()):
        yield fake
