"""Feed one Kubernetes resource's event stream into the exporters."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import aclosing
from typing import Any

from clustermesh_apiserver.resources import WatchSpec
from meshcore.k8s.client import K8sApi
from meshcore.k8s.resource import Delete, ResourceWatch, Synced, Upsert
from meshcore.log import get_logger

Handler = Callable[[str, dict[str, Any], bool], None]
EventCounter = Callable[[str, str], None]


class ResourceSync:
    """List-watches ``spec`` and calls ``handle(kind, obj, deleted)`` for every event;
    :attr:`synced` is set once the initial list has been handed over."""

    def __init__(
        self,
        api: K8sApi,
        spec: WatchSpec,
        handle: Handler,
        *,
        count: EventCounter | None = None,
    ) -> None:
        self.spec = spec
        self.watch = ResourceWatch(api, spec.ref)
        self.synced = asyncio.Event()
        self._handle = handle
        self._count = count
        self._log = get_logger(__name__, resource=spec.ref.plural)

    @property
    def error(self) -> str:
        """The last list/watch error, ``""`` while the stream is healthy."""
        return self.watch.error

    async def run(self) -> None:
        """Consume events until cancelled."""
        kind = self.spec.kind
        async with aclosing(self.watch.events()) as events:
            async for event in events:
                if isinstance(event, Synced):
                    self._log.debug("initial list handed over")
                    self.synced.set()
                    continue
                deleted = isinstance(event, Delete)
                assert isinstance(event, Upsert | Delete)
                try:
                    self._handle(kind, event.obj, deleted)
                except Exception as err:  # one bad object must not stop the stream
                    meta = event.obj.get("metadata") or {}
                    self._log.error(
                        "cannot export object", name=meta.get("name"), namespace=meta.get("namespace"), error=repr(err)
                    )
                if self._count is not None:
                    self._count(self.spec.ref.plural, "delete" if deleted else "upsert")
