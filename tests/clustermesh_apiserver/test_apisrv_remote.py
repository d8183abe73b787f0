"""The mesh's security contract on a real mTLS etcd: after ``clustermesh-apiserver etcdinit``
(the CLI, as a process), the daemon writes as ``admin-c1`` and a peer's ``remote-c2`` user reads
the exported state but is denied every write."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

from lab.etcd import EtcdProcess
from lab.kube.api import K8sApiServer
from meshcore.errors import KVStoreAuthError
from meshcore.kvstore.client import EtcdClient
from meshcore.wire import keys as wk


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clustermesh_apiserver", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_remote_peer_reads_exported_state_and_cannot_write(
    emulator: K8sApiServer,
    kubeconfig: Path,
    tmp_path: Path,
    etcd_tls: EtcdProcess,
    make_config: Any,
    run_server: Any,
    objects: Any,
) -> None:
    root_yaml = etcd_tls.write_config_yaml(tmp_path / "root.yaml", user="root")
    rc, out, err = await run_cli("etcdinit", "--cluster-name", "c1", "--peers", "c2", "--etcd-config", str(root_yaml))
    assert rc == 0, err
    assert "user remote-c2: role remote" in out and "auth enabled" in out

    store = emulator.store
    store.create(objects.namespace("shop"))
    store.create(objects.cilium_node("n1"))
    store.create(objects.cilium_identity(65600, "shop", "web"))
    store.create(objects.cilium_endpoint("web-1", "shop", "10.244.1.10", 65600))
    store.create(objects.service("web", "shop"))
    config = make_config(etcd_tls.client_config("admin-c1"), kubeconfig)
    async with run_server(config), EtcdClient(etcd_tls.client_config("remote-c2")) as remote:
        assert remote.user == "remote-c2"
        state = {kv.key for kv in (await remote.list_prefix("cilium/state/")).items}
        assert state == {
            "cilium/state/nodes/v1/c1/n1",
            "cilium/state/identities/v1/id/65600",
            "cilium/state/ip/v1/default/10.244.1.10",
            "cilium/state/services/v1/c1/shop/web",
        }
        synced = {kv.key for kv in (await remote.list_prefix("cilium/synced/c1/")).items}
        assert synced == set(wk.apiserver_synced_keys("c1"))
        assert await remote.get(wk.cluster_config_key("c1")) is not None
        assert await remote.get(wk.HEARTBEAT) is not None

        writable = [*sorted(state), *sorted(synced), wk.cluster_config_key("c1"), wk.HEARTBEAT,
                    "cilium/state/nodes/v1/c2/intruder", "cilium/cluster-config/c2"]
        for key in writable:
            with pytest.raises(KVStoreAuthError):
                await remote.put(key, b"x")
            with pytest.raises(KVStoreAuthError):
                await remote.delete(key)
        with pytest.raises(KVStoreAuthError):
            await remote.delete_prefix("cilium/")
        # etcd lets any user grant a lease; attaching it to a key is still a denied write.
        lease = await remote.grant_lease(60)
        with pytest.raises(KVStoreAuthError):
            await remote.put("cilium/state/nodes/v1/c1/n1", b"{}", lease=lease)
