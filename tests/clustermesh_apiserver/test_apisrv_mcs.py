"""MCS-API service exports: without the v1beta1 ServiceExport CRD the serviceexports job is
degraded, its canary is not written and /readyz says NotReady while the other four canaries are
in place; upgrading the CRD starts the export without a restart. With MCS-API off the canary is
written anyway and the cluster config says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from lab.etcd import EtcdProcess
from lab.kube.api import DEFAULT_CRD_KINDS, K8sApiServer
from lab.wait import poll_until
from meshcore.kvstore.client import EtcdClient
from meshcore.wire import ClusterConfig, MCSAPIServiceSpec
from meshcore.wire import keys as wk

EXPORT_KEY = "cilium/state/serviceexports/v1/c1/shop/web"
EXPORTS_CANARY = wk.synced_key("c1", wk.SERVICE_EXPORTS)


def without_v1beta1_export(kind: Any) -> bool:
    return not (kind.plural == "serviceexports" and kind.version == "v1beta1")


async def readyz(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(url + "/readyz") as response:
        return response.status


async def test_crd_upgrade_starts_export_without_restart(
    tmp_path: Path, etcd: EtcdProcess, etcd_client: EtcdClient, make_config: Any, run_server: Any, objects: Any
) -> None:
    old_kinds = [k for k in DEFAULT_CRD_KINDS if without_v1beta1_export(k)]
    async with K8sApiServer(crds=old_kinds, bookmark_interval=0.5) as emulator:
        store = emulator.store
        store.create(objects.namespace("shop"))
        store.create(objects.service("web", "shop"))
        config = make_config(etcd.client_config(), emulator.write_kubeconfig(tmp_path / "kc"), enable_mcs_api=True)
        async with run_server(config, ready_within=None) as server:
            others = [k for k in wk.apiserver_synced_keys("c1") if k != EXPORTS_CANARY]
            assert await poll_until(lambda: _all_present(etcd_client, others), within=10)
            health = server.health()
            exports = health["job-serviceexport-sync"]
            assert exports.startswith("degraded: ") and "v1beta1" in exports
            assert {v for k, v in health.items() if k != "job-serviceexport-sync"} == {"ok"}
            assert await etcd_client.get(EXPORTS_CANARY) is None
            assert await readyz(server.health_url) == 500
            config_value = await etcd_client.get(wk.cluster_config_key("c1"))
            assert config_value is not None
            assert ClusterConfig.decode(config_value.value).capabilities.service_exports_enabled is True

            # Upgrade the CRD (v1alpha1 + v1beta1) and export the Service.
            store.install_crds([k for k in DEFAULT_CRD_KINDS if k.plural == "serviceexports"])
            store.create(
                {
                    "apiVersion": "multicluster.x-k8s.io/v1beta1",
                    "kind": "ServiceExport",
                    "metadata": {"name": "web", "namespace": "shop"},
                }
            )
            assert await poll_until(lambda: server.ready.is_set(), within=10)
            assert await readyz(server.health_url) == 200
            assert server.health()["job-serviceexport-sync"] == "ok"
            value = await etcd_client.get(EXPORT_KEY)
            assert value is not None
            spec = MCSAPIServiceSpec.decode(value.value)
            assert (spec.cluster, spec.namespace, spec.name, spec.type) == ("c1", "shop", "web", "ClusterSetIP")
            assert await etcd_client.get(EXPORTS_CANARY) is not None

            store.delete("serviceexports.multicluster.x-k8s.io", "web", "shop")
            assert await poll_until(lambda: _absent(etcd_client, EXPORT_KEY), within=5)


async def test_canary_written_with_mcs_api_off(
    emulator: K8sApiServer,
    kubeconfig: Path,
    etcd: EtcdProcess,
    etcd_client: EtcdClient,
    make_config: Any,
    run_server: Any,
) -> None:
    async with run_server(make_config(etcd.client_config(), kubeconfig, service_v2_mode="prefer-endpointslice")):
        assert await etcd_client.get(EXPORTS_CANARY) is not None
        value = await etcd_client.get(wk.cluster_config_key("c1"))
        assert value is not None
        caps = ClusterConfig.decode(value.value).capabilities
        assert caps.service_exports_enabled is False
        assert caps.endpoint_slices_export_mode == "services-and-endpointslices"


async def _all_present(client: EtcdClient, keys: list[str]) -> bool:
    return all([await client.get(k) is not None for k in keys])


async def _absent(client: EtcdClient, key: str) -> bool:
    return await client.get(key) is None
