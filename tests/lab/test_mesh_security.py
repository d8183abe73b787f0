"""Issue 9 acceptance: a remote cluster's credentials cannot write its peer's etcd.

In a lab with the mesh (`clustermesh lab up`: enable both clusters, connect them), take c1's
entry of c2's `cilium-clustermesh` Secret, the etcd config and client certificate c2's agents
use to read c1, and from inside a c2 node's network namespace connect to c1's clustermesh etcd
through its NodePort on c1's node IPs, as those agents do. Reads of `cilium/state` work; every
kind of write is refused by etcd (puts, deletes, a transaction, revoking the exporter's lease,
granting itself more, disabling auth), and nothing changed. The same with `etcdctl`, an
independent client. And c2's own, most powerful certificate (its API server's admin, root of
c2's etcd) gets nowhere in c1's."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from clustermesh_cli.install import names
from lab.driver import PROJECT, LabDriver

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
              pytest.mark.timeout(420)]
NS = "kube-system"
PROBE = PROJECT / "tests" / "lab" / "etcd_peer_probe.py"


@pytest.fixture(scope="module")
def meshed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabDriver]:
    driver = LabDriver("s" + secrets.token_hex(3)[:5], tmp_path_factory.mktemp("sec") / "kubeconfig")
    try:
        out = driver.up(2, 2, timeout=300)
        assert f"mesh of lab {driver.name!r} is ready" in out.stdout, out.stdout + out.stderr
        yield driver
    finally:
        driver.down()


def _secret(driver: LabDriver, cluster: str, name: str) -> dict[str, bytes]:
    doc = driver.get(cluster, "secret", name, "-n", NS)
    return {k: base64.b64decode(v) for k, v in (doc.get("data") or {}).items()}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def _peer_entry(driver: LabDriver, tmp: Path) -> tuple[Path, dict[str, Any]]:
    """c1's entry of c2's cilium-clustermesh Secret, its files in ``tmp`` (the config pointing at them)."""
    data = _secret(driver, "c2", names.CLUSTERMESH_SECRET)
    config = yaml.safe_load(data["c1"])
    for field in ("trusted-ca-file", "cert-file", "key-file"):
        name = Path(config[field]).name
        config[field] = str(_write(tmp / name, data[name]))
    path = _write(tmp / "c1", yaml.safe_dump(config).encode())
    return path, config


def _in_c2_node(driver: LabDriver, *argv: str) -> subprocess.CompletedProcess[str]:
    netns = driver.spec.node("c2-n0").netns
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=60,
                          cwd=PROJECT, env={**os.environ, "PYTHONPATH": str(PROJECT)})


def _probe(driver: LabDriver, config: Path) -> dict[str, Any]:
    out = _in_c2_node(driver, str(PROJECT / ".venv" / "bin" / "python"), str(PROBE), str(config), "c1")
    assert out.returncode == 0, out.stdout + out.stderr
    return dict(json.loads(out.stdout))


def test_c2s_credentials_for_c1_read_but_cannot_write(meshed: LabDriver, tmp_path: Path) -> None:
    config, entry = _peer_entry(meshed, tmp_path)
    c1_ips = {n.internal_ip for n in meshed.spec.cluster("c1").nodes}
    aliases = {ip for alias in entry.get("cilium-host-aliases") or [] for ip in alias["ips"]}
    assert aliases == c1_ips, entry  # the NodePort on c1's node IPs, as connect wrote it

    doc = _probe(meshed, config)
    assert doc["connected"] and doc["user"] == "remote", doc
    assert any(ip in doc["endpoint"] for ip in c1_ips), doc["endpoint"]
    assert doc["read"]["node keys of the peer"] == len(meshed.spec.cluster("c1").nodes), doc["read"]
    assert doc["read"]["cluster config"], doc["read"]
    assert len(doc["writes"]) >= 10, doc["writes"]
    for what, result in doc["writes"].items():
        assert result.startswith("denied: ") and "permission denied" in result, f"{what}: {result}"
    victim = doc["victim"]
    assert victim["lease"] and victim["mod_revision_after"] == victim["mod_revision"], victim  # untouched
    assert not doc["intruder_exists"]
    assert doc["read outside its grants"].startswith("denied: "), doc["read outside its grants"]


def test_etcdctl_with_the_same_certificate_is_refused_writes(meshed: LabDriver, tmp_path: Path) -> None:
    """An independent client. etcdctl 3.4 cannot dial a host alias, and c1's server certificate
    names *.mesh.cilium.io, not node IPs: so it skips verifying the server (never the other way
    round: etcd still authenticates the client by its certificate)."""
    _, entry = _peer_entry(meshed, tmp_path)
    node_ip = meshed.spec.cluster("c1").nodes[0].internal_ip
    base = ["etcdctl", f"--endpoints=https://{node_ip}:{names.DEFAULT_NODE_PORT}",
            f"--cacert={entry['trusted-ca-file']}", f"--cert={entry['cert-file']}", f"--key={entry['key-file']}",
            "--insecure-skip-tls-verify", "--command-timeout=10s"]
    prefix = "cilium/state/nodes/v1/c1/"
    listed = _in_c2_node(meshed, *base, "get", "--prefix", "--keys-only", prefix)
    assert listed.returncode == 0, listed.stderr
    keys = [line for line in listed.stdout.splitlines() if line.strip()]
    assert sorted(keys) == sorted(prefix + n.name for n in meshed.spec.cluster("c1").nodes), keys
    for attempt in (["put", prefix + "intruder", "{}"], ["put", keys[0], "{}"], ["del", keys[0]],
                    ["del", "--prefix", "cilium/"], ["user", "grant-role", "remote", "root"], ["auth", "disable"]):
        out = _in_c2_node(meshed, *base, *attempt)
        assert out.returncode != 0 and "permission denied" in out.stderr, (attempt, out.stdout, out.stderr)
    again = _in_c2_node(meshed, *base, "get", "--prefix", "--keys-only", prefix)
    assert [line for line in again.stdout.splitlines() if line.strip()] == keys


def test_c2s_own_admin_certificate_gets_nowhere_in_c1(meshed: LabDriver, tmp_path: Path) -> None:
    """c2's API server admin certificate is root of c2's etcd; c1's etcd does not take it (each
    `enable` made its own CA here): refused before any read or write."""
    _, entry = _peer_entry(meshed, tmp_path)
    admin = _secret(meshed, "c2", names.ADMIN_CERT_SECRET)
    config = {**entry, "cert-file": str(_write(tmp_path / "admin.crt", admin["tls.crt"])),
              "key-file": str(_write(tmp_path / "admin.key", admin["tls.key"]))}
    doc = _probe(meshed, _write(tmp_path / "c1-as-admin", yaml.safe_dump(config).encode()))
    # The same config with c1's remote certificate connects (above): only the certificate differs.
    assert not doc["connected"], doc
    assert doc["error"].startswith("KVStoreUnavailableError"), doc["error"]  # refused in the TLS handshake
