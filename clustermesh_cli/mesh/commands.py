"""``clustermesh connect`` and ``clustermesh disconnect`` (click commands; the lead adds them
to the ``clustermesh`` group)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from clustermesh_cli.mesh.access import MeshAccessError
from clustermesh_cli.mesh.kube import apply_plan, kube_contexts, open_clusters
from clustermesh_cli.mesh.peers import (
    DEFAULT_NAMESPACE,
    ClusterInfo,
    ConnectPlan,
    ConnectRefused,
    describe,
    plan_connect,
    plan_disconnect,
)
from meshcore.cliopts import CONTEXT_SETTINGS

__all__ = ["connect", "disconnect", "run_connect", "run_disconnect"]

Planner = Callable[[ClusterInfo, ClusterInfo], ConnectPlan]


def _resolve_context(context: str | None, kubeconfig: Path | None) -> str:
    if context:
        return context
    _, current = kube_contexts(kubeconfig)
    if not current:
        raise MeshAccessError("the kubeconfig has no current context: pass --context")
    return current


def _run(planner: Planner, context: str | None, destination: str, *, kubeconfig: Path | None,
         namespace: str, need_access: bool, dry_run: bool) -> tuple[ClusterInfo, ClusterInfo, ConnectPlan]:
    source = _resolve_context(context, kubeconfig)
    with open_clusters([source, destination], kubeconfig=kubeconfig, namespace=namespace) as (ka, kb):
        a, b = ka.read(need_access=need_access), kb.read(need_access=need_access)
        plan = planner(a, b)
        for warning in plan.warnings:
            click.echo(f"warning: {warning}", err=True)
        for change in plan.changes:
            click.echo(("(dry run) " if dry_run else "") + describe(change))
        if not dry_run:
            apply_plan(plan, {ka.context: ka, kb.context: kb})
    return a, b, plan


def run_connect(context: str | None, destination: str, *, kubeconfig: Path | None = None,
                namespace: str = DEFAULT_NAMESPACE, dry_run: bool = False) -> ConnectPlan:
    """Connect two clusters both ways (the work of ``clustermesh connect``); returns the plan
    applied. Raises :class:`ConnectRefused` or :class:`MeshAccessError` (nothing written)."""
    a, b, plan = _run(plan_connect, context, destination, kubeconfig=kubeconfig, namespace=namespace,
                      need_access=True, dry_run=dry_run)
    if not plan.changed:
        click.echo(f"{a.name} and {b.name} were already connected: nothing changed")
    elif not dry_run:
        click.echo(f"connected {a.label} and {b.label}; their agents pick up the new peer from {plan.changes[0].name}")
    return plan


def run_disconnect(context: str | None, destination: str, *, kubeconfig: Path | None = None,
                   namespace: str = DEFAULT_NAMESPACE, dry_run: bool = False) -> ConnectPlan:
    """Disconnect two clusters both ways (the work of ``clustermesh disconnect``)."""
    a, b, plan = _run(plan_disconnect, context, destination, kubeconfig=kubeconfig, namespace=namespace,
                      need_access=False, dry_run=dry_run)
    if not plan.changed:
        click.echo(f"{a.name} and {b.name} were not connected: nothing changed")
    elif not dry_run:
        click.echo(f"disconnected {a.label} and {b.label}; their agents drain the peer once its config file is gone")
    return plan


def _options(func: Callable[..., None]) -> Callable[..., None]:
    func = click.option("--dry-run", is_flag=True, help="Print the changes without writing them.")(func)
    func = click.option("--namespace", "-n", default=DEFAULT_NAMESPACE, show_default=True,
                        help="Namespace of the mesh's objects, in both clusters.")(func)
    func = click.option("--kubeconfig", type=click.Path(dir_okay=False, path_type=Path), default=None,
                        help="Kubeconfig holding both contexts (default: $KUBECONFIG or ~/.kube/config).")(func)
    func = click.option("--destination-context", "destination", required=True,
                        help="Context of the other cluster.")(func)
    return click.option("--context", default=None,
                        help="Context of the local cluster (default: the kubeconfig's current context).")(func)


def _fail(err: ConnectRefused | MeshAccessError) -> click.ClickException:
    prefix = "refused: " if isinstance(err, ConnectRefused) else ""
    return click.ClickException(f"{prefix}{err}")


@click.command(context_settings=CONTEXT_SETTINGS)
@_options
def connect(context: str | None, destination: str, kubeconfig: Path | None, namespace: str, dry_run: bool) -> None:
    """Connect two clusters: each gets the other as a peer in its cilium-clustermesh Secret.

    Reads, on both sides, the cluster's name and ID, the CA (Secret cilium-ca), the remote
    client certificate (Secret clustermesh-apiserver-remote-cert) and the clustermesh-apiserver
    Service's address, then writes the other cluster's entry (etcd config, CA, client
    certificate and key) into each cluster's cilium-clustermesh Secret. Clusters with different
    CAs mesh: each entry carries its peer's CA.

    Refused, with nothing changed: equal cluster names or IDs, overlapping pod CIDRs, different
    max-connected-clusters, or a mesh larger than max-connected-clusters. Running it again
    changes nothing; connecting every pair of N clusters builds a full mesh.

    \b
    Examples:
      clustermesh enable --context kind-c1 --cluster-name c1 --cluster-id 1    # first, on each side
      clustermesh enable --context kind-c2 --cluster-name c2 --cluster-id 2
      clustermesh connect --context kind-c1 --destination-context kind-c2
      clustermesh connect --context kind-c1 --destination-context kind-c3   # and every other pair:
      clustermesh connect --context kind-c2 --destination-context kind-c3   # a full mesh of three
      clustermesh connect --context kind-c1 --destination-context kind-c2 --dry-run

    Exit status: 0 on success, 1 when refused or a cluster cannot be read or written.
    """
    try:
        run_connect(context, destination, kubeconfig=kubeconfig, namespace=namespace, dry_run=dry_run)
    except (ConnectRefused, MeshAccessError) as err:
        raise _fail(err) from None


@click.command(context_settings=CONTEXT_SETTINGS)
@_options
def disconnect(context: str | None, destination: str, kubeconfig: Path | None, namespace: str,
               dry_run: bool) -> None:
    """Disconnect two clusters: remove each one's entry from the other's cilium-clustermesh Secret.

    The agents drain the peer (its nodes, endpoints, identities and services) once its config
    file disappears from their mounted Secret. Running it again changes nothing.

    \b
    Examples:
      clustermesh disconnect --context kind-c1 --destination-context kind-c2
      clustermesh disconnect --context kind-c1 --destination-context kind-c2 --dry-run

    Exit status: 0 on success, 1 when a cluster cannot be read or written.
    """
    try:
        run_disconnect(context, destination, kubeconfig=kubeconfig, namespace=namespace, dry_run=dry_run)
    except (ConnectRefused, MeshAccessError) as err:
        raise _fail(err) from None
