"""Lifecycle of the Kubernetes API emulator: bind, serve, write a kubeconfig, stop.

``K8sApiServer`` serves one :class:`~lab.kube.api.store.ObjectStore` over HTTP (or HTTPS with a
certificate from :mod:`meshcore.pki`) on 127.0.0.1. Use it from async code (``await start()`` /
``await stop()`` or ``async with``), or from sync code and subprocess-driven tests with
``start_in_thread()`` / ``stop_thread()``, which run it on a private event loop in a daemon thread.
The store can be handed to a new server to emulate an apiserver restart (watches end, data stays).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from aiohttp import web

from lab.kube.api.app import ApiApp
from lab.kube.api.kinds import DEFAULT_CRD_KINDS, KindInfo
from lab.kube.api.store import ObjectStore
from meshcore.pki import CertificateAuthority, TLSFiles, write_private_file, write_tls_files

_THREAD_START_TIMEOUT = 10.0


class K8sApiServer:
    """A Kubernetes API emulator bound to 127.0.0.1.

    :param store: objects to serve; a new store (with the default namespaces) if omitted.
    :param crds: kind-table rows to install as CRDs in a new store (default: Cilium and MCS kinds).
    :param port: 0 picks a free port.
    :param tls_dir: if set, serve HTTPS with a fresh CA and server certificate written there.
    :param bookmark_interval: seconds between BOOKMARK events on watches that allow them.
    """

    def __init__(self, store: ObjectStore | None = None, *, crds: Iterable[KindInfo] = DEFAULT_CRD_KINDS,
                 port: int = 0, host: str = "127.0.0.1", tls_dir: Path | str | None = None,
                 bookmark_interval: float = 1.0, history_limit: int = 10_000) -> None:
        if store is None:
            store = ObjectStore(history_limit=history_limit)
            store.install_crds(crds)
        self.store = store
        self.host = host
        self._port = port
        self._tls_dir = Path(tls_dir) if tls_dir is not None else None
        self.tls: TLSFiles | None = None
        self._api = ApiApp(store, bookmark_interval=bookmark_interval)
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_stop: asyncio.Event | None = None

    # ----- async lifecycle -----

    async def start(self) -> None:
        """Bind and start serving (returns once the port is listening)."""
        ssl_ctx = self._ssl_context() if self._tls_dir is not None else None
        self._api.stopping = False
        runner = web.AppRunner(self._api.make_app(), shutdown_timeout=1.0, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._port, ssl_context=ssl_ctx, reuse_address=True)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop serving: open watches end, then the listener closes. Idempotent."""
        self._api.stopping = True
        self.store.close_watchers()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> K8sApiServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    # ----- thread lifecycle -----

    def start_in_thread(self) -> K8sApiServer:
        """Run the server on its own event loop in a daemon thread; returns once it is listening."""
        if self._thread is not None:
            raise RuntimeError("server already running in a thread")
        started = threading.Event()
        errors: list[BaseException] = []

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._thread_stop = asyncio.Event()
            try:
                await self.start()
            except BaseException as e:
                errors.append(e)
                started.set()
                return
            started.set()
            try:
                await self._thread_stop.wait()
            finally:
                await self.stop()

        self._thread = threading.Thread(target=asyncio.run, args=(main(),), name="k8sapi", daemon=True)
        self._thread.start()
        if not started.wait(_THREAD_START_TIMEOUT):
            raise RuntimeError("the Kubernetes API emulator did not start in time")
        if errors:
            self._thread.join(_THREAD_START_TIMEOUT)
            self._thread = None
            raise errors[0]
        return self

    def stop_thread(self, timeout: float = 10.0) -> None:
        """Stop a server started with :meth:`start_in_thread` and join its thread."""
        thread, loop, stop = self._thread, self._loop, self._thread_stop
        if thread is None or loop is None or stop is None:
            return
        try:
            loop.call_soon_threadsafe(stop.set)
        except RuntimeError:
            pass
        thread.join(timeout)
        self._thread = None

    # ----- addresses, TLS, kubeconfig -----

    @property
    def port(self) -> int:
        """The bound port (valid after start)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123``."""
        scheme = "https" if self._tls_dir is not None else "http"
        return f"{scheme}://{self.host}:{self._port}"

    def _ssl_context(self) -> ssl.SSLContext:
        assert self._tls_dir is not None
        if self.tls is None:
            ca = CertificateAuthority.create("k8sapi-emulator-ca")
            pair = ca.issue_server("kube-apiserver", dns_names=["localhost", "kubernetes", "kubernetes.default"],
                                   ip_addresses=["127.0.0.1"])
            self.tls = write_tls_files(self._tls_dir, ca.cert_pem, pair)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        return ctx

    def kubeconfig(self, context_name: str = "k8sapi", *, namespace: str | None = None) -> dict[str, Any]:
        """A kubeconfig document pointing at this server (bearer token auth; the token is not checked)."""
        cluster: dict[str, Any] = {"server": self.url}
        if self.tls is not None:
            cluster["certificate-authority"] = str(self.tls.ca_file)
        context: dict[str, Any] = {"cluster": context_name, "user": context_name}
        if namespace:
            context["namespace"] = namespace
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context_name, "cluster": cluster}],
            "users": [{"name": context_name, "user": {"token": "k8sapi-emulator"}}],
            "contexts": [{"name": context_name, "context": context}],
            "current-context": context_name,
            "preferences": {},
        }

    def write_kubeconfig(self, path: Path | str, context_name: str = "k8sapi", *, namespace: str | None = None
                         ) -> Path:
        """Write :meth:`kubeconfig` to ``path`` (mode 0600); usable by kubectl and ``load_kube_config``."""
        doc = yaml.safe_dump(self.kubeconfig(context_name, namespace=namespace), sort_keys=False)
        return write_private_file(path, doc.encode())
