"""Discovery and schema documents built from the kind registry: ``/version``, ``/api``, ``/apis``,
``/api/v1``, ``/apis/<group>/<version>``, a minimal ``/openapi/v2`` and ``/openapi/v3`` (Tables for
``kubectl get``: :mod:`lab.kube.api.printers`).

Only legacy (unaggregated) discovery is served: client-go asks for the aggregated
``apidiscovery.k8s.io/v2`` form with a JSON fallback, and reads the response's Content-Type to tell
which it got. The OpenAPI documents list no schemas: kubectl's client-side validation then has nothing
to check against and lets objects through, which is the emulator's contract (it does not validate
schemas either).
"""

from __future__ import annotations

from typing import Any

from lab.kube.api.kinds import ALL_VERBS, SUBRESOURCE_VERBS, KindInfo
from lab.kube.api.registry import KindRegistry

GIT_VERSION = "v1.32.0"


def version_info() -> dict[str, Any]:
    """``/version``."""
    return {"major": "1", "minor": "32", "gitVersion": GIT_VERSION, "gitCommit": "k8sapi-emulator",
            "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.23",
            "compiler": "gc", "platform": "linux/amd64"}


def core_versions(server_address: str) -> dict[str, Any]:
    """``/api``."""
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}


def _group_doc(group: str, versions: list[str]) -> dict[str, Any]:
    gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}


def group_list(registry: KindRegistry) -> dict[str, Any]:
    """``/apis``: every non-core group with its versions, preferred first."""
    groups = [_group_doc(g, vs) for g, vs in registry.groups() if g]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def group(registry: KindRegistry, name: str) -> dict[str, Any] | None:
    """``/apis/<group>``."""
    for g, vs in registry.groups():
        if g == name and g:
            return {"kind": "APIGroup", "apiVersion": "v1", **_group_doc(g, vs)}
    return None


def _resource_entry(k: KindInfo) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": k.plural, "singularName": k.singular, "namespaced": k.namespaced,
                             "kind": k.kind, "verbs": list(ALL_VERBS)}
    if k.short_names:
        entry["shortNames"] = list(k.short_names)
    if k.categories:
        entry["categories"] = list(k.categories)
    return entry


def resource_list(registry: KindRegistry, group_name: str, version: str) -> dict[str, Any] | None:
    """``/api/v1`` or ``/apis/<group>/<version>``: the resources (and status subresources) served there."""
    kinds = [k for k in registry.all() if k.group == group_name and k.version == version]
    if not kinds:
        return None
    resources = []
    for k in kinds:
        resources.append(_resource_entry(k))
        if k.status_subresource:
            resources.append({"name": f"{k.plural}/status", "singularName": "", "namespaced": k.namespaced,
                              "kind": k.kind, "verbs": list(SUBRESOURCE_VERBS)})
        for sub in k.subresources:
            entry: dict[str, Any] = {"name": f"{k.plural}/{sub}", "singularName": "", "namespaced": k.namespaced,
                                     "kind": k.kind, "verbs": list(SUBRESOURCE_VERBS)}
            if sub == "scale":
                entry.update(group="autoscaling", version="v1", kind="Scale")
            elif sub == "binding":
                entry.update(kind="Binding", verbs=["create"])
            elif sub == "log":
                entry["verbs"] = ["get"]
            elif sub == "exec":
                entry.update(kind="PodExecOptions", verbs=["create", "get"])
            resources.append(entry)
    gv = f"{group_name}/{version}" if group_name else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}


def openapi_v2() -> dict[str, Any]:
    """A schema-less Swagger 2.0 document (JSON; kubectl asks for protobuf and is answered 404)."""
    return {"swagger": "2.0", "info": {"title": "Kubernetes", "version": GIT_VERSION}, "paths": {},
            "definitions": {}}


def openapi_v3_root(registry: KindRegistry) -> dict[str, Any]:
    """``/openapi/v3``: one entry per served group-version, each pointing at a schema-less document."""
    paths: dict[str, Any] = {}
    for g, vs in registry.groups():
        for v in vs:
            rel = f"api/{v}" if not g else f"apis/{g}/{v}"
            paths[rel] = {"serverRelativeURL": f"/openapi/v3/{rel}?hash=0"}
    return {"paths": paths}


def openapi_v3_doc(registry: KindRegistry, group_name: str, version: str) -> dict[str, Any] | None:
    """A schema-less OpenAPI 3.0 document for one group-version.

    It lists each kind's item path with a PATCH operation tagged ``x-kubernetes-group-version-kind`` that
    takes the ``fieldValidation`` query parameter: that is how kubectl decides the server validates
    fields itself, so it skips client-side schema validation (which would need protobuf OpenAPI v2)."""
    kinds = [k for k in registry.all() if k.group == group_name and k.version == version]
    if not kinds:
        return None
    paths: dict[str, Any] = {}
    for k in kinds:
        prefix = f"/api/{version}" if not group_name else f"/apis/{group_name}/{version}"
        ns = "/namespaces/{namespace}" if k.namespaced else ""
        gvk = {"group": group_name, "version": version, "kind": k.kind}
        params = [{"name": p, "in": "query", "schema": {"type": "string"}}
                  for p in ("dryRun", "fieldManager", "fieldValidation", "force")]
        op = {"operationId": f"patch{k.kind}", "x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk,
              "parameters": params, "responses": {"200": {"description": "OK"}}}
        paths[f"{prefix}{ns}/{k.plural}/{{name}}"] = {"patch": op}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": GIT_VERSION}, "paths": paths,
            "components": {"schemas": {}}}
