"""The install's Secrets (clustermesh_cli.install.secrets, .certificates): layout, real certificates,
and peer entries read back by the agents' own etcd config loader."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography import x509

from clustermesh_cli.install import (
    certificate_secrets,
    cilium_clustermesh_secret,
    issue_cluster_certificates,
    names,
    peer_entry,
    secret_peers,
    with_peer,
    without_peer,
)
from clustermesh_cli.install.secrets import TLS_SECRET_TYPE, PeerEntry, TLSMaterial, peer_etcd_config, secret_data
from meshcore.errors import ConfigError
from meshcore.kvstore.config import load_etcd_config
from meshcore.pki import CertificateAuthority, certificate_common_name

NS = "kube-system"


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("clustermesh-c1-ca")


def material(tag: str) -> TLSMaterial:
    return TLSMaterial(ca_pem=f"ca-{tag}".encode(), cert_pem=f"crt-{tag}".encode(), key_pem=f"key-{tag}".encode())


def test_issued_certificates_have_ciliums_names_and_chain_to_the_ca(ca: CertificateAuthority) -> None:
    certs = issue_cluster_certificates(ca, "c1", "mesh", extra_server_names=["192.0.2.10", "lb.example.com"])
    ca_cert = x509.load_pem_x509_certificate(certs.ca_cert_pem)
    expected = {"server": "clustermesh-apiserver.mesh.svc", "admin": "admin-c1", "remote": "remote",
                "local": "local-c1"}
    for field, cn in expected.items():
        m: TLSMaterial = getattr(certs, field)
        assert m.ca_pem == certs.ca_cert_pem
        assert certificate_common_name(m.cert_pem) == cn
        x509.load_pem_x509_certificate(m.cert_pem).verify_directly_issued_by(ca_cert)
    san = x509.load_pem_x509_certificate(certs.server.cert_pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {
        "clustermesh-apiserver.mesh.svc", "*.mesh.cilium.io", "localhost", "lb.example.com"}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1", "192.0.2.10"}
    assert certs.ca_key_pem == ca.keypair.key_pem


def test_certificate_secrets_layout(ca: CertificateAuthority) -> None:
    certs = issue_cluster_certificates(ca, "c1", NS)
    secrets = certificate_secrets(NS, certs)
    assert [(s["metadata"]["name"], s["type"]) for s in secrets] == [
        (names.CA_SECRET, "Opaque"),
        (names.SERVER_CERT_SECRET, TLS_SECRET_TYPE),
        (names.ADMIN_CERT_SECRET, TLS_SECRET_TYPE),
        (names.REMOTE_CERT_SECRET, TLS_SECRET_TYPE),
        (names.LOCAL_CERT_SECRET, TLS_SECRET_TYPE),
    ]
    assert secret_data(secrets[0]) == {"ca.crt": certs.ca_cert_pem, "ca.key": certs.ca_key_pem}
    assert secret_data(secrets[3]) == {"ca.crt": certs.remote.ca_pem, "tls.crt": certs.remote.cert_pem,
                                       "tls.key": certs.remote.key_pem}
    for s in secrets:
        assert s["metadata"]["namespace"] == NS
        assert s["metadata"]["labels"] == {names.PART_OF_LABEL: names.PART_OF}
        assert list(s["data"]) == sorted(s["data"])  # stable order
    assert set(s["metadata"]["name"] for s in secrets) | {names.CLUSTERMESH_SECRET} == set(names.RUNTIME_SECRETS)


def test_peer_entry_is_read_by_the_agents_loader(tmp_path: Path) -> None:
    remote = material("c2")
    entry = peer_entry("c2", remote, ips=["192.168.2.1", "192.168.2.2"], port=32379)
    secret = cilium_clustermesh_secret(NS, [entry])
    assert sorted(secret["data"]) == ["c2", "c2.etcd-client-ca.crt", "c2.etcd-client.crt", "c2.etcd-client.key"]
    # materialise the Secret as its volume does, with the entry's paths pointing into that directory
    entry_here = PeerEntry("c2", peer_etcd_config("c2", ips=["192.168.2.1", "192.168.2.2"], port=32379,
                                                  config_dir=str(tmp_path)), remote.ca_pem, remote.cert_pem,
                           remote.key_pem)
    for key, value in entry_here.data().items():
        (tmp_path / key).write_bytes(value)
    cfg = load_etcd_config(tmp_path / "c2")
    assert list(cfg.endpoints) == ["https://c2.mesh.cilium.io:32379"]
    assert dict(cfg.host_aliases) == {"c2.mesh.cilium.io": ("192.168.2.1", "192.168.2.2")}
    assert cfg.trusted_ca_file == tmp_path / "c2.etcd-client-ca.crt"
    assert (cfg.cert_file, cfg.key_file) == (tmp_path / "c2.etcd-client.crt", tmp_path / "c2.etcd-client.key")
    # the default paths are the mount point's
    assert "/var/lib/cilium/clustermesh/c2.etcd-client.crt" in entry.etcd_config
    assert entry.etcd_config.startswith("endpoints:\n- https://c2.mesh.cilium.io:32379\n")


def test_peer_entry_by_address(tmp_path: Path) -> None:
    for address, endpoint in (("lb.example.com", "https://lb.example.com:2379"), ("fd00::5", "https://[fd00::5]:2379")):
        text = peer_etcd_config("c3", address=address, config_dir=str(tmp_path))
        (tmp_path / "c3").write_text(text)
        for key in (names.peer_ca_key("c3"), names.peer_cert_key("c3"), names.peer_key_key("c3")):
            (tmp_path / key).write_bytes(b"x")
        cfg = load_etcd_config(tmp_path / "c3")
        assert list(cfg.endpoints) == [endpoint] and not cfg.host_aliases
        assert "cilium-host-aliases" not in text


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"peer": "C2", "ips": ["10.0.0.1"]}, "peer cluster name"),
    ({"peer": "c2"}, "give either the IPs to reach it or one address"),
    ({"peer": "c2", "ips": ["10.0.0.1"], "address": "x"}, "not both or neither"),
    ({"peer": "c2", "ips": ["10.0.0.999"]}, "'10.0.0.999' is not an IP address"),
    ({"peer": "c2", "ips": ["10.0.0.1"], "port": 0}, "port 0 is not a TCP port"),
])
def test_peer_config_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        peer_etcd_config(**kwargs)  # type: ignore[arg-type]
    assert message in str(err.value)


def test_editing_the_cilium_clustermesh_secret() -> None:
    c2 = peer_entry("c2", material("c2"), ips=["192.168.2.1"])
    c3 = peer_entry("c3", material("c3"), ips=["192.168.3.1"])
    empty = cilium_clustermesh_secret(NS, [])
    assert empty["data"] == {} and secret_peers(empty) == {}
    assert secret_peers(None) == {}
    both = with_peer(with_peer(None, NS, c2), NS, c3)
    assert both == cilium_clustermesh_secret(NS, [c2, c3])
    assert secret_peers(both) == {"c2": c2, "c3": c3}
    # replacing an entry changes only that peer's keys
    c2_moved = peer_entry("c2", material("c2-new"), ips=["192.168.2.9"])
    replaced = with_peer(both, NS, c2_moved)
    assert secret_peers(replaced) == {"c2": c2_moved, "c3": c3}
    # removing one keeps the other and keys that are not entries (a hand-added file, say)
    both["data"]["notes.txt"] = base64.b64encode(b"kept").decode()
    after = without_peer(both, NS, "c2")
    assert secret_peers(after) == {"c3": c3}
    assert secret_data(after)["notes.txt"] == b"kept"
    assert without_peer(after, NS, "c9")["data"] == after["data"]
    with pytest.raises(ConfigError, match="c2 is listed twice"):
        cilium_clustermesh_secret(NS, [c2, c2_moved])


def test_secret_peers_reads_ciliums_own_layout() -> None:
    """A Secret written by Cilium's Helm chart (common-etcd-client files, no per-peer files)."""
    config = (b"endpoints:\n- https://c2.mesh.cilium.io:2379\n"
              b"trusted-ca-file: /var/lib/cilium/clustermesh/common-etcd-client-ca.crt\n")
    secret = {"metadata": {"name": names.CLUSTERMESH_SECRET}, "data": {
        "c2": base64.b64encode(config).decode(), "c9": base64.b64encode(b"not a config").decode()}}
    peers = secret_peers(secret)
    assert list(peers) == ["c2"]
    assert peers["c2"].etcd_config == config.decode() and peers["c2"].ca_pem == b""


def test_secret_data_rejects_bad_base64() -> None:
    with pytest.raises(ConfigError, match="secret x: key 'k' is not valid base64"):
        secret_data({"metadata": {"name": "x"}, "data": {"k": "%%%"}})
    assert secret_data({"stringData": {"a": "b"}}) == {"a": b"b"}
