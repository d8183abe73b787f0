"""Pure: the :class:`InstallOptions` of an ``enable`` run, from the flags, the cluster and a base.

Precedence, per field: a flag given on the command line; then what the cluster already has (its
``clustermesh-config`` ConfigMap: name, ID, max-connected-clusters, routing mode, source, the
encryption settings; its
``clustermesh-apiserver`` Service: type and nodePort), so that re-running ``enable`` without flags
keeps the install as it is; then the base options (a platform's defaults, e.g. the lab's); then
the defaults of :class:`InstallOptions`. The name and ID have no default: the first ``enable`` of a
cluster must give them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from clustermesh_cli.install import names
from clustermesh_cli.install.cliopts import INSTALL_PARAMS
from clustermesh_cli.install.options import InstallOptions, InstallOptionsError
from meshcore.duration import parse_duration
from meshcore.errors import ConfigError

__all__ = ["ENCRYPTION_FIELDS", "EnableUsageError", "config_defaults", "resolve_options", "service_defaults"]

Obj = Mapping[str, Any]


class EnableUsageError(ConfigError):
    """The flags and the cluster's state do not make a valid install; the message says which flag."""


def config_defaults(data: Mapping[str, str] | None, *, cilium: bool = False) -> dict[str, Any]:
    """Options recorded in a ``clustermesh-config`` ConfigMap's data (or, with ``cilium``, the
    cluster identity in Cilium's ``cilium-config``; Cilium's placeholders ``default``/``0`` are
    not an identity)."""
    if not data:
        return {}
    out: dict[str, Any] = {}
    name = (data.get("cluster-name") or "").strip()
    if name and not (cilium and name == "default"):
        out["cluster_name"] = name
    for key, field_name in (("cluster-id", "cluster_id"), ("max-connected-clusters", "max_connected_clusters")):
        raw = (data.get(key) or "").strip()
        if raw.isdigit() and not (cilium and field_name == "cluster_id" and int(raw) == 0):
            out[field_name] = int(raw)
    if not cilium:
        if data.get("routing-mode"):
            out["routing_mode"] = data["routing-mode"].strip()
        if data.get("apiserver-source"):
            out["source"] = data["apiserver-source"].strip()
        out.update(_encryption_defaults(data))
    return out


#: ``clustermesh-config`` keys of the encryption settings (see ``manifests.encryption_config``).
_ENCRYPTION_KEYS = (("encryption", "encryption"), ("encryption-scope", "encryption_scope"),
                    ("wireguard-device", "wireguard_device"),
                    ("encryption-strict-mode-cidr", "encryption_strict_mode_cidr"))
_ROTATION_INTERVAL_KEY = "wireguard-key-rotation-interval"
ENCRYPTION_FIELDS = frozenset({*(f for _, f in _ENCRYPTION_KEYS), "node_encryption", "wireguard_key_rotation_interval"})


def _encryption_defaults(data: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, field_name in _ENCRYPTION_KEYS:
        if (data.get(key) or "").strip():
            out[field_name] = data[key].strip()
    if (data.get("encryption-node-encryption") or "").strip():
        out["node_encryption"] = data["encryption-node-encryption"].strip().lower() == "true"
    interval = (data.get(_ROTATION_INTERVAL_KEY) or "").strip()
    if interval:
        with contextlib.suppress(ValueError):  # a hand-edited value: the flag's default then
            out["wireguard_key_rotation_interval"] = parse_duration(interval, allow_zero=True)
    return out


def service_defaults(service: Obj | None) -> dict[str, Any]:
    """The type and nodePort of an existing ``clustermesh-apiserver`` Service."""
    if not service:
        return {}
    spec = service.get("spec") or {}
    kind = spec.get("type")
    if kind not in ("NodePort", "LoadBalancer"):
        return {}
    out: dict[str, Any] = {"service_type": kind}
    if kind == "NodePort":
        for port in spec.get("ports") or []:
            if port.get("port") == names.ETCD_PORT and port.get("nodePort"):
                out["node_port"] = int(port["nodePort"])
    return out


def resolve_options(*, cluster_name: str | None, cluster_id: int | None, params: Mapping[str, Any],
                    base: InstallOptions | None, existing: Mapping[str, Any], context: str) -> InstallOptions:
    """The options of this run (see the module docstring). ``params`` are the install flags by
    field name (None: not given); ``existing`` is :func:`config_defaults` plus
    :func:`service_defaults` of the cluster."""
    unknown = set(params) - set(INSTALL_PARAMS)
    if unknown:
        raise TypeError(f"not install options: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    if base is not None:
        values.update({f.name: getattr(base, f.name) for f in fields(base)})
    given = {k: v for k, v in params.items() if v is not None}
    if "max_connected_clusters" in given:
        given["max_connected_clusters"] = int(given["max_connected_clusters"])
    kept = dict(existing)
    if "service_type" in given and given["service_type"] != kept.get("service_type"):
        kept.pop("node_port", None)  # another Service type: the old nodePort is not carried over
    if given.get("encryption") == "none":
        # encryption turned off: its recorded (and the base's) settings go with it
        for name in ENCRYPTION_FIELDS - set(given):
            kept.pop(name, None)
            values.pop(name, None)
    values.update(kept)
    values.update(given)
    if cluster_name is not None:
        values["cluster_name"] = cluster_name
    if cluster_id is not None:
        values["cluster_id"] = cluster_id
    missing = [flag for flag, key in (("--cluster-name", "cluster_name"), ("--cluster-id", "cluster_id"))
               if key not in values]
    if missing:
        raise EnableUsageError(
            f"context {context} has no {names.CONFIG_MAP} ConfigMap yet, so this is the cluster's first enable: "
            f"pass {' and '.join(missing)} (unique in the mesh), e.g. clustermesh enable --context {context} "
            "--cluster-name c1 --cluster-id 1; later runs read them from the cluster"
        )
    try:
        return InstallOptions(**values)
    except InstallOptionsError as err:
        raise EnableUsageError(str(err)) from None


def identity_changes(options: InstallOptions, existing: Mapping[str, Any]) -> list[str]:
    """Warnings when this run renames or renumbers an enabled cluster."""
    out = []
    for key, label in (("cluster_name", "name"), ("cluster_id", "ID"),
                       ("max_connected_clusters", "max-connected-clusters")):
        if key in existing and existing[key] != getattr(options, key):
            out.append(f"changing the cluster {label} from {existing[key]} to {getattr(options, key)}: connected "
                       "peers must be connected again and workloads restarted (as with Cilium)")
    return out
