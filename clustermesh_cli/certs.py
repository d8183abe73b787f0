"""``clustermesh certs``: the certificates of one cluster's clustermesh etcd (reference §2.6).

Files are written as Kubernetes TLS secrets mount them (``ca.crt``, ``tls.crt``, ``tls.key``), one
directory per certificate, every file mode 0600. With etcd's ``--client-cert-auth`` the client
certificate's CN is the etcd user that ``clustermesh-apiserver etcdinit`` created.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import click

from meshcore.errors import ConfigError, WireError
from meshcore.pki import CA_FILE, CertificateAuthority, write_private_file, write_tls_files
from meshcore.wire.clusterinfo import validate_cluster_name

CA_KEY_FILE = "ca.key"
CA_DIR = "ca"
MESH_WILDCARD = "*.mesh.cilium.io"
LOOPBACK_SANS = ("localhost", "127.0.0.1", "::1")


@click.group(name="certs")
def certs() -> None:
    """Create the CA and certificates a clustermesh etcd and its clients use."""


def _split_sans(names: list[str]) -> tuple[list[str], list[str]]:
    dns: list[str] = []
    ips: list[str] = []
    for name in names:
        try:
            ips.append(str(ipaddress.ip_address(name)))
        except ValueError:
            dns.append(name)
    return list(dict.fromkeys(dns)), list(dict.fromkeys(ips))


@certs.command("generate")
@click.option("--cluster-name", required=True, help="The cluster whose etcd the certificates are for.")
@click.option("--peers", default="", metavar="NAME[,NAME...]",
              help="Clusters that will read this one: each gets a remote-<peer> client certificate.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write into (created if missing).")
@click.option("--namespace", default="kube-system", show_default=True,
              help="Namespace of the clustermesh-apiserver Service (server name clustermesh-apiserver.<ns>.svc).")
@click.option("--san", "extra_sans", multiple=True, metavar="NAME|IP",
              help="Extra server name or IP peers dial (a LoadBalancer IP, a NodePort host). Repeatable.")
@click.option("--ca", "ca_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Issue from an existing CA directory (ca.crt + ca.key), e.g. one shared by the whole mesh.")
@click.option("--valid-days", type=click.IntRange(1, 3650), default=365, show_default=True,
              help="Validity of the issued certificates (the CA gets ten years).")
@click.option("--force", is_flag=True, help="Replace an existing CA in --out (every certificate it signed "
              "stops being trusted).")
def generate(
    cluster_name: str,
    peers: str,
    out_dir: Path,
    namespace: str,
    extra_sans: tuple[str, ...],
    ca_dir: Path | None,
    valid_days: int,
    force: bool,
) -> None:
    """Write a CA, the etcd server certificate and the client certificates of one cluster.

    \b
    Layout under --out (each directory holds ca.crt, tls.crt, tls.key; all files mode 0600):
      ca/                 the CA (ca.crt, ca.key); keep ca.key secret
      server/             etcd server: clustermesh-apiserver.<ns>.svc, *.mesh.cilium.io,
                          localhost, 127.0.0.1, ::1 and every --san
      admin-<cluster>/    the apiserver and kvstoremesh writing the local etcd
      local-<cluster>/    local agents reading the KVStoreMesh cache
      remote/             any remote cluster (Cilium's legacy shared user)
      remote-<peer>/      one per --peers entry, for that peer's agents or kvstoremesh

    \b
    Example:
      clustermesh certs generate --cluster-name c1 --peers c2,c3 --out ./c1-certs
      clustermesh-apiserver etcdinit --cluster-name c1 --peers c2,c3 ...
    """
    peer_names = [p.strip() for p in peers.split(",") if p.strip()]
    try:
        for name in (cluster_name, *peer_names):
            validate_cluster_name(name)
    except WireError as err:
        raise click.UsageError(err.reason) from None
    ca_path = out_dir / CA_DIR
    if ca_dir is not None:
        try:
            ca = CertificateAuthority.load(ca_dir / CA_FILE, ca_dir / CA_KEY_FILE)
        except ConfigError as err:
            click.echo(f"Error: {err}", err=True)
            sys.exit(1)
    else:
        if (ca_path / CA_FILE).exists() and not force:
            click.echo(
                f"Error: a CA already exists in {ca_path}; pass --ca {ca_path} to issue new certificates from it, "
                "or --force to replace it (every certificate it signed stops being trusted)",
                err=True,
            )
            sys.exit(1)
        ca = CertificateAuthority.create(f"clustermesh-{cluster_name}-ca")
        ca_path.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private_file(ca_path / CA_FILE, ca.cert_pem)
        write_private_file(ca_path / CA_KEY_FILE, ca.keypair.key_pem)

    server_name = f"clustermesh-apiserver.{namespace}.svc"
    dns, ips = _split_sans([server_name, MESH_WILDCARD, *LOOPBACK_SANS, *extra_sans])
    try:
        server = ca.issue_server(server_name, dns_names=dns, ip_addresses=ips, valid_days=valid_days)
    except ValueError as err:
        raise click.UsageError(f"--san: {err}") from None
    written = [write_tls_files(out_dir / "server", ca.cert_pem, server)]
    clients = [f"admin-{cluster_name}", f"local-{cluster_name}", "remote", *(f"remote-{p}" for p in peer_names)]
    for user in clients:
        written.append(write_tls_files(out_dir / user, ca.cert_pem, ca.issue_client(user, valid_days=valid_days)))
    for files in written:
        click.echo(f"{files.cert_file.parent}: {files.cert_file.name}, {files.key_file.name}, {files.ca_file.name}")
    click.echo(f"server names: {', '.join(dns + ips)}")
