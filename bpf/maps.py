"""Pinned-map handles with typed, batched operations.

A node's maps live in ``<pin_root>/<node>/<name>`` (default root ``/sys/fs/bpf/clustermesh``),
named as in :data:`bpf.layouts.MAP_SPECS`. :func:`open_or_create` reuses a pinned map after
checking that its kernel type, key size, value size and capacity match the spec, and refuses
(:class:`MapLayoutError`) rather than silently recreating: a restart must never drop state.

Writes go through ``BPF_MAP_UPDATE_BATCH`` / ``BPF_MAP_DELETE_BATCH`` in chunks, falling back
to one syscall per key when the kernel does not support a batch command for the map type.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from bpf import syscall
from bpf.layouts import (
    MAP_SPECS,
    BackendKey,
    BackendValue,
    CounterKey,
    CounterValue,
    CTKey,
    CTValue,
    Direction,
    EndpointKey,
    EndpointValue,
    EnforceKey,
    EnforceValue,
    FrontendKey,
    IPCacheKey,
    IPCacheValue,
    MapSpec,
    PolicyKey,
    PolicyValue,
    Reason,
    RevNatKey,
    ServiceValue,
    SlotKey,
    SlotValue,
    counter_index,
)
from meshcore.errors import MeshError

__all__ = [
    "DEFAULT_PIN_ROOT",
    "MapError",
    "MapLayoutError",
    "PinnedMap",
    "NodeMaps",
    "node_pin_dir",
    "open_or_create",
]

DEFAULT_PIN_ROOT = "/sys/fs/bpf/clustermesh"
BATCH_CHUNK = 16384
"""Elements per batch syscall: big enough to amortise the syscall, small enough for one buffer."""

_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")

K = TypeVar("K", bound=ctypes.Structure)
V = TypeVar("V", bound=ctypes.Structure)


class MapError(MeshError):
    """A pinned map cannot be opened, created or written."""


class MapLayoutError(MapError):
    """A pinned map exists with another layout than this code expects."""


def node_pin_dir(node: str, pin_root: str | os.PathLike[str] = DEFAULT_PIN_ROOT) -> Path:
    """``<pin_root>/<node>``, after checking ``node`` is a safe path component."""
    if not _NODE_NAME.match(node):
        raise MapError(f"node name {node!r} is not usable as a bpffs directory name")
    return Path(pin_root) / node


def remove_pin_tree(path: Path) -> None:
    """Unpin everything under ``path`` (a bpffs directory) and remove it; nothing if it is gone.
    Files are unlinked one by one: bpffs holds pins and directories only."""
    if not path.exists():
        return
    for child in path.iterdir():
        if child.is_dir():
            remove_pin_tree(child)
        else:
            child.unlink()
    path.rmdir()


def _unsupported(exc: OSError) -> bool:
    return exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, 524)  # 524: ENOTSUPP


class PinnedMap(Generic[K, V]):
    """A handle on one pinned map: ``get``, ``update_many``, ``delete_many``, ``items``.

    Per-CPU maps return one value per possible CPU from :meth:`get_percpu`; :meth:`get` and
    :meth:`items` are for ordinary maps.
    """

    def __init__(self, spec: MapSpec, fd: int, path: Path) -> None:
        self.spec = spec
        self.fd = fd
        self.path = path
        self.key_type = cast("type[K]", spec.key)
        self.value_type = cast("type[V]", spec.value)
        self._ksize = spec.key_size
        self._vsize = spec.value_size
        self._ncpu = syscall.possible_cpus() if spec.per_cpu else 1
        # Per-CPU values are one 8-byte aligned slot per possible CPU.
        self._vbuf = ((self._vsize + 7) & ~7) * self._ncpu
        self._batch_update = True
        self._batch_delete = True
        self._batch_lookup = True

    # ---- lifecycle ----

    def close(self) -> None:
        """Close this process's fd (the pinned map stays)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> PinnedMap[K, V]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- single elements ----

    def get(self, key: K) -> V | None:
        """The value at ``key``, or None."""
        out = ctypes.create_string_buffer(self._vbuf)
        if not syscall.map_lookup(self.fd, _buf(key), out):
            return None
        return self.value_type.from_buffer_copy(out.raw[: self._vsize])

    def get_percpu(self, key: K) -> list[V]:
        """Every CPU's value at ``key`` (empty list when absent)."""
        out = ctypes.create_string_buffer(self._vbuf)
        if not syscall.map_lookup(self.fd, _buf(key), out):
            return []
        step = self._vbuf // self._ncpu
        return [self.value_type.from_buffer_copy(out.raw[i * step : i * step + self._vsize]) for i in range(self._ncpu)]

    def update(self, key: K, value: V) -> None:
        """Insert or replace one element (on a per-CPU map: the same value on every CPU)."""
        if self.spec.per_cpu:
            self.update_percpu(key, [value] * self._ncpu)
            return
        syscall.map_update(self.fd, _buf(key), _buf(value))

    def update_percpu(self, key: K, values: list[V]) -> None:
        """Set each CPU's value at ``key`` (``values[i]`` for CPU i; missing CPUs get zeros)."""
        step = self._vbuf // self._ncpu
        out = ctypes.create_string_buffer(self._vbuf)
        for i, value in enumerate(values[: self._ncpu]):
            ctypes.memmove(ctypes.addressof(out) + i * step, bytes(value), self._vsize)
        syscall.map_update(self.fd, _buf(key), out)

    @property
    def ncpus(self) -> int:
        """Possible CPUs (value slots of a per-CPU map; 1 otherwise)."""
        return self._ncpu

    def delete(self, key: K) -> bool:
        """Delete one element; False when absent."""
        return syscall.map_delete(self.fd, _buf(key))

    # ---- batches ----

    def update_many(self, items: Iterable[tuple[K, V]]) -> int:
        """Insert or replace every ``(key, value)`` in batches; returns how many were written."""
        return self.update_packed((bytes(key), bytes(value)) for key, value in items)

    def update_packed(self, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Like :meth:`update_many` with keys and values already packed (``bytes(struct)`` or
        the bulk packers of :mod:`bpf.layouts`): the fast path for large syncs."""
        pairs = items if isinstance(items, list) else list(items)
        if not pairs:
            return 0
        keys, values = zip(*pairs, strict=True)
        return self.update_columns(keys, values)

    def update_columns(self, keys: Sequence[bytes], values: Sequence[bytes]) -> int:
        """Write ``keys[i] -> values[i]`` (both packed, in the map's layout), in batches, in the
        order given: the bulk path without a tuple per element. Returns how many were written.

        Order matters for speed: an LPM trie insert in key order walks a cache-hot path and runs
        about twice as fast as one in hash order."""
        if len(keys) != len(values):
            raise MapError(f"{self.spec.name}: {len(keys)} keys but {len(values)} values")
        total = 0
        for start in range(0, len(keys), BATCH_CHUNK):
            end = start + BATCH_CHUNK
            count = min(BATCH_CHUNK, len(keys) - start)
            total += self.update_raw(b"".join(keys[start:end]), b"".join(values[start:end]), count)
        return total

    def update_raw(self, keys: bytes, values: bytes, count: int) -> int:
        """Write ``count`` packed keys and values (already in the map's layout)."""
        if len(keys) != count * self._ksize or len(values) != count * self._vsize or self.spec.per_cpu:
            raise MapError(f"{self.spec.name}: packed buffers do not hold {count} elements of this layout")
        if count == 0:
            return 0
        kbuf = _c_bytes(keys)
        vbuf = _c_bytes(values)
        if self._batch_update:
            try:
                return syscall.map_update_batch(self.fd, kbuf, vbuf, count)
            except OSError as exc:
                if not _unsupported(exc):
                    raise MapError(f"{self.spec.name}: batch update failed: {exc}") from exc
                self._batch_update = False
        ks, vs = self._ksize, self._vsize
        for i in range(count):
            k = ctypes.create_string_buffer(keys[i * ks : (i + 1) * ks], ks)
            v = ctypes.create_string_buffer(values[i * vs : (i + 1) * vs], vs)
            syscall.map_update(self.fd, k, v)
        return count

    def delete_many(self, keys: Iterable[K]) -> int:
        """Delete every key (absent ones are skipped); returns how many were deleted."""
        return self.delete_packed(bytes(k) for k in keys)

    def delete_packed(self, keys: Iterable[bytes]) -> int:
        """Like :meth:`delete_many` with keys already packed."""
        packed = list(keys)
        deleted = 0
        for start in range(0, len(packed), BATCH_CHUNK):
            deleted += self._delete_chunk(packed[start : start + BATCH_CHUNK])
        return deleted

    def _delete_chunk(self, chunk: list[bytes]) -> int:
        deleted = 0
        while chunk and self._batch_delete:
            buf = ctypes.create_string_buffer(b"".join(chunk), len(chunk) * self._ksize)
            done, err = syscall.map_delete_batch(self.fd, buf, len(chunk))
            deleted += done
            if err is None:
                return deleted
            if err.errno == errno.ENOENT:  # key ``done`` is absent: skip it and go on
                chunk = chunk[done + 1 :]
                continue
            if _unsupported(err) and done == 0:
                self._batch_delete = False
                break
            raise MapError(f"{self.spec.name}: batch delete failed: {err}") from err
        for raw in chunk:
            deleted += syscall.map_delete(self.fd, ctypes.create_string_buffer(raw, self._ksize))
        return deleted

    # ---- iteration ----

    def keys(self) -> Iterator[K]:
        """Every key (``GET_NEXT_KEY``; safe against concurrent deletes of the current key)."""
        cur: ctypes.Array[ctypes.c_char] | None = None
        nxt = ctypes.create_string_buffer(self._ksize)
        limit = self.spec.max_entries * 2 + 16  # a map changing under us cannot loop forever
        while limit > 0 and syscall.map_get_next_key(self.fd, cur, nxt):
            limit -= 1
            yield self.key_type.from_buffer_copy(nxt.raw)
            cur, nxt = nxt, ctypes.create_string_buffer(self._ksize)

    def items(self) -> Iterator[tuple[K, V]]:
        """Every ``(key, value)``: ``LOOKUP_BATCH`` where supported, else key walk plus lookups."""
        self._no_percpu()
        if self._batch_lookup:
            key_type, value_type = self.key_type, self.value_type
            for k, v in self.items_packed():
                yield key_type.from_buffer_copy(k), value_type.from_buffer_copy(v)
            return
        for key in self.keys():
            value = self.get(key)
            if value is not None:
                yield key, value

    def items_packed(self) -> Iterator[tuple[bytes, bytes]]:
        """Every ``(key, value)`` as packed bytes (``bytes(key), bytes(value)`` of :meth:`items`,
        without the ctypes objects): the bulk read of a reconciler's first run."""
        self._no_percpu()
        if not self._batch_lookup:
            return ((bytes(k), bytes(v)) for k, v in self.items())
        return chain.from_iterable(self._batches_raw())

    def _batches_raw(self) -> Iterator[Iterator[tuple[bytes, bytes]]]:
        """``LOOKUP_BATCH`` rounds, each as packed ``(key, value)`` slices. When the kernel lacks
        the command for this map type (known at the first round, before anything was yielded),
        clears ``_batch_lookup`` and yields the key walk instead."""
        n = 4096
        ks, vs = self._ksize, self._vsize
        token = max(ks, 8)
        kbuf = ctypes.create_string_buffer(n * ks)
        vbuf = ctypes.create_string_buffer(n * vs)
        in_batch: ctypes.Array[ctypes.c_char] | None = None
        out_batch = ctypes.create_string_buffer(token)
        more = True
        rounds = self.spec.max_entries // n + 16
        while more and rounds > 0:
            rounds -= 1
            try:
                done, more = syscall.map_lookup_batch(self.fd, in_batch, out_batch, kbuf, vbuf, n)
            except OSError as exc:
                if in_batch is not None or not _unsupported(exc):
                    raise
                self._batch_lookup = False
                yield ((bytes(k), bytes(v)) for k, v in self.items())
                return
            kraw, vraw = kbuf.raw, vbuf.raw
            yield zip(
                [kraw[o : o + ks] for o in range(0, done * ks, ks)],
                [vraw[o : o + vs] for o in range(0, done * vs, vs)],
                strict=True,
            )
            in_batch, out_batch = out_batch, ctypes.create_string_buffer(token)

    def _no_percpu(self) -> None:
        if self.spec.per_cpu:
            raise MapError(f"{self.spec.name} is per-CPU: use get_percpu() or NodeMaps.counters()")

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())


def _c_bytes(data: bytes) -> ctypes.Array[ctypes.c_char]:
    """``data`` as a ctypes array for a syscall that only reads it: ``from_buffer_copy`` (one
    memcpy, no zero fill)."""
    return (ctypes.c_char * len(data)).from_buffer_copy(data)


def _buf(obj: ctypes.Structure) -> ctypes.Array[ctypes.c_char]:
    size = ctypes.sizeof(obj)
    return ctypes.create_string_buffer(bytes(obj), size)


def _check_layout(spec: MapSpec, fd: int, path: Path) -> None:
    info = syscall.map_info(fd)
    want = (spec.map_type, spec.key_size, spec.value_size, spec.max_entries)
    have = (info.map_type, info.key_size, info.value_size, info.max_entries)
    if want != have:
        raise MapLayoutError(
            f"pinned map {path} has (type, key size, value size, max entries) = {have}, this version "
            f"expects {want}: the datapath layout changed; remove the pin (losing its entries) "
            "or run the matching version"
        )


def open_or_create(spec: MapSpec, directory: Path, key: type[K], value: type[V]) -> PinnedMap[K, V]:
    """Open ``directory/spec.name`` (layout checked) or create and pin it; ``key``/``value`` are
    the spec's structures (they type the handle)."""
    path = directory / spec.name
    if path.exists():
        try:
            fd = syscall.obj_get(str(path))
        except OSError as exc:
            raise MapError(f"cannot open pinned map {path}: {exc}") from exc
        try:
            _check_layout(spec, fd, path)
        except BaseException:
            os.close(fd)
            raise
        return PinnedMap(spec, fd, path)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        fd = syscall.map_create(spec.map_type, spec.key_size, spec.value_size, spec.max_entries, spec.flags, spec.name)
    except OSError as exc:
        raise MapError(f"cannot create map {spec.name}: {exc} (root and a mounted bpffs needed)") from exc
    try:
        syscall.obj_pin(fd, str(path))
    except OSError as exc:
        os.close(fd)
        if exc.errno == errno.EEXIST:  # another process pinned it first: use theirs
            return open_or_create(spec, directory, key, value)
        raise MapError(f"cannot pin map at {path}: {exc} (is {directory.parent} on bpffs?)") from exc
    return PinnedMap(spec, fd, path)


class NodeMaps:
    """All pinned maps of one node, opened or created together, one typed attribute per map."""

    def __init__(self, node: str, pin_root: str | os.PathLike[str] = DEFAULT_PIN_ROOT) -> None:
        self.node = node
        self.directory = node_pin_dir(node, pin_root)
        self.maps: dict[str, PinnedMap[Any, Any]] = {}
        try:
            self.ipcache = self._open("ipcache", IPCacheKey, IPCacheValue)
            self.services = self._open("services", FrontendKey, ServiceValue)
            self.svc_slots = self._open("svc_slots", SlotKey, SlotValue)
            self.backends = self._open("backends", BackendKey, BackendValue)
            self.policy = self._open("policy", PolicyKey, PolicyValue)
            self.policy_enforce = self._open("policy_enforce", EnforceKey, EnforceValue)
            self.counters_map = self._open("counters", CounterKey, CounterValue)
            self.endpoints = self._open("endpoints", EndpointKey, EndpointValue)
            self.sock_revnat = self._open("sock_revnat", RevNatKey, FrontendKey)
            self.ct = self._open("ct", CTKey, CTValue)
        except BaseException:
            self.close()
            raise

    def _open(self, name: str, key: type[K], value: type[V]) -> PinnedMap[K, V]:
        spec = MAP_SPECS[name]
        assert spec.key is key and spec.value is value, f"{name}: typed handle disagrees with MAP_SPECS"
        handle = open_or_create(spec, self.directory, key, value)
        self.maps[name] = handle
        return handle

    def __getitem__(self, name: str) -> PinnedMap[Any, Any]:
        return self.maps[name]

    def counters(self) -> dict[tuple[Reason, Direction], tuple[int, int]]:
        """Non-zero ``(reason, direction) -> (packets, bytes)``, summed over CPUs."""
        out: dict[tuple[Reason, Direction], tuple[int, int]] = {}
        for reason in Reason:
            for direction in Direction:
                per_cpu = self.counters_map.get_percpu(CounterKey(counter_index(reason, direction)))
                packets = sum(v.packets for v in per_cpu)
                nbytes = sum(v.bytes for v in per_cpu)
                if packets or nbytes:
                    out[(reason, direction)] = (packets, nbytes)
        return out

    def close(self) -> None:
        """Close every fd (pins stay)."""
        for m in self.maps.values():
            m.close()

    def unpin(self) -> None:
        """Remove the node's pins and directory (tests and ``clustermesh`` teardown only)."""
        self.close()
        for name in MAP_SPECS:
            (self.directory / name).unlink(missing_ok=True)
        try:
            self.directory.rmdir()
        except OSError:
            pass

    def __enter__(self) -> NodeMaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
