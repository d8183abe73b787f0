"""meshcore.pki: certificates that verify, with the right names, in files nobody else can read."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshcore.errors import ConfigError
from meshcore.pki import (
    CertificateAuthority,
    certificate_common_name,
    write_private_file,
    write_tls_files,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_server_certificate_sans_and_chain() -> None:
    ca = CertificateAuthority.create("test-ca")
    server = ca.issue_server(
        "clustermesh-apiserver.kube-system.svc",
        dns_names=["clustermesh-apiserver.kube-system.svc", "*.mesh.cilium.io"],
        ip_addresses=["127.0.0.1", "::1"],
    )
    server.cert.verify_directly_issued_by(ca.keypair.cert)
    san = server.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [
        "clustermesh-apiserver.kube-system.svc",
        "*.mesh.cilium.io",
    ]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert certificate_common_name(server.cert_pem) == "clustermesh-apiserver.kube-system.svc"
    eku = server.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert ca.keypair.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_client_certificate_cn_is_the_user() -> None:
    ca = CertificateAuthority.create()
    client = ca.issue_client("remote")
    client.cert.verify_directly_issued_by(ca.keypair.cert)
    assert certificate_common_name(client.cert_pem) == "remote"
    eku = client.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    other = CertificateAuthority.create()
    with pytest.raises(InvalidSignature):  # same issuer name, other key
        client.cert.verify_directly_issued_by(other.keypair.cert)


def test_tls_files_are_private_even_with_open_umask(tmp_path: Path) -> None:
    ca = CertificateAuthority.create()
    old = os.umask(0)
    try:
        files = write_tls_files(tmp_path / "secret", ca.cert_pem, ca.issue_client("admin-c1"))
    finally:
        os.umask(old)
    assert [p.name for p in (files.ca_file, files.cert_file, files.key_file)] == [
        "ca.crt",
        "tls.crt",
        "tls.key",
    ]
    for path in (files.ca_file, files.cert_file, files.key_file):
        assert mode(path) == 0o600
    assert b"PRIVATE KEY" in files.key_file.read_bytes()
    assert sorted(p.name for p in files.key_file.parent.iterdir()) == [
        "ca.crt",
        "tls.crt",
        "tls.key",
    ]  # no temp files


def test_overwrite_replaces_atomically_and_narrows_mode(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_private_file(path, b"new")
    assert path.read_bytes() == b"new" and mode(path) == 0o600


def test_ca_round_trip(tmp_path: Path) -> None:
    ca = CertificateAuthority.create()
    cert = write_private_file(tmp_path / "ca.crt", ca.cert_pem)
    key = write_private_file(tmp_path / "ca.key", ca.keypair.key_pem)
    loaded = CertificateAuthority.load(cert, key)
    loaded.issue_client("x").cert.verify_directly_issued_by(ca.keypair.cert)
    with pytest.raises(ConfigError, match="cannot load CA"):
        CertificateAuthority.load(tmp_path / "missing", key)
