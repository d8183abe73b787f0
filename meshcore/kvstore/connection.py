"""gRPC channels to the endpoints of one etcd cluster: failover, deadlines, cluster-ID tracking.

One channel per dial target (an endpoint, or each aliased IP of it) is opened at connect time;
gRPC connects lazily and reconnects with a short backoff by itself. Calls go to the current target
and move on to the next one when it is unavailable. Every response header's cluster ID is checked
against the last one seen: when it changes (etcd wiped or replaced behind the same address) the
call that noticed raises :class:`ClusterChangedError` and the new ID is adopted, so the caller can
re-list on the same client. Other users of a shared client that did not see that call are still
protected: a watch resumed at a revision the new cluster has not reached raises the same error, and
a lease of the old cluster is simply not found (expired).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import grpc.aio

from meshcore.errors import ClusterChangedError, ConfigError, KVStoreError, KVStoreUnavailableError
from meshcore.kvstore.config import EtcdClientConfig, parse_endpoint
from meshcore.kvstore.etcdpb import rpc_pb2, rpc_pb2_grpc
from meshcore.kvstore.grpcerrors import map_rpc_error
from meshcore.pki import certificate_common_name

T = TypeVar("T")
_grpc_stubs: Any = rpc_pb2_grpc  # generated without type hints

# Lists are paginated, but a single large value must still fit.
DEFAULT_MAX_RECEIVE_BYTES = 256 * 1024 * 1024
_FAILOVER_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass(frozen=True, slots=True)
class DialTarget:
    """One address to dial for an endpoint; ``server_name`` overrides TLS name verification."""

    endpoint: str
    address: str
    server_name: str | None
    secure: bool


def dial_targets(config: EtcdClientConfig) -> list[DialTarget]:
    """Expand the configured endpoints (and host aliases) into addresses to dial, in order."""
    targets: list[DialTarget] = []
    for ep in config.endpoints:
        scheme, host, port = parse_endpoint(ep)
        secure = scheme == "https"
        hosts = config.host_aliases.get(host)
        name = config.tls_server_name
        if hosts and name is None:
            name = host  # dial the alias IP but verify the certificate for the hostname
        for h in hosts or (host,):
            addr = f"[{h}]:{port}" if ":" in h else f"{h}:{port}"
            targets.append(DialTarget(ep, addr, name if secure else None, secure))
    return targets


class _Stubs:
    """A channel and the etcd service stubs over it."""

    __slots__ = ("target", "channel", "kv", "watch", "lease", "maintenance", "auth")

    def __init__(self, target: DialTarget, channel: grpc.aio.Channel) -> None:
        self.target = target
        self.channel = channel
        self.kv = _grpc_stubs.KVStub(channel)
        self.watch = _grpc_stubs.WatchStub(channel)
        self.lease = _grpc_stubs.LeaseStub(channel)
        self.maintenance = _grpc_stubs.MaintenanceStub(channel)
        self.auth = _grpc_stubs.AuthStub(channel)


class EtcdConnection:
    """Channels to one etcd cluster plus the bookkeeping every RPC shares."""

    def __init__(self, config: EtcdClientConfig, *, max_receive_bytes: int = DEFAULT_MAX_RECEIVE_BYTES):
        self.config = config
        self.request_timeout = config.request_timeout
        self._max_receive_bytes = max_receive_bytes
        self._stubs: list[_Stubs] = []
        self._index = 0
        self.cluster_id = 0
        self.user: str | None = None

    # ---- lifecycle ----

    async def open(self) -> None:
        """Create the channels and reach one endpoint (within ``dial_timeout``)."""
        await self.close()
        cfg = self.config
        creds = self._credentials()
        self._stubs = [_Stubs(t, self._channel(t, creds)) for t in dial_targets(cfg)]
        self._index = 0
        self.cluster_id = 0
        errors: list[str] = []
        for i, stubs in enumerate(self._stubs):
            try:
                resp = await stubs.maintenance.Status(rpc_pb2.StatusRequest(), timeout=cfg.dial_timeout)
            except grpc.aio.AioRpcError as e:
                errors.append(str(map_rpc_error(e, endpoint=self._label(stubs.target), op="connect")))
                continue
            self._index = i
            self.cluster_id = resp.header.cluster_id
            return
        await self.close()
        raise KVStoreUnavailableError(
            "cannot reach any etcd endpoint of " + ", ".join(cfg.endpoints) + ": " + " | ".join(errors)
        )

    async def close(self) -> None:
        """Close every channel; in-flight calls are cancelled."""
        stubs, self._stubs = self._stubs, []
        for s in stubs:
            await s.channel.close(grace=None)

    def _credentials(self) -> grpc.ChannelCredentials | None:
        cfg = self.config
        if not cfg.uses_tls:
            return None

        def read(path: Any) -> bytes | None:
            if path is None:
                return None
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as e:
                raise ConfigError(
                    f"cannot read TLS file {path} named in the etcd config: {e.strerror or e}"
                ) from None

        cert = read(cfg.cert_file)
        if cert is not None:
            try:
                self.user = certificate_common_name(cert)
            except ValueError as e:
                raise ConfigError(f"cert-file {cfg.cert_file} is not a PEM certificate: {e}") from None
        return grpc.ssl_channel_credentials(
            root_certificates=read(cfg.trusted_ca_file),
            private_key=read(cfg.key_file),
            certificate_chain=cert,
        )

    def _channel(self, target: DialTarget, creds: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
        cfg = self.config
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", self._max_receive_bytes),
            ("grpc.keepalive_time_ms", int(cfg.keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(cfg.keepalive_timeout * 1000)),
            # etcd refuses pings without an active stream (PermitWithoutStream=false).
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.max_pings_without_data", 0),
            # gRPC's default reconnect backoff grows to 120 s; etcd restarts should be noticed fast.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
            ("grpc.enable_retries", 0),
        ]
        if creds is None:
            return grpc.aio.insecure_channel(target.address, options=options)
        if target.server_name:
            options.append(("grpc.ssl_target_name_override", target.server_name))
        return grpc.aio.secure_channel(target.address, creds, options=options)

    # ---- calls ----

    @property
    def endpoint(self) -> str:
        """The endpoint calls currently go to."""
        if not self._stubs:
            return self.config.endpoints[0]
        return self._label(self._stubs[self._index].target)

    @staticmethod
    def _label(t: DialTarget) -> str:
        return t.endpoint if t.endpoint.endswith(t.address) else f"{t.endpoint} ({t.address})"

    def current(self) -> _Stubs:
        """The stubs of the current endpoint; raises if not connected."""
        if not self._stubs:
            raise KVStoreError("etcd client is not connected: use 'async with EtcdClient(...)' or connect()")
        return self._stubs[self._index]

    def fail_over(self, stubs: _Stubs) -> bool:
        """Move to the next target if ``stubs`` is still current; False when there is only one."""
        if len(self._stubs) < 2:
            return False
        if self._stubs and self._stubs[self._index] is stubs:
            self._index = (self._index + 1) % len(self._stubs)
        return True

    def observe(self, header: Any) -> None:
        """Check a response header's cluster ID; raises once per change (see module docstring)."""
        cid = header.cluster_id
        if cid == self.cluster_id:
            return
        old, self.cluster_id = self.cluster_id, cid
        if old != 0:
            raise ClusterChangedError(
                f"the etcd cluster behind {self.endpoint} changed (cluster ID {old:x} -> {cid:x}): it "
                "was wiped or replaced; re-list everything and re-create leases"
            )

    def error(self, err: grpc.aio.AioRpcError, stubs: _Stubs, op: str, key: str | None) -> KVStoreError:
        return map_rpc_error(err, endpoint=self._label(stubs.target), op=op, key=key, user=self.user)

    async def call(self, fn: Callable[[_Stubs], Awaitable[T]], *, op: str, key: str | None = None) -> T:
        """Run ``fn`` against the current endpoint, failing over on unavailability.

        ``fn`` must be safe to repeat: it is retried on the next target when gRPC reports
        UNAVAILABLE (nothing reached the server, or the server dropped the connection).
        """
        attempts = max(1, len(self._stubs))
        for attempt in range(attempts):
            stubs = self.current()
            try:
                return await fn(stubs)
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if code in _FAILOVER_CODES and self.fail_over(stubs):
                    if code is grpc.StatusCode.UNAVAILABLE and attempt + 1 < attempts:
                        continue
                raise self.error(e, stubs, op, key) from e
        raise AssertionError("unreachable")

    async def unary(self, service: str, method: str, request: Any, *, op: str, key: str | None = None) -> Any:
        """Call a unary RPC (``service`` is a stub attribute: kv, lease, maintenance, auth) with the
        request deadline, and check the response header."""
        timeout = self.request_timeout

        async def run(stubs: _Stubs) -> Any:
            return await getattr(getattr(stubs, service), method)(request, timeout=timeout)

        resp = await self.call(run, op=op, key=key)
        self.observe(resp.header)
        return resp
