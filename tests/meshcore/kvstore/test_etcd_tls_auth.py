"""mTLS, host aliases and etcd auth with users taken from client-certificate CNs."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from lab.etcd import EtcdPKI, EtcdProcess
from meshcore.errors import KVStoreAuthError, KVStoreUnavailableError
from meshcore.kvstore.auth import Permission, RolePermission
from meshcore.kvstore.client import EtcdClient
from meshcore.kvstore.config import EtcdClientConfig
from meshcore.kvstore.types import PutOp


async def test_mtls_client_with_right_certificate(etcd_tls: EtcdProcess) -> None:
    assert etcd_tls.endpoint.startswith("https://127.0.0.1:")
    async with EtcdClient(etcd_tls.client_config("root")) as client:
        assert client.user == "root"
        await client.put("k", b"v")
        kv = await client.get("k")
        assert kv is not None and kv.value == b"v"


async def test_client_without_certificate_is_refused(etcd_tls: EtcdProcess) -> None:
    cfg = etcd_tls.client_config(None, dial_timeout=2.0)
    assert cfg.cert_file is None
    with pytest.raises(KVStoreUnavailableError, match="TLS handshake failed"):
        async with EtcdClient(cfg):
            pass


async def test_certificate_from_another_ca_is_refused(etcd_tls: EtcdProcess, tmp_path: Path) -> None:
    other = EtcdPKI(tmp_path / "other-pki").client("root")
    cfg = dataclasses.replace(
        etcd_tls.client_config("root", dial_timeout=2.0), cert_file=other.cert_file, key_file=other.key_file
    )
    with pytest.raises(KVStoreUnavailableError, match="TLS handshake failed"):
        async with EtcdClient(cfg):
            pass


async def test_server_from_untrusted_ca_is_refused(etcd_tls: EtcdProcess, tmp_path: Path) -> None:
    other = EtcdPKI(tmp_path / "other-pki")
    cfg = dataclasses.replace(etcd_tls.client_config("root", dial_timeout=2.0), trusted_ca_file=other.ca_file)
    with pytest.raises(KVStoreUnavailableError, match="trusted-ca-file"):
        async with EtcdClient(cfg):
            pass


async def test_host_alias_dials_ip_and_verifies_hostname(etcd_tls: EtcdProcess) -> None:
    port = etcd_tls.ports.client
    base = etcd_tls.client_config("root")
    cfg = dataclasses.replace(
        base,
        endpoints=[f"https://cluster1.mesh.cilium.io:{port}"],
        host_aliases={"cluster1.mesh.cilium.io": ["127.0.0.1"]},
    )
    async with EtcdClient(cfg) as client:
        await client.put("k", b"v")
        assert "cluster1.mesh.cilium.io" in client.endpoint
    wrong = dataclasses.replace(cfg, tls_server_name="etcd.example.com", dial_timeout=2.0)
    with pytest.raises(KVStoreUnavailableError, match="TLS handshake failed"):
        async with EtcdClient(wrong):
            pass


async def test_auth_user_comes_from_certificate_cn(etcd_factory: Callable[..., EtcdProcess]) -> None:
    etcd = etcd_factory("auth", tls=True)
    async with EtcdClient(etcd.client_config("root")) as root:
        await root.put("cilium/state/nodes/v1/c1/n1", b"node")
        await root.put("cilium/secret", b"s")
        # What Cilium's etcdinit does: users without passwords, a read-only role, then auth on.
        await root.user_add("root")
        await root.user_grant_role("root", "root")
        await root.role_add("remote")
        await root.role_grant_permission("remote", "cilium/state/", prefix=True, permission="read")
        await root.role_grant_permission("remote", "cilium/.heartbeat", permission=Permission.READ)
        await root.user_add("remote")
        await root.user_grant_role("remote", "remote")
        await root.auth_enable()
        assert sorted(await root.user_list()) == ["remote", "root"]
        assert await root.user_get("remote") == ["remote"]
        assert await root.role_list() == ["remote"]  # etcd 3.4 does not list its built-in root role
        assert RolePermission(Permission.READ, b"cilium/state/", b"cilium/state0") in await root.role_get(
            "remote"
        )
        await root.put("cilium/state/nodes/v1/c1/n2", b"node2")  # root may still write

    async with EtcdClient(etcd.client_config("remote")) as remote:
        assert remote.user == "remote"
        listed = await remote.list_prefix("cilium/state/")
        assert [kv.key for kv in listed.items] == [
            "cilium/state/nodes/v1/c1/n1",
            "cilium/state/nodes/v1/c1/n2",
        ]
        async with contextlib.aclosing(remote.watch("cilium/state/", start_revision=listed.revision + 1)):
            pass
        for write in (
            remote.put("cilium/state/nodes/v1/c1/n1", b"evil"),
            remote.delete("cilium/state/nodes/v1/c1/n1"),
            remote.delete_prefix("cilium/"),
            remote.txn([PutOp("cilium/state/x", b"evil")]),
        ):
            with pytest.raises(KVStoreAuthError, match="'remote'"):
                await write
        await remote.grant_lease(10)  # etcd 3.4 does not check permissions on lease grants
        with pytest.raises(KVStoreAuthError, match="cilium/secret"):
            await remote.get("cilium/secret")
        with pytest.raises(KVStoreAuthError, match="read permission"):
            async with contextlib.aclosing(remote.watch("cilium/", start_revision=1)) as it:
                await anext(it)

    async with EtcdClient(etcd.client_config("nobody")) as unknown:
        with pytest.raises(KVStoreAuthError, match="'nobody'"):
            await unknown.get("cilium/state/nodes/v1/c1/n1")

    async with EtcdClient(etcd.client_config("root")) as root:
        await root.auth_disable()
        await root.user_delete("remote")
        assert await root.user_list() == ["root"]


def test_config_paths_are_paths(etcd_tls: EtcdProcess) -> None:
    cfg = etcd_tls.client_config("root")
    assert isinstance(cfg, EtcdClientConfig)
    assert cfg.cert_file is not None and cfg.cert_file.is_file()
    assert cfg.uses_tls
