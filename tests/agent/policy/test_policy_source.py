"""PolicySource against the Kubernetes API emulator through the real ``kubernetes.aio`` client:
CNP, CCNP and NetworkPolicy upserts and deletes become parsed policies with a change version,
and missing Cilium CRDs are retried (and reported) until they are installed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.policy.source import PolicySource
from lab.kube.api import DEFAULT_CRD_KINDS, K8sApiServer
from lab.wait import poll_until
from meshcore.backoff import Backoff
from meshcore.k8s.client import K8sApi

POLICY_CRDS = {"ciliumnetworkpolicies", "ciliumclusterwidenetworkpolicies"}


def cnp(name: str, namespace: str = "default", app: str = "backend") -> dict[str, Any]:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": app}},
            "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "frontend", "io.cilium.k8s.policy.cluster": "c2"}}],
                         "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}],
                                      "rules": {"http": [{"method": "GET"}]}}]}],
        },
    }


def ccnp(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {"name": name},
        "spec": {"endpointSelector": {}, "egressDeny": [{"toEntities": ["world"]}]},
    }


def netpol(name: str, namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }


def fast_backoff() -> Backoff:
    return Backoff(initial=0.05, maximum=0.2)


@pytest.fixture
async def api_for(tmp_path: Path) -> AsyncIterator[Any]:
    clients: list[K8sApi] = []

    async def connect(server: K8sApiServer) -> K8sApi:
        client = await K8sApi.from_kubeconfig(server.write_kubeconfig(tmp_path / "kubeconfig"))
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.close()


async def test_policies_are_listed_watched_and_parsed(api_for: Any) -> None:
    async with K8sApiServer(bookmark_interval=0.2) as server:
        server.store.create(cnp("allow-frontend"))
        server.store.create(netpol("deny-all"))
        source = PolicySource(await api_for(server), backoff=fast_backoff)
        async with asyncio.timeout(15), asyncio.TaskGroup() as tg:
            task = tg.create_task(source.run())
            assert await poll_until(lambda: source.synced, within=10)
            assert set(source.policies) == {"CiliumNetworkPolicy/default/allow-frontend",
                                            "NetworkPolicy/default/deny-all"}
            allow = source.policies["CiliumNetworkPolicy/default/allow-frontend"]
            assert allow.rules and allow.errors == ()
            assert any("rules" in u for u in allow.unsupported)
            assert source.status()["unsupported"] == {
                "CiliumNetworkPolicy/default/allow-frontend": list(allow.unsupported)
            }
            assert source.errors() == {}

            version = source.version
            server.store.create(ccnp("no-world"))
            version = await asyncio.wait_for(source.wait_changed(version), 5)
            assert await poll_until(lambda: "CiliumClusterwideNetworkPolicy/no-world" in source.policies, within=5)
            assert source.policies["CiliumClusterwideNetworkPolicy/no-world"].rules[0].egress_deny

            server.store.patch("ciliumnetworkpolicies.cilium.io", "allow-frontend",
                               {"spec": {"endpointSelector": {"matchLabels": {"app": "db"}}}}, namespace="default")
            assert await poll_until(
                lambda: "db" in source.policies["CiliumNetworkPolicy/default/allow-frontend"]
                .rules[0].endpoint_selector.format(),
                within=5,
            )
            server.store.delete("networkpolicies.networking.k8s.io", "deny-all", namespace="default")
            assert await poll_until(lambda: "NetworkPolicy/default/deny-all" not in source.policies, within=5)
            assert source.version > version
            status = source.status()
            assert status["kinds"]["CiliumNetworkPolicy"] == {"synced": True, "error": "", "policies": 1}
            task.cancel()


async def test_missing_crds_are_retried_until_installed(api_for: Any) -> None:
    others = [k for k in DEFAULT_CRD_KINDS if k.plural not in POLICY_CRDS]
    async with K8sApiServer(crds=others, bookmark_interval=0.2) as server:
        server.store.create(netpol("np"))
        source = PolicySource(await api_for(server), backoff=fast_backoff)
        async with asyncio.timeout(15), asyncio.TaskGroup() as tg:
            task = tg.create_task(source.run())
            # NetworkPolicy works although the Cilium policy CRDs are absent; those are reported.
            assert await poll_until(lambda: "NetworkPolicy/default/np" in source.policies, within=5)
            assert await poll_until(lambda: set(source.errors()) == {"CiliumNetworkPolicy",
                                                                     "CiliumClusterwideNetworkPolicy"}, within=5)
            assert "404" in source.errors()["CiliumNetworkPolicy"]
            assert not source.synced
            server.store.install_crds([k for k in DEFAULT_CRD_KINDS if k.plural in POLICY_CRDS])
            server.store.create(cnp("late"))
            assert await poll_until(lambda: "CiliumNetworkPolicy/default/late" in source.policies, within=5)
            assert await poll_until(lambda: source.synced and source.errors() == {}, within=5)
            task.cancel()
