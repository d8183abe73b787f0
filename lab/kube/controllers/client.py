"""The controllers' API access: the official ``kubernetes.aio`` client, raw JSON in and out.

Reads (paginated list, watch) are :class:`meshcore.k8s.client.K8sApi`'s, shared with the mesh; this adds
the writes the controllers make (create, merge patch, delete with preconditions, pod binding) over the
same ``ApiClient`` and turns :mod:`~lab.kube.controllers.actions` into requests. Errors are
:class:`RequestError` (a :class:`~meshcore.errors.K8sError`) carrying the HTTP status, so callers can
tell "already there" (409) and "already gone" (404) from real failures.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes.aio import client as kclient
from kubernetes.aio import config as kconfig
from kubernetes.aio.client.exceptions import ApiException

from lab.kube.controllers.actions import PODS, Action, Bind, Create, Delete, Patch
from meshcore.errors import ConfigError, K8sError
from meshcore.k8s.client import K8sApi
from meshcore.k8s.resource import ResourceRef

Obj = dict[str, Any]
_TIMEOUT = 30.0


class RequestError(K8sError):
    """A write was refused or could not be sent; ``status`` is None when the API was unreachable."""

    def __init__(self, message: str, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def object_path(ref: ResourceRef, namespace: str | None, name: str | None = None,
                subresource: str | None = None) -> str:
    """The REST path of a collection, an object or a subresource."""
    base = f"/apis/{ref.group}/{ref.version}" if ref.group else f"/api/{ref.version}"
    path = f"{base}/namespaces/{namespace}/{ref.plural}" if ref.namespaced and namespace else f"{base}/{ref.plural}"
    if name:
        path += f"/{name}"
        if subresource:
            path += f"/{subresource}"
    return path


class KubeClient:
    """Reads (``.reader``) and writes against one API server."""

    def __init__(self, api_client: kclient.ApiClient) -> None:
        self._client = api_client
        self.reader = K8sApi(api_client)

    @classmethod
    async def from_kubeconfig(cls, path: str | Path, *, context: str | None = None) -> KubeClient:
        """Connect with a kubeconfig file; raises :class:`ConfigError` with the reason if it is unusable."""
        if not await asyncio.to_thread(os.path.isfile, path):  # before the library's misleading message
            raise ConfigError(f"kubeconfig {path} does not exist (or is not a file)")
        configuration = kclient.Configuration()
        try:
            await kconfig.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(path), context=context, client_configuration=configuration)
        except (kconfig.ConfigException, OSError, ValueError) as err:
            raise ConfigError(f"cannot load kubeconfig {path}: {err}") from err
        return cls(kclient.ApiClient(configuration))

    async def close(self) -> None:
        await self._client.close()  # type: ignore[no-untyped-call]

    async def request(self, method: str, path: str, body: Any = None, *, query: list[tuple[str, Any]] | None = None,
                      content_type: str = "application/json") -> Obj:
        """One request; the decoded JSON answer, or :class:`RequestError`."""
        params = await self._client.param_serialize(
            method=method, resource_path=path, query_params=query or [], body=body,
            header_params={"Accept": "application/json", "Content-Type": content_type},
            auth_settings=["BearerToken"])
        what = f"{method} {path}"
        try:
            response = await self._client.call_api(*params, _request_timeout=_TIMEOUT)
            data: bytes = await response.read()  # type: ignore[no-untyped-call]
        except ApiException as err:
            raise _error(err.status, err.body or b"", what) from err
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise RequestError(f"{what}: Kubernetes API unreachable: {err}") from err
        if response.status >= 400:
            raise _error(response.status, data, what)
        try:
            result: Obj = json.loads(data) if data else {}
        except ValueError as err:
            raise RequestError(f"{what}: answer is not JSON: {data[:200]!r}", response.status) from err
        return result

    async def get(self, ref: ResourceRef, namespace: str | None, name: str) -> Obj | None:
        """One object, or None if it does not exist."""
        try:
            return await self.request("GET", object_path(ref, namespace, name))
        except RequestError as err:
            if err.status == 404:
                return None
            raise

    async def apply(self, action: Action) -> Obj | None:
        """Perform one action; returns the object the API answered with (None for a delete of nothing)."""
        if isinstance(action, Create):
            return await self.request("POST", object_path(action.ref, action.namespace), action.body)
        if isinstance(action, Patch):
            return await self.request("PATCH", object_path(action.ref, action.namespace, action.name,
                                                           action.subresource),
                                      action.body, content_type="application/merge-patch+json")
        if isinstance(action, Delete):
            opts: Obj = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
            if action.uid:
                opts["preconditions"] = {"uid": action.uid}
            if action.grace_seconds is not None:
                opts["gracePeriodSeconds"] = action.grace_seconds
            try:
                return await self.request("DELETE", object_path(action.ref, action.namespace, action.name), opts)
            except RequestError as err:
                if err.status == 404:
                    return None
                raise
        if isinstance(action, Bind):
            body: Obj = {"apiVersion": "v1", "kind": "Binding",
                         "metadata": {"name": action.name, "namespace": action.namespace},
                         "target": {"apiVersion": "v1", "kind": "Node", "name": action.node}}
            if action.uid:
                body["metadata"]["uid"] = action.uid
            return await self.request("POST", object_path(PODS, action.namespace, action.name, "binding"), body)
        raise TypeError(f"unknown action {action!r}")


def _error(status: int | None, body: bytes | str, what: str) -> RequestError:
    reason, message = "", ""
    try:
        doc = json.loads(body)
        reason, message = str(doc.get("reason", "")), str(doc.get("message", ""))
    except (ValueError, AttributeError):
        message = str(body)[:300]
    return RequestError(f"{what}: HTTP {status}: {message or reason}", status, reason)
