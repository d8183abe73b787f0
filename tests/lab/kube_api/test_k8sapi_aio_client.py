"""``kubernetes.aio`` (the asyncio flavour of the official client) against an in-loop emulator: list,
watch with ``allow_watch_bookmarks`` receiving BOOKMARKs, and 410 Gone from a compacted resourceVersion."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes.aio import client, config, watch
from kubernetes.aio.client.exceptions import ApiException

from lab.kube.api import K8sApiServer


@pytest.fixture
async def aio_server() -> AsyncIterator[K8sApiServer]:
    async with K8sApiServer(bookmark_interval=0.2) as server:
        yield server


@pytest.fixture
async def aio_api(aio_server: K8sApiServer, tmp_path: Path) -> AsyncIterator[client.ApiClient]:
    path = aio_server.write_kubeconfig(tmp_path / "kubeconfig")
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(path), client_configuration=cfg)
    async with client.ApiClient(cfg) as api:
        yield api


async def test_list_and_watch_with_bookmark(aio_api: client.ApiClient, aio_server: K8sApiServer) -> None:
    core = client.CoreV1Api(aio_api)
    await core.create_namespaced_secret("default", client.V1Secret(metadata=client.V1ObjectMeta(name="s1"),
                                                                   string_data={"k": "v"}))
    listed = await core.list_namespaced_secret("default")
    assert [s.metadata.name for s in listed.items] == ["s1"]
    rv = listed.metadata.resource_version

    async def write_later() -> None:
        await asyncio.sleep(0.3)
        await core.create_namespaced_secret("default", client.V1Secret(metadata=client.V1ObjectMeta(name="s2")))

    types: list[str] = []
    async with asyncio.timeout(10), asyncio.TaskGroup() as tg:
        tg.create_task(write_later())
        w = watch.Watch()
        async with w.stream(core.list_namespaced_secret, "default", resource_version=rv,
                            allow_watch_bookmarks=True, timeout_seconds=5) as stream:
            async for ev in stream:
                types.append(ev["type"])
                if ev["type"] == "ADDED":
                    assert ev["object"].metadata.name == "s2"
                if "ADDED" in types and "BOOKMARK" in types:
                    w.stop()
                    break
    assert "BOOKMARK" in types and types.count("ADDED") == 1
    assert int(w.resource_version) >= int(rv)


async def test_custom_object_watch(aio_api: client.ApiClient, aio_server: K8sApiServer) -> None:
    co = client.CustomObjectsApi(aio_api)
    rv = (await co.list_cluster_custom_object("cilium.io", "v2", "ciliumidentities"))["metadata"]["resourceVersion"]
    aio_server.store.create({"apiVersion": "cilium.io/v2", "kind": "CiliumIdentity", "metadata": {"name": "1234"},
                             "security-labels": {"k8s:app": "web"}})
    w = watch.Watch()
    async with asyncio.timeout(10):
        async for ev in w.stream(co.list_cluster_custom_object, "cilium.io", "v2", "ciliumidentities",
                                 resource_version=rv, timeout_seconds=3):
            assert ev["type"] == "ADDED" and ev["object"]["metadata"]["name"] == "1234"
            w.stop()
            break
    await w.close()


async def test_watch_from_compacted_rv_raises_410(aio_api: client.ApiClient, aio_server: K8sApiServer) -> None:
    core = client.CoreV1Api(aio_api)
    made = await core.create_namespaced_config_map("default", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="c")))
    await core.patch_namespaced_config_map("c", "default", {"data": {"a": "1"}})
    aio_server.store.compact()
    w = watch.Watch()
    with pytest.raises(ApiException) as e:
        async with asyncio.timeout(10):
            async for _ in w.stream(core.list_namespaced_config_map, "default",
                                    resource_version=made.metadata.resource_version, timeout_seconds=2):
                pass
    assert e.value.status == 410
    await w.close()
