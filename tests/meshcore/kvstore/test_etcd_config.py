"""Loading Cilium's etcd config YAML (clientv3 format plus cilium-host-aliases)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshcore.errors import ConfigError
from meshcore.kvstore.config import EtcdClientConfig, load_etcd_config


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    for name in ("ca.crt", "tls.crt", "tls.key"):
        (tmp_path / name).write_text("x")
    return tmp_path


def write(directory: Path, text: str) -> Path:
    path = directory / "cluster2"
    path.write_text(text)
    return path


def test_cilium_config_with_relative_paths_and_aliases(certs: Path) -> None:
    cfg = load_etcd_config(
        write(
            certs,
            """
endpoints:
- https://cluster2.mesh.cilium.io:2379
trusted-ca-file: ca.crt
key-file: tls.key
cert-file: tls.crt
dial-timeout: 3s
cilium-host-aliases:
- hostname: cluster2.mesh.cilium.io
  ips: [172.18.255.201, "fd00::1"]
""",
        )
    )
    assert cfg.endpoints == ("https://cluster2.mesh.cilium.io:2379",)
    assert cfg.trusted_ca_file == certs / "ca.crt"
    assert cfg.cert_file == certs / "tls.crt" and cfg.key_file == certs / "tls.key"
    assert cfg.host_aliases == {"cluster2.mesh.cilium.io": ("172.18.255.201", "fd00::1")}
    assert cfg.dial_timeout == 3.0
    assert cfg.uses_tls


def test_plain_config_and_go_duration_nanoseconds(tmp_path: Path) -> None:
    cfg = load_etcd_config(write(tmp_path, "endpoints: [http://127.0.0.1:2379]\ndial-timeout: 1500000000\n"))
    assert cfg.endpoints == ("http://127.0.0.1:2379",) and cfg.dial_timeout == 1.5
    assert cfg.trusted_ca_file is None and not cfg.uses_tls


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("endpoints: [http://a:1\n", "not valid YAML"),
        ("- http://a:1\n", "must be a YAML mapping"),
        ("trusted-ca-file: ca.crt\n", "'endpoints' is missing"),
        ("endpoints: []\n", "'endpoints' is missing"),
        ("endpoints: [1, 2]\n", "list of URL strings"),
        ("endpoints: [etcd:2379]\n", "must start with http:// or https://"),
        ("endpoints: ['https://host:99999']\n", "not a valid URL"),
        ("endpoints: ['https://host:2379/v3']\n", "must not have a path"),
        ("endpoints: ['http://a:1', 'https://b:2']\n", "mixes http:// and https://"),
        (
            "endpoints: ['https://a:1']\ntrusted-ca-file: missing.crt\n",
            "'trusted-ca-file' names .*missing.crt",
        ),
        ("endpoints: ['https://a:1']\ncert-file: tls.crt\n", "'cert-file' is set but 'key-file' is not"),
        ("endpoints: ['https://a:1']\nkey-file: tls.key\n", "'key-file' is set but 'cert-file' is not"),
        ("endpoints: ['https://a:1']\nusername: u\npassword: p\n", "'username'.*not supported"),
        ("endpoints: ['https://a:1']\ninsecure-skip-tls-verify: true\n", "insecure-skip-tls-verify"),
        ("endpoints: ['https://a:1']\ncilium-host-aliases: {a: b}\n", "must be a list"),
        ("endpoints: ['https://a:1']\ncilium-host-aliases: [{hostname: a}]\n", r"cilium-host-aliases\[0\]"),
        (
            "endpoints: ['https://a:1']\ncilium-host-aliases: [{hostname: a, ips: [nope]}]\n",
            "not an IP address",
        ),
        ("endpoints: ['https://a:1']\ndial-timeout: soon\n", "'dial-timeout' must be a positive duration"),
    ],
)
def test_config_errors_name_file_and_field(certs: Path, text: str, match: str) -> None:
    path = write(certs, text)
    with pytest.raises(ConfigError, match=match) as exc:
        load_etcd_config(path)
    assert str(path) in str(exc.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read etcd config .*nope"):
        load_etcd_config(tmp_path / "nope")


def test_dataclass_validation() -> None:
    cfg = EtcdClientConfig(["http://127.0.0.1:2379"])
    assert cfg.endpoints == ("http://127.0.0.1:2379",)
    with pytest.raises(ConfigError, match="'endpoints' is empty"):
        EtcdClientConfig([])
    with pytest.raises(ConfigError, match="'request-timeout' must be positive"):
        EtcdClientConfig(["http://a:1"], request_timeout=0)
    with pytest.raises(ConfigError, match="'cert-file' is set"):
        EtcdClientConfig(["https://a:1"], cert_file=Path("/x"))
