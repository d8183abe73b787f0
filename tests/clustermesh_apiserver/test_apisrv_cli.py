"""The command lines: ``clustermesh-apiserver`` flag errors (exit 2 with a message naming the
flag), a real daemon process that becomes ready and stops cleanly on SIGTERM, and
``clustermesh certs generate`` (file modes, SANs, CNs, refusing to overwrite a CA)."""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner
from cryptography import x509

from clustermesh_apiserver.cli import main
from clustermesh_cli.main import cli
from lab.etcd import EtcdProcess, free_port
from lab.kube.api import K8sApiServer
from lab.wait import poll_until
from meshcore.kvstore.client import EtcdClient
from meshcore.pki import certificate_common_name
from meshcore.wire import keys as wk

BASE = ["clustermesh", "--cluster-name", "c1", "--cluster-id", "1", "--etcd-endpoints", "http://127.0.0.1:2379"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["clustermesh", "--cluster-id", "1", "--etcd-endpoints", "http://127.0.0.1:2379"], "--cluster-name"),
        ([*BASE[:3], "--cluster-id", "0", *BASE[5:]], "cluster ID 0 is reserved"),
        ([*BASE[:3], "--cluster-id", "256", *BASE[5:]], "out of range 1..255"),
        ([*BASE, "--max-connected-clusters", "300"], "255 or 511"),
        (["clustermesh", "--cluster-name", "Bad_Name", "--cluster-id", "1", *BASE[5:]], "lowercase alphanumerics"),
        (["clustermesh", "--cluster-name", "c1", "--cluster-id", "1"], "which etcd?"),
        ([*BASE, "--kvstore-opt", "etcd.config"], "KEY=VALUE"),
        ([*BASE[:5], "--kvstore-opt", "etcd.foo=1", *BASE[5:]], "etcd.foo is not supported"),
        ([*BASE, "--etcd-config", "/nonexistent.yaml"], "either an etcd config file or --etcd-endpoints"),
        ([*BASE[:5], "--etcd-endpoints", "ftp://x:1"], "must start with http:// or https://"),
        ([*BASE, "--source", "calico"], "'calico' is not one of"),
        ([*BASE, "--clustermesh-service-v2", "sometimes"], "'sometimes' is not one of"),
        ([*BASE, "--clustermesh-default-global-namespace", "maybe"], "not a valid boolean"),
        ([*BASE, "--no-such-flag"], "No such option"),
        (["etcdinit", "--cluster-name", "c1", "--peers", "C2", "--etcd-endpoints", "http://127.0.0.1:2379"],
         "lowercase alphanumerics"),
    ],
)
def test_flag_errors_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_help_teaches() -> None:
    result = CliRunner().invoke(main, ["clustermesh", "--help"])
    assert result.exit_code == 0
    for text in ("cilium/state/ip/v1/default/<ip>", "--kvstore-opt", "/readyz", "SIGTERM", "Example:"):
        assert text in result.output
    result = CliRunner().invoke(main, ["etcdinit", "--help"])
    assert "remote-<peer>" in result.output and "clustermesh certs generate" in result.output


async def test_daemon_process_ready_then_sigterm(tmp_path: Path, etcd: EtcdProcess, etcd_client: EtcdClient) -> None:
    port = free_port()
    async with K8sApiServer(bookmark_interval=0.5) as emulator:
        kubeconfig = emulator.write_kubeconfig(tmp_path / "kubeconfig")
        etcd_yaml = etcd.write_config_yaml(tmp_path / "etcd.yaml")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clustermesh_apiserver", "--log-level", "warning", "clustermesh",
            "--cluster-name", "c1", "--cluster-id", "1", "--kvstore-opt", f"etcd.config={etcd_yaml}",
            "--kvstore-opt", "etcd.qps=100", "--kubeconfig", str(kubeconfig), "--health-port", str(port),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            async def ready() -> bool:
                try:
                    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/readyz") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            assert await poll_until(ready, within=20, interval=0.1)
            assert await etcd_client.get(wk.cluster_config_key("c1")) is not None
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                _, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        # A graceful stop leaves the keys (and their leases) in place.
        assert await etcd_client.get(wk.cluster_config_key("c1")) is not None


def test_certs_generate(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    args = ["certs", "generate", "--cluster-name", "c1", "--peers", "c2,c3", "--out", str(out),
            "--san", "203.0.113.7", "--san", "mesh.example.org"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    dirs = {"server", "admin-c1", "local-c1", "remote", "remote-c2", "remote-c3"}
    assert {p.name for p in out.iterdir()} == dirs | {"ca"}
    for path in out.rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o777 == 0o600, path
    for name in dirs - {"server"}:
        assert certificate_common_name((out / name / "tls.crt").read_bytes()) == name
        assert (out / name / "ca.crt").read_bytes() == (out / "ca" / "ca.crt").read_bytes()
    server = x509.load_pem_x509_certificate((out / "server" / "tls.crt").read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {
        "clustermesh-apiserver.kube-system.svc", "*.mesh.cilium.io", "localhost", "mesh.example.org",
    }
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "203.0.113.7")
    }
    ca_before = (out / "ca" / "ca.crt").read_bytes()

    again = CliRunner().invoke(cli, ["certs", "generate", "--cluster-name", "c1", "--out", str(out)])
    assert again.exit_code == 1 and "already exists" in again.output
    assert (out / "ca" / "ca.crt").read_bytes() == ca_before
    reuse = CliRunner().invoke(cli, ["certs", "generate", "--cluster-name", "c1", "--out", str(tmp_path / "more"),
                                     "--ca", str(out / "ca")])
    assert reuse.exit_code == 0 and (tmp_path / "more" / "server" / "ca.crt").read_bytes() == ca_before
    forced = CliRunner().invoke(cli, ["certs", "generate", "--cluster-name", "c1", "--out", str(out), "--force"])
    assert forced.exit_code == 0 and (out / "ca" / "ca.crt").read_bytes() != ca_before
    bad = CliRunner().invoke(cli, ["certs", "generate", "--cluster-name", "C1", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2
