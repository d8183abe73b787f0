"""``clustermesh-apiserver``: the command line of the daemon (``clustermesh``), of KVStoreMesh
(``kvstoremesh``) and of the one-shot etcd setup (``etcdinit``), with Cilium's flag names.

Exit status: 0 on success (and after SIGTERM/SIGINT), 1 when something outside the command line
failed (etcd unreachable, ...), 2 on a usage error (bad or missing flags).
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from clustermesh_apiserver.config import SERVICE_V2_MODES, ApiServerConfig
from clustermesh_apiserver.etcdinit import etcd_init
from clustermesh_apiserver.server import ApiServer
from meshcore.cliopts import CONTEXT_SETTINGS, log_options, run_until_signalled
from meshcore.errors import ConfigError, MeshError
from meshcore.kvstore.client import EtcdClient
from meshcore.kvstore.config import EtcdClientConfig, load_etcd_config
from meshcore.log import configure as configure_logging

# --kvstore-opt keys Cilium accepts that tune its client; taken and ignored here.
_IGNORED_KVSTORE_OPTS = ("etcd.qps", "etcd.bootstrapQps", "etcd.maxInflight", "etcd.keepaliveHeartbeat",
                         "etcd.keepaliveTimeout", "etcd.listLimit")

F = TypeVar("F", bound=Callable[..., Any])


@click.group(name="clustermesh-apiserver", context_settings=CONTEXT_SETTINGS)
@log_options()
def main(log_level: str, log_json: bool) -> None:
    """Publish this cluster's state into its clustermesh etcd, the way Cilium does.

    Other clusters read that etcd to reach this cluster's pods and global services. The keys
    and JSON values are Cilium's, so real Cilium agents can read them too.

    \b
    Typical pod layout (as Cilium's Helm chart):
      init container   clustermesh-apiserver etcdinit --cluster-name c1 --etcd-config admin.yaml
      etcd             etcd --client-cert-auth ...   (server cert: clustermesh certs generate)
      apiserver        clustermesh-apiserver clustermesh --cluster-name c1 --cluster-id 1 \\
                         --kvstore-opt etcd.config=/var/lib/cilium/etcd-config.yaml
    """
    configure_logging(level=log_level, json=log_json)


def etcd_options(func: F) -> F:
    """The ways to say which etcd to use (exactly one of them)."""
    options = [
        click.option(
            "--kvstore-opt",
            "kvstore_opts",
            multiple=True,
            metavar="KEY=VALUE",
            help="Cilium's form: etcd.config=FILE names an etcd client YAML (endpoints, trusted-ca-file, "
            "cert-file, key-file). Repeatable; etcd.qps and similar tuning keys are accepted and ignored.",
        ),
        click.option(
            "--etcd-config",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Same as --kvstore-opt etcd.config=FILE.",
        ),
        click.option(
            "--etcd-endpoints",
            metavar="URL[,URL...]",
            help="etcd URLs (https://127.0.0.1:2379); use with --etcd-ca/--etcd-cert/--etcd-key for mTLS.",
        ),
        click.option("--etcd-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="CA bundle that verifies the etcd server (with --etcd-endpoints)."),
        click.option("--etcd-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Client certificate; its CN is the etcd user, e.g. admin-<cluster>."),
        click.option("--etcd-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Private key of --etcd-cert."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def resolve_etcd(
    kvstore_opts: tuple[str, ...],
    etcd_config: Path | None,
    etcd_endpoints: str | None,
    etcd_ca: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
) -> EtcdClientConfig:
    """One :class:`EtcdClientConfig` from the etcd flags; :class:`click.UsageError` if they conflict."""
    config_file = etcd_config
    for opt in kvstore_opts:
        key, sep, value = opt.partition("=")
        if not sep or not value:
            raise click.UsageError(f"--kvstore-opt {opt!r} must look like KEY=VALUE, e.g. etcd.config=/path.yaml")
        if key == "etcd.config":
            if config_file is not None and config_file != Path(value):
                raise click.UsageError("two etcd config files given (--etcd-config and --kvstore-opt etcd.config)")
            config_file = Path(value)
        elif key not in _IGNORED_KVSTORE_OPTS:
            raise click.UsageError(
                f"--kvstore-opt {key} is not supported; use etcd.config=FILE (accepted and ignored: "
                f"{', '.join(_IGNORED_KVSTORE_OPTS)})"
            )
    tls_flags = [name for name, value in (("--etcd-ca", etcd_ca), ("--etcd-cert", etcd_cert),
                                          ("--etcd-key", etcd_key)) if value is not None]
    if config_file is not None and (etcd_endpoints or tls_flags):
        raise click.UsageError("give either an etcd config file or --etcd-endpoints (with TLS files), not both")
    try:
        if config_file is not None:
            return load_etcd_config(config_file)
        if etcd_endpoints:
            endpoints = [e.strip() for e in etcd_endpoints.split(",") if e.strip()]
            return EtcdClientConfig(endpoints, trusted_ca_file=etcd_ca, cert_file=etcd_cert, key_file=etcd_key)
    except ConfigError as err:
        raise click.UsageError(str(err)) from None
    if tls_flags:
        raise click.UsageError(f"{', '.join(tls_flags)} need --etcd-endpoints")
    raise click.UsageError(
        "which etcd? give --kvstore-opt etcd.config=FILE, --etcd-config FILE, or --etcd-endpoints URL"
    )


@main.command("clustermesh", context_settings=CONTEXT_SETTINGS)
@click.option("--cluster-name", required=True, help="This cluster's name: lowercase, digits and '-', at most 32.")
@click.option("--cluster-id", type=int, required=True,
              help="This cluster's ID, unique in the mesh: 1..255 (1..511 with --max-connected-clusters 511).")
@click.option("--max-connected-clusters", type=int, default=255, show_default=True,
              help="255 or 511; every cluster of a mesh must use the same value.")
@etcd_options
@click.option("--kubeconfig", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Kubernetes API credentials [default: in-cluster service account, else $KUBECONFIG].")
@click.option("--source", type=click.Choice(["cilium", "kubernetes"]), default="cilium", show_default=True,
              help="cilium: export Cilium's CRDs. kubernetes: derive nodes, identities and pod IPs from "
              "Nodes and Pods (clusters without Cilium).")
@click.option("--health-port", type=click.IntRange(0, 65535), default=9880, show_default=True,
              help="Port of /healthz, /readyz and /metrics (0 picks a free port).")
@click.option("--health-address", default="127.0.0.1", show_default=True,
              help="Address the health endpoint binds (0.0.0.0 for kubelet probes from outside the pod).")
@click.option("--clustermesh-enable-mcs-api", "enable_mcs_api", is_flag=True,
              help="Export ServiceExports (MCS-API); needs the multicluster.x-k8s.io/v1beta1 CRD.")
@click.option("--enable-cilium-endpoint-slice", is_flag=True,
              help="Read pod IPs from CiliumEndpointSlices instead of CiliumEndpoints.")
@click.option("--clustermesh-default-global-namespace", "default_global", type=click.BOOL, default=True,
              show_default=True, metavar="BOOL",
              help="Whether namespaces without the clustermesh.cilium.io/global annotation are exported "
              "(env CLUSTERMESH_DEFAULT_GLOBAL_NAMESPACE overrides).")
@click.option("--clustermesh-service-v2", "service_v2", type=click.Choice(list(SERVICE_V2_MODES)), default="",
              help="Advertise EndpointSlice export in the cluster config (endpointSlicesExportMode).")
@click.option("--kvstore-lease-ttl", "lease_ttl", type=click.IntRange(5), default=900, show_default=True,
              help="Seconds an exported key outlives this process if it dies.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              help="kubernetes mode: directory where identity allocations are kept across restarts.")
def clustermesh_command(
    cluster_name: str,
    cluster_id: int,
    max_connected_clusters: int,
    kvstore_opts: tuple[str, ...],
    etcd_config: Path | None,
    etcd_endpoints: str | None,
    etcd_ca: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
    kubeconfig: Path | None,
    source: str,
    health_port: int,
    health_address: str,
    enable_mcs_api: bool,
    enable_cilium_endpoint_slice: bool,
    default_global: bool,
    service_v2: str,
    lease_ttl: int,
    state_dir: Path | None,
) -> None:
    """Run the exporter: Kubernetes objects in, Cilium's clustermesh keys in etcd out.

    \b
    Writes, leased, into the etcd given by the etcd flags:
      cilium/state/nodes/v1/<cluster>/<node>            from CiliumNodes (or Nodes)
      cilium/state/identities/v1/id/<id>                from CiliumIdentities (or pod labels)
      cilium/state/ip/v1/default/<ip>                   from CiliumEndpoints (or Pods)
      cilium/state/services/v1/<cluster>/<ns>/<name>    global Services + EndpointSlices
      cilium/state/serviceexports/v1/<cluster>/...      ServiceExports (--clustermesh-enable-mcs-api)
      cilium/synced/<cluster>/...                       a canary per prefix once it is complete
      cilium/cluster-config/<cluster>, cilium/.heartbeat

    \b
    Example:
      clustermesh-apiserver clustermesh --cluster-name c1 --cluster-id 1 \\
        --etcd-endpoints https://127.0.0.1:2379 --etcd-ca ca.crt \\
        --etcd-cert admin-c1/tls.crt --etcd-key admin-c1/tls.key

    /readyz on --health-port answers 200 once every canary is written. Stop with SIGTERM or
    Ctrl-C: keys and leases stay, and a restart takes them over without re-creating them.
    """
    etcd = resolve_etcd(kvstore_opts, etcd_config, etcd_endpoints, etcd_ca, etcd_cert, etcd_key)
    config = ApiServerConfig(
        cluster_name=cluster_name,
        cluster_id=cluster_id,
        etcd=etcd,
        kubeconfig=kubeconfig,
        max_connected_clusters=max_connected_clusters,
        source="kubernetes" if source == "kubernetes" else "cilium",
        health_port=health_port,
        health_address=health_address,
        enable_mcs_api=enable_mcs_api,
        enable_cilium_endpoint_slice=enable_cilium_endpoint_slice,
        default_global_namespace=default_global,
        service_v2_mode=service_v2,
        lease_ttl=lease_ttl,
        state_dir=state_dir,
    )
    try:
        config.validate()
    except ConfigError as err:
        raise click.UsageError(str(err)) from None
    run_until_signalled(ApiServer(config).run)


@main.command("etcdinit", context_settings=CONTEXT_SETTINGS)
@click.option("--cluster-name", required=True, help="The cluster whose etcd this is.")
@click.option("--peers", default="", metavar="NAME[,NAME...]",
              help="Clusters that will read this one; each gets a read-only user remote-<peer>.")
@etcd_options
def etcdinit_command(
    cluster_name: str,
    peers: str,
    kvstore_opts: tuple[str, ...],
    etcd_config: Path | None,
    etcd_endpoints: str | None,
    etcd_ca: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
) -> None:
    """Create the users and roles of a fresh clustermesh etcd, then enable auth.

    \b
    Users (no passwords: etcd takes the user from the client certificate's CN):
      root, admin-<cluster>   role root   (the apiserver itself)
      local-<cluster>         role local  (read cilium/cache/, cluster config, canaries)
      remote, remote-<peer>   role remote (read-only: cilium/state/, this cluster's config
                                           and canaries, cilium/.heartbeat)

    Run it once, against the blank etcd, with a certificate etcd accepts before auth is on
    (Cilium runs it as an init container on loopback). Certificates for these users:
    clustermesh certs generate --cluster-name <cluster> --peers <peers> --out DIR.
    """
    from meshcore.wire.clusterinfo import validate_cluster_name

    try:
        validate_cluster_name(cluster_name)
        peer_names = [p.strip() for p in peers.split(",") if p.strip()]
        for peer in peer_names:
            validate_cluster_name(peer)
    except MeshError as err:
        raise click.UsageError(str(err)) from None
    etcd = resolve_etcd(kvstore_opts, etcd_config, etcd_endpoints, etcd_ca, etcd_cert, etcd_key)

    async def init() -> None:
        async with EtcdClient(etcd) as client:
            plan = await etcd_init(client, cluster_name, peers=peer_names)
        for user, role in plan.users.items():
            click.echo(f"user {user}: role {role}")
        click.echo("auth enabled")

    try:
        asyncio.run(init())
    except MeshError as err:
        click.echo(f"Error: etcdinit failed: {err}", err=True)
        sys.exit(1)


class _Duration(click.ParamType[float, Any]):
    """A duration: Go style (``15s``, ``10m``, ``1m30s``) or plain seconds (``2.5``)."""

    name = "duration"
    _UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        text = str(value).strip()
        try:
            return float(text)
        except ValueError:
            pass
        parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
        if not parts or "".join(n + u for n, u in parts) != text:
            self.fail(f"{value!r} is not a duration (e.g. 15s, 10m, 1m30s, or seconds)", param, ctx)
        return sum(float(n) * self._UNITS[u] for n, u in parts)


@main.command("kvstoremesh", context_settings=CONTEXT_SETTINGS)
@click.option("--cluster-name", required=True, help="This cluster's name (its own file in the config dir is ignored).")
@click.option("--cluster-id", type=int, required=True,
              help="This cluster's ID: remotes may not use it (1..255, or 1..511).")
@click.option("--max-connected-clusters", type=int, default=255, show_default=True, help="255 or 511.")
@click.option("--clustermesh-config", "config_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Directory with one etcd config YAML per remote cluster, named after it "
              "(secret cilium-kvstoremesh mounted at /var/lib/cilium/clustermesh).")
@etcd_options
@click.option("--health-port", type=click.IntRange(0, 65535), default=9881, show_default=True,
              help="Port of /healthz, /readyz and /v1/cluster (0 picks a free port).")
@click.option("--health-address", default="127.0.0.1", show_default=True,
              help="Address the health endpoint binds (0.0.0.0 for kubelet probes from outside the pod).")
@click.option("--kvstore-lease-ttl", "lease_ttl", type=click.IntRange(5), default=900, show_default=True,
              help="Seconds a cached key outlives this process if it dies.")
@click.option("--per-cluster-ready-timeout", type=_Duration(), default="15s", show_default=True,
              help="A remote that has not connected within this does not hold up readiness.")
@click.option("--global-ready-timeout", type=_Duration(), default="10m", show_default=True,
              help="Report ready after this even if some remote has not synced.")
@click.option("--drain-grace-period", type=_Duration(), default="3m", show_default=True, hidden=True,
              help="After a remote is removed: time between deleting its cluster config and its cache.")
@click.option("--heartbeat/--no-heartbeat", default=True, show_default=True,
              help="Also write cilium/.heartbeat into the local etcd (agents require it).")
def kvstoremesh_command(
    cluster_name: str,
    cluster_id: int,
    max_connected_clusters: int,
    config_dir: Path,
    kvstore_opts: tuple[str, ...],
    etcd_config: Path | None,
    etcd_endpoints: str | None,
    etcd_ca: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
    health_port: int,
    health_address: str,
    lease_ttl: int,
    per_cluster_ready_timeout: float,
    global_ready_timeout: float,
    drain_grace_period: float,
    heartbeat: bool,
) -> None:
    """Cache every remote cluster's state in the local etcd, so agents need one connection.

    \b
    For each remote <r> of --clustermesh-config, reads its etcd (read-only) and writes, leased,
    into the local etcd given by the etcd flags:
      cilium/cluster-config/<r>          the remote's config, with cached and syncedCanaries set
      cilium/cache/nodes/v1/<r>/...      from cilium/state/nodes/v1/<r>/
      cilium/cache/services/v1/<r>/...   from cilium/state/services/v1/<r>/
      cilium/cache/identities/v1/<r>/id/ from cilium/state/identities/v1/id/
      cilium/cache/ip/v1/<r>/...         from cilium/state/ip/v1/default/
      cilium/synced/<r>/cilium/cache/<type>/v1   once each type is complete

    \b
    Example:
      clustermesh-apiserver kvstoremesh --cluster-name c1 --cluster-id 1 \\
        --clustermesh-config /var/lib/cilium/clustermesh \\
        --kvstore-opt etcd.config=/var/lib/cilium/etcd-config.yaml

    /readyz answers 200 once every remote synced (or the ready timeouts expired); /v1/cluster
    lists the remote clusters in Cilium's status JSON. A removed remote's cluster config is
    deleted at once and its cache after the grace period.
    """
    from clustermesh_apiserver.kvstoremesh import KvstoreMeshConfig, run_kvstoremesh
    from meshcore.wire.clusterinfo import cluster_id_max, validate_cluster_name

    try:
        validate_cluster_name(cluster_name, cluster_id=cluster_id)
        limit = cluster_id_max(max_connected_clusters)
    except MeshError as err:
        raise click.UsageError(str(err)) from None
    if not 1 <= cluster_id <= limit:
        raise click.UsageError(f"--cluster-id must be in 1..{limit}, got {cluster_id}")
    etcd = resolve_etcd(kvstore_opts, etcd_config, etcd_endpoints, etcd_ca, etcd_cert, etcd_key)
    config = KvstoreMeshConfig(
        cluster_name=cluster_name,
        cluster_id=cluster_id,
        config_dir=config_dir,
        etcd=etcd,
        max_connected_clusters=max_connected_clusters,
        health_address=health_address,
        health_port=health_port,
        lease_ttl=lease_ttl,
        per_cluster_ready_timeout=per_cluster_ready_timeout,
        global_ready_timeout=global_ready_timeout,
        drain_grace=drain_grace_period,
        heartbeat_interval=60.0 if heartbeat else None,
    )
    run_until_signalled(lambda: run_kvstoremesh(config))


if __name__ == "__main__":
    main(prog_name="clustermesh-apiserver")
