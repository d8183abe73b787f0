"""The health HTTP endpoint (``--health-port``): ``/healthz``, ``/readyz`` and ``/metrics``.

``/readyz`` answers ``200 Ready`` once every synced canary is written and ``500 NotReady`` before,
as Cilium's clustermesh-apiserver does; ``/healthz`` answers 200 while the process runs, with the
per-job health as JSON; ``/metrics`` is the instance's Prometheus registry.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from meshcore.httpserver import HttpServer


class HealthServer:
    """Serves the three endpoints on ``address:port`` (port 0 picks a free one)."""

    def __init__(
        self,
        address: str,
        port: int,
        *,
        ready: asyncio.Event,
        health: Callable[[], dict[str, str]],
        registry: CollectorRegistry,
    ) -> None:
        self._address = address
        self._port = port
        self._ready = ready
        self._health = health
        self._registry = registry
        self._server: HttpServer | None = None
        self.url = ""

    async def start(self) -> None:
        routes = {"/healthz": self._healthz, "/readyz": self._readyz, "/metrics": self._metrics}
        self._server = HttpServer(routes, address=self._address, port=self._port)
        await self._server.start()
        self.url = self._server.url

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop()

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text=json.dumps(self._health(), indent=1) + "\n", content_type="application/json")

    async def _readyz(self, _: web.Request) -> web.Response:
        if self._ready.is_set():
            return web.Response(text="Ready")
        return web.Response(status=500, text="NotReady")

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
