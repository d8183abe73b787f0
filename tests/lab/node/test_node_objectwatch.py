"""ObjectWatches (the node's watches of the Secrets and ConfigMaps its pods read) against the real
Kubernetes API emulator through the official ``kubernetes.aio`` client: shared watches per object,
change callbacks, objects that do not exist yet, and watches stopped when nobody reads them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lab.kube.api import K8sApiServer
from lab.node.objectwatch import ObjectWatches
from lab.node.volumes import VolumeError
from lab.wait import poll_until
from meshcore.k8s.client import K8sApi


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[K8sApiServer, K8sApi]]:
    async with K8sApiServer(bookmark_interval=0.2) as server:
        async with await K8sApi.from_kubeconfig(server.write_kubeconfig(tmp_path / "kubeconfig")) as client:
            yield server, client


async def test_shared_watches_follow_changes_and_stop_when_unused(api: tuple[K8sApiServer, K8sApi]) -> None:
    server, client = api
    store = server.store
    store.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "default"},
                  "stringData": {"k": "v1"}})
    store.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "kube-system"},
                  "stringData": {"k": "other namespace"}})
    objects = ObjectWatches(client)
    calls = {"a": 0, "b": 0}

    def bump(owner: str) -> None:
        calls[owner] += 1

    async with asyncio.timeout(20), asyncio.TaskGroup() as tg:
        runner = tg.create_task(objects.run())
        refs = {("secret", "s"), ("configmap", "later")}
        objects.subscribe("a", "default", refs, lambda: bump("a"))
        objects.subscribe("b", "default", {("secret", "s")}, lambda: bump("b"))
        assert objects.watched() == {("secret", "default", "s"), ("configmap", "default", "later")}
        got = await objects.wait("default", refs, within=5)
        assert got == {("secret", "s"): {"k": b"v1"}, ("configmap", "later"): None}
        first = dict(calls)

        store.patch("secrets", "s", {"data": {"k": "djI="}}, namespace="default")  # "v2"
        assert await poll_until(lambda: objects.current("default", refs) == {
            ("secret", "s"): {"k": b"v2"}, ("configmap", "later"): None}, within=5)
        assert await poll_until(lambda: calls["a"] > first["a"] and calls["b"] > first["b"], within=5)
        store.patch("secrets", "s", {"data": {"k": "b3RoZXI="}}, namespace="kube-system")  # not ours
        store.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "later", "namespace": "default"},
                      "data": {"x": "1"}})
        assert await poll_until(lambda: (objects.current("default", refs) or {}).get(("configmap", "later"))
                                == {"x": b"1"}, within=5)
        assert (objects.current("default", refs) or {})[("secret", "s")] == {"k": b"v2"}
        store.delete("secrets", "s", "default")
        assert await poll_until(lambda: (objects.current("default", refs) or {}).get(("secret", "s"), 0) is None,
                                within=5)

        # b lets go of nothing a still reads; a's unsubscribe stops both watches
        objects.unsubscribe("b")
        assert objects.watched() == {("secret", "default", "s"), ("configmap", "default", "later")}
        objects.unsubscribe("a")
        assert objects.watched() == set() and objects.current("default", refs) is None
        # an object that cannot be read in time is named in the error
        objects.subscribe("c", "nowhere", {("secret", "x")}, lambda: None)
        objects.close()
        await runner
    with pytest.raises(VolumeError, match="cannot read secret x"):
        await objects.wait("nowhere", {("secret", "x")}, within=0.2)
