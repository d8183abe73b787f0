"""The install's Secrets, built from given PEM bytes (pure: no key is generated here).

Layout (reference §2.6, §3.1):

- ``cilium-ca`` (Opaque): ``ca.crt``, ``ca.key``;
- ``clustermesh-apiserver-{server,admin,remote,local}-cert`` (``kubernetes.io/tls``): ``ca.crt``,
  ``tls.crt``, ``tls.key``;
- ``cilium-clustermesh`` (Opaque), read by the agents at ``/var/lib/cilium/clustermesh``: per peer
  cluster ``<peer>`` (its etcd config YAML, see :func:`peer_etcd_config`) and
  ``<peer>.etcd-client-ca.crt``, ``<peer>.etcd-client.crt``, ``<peer>.etcd-client.key`` (the peer's
  CA and the peer's remote client certificate), so clusters with different CAs work as with
  cilium-cli's ``--allow-mismatching-ca``.

:func:`with_peer` and :func:`without_peer` edit a ``cilium-clustermesh`` Secret as ``connect`` and
``disconnect`` need; :func:`secret_peers` reads one back.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from clustermesh_cli.install import names
from meshcore.errors import ConfigError, WireError
from meshcore.wire.clusterinfo import validate_cluster_name

__all__ = [
    "TLS_SECRET_TYPE",
    "TLSMaterial",
    "ClusterCertificates",
    "PeerEntry",
    "ca_secret",
    "tls_secret",
    "certificate_secrets",
    "peer_etcd_config",
    "peer_entry",
    "cilium_clustermesh_secret",
    "secret_peers",
    "with_peer",
    "without_peer",
    "secret_data",
]

Obj = dict[str, Any]
TLS_SECRET_TYPE = "kubernetes.io/tls"


@dataclass(frozen=True)
class TLSMaterial:
    """A certificate, its private key and the CA that verifies its peers (all PEM)."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class ClusterCertificates:
    """One cluster's CA and the four certificates of its clustermesh-apiserver (reference §2.6):
    ``server`` (etcd: ``clustermesh-apiserver.<ns>.svc``, ``*.mesh.cilium.io``, loopback), ``admin``
    (CN ``admin-<cluster>``), ``remote`` (CN ``remote``: what peers' agents present) and ``local``
    (CN ``local-<cluster>``)."""

    ca_cert_pem: bytes
    ca_key_pem: bytes
    server: TLSMaterial
    admin: TLSMaterial
    remote: TLSMaterial
    local: TLSMaterial


@dataclass(frozen=True)
class PeerEntry:
    """One peer's entry of ``cilium-clustermesh``: its etcd config and the files it names."""

    name: str
    etcd_config: str
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def data(self) -> dict[str, bytes]:
        """The entry's Secret keys and values."""
        return {
            names.peer_config_key(self.name): self.etcd_config.encode(),
            names.peer_ca_key(self.name): self.ca_pem,
            names.peer_cert_key(self.name): self.cert_pem,
            names.peer_key_key(self.name): self.key_pem,
        }


# ---- generic ----

def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _labels() -> dict[str, str]:
    return {names.PART_OF_LABEL: names.PART_OF}


def _secret(name: str, namespace: str, data: Mapping[str, bytes], secret_type: str = "Opaque") -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": _labels()},
        "type": secret_type,
        "data": {k: _b64(data[k]) for k in sorted(data)},
    }


def secret_data(secret: Mapping[str, Any]) -> dict[str, bytes]:
    """A Secret object's decoded ``data`` (and ``stringData``); :class:`ConfigError` if not base64."""
    out: dict[str, bytes] = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            out[str(key)] = base64.b64decode(str(value or ""), validate=True)
        except (binascii.Error, ValueError):
            name = (secret.get("metadata") or {}).get("name")
            raise ConfigError(f"secret {name}: key {key!r} is not valid base64") from None
    for key, value in (secret.get("stringData") or {}).items():
        out[str(key)] = str(value).encode()
    return out


# ---- certificates ----

def ca_secret(namespace: str, *, ca_cert_pem: bytes, ca_key_pem: bytes) -> Obj:
    """``cilium-ca``: the CA that signs every certificate of this cluster (``ca.crt``, ``ca.key``)."""
    return _secret(names.CA_SECRET, namespace, {names.CA_CRT: ca_cert_pem, names.CA_KEY: ca_key_pem})


def tls_secret(name: str, namespace: str, material: TLSMaterial) -> Obj:
    """A ``kubernetes.io/tls`` Secret with ``ca.crt``, ``tls.crt``, ``tls.key``."""
    return _secret(name, namespace, {names.CA_CRT: material.ca_pem, names.TLS_CRT: material.cert_pem,
                                     names.TLS_KEY: material.key_pem}, TLS_SECRET_TYPE)


def certificate_secrets(namespace: str, certs: ClusterCertificates) -> list[Obj]:
    """``cilium-ca`` and the four ``clustermesh-apiserver-*-cert`` Secrets, in a fixed order."""
    return [
        ca_secret(namespace, ca_cert_pem=certs.ca_cert_pem, ca_key_pem=certs.ca_key_pem),
        tls_secret(names.SERVER_CERT_SECRET, namespace, certs.server),
        tls_secret(names.ADMIN_CERT_SECRET, namespace, certs.admin),
        tls_secret(names.REMOTE_CERT_SECRET, namespace, certs.remote),
        tls_secret(names.LOCAL_CERT_SECRET, namespace, certs.local),
    ]


# ---- cilium-clustermesh ----

def _check_name(peer: str) -> None:
    try:
        validate_cluster_name(peer)
    except WireError as err:
        raise ConfigError(f"peer cluster name: {err.reason}") from None


def peer_etcd_config(peer: str, *, ips: Sequence[str] = (), port: int = names.ETCD_PORT, address: str | None = None,
                     config_dir: str = names.CLUSTERMESH_CONFIG_DIR) -> str:
    """The etcd config (YAML) agents use for ``peer``, in Cilium's format (reference §3.1).

    With ``ips`` (the peer's service IPs or node IPs) the endpoint is
    ``https://<peer>.mesh.cilium.io:<port>`` with ``cilium-host-aliases`` mapping that name to the
    IPs, so the peer's ``*.mesh.cilium.io`` server certificate matches whatever IP is dialled. With
    ``address`` instead, the endpoint is ``https://<address>:<port>`` (the server certificate must
    name that address). The TLS files are the entry's own, under ``config_dir``.
    """
    _check_name(peer)
    if not 1 <= port <= 65535:
        raise ConfigError(f"peer {peer}: port {port} is not a TCP port")
    if (address is None) == (not ips):
        raise ConfigError(f"peer {peer}: give either the IPs to reach it or one address, not both or neither")
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ConfigError(f"peer {peer}: {ip!r} is not an IP address") from None
    if address is not None:
        host = f"[{address}]" if ":" in address else address
        endpoint = f"https://{host}:{port}"
    else:
        endpoint = f"https://{names.peer_hostname(peer)}:{port}"
    doc: Obj = {
        "endpoints": [endpoint],
        "trusted-ca-file": f"{config_dir}/{names.peer_ca_key(peer)}",
        "key-file": f"{config_dir}/{names.peer_key_key(peer)}",
        "cert-file": f"{config_dir}/{names.peer_cert_key(peer)}",
    }
    if address is None:
        doc["cilium-host-aliases"] = [{"hostname": names.peer_hostname(peer), "ips": list(ips)}]
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def peer_entry(peer: str, remote: TLSMaterial, *, ips: Sequence[str] = (), port: int = names.ETCD_PORT,
               address: str | None = None) -> PeerEntry:
    """The entry for ``peer`` from the peer's remote certificate (``clustermesh-apiserver-remote-cert``
    of the peer, whose ``ca.crt`` is the peer's CA) and its access info."""
    config = peer_etcd_config(peer, ips=ips, port=port, address=address)
    return PeerEntry(peer, config, remote.ca_pem, remote.cert_pem, remote.key_pem)


def cilium_clustermesh_secret(namespace: str, entries: Iterable[PeerEntry]) -> Obj:
    """``cilium-clustermesh`` holding exactly ``entries`` (an empty Secret when there are none)."""
    data: dict[str, bytes] = {}
    for entry in entries:
        if names.peer_config_key(entry.name) in data:
            raise ConfigError(f"peer {entry.name} is listed twice")
        data.update(entry.data())
    return _secret(names.CLUSTERMESH_SECRET, namespace, data)


def secret_peers(secret: Mapping[str, Any] | None) -> dict[str, PeerEntry]:
    """The peer entries of a ``cilium-clustermesh`` Secret. As Cilium's agents and cilium-cli do, a
    key is a peer's config when its value contains ``endpoints:``; missing TLS files read as empty."""
    if secret is None:
        return {}
    data = secret_data(secret)
    out: dict[str, PeerEntry] = {}
    for key in sorted(data):
        value = data[key]
        if "." in key or b"endpoints:" not in value:
            continue
        out[key] = PeerEntry(key, value.decode(errors="replace"), data.get(names.peer_ca_key(key), b""),
                             data.get(names.peer_cert_key(key), b""), data.get(names.peer_key_key(key), b""))
    return out


def with_peer(secret: Mapping[str, Any] | None, namespace: str, entry: PeerEntry) -> Obj:
    """``secret`` (or a new one) with ``entry`` added or replaced; other keys are kept as they are."""
    data = secret_data(secret) if secret is not None else {}
    data = {k: v for k, v in data.items() if k not in _peer_keys(entry.name)}
    data.update(entry.data())
    return _secret(names.CLUSTERMESH_SECRET, namespace, data)


def without_peer(secret: Mapping[str, Any] | None, namespace: str, peer: str) -> Obj:
    """``secret`` without ``peer``'s entry (its config and its three files)."""
    data = secret_data(secret) if secret is not None else {}
    return _secret(names.CLUSTERMESH_SECRET, namespace, {k: v for k, v in data.items() if k not in _peer_keys(peer)})


def _peer_keys(peer: str) -> set[str]:
    return {names.peer_config_key(peer), names.peer_ca_key(peer), names.peer_cert_key(peer), names.peer_key_key(peer)}
