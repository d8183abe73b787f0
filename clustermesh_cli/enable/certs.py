"""The CA and certificates of ``enable``: reuse what the cluster has when it is still good.

- The CA is the ``cilium-ca`` Secret's (``ca.crt`` + ``ca.key``) when it exists, as cilium-cli
  does, so a cluster that already runs Cilium keeps its CA; otherwise a new one is made.
- Each ``clustermesh-apiserver-*-cert`` Secret is kept when it still matches what would be issued
  now (same subject and names, signed by this CA, its key matching, more than
  :data:`RENEW_BEFORE` left), and issued anew otherwise. Re-running ``enable`` therefore writes
  nothing, and changing the cluster's name or the CA reissues exactly what depends on it.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clustermesh_cli.install import names
from clustermesh_cli.install.certificates import issue_cluster_certificates
from clustermesh_cli.install.secrets import ClusterCertificates, TLSMaterial
from meshcore.errors import MeshError
from meshcore.pki import CertificateAuthority, KeyPair

__all__ = ["CA_COMMON_NAME", "RENEW_BEFORE", "CertificatePlan", "CertificateError", "load_ca", "plan_certificates",
           "reuse_problem"]

CA_COMMON_NAME: Final = "cilium-ca"
#: A certificate with less than this left is reissued.
RENEW_BEFORE: Final = datetime.timedelta(days=30)
#: The certificate Secrets, by the field of :class:`ClusterCertificates` they hold.
CERT_SECRETS: Final = {
    "server": names.SERVER_CERT_SECRET,
    "admin": names.ADMIN_CERT_SECRET,
    "remote": names.REMOTE_CERT_SECRET,
    "local": names.LOCAL_CERT_SECRET,
}

SecretData = Mapping[str, bytes]


class CertificateError(MeshError):
    """The cluster's ``cilium-ca`` cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class CertificatePlan:
    """The certificates to store and, per Secret name, ``reused``, ``created`` or ``reissued (why)``."""

    certs: ClusterCertificates
    notes: Mapping[str, str]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def load_ca(data: SecretData | None, *, namespace: str, now: datetime.datetime | None = None
            ) -> CertificateAuthority | None:
    """The CA of an existing ``cilium-ca`` Secret (None when there is none).

    Refuses (:class:`CertificateError`) a CA it cannot sign with rather than replacing it: other
    clusters and tools may trust it."""
    if data is None:
        return None
    where = f"Secret {namespace}/{names.CA_SECRET}"
    fix = (f"fix or delete it (kubectl -n {namespace} delete secret {names.CA_SECRET}; every certificate "
           "is then reissued and peers must be connected again)")
    cert_pem, key_pem = data.get(names.CA_CRT) or data.get(names.TLS_CRT), data.get(names.CA_KEY) or data.get(
        names.TLS_KEY)
    if not cert_pem or not key_pem:
        raise CertificateError(f"{where} has no {'ca.crt' if not cert_pem else 'ca.key'}: enable issues the "
                               f"clustermesh certificates with this CA and needs both; {fix}")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError as err:
        raise CertificateError(f"{where} does not hold a PEM certificate and key ({err}); {fix}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{where} has a {type(key).__name__.lstrip('_')} key; only ECDSA CAs are supported "
                               f"here; {fix}")
    if key.public_key().public_numbers() != _public_numbers(cert):
        raise CertificateError(f"{where}: ca.key is not the key of ca.crt; {fix}")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise CertificateError(f"{where}: ca.crt is not a CA certificate (no basicConstraints CA:TRUE); {fix}")
    if cert.not_valid_after_utc <= (now or _now()):
        raise CertificateError(f"{where}: the CA expired on {cert.not_valid_after_utc:%Y-%m-%d}; {fix}")
    return CertificateAuthority(KeyPair(cert, key))


def _public_numbers(cert: x509.Certificate) -> object:
    public = cert.public_key()
    return public.public_numbers() if isinstance(public, ec.EllipticCurvePublicKey) else None


def _sans(cert: x509.Certificate) -> set[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(n.value) for n in ext}


def reuse_problem(data: SecretData | None, fresh: TLSMaterial, ca: CertificateAuthority, *,
                  now: datetime.datetime | None = None) -> str | None:
    """Why the certificate in ``data`` (a ``kubernetes.io/tls`` Secret's) cannot stand in for
    ``fresh`` (what would be issued now); None when it can be kept."""
    if data is None:
        return "absent"
    if (data.get(names.CA_CRT) or b"").strip() != ca.cert_pem.strip():
        return "its ca.crt is not the current CA"
    try:
        cert = x509.load_pem_x509_certificate(data.get(names.TLS_CRT) or b"")
        key = serialization.load_pem_private_key(data.get(names.TLS_KEY) or b"", password=None)
    except ValueError:
        return "tls.crt or tls.key is not PEM"
    want = x509.load_pem_x509_certificate(fresh.cert_pem)
    if cert.subject != want.subject:
        return f"subject {cert.subject.rfc4514_string()} instead of {want.subject.rfc4514_string()}"
    if not _sans(want) <= _sans(cert):
        return f"missing names {', '.join(sorted(_sans(want) - _sans(cert)))}"
    try:
        cert.verify_directly_issued_by(ca.keypair.cert)
    except (ValueError, TypeError, InvalidSignature):
        return "not signed by the current CA"
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key().public_numbers() != _public_numbers(cert):
        return "tls.key does not match tls.crt"
    moment = now or _now()
    if cert.not_valid_before_utc > moment:
        return "not valid yet"
    if cert.not_valid_after_utc - moment < RENEW_BEFORE:
        return f"expires on {cert.not_valid_after_utc:%Y-%m-%d}"
    return None


def plan_certificates(ca: CertificateAuthority, cluster_name: str, namespace: str,
                      existing: Mapping[str, SecretData | None], *, ca_created: bool,
                      now: datetime.datetime | None = None) -> CertificatePlan:
    """The certificates of ``cluster_name``: those in ``existing`` (Secret name -> decoded data)
    that are still good, freshly issued ones for the rest."""
    fresh = issue_cluster_certificates(ca, cluster_name, namespace)
    certs = fresh
    notes = {names.CA_SECRET: "created" if ca_created else "reused"}
    for field_name, secret in CERT_SECRETS.items():
        data = existing.get(secret)
        problem = reuse_problem(data, getattr(fresh, field_name), ca, now=now)
        if problem is None:
            assert data is not None
            kept = TLSMaterial(ca_pem=data[names.CA_CRT], cert_pem=data[names.TLS_CRT], key_pem=data[names.TLS_KEY])
            certs = replace(certs, **{field_name: kept})  # type: ignore[arg-type]
            notes[secret] = "reused"
        else:
            notes[secret] = "created" if data is None else f"reissued ({problem})"
    return CertificatePlan(certs=certs, notes=notes)


def ca_material(ca: CertificateAuthority, existing: SecretData | None) -> tuple[bytes, bytes]:
    """``(ca.crt, ca.key)`` to store: the existing Secret's bytes when it holds this CA (so the
    Secret is left as it is), else the CA's PEM."""
    if existing is not None and existing.get(names.CA_CRT) and existing.get(names.CA_KEY):
        return existing[names.CA_CRT], existing[names.CA_KEY]
    return ca.cert_pem, ca.keypair.key_pem
