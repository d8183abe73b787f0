"""Thin raw access to the Kubernetes API through the official ``kubernetes.aio`` client.

The official client brings configuration (kubeconfig, in-cluster service accounts, TLS, tokens)
and transport; the typed models are not needed: converters take the API's JSON as plain dicts,
so one path works for core kinds, Cilium CRDs and CRDs registered at runtime alike.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes.aio import client as kclient
from kubernetes.aio import config as kconfig
from kubernetes.aio.client.exceptions import ApiException

from meshcore.errors import ConfigError, K8sError, K8sGoneError, K8sNotFoundError

Object = dict[str, Any]


def _error(status: int | None, body: bytes | str, what: str) -> K8sError:
    """The project error for an HTTP error answer, with the API server's own message."""
    try:
        message = json.loads(body).get("message", "") or str(body)[:300]
    except (ValueError, AttributeError):
        message = str(body)[:300]
    text = f"{what}: HTTP {status}: {message}"
    if status == 410:
        return K8sGoneError(text, status=status)
    if status == 404:
        return K8sNotFoundError(text, status=status)
    return K8sError(text, status=status)


def _selectors(label_selector: str | None, field_selector: str | None) -> list[tuple[str, Any]]:
    """The ``labelSelector`` / ``fieldSelector`` query parameters (empty ones left out)."""
    query: list[tuple[str, Any]] = []
    if label_selector:
        query.append(("labelSelector", label_selector))
    if field_selector:
        query.append(("fieldSelector", field_selector))
    return query


class K8sApi:
    """GET-style list and watch of any resource path, over one ``kubernetes.aio`` ApiClient."""

    def __init__(self, api_client: kclient.ApiClient) -> None:
        self._client = api_client

    @classmethod
    async def from_kubeconfig(cls, path: str | Path | None = None, *, context: str | None = None) -> K8sApi:
        """Connect with a kubeconfig file (``None``: ``$KUBECONFIG`` or ``~/.kube/config``)."""
        configuration = kclient.Configuration()
        try:
            await kconfig.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(path) if path is not None else None,
                context=context,
                client_configuration=configuration,
            )
        except (kconfig.ConfigException, OSError, ValueError) as err:
            raise ConfigError(f"cannot load kubeconfig {path or '(default)'}: {err}") from err
        return cls(kclient.ApiClient(configuration))

    @classmethod
    async def connect(cls, kubeconfig: str | Path | None = None) -> K8sApi:
        """``kubeconfig`` if given; else the in-cluster service account when running in a pod
        (``KUBERNETES_SERVICE_HOST`` set); else ``$KUBECONFIG`` or ``~/.kube/config``."""
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            configuration = kclient.Configuration()
            try:
                kconfig.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            except kconfig.ConfigException as err:
                raise ConfigError(f"cannot use the in-cluster service account: {err}") from err
            return cls(kclient.ApiClient(configuration))
        return await cls.from_kubeconfig(kubeconfig)

    async def close(self) -> None:
        """Close the HTTP session (idempotent)."""
        await self._client.close()  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> K8sApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _request(
        self,
        method: str,
        path: str,
        query: list[tuple[str, Any]],
        *,
        request_timeout: float | None,
        body: Any = None,
        content_type: str | None = None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        params = await self._client.param_serialize(
            method=method,
            resource_path=path,
            query_params=query,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            return await self._client.call_api(*params, _request_timeout=request_timeout)
        except ApiException as err:
            raise _error(err.status, err.body or "", f"{method} {path}") from err
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise K8sError(f"{method} {path}: Kubernetes API unreachable: {err}") from err

    async def get(self, path: str) -> Object:
        """GET one object (or any JSON document) at ``path``."""
        response = await self._request("GET", path, [], request_timeout=30)
        data = await response.read()
        self._raise_for_status(response.status, data, f"GET {path}")
        result: Object = json.loads(data)
        return result

    async def patch(self, path: str, body: Object, *, content_type: str = "application/merge-patch+json") -> Object:
        """PATCH the object at ``path`` (a JSON merge patch by default); the object as stored after it."""
        response = await self._request("PATCH", path, [], request_timeout=30, body=body, content_type=content_type)
        data = await response.read()
        self._raise_for_status(response.status, data, f"PATCH {path}")
        result: Object = json.loads(data)
        return result

    async def list(
        self,
        path: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int = 500,
    ) -> tuple[list[Object], str]:
        """Every object at a collection ``path`` (paginated) and the list's resourceVersion;
        ``label_selector`` and ``field_selector`` narrow it as the API's query parameters do."""
        items: list[Object] = []
        token = ""
        while True:
            query: list[tuple[str, Any]] = [("limit", page_size), *_selectors(label_selector, field_selector)]
            if token:
                query.append(("continue", token))
            page = await self._request("GET", path, query, request_timeout=60)
            data = await page.read()
            self._raise_for_status(page.status, data, f"list {path}")
            body = json.loads(data)
            kind = str(body.get("kind", "")).removesuffix("List")
            api_version = body.get("apiVersion", "")
            for item in body.get("items") or []:
                # List items come without kind/apiVersion; converters like to see them.
                item.setdefault("kind", kind)
                item.setdefault("apiVersion", api_version)
                items.append(item)
            meta = body.get("metadata") or {}
            token = meta.get("continue") or ""
            if not token:
                return items, str(meta.get("resourceVersion", ""))

    async def watch(
        self,
        path: str,
        *,
        resource_version: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncGenerator[Object, None]:
        """Watch events (``{"type": ..., "object": ...}``) from ``resource_version``, with bookmarks."""
        query: list[tuple[str, Any]] = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", resource_version),
            ("timeoutSeconds", timeout_seconds),
            *_selectors(label_selector, field_selector),
        ]
        response = await self._request("GET", path, query, request_timeout=timeout_seconds + 30)
        raw: aiohttp.ClientResponse = response.response
        try:
            if response.status >= 400:
                data = await raw.read()
                self._raise_for_status(response.status, data, f"watch {path}")
            while True:
                try:
                    line = await raw.content.readline()
                except (aiohttp.ClientError, TimeoutError, OSError) as err:
                    raise K8sError(f"watch {path}: stream broke: {err}") from err
                if not line:
                    return
                if line.strip():
                    try:
                        yield json.loads(line)
                    except ValueError as err:
                        raise K8sError(f"watch {path}: malformed event line: {line[:200]!r}") from err
        finally:
            raw.release()

    @staticmethod
    def _raise_for_status(status: int, data: bytes, what: str) -> None:
        if status >= 400:
            raise _error(status, data, what)
