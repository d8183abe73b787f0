"""X.509 material for etcd mTLS: a CA, server certificates with SANs, client certificates.

etcd started with ``--client-cert-auth`` and auth enabled takes the user name from the client
certificate's CN, so a client certificate *is* an etcd identity (``remote``, ``admin-<cluster>``).
Keys are ECDSA P-256. Every file is written with mode 0600 from the moment it is created (a
temporary file opened with that mode, then renamed into place), so private material is never
readable by others, not even briefly.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshcore.errors import ConfigError

PRIVATE_FILE_MODE = 0o600
# File names of a Kubernetes TLS secret (what Cilium's Helm chart mounts).
CA_FILE = "ca.crt"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"

_BACKDATE = datetime.timedelta(minutes=5)  # tolerate small clock skew between machines


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A certificate with its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """Paths of a TLS file set: the CA that verifies the peer, our certificate and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


class CertificateAuthority:
    """A self-signed CA that issues server and client certificates."""

    def __init__(self, keypair: KeyPair) -> None:
        self.keypair = keypair

    @classmethod
    def create(cls, common_name: str = "clustermesh-ca", *, valid_days: int = 3650) -> CertificateAuthority:
        """Create a new self-signed CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(KeyPair(cert, key))

    @classmethod
    def load(cls, cert_file: Path, key_file: Path) -> CertificateAuthority:
        """Load a CA from PEM files; raises :class:`ConfigError` if they are unusable."""
        try:
            cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
            key = serialization.load_pem_private_key(Path(key_file).read_bytes(), password=None)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot load CA from {cert_file} / {key_file}: {e}") from e
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"CA key {key_file} is not an ECDSA key")
        return cls(KeyPair(cert, key))

    @property
    def cert_pem(self) -> bytes:
        return self.keypair.cert_pem

    def issue_server(
        self,
        common_name: str,
        *,
        dns_names: Iterable[str] = (),
        ip_addresses: Iterable[str] = (),
        valid_days: int = 365,
    ) -> KeyPair:
        """Issue a server certificate (also usable as client, like etcd's peer certs) with SANs."""
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        return self._issue(common_name, sans, usages, valid_days)

    def issue_client(self, common_name: str, *, valid_days: int = 365) -> KeyPair:
        """Issue a client certificate; with etcd auth on, ``common_name`` is the etcd user."""
        return self._issue(common_name, [], [ExtendedKeyUsageOID.CLIENT_AUTH], valid_days)

    def _issue(
        self,
        common_name: str,
        sans: list[x509.GeneralName],
        usages: list[x509.ObjectIdentifier],
        valid_days: int,
    ) -> KeyPair:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        ca_cert = self.keypair.cert
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.keypair.key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return KeyPair(builder.sign(self.keypair.key, hashes.SHA256()), key)


def write_private_file(path: Path | str, data: bytes) -> Path:
    """Atomically write ``data`` to ``path`` as a mode-0600 file.

    The temporary file is created with mode 0600 (``mkstemp``) in the target directory and renamed
    over ``path``, so readers see either the old or the new content and never a wider mode.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # mkstemp already uses 0600; make it exact regardless
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_tls_files(directory: Path | str, ca_cert_pem: bytes, keypair: KeyPair) -> TLSFiles:
    """Write ``ca.crt``, ``tls.crt`` and ``tls.key`` (all mode 0600) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return TLSFiles(
        ca_file=write_private_file(directory / CA_FILE, ca_cert_pem),
        cert_file=write_private_file(directory / CERT_FILE, keypair.cert_pem),
        key_file=write_private_file(directory / KEY_FILE, keypair.key_pem),
    )


def certificate_common_name(cert_pem: bytes) -> str | None:
    """Return the CN of a PEM certificate, or None if it has none."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode()
