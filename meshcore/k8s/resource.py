"""List and watch one Kubernetes resource through the official client, as a stream of events.

The shape follows Cilium's ``Resource[T].Events``: a stream of :class:`Upsert` and :class:`Delete`
of plain objects (the JSON the API server returns), with one :class:`Synced` after the first
complete list. Underneath it is a reflector: list (paginated) at a resourceVersion, then watch
from it with bookmarks; when the stream ends, watch again from the last version seen; on ``410
Gone`` list again and reconcile against what was already reported (mark and sweep), so consumers
get deletes for objects that vanished meanwhile and nothing for objects that did not change.
Errors never end the stream; they are retried with backoff and shown in :attr:`ResourceWatch.error`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from meshcore.backoff import Backoff
from meshcore.errors import K8sError, K8sGoneError
from meshcore.k8s.client import K8sApi
from meshcore.log import get_logger

Object = dict[str, Any]

# A watch stream that ends sooner than this without delivering anything is retried with backoff.
_QUICK_END = 1.0


@dataclass(frozen=True, slots=True)
class ResourceRef:
    """Where a kind lives in the API: ``group`` is ``""`` for the core group."""

    group: str
    version: str
    plural: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace is not None and self.namespaced:
            return f"{base}/namespaces/{namespace}/{self.plural}"
        return f"{base}/{self.plural}"


@dataclass(frozen=True, slots=True)
class Upsert:
    obj: Object


@dataclass(frozen=True, slots=True)
class Delete:
    obj: Object


@dataclass(frozen=True, slots=True)
class Synced:
    """Every object that existed at the first list has been delivered."""


ResourceEvent = Upsert | Delete | Synced


def object_key(obj: Object) -> str:
    """``namespace/name`` (or ``name`` for cluster-scoped objects)."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    return f"{namespace}/{meta.get('name')}" if namespace else str(meta.get("name"))


def _resource_version(obj: Object) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


class ResourceWatch:
    """The event stream of one resource; iterate :meth:`events` (once). ``label_selector`` and
    ``field_selector`` (e.g. ``spec.nodeName=n1``) narrow both the lists and the watches."""

    def __init__(
        self,
        api: K8sApi,
        ref: ResourceRef,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int = 500,
        watch_timeout: int = 300,
        backoff: Backoff | None = None,
    ) -> None:
        self.ref = ref
        self.error = ""
        self.synced = False
        self.resource_version = ""
        self.relists = 0
        self._api = api
        self._label_selector = label_selector
        self._field_selector = field_selector
        self._page_size = page_size
        self._watch_timeout = watch_timeout
        self._backoff = backoff or Backoff(initial=0.2, maximum=10.0)
        self._known: dict[str, Object] = {}
        self._list_version = ""
        self._log = get_logger(__name__, resource=ref.plural)

    def objects(self) -> list[Object]:
        """The objects as last reported."""
        return list(self._known.values())

    async def events(self) -> AsyncGenerator[ResourceEvent, None]:
        """Yield events until the consumer stops; never raises for API errors."""
        version = ""
        while True:
            try:
                if not version:
                    async for event in self._relist():
                        yield event
                    version = self.resource_version = self._list_version
                started, seen = time.monotonic(), 0
                async with aclosing(self._watch(version)) as stream:
                    async for kind, obj in stream:
                        seen += 1
                        self._backoff.reset()
                        self.error = ""
                        new_version = _resource_version(obj)
                        if kind == "BOOKMARK":
                            version = self.resource_version = new_version or version
                            continue
                        key = object_key(obj)
                        if kind == "DELETED":
                            if self._known.pop(key, None) is not None:
                                yield Delete(obj)
                        else:
                            self._known[key] = obj
                            yield Upsert(obj)
                        version = self.resource_version = new_version or version
                if not seen and time.monotonic() - started < _QUICK_END:
                    # A watch that ends at once without a single event (an API server shutting
                    # down, a proxy cutting streams) must not turn into a busy loop.
                    await self._backoff.wait()
            except K8sGoneError:
                self._log.info("resource version expired, listing again")
                version = ""
            except K8sError as err:
                self.error = str(err)
                self._log.warning("kubernetes list/watch failed, retrying", error=str(err))
                await self._backoff.wait()

    async def _relist(self) -> AsyncGenerator[ResourceEvent, None]:
        self.relists += 1
        items, self._list_version = await self._api.list(
            self.ref.path(),
            label_selector=self._label_selector,
            field_selector=self._field_selector,
            page_size=self._page_size,
        )
        self.error = ""
        current = {object_key(obj): obj for obj in items}
        for key, obj in current.items():
            previous = self._known.get(key)
            if previous is None or _resource_version(previous) != _resource_version(obj):
                self._known[key] = obj
                yield Upsert(obj)
        for key in [k for k in self._known if k not in current]:
            yield Delete(self._known.pop(key))
        if not self.synced:
            self.synced = True
            yield Synced()

    async def _watch(self, version: str) -> AsyncGenerator[tuple[str, Object], None]:
        async with aclosing(
            self._api.watch(
                self.ref.path(),
                resource_version=version,
                label_selector=self._label_selector,
                field_selector=self._field_selector,
                timeout_seconds=self._watch_timeout,
            )
        ) as lines:
            async for event in lines:
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    code = obj.get("code")
                    if code == 410:
                        raise K8sGoneError(f"watch of {self.ref.plural}: {obj.get('message', 'gone')}")
                    raise K8sError(f"watch of {self.ref.plural} failed: {json.dumps(obj)[:300]}")
                if kind in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
                    yield str(kind), obj
