"""Real etcd processes on loopback for tests and the lab, with scripted faults.

An :class:`EtcdProcess` owns a directory holding its data dir, its log (``etcd.log``) and, with
TLS, its certificates. It listens on random free ports of 127.0.0.1 only: clients, peers, and a
plain-HTTP metrics/health port (``/health``, ``/metrics``) used for readiness checks whatever the
client TLS settings. Faults: :meth:`~EtcdProcess.kill`, :meth:`~EtcdProcess.pause`,
:meth:`~EtcdProcess.restart`, and :meth:`~EtcdProcess.wipe` (a replaced, empty etcd: the next start
uses a new cluster token, hence a new cluster ID, as a real replacement would).

No process outlives the interpreter: etcd runs under ``setpriv --pdeathsig KILL`` (killed by the
kernel if the starting thread dies, even by SIGKILL), an ``atexit`` hook kills any still running,
and every wait is bounded. Start etcds from a long-lived thread (the event loop's or the main one).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshcore.kvstore.config import EtcdClientConfig
from meshcore.pki import CertificateAuthority, TLSFiles, write_private_file, write_tls_files

ETCD_BINARY = "/usr/bin/etcd"
LOOPBACK = "127.0.0.1"
SERVER_SANS_DNS = ("localhost", "*.mesh.cilium.io")
SERVER_SANS_IP = ("127.0.0.1", "::1")

SETPRIV = "/usr/bin/setpriv"
_LIVE: dict[int, subprocess.Popen[bytes]] = {}


class EtcdProcessError(RuntimeError):
    """An etcd process could not be started or controlled as asked."""


def _kill_all_live() -> None:
    for proc in list(_LIVE.values()):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    _LIVE.clear()


atexit.register(_kill_all_live)


def _die_with_parent_prefix() -> list[str]:
    """A command prefix making the kernel SIGKILL etcd when the thread that started it dies.

    util-linux's ``setpriv`` (always present on Debian) sets PR_SET_PDEATHSIG and execs, so etcd
    keeps its PID; a ``preexec_fn`` would do the same but is unsafe once gRPC threads exist.
    """
    return [SETPRIV, "--pdeathsig", "KILL", "--"] if os.path.exists(SETPRIV) else []


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class EtcdPKI:
    """A CA and an etcd server certificate (SANs: loopback, localhost, ``*.mesh.cilium.io``),
    plus client certificates whose CN is the etcd user, all as mode-0600 files under ``directory``."""

    def __init__(self, directory: Path, *, extra_dns: Sequence[str] = (), extra_ips: Sequence[str] = ()):
        self.directory = Path(directory)
        self.ca = CertificateAuthority.create("etcd-lab-ca")
        server = self.ca.issue_server(
            "etcd-server",
            dns_names=[*SERVER_SANS_DNS, *extra_dns],
            ip_addresses=[*SERVER_SANS_IP, *extra_ips],
        )
        self.server = write_tls_files(self.directory / "server", self.ca.cert_pem, server)
        write_private_file(self.directory / "ca.key", self.ca.keypair.key_pem)
        self._clients: dict[str, TLSFiles] = {}

    @property
    def ca_file(self) -> Path:
        return self.server.ca_file

    def client(self, user: str) -> TLSFiles:
        """Files of a client certificate with CN ``user`` (issued once, then cached)."""
        files = self._clients.get(user)
        if files is None:
            files = write_tls_files(
                self.directory / "clients" / user, self.ca.cert_pem, self.ca.issue_client(user)
            )
            self._clients[user] = files
        return files


@dataclass(frozen=True, slots=True)
class EtcdPorts:
    client: int
    peer: int
    metrics: int


class EtcdProcess:
    """One single-member etcd on loopback, owned by the caller (see module docstring)."""

    def __init__(
        self,
        directory: Path | str,
        *,
        name: str = "etcd",
        tls: bool = False,
        client_cert_auth: bool = True,
        progress_notify_interval: str = "1s",
        auto_compaction_retention: str = "0",
        fast_election: bool = True,
        extra_args: Sequence[str] = (),
        binary: str = ETCD_BINARY,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.data_dir = self.directory / "data"
        self.log_file = self.directory / "etcd.log"
        self.pki = EtcdPKI(self.directory / "pki") if tls else None
        self.client_cert_auth = client_cert_auth
        self.progress_notify_interval = progress_notify_interval
        self.auto_compaction_retention = auto_compaction_retention
        # A single member has nobody to wait for: short raft timers make it serve in ~0.1 s.
        timers = ("--heartbeat-interval=10", "--election-timeout=100") if fast_election else ()
        self.extra_args = (*timers, *extra_args)
        self.binary = binary
        self.ports = EtcdPorts(free_port(), free_port(), free_port())
        self._token = secrets.token_hex(8)
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._started_once = False

    # ---- addresses and clients ----

    @property
    def scheme(self) -> str:
        return "https" if self.pki else "http"

    @property
    def endpoint(self) -> str:
        """The client URL, e.g. ``http://127.0.0.1:23791``."""
        return f"{self.scheme}://{LOOPBACK}:{self.ports.client}"

    @property
    def metrics_url(self) -> str:
        """Plain-HTTP base URL serving ``/health`` and ``/metrics``."""
        return f"http://{LOOPBACK}:{self.ports.metrics}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def client_config(
        self,
        user: str | None = "root",
        *,
        request_timeout: float = 5.0,
        dial_timeout: float = 2.0,
        endpoints: Sequence[str] | None = None,
    ) -> EtcdClientConfig:
        """A client config for this etcd; with TLS, ``user`` is the client certificate's CN
        (``None``: no client certificate at all)."""
        eps = list(endpoints) if endpoints is not None else [self.endpoint]
        if self.pki is None:
            return EtcdClientConfig(eps, dial_timeout=dial_timeout, request_timeout=request_timeout)
        files = self.pki.client(user) if user is not None else None
        return EtcdClientConfig(
            eps,
            trusted_ca_file=self.pki.ca_file,
            cert_file=files.cert_file if files else None,
            key_file=files.key_file if files else None,
            dial_timeout=dial_timeout,
            request_timeout=request_timeout,
        )

    def write_config_yaml(self, path: Path | str, user: str = "root") -> Path:
        """Write a Cilium-style etcd config YAML for this etcd (mode 0600)."""
        cfg = self.client_config(user)
        lines = ["endpoints:", f"- {self.endpoint}"]
        if cfg.trusted_ca_file:
            lines.append(f"trusted-ca-file: {cfg.trusted_ca_file}")
        if cfg.cert_file and cfg.key_file:
            lines += [f"cert-file: {cfg.cert_file}", f"key-file: {cfg.key_file}"]
        return write_private_file(path, ("\n".join(lines) + "\n").encode())

    # ---- lifecycle ----

    def _command(self) -> list[str]:
        peer = f"http://{LOOPBACK}:{self.ports.peer}"
        cmd = [
            *_die_with_parent_prefix(),
            self.binary,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.endpoint}",
            f"--advertise-client-urls={self.endpoint}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={self.name}={peer}",
            f"--initial-cluster-token={self._token}",
            "--initial-cluster-state=new",
            f"--listen-metrics-urls={self.metrics_url}",
            "--logger=zap",
            "--log-outputs=stderr",
            f"--auto-compaction-retention={self.auto_compaction_retention}",
            f"--experimental-watch-progress-notify-interval={self.progress_notify_interval}",
        ]
        if self.pki is not None:
            cmd += [
                f"--cert-file={self.pki.server.cert_file}",
                f"--key-file={self.pki.server.key_file}",
                f"--trusted-ca-file={self.pki.ca_file}",
            ]
            if self.client_cert_auth:
                cmd.append("--client-cert-auth")
        return cmd + list(self.extra_args)

    def _spawn(self) -> None:
        if self.running:
            raise EtcdProcessError(f"etcd {self.name} is already running (pid {self.pid})")
        with open(self.log_file, "ab") as log:
            log.write(f"---- starting etcd {self.name} at {time.strftime('%H:%M:%S')} ----\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _LIVE[self._proc.pid] = self._proc
        self._paused = False

    def _probe(self) -> bool:
        try:
            with urllib.request.urlopen(self.metrics_url + "/health", timeout=0.5) as resp:
                return bool(resp.status == 200 and b'"true"' in resp.read())
        except (OSError, urllib.error.URLError):
            return False

    def _check_alive(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            _LIVE.pop(proc.pid, None)
            self._proc = None
            raise EtcdProcessError(
                f"etcd {self.name} exited with status {proc.returncode} while starting; "
                f"log {self.log_file}:\n{self.log_tail()}"
            )

    def start(self, ready_within: float = 15.0) -> None:
        """Start etcd and wait (at most ``ready_within`` s) until it answers ``/health``."""
        attempts = 1 if self._started_once else 3
        for attempt in range(attempts):
            self._spawn()
            try:
                self._wait_ready(ready_within)
                self._started_once = True
                return
            except EtcdProcessError:
                port_clash = "address already in use" in self.log_tail()
                if not port_clash or attempt + 1 == attempts:
                    self.kill()
                    raise
                self.kill()
                self.ports = EtcdPorts(free_port(), free_port(), free_port())
                if self.data_dir.exists():
                    shutil.rmtree(self.data_dir)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if self._probe():
                return
            time.sleep(0.05)
        self._check_alive()
        raise EtcdProcessError(
            f"etcd {self.name} did not become healthy within {timeout}s; log {self.log_file}:\n"
            + self.log_tail()
        )

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if etcd has not exited within ``timeout`` s."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
                if self._paused:
                    proc.send_signal(signal.SIGCONT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        self._forget(proc)

    def kill(self) -> None:
        """SIGKILL at once, like a crash (no clean shutdown)."""
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        self._forget(proc)

    def _forget(self, proc: subprocess.Popen[bytes]) -> None:
        _LIVE.pop(proc.pid, None)
        self._proc = None
        self._paused = False

    def restart(self, ready_within: float = 15.0) -> None:
        """Stop and start again with the same data dir and ports."""
        self.stop()
        self.start(ready_within)

    def pause(self) -> None:
        """SIGSTOP: etcd freezes with its connections open (leases do not expire meanwhile)."""
        if self._proc is None:
            raise EtcdProcessError(f"etcd {self.name} is not running")
        self._proc.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)
        self._paused = False

    def wipe(self) -> None:
        """Delete the data dir (etcd must be stopped); the next start is a new, empty cluster."""
        if self.running:
            raise EtcdProcessError(f"etcd {self.name} must be stopped before wipe()")
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self._token = secrets.token_hex(8)

    def close(self) -> None:
        """Kill etcd if it runs; keeps the directory (and its log) for inspection."""
        self.kill()

    async def start_async(self, ready_within: float = 15.0) -> None:
        """:meth:`start` without blocking the event loop while waiting for readiness."""
        self._spawn()
        deadline = time.monotonic() + ready_within
        try:
            while time.monotonic() < deadline:
                self._check_alive()
                if await asyncio.to_thread(self._probe):
                    self._started_once = True
                    return
                await asyncio.sleep(0.05)
            self._check_alive()
            raise EtcdProcessError(
                f"etcd {self.name} did not become healthy within {ready_within}s; log {self.log_file}:\n"
                + self.log_tail()
            )
        except BaseException:
            self.kill()
            raise

    async def restart_async(self, ready_within: float = 15.0) -> None:
        """:meth:`restart` without blocking the event loop."""
        await asyncio.to_thread(self.stop)
        await self.start_async(ready_within)

    # ---- diagnostics ----

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of etcd's log."""
        try:
            data = self.log_file.read_bytes()[-64 * 1024 :]
        except OSError:
            return "(no log)"
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])

    def metric(self, name: str) -> float | None:
        """The value of an unlabelled Prometheus metric from ``/metrics`` (None if absent)."""
        with urllib.request.urlopen(self.metrics_url + "/metrics", timeout=2) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return None

    def __enter__(self) -> EtcdProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EtcdFleet:
    """Several etcd processes under one directory, all killed by :meth:`close` (for fixtures)."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.processes: list[EtcdProcess] = []

    def create(self, name: str = "etcd", **kwargs: Any) -> EtcdProcess:
        """A new, not yet started :class:`EtcdProcess` named ``name`` (kwargs as its constructor)."""
        proc = EtcdProcess(self.directory / f"{len(self.processes)}-{name}", name=name, **kwargs)
        self.processes.append(proc)
        return proc

    def start(self, name: str = "etcd", **kwargs: Any) -> EtcdProcess:
        """Create and start an etcd."""
        proc = self.create(name, **kwargs)
        proc.start()
        return proc

    def close(self) -> None:
        """Kill every etcd of the fleet (idempotent)."""
        for proc in self.processes:
            proc.close()


def running_etcd_pids() -> list[int]:
    """PIDs of etcd processes started by this interpreter and still tracked."""
    return [pid for pid, proc in _LIVE.items() if proc.poll() is None]
