"""A small ipcache write benchmark: raw ``BPF_MAP_UPDATE_BATCH`` vs the typed ``update_many`` vs
one ``BPF_MAP_UPDATE_ELEM`` per key, on a throwaway pinned LPM map. Prints, asserts nothing.

``python -m bpf.bench [entries]`` (root, bpffs mounted).
"""

from __future__ import annotations

import ctypes
import struct
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bpf import syscall
from bpf.layouts import (
    FAMILY_IPV4,
    IPCACHE_F_HAS_TUNNEL_EP,
    ipcache_key,
    ipcache_value,
    pack_ipcache_key,
    pack_ipcache_value,
)
from bpf.maps import NodeMaps

__all__ = ["BenchResult", "bench_ipcache", "main", "raw_batch_rate"]

_KEY = struct.Struct("=IHBB16s")
_VALUE = struct.Struct("=I16sHBB")


@dataclass(frozen=True, slots=True)
class BenchResult:
    """Updates per second of each write path, for ``entries`` fresh /32 entries."""

    entries: int
    raw_batch_per_s: float
    packed_batch_per_s: float
    typed_batch_per_s: float
    per_key_per_s: float

    def summary(self) -> str:
        return (
            f"ipcache writes, {self.entries} entries: raw UPDATE_BATCH {self.raw_batch_per_s:,.0f}/s, "
            f"update_packed from prefixes {self.packed_batch_per_s:,.0f}/s "
            f"({self.packed_batch_per_s / self.raw_batch_per_s:.0%} of raw), "
            f"update_many from ctypes records {self.typed_batch_per_s:,.0f}/s "
            f"({self.typed_batch_per_s / self.raw_batch_per_s:.0%}), "
            f"one key per syscall {self.per_key_per_s:,.0f}/s"
        )


def _packed(n: int, identity: int) -> tuple[bytes, bytes]:
    ep = bytes([192, 168, 0, 1]) + bytes(12)
    keys = b"".join(_KEY.pack(64, 0, 0, FAMILY_IPV4, (0x0A000000 + i).to_bytes(4, "big") + bytes(12)) for i in range(n))
    value = _VALUE.pack(identity, ep, 0, 0, IPCACHE_F_HAS_TUNNEL_EP)
    return keys, value * n


def bench_ipcache(entries: int = 100_000, pin_root: str | Path = "/sys/fs/bpf") -> BenchResult:
    """Time the three write paths on a fresh map each (pinned under ``pin_root``, then removed)."""
    root = Path(pin_root) / f"cmbench-{uuid.uuid4().hex[:8]}"
    root.mkdir()
    try:
        rates = []
        for mode in ("raw", "packed", "typed", "per-key"):
            maps = NodeMaps(mode, root)
            try:
                rates.append(_time_mode(maps, mode, entries))
            finally:
                maps.unpin()
        return BenchResult(entries, *rates)
    finally:
        root.rmdir()


def _time_mode(maps: NodeMaps, mode: str, n: int) -> float:
    ipcache = maps.ipcache
    if mode == "raw":
        return raw_batch_rate(maps, n)
    # The other paths include encoding from prefix strings, as a reconciler would.
    prefixes = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32" for i in range(n)]
    start = time.perf_counter()
    if mode == "packed":
        ipcache.update_packed((pack_ipcache_key(p), pack_ipcache_value(4242, "192.168.0.1")) for p in prefixes)
        return n / (time.perf_counter() - start)
    items = ((ipcache_key(p), ipcache_value(4242, "192.168.0.1")) for p in prefixes)
    if mode == "typed":
        ipcache.update_many(items)
    else:
        for key, value in items:
            ipcache.update(key, value)
    return n / (time.perf_counter() - start)


def raw_batch_rate(maps: NodeMaps, n: int) -> float:
    """Updates per second of ``n`` fresh /32 entries written into ``maps.ipcache`` with bare
    ``BPF_MAP_UPDATE_BATCH`` calls from buffers packed beforehand (the floor of any write path)."""
    keys, values = _packed(n, 4242)
    kbuf = ctypes.create_string_buffer(keys, len(keys))
    vbuf = ctypes.create_string_buffer(values, len(values))
    start = time.perf_counter()
    for off in range(0, n, 16384):  # same chunking as PinnedMap
        count = min(16384, n - off)
        kb = (ctypes.c_char * (count * 24)).from_buffer(kbuf, off * 24)
        vb = (ctypes.c_char * (count * 24)).from_buffer(vbuf, off * 24)
        syscall.map_update_batch(maps.ipcache.fd, kb, vb, count)
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    """Print one benchmark run."""
    args = sys.argv[1:] if argv is None else argv
    print(bench_ipcache(int(args[0]) if args else 100_000).summary())


if __name__ == "__main__":
    main()
