"""The real ``python -m lab.kube.api`` process on a real etcd, for tests: start, SIGKILL, restart; and the
lab's API front (:class:`FrontThread`) before it.

Each :class:`ApiProcess` keeps one port, one kubeconfig, one TLS directory and one pod-log root
across restarts, as the lab supervisor would. Every wait is bounded; :meth:`ApiProcess.kill` is
idempotent and the fixtures call it on teardown.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from lab.etcd import EtcdProcess, free_port
from lab.kube.front import ApiFront
from meshcore.kvstore.client import EtcdClient
from meshcore.kvstore.types import KeyValue

REPO = Path(__file__).resolve().parents[3]
START_TIMEOUT = 30.0


class ApiProcess:
    """One API emulator process backed by ``etcd`` (see module docstring)."""

    def __init__(self, etcd: EtcdProcess, directory: Path, *, extra: Sequence[str] = (), port: int = 0) -> None:
        self.etcd = etcd
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.etcd_config = etcd.write_config_yaml(directory / "etcd.yaml")
        self.kubeconfig = directory / "kubeconfig"
        self.tls_dir = directory / "tls"
        self.log_root = directory / "logs"
        self.port = port or free_port()
        self.extra = list(extra)
        self.proc: subprocess.Popen[str] | None = None
        self.banner = ""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "lab.kube.api", "--port", str(self.port), "--etcd-config", str(self.etcd_config),
                "--kubeconfig", str(self.kubeconfig), "--tls-dir", str(self.tls_dir), "--pod-log-root",
                str(self.log_root), "--bookmark-interval", "0.2", *self.extra]

    def start(self) -> ApiProcess:
        """Start and wait for the "serving" line (raises with stderr if it exits or hangs)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen(self.command(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                self.banner = self.proc.stdout.readline()
                if "serving on" in self.banner:
                    return self
            if self.proc.poll() is not None:
                break
        err = self.stop_and_stderr()
        raise AssertionError(f"the API process did not start: {self.banner!r} {err}")

    def kill(self) -> None:
        """SIGKILL (a crash: no clean shutdown) and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop_and_stderr(self) -> str:
        self.kill()
        if self.proc is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()

    def restart(self) -> ApiProcess:
        """SIGKILL, then start again on the same port, etcd, TLS directory and kubeconfig."""
        self.kill()
        return self.start()

    # ----- clients -----

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def api_client(self) -> client.ApiClient:
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=cfg)
        return client.ApiClient(cfg)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.tls_dir / "ca.crt"))

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, context=self.ssl_context(), timeout=10) as r:
            return json.loads(r.read())

    def watch_lines(self, path: str, *, count: int | None = None, within: float = 10.0) -> Iterator[dict[str, Any]]:
        """Non-BOOKMARK events of a raw watch (``path`` has the query), until ``count`` or the stream ends."""
        seen = 0
        with urllib.request.urlopen(self.url + path, context=self.ssl_context(), timeout=within) as r:
            for line in r:
                ev = json.loads(line)
                if ev["type"] == "BOOKMARK":
                    continue
                yield ev
                seen += 1
                if count is not None and seen >= count:
                    return


def etcd_get(etcd: EtcdProcess, key: str) -> KeyValue | None:
    """Read one key straight from etcd (TLS, root's client certificate)."""

    async def run() -> KeyValue | None:
        async with EtcdClient(etcd.client_config()) as c:
            return await c.get(key)

    return asyncio.run(run())


def etcd_put(etcd: EtcdProcess, key: str, value: bytes) -> int:
    """Write one key straight into etcd; returns the revision."""

    async def run() -> int:
        async with EtcdClient(etcd.client_config()) as c:
            return await c.put(key, value)

    return asyncio.run(run())


def etcd_revision(etcd: EtcdProcess) -> int:
    """etcd's current header revision."""

    async def run() -> int:
        async with EtcdClient(etcd.client_config()) as c:
            return (await c.list_prefix("/registry/namespaces/")).revision

    return asyncio.run(run())


def etcd_compact(etcd: EtcdProcess, revision: int) -> None:
    """Compact etcd's history up to ``revision``."""

    async def run() -> None:
        async with EtcdClient(etcd.client_config()) as c:
            await c.compact(revision, physical=True)

    asyncio.run(run())


class FrontThread:
    """An :class:`ApiFront` on its own event loop in a thread (the tests' clients are synchronous)."""

    def __init__(self, api: ApiProcess, *, resume_within: float = 60.0) -> None:
        self.front = ApiFront(free_port(), api.port, api.tls_dir, resume_within=resume_within)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: list[BaseException] = []
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="front", daemon=True)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            await self.front.start()
        except BaseException as e:
            self._error.append(e)
            return
        finally:
            self._started.set()
        try:
            await self._stop.wait()
        finally:
            await self.front.stop()

    def start(self) -> FrontThread:
        self._thread.start()
        assert self._started.wait(10), "the front did not start"
        if self._error:
            raise self._error[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        assert not self._thread.is_alive()

    @property
    def url(self) -> str:
        return self.front.url

    def write_kubeconfig(self, api: ApiProcess, path: Path) -> Path:
        doc = yaml.safe_load(api.kubeconfig.read_text())
        doc["clusters"][0]["cluster"]["server"] = self.url
        path.write_text(yaml.safe_dump(doc))
        return path

    def ssl_context(self, api: ApiProcess) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(api.tls_dir / "ca.crt"))
