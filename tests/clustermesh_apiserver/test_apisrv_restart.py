"""Restarting the daemon over the same etcd: nothing still valid is deleted or re-created (every
key keeps its create_revision), leftovers of the previous run are swept after the initial sync,
leases are left alone on stop, and /readyz goes back to 200 once the canaries are written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from lab.etcd import EtcdProcess
from lab.kube.api import K8sApiServer
from lab.wait import poll_until
from meshcore.kvstore.client import EtcdClient
from meshcore.wire import keys as wk


async def revisions(client: EtcdClient) -> dict[str, int]:
    return {kv.key: kv.create_revision for kv in (await client.list_prefix("cilium/")).items}


async def readyz(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(url + "/readyz") as response:
        return response.status


async def test_restart_keeps_keys_and_sweeps_leftovers(
    emulator: K8sApiServer,
    kubeconfig: Path,
    etcd: EtcdProcess,
    etcd_client: EtcdClient,
    make_config: Any,
    run_server: Any,
    objects: Any,
) -> None:
    store = emulator.store
    store.create(objects.namespace("shop"))
    for i in range(3):
        store.create(objects.cilium_node(f"n{i}", ip=f"172.18.0.{i + 2}", cidr=f"10.244.{i}.0/24"))
        store.create(objects.cilium_identity(65600 + i, "shop", f"app{i}"))
        store.create(objects.cilium_endpoint(f"ep{i}", "shop", f"10.244.0.{10 + i}", 65600 + i))
    store.create(objects.service("web", "shop"))
    store.create(objects.endpoint_slice("web", "shop", ["10.244.0.10", "10.244.0.11"]))
    config = make_config(etcd.client_config(), kubeconfig)

    async with run_server(config) as first:
        before = await revisions(etcd_client)
        assert first.stores is not None
        leases_before = {kv.lease for kv in (await etcd_client.list_prefix("cilium/")).items}
    assert await revisions(etcd_client) == before  # stopping deletes nothing, revokes no lease

    # While it is down: one endpoint and one node go away in Kubernetes.
    store.delete("ciliumendpoints.cilium.io", "ep2", "shop")
    store.delete("ciliumnodes.cilium.io", "n2")
    gone = {"cilium/state/ip/v1/default/10.244.0.12", "cilium/state/nodes/v1/c1/n2"}

    # The second run starts while the Kubernetes API is down: not ready, and nothing is touched.
    port = emulator.port
    await emulator.stop()
    async with run_server(config, ready_within=None) as second:
        assert await readyz(second.health_url) == 500
        assert second.health()["job-node-sync"].startswith("degraded: ")
        assert await revisions(etcd_client) == before
        async with K8sApiServer(store, port=port, bookmark_interval=0.5):
            assert await poll_until(lambda: second.ready.is_set(), within=15)
            assert await readyz(second.health_url) == 200
            await check_second_run(second, etcd_client, before, gone, leases_before)


async def check_second_run(
    second: Any, etcd_client: EtcdClient, before: dict[str, int], gone: set[str], leases_before: set[int]
) -> None:
    after = await revisions(etcd_client)
    assert set(after) == set(before) - gone
    changed = {k: (before[k], after[k]) for k in after if before[k] != after[k]}
    assert changed == {}, f"keys re-created: {changed}"
    swept = second.swept()
    assert set(swept["ip"]) == {"cilium/state/ip/v1/default/10.244.0.12"}
    assert set(swept["nodes"]) == {"cilium/state/nodes/v1/c1/n2"}
    assert swept["identities"] == [] and swept["services"] == []
    # The keys now hang on the new run's leases.
    leases_after = {kv.lease for kv in (await etcd_client.list_prefix("cilium/")).items}
    assert leases_after.isdisjoint(leases_before)
    for canary in wk.apiserver_synced_keys("c1"):
        assert canary in after
