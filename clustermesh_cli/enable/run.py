"""The work of ``clustermesh enable`` and ``clustermesh disable``, callable from Python.

``lab up`` calls :func:`run_enable` directly with the lab's install options as ``base``; the
click commands in :mod:`~clustermesh_cli.enable.commands` are thin wrappers around these.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import click

from clustermesh_cli.enable.apply import Applied, apply_objects, wait_pods_gone, wait_ready
from clustermesh_cli.enable.certs import CA_COMMON_NAME, ca_material, load_ca, plan_certificates
from clustermesh_cli.enable.kube import KubeObjects, describe, open_context
from clustermesh_cli.enable.readiness import WorkloadState
from clustermesh_cli.enable.resolve import config_defaults, identity_changes, resolve_options, service_defaults
from clustermesh_cli.install import names
from clustermesh_cli.install.manifests import render_manifests
from clustermesh_cli.install.options import InstallOptions
from clustermesh_cli.install.render import render_yaml
from clustermesh_cli.install.secrets import certificate_secrets, secret_data
from clustermesh_cli.mesh.kube import kube_contexts
from meshcore.errors import MeshError
from meshcore.pki import CertificateAuthority

__all__ = ["DEFAULT_NAMESPACE", "DISABLE_ORDER", "EnableResult", "base_options_for", "resolve_context",
           "run_disable", "run_enable"]

DEFAULT_NAMESPACE: Final = "kube-system"
#: What ``disable`` deletes, in this order (workloads first, so nothing restarts on a missing Secret).
DISABLE_ORDER: Final = ("DaemonSet", "Deployment", "Service", "ClusterRoleBinding", "ClusterRole",
                        "ServiceAccount", "ConfigMap", "Secret")
DRY_RUN_PROG: Final = "clustermesh enable --dry-run -o yaml"
Echo = Callable[[str], None]
Obj = dict[str, Any]


class EnableError(MeshError):
    """``enable`` or ``disable`` cannot go on; the message says why."""


@dataclass(frozen=True)
class EnableResult:
    """What an ``enable`` run did: its options, each object's fate and, if waited for, the workloads."""

    context: str
    options: InstallOptions
    applied: tuple[Applied, ...] = ()
    states: tuple[WorkloadState, ...] = field(default=())

    @property
    def changed(self) -> bool:
        return any(a.changed for a in self.applied)


def resolve_context(context: str | None, kubeconfig: Path | None) -> str:
    """``context``, or the kubeconfig's current context."""
    if context:
        return context
    _, current = kube_contexts(kubeconfig)
    if not current:
        raise EnableError("the kubeconfig has no current context: pass --context")
    return current


def base_options_for(server: str, echo: Echo) -> InstallOptions | None:
    """The platform defaults of the cluster at ``server``: a lab cluster of this machine gets the
    lab's install options (the lab's host paths and addresses, see ``lab/mesh.py``)."""
    from lab.mesh import lab_cluster_at, lab_install_options  # the lab is optional to the product

    found = lab_cluster_at(server)
    if found is None:
        return None
    spec, cluster = found
    echo(f"{server} is cluster {cluster.name} of lab {spec.name!r} on this machine: using the lab's install options")
    return lab_install_options(spec, cluster)


def _existing(kube: KubeObjects, namespace: str) -> tuple[dict[str, Any], bool]:
    """Options the cluster already records (see :mod:`~clustermesh_cli.enable.resolve`); and
    whether it has a ``clustermesh-config`` (it is enabled)."""
    config = kube.get("ConfigMap", names.CONFIG_MAP, namespace)
    existing = config_defaults((config or {}).get("data"))
    if config is None:
        cilium = kube.get("ConfigMap", "cilium-config", namespace)
        existing = config_defaults((cilium or {}).get("data"), cilium=True)
    existing.update(service_defaults(kube.get("Service", names.APISERVER, namespace)))
    return existing, config is not None


def _secret(kube: KubeObjects, name: str, namespace: str) -> tuple[Obj | None, dict[str, bytes] | None]:
    """A Secret as stored, and its decoded data (both None when it does not exist)."""
    secret = kube.get("Secret", name, namespace)
    if secret is None:
        return None, None
    try:
        return secret, secret_data(secret)
    except MeshError as err:
        raise EnableError(f"context {kube.context}: {err}") from None


def _secrets(kube: KubeObjects, options: InstallOptions) -> tuple[list[Obj], dict[str, str]]:
    """The CA and certificate Secrets (reused where still good), with a note per reissued one."""
    ns = options.namespace
    ca_secret, ca_data = _secret(kube, names.CA_SECRET, ns)
    ca = load_ca(ca_data, namespace=ns)
    created = ca is None
    if ca is None:
        ca = CertificateAuthority.create(CA_COMMON_NAME)
    existing = {name: _secret(kube, name, ns)[1] for name in
                (names.SERVER_CERT_SECRET, names.ADMIN_CERT_SECRET, names.REMOTE_CERT_SECRET, names.LOCAL_CERT_SECRET)}
    plan = plan_certificates(ca, options.cluster_name, ns, existing, ca_created=created)
    ca_crt, ca_key = ca_material(ca, ca_data)
    secrets = certificate_secrets(ns, replace(plan.certs, ca_cert_pem=ca_crt, ca_key_pem=ca_key))
    if ca_secret is not None:  # keep other keys a pre-existing cilium-ca has (e.g. Cilium's tls.crt)
        secrets[0]["data"] = {**dict(ca_secret.get("data") or {}), **secrets[0]["data"]}
    notes = {f"Secret {ns}/{name}": note for name, note in plan.notes.items() if note not in ("reused", "created")}
    return secrets, notes


def _ensure_namespace(kube: KubeObjects, namespace: str, *, dry_run: bool, echo: Echo) -> None:
    if kube.get("Namespace", namespace) is not None:
        return
    echo(f"{'would create' if dry_run else 'creating'} namespace {namespace}")
    if not dry_run:
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})


def run_enable(context: str | None, *, kubeconfig: Path | None = None, cluster_name: str | None = None,
               cluster_id: int | None = None, params: Mapping[str, Any] | None = None,
               base: InstallOptions | None = None, detect_platform: bool = True, wait: bool = True,
               wait_duration: float = 300.0, dry_run: bool = False, output: str | None = None,
               echo: Echo = click.echo) -> EnableResult:
    """Install clustermesh into one cluster (the work of ``clustermesh enable``).

    ``params`` are the install flags by :class:`InstallOptions` field name (None: not given);
    ``base`` the platform's defaults (without it, and with ``detect_platform``, a lab cluster is
    recognised by its API address). With ``dry_run`` nothing is written: ``output="yaml"`` prints
    the manifests, else the plan. Raises :class:`EnableError`,
    :class:`~clustermesh_cli.enable.kube.KubeError`,
    :class:`~clustermesh_cli.enable.resolve.EnableUsageError`,
    :class:`~clustermesh_cli.enable.certs.CertificateError` or
    :class:`~clustermesh_cli.enable.apply.WaitTimeout`."""
    ctx = resolve_context(context, kubeconfig)
    params = dict(params or {})
    yaml_out = dry_run and output == "yaml"
    # With -o yaml, stdout is the manifests only: notes go to stderr.
    info: Echo = (lambda line: click.echo(line, err=True)) if yaml_out else echo
    with open_context(ctx, kubeconfig=kubeconfig) as kube:
        if base is None and detect_platform:
            base = base_options_for(kube.server, info)
        namespace = params.get("namespace") or (base.namespace if base is not None else DEFAULT_NAMESPACE)
        existing, enabled = _existing(kube, namespace)
        options = resolve_options(cluster_name=cluster_name, cluster_id=cluster_id, params=params, base=base,
                                  existing=existing, context=ctx)
        for warning in identity_changes(options, existing if enabled else {}):
            info(f"warning: {warning}")
        if yaml_out:
            echo(render_yaml(options, prog=DRY_RUN_PROG).rstrip("\n"))
            return EnableResult(ctx, options)
        echo(f"{'(dry run) ' if dry_run else ''}enabling clustermesh in context {ctx}: cluster "
             f"{options.cluster_name} (id {options.cluster_id}), namespace {namespace}, Service "
             f"{options.service_type}, source {options.source}"
             + (f", encryption {options.encryption}" if options.encryption != "none" else ""))
        _ensure_namespace(kube, namespace, dry_run=dry_run, echo=echo)
        secrets, notes = _secrets(kube, options)
        applied = apply_objects(kube, [*secrets, *render_manifests(options)], dry_run=dry_run, notes=notes)
        for item in applied:
            if item.changed:
                echo(f"  {item.line()}")
        unchanged = sum(1 for a in applied if not a.changed)
        if unchanged:
            echo(f"  {unchanged} object(s) unchanged" + (" (nothing to do)" if unchanged == len(applied) else ""))
        result = EnableResult(ctx, options, tuple(applied))
        if dry_run or not wait:
            return result
        echo(f"waiting up to {wait_duration:g}s for {names.APISERVER} and {names.AGENT} to be ready")
        states = wait_ready(kube, namespace, duration=wait_duration, echo=lambda line: echo(f"  {line}"))
        return replace(result, states=tuple(states))


def run_disable(context: str | None, *, kubeconfig: Path | None = None, namespace: str = DEFAULT_NAMESPACE,
                delete_ca: bool = False, wait: bool = True, wait_duration: float = 120.0,
                echo: Echo = click.echo) -> list[str]:
    """Remove clustermesh from one cluster (the work of ``clustermesh disable``): every object
    carrying the install's part-of label, in :data:`DISABLE_ORDER`; the ``cilium-ca`` Secret
    only with ``delete_ca``. Returns what was deleted; running it again deletes nothing."""
    ctx = resolve_context(context, kubeconfig)
    deleted: list[str] = []
    with open_context(ctx, kubeconfig=kubeconfig) as kube:
        kept_ca = False
        for kind in DISABLE_ORDER:
            scope = namespace if kind not in ("ClusterRole", "ClusterRoleBinding") else None
            for obj in kube.list(kind, scope, selector=names.PART_OF_SELECTOR):
                md = obj.get("metadata") or {}
                if kind == "Secret" and md.get("name") == names.CA_SECRET and not delete_ca:
                    kept_ca = True
                    continue
                what = describe({**obj, "kind": kind})
                if kube.delete(kind, md["name"], md.get("namespace")):
                    echo(f"  deleted {what}")
                    deleted.append(what)
        if not deleted:
            echo(f"nothing to remove: no clustermesh object in context {ctx} (namespace {namespace})"
                 + (f"; {names.CA_SECRET} is kept (--delete-ca removes it)" if kept_ca else ""))
        else:
            echo(f"removed {len(deleted)} object(s) from context {ctx}"
                 + (f"; kept Secret {namespace}/{names.CA_SECRET} (pass --delete-ca to remove it too)"
                    if kept_ca else ""))
        if wait:
            wait_pods_gone(kube, namespace, duration=wait_duration, echo=lambda line: echo(f"  {line}"))
    return deleted
