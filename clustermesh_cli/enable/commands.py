"""``clustermesh enable`` and ``clustermesh disable`` (click commands)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final

import click

from clustermesh_cli.enable.resolve import EnableUsageError
from clustermesh_cli.enable.run import DEFAULT_NAMESPACE, run_disable, run_enable
from clustermesh_cli.install import names
from clustermesh_cli.install.cliopts import install_options
from meshcore.cliopts import CONTEXT_SETTINGS
from meshcore.errors import MeshError

__all__ = ["DURATION", "Duration", "disable", "enable", "parse_duration"]

_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds in a duration as cilium-cli takes them (Go's ``5m``, ``90s``, ``1m30s``, ``1.5h``),
    or a plain number of seconds; ValueError otherwise."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        pos, seconds = 0, 0.0
        for match in _PART.finditer(value):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos != len(value) or not value:
            raise ValueError(f"{text!r} is not a duration (e.g. 90s, 5m, 1m30s)") from None
    if seconds <= 0:
        raise ValueError(f"{text!r}: the duration must be positive")
    return seconds


class Duration(click.ParamType):  # type: ignore[type-arg]
    """A click type for :func:`parse_duration`."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as err:
            self.fail(str(err), param, ctx)


DURATION: Final = Duration()


def _context_options(func: Any) -> Any:
    func = click.option("--kubeconfig", type=click.Path(dir_okay=False, path_type=Path), default=None,
                        help="Kubeconfig holding the context (default: $KUBECONFIG or ~/.kube/config).")(func)
    return click.option("--context", default=None,
                        help="Context of the cluster (default: the kubeconfig's current context).")(func)


@click.command(context_settings=CONTEXT_SETTINGS)
@_context_options
@click.option("--cluster-name", default=None,
              help="This cluster's name, unique in the mesh. Required the first time; later runs read it from the "
              f"cluster's {names.CONFIG_MAP} ConfigMap.")
@click.option("--cluster-id", type=click.IntRange(1, 511), default=None,
              help="This cluster's ID, unique in the mesh (1..255, or 1..511). Required the first time, like "
              "--cluster-name.")
@install_options
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until the clustermesh-apiserver Deployment and the agents' DaemonSet are ready.")
@click.option("--wait-duration", type=DURATION, default="5m", show_default=True,
              help="How long --wait waits (90s, 5m, 1m30s); then exit 1 with what blocks it.")
@click.option("--dry-run", is_flag=True,
              help="Write nothing: print what would be created or updated (with -o yaml: the manifests).")
@click.option("-o", "--output", type=click.Choice(["yaml"]), default=None,
              help="With --dry-run: print the manifests (no Secrets) as YAML, e.g. for GitOps.")
def enable(context: str | None, kubeconfig: Path | None, cluster_name: str | None, cluster_id: int | None,
           wait: bool, wait_duration: float, dry_run: bool, output: str | None, **params: Any) -> None:
    """Install clustermesh into a cluster: its API server (with its etcd) and an agent per node.

    Creates or reuses the CA (Secret cilium-ca, kept if the cluster already has one, as
    cilium-cli does), issues the clustermesh-apiserver-{server,admin,remote,local}-cert
    certificates (valid ones are kept), and applies the ConfigMaps, ServiceAccounts, RBAC, the
    clustermesh-apiserver Service and Deployment and the clustermesh-agent DaemonSet through the
    Kubernetes API. Only what differs is written: running it again changes nothing. Then, unless
    --no-wait, it waits until the API server and every agent are ready.

    With --encryption wireguard (Cilium's Helm encryption.enabled=true, encryption.type=wireguard)
    every agent encrypts pod traffic to other nodes of the mesh with WireGuard; give the same
    mode to every cluster. The settings are recorded in the clustermesh-config ConfigMap, so a
    later enable without flags keeps them; --encryption none turns encryption off again.

    \b
    Examples:
      clustermesh enable --context kind-c1 --cluster-name c1 --cluster-id 1
      clustermesh enable --context kind-c1                  # again: reads name and ID, changes nothing
      clustermesh enable --context kind-c2 --cluster-name c2 --cluster-id 2 --service-type LoadBalancer
      clustermesh enable --context kind-c1 --cluster-name c1 --cluster-id 1 --dry-run -o yaml > c1.yaml
      clustermesh enable --context kind-c1 --encryption wireguard --encryption-strict-mode-cidr 10.0.0.0/8
      clustermesh enable --context lab-c1                   # a lab cluster: the lab's options are used

    \b
    Next: clustermesh connect --context kind-c1 --destination-context kind-c2

    Exit status: 0 when installed (and ready), 1 when the cluster cannot be read or written or
    --wait timed out (naming the pods and reasons), 2 on a usage error.
    """
    if output and not dry_run:
        raise click.UsageError("-o yaml prints the manifests instead of applying them: add --dry-run")
    try:
        run_enable(context, kubeconfig=kubeconfig, cluster_name=cluster_name, cluster_id=cluster_id, params=params,
                   wait=wait, wait_duration=wait_duration, dry_run=dry_run, output=output)
    except EnableUsageError as err:
        raise click.UsageError(str(err)) from None
    except MeshError as err:  # every failure says what to do: show it, exit 1
        raise click.ClickException(str(err)) from None


@click.command(context_settings=CONTEXT_SETTINGS)
@_context_options
@click.option("--namespace", "-n", default=DEFAULT_NAMESPACE, show_default=True, help="Namespace of the install.")
@click.option("--delete-ca", is_flag=True,
              help=f"Also delete the {names.CA_SECRET} Secret (kept by default: Cilium or other clusters may "
              "trust it).")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until the install's pods are gone.")
@click.option("--wait-duration", type=DURATION, default="2m", show_default=True, help="How long --wait waits.")
def disable(context: str | None, kubeconfig: Path | None, namespace: str, delete_ca: bool, wait: bool,
            wait_duration: float) -> None:
    """Remove clustermesh from a cluster: every object labelled app.kubernetes.io/part-of=clustermesh-py.

    The agents, the API server, their RBAC, ConfigMaps and Secrets (cilium-clustermesh with its
    peer entries included) are deleted; the CA Secret cilium-ca stays unless --delete-ca. Other
    clusters still list this one as a peer until you disconnect them (run that first). Running
    it again removes nothing and succeeds.

    \b
    Examples:
      clustermesh disconnect --context kind-c1 --destination-context kind-c2
      clustermesh disable --context kind-c1
      clustermesh disable --context kind-c1 --delete-ca --no-wait
    """
    try:
        run_disable(context, kubeconfig=kubeconfig, namespace=namespace, delete_ca=delete_ca, wait=wait,
                    wait_duration=wait_duration)
    except MeshError as err:  # every failure says what to do: show it, exit 1
        raise click.ClickException(str(err)) from None
