"""Server lifecycle and raw HTTP behaviour: the ``python -m lab.kube.api`` entry point under SIGTERM, HTTPS
with a :mod:`meshcore.pki` certificate, restarting on the same store, Status error documents, the legacy
``/watch/`` path, ``sendInitialEvents`` and Table output."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from kubernetes import client, config

from lab.kube.api import K8sApiServer

REPO = Path(__file__).resolve().parents[3]


def test_cli_serves_until_sigterm(tmp_path: Path) -> None:
    kc = tmp_path / "kc"
    proc = subprocess.Popen([sys.executable, "-m", "lab.kube.api", "--port", "0", "--kubeconfig", str(kc)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while not kc.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert kc.exists(), proc.stderr.read() if proc.poll() is not None and proc.stderr else "no kubeconfig"
        assert stat.S_IMODE(kc.stat().st_mode) == 0o600
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kc), client_configuration=cfg)
        with client.ApiClient(cfg) as api:
            names = [n.metadata.name for n in client.CoreV1Api(api).list_namespace().items]
        assert "default" in names
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_https_with_kubectl_and_client(tmp_path: Path) -> None:
    server = K8sApiServer(tls_dir=tmp_path / "tls").start_in_thread()
    try:
        assert server.url.startswith("https://127.0.0.1:")
        kc = server.write_kubeconfig(tmp_path / "kc", context_name="tls")
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kc), client_configuration=cfg)
        with client.ApiClient(cfg) as api:
            client.CoreV1Api(api).create_node(client.V1Node(metadata=client.V1ObjectMeta(name="n1")))
        kubectl = shutil.which("kubectl")
        if kubectl:
            out = subprocess.run([kubectl, "--kubeconfig", str(kc), "--cache-dir", str(tmp_path / "c"), "get",
                                  "nodes", "-o", "name"], capture_output=True, text=True, timeout=30, check=True)
            assert out.stdout.split() == ["node/n1"]
    finally:
        server.stop_thread()


async def test_restart_on_same_store_ends_watches() -> None:
    server = K8sApiServer()
    await server.start()
    port = server.port
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/api/v1/namespaces/default/configmaps?watch=true&resourceVersion="
                            f"{server.store.resource_version}") as resp:
            t0 = time.monotonic()
            await server.stop()
            assert await resp.content.read() == b""  # stream ended cleanly
            assert time.monotonic() - t0 < 5
    again = K8sApiServer(server.store, port=port)
    await again.start()
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{again.url}/api/v1/namespaces") as resp:
            assert len((await resp.json())["items"]) == 4
    finally:
        await again.stop()


@pytest.fixture
async def http_server() -> AsyncIterator[K8sApiServer]:
    async with K8sApiServer(bookmark_interval=0.2) as server:
        yield server


async def test_status_errors(http_server: K8sApiServer) -> None:
    base = http_server.url
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/api/v1/namespaces/default/pods/nope") as r:
            body = await r.json()
            assert r.status == 404 and body["kind"] == "Status" and body["reason"] == "NotFound"
            assert body["details"] == {"name": "nope", "kind": "pods"}
        async with http.get(f"{base}/apis/nothing.example.com/v1/things") as r:
            assert r.status == 404
        async with http.post(f"{base}/api/v1/namespaces/default/configmaps", data=b"{not json",
                             headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400 and (await r.json())["reason"] == "BadRequest"
        async with http.get(f"{base}/api/v1/pods?labelSelector=a%3D%3D%3Db") as r:
            assert r.status == 400
        async with http.post(f"{base}/apis/cilium.io/v2/ciliumnodes", json={"metadata": {"name": "n"}}) as r:
            assert r.status == 201
        async with http.patch(f"{base}/apis/cilium.io/v2/ciliumnodes/n", json={"spec": {}},
                              headers={"Content-Type": "application/strategic-merge-patch+json"}) as r:
            assert r.status == 415  # like kube-apiserver: no strategic merge patch for custom resources
        async with http.get(f"{base}/version") as r:
            assert (await r.json())["major"] == "1"


async def test_legacy_watch_path_initial_events_and_table(http_server: K8sApiServer) -> None:
    store = http_server.store
    store.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "default"}})
    base = http_server.url
    async with aiohttp.ClientSession() as http:
        url = (f"{base}/api/v1/watch/namespaces/default/pods?sendInitialEvents=true&allowWatchBookmarks=true"
               "&resourceVersionMatch=NotOlderThan&timeoutSeconds=2")
        async with http.get(url) as r:
            first = json.loads(await r.content.readline())
            second = json.loads(await r.content.readline())
        assert first["type"] == "ADDED" and first["object"]["metadata"]["name"] == "a"
        assert second["type"] == "BOOKMARK"
        assert second["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
        headers = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"}
        async with http.get(f"{base}/api/v1/namespaces/default/pods", headers=headers) as r:
            table = await r.json()
        assert table["kind"] == "Table" and table["rows"][0]["cells"][0] == "a"


def test_kubeconfig_for_load_kube_config(tmp_path: Path) -> None:
    server = K8sApiServer()
    doc = server.kubeconfig("ctx", namespace="kube-system")
    assert doc["current-context"] == "ctx" and doc["contexts"][0]["context"]["namespace"] == "kube-system"
    path = server.write_kubeconfig(tmp_path / "k", "ctx")
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
