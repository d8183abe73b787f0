"""The HTTP side of a watch: a chunked stream of JSON lines (``{"type": ..., "object": ...}``).

Runs one :class:`~lab.kube.api.store.Watcher`, writes its events, interleaves ``BOOKMARK`` events carrying the
latest resourceVersion every ``bookmark_interval`` seconds when the client sent ``allowWatchBookmarks``,
ends after ``timeoutSeconds``, when the client goes away, or when the server stops. A resourceVersion that
is too old is reported the way kube-apiserver does it: HTTP 200, then one ``ERROR`` event whose object
is a ``Status`` with code 410, reason ``Expired``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from lab.kube.api.errors import ApiError
from lab.kube.api.kinds import KindInfo
from lab.kube.api.printers import table
from lab.kube.api.store import ObjectStore, Watcher

INITIAL_EVENTS_END = "k8s.io/initial-events-end"


@dataclass(frozen=True, slots=True)
class WatchParams:
    """The query parameters of one watch request."""

    namespace: str | None
    resource_version: str | None
    label_selector: str | None
    field_selector: str | None
    allow_bookmarks: bool
    timeout_seconds: float | None
    send_initial_events: bool
    as_table: bool


def _line(type_: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": type_, "object": obj}, separators=(",", ":")).encode() + b"\n"


def _bookmark(info: KindInfo, rv: str, annotations: dict[str, str] | None = None) -> bytes:
    md: dict[str, Any] = {"resourceVersion": rv, "creationTimestamp": None}
    if annotations:
        md["annotations"] = annotations
    return _line("BOOKMARK", {"kind": info.kind, "apiVersion": info.api_version, "metadata": md})


def _as_table(info: KindInfo, obj: dict[str, Any]) -> dict[str, Any]:
    return table(info, [obj], str(obj.get("metadata", {}).get("resourceVersion", "")))


async def serve_watch(request: web.Request, store: ObjectStore, info: KindInfo, params: WatchParams, *,
                      bookmark_interval: float, stopping: Callable[[], bool]) -> web.StreamResponse:
    """Stream watch events for ``info`` until timeout, disconnect or server stop."""
    try:
        watcher = store.watch(info, namespace=params.namespace, resource_version=params.resource_version,
                              label_selector=params.label_selector, field_selector=params.field_selector,
                              send_initial_events=params.send_initial_events)
    except ApiError as e:
        if e.code != 410:
            raise
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(_line("ERROR", e.status()))
        await resp.write_eof()
        return resp
    try:
        return await _stream(request, watcher, info, params, bookmark_interval, stopping)
    finally:
        watcher.close()


async def _stream(request: web.Request, watcher: Watcher, info: KindInfo, params: WatchParams,
                  bookmark_interval: float, stopping: Callable[[], bool]) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    deadline = loop.time() + params.timeout_seconds if params.timeout_seconds else None
    next_bookmark = loop.time() + bookmark_interval
    initial_end_due = params.send_initial_events and params.allow_bookmarks
    try:
        while not stopping() and not watcher.closed:
            if request.transport is None or request.transport.is_closing():
                break  # the client went away
            now = loop.time()
            wait = 1.0
            if params.allow_bookmarks:
                wait = min(wait, max(next_bookmark - now, 0.0))
            if deadline is not None:
                wait = min(wait, max(deadline - now, 0.0))
            batch = await watcher.next_batch(0.0 if initial_end_due else wait)
            if batch:
                await resp.write(b"".join(_line(type_, _as_table(info, obj) if params.as_table else obj)
                                          for type_, obj in batch))
            if initial_end_due:
                await resp.write(_bookmark(info, watcher.start_resource_version, {INITIAL_EVENTS_END: "true"}))
                initial_end_due = False
            now = loop.time()
            if params.allow_bookmarks and now >= next_bookmark:
                rv = watcher.bookmark_resource_version()
                if rv is not None:
                    await resp.write(_bookmark(info, rv))
                    next_bookmark = now + bookmark_interval
            if deadline is not None and now >= deadline:
                break
        rest = await watcher.next_batch(0.0)  # e.g. the DELETED events queued before a CRD deletion closed us
        if rest:
            await resp.write(b"".join(_line(t, _as_table(info, o) if params.as_table else o) for t, o in rest))
        await resp.write_eof()
    except (ConnectionResetError, ConnectionError):
        pass
    return resp
