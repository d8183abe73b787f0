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
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self._address, self._port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        server = site._server
        assert isinstance(server, asyncio.Server)
        host, port = server.sockets[0].getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text=json.dumps(self._health(), indent=1) + "\n", content_type="application/json")

    async def _readyz(self, _: web.Request) -> web.Response:
        if self._ready.is_set():
            return web.Response(text="Ready")
        return web.Response(status=500, text="NotReady")

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
