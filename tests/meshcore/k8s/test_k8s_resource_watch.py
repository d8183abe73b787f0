"""ResourceWatch against the Kubernetes API emulator through the real ``kubernetes.aio`` client:
initial list and Synced, watch upserts and deletes, bookmarks advancing the resourceVersion, and a
410 Gone after an API server restart with compacted history, reconciled by re-listing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from lab.kube.api import K8sApiServer
from lab.wait import poll_until
from meshcore.backoff import Backoff
from meshcore.k8s.client import K8sApi
from meshcore.k8s.resource import Delete, ResourceEvent, ResourceRef, ResourceWatch, Synced, Upsert

CILIUM_NODES = ResourceRef("cilium.io", "v2", "ciliumnodes", namespaced=False)
CONFIGMAPS = ResourceRef("", "v1", "configmaps", namespaced=True)


def node(name: str, health: str = "10.0.0.1") -> dict[str, Any]:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNode",
        "metadata": {"name": name},
        "spec": {"health": {"ipv4": health}},
    }


class Collector:
    """Consumes a ResourceWatch in a task and records its events."""

    def __init__(self, watch: ResourceWatch) -> None:
        self.watch = watch
        self.events: list[ResourceEvent] = []

    async def run(self) -> None:
        async with aclosing(self.watch.events()) as events:
            async for event in events:
                self.events.append(event)

    def names(self, kind: type) -> list[str]:
        return [e.obj["metadata"]["name"] for e in self.events if isinstance(e, kind) and not isinstance(e, Synced)]

    async def wait_for(self, count: int, within: float = 5.0) -> None:
        assert await poll_until(lambda: len(self.events) >= count, within=within), self.events


@pytest.fixture
async def server() -> AsyncIterator[K8sApiServer]:
    async with K8sApiServer(bookmark_interval=0.1) as srv:
        yield srv


@pytest.fixture
async def api(server: K8sApiServer, tmp_path: Path) -> AsyncIterator[K8sApi]:
    async with await K8sApi.from_kubeconfig(server.write_kubeconfig(tmp_path / "kubeconfig")) as client:
        yield client


async def test_list_synced_then_watch(server: K8sApiServer, api: K8sApi) -> None:
    for i in range(3):
        server.store.create(node(f"n{i}"))
    collector = Collector(ResourceWatch(api, CILIUM_NODES, page_size=2))
    async with asyncio.timeout(10), asyncio.TaskGroup() as tg:
        task = tg.create_task(collector.run())
        await collector.wait_for(4)
        assert collector.names(Upsert) == ["n0", "n1", "n2"]  # paginated list, in order
        assert isinstance(collector.events[3], Synced)
        assert collector.events[0].obj["kind"] == "CiliumNode"  # list items get their kind back
        server.store.create(node("n3"))
        server.store.patch("ciliumnodes.cilium.io", "n0", {"spec": {"health": {"ipv4": "10.0.0.9"}}})
        server.store.delete("ciliumnodes.cilium.io", "n1")
        await collector.wait_for(7)
        tail = collector.events[4:]
        assert [type(e).__name__ for e in tail] == ["Upsert", "Upsert", "Delete"]
        assert tail[1].obj["spec"]["health"]["ipv4"] == "10.0.0.9"  # type: ignore[union-attr]
        assert {o["metadata"]["name"] for o in collector.watch.objects()} == {"n0", "n2", "n3"}
        assert collector.watch.synced and collector.watch.relists == 1
        task.cancel()


async def test_bookmarks_advance_resource_version(server: K8sApiServer, api: K8sApi) -> None:
    collector = Collector(ResourceWatch(api, CILIUM_NODES))
    async with asyncio.timeout(10), asyncio.TaskGroup() as tg:
        task = tg.create_task(collector.run())
        await collector.wait_for(1)
        listed = int(collector.watch.resource_version)
        # Writes to another kind move the global resourceVersion; only bookmarks can tell the watch.
        for i in range(3):
            server.store.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"c{i}"}})
        target = int(server.store.resource_version)
        assert target > listed
        assert await poll_until(lambda: int(collector.watch.resource_version or 0) >= target, within=5)
        assert len(collector.events) == 1  # bookmarks are not events
        task.cancel()


async def test_gone_relists_and_sweeps(tmp_path: Path) -> None:
    first = K8sApiServer(bookmark_interval=60.0)
    await first.start()
    store, port = first.store, first.port
    for name in ("keep", "change", "vanish"):
        store.create(node(name))
    async with await K8sApi.from_kubeconfig(first.write_kubeconfig(tmp_path / "kubeconfig")) as api:
        watch = ResourceWatch(api, CILIUM_NODES, backoff=Backoff(initial=0.05, maximum=0.2))
        collector = Collector(watch)
        async with asyncio.timeout(20), asyncio.TaskGroup() as tg:
            task = tg.create_task(collector.run())
            await collector.wait_for(4)
            await first.stop()
            # While the API server is down: one object changes, one vanishes, one appears; then
            # the history is compacted so the watch's resourceVersion is gone.
            store.patch("ciliumnodes.cilium.io", "change", {"spec": {"health": {"ipv4": "10.9.9.9"}}})
            store.delete("ciliumnodes.cilium.io", "vanish")
            store.create(node("new"))
            store.compact()
            second = K8sApiServer(store, port=port, bookmark_interval=60.0)
            await second.start()
            try:
                await collector.wait_for(7)
                await asyncio.sleep(0.3)  # nothing else may follow
                tail = collector.events[4:]
                assert sorted((type(e).__name__, e.obj["metadata"]["name"]) for e in tail) == [  # type: ignore[union-attr]
                    ("Delete", "vanish"),
                    ("Upsert", "change"),
                    ("Upsert", "new"),
                ]
                assert watch.relists == 2
                assert sum(isinstance(e, Synced) for e in collector.events) == 1
                assert {o["metadata"]["name"] for o in watch.objects()} == {"keep", "change", "new"}
                # After the relist the watch resumes normally.
                store.delete("ciliumnodes.cilium.io", "keep")
                await collector.wait_for(8)
                assert isinstance(collector.events[-1], Delete)
            finally:
                task.cancel()
                await second.stop()


async def test_field_selector_narrows_list_and_watch(server: K8sApiServer, api: K8sApi) -> None:
    def configmap(namespace: str, name: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace}}

    for namespace in ("a", "b"):
        server.store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    for namespace, name in (("a", "x"), ("b", "x"), ("a", "y")):
        server.store.create(configmap(namespace, name))
    watch = ResourceWatch(api, CONFIGMAPS, field_selector="metadata.namespace=a,metadata.name=x")
    collector = Collector(watch)
    async with asyncio.timeout(10), asyncio.TaskGroup() as tg:
        task = tg.create_task(collector.run())
        await collector.wait_for(2)
        assert [(e.obj["metadata"]["namespace"], e.obj["metadata"]["name"]) for e in collector.events
                if isinstance(e, Upsert)] == [("a", "x")]
        # Changes to objects outside the selection are not delivered; the selected one's are.
        server.store.patch("configmaps", "x", {"data": {"k": "other"}}, namespace="b")
        server.store.create(configmap("a", "z"))
        server.store.patch("configmaps", "x", {"data": {"k": "mine"}}, namespace="a")
        server.store.delete("configmaps", "x", "a")
        await collector.wait_for(4)
        await asyncio.sleep(0.3)  # nothing else may follow
        tail = collector.events[2:]
        assert [type(e).__name__ for e in tail] == ["Upsert", "Delete"]
        assert tail[0].obj["data"] == {"k": "mine"}  # type: ignore[union-attr]
        assert watch.objects() == []
        task.cancel()


async def test_missing_resource_is_retried_with_error(server: K8sApiServer, api: K8sApi) -> None:
    ref = ResourceRef("example.io", "v1", "widgets", namespaced=True)
    collector = Collector(ResourceWatch(api, ref, backoff=Backoff(initial=0.05, maximum=0.1)))
    async with asyncio.timeout(10), asyncio.TaskGroup() as tg:
        task = tg.create_task(collector.run())
        assert await poll_until(lambda: "404" in collector.watch.error, within=5)
        assert collector.events == []
        task.cancel()
