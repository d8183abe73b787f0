"""Lifecycle of the Kubernetes API emulator: bind, serve, write a kubeconfig, stop.

``K8sApiServer`` serves one :class:`~lab.kube.api.store.ObjectStore` over HTTP (or HTTPS with a
certificate from :mod:`meshcore.pki`) on 127.0.0.1. Use it from async code (``await start()`` /
``await stop()`` or ``async with``), or from sync code and subprocess-driven tests with
``start_in_thread()`` / ``stop_thread()``, which run it on a private event loop in a daemon thread.
The store can be handed to a new server to emulate an apiserver restart (watches end, data stays).

With ``tls_dir`` the CA and serving certificate found there are reused (a restart keeps kubeconfigs
valid); they are created when absent, and the certificate is re-issued from the same CA when it lacks
a requested SAN or is about to expire. :meth:`K8sApiServer.ensure_kubernetes_service` creates the
``default/kubernetes`` Service as kube-apiserver does.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from aiohttp import web
from cryptography import x509

from lab.kube.api.app import ApiApp
from lab.kube.api.errors import ApiError
from lab.kube.api.kinds import DEFAULT_CRD_KINDS, KindInfo
from lab.kube.api.store import ObjectStore
from meshcore.errors import ConfigError
from meshcore.pki import (
    CA_FILE,
    CERT_FILE,
    KEY_FILE,
    CertificateAuthority,
    TLSFiles,
    write_private_file,
    write_tls_files,
)

_THREAD_START_TIMEOUT = 10.0
CA_KEY_FILE = "ca.key"
DEFAULT_SANS = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local", "127.0.0.1")
_RENEW_BEFORE = datetime.timedelta(days=30)


def _split_sans(sans: Iterable[str]) -> tuple[list[str], list[str]]:
    dns, ips = [], []
    for san in dict.fromkeys(sans):
        try:
            ips.append(str(ipaddress.ip_address(san)))
        except ValueError:
            dns.append(san)
    return dns, ips


def _covers(cert_file: Path, dns: list[str], ips: list[str]) -> bool:
    """True if the certificate names every SAN asked for and is not about to expire."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    have_dns = set(names.get_values_for_type(x509.DNSName))
    have_ips = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    fresh = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > _RENEW_BEFORE
    return fresh and set(dns) <= have_dns and set(ips) <= have_ips


def ensure_tls_files(directory: Path, sans: Sequence[str] = ()) -> TLSFiles:
    """The serving TLS files in ``directory`` (``ca.crt``, ``ca.key``, ``tls.crt``, ``tls.key``): reused
    when present and covering ``sans`` (plus :data:`DEFAULT_SANS`), otherwise created (the CA only if absent)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    dns, ips = _split_sans([*DEFAULT_SANS, *sans])
    ca_file, ca_key = directory / CA_FILE, directory / CA_KEY_FILE
    files = TLSFiles(ca_file, directory / CERT_FILE, directory / KEY_FILE)
    if ca_file.exists() and ca_key.exists():
        ca = CertificateAuthority.load(ca_file, ca_key)
    elif ca_file.exists():
        if files.cert_file.exists() and files.key_file.exists() and _covers(files.cert_file, dns, ips):
            return files  # an older directory without ca.key: usable as it is
        raise ConfigError(f"{directory} has {CA_FILE} but no {CA_KEY_FILE}: cannot issue a certificate for the "
                          "requested names from that CA; remove the directory to start over with a new CA")
    else:
        ca = CertificateAuthority.create("k8sapi-emulator-ca")
        write_private_file(ca_key, ca.keypair.key_pem)
    if files.cert_file.exists() and files.key_file.exists() and _covers(files.cert_file, dns, ips):
        return files
    return write_tls_files(directory, ca.cert_pem, ca.issue_server("kube-apiserver", dns_names=dns, ip_addresses=ips))


class K8sApiServer:
    """A Kubernetes API emulator bound to 127.0.0.1.

    :param store: objects to serve; a new store (with the default namespaces) if omitted.
    :param crds: kind-table rows to install as CRDs in a new store (default: Cilium and MCS kinds).
    :param port: 0 picks a free port.
    :param tls_dir: if set, serve HTTPS with the CA and server certificate there (created if absent).
    :param tls_sans: extra DNS names or IPs for the serving certificate.
    :param bookmark_interval: seconds between BOOKMARK events on watches that allow them.
    :param pod_log_root: where ``pods/log`` reads container logs (see :mod:`lab.kube.api.podlogs`).
    """

    def __init__(self, store: ObjectStore | None = None, *, crds: Iterable[KindInfo] = DEFAULT_CRD_KINDS,
                 port: int = 0, host: str = "127.0.0.1", tls_dir: Path | str | None = None,
                 tls_sans: Sequence[str] = (), bookmark_interval: float = 1.0, history_limit: int = 10_000,
                 pod_log_root: Path | str | None = None) -> None:
        if store is None:
            store = ObjectStore(history_limit=history_limit)
            store.install_crds(crds)
        self.store = store
        self.host = host
        self._port = port
        self._tls_dir = Path(tls_dir) if tls_dir is not None else None
        self._tls_sans = tuple(tls_sans)
        self.tls: TLSFiles | None = None
        self._api = ApiApp(store, bookmark_interval=bookmark_interval,
                           pod_log_root=Path(pod_log_root) if pod_log_root is not None else None)
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
            self.tls = ensure_tls_files(self._tls_dir, [self.host, *self._tls_sans])
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        return ctx

    def ensure_kubernetes_service(self) -> dict[str, Any]:
        """Create ``default/kubernetes`` if missing, as kube-apiserver does: ClusterIP = the first address
        of the service CIDR, port 443 named ``https`` to this server's port. Returns the Service."""
        ports = [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": self._port}]
        try:
            current = self.store.get("services", "kubernetes", "default")
        except ApiError as e:
            if e.code != 404:
                raise
        else:
            if (current.get("spec") or {}).get("ports") == ports:
                return current
            return self.store.patch("services", "kubernetes", {"spec": {"ports": ports}}, namespace="default",
                                    patch_type="merge")
        ip = str(next(ipaddress.ip_network(self.store.service_network).hosts()))
        svc = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "kubernetes", "namespace": "default",
                            "labels": {"component": "apiserver", "provider": "kubernetes"}},
               "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "sessionAffinity": "None",
                        "ports": ports}}
        try:
            return self.store.create(svc)
        except ApiError as e:
            if e.code != 409:
                raise
            return self.store.get("services", "kubernetes", "default")

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
