"""The store's etcd side: guarded writes, a consistent start snapshot, and history replays.

:class:`EtcdBacking` speaks etcd v3 over a plain synchronous gRPC channel (the generated stubs of
:mod:`meshcore.kvstore.etcdpb`), because the :class:`~lab.kube.api.store.ObjectStore` writes under a
threading lock and must know the outcome (and revision) of every write before it releases it.

- Writes are one-operation transactions guarded like kube-apiserver's: a create requires the key to be
  absent (``create_revision == 0``), an update or delete requires ``mod_revision`` to equal the
  resourceVersion the store holds. The response's header revision is the new resourceVersion.
- :meth:`EtcdBacking.load` marks "now" with a write of our own (the sentinel key inside the prefix),
  reads every key at exactly that revision, then replays etcd's own history from a bounded window of
  revisions before it up to the sentinel's event (with ``prev_kv``, so selector transitions can be
  told). That gives the state, the events that led to it, and the revision before which the history
  is unknown (the window's start, or etcd's compaction revision if that is later).
- :meth:`EtcdBacking.resync` does the same replay from a given revision, for when etcd turns out to
  hold writes the store did not make.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar, cast

import grpc

from lab.kube.api.etcdkeys import sentinel_key
from meshcore.errors import KVStoreError, KVStoreUnavailableError
from meshcore.kvstore.codec import prefix_range
from meshcore.kvstore.config import EtcdClientConfig
from meshcore.kvstore.connection import DialTarget, dial_targets
from meshcore.kvstore.etcdpb import rpc_pb2, rpc_pb2_grpc
from meshcore.kvstore.grpcerrors import map_rpc_error

T = TypeVar("T")
_stubs: Any = rpc_pb2_grpc  # generated without type hints
_pb: Any = rpc_pb2
DEFAULT_HISTORY_WINDOW = 10_000
_PAGE = 5000
_REPLAY_TIMEOUT = 120.0


@dataclass(frozen=True, slots=True)
class StoredKV:
    """One key as read at the snapshot revision."""

    key: str
    value: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class BackingEvent:
    """One etcd watch event under the prefix; ``prev_value`` is the key's value before it (None: new key)."""

    key: str
    deleted: bool
    value: bytes
    revision: int
    prev_value: bytes | None
    prev_revision: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything under the prefix at ``revision``, and every event in ``(floor, revision)``."""

    revision: int
    kvs: list[StoredKV]
    events: list[BackingEvent]
    floor: int


class _Compacted(KVStoreError):
    def __init__(self, revision: int) -> None:
        super().__init__(f"etcd has compacted its history up to revision {revision}")
        self.revision = revision


def _range(ch: _Channel, *, req: Any, timeout: float) -> Any:
    return ch.kv.Range(req, timeout=timeout)


class _Channel:
    def __init__(self, target: DialTarget, channel: grpc.Channel) -> None:
        self.target = target
        self.channel = channel
        self.kv = _stubs.KVStub(channel)
        self.watch = _stubs.WatchStub(channel)
        self.maintenance = _stubs.MaintenanceStub(channel)


class EtcdBacking:
    """Synchronous etcd access for one :class:`~lab.kube.api.store.ObjectStore` (see module docstring).

    :param prefix: the key prefix (kube-apiserver's ``--etcd-prefix``, default ``/registry``).
    :param history_window: how many revisions before start to replay into the watch history.
    """

    def __init__(self, config: EtcdClientConfig, *, prefix: str = "/registry",
                 history_window: int = DEFAULT_HISTORY_WINDOW) -> None:
        self.config = config
        self.prefix = prefix.rstrip("/")
        self.history_window = history_window
        self._range = prefix_range(self.prefix + "/")
        self._sentinel = sentinel_key(self.prefix)
        self._channels: list[_Channel] = []
        self._index = 0

    # ----- connection -----

    def _credentials(self) -> grpc.ChannelCredentials | None:
        cfg = self.config
        if not cfg.uses_tls:
            return None

        def read(path: Any) -> bytes | None:
            if path is None:
                return None
            with open(path, "rb") as f:
                return f.read()

        return grpc.ssl_channel_credentials(root_certificates=read(cfg.trusted_ca_file),
                                            private_key=read(cfg.key_file), certificate_chain=read(cfg.cert_file))

    def _open(self) -> None:
        creds = self._credentials()
        cfg = self.config
        self._channels = []
        for t in dial_targets(cfg):
            options: list[tuple[str, Any]] = [
                ("grpc.max_receive_message_length", 256 * 1024 * 1024),
                ("grpc.keepalive_time_ms", int(cfg.keepalive_time * 1000)),
                ("grpc.keepalive_timeout_ms", int(cfg.keepalive_timeout * 1000)),
                ("grpc.keepalive_permit_without_calls", 0),
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.min_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2000),
                ("grpc.enable_retries", 0),
            ]
            if creds is None:
                ch = grpc.insecure_channel(t.address, options=options)
            else:
                if t.server_name:
                    options.append(("grpc.ssl_target_name_override", t.server_name))
                ch = grpc.secure_channel(t.address, creds, options=options)
            self._channels.append(_Channel(t, ch))

    def connect(self, wait: float = 30.0) -> None:
        """Open channels and wait (at most ``wait`` seconds) until one endpoint answers; raises
        :class:`KVStoreUnavailableError` with the last error otherwise."""
        self._open()
        deadline = time.monotonic() + wait
        last = "no endpoint"
        while True:
            for i, ch in enumerate(self._channels):
                try:
                    ch.maintenance.Status(_pb.StatusRequest(), timeout=min(self.config.dial_timeout, 2.0))
                    self._index = i
                    return
                except grpc.RpcError as e:
                    last = str(self._error(e, ch, "connect", None))
            if time.monotonic() >= deadline:
                self.close()
                raise KVStoreUnavailableError(f"etcd {', '.join(self.config.endpoints)} unreachable for "
                                              f"{wait:g}s: {last}")
            time.sleep(0.5)

    def close(self) -> None:
        """Close the channels."""
        channels, self._channels = self._channels, []
        for ch in channels:
            ch.channel.close()

    def _error(self, err: grpc.RpcError, ch: _Channel, op: str, key: str | None) -> KVStoreError:
        return map_rpc_error(cast(Any, err), endpoint=ch.target.endpoint, op=op, key=key)

    def _call(self, fn: Callable[[_Channel], T], op: str, key: str | None = None) -> T:
        if not self._channels:
            raise KVStoreError("the etcd backing is not connected: call connect() first")
        for attempt in range(len(self._channels)):
            ch = self._channels[self._index]
            try:
                return fn(ch)
            except grpc.RpcError as e:
                code = cast(Any, e).code()
                retry = code is grpc.StatusCode.UNAVAILABLE and attempt + 1 < len(self._channels)
                if code is grpc.StatusCode.UNAVAILABLE and len(self._channels) > 1:
                    self._index = (self._index + 1) % len(self._channels)
                if not retry:
                    raise self._error(e, ch, op, key) from e
        raise AssertionError("unreachable")

    # ----- writes -----

    def _txn(self, key: str, compare: Any, op: Any, what: str) -> tuple[bool, int]:
        req = _pb.TxnRequest(compare=[compare], success=[op])
        timeout = self.config.request_timeout
        resp = self._call(lambda ch: ch.kv.Txn(req, timeout=timeout), what, key)
        return bool(resp.succeeded), int(resp.header.revision)

    def create(self, key: str, value: bytes) -> tuple[bool, int]:
        """Put ``key`` if absent; returns (done, header revision)."""
        cmp = _pb.Compare(result=_pb.Compare.EQUAL, target=_pb.Compare.CREATE, key=key.encode(), create_revision=0)
        op = _pb.RequestOp(request_put=_pb.PutRequest(key=key.encode(), value=value))
        return self._txn(key, cmp, op, "create")

    def update(self, key: str, value: bytes, expected_revision: int) -> tuple[bool, int]:
        """Put ``key`` if its mod_revision is ``expected_revision``; returns (done, header revision)."""
        cmp = _pb.Compare(result=_pb.Compare.EQUAL, target=_pb.Compare.MOD, key=key.encode(),
                          mod_revision=expected_revision)
        op = _pb.RequestOp(request_put=_pb.PutRequest(key=key.encode(), value=value))
        return self._txn(key, cmp, op, "update")

    def delete(self, key: str, expected_revision: int) -> tuple[bool, int]:
        """Delete ``key`` if its mod_revision is ``expected_revision``; returns (done, header revision)."""
        cmp = _pb.Compare(result=_pb.Compare.EQUAL, target=_pb.Compare.MOD, key=key.encode(),
                          mod_revision=expected_revision)
        op = _pb.RequestOp(request_delete_range=_pb.DeleteRangeRequest(key=key.encode()))
        return self._txn(key, cmp, op, "delete")

    def _mark(self) -> int:
        """Write the sentinel; its revision is "now" and is known to appear in a watch of the prefix."""
        value = json.dumps({"pid": os.getpid(), "time": time.time()}).encode()
        req = _pb.PutRequest(key=self._sentinel.encode(), value=value)
        timeout = self.config.request_timeout
        resp = self._call(lambda ch: ch.kv.Put(req, timeout=timeout), "put", self._sentinel)
        return int(resp.header.revision)

    # ----- reads -----

    def _range_all(self, revision: int) -> list[StoredKV]:
        key, end = self._range
        out: list[StoredKV] = []
        timeout = self.config.request_timeout
        while True:
            req = _pb.RangeRequest(key=key, range_end=end, revision=revision, limit=_PAGE)
            resp = self._call(partial(_range, req=req, timeout=timeout), "list", self.prefix)
            kvs = list(resp.kvs)
            out += [StoredKV(kv.key.decode(), bytes(kv.value), int(kv.mod_revision)) for kv in kvs]
            if not resp.more or not kvs:
                return out
            key = kvs[-1].key + b"\0"

    def events(self, start: int, end: int) -> list[BackingEvent]:
        """Every event under the prefix with ``start <= revision <= end``, where ``end`` must be the
        revision of a write under the prefix (so the replay knows when it is complete). Raises
        :class:`_Compacted` if etcd no longer has revision ``start``."""
        if start > end:
            return []
        key, range_end = self._range
        finished = threading.Event()

        def requests() -> Iterator[Any]:
            yield _pb.WatchRequest(create_request=_pb.WatchCreateRequest(
                key=key, range_end=range_end, start_revision=start, prev_kv=True))
            finished.wait(_REPLAY_TIMEOUT)  # keep the stream open: a half-close ends etcd's watch

        out: list[BackingEvent] = []
        ch = self._channels[self._index] if self._channels else None
        if ch is None:
            raise KVStoreError("the etcd backing is not connected: call connect() first")
        call = ch.watch.Watch(requests(), timeout=_REPLAY_TIMEOUT)
        try:
            for resp in call:
                if resp.compact_revision:
                    raise _Compacted(int(resp.compact_revision))
                if resp.canceled:
                    raise KVStoreError(f"etcd cancelled the history replay from {start}: {resp.cancel_reason}")
                top = 0
                for ev in resp.events:
                    rev = int(ev.kv.mod_revision)
                    top = max(top, rev)
                    if rev > end:
                        continue
                    has_prev = ev.HasField("prev_kv")
                    out.append(BackingEvent(
                        key=ev.kv.key.decode(), deleted=bool(ev.type), value=bytes(ev.kv.value), revision=rev,
                        prev_value=bytes(ev.prev_kv.value) if has_prev else None,
                        prev_revision=int(ev.prev_kv.mod_revision) if has_prev else 0))
                if top >= end:
                    return out
        except grpc.RpcError as e:
            raise self._error(e, ch, "watch", self.prefix) from e
        finally:
            finished.set()
            call.cancel()
        raise KVStoreUnavailableError(f"etcd ended the history replay from {start} before revision {end}")

    def _replay(self, start: int, end: int) -> tuple[list[BackingEvent], int]:
        """Events in ``[start, end]`` (or from etcd's compaction revision if later), sentinel excluded, and
        the floor (the revision after which every event is included)."""
        start = max(start, 1)
        try:
            events = self.events(start, end)
        except _Compacted as c:
            start = c.revision
            events = self.events(start, end)
        return [e for e in events if e.key != self._sentinel], start - 1

    def load(self) -> Snapshot:
        """The state at a fresh sentinel revision and the history of the window before it."""
        rev = self._mark()
        kvs = [kv for kv in self._range_all(rev) if kv.key != self._sentinel]
        events, floor = self._replay(rev - self.history_window + 1, rev)
        return Snapshot(rev, kvs, events, floor)

    def resync(self, after: int) -> tuple[list[BackingEvent], int, int]:
        """Events after revision ``after`` up to a fresh sentinel: (events, floor, sentinel revision).
        ``floor > after`` means etcd compacted some of them away."""
        rev = self._mark()
        events, floor = self._replay(after + 1, rev)
        return events, floor, rev
