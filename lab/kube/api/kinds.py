"""The kind table: which resources the emulator serves, as data.

Each row of :data:`BUILTIN_KINDS` (always served, like kube-apiserver's compiled-in types) and of
:data:`DEFAULT_CRD_KINDS` (installed at start as real ``CustomResourceDefinition`` objects, like Cilium's
operator and the MCS controller do) describes one group/version/kind. Adding a kind is one row. CRD-backed
kinds are grouped by (group, plural) into CRD manifests by :func:`crd_manifests`, and a CRD object is turned
back into served kinds by :func:`kinds_from_crd`; the runtime registry (:mod:`lab.kube.api.registry`) only
ever learns about CRD kinds through the latter, so a CRD created over HTTP and a default one behave alike.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
SUBRESOURCE_VERBS = ("get", "patch", "update")


@dataclass(frozen=True, slots=True)
class PrinterColumn:
    """One of a CRD version's ``additionalPrinterColumns`` (``kubectl get`` shows it)."""

    name: str
    type: str
    json_path: str
    description: str = ""
    priority: int = 0
    format: str = ""


@dataclass(frozen=True, slots=True)
class KindInfo:
    """One served group/version/kind and its REST resource."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    status_subresource: bool = False
    categories: tuple[str, ...] = ()
    crd: bool = False  # backed by a CustomResourceDefinition (no strategic merge patch, like real CRs)
    subresources: tuple[str, ...] = ()  # besides status: "scale", "binding", "log", "exec"
    printer_columns: tuple[PrinterColumn, ...] = ()  # a CRD version's additionalPrinterColumns

    @property
    def api_version(self) -> str:
        """``v1`` for the core group, ``group/version`` otherwise."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def resource(self) -> str:
        """``plural`` or ``plural.group``, the name kubectl accepts."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def storage_key(self) -> tuple[str, str]:
        """Objects are shared by all versions of a (group, plural)."""
        return (self.group, self.plural)


def _row(group: str, version: str, kind: str, plural: str, namespaced: bool, short: tuple[str, ...] = (),
         status: bool = False, categories: tuple[str, ...] = (), crd: bool = False, *,
         sub: tuple[str, ...] = ()) -> KindInfo:
    return KindInfo(group, version, kind, plural, namespaced, short, status, categories, crd, sub)


NAMESPACED, CLUSTER = True, False

# group, version, kind, plural, namespaced, shortNames, status subresource, categories
BUILTIN_KINDS: tuple[KindInfo, ...] = (
    _row("", "v1", "Namespace", "namespaces", CLUSTER, ("ns",), True),
    _row("", "v1", "Node", "nodes", CLUSTER, ("no",), True),
    _row("", "v1", "Pod", "pods", NAMESPACED, ("po",), True, ("all",), sub=("binding", "log", "exec")),
    _row("", "v1", "Service", "services", NAMESPACED, ("svc",), True, ("all",)),
    _row("", "v1", "Endpoints", "endpoints", NAMESPACED, ("ep",)),
    _row("", "v1", "Secret", "secrets", NAMESPACED),
    _row("", "v1", "ConfigMap", "configmaps", NAMESPACED, ("cm",)),
    _row("", "v1", "Event", "events", NAMESPACED, ("ev",)),
    _row("", "v1", "ServiceAccount", "serviceaccounts", NAMESPACED, ("sa",)),
    _row("apps", "v1", "Deployment", "deployments", NAMESPACED, ("deploy",), True, ("all",), sub=("scale",)),
    _row("apps", "v1", "ReplicaSet", "replicasets", NAMESPACED, ("rs",), True, ("all",), sub=("scale",)),
    _row("apps", "v1", "DaemonSet", "daemonsets", NAMESPACED, ("ds",), True, ("all",)),
    _row("rbac.authorization.k8s.io", "v1", "Role", "roles", NAMESPACED),
    _row("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", NAMESPACED),
    _row("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", CLUSTER),
    _row("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", CLUSTER),
    _row("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", NAMESPACED, ("pdb",), True),
    _row("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", NAMESPACED),
    _row("coordination.k8s.io", "v1", "Lease", "leases", NAMESPACED),
    _row("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", NAMESPACED, ("netpol",)),
    _row("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", CLUSTER,
         ("crd", "crds"), True),
)

CRD_KIND = BUILTIN_KINDS[-1]
NAMESPACE_KIND = BUILTIN_KINDS[0]

DEFAULT_CRD_KINDS: tuple[KindInfo, ...] = (
    _row("cilium.io", "v2", "CiliumNode", "ciliumnodes", CLUSTER, ("cn", "ciliumn"), False, ("cilium",), True),
    _row("cilium.io", "v2", "CiliumIdentity", "ciliumidentities", CLUSTER, ("ciliumid",), False, ("cilium",), True),
    _row("cilium.io", "v2", "CiliumEndpoint", "ciliumendpoints", NAMESPACED, ("cep", "ciliumep"), False,
         ("cilium",), True),
    _row("cilium.io", "v2", "CiliumNetworkPolicy", "ciliumnetworkpolicies", NAMESPACED, ("cnp", "ciliumnp"), True,
         ("cilium", "ciliumpolicy"), True),
    _row("cilium.io", "v2", "CiliumClusterwideNetworkPolicy", "ciliumclusterwidenetworkpolicies", CLUSTER,
         ("ccnp",), True, ("cilium", "ciliumpolicy"), True),
    _row("cilium.io", "v2alpha1", "CiliumEndpointSlice", "ciliumendpointslices", CLUSTER, ("ces",), False,
         ("cilium",), True),
    _row("multicluster.x-k8s.io", "v1alpha1", "ServiceExport", "serviceexports", NAMESPACED, ("svcex",), True,
         (), True),
    _row("multicluster.x-k8s.io", "v1beta1", "ServiceExport", "serviceexports", NAMESPACED, ("svcex",), True,
         (), True),
    _row("multicluster.x-k8s.io", "v1alpha1", "ServiceImport", "serviceimports", NAMESPACED, ("svcim",), True,
         (), True),
    _row("multicluster.x-k8s.io", "v1beta1", "ServiceImport", "serviceimports", NAMESPACED, ("svcim",), True,
         (), True),
)

_VERSION_RE = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_priority(version: str) -> tuple[int, int, int, str]:
    """Sort key for Kubernetes version priority: GA > beta > alpha, higher numbers first, then others by name.

    Use with ``sorted(..., key=version_priority)``; the first element is the preferred version.
    """
    m = _VERSION_RE.match(version)
    if not m:
        return (3, 0, 0, version)
    major = int(m.group(1))
    stage = {None: 0, "beta": 1, "alpha": 2}[m.group(2)]
    minor = int(m.group(3) or 0)
    return (stage, -major, -minor, "")


def crd_manifests(kinds: Iterable[KindInfo]) -> list[dict[str, Any]]:
    """Build ``apiextensions.k8s.io/v1`` CRD objects for CRD-backed rows, one per (group, plural)."""
    grouped: dict[tuple[str, str], list[KindInfo]] = {}
    for k in kinds:
        grouped.setdefault(k.storage_key, []).append(k)
    out: list[dict[str, Any]] = []
    for (group, plural), rows in grouped.items():
        rows.sort(key=lambda r: version_priority(r.version))
        first = rows[0]
        names: dict[str, Any] = {"kind": first.kind, "listKind": first.list_kind, "plural": plural,
                                 "singular": first.singular}
        if first.short_names:
            names["shortNames"] = list(first.short_names)
        if first.categories:
            names["categories"] = list(first.categories)
        versions = []
        for i, r in enumerate(rows):
            v: dict[str, Any] = {
                "name": r.version,
                "served": True,
                "storage": i == 0,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            }
            if r.status_subresource:
                v["subresources"] = {"status": {}}
            if r.printer_columns:
                v["additionalPrinterColumns"] = [
                    {"name": c.name, "type": c.type, "jsonPath": c.json_path, "priority": c.priority,
                     **({"description": c.description} if c.description else {}),
                     **({"format": c.format} if c.format else {})} for c in r.printer_columns]
            versions.append(v)
        out.append({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {"group": group, "names": names, "scope": "Namespaced" if first.namespaced else "Cluster",
                     "versions": versions},
        })
    return out


def kinds_from_crd(crd: dict[str, Any]) -> list[KindInfo]:
    """The served kinds a CRD object defines (versions with ``served: false`` are left out)."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group = str(spec.get("group", ""))
    namespaced = spec.get("scope", "Namespaced") == "Namespaced"
    out = []
    for v in spec.get("versions") or []:
        if not v.get("served", True):
            continue
        out.append(KindInfo(
            group=group,
            version=str(v["name"]),
            kind=str(names["kind"]),
            plural=str(names["plural"]),
            namespaced=namespaced,
            short_names=tuple(names.get("shortNames") or ()),
            status_subresource="status" in (v.get("subresources") or {}),
            categories=tuple(names.get("categories") or ()),
            crd=True,
            printer_columns=printer_columns(v),
        ))
    return out


def printer_columns(version: dict[str, Any]) -> tuple[PrinterColumn, ...]:
    """The ``additionalPrinterColumns`` of one CRD version (entries without name or jsonPath skipped)."""
    out = []
    for col in version.get("additionalPrinterColumns") or []:
        if not isinstance(col, dict) or not col.get("name") or not col.get("jsonPath"):
            continue
        try:
            priority = int(col.get("priority") or 0)
        except (TypeError, ValueError):
            priority = 0
        out.append(PrinterColumn(str(col["name"]), str(col.get("type") or "string"), str(col["jsonPath"]),
                                 str(col.get("description") or ""), priority, str(col.get("format") or "")))
    return tuple(out)


def validate_crd(crd: dict[str, Any]) -> str | None:
    """Return why a CRD object is unacceptable, or None. Mirrors the apiserver's main structural checks."""
    spec = crd.get("spec")
    if not isinstance(spec, dict):
        return "spec: Required value"
    names = spec.get("names")
    if not isinstance(names, dict) or not names.get("plural") or not names.get("kind"):
        return "spec.names: Required value: plural and kind are required"
    group = spec.get("group")
    if not group or "." not in str(group):
        return "spec.group: Invalid value: should be a domain with at least one dot"
    expected = f"{names['plural']}.{group}"
    if crd.get("metadata", {}).get("name") != expected:
        return f"metadata.name: Invalid value: must be spec.names.plural+\".\"+spec.group ({expected})"
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        return "spec.scope: Unsupported value: must be Namespaced or Cluster"
    versions = spec.get("versions")
    if not isinstance(versions, list) or not versions:
        return "spec.versions: Required value"
    if not all(isinstance(v, dict) and v.get("name") for v in versions):
        return "spec.versions[].name: Required value"
    if sum(1 for v in versions if v.get("storage")) != 1:
        return "spec.versions: Invalid value: must have exactly one version marked as storage version"
    return None
