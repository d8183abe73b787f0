"""Issue one cluster's clustermesh certificates (reference §2.6) with :mod:`meshcore.pki`.

Not pure (keys are random): this is what ``clustermesh enable`` calls before building the Secrets
with :func:`clustermesh_cli.install.secrets.certificate_secrets`. The names match
``clustermesh certs generate`` (:mod:`clustermesh_cli.certs`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from clustermesh_cli.install import names
from clustermesh_cli.install.secrets import ClusterCertificates, TLSMaterial
from meshcore.errors import ConfigError
from meshcore.pki import CertificateAuthority, KeyPair

__all__ = ["REMOTE_USER", "server_names", "issue_cluster_certificates"]

REMOTE_USER = "remote"  # Cilium's shared read-only user (authMode legacy/migration)
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


def server_names(namespace: str, extra: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """The etcd server certificate's (DNS names, IPs): ``clustermesh-apiserver.<ns>.svc``,
    ``*.mesh.cilium.io``, loopback, then ``extra`` (LoadBalancer or node IPs peers dial)."""
    dns: list[str] = []
    ips: list[str] = []
    for name in (names.service_dns_name(namespace), f"*.{names.MESH_DOMAIN}", *_LOOPBACK, *extra):
        try:
            ips.append(str(ipaddress.ip_address(name)))
        except ValueError:
            dns.append(name)
    return list(dict.fromkeys(dns)), list(dict.fromkeys(ips))


def _material(ca: CertificateAuthority, pair: KeyPair) -> TLSMaterial:
    return TLSMaterial(ca_pem=ca.cert_pem, cert_pem=pair.cert_pem, key_pem=pair.key_pem)


def issue_cluster_certificates(
    ca: CertificateAuthority,
    cluster_name: str,
    namespace: str,
    *,
    extra_server_names: Iterable[str] = (),
    valid_days: int = 365,
) -> ClusterCertificates:
    """The server, admin, remote and local certificates of ``cluster_name``, signed by ``ca``."""
    dns, ips = server_names(namespace, extra_server_names)
    try:
        server = ca.issue_server(names.service_dns_name(namespace), dns_names=dns, ip_addresses=ips,
                                 valid_days=valid_days)
    except ValueError as err:
        raise ConfigError(f"server certificate names {dns + ips}: {err}") from None
    return ClusterCertificates(
        ca_cert_pem=ca.cert_pem,
        ca_key_pem=ca.keypair.key_pem,
        server=_material(ca, server),
        admin=_material(ca, ca.issue_client(f"admin-{cluster_name}", valid_days=valid_days)),
        remote=_material(ca, ca.issue_client(REMOTE_USER, valid_days=valid_days)),
        local=_material(ca, ca.issue_client(f"local-{cluster_name}", valid_days=valid_days)),
    )
