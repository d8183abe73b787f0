"""The few ``bpf(2)`` commands the map handles need, through ctypes (no libbpf binding here).

Each function takes file descriptors and raw buffers and raises :class:`BpfSyscallError` (an
``OSError`` carrying errno) on failure. ``union bpf_attr`` is passed as a zeroed 128-byte buffer
with the command's fields packed at their uapi offsets.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass

from meshcore.errors import MeshError

__all__ = [
    "BpfSyscallError",
    "MapInfo",
    "bpf",
    "map_create",
    "obj_pin",
    "obj_get",
    "map_info",
    "map_lookup",
    "map_update",
    "map_delete",
    "map_get_next_key",
    "map_update_batch",
    "map_delete_batch",
    "map_lookup_batch",
    "prog_attach",
    "prog_detach",
    "possible_cpus",
    "BPF_ANY",
    "BPF_NOEXIST",
    "BPF_EXIST",
]

_NR_BPF = 321  # x86_64
_ATTR_SIZE = 128

BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_UPDATE_BATCH = 26
BPF_MAP_DELETE_BATCH = 27

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint]


class BpfSyscallError(MeshError, OSError):
    """A ``bpf(2)`` command failed; ``errno`` says why."""

    def __init__(self, err: int, what: str) -> None:
        OSError.__init__(self, err, f"bpf {what}: {os.strerror(err)}")


def bpf(cmd: int, attr: ctypes.Array[ctypes.c_char], what: str) -> int:
    """Run one command; return its (non-negative) result."""
    res = _syscall(_NR_BPF, cmd, ctypes.addressof(attr), _ATTR_SIZE)
    if res < 0:
        raise BpfSyscallError(ctypes.get_errno(), what)
    return int(res)


def _attr(fmt: str, *values: int | bytes) -> ctypes.Array[ctypes.c_char]:
    buf = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into(fmt, buf, 0, *values)
    return buf


def _addr(buf: ctypes.Array[ctypes.c_char] | None) -> int:
    return 0 if buf is None else ctypes.addressof(buf)


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, flags: int, name: str) -> int:
    """``BPF_MAP_CREATE``; returns the new map's fd."""
    attr = _attr("=IIIIIII16s", map_type, key_size, value_size, max_entries, flags, 0, 0, name.encode()[:15])
    return bpf(BPF_MAP_CREATE, attr, f"map create {name!r}")


def obj_pin(fd: int, path: str) -> None:
    """``BPF_OBJ_PIN`` ``fd`` at ``path`` (on bpffs)."""
    cpath = ctypes.create_string_buffer(path.encode())
    bpf(BPF_OBJ_PIN, _attr("=QI", ctypes.addressof(cpath), fd), f"pin {path}")


def obj_get(path: str) -> int:
    """``BPF_OBJ_GET``: a new fd for the object pinned at ``path``."""
    cpath = ctypes.create_string_buffer(path.encode())
    return bpf(BPF_OBJ_GET, _attr("=QII", ctypes.addressof(cpath), 0, 0), f"open pinned {path}")


@dataclass(frozen=True, slots=True)
class MapInfo:
    """The parts of ``struct bpf_map_info`` a layout check needs."""

    map_type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str


def map_info(fd: int) -> MapInfo:
    """``BPF_OBJ_GET_INFO_BY_FD`` for a map."""
    info = ctypes.create_string_buffer(88)
    bpf(BPF_OBJ_GET_INFO_BY_FD, _attr("=IIQ", fd, len(info), ctypes.addressof(info)), "map info")
    map_type, map_id, key_size, value_size, max_entries, flags, name = struct.unpack_from("=IIIIII16s", info)
    return MapInfo(map_type, map_id, key_size, value_size, max_entries, flags, name.rstrip(b"\0").decode())


def _elem(cmd: int, fd: int, key: int, value: int, flags: int, what: str) -> int:
    return bpf(cmd, _attr("=IIQQQ", fd, 0, key, value, flags), what)


def map_lookup(fd: int, key: ctypes.Array[ctypes.c_char], value: ctypes.Array[ctypes.c_char]) -> bool:
    """Lookup into ``value``; False when the key is absent."""
    try:
        _elem(BPF_MAP_LOOKUP_ELEM, fd, _addr(key), _addr(value), 0, "map lookup")
    except BpfSyscallError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def map_update(fd: int, key: ctypes.Array[ctypes.c_char], value: ctypes.Array[ctypes.c_char], flags: int = 0) -> None:
    """Insert or replace one element."""
    _elem(BPF_MAP_UPDATE_ELEM, fd, _addr(key), _addr(value), flags, "map update")


def map_delete(fd: int, key: ctypes.Array[ctypes.c_char]) -> bool:
    """Delete one element; False when it was absent."""
    try:
        _elem(BPF_MAP_DELETE_ELEM, fd, _addr(key), 0, 0, "map delete")
    except BpfSyscallError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def map_get_next_key(fd: int, key: ctypes.Array[ctypes.c_char] | None, next_key: ctypes.Array[ctypes.c_char]) -> bool:
    """The key after ``key`` (the first with None); False at the end."""
    try:
        _elem(BPF_MAP_GET_NEXT_KEY, fd, _addr(key), _addr(next_key), 0, "map get-next-key")
    except BpfSyscallError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def _batch(
    cmd: int,
    fd: int,
    keys: int,
    values: int,
    count: int,
    in_batch: int = 0,
    out_batch: int = 0,
    what: str = "",
) -> tuple[int, BpfSyscallError | None]:
    """Run a batch command; return (elements processed, the error if it stopped early)."""
    attr = _attr("=QQQQIIQQ", in_batch, out_batch, keys, values, count, fd, 0, 0)
    try:
        bpf(cmd, attr, what)
    except BpfSyscallError as exc:
        return struct.unpack_from("=I", attr, 32)[0], exc
    return struct.unpack_from("=I", attr, 32)[0], None


def map_update_batch(
    fd: int, keys: ctypes.Array[ctypes.c_char], values: ctypes.Array[ctypes.c_char], count: int
) -> int:
    """``BPF_MAP_UPDATE_BATCH`` of ``count`` packed keys/values; raises with the count done."""
    done, err = _batch(BPF_MAP_UPDATE_BATCH, fd, _addr(keys), _addr(values), count, what="map update batch")
    if err is not None:
        raise err
    return done


def map_delete_batch(fd: int, keys: ctypes.Array[ctypes.c_char], count: int) -> tuple[int, BpfSyscallError | None]:
    """``BPF_MAP_DELETE_BATCH``: stops at the first absent key (ENOENT); returns (done, error)."""
    return _batch(BPF_MAP_DELETE_BATCH, fd, _addr(keys), 0, count, what="map delete batch")


def map_lookup_batch(
    fd: int,
    in_batch: ctypes.Array[ctypes.c_char] | None,
    out_batch: ctypes.Array[ctypes.c_char],
    keys: ctypes.Array[ctypes.c_char],
    values: ctypes.Array[ctypes.c_char],
    count: int,
) -> tuple[int, bool]:
    """``BPF_MAP_LOOKUP_BATCH``: returns (elements read, more to come)."""
    done, err = _batch(
        BPF_MAP_LOOKUP_BATCH, fd, _addr(keys), _addr(values), count, _addr(in_batch), _addr(out_batch), "lookup batch"
    )
    if err is None:
        return done, True
    if err.errno == errno.ENOENT:
        return done, False
    raise err


def prog_attach(prog_fd: int, target_fd: int, attach_type: int, flags: int = 0) -> None:
    """``BPF_PROG_ATTACH`` (cgroup programs); flags 0 replaces this attach type's program."""
    bpf(BPF_PROG_ATTACH, _attr("=IIII", target_fd, prog_fd, attach_type, flags), "prog attach")


def prog_detach(prog_fd: int, target_fd: int, attach_type: int) -> None:
    """``BPF_PROG_DETACH``."""
    bpf(BPF_PROG_DETACH, _attr("=IIII", target_fd, prog_fd, attach_type, 0), "prog detach")


def possible_cpus() -> int:
    """Number of possible CPUs: per-CPU map values hold one slot each."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count
