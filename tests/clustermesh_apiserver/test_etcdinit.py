"""etcdinit on a real mTLS etcd: per-peer remote users read the exported state and write nothing."""

from __future__ import annotations

import pytest

from clustermesh_apiserver.etcdinit import auth_plan, etcd_init
from lab.etcd import EtcdProcess
from meshcore.errors import KVStoreAuthError
from meshcore.kvstore.client import EtcdClient


def test_plan_matches_cilium_roles() -> None:
    plan = auth_plan("cluster1", peers=["cluster2"])
    assert plan.users == {
        "root": "root",
        "admin-cluster1": "root",
        "local-cluster1": "local",
        "remote": "remote",
        "remote-cluster2": "remote",
    }
    remote = {(g.key, g.prefix) for g in plan.roles["remote"]}
    assert remote == {
        ("cilium/.heartbeat", True),
        ("cilium/state/", True),
        ("cilium/cluster-config/cluster1", False),
        ("cilium/synced/cluster1/", True),
    }


async def test_remote_peer_reads_and_cannot_write(etcd_tls: EtcdProcess) -> None:
    async with EtcdClient(etcd_tls.client_config("root")) as root:
        await etcd_init(root, "cluster1", peers=["cluster2"])
    async with EtcdClient(etcd_tls.client_config("admin-cluster1")) as admin:
        await admin.put("cilium/state/nodes/v1/cluster1/n1", b"{}")
        await admin.put("cilium/cluster-config/cluster1", b'{"id":1}')
        await admin.put("cilium/cluster-config/cluster9", b'{"id":9}')
        await admin.put("cilium/synced/cluster1/cilium/state/nodes/v1", b"2026-01-01T00:00:00Z")
        await admin.put("cilium/.heartbeat", b"2026-01-01T00:00:00Z")
    async with EtcdClient(etcd_tls.client_config("remote-cluster2")) as remote:
        assert remote.user == "remote-cluster2"
        assert [kv.key for kv in (await remote.list_prefix("cilium/state/")).items] == [
            "cilium/state/nodes/v1/cluster1/n1"
        ]
        assert await remote.get("cilium/cluster-config/cluster1") is not None
        assert await remote.get("cilium/.heartbeat") is not None
        # agents list-watch the heartbeat as a prefix (Cilium's ListAndWatch): a range read
        assert [kv.key for kv in (await remote.list_prefix("cilium/.heartbeat")).items] == ["cilium/.heartbeat"]
        with pytest.raises(KVStoreAuthError):
            await remote.get("cilium/cluster-config/cluster9")
        for key in ("cilium/state/nodes/v1/cluster1/n2", "cilium/.heartbeat", "cilium/cluster-config/cluster1"):
            with pytest.raises(KVStoreAuthError):
                await remote.put(key, b"x")
        with pytest.raises(KVStoreAuthError):
            await remote.delete("cilium/state/nodes/v1/cluster1/n1")
        with pytest.raises(KVStoreAuthError):
            await remote.delete_prefix("cilium/state/")
    async with EtcdClient(etcd_tls.client_config("root")) as root:
        assert await root.get("cilium/state/nodes/v1/cluster1/n1") is not None
