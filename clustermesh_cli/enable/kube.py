"""Thin I/O for ``enable`` / ``disable``: any object of the install, as the API's JSON dicts,
through the official (sync) ``kubernetes`` client.

Requests go through :class:`kubernetes.client.ApiClient` (its kubeconfig handling, TLS and auth)
on REST paths built from :data:`KINDS`, so the objects the renderer builds are sent and compared as
they are, without a round trip through the typed models (which drop unknown fields).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from clustermesh_cli.kubecontext import context_configuration
from meshcore.errors import ConfigError, MeshError

__all__ = ["KINDS", "REQUEST_TIMEOUT", "Kind", "KubeError", "KubeObjects", "kind_of", "open_context"]

REQUEST_TIMEOUT: Final = 15.0  # seconds per API request
Obj = dict[str, Any]


class KubeError(MeshError):
    """The cluster's API refused or did not answer; the message says what was asked and what to do."""


@dataclass(frozen=True)
class Kind:
    """A resource kind and where it lives in the REST API."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool

    def path(self, namespace: str | None, name: str | None = None) -> str:
        base = f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"
        if self.namespaced:
            if not namespace:
                raise ValueError(f"{self.kind} is namespaced: a namespace is needed")
            base += f"/namespaces/{namespace}"
        return f"{base}/{self.plural}" + (f"/{name}" if name else "")


#: Every kind the install writes, plus the ones ``enable`` and ``disable`` read.
KINDS: Final = {
    k.kind: k for k in (
        Kind("v1", "ConfigMap", "configmaps", True),
        Kind("v1", "Secret", "secrets", True),
        Kind("v1", "ServiceAccount", "serviceaccounts", True),
        Kind("v1", "Service", "services", True),
        Kind("v1", "Pod", "pods", True),
        Kind("v1", "Node", "nodes", False),
        Kind("v1", "Namespace", "namespaces", False),
        Kind("apps/v1", "Deployment", "deployments", True),
        Kind("apps/v1", "DaemonSet", "daemonsets", True),
        Kind("rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", False),
        Kind("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings", False),
    )
}  # fmt: skip


def kind_of(obj: Mapping[str, Any]) -> Kind:
    """The :class:`Kind` of an object (by ``kind``; its ``apiVersion`` must match)."""
    kind = KINDS.get(str(obj.get("kind")))
    if kind is None or kind.api_version != obj.get("apiVersion"):
        raise ValueError(f"not a kind the install writes: {obj.get('apiVersion')}/{obj.get('kind')}")
    return kind


def describe(obj: Mapping[str, Any]) -> str:
    """``Kind namespace/name`` (``Kind name`` when cluster-scoped)."""
    md = obj.get("metadata") or {}
    ns = md.get("namespace")
    return f"{obj.get('kind')} {ns + '/' if ns else ''}{md.get('name')}"


class KubeObjects:
    """One cluster, reached through one kubeconfig context: get, list, create, replace, delete."""

    def __init__(self, context: str, *, kubeconfig: str | Path | None = None) -> None:
        self.context = context
        try:
            configuration = context_configuration(context, kubeconfig)
        except ConfigError as err:
            raise KubeError(str(err)) from None
        self.server = str(configuration.host)
        self._api = client.ApiClient(configuration)

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]

    # ---- requests ----

    def _request(self, method: str, path: str, *, what: str, query: Mapping[str, str] | None = None,
                 body: Obj | None = None, missing_ok: bool = False) -> Obj | None:
        api = self._api
        try:
            m, url, headers, data, _ = api.param_serialize(
                method=method, resource_path=path, query_params=list((query or {}).items()) or None,
                header_params={"Accept": "application/json", "Content-Type": "application/json"}, body=body,
                auth_settings=["BearerToken"])  # fmt: skip
            response = api.call_api(m, url, header_params=headers, body=data, _request_timeout=REQUEST_TIMEOUT)
            response.read()  # type: ignore[no-untyped-call]
            result = api.response_deserialize(response, {"2XX": "object"}).data
        except ApiException as err:
            if err.status == 404 and missing_ok:
                return None
            raise KubeError(self._api_error(what, err)) from None
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise KubeError(
                f"the Kubernetes API of context {self.context} ({self.server}) does not answer ({what}): "
                f"{type(err).__name__}: {err}; check that the cluster is running and the context is right"
            ) from None
        return dict(result) if isinstance(result, dict) else {}

    def _api_error(self, what: str, err: ApiException) -> str:
        message = str(err.reason or "")
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            message = json.loads(err.body or "{}").get("message") or message
        hint = ""
        if err.status in (401, 403):
            hint = ": the context's credentials may not do this (enable needs to create Secrets, RBAC and workloads)"
        elif err.status == 409:
            hint = ": someone else changed it meanwhile; run the command again"
        return f"context {self.context}: {what}: HTTP {err.status} {message}{hint}"

    # ---- verbs ----

    def get(self, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        """The object, or None when it does not exist."""
        k = KINDS[kind]
        return self._request("GET", k.path(namespace, name), what=f"read {kind} {_where(namespace, name)}",
                             missing_ok=True)

    def list(self, kind: str, namespace: str | None = None, *, selector: str | None = None) -> list[Obj]:
        """The objects of ``kind`` (in ``namespace`` if namespaced), optionally by label selector."""
        k = KINDS[kind]
        query = {"labelSelector": selector} if selector else None
        scope = f" in {namespace}" if k.namespaced else ""
        doc = self._request("GET", k.path(namespace), query=query,
                            what=f"list {k.plural}{scope}" + (f" with {selector}" if selector else ""))
        return [dict(item) for item in (doc or {}).get("items") or []]

    def create(self, obj: Obj) -> Obj:
        k = kind_of(obj)
        ns = (obj.get("metadata") or {}).get("namespace")
        result = self._request("POST", k.path(ns), body=obj, what=f"create {describe(obj)}")
        assert result is not None
        return result

    def replace(self, obj: Obj) -> Obj:
        """PUT ``obj`` (it carries the resourceVersion it was read at: a concurrent change fails)."""
        k = kind_of(obj)
        md = obj.get("metadata") or {}
        result = self._request("PUT", k.path(md.get("namespace"), md.get("name")), body=obj,
                               what=f"update {describe(obj)}")
        assert result is not None
        return result

    def delete(self, kind: str, name: str, namespace: str | None = None) -> bool:
        """Delete (background propagation: owned objects go too); False when it was already gone."""
        k = KINDS[kind]
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        gone = self._request("DELETE", k.path(namespace, name), body=body, missing_ok=True,
                             what=f"delete {kind} {_where(namespace, name)}")
        return gone is not None


def _where(namespace: str | None, name: str) -> str:
    return f"{namespace}/{name}" if namespace else name


@contextlib.contextmanager
def open_context(context: str, *, kubeconfig: str | Path | None = None) -> Iterator[KubeObjects]:
    """A :class:`KubeObjects` for ``context``, closed on exit."""
    kube = KubeObjects(context, kubeconfig=kubeconfig)
    try:
        yield kube
    finally:
        kube.close()
