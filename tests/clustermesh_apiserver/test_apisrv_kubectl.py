"""``kubectl apply -f`` (the real binary, against the emulator) of a CiliumNode and a global
Service with its EndpointSlice reaches etcd in under a second, measured from the moment kubectl
starts (and, separately, returns) to the moment an etcd watch sees each key."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab.etcd import EtcdProcess
from lab.kube.api import K8sApiServer
from meshcore.kvstore.client import EtcdClient

KUBECTL = "/usr/bin/kubectl"
WANTED = {"cilium/state/nodes/v1/c1/applied-node", "cilium/state/services/v1/c1/shop/web"}


async def kubectl(kubeconfig: Path, cache: Path, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        KUBECTL,
        "--kubeconfig",
        str(kubeconfig),
        "--cache-dir",
        str(cache),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def watch_for(client: EtcdClient, keys: set[str], start_revision: int) -> dict[str, float]:
    """Monotonic time at which each of ``keys`` was first seen by a watch."""
    seen: dict[str, float] = {}
    stream = client.watch("cilium/state/", start_revision=start_revision)
    try:
        async for batch in stream:
            for event in batch.events:
                if event.key in keys and event.key not in seen:
                    seen[event.key] = time.monotonic()
            if set(seen) == keys:
                return seen
    finally:
        await stream.aclose()
    return seen


@pytest.mark.skipif(shutil.which(KUBECTL) is None, reason="kubectl is not installed")
async def test_kubectl_apply_reaches_etcd_within_a_second(
    emulator: K8sApiServer,
    kubeconfig: Path,
    tmp_path: Path,
    etcd: EtcdProcess,
    etcd_client: EtcdClient,
    make_config: Any,
    run_server: Any,
    objects: Any,
) -> None:
    manifest = tmp_path / "mesh.yaml"
    docs = [
        objects.namespace("shop"),
        objects.cilium_node("applied-node"),
        objects.service("web", "shop"),
        objects.endpoint_slice("web", "shop", ["10.244.1.10"]),
    ]
    manifest.write_text(yaml.safe_dump_all(docs))
    cache = tmp_path / "kcache"
    async with run_server(make_config(etcd.client_config(), kubeconfig)):
        revision = (await etcd_client.status()).revision
        async with asyncio.timeout(20), asyncio.TaskGroup() as tasks:
            watcher = tasks.create_task(watch_for(etcd_client, WANTED, revision + 1))
            started = time.monotonic()
            out = await kubectl(kubeconfig, cache, "apply", "-f", str(manifest))
            returned = time.monotonic()
            seen = await watcher
        assert "ciliumnode.cilium.io/applied-node created" in out
        latency = {key: at - returned for key, at in seen.items()}
        print(f"kubectl ran {returned - started:.3f} s; etcd saw the keys after it returned: {latency}")
        assert max(latency.values()) < 1.0, latency
        assert max(seen.values()) - started < 1.0  # kubectl's own run included
