"""The agent's local HTTP API, on a unix socket (mode 0600) and optionally ``/metrics`` on TCP.

- ``GET /v1/status``: ``{"cluster-mesh": {"clusters": [RemoteCluster...]}, "local": {...}}``, the
  ``cluster-mesh`` part in the shape of Cilium's ``StatusResponse`` (``cilium-dbg status -o json``);
- ``GET /v1/desired``: the desired datapath state as JSON;
- ``POST /v1/encryption/rotate``: stage a rotation of the node's WireGuard key (``clustermesh
  encryption rotate``): 200 with ``{"node", "public-key", "next-public-key", "phase"}``, 409 with
  ``{"error": ...}`` when the node cannot rotate now, 404 with ``{"error": ...}`` when this agent
  has no rotation at all;
- ``GET /metrics``: the agent's Prometheus registry.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from meshcore.errors import ConfigError, MeshError

__all__ = ["AgentAPI"]


def _socket_in_use(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


class AgentAPI:
    """Serves the endpoints above. ``status()`` and ``desired()`` return JSON-ready values;
    ``desired()`` may return pre-encoded bytes (large states are encoded once per version).
    ``rotate()`` (optional; called on the event loop) stages a key rotation and returns what it
    rotates to, or raises :class:`MeshError` saying why it cannot."""

    def __init__(
        self,
        socket_path: Path,
        *,
        status: Callable[[], dict[str, Any]],
        desired: Callable[[], bytes],
        registry: CollectorRegistry,
        metrics_port: int = 0,
        metrics_address: str = "127.0.0.1",
        rotate: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.socket_path = socket_path
        self._status = status
        self._desired = desired
        self._rotate = rotate
        self._registry = registry
        self._metrics_port = metrics_port
        self._metrics_address = metrics_address
        self._runners: list[web.AppRunner] = []
        self.metrics_url = ""

    async def start(self) -> None:
        """Bind the socket (and the metrics port); raises :class:`ConfigError` when it cannot."""
        self._prepare_socket_path()
        app = web.Application()
        app.router.add_get("/v1/status", self._get_status)
        app.router.add_get("/v1/desired", self._get_desired)
        app.router.add_post("/v1/encryption/rotate", self._post_rotate)
        app.router.add_get("/metrics", self._get_metrics)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._runners.append(runner)
        try:
            await web.UnixSite(runner, str(self.socket_path)).start()
            os.chmod(self.socket_path, 0o600)
            if self._metrics_port:
                metrics_app = web.Application()
                metrics_app.router.add_get("/metrics", self._get_metrics)
                metrics_runner = web.AppRunner(metrics_app, access_log=None, shutdown_timeout=1.0)
                await metrics_runner.setup()
                self._runners.append(metrics_runner)
                site = web.TCPSite(metrics_runner, self._metrics_address, self._metrics_port, reuse_address=True)
                await site.start()
                self.metrics_url = f"http://{self._metrics_address}:{self._metrics_port}/metrics"
        except OSError as err:
            await self.stop()
            raise ConfigError(f"cannot serve the agent API: {err}") from None

    async def stop(self) -> None:
        """Stop serving and remove the socket file."""
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(self.socket_path.lstat().st_mode):
                self.socket_path.unlink()

    def _prepare_socket_path(self) -> None:
        parent = self.socket_path.parent
        if not parent.exists():
            parent.mkdir(mode=0o700, parents=True)
        try:
            mode = self.socket_path.lstat().st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise ConfigError(
                f"--agent-socket {self.socket_path} exists and is not a socket; remove it or pick another path"
            )
        if _socket_in_use(self.socket_path):
            raise ConfigError(f"another agent is already serving on {self.socket_path}")
        self.socket_path.unlink()  # left behind by an agent that did not stop cleanly

    async def _get_status(self, request: web.Request) -> web.Response:
        return web.json_response(self._status(), dumps=lambda o: json.dumps(o, indent=None))

    async def _get_desired(self, request: web.Request) -> web.Response:
        return web.Response(body=self._desired(), content_type="application/json")

    async def _post_rotate(self, request: web.Request) -> web.Response:
        if self._rotate is None:
            return web.json_response({"error": "this agent does not rotate WireGuard keys"}, status=404)
        try:
            doc = self._rotate()
        except MeshError as err:
            return web.json_response({"error": str(err)}, status=409)
        return web.json_response(doc)

    async def _get_metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
