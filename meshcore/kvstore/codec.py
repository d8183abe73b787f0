"""Conversions between etcd's protobuf messages and the records in :mod:`meshcore.kvstore.types`.

These run once per key on big lists and watch replays, so they are plain comprehensions with
positional construction and no per-item checks beyond UTF-8 decoding of keys.
"""

from __future__ import annotations

from typing import Any

from meshcore.errors import WireError
from meshcore.kvstore.types import EventType, KeyValue, WatchEvent

_PUT = EventType.PUT
_DELETE = EventType.DELETE


def prefix_range_end(prefix: bytes) -> bytes:
    """etcd's range end for "every key starting with ``prefix``" (``b"\\0"`` means no end)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def prefix_range(prefix: str) -> tuple[bytes, bytes]:
    """(key, range_end) selecting every key under ``prefix``; the empty prefix selects all keys."""
    key = prefix.encode()
    if not key:
        return b"\0", b"\0"  # etcd rejects an empty key; "\0".."\0" means "from the start, no end"
    return key, prefix_range_end(key)


def decode_kvs(kvs: Any) -> list[KeyValue]:
    """Convert protobuf ``mvccpb.KeyValue`` messages to :class:`KeyValue` records."""
    kv_cls = KeyValue
    try:
        return [
            kv_cls(kv.key.decode(), kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)
            for kv in kvs
        ]
    except UnicodeDecodeError:
        raise _not_utf8([kv.key for kv in kvs]) from None


def decode_events(events: Any) -> list[WatchEvent]:
    """Convert protobuf ``mvccpb.Event`` messages to :class:`WatchEvent` records."""
    try:
        return [
            WatchEvent(_DELETE if ev.type else _PUT, ev.kv.key.decode(), ev.kv.value, ev.kv.mod_revision)
            for ev in events
        ]
    except UnicodeDecodeError:
        raise _not_utf8([ev.kv.key for ev in events]) from None


def _not_utf8(keys: list[bytes]) -> WireError:
    bad = b""
    for k in keys:
        try:
            k.decode()
        except UnicodeDecodeError:
            bad = k
            break
    return WireError("etcd key is not valid UTF-8; keys under this prefix must be text", key=repr(bad))
