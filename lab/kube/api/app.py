"""The aiohttp application: Kubernetes REST paths mapped onto the :class:`~lab.kube.api.store.ObjectStore`.

Paths handled: ``/version``, ``/healthz`` (``/livez``, ``/readyz``), discovery (``/api``, ``/api/v1``,
``/apis``, ``/apis/<g>``, ``/apis/<g>/<v>``), ``/openapi/v2``, ``/openapi/v3[/...]``, and for every served
kind the collection (GET list/watch, POST, DELETE collection), the item (GET, PUT, PATCH, DELETE) and the
``status`` subresource (GET, PUT, PATCH), ``scale`` (GET, PUT, PATCH: Deployments, ReplicaSets),
``pods/binding`` (POST), ``pods/log`` (GET) and ``pods/exec`` (WebSocket, :mod:`~lab.kube.api.podexec`),
in both ``/namespaces/<ns>/<plural>`` and cluster-wide forms,
plus the legacy ``/watch/`` prefix. DELETE takes ``gracePeriodSeconds`` (DeleteOptions body or query).
Lists honour ``labelSelector``, ``fieldSelector``, ``limit`` and
``continue``; ``Accept: ...;as=Table`` gets a ``meta.k8s.io/v1 Table`` with kube-apiserver's columns
(:mod:`~lab.kube.api.printers`; what ``kubectl get`` prints), for lists, single objects and watches.
Bodies may be JSON, YAML or, for the kinds kubectl's typed clients send that way, protobuf
(:mod:`~lab.kube.api.protobody`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from lab.kube.api import discovery, podexec, podlogs, printers, protobody
from lab.kube.api.errors import ApiError, bad_request, method_not_allowed, unsupported_media_type
from lab.kube.api.kinds import KindInfo
from lab.kube.api.patch import json_patch, merge_patch
from lab.kube.api.store import ObjectStore
from lab.kube.api.watchstream import WatchParams, serve_watch

PATCH_TYPES = {
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/json-patch+json": "json",
    "application/apply-patch+yaml": "apply",
}


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed resource path."""

    info: KindInfo
    namespace: str | None
    name: str | None
    subresource: str | None
    watch: bool


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(body, separators=(",", ":")).encode(), status=status,
                        content_type="application/json")


def _error(e: ApiError) -> web.Response:
    return _json(e.status(), e.code)


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("true", "1")


class ApiApp:
    """Request handlers over one store. ``bookmark_interval`` sets how often watches get BOOKMARKs;
    ``pod_log_root`` is where ``pods/log`` finds container logs (see :mod:`lab.kube.api.podlogs`)."""

    def __init__(self, store: ObjectStore, *, bookmark_interval: float = 1.0,
                 pod_log_root: Path | None = None) -> None:
        self.store = store
        self.bookmark_interval = bookmark_interval
        self.pod_log_root = pod_log_root
        self.stopping = False

    def make_app(self) -> web.Application:
        """The aiohttp application (one catch-all route; dispatch is by path shape)."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Entry point for every request; renders :class:`ApiError` as a ``Status``."""
        try:
            return await self._dispatch(request)
        except ApiError as e:
            return _error(e)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if request.method == "GET":
            doc = self._static(request, parts)
            if doc is not None:
                return _json(doc)
        if parts[:1] == ["api"] and len(parts) >= 3 and parts[1] == "v1":
            return await self._resource(request, "", "v1", parts[2:])
        if parts[:1] == ["apis"] and len(parts) >= 4:
            return await self._resource(request, parts[1], parts[2], parts[3:])
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    def _static(self, request: web.Request, parts: list[str]) -> dict[str, Any] | None:
        reg = self.store.registry
        if parts in (["healthz"], ["livez"], ["readyz"]):
            return {"status": "ok"}
        if parts == ["version"]:
            return discovery.version_info()
        if parts == ["api"]:
            return discovery.core_versions(request.host)
        if parts == ["api", "v1"]:
            return discovery.resource_list(reg, "", "v1")
        if parts == ["apis"]:
            return discovery.group_list(reg)
        if len(parts) == 2 and parts[0] == "apis":
            doc = discovery.group(reg, parts[1])
            if doc is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return doc
        if len(parts) == 3 and parts[0] == "apis":
            doc = discovery.resource_list(reg, parts[1], parts[2])
            if doc is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return doc
        if parts == ["openapi", "v2"]:
            if "protobuf" in request.headers.get("Accept", ""):
                raise ApiError(404, "NotFound", "OpenAPI v2 is served as JSON only")
            return discovery.openapi_v2()
        if parts == ["openapi", "v3"]:
            return discovery.openapi_v3_root(reg)
        if parts[:2] == ["openapi", "v3"] and len(parts) in (4, 5):
            gv = parts[3:] if parts[2] == "api" else parts[3:5] if len(parts) == 5 else []
            doc = (discovery.openapi_v3_doc(reg, "", gv[0]) if parts[2] == "api"
                   else discovery.openapi_v3_doc(reg, gv[0], gv[1]) if len(gv) == 2 else None)
            if doc is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return doc
        return None

    def _target(self, group: str, version: str, rest: list[str]) -> Target:
        reg = self.store.registry
        watch = False
        if rest and rest[0] == "watch":
            watch, rest = True, rest[1:]
        if not rest:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if rest[0] == "namespaces" and len(rest) >= 3 and reg.lookup(group, version, rest[2]) is not None:
            info = reg.lookup(group, version, rest[2])
            ns: str | None = rest[1]
            tail = rest[3:]
        else:
            info = reg.lookup(group, version, rest[0])
            ns, tail = None, rest[1:]
        if info is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if len(tail) > 2 or (len(tail) == 2 and not ((tail[1] == "status" and info.status_subresource)
                                                      or tail[1] in info.subresources)):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not info.namespaced and ns is not None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return Target(info, ns, tail[0] if tail else None, tail[1] if len(tail) == 2 else None, watch)

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            raise bad_request("the request body is empty")
        ctype = request.content_type
        try:
            if "yaml" in ctype:
                return yaml.safe_load(raw)
            if "protobuf" in ctype:
                return protobody.decode(raw)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as e:
            raise bad_request(f"the request body could not be decoded: {e}") from None

    async def _resource(self, request: web.Request, group: str, version: str, rest: list[str]
                        ) -> web.StreamResponse:
        t = self._target(group, version, rest)
        q = request.query
        if q.get("dryRun"):
            raise bad_request("dryRun is not supported by the Kubernetes API emulator")
        method = request.method
        if t.name is None:
            if method == "GET":
                if t.watch or _truthy(q.get("watch")):
                    return await self._watch(request, t)
                return self._list(request, t)
            if method == "POST":
                body = await self._body(request)
                if not isinstance(body, dict):
                    raise bad_request("the request body must be an object")
                self._check_kind(t.info, body)
                obj = self.store.create(body, resource=t.info, namespace=t.namespace, keep_status=False)
                return _json(obj, 201)
            if method == "DELETE":
                items = self.store.delete_collection(t.info, t.namespace, label_selector=q.get("labelSelector"),
                                                     field_selector=q.get("fieldSelector"), graceful=True)
                return _json(self._list_doc(t.info, items, self.store.resource_version))
            raise method_not_allowed(f"{method} is not supported on a collection")
        if t.watch:  # legacy /watch/.../<name>: a watch on one object
            return await self._watch(request, t, field=f"metadata.name={t.name}")
        return await self._item(request, t, t.name)

    def _check_kind(self, info: KindInfo, body: dict[str, Any]) -> None:
        if body.get("kind") and body["kind"] != info.kind:
            raise bad_request(f"the kind of the body ({body['kind']}) does not match the URL ({info.kind})")

    async def _item(self, request: web.Request, t: Target, name: str) -> web.StreamResponse:
        method, info = request.method, t.info
        if t.subresource in ("binding", "log", "scale", "exec"):
            return await self._subresource(request, t, name, t.subresource)
        if method == "GET":
            obj = self.store.get(info, name, t.namespace, copy=False)
            if "as=Table" in request.headers.get("Accept", "") and not t.subresource:
                return _json(printers.table(info, [obj], str(obj["metadata"].get("resourceVersion", "")),
                                            include_object=request.query.get("includeObject", "Metadata")))
            return _json(obj)
        if method == "PUT":
            body = await self._body(request)
            if not isinstance(body, dict):
                raise bad_request("the request body must be an object")
            self._check_kind(info, body)
            obj = self.store.update(body, resource=info, namespace=t.namespace, name=name,
                                    subresource=t.subresource, keep_status=False, copy=False)
            return _json(obj)
        if method == "PATCH":
            ptype = PATCH_TYPES.get(request.content_type)
            if ptype is None or (ptype == "strategic" and info.crd):
                raise unsupported_media_type(request.content_type)
            body = await self._body(request)
            created = ptype == "apply" and not self._exists(info, name, t.namespace)
            obj = self.store.patch(info, name, body, namespace=t.namespace, patch_type=ptype,
                                   subresource=t.subresource, keep_status=False, copy=False)
            return _json(obj, 201 if created else 200)
        if method == "DELETE":
            if t.subresource:
                raise method_not_allowed("DELETE is not supported on a subresource")
            rv = uid = None
            grace: Any = request.query.get("gracePeriodSeconds")
            raw = await request.read()
            if raw:
                try:
                    opts = json.loads(raw) or {}
                except ValueError:
                    raise bad_request("DeleteOptions could not be decoded") from None
                pre = opts.get("preconditions") or {}
                rv, uid = pre.get("resourceVersion"), pre.get("uid")
                if opts.get("gracePeriodSeconds") is not None:
                    grace = opts["gracePeriodSeconds"]
            try:
                grace_s = int(grace) if grace not in (None, "") else None
            except (TypeError, ValueError):
                raise bad_request(f"invalid gracePeriodSeconds {grace!r}") from None
            return _json(self.store.delete(info, name, t.namespace, resource_version=rv, uid=uid,
                                           grace_period_seconds=grace_s, graceful=True, copy=False))
        raise method_not_allowed(f"{method} is not supported")

    async def _subresource(self, request: web.Request, t: Target, name: str, sub: str) -> web.StreamResponse:
        method, info, ns = request.method, t.info, t.namespace or "default"
        if sub == "exec":
            if method not in ("GET", "POST"):
                raise method_not_allowed(f"{method} is not supported on pods/exec")
            return await podexec.serve_exec(request, self.store, self.pod_log_root, ns, name)
        if sub == "log":
            if method != "GET":
                raise method_not_allowed(f"{method} is not supported on pods/log")
            return await podlogs.serve_log(request, self.store, self.pod_log_root, ns, name)
        if sub == "binding":
            if method != "POST":
                raise method_not_allowed(f"{method} is not supported on pods/binding")
            body = await self._body(request)
            target = body.get("target") if isinstance(body, dict) else None
            if not isinstance(target, dict) or not target.get("name"):
                raise bad_request("a Binding needs target.name (the node)")
            if target.get("kind", "Node") != "Node":
                raise bad_request(f"a Binding's target must be a Node, not {target.get('kind')!r}")
            uid = ((body.get("metadata") or {}).get("uid")) or None
            self.store.bind(name, ns, str(target["name"]), uid=uid)
            # The object bound rather than kube-apiserver's Status: the official Python client deserializes
            # the answer as a V1Binding (and fails on a Status); client-go ignores the body.
            md = {**(body.get("metadata") or {}), "name": name, "namespace": ns}
            return _json({"kind": "Binding", "apiVersion": "v1", "metadata": md, "target": target}, 201)
        # scale
        if method == "GET":
            return _json(self.store.scale(info, name, t.namespace))
        if method not in ("PUT", "PATCH"):
            raise method_not_allowed(f"{method} is not supported on {info.plural}/scale")
        body = await self._body(request)
        want_rv = None
        if method == "PUT":
            doc = body
            want_rv = ((body or {}).get("metadata") or {}).get("resourceVersion") if isinstance(body, dict) else None
        else:
            ptype = PATCH_TYPES.get(request.content_type)
            current = self.store.scale(info, name, t.namespace)
            if ptype == "json":
                doc = json_patch(current, body)
            elif ptype in ("merge", "strategic", "apply"):
                doc = merge_patch(current, body)
            else:
                raise unsupported_media_type(request.content_type)
        try:
            replicas = int(doc["spec"]["replicas"])
        except (KeyError, TypeError, ValueError):
            raise bad_request("a Scale needs an integer spec.replicas") from None
        if replicas < 0:
            raise ApiError(422, "Invalid", f"spec.replicas: Invalid value: {replicas}: must be greater than or "
                           "equal to 0")
        return _json(self.store.set_scale(info, name, replicas, t.namespace, resource_version=want_rv))

    def _exists(self, info: KindInfo, name: str, namespace: str | None) -> bool:
        try:
            self.store.get(info, name, namespace, copy=False)
        except ApiError:
            return False
        return True

    @staticmethod
    def _list_doc(info: KindInfo, items: list[dict[str, Any]], rv: str, cont: str = "",
                  remaining: int | None = None) -> dict[str, Any]:
        md: dict[str, Any] = {"resourceVersion": rv}
        if cont:
            md["continue"] = cont
        if remaining is not None:
            md["remainingItemCount"] = remaining
        return {"kind": info.list_kind, "apiVersion": info.api_version, "metadata": md, "items": items}

    def _list(self, request: web.Request, t: Target) -> web.Response:
        q = request.query
        items, rv = self.store.list(t.info, t.namespace, label_selector=q.get("labelSelector"),
                                    field_selector=q.get("fieldSelector"), copy=False)
        start = 0
        if q.get("continue"):
            try:
                token = json.loads(base64.urlsafe_b64decode(q["continue"].encode()))
                start, rv = int(token["start"]), str(token["rv"])
            except (ValueError, KeyError, TypeError):
                raise bad_request("invalid continue token") from None
        cont, remaining = "", None
        limit = int(q.get("limit") or 0)
        items = items[start:]
        if limit > 0 and len(items) > limit:
            remaining = len(items) - limit
            items = items[:limit]
            cont = base64.urlsafe_b64encode(json.dumps({"start": start + limit, "rv": rv}).encode()).decode()
        if "as=Table" in request.headers.get("Accept", ""):
            doc = printers.table(t.info, items, rv, include_object=q.get("includeObject", "Metadata"))
            if cont:
                doc["metadata"]["continue"] = cont
            return _json(doc)
        return _json(self._list_doc(t.info, items, rv, cont, remaining))

    async def _watch(self, request: web.Request, t: Target, field: str | None = None) -> web.StreamResponse:
        q = request.query
        fields = ",".join(f for f in (q.get("fieldSelector"), field) if f) or None
        timeout = q.get("timeoutSeconds")
        try:
            timeout_s = float(timeout) if timeout else None
        except ValueError:
            raise bad_request(f"invalid timeoutSeconds {timeout!r}") from None
        params = WatchParams(
            namespace=t.namespace,
            resource_version=q.get("resourceVersion"),
            label_selector=q.get("labelSelector"),
            field_selector=fields,
            allow_bookmarks=_truthy(q.get("allowWatchBookmarks")),
            timeout_seconds=timeout_s,
            send_initial_events=_truthy(q.get("sendInitialEvents")),
            as_table="as=Table" in request.headers.get("Accept", ""),
        )
        stopping: Callable[[], bool] = lambda: self.stopping  # noqa: E731
        return await serve_watch(request, self.store, t.info, params, bookmark_interval=self.bookmark_interval,
                                 stopping=stopping)

