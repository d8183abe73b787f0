"""kube-apiserver's etcd key layout, as pure functions.

Every object lives at ``<prefix>/<resource path>/<namespace>/<name>`` (cluster-scoped kinds:
``<prefix>/<resource path>/<name>``). The resource path is the plural for the core group and the
built-in groups, with kube-apiserver's historical exceptions (nodes are ``minions``, Services
``services/specs``, Endpoints ``services/endpoints``); CRD-backed kinds and the apiextensions group
use ``<group>/<plural>``. Values are the object's JSON without ``metadata.resourceVersion``: that is
the key's etcd ``mod_revision``, filled in on read, as kube-apiserver does.
"""

from __future__ import annotations

import json
from typing import Any

# (group, plural) -> resource path, where kube-apiserver does not simply use the plural
_SPECIAL_PATHS: dict[tuple[str, str], str] = {
    ("", "nodes"): "minions",
    ("", "services"): "services/specs",
    ("", "endpoints"): "services/endpoints",
    ("apiextensions.k8s.io", "customresourcedefinitions"): "apiextensions.k8s.io/customresourcedefinitions",
    ("networking.k8s.io", "ingresses"): "ingress",
}
_SPECIAL_BY_PATH = {v: k for k, v in _SPECIAL_PATHS.items()}

# built-in (non-CRD) resources stored at ``<prefix>/<plural>`` and the group they belong to
BUILTIN_PLURAL_GROUPS: dict[str, str] = {
    "namespaces": "", "pods": "", "configmaps": "", "secrets": "", "serviceaccounts": "", "events": "",
    "persistentvolumeclaims": "", "persistentvolumes": "", "limitranges": "", "resourcequotas": "",
    "endpointslices": "discovery.k8s.io", "leases": "coordination.k8s.io",
    "networkpolicies": "networking.k8s.io", "deployments": "apps", "replicasets": "apps", "daemonsets": "apps",
    "statefulsets": "apps", "controllerrevisions": "apps", "roles": "rbac.authorization.k8s.io",
    "rolebindings": "rbac.authorization.k8s.io", "clusterroles": "rbac.authorization.k8s.io",
    "clusterrolebindings": "rbac.authorization.k8s.io", "poddisruptionbudgets": "policy",
    "jobs": "batch", "cronjobs": "batch",
}

# a key of our own inside the prefix that no resource can have (CRD groups contain a dot)
SENTINEL_PATH = "emulator/sentinel"


def resource_path(group: str, plural: str, crd: bool) -> str:
    """The resource part of the key for ``(group, plural)``."""
    special = _SPECIAL_PATHS.get((group, plural))
    if special is not None:
        return special
    if crd or (group and BUILTIN_PLURAL_GROUPS.get(plural) != group):
        return f"{group}/{plural}" if group else plural
    return plural


def object_key(prefix: str, group: str, plural: str, crd: bool, namespace: str | None, name: str) -> str:
    """The etcd key of one object (``namespace`` None or empty for cluster-scoped kinds)."""
    path = resource_path(group, plural, crd)
    return f"{prefix}/{path}/{namespace}/{name}" if namespace else f"{prefix}/{path}/{name}"


def sentinel_key(prefix: str) -> str:
    """The key written at start and on resync to mark the end of a history replay."""
    return f"{prefix}/{SENTINEL_PATH}"


def parse_key(prefix: str, key: str) -> tuple[str, str] | None:
    """The ``(group, plural)`` a key belongs to, or None for keys that are not objects of a kind we know
    how to name (the sentinel, kube-apiserver's ``ranges``/``masterleases``, foreign data)."""
    if not key.startswith(prefix + "/"):
        return None
    parts = key[len(prefix) + 1:].split("/")
    if len(parts) < 2:
        return None
    for n in (2, 1):
        special = _SPECIAL_BY_PATH.get("/".join(parts[:n]))
        if special is not None and len(parts) > n:
            return special
    head = parts[0]
    if "." in head:  # <group>/<plural>/...
        return (head, parts[1]) if len(parts) >= 3 else None
    group = BUILTIN_PLURAL_GROUPS.get(head)
    if group is None:
        return None
    return group, head


def encode_object(obj: dict[str, Any]) -> bytes:
    """The stored value: the object's JSON without ``metadata.resourceVersion``."""
    md = {k: v for k, v in obj.get("metadata", {}).items() if k != "resourceVersion"}
    return json.dumps({**obj, "metadata": md}, separators=(",", ":")).encode()


def decode_object(value: bytes, mod_revision: int) -> dict[str, Any]:
    """An object read from etcd, with ``metadata.resourceVersion`` = ``mod_revision``; raises ValueError
    for a value that is not a JSON object with metadata (e.g. kube-apiserver's protobuf encoding)."""
    obj = json.loads(value)
    if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
        raise ValueError("not a JSON object with metadata")
    obj["metadata"]["resourceVersion"] = str(mod_revision)
    return obj
