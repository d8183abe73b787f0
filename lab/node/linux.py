"""The few Linux calls Python 3.11 lacks (``setns``, ``unshare``, ``mount``, ``sethostname``, through
ctypes) and what ``/proc`` says about a process (alive, start time)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19

_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def setns(path: str, nstype: int) -> None:
    """Move the calling thread into the namespace file ``path`` (e.g. ``/run/netns/<name>``)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_c().setns(fd, nstype), f"setns {path}")
    finally:
        os.close(fd)


def unshare(flags: int) -> None:
    _check(_c().unshare(flags), f"unshare {flags:#x}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    c = _c()
    c.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    rc = c.mount(source.encode() if source is not None else None, target.encode(),
                 fstype.encode() if fstype is not None else None, flags,
                 data.encode() if data is not None else None)
    _check(rc, f"mount {source or ''} on {target}")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_c().sethostname(raw, len(raw)), f"sethostname {name}")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name is in parentheses and may contain anything, so split after the last ')'
    return raw.rsplit(")", 1)[1].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of ``/proc/<pid>/stat``)."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    return int(fields[19])


def alive(pid: int, started: int | None = None) -> bool:
    """``pid`` runs (not a zombie) and, if ``started`` is given, is the process that started then
    (a recycled pid has another start time)."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]
