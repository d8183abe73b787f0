"""Fixtures for the apiserver daemon tests: the Kubernetes API emulator on the test's loop, a
kubeconfig for it, and a helper that runs an :class:`ApiServer` in a task, bounded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from clustermesh_apiserver.config import ApiServerConfig
from clustermesh_apiserver.server import ApiServer
from lab.kube.api import K8sApiServer
from meshcore.kvstore.config import EtcdClientConfig

RunServer = Callable[..., AbstractAsyncContextManager[ApiServer]]


@pytest.fixture
async def emulator() -> AsyncIterator[K8sApiServer]:
    """The Kubernetes API emulator (Cilium and MCS CRDs installed) on the test's event loop."""
    async with K8sApiServer(bookmark_interval=0.5) as server:
        yield server


@pytest.fixture
def kubeconfig(emulator: K8sApiServer, tmp_path: Path) -> Path:
    return emulator.write_kubeconfig(tmp_path / "kubeconfig")


def _make_config(etcd: EtcdClientConfig, kubeconfig: Path, **overrides: Any) -> ApiServerConfig:
    settings: dict[str, Any] = {
        "cluster_name": "c1",
        "cluster_id": 1,
        "etcd": etcd,
        "kubeconfig": kubeconfig,
        "health_port": 0,
        "lease_ttl": 60,
        "heartbeat_interval": 5.0,
    }
    settings.update(overrides)
    return ApiServerConfig(**settings)


@asynccontextmanager
async def _running(server: ApiServer, *, ready_within: float | None = 10.0) -> AsyncIterator[ApiServer]:
    task = asyncio.create_task(server.run(), name="apiserver under test")
    try:
        async with asyncio.timeout(ready_within or 10.0):
            while not (server.ready.is_set() if ready_within is not None else server.health_url):  # noqa: ASYNC110
                if task.done():
                    task.result()  # raises what made run() end
                    raise AssertionError("ApiServer.run() returned on its own")
                await asyncio.sleep(0.01)
        yield server
    finally:
        task.cancel()
        async with asyncio.timeout(10):
            await asyncio.gather(task, return_exceptions=True)


MakeConfig = Callable[..., ApiServerConfig]


@pytest.fixture
def make_config() -> MakeConfig:
    """``make_config(etcd_client_config, kubeconfig, **overrides)``: cluster c1 (ID 1), health port
    0, short lease and heartbeat."""
    return _make_config


@pytest.fixture
def run_server() -> RunServer:
    """``async with run_server(config) as server:`` runs it until ready (``ready_within=None``:
    only until its health endpoint listens), and stops it on exit."""

    def run(config: ApiServerConfig, *, ready_within: float | None = 10.0) -> AbstractAsyncContextManager[ApiServer]:
        return _running(ApiServer(config), ready_within=ready_within)

    return run


class Objects:
    """Builders of the Kubernetes objects the tests export (cluster c1, identity range 65536..)."""

    @staticmethod
    def namespace(name: str, *, global_: bool | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name}
        if global_ is not None:
            meta["annotations"] = {"clustermesh.cilium.io/global": "true" if global_ else "false"}
        if labels:
            meta["labels"] = labels
        return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}

    @staticmethod
    def cilium_node(name: str, ip: str = "172.18.0.2", cidr: str = "10.244.1.0/24") -> dict[str, Any]:
        return {
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNode",
            "metadata": {"name": name},
            "spec": {
                "addresses": [{"type": "InternalIP", "ip": ip}],
                "ipam": {"podCIDRs": [cidr]},
                "health": {"ipv4": cidr.replace("0/24", "5")},
            },
        }

    @staticmethod
    def cilium_identity(ident: int, namespace: str, app: str) -> dict[str, Any]:
        return {
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumIdentity",
            "metadata": {"name": str(ident)},
            "security-labels": {
                "k8s:app": app,
                "k8s:io.kubernetes.pod.namespace": namespace,
                "k8s:io.cilium.k8s.policy.cluster": "c1",
            },
        }

    @staticmethod
    def cilium_endpoint(name: str, namespace: str, ip: str, ident: int, node_ip: str = "172.18.0.2") -> dict[str, Any]:
        return {
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumEndpoint",
            "metadata": {"name": name, "namespace": namespace},
            "status": {
                "identity": {"id": ident},
                "networking": {"addressing": [{"ipv4": ip}], "node": node_ip},
                "service-account": "default",
                "state": "ready",
            },
        }

    @staticmethod
    def service(name: str, namespace: str, cluster_ip: str = "10.96.0.10") -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "annotations": {"service.cilium.io/global": "true"}},
            "spec": {
                "clusterIP": cluster_ip,
                "clusterIPs": [cluster_ip],
                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
                "selector": {"app": name},
                "type": "ClusterIP",
            },
        }

    @staticmethod
    def endpoint_slice(service: str, namespace: str, addresses: list[str]) -> dict[str, Any]:
        return {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{service}-abc12",
                "namespace": namespace,
                "labels": {"kubernetes.io/service-name": service},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        }


@pytest.fixture
def objects() -> type[Objects]:
    return Objects
