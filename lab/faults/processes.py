"""Process faults: kill (SIGKILL), pause (SIGSTOP) and resume (SIGCONT) a set of processes or
every process of a cgroup v2 directory (a pod), each verified from ``/proc/<pid>/stat``.

"Paused" means state ``T``/``t`` (stopped), "resumed" any other live state, "killed" gone or a
zombie (``Z``/``X``, waiting for its parent to reap it). Every wait is bounded by ``timeout``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from lab.faults.model import FaultError, InvalidFault

DEFAULT_TIMEOUT = 5.0
_POLL = 0.01
_STOPPED = frozenset("Tt")
_DEAD = frozenset("ZX")


def proc_state(pid: int) -> str | None:
    """The state letter of ``pid`` (``R``, ``S``, ``T``, ``Z``...), or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # "pid (comm) S ...": comm may hold spaces and parentheses; the state follows the last ')'.
    rest = stat[stat.rfind(")") + 1 :].split()
    return rest[0] if rest else None


def is_stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped (SIGSTOP)."""
    return proc_state(pid) in _STOPPED


def is_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (gone, or a zombie)."""
    state = proc_state(pid)
    return state is None or state in _DEAD


def _check_pids(pids: Iterable[int]) -> list[int]:
    result: list[int] = []
    for pid in pids:
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 1:
            raise InvalidFault(f"refusing to signal pid {pid!r}: only ordinary process ids (> 1)")
        if pid == os.getpid():
            raise InvalidFault(f"refusing to signal pid {pid}: that is this process")
        if pid not in result:
            result.append(pid)
    return result


def signal_pids(pids: Iterable[int], sig: signal.Signals | int) -> list[int]:
    """Send ``sig`` to each of ``pids``; return those that received it (the others were gone).
    No verification: see :func:`kill_pids`, :func:`pause_pids`, :func:`resume_pids`."""
    sent: list[int] = []
    for pid in _check_pids(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            sent.append(pid)
    return sent


def _wait(pids: list[int], done: Callable[[int], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = [p for p in pids if not done(p)]
    while pending and time.monotonic() < deadline:
        time.sleep(_POLL)
        pending = [p for p in pending if not done(p)]
    if pending:
        states = ", ".join(f"{p} ({proc_state(p) or 'gone'})" for p in pending)
        raise FaultError(f"processes not {what} after {timeout:g}s: {states}")


def _stopped_or_gone(pid: int) -> bool:
    return is_stopped(pid) or is_gone(pid)


def _running_or_gone(pid: int) -> bool:
    return not is_stopped(pid)


def kill_pids(pids: Iterable[int], *, timeout: float = DEFAULT_TIMEOUT) -> list[int]:
    """SIGKILL ``pids`` and wait until each is gone (or a zombie); return the pids signalled."""
    sent = signal_pids(pids, signal.SIGKILL)
    _wait(sent, is_gone, "killed", timeout)
    return sent


def pause_pids(pids: Iterable[int], *, timeout: float = DEFAULT_TIMEOUT) -> list[int]:
    """SIGSTOP ``pids`` and wait until each is stopped (state ``T``); return the pids signalled.
    A process that exits meanwhile is not an error."""
    sent = signal_pids(pids, signal.SIGSTOP)
    _wait(sent, _stopped_or_gone, "stopped", timeout)
    return sent


def resume_pids(pids: Iterable[int], *, timeout: float = DEFAULT_TIMEOUT) -> list[int]:
    """SIGCONT ``pids`` and wait until none is stopped any more; return the pids signalled."""
    sent = signal_pids(pids, signal.SIGCONT)
    _wait(sent, _running_or_gone, "resumed", timeout)
    return sent


# --- cgroups --------------------------------------------------------------------------------------


def _require_cgroup(cgroup_dir: Path) -> Path:
    path = Path(cgroup_dir)
    if not (path / "cgroup.procs").is_file():
        raise FaultError(f"{path} is not a cgroup v2 directory (no cgroup.procs)")
    return path


def cgroup_pids(cgroup_dir: Path) -> list[int]:
    """The processes of the cgroup v2 directory ``cgroup_dir`` and of its descendants, sorted."""
    root = _require_cgroup(cgroup_dir)
    pids: set[int] = set()
    for dirpath, _dirnames, _files in os.walk(root):
        with contextlib.suppress(FileNotFoundError):  # a child cgroup removed meanwhile
            pids |= {int(line) for line in (Path(dirpath) / "cgroup.procs").read_text().split()}
    return sorted(pids)


def _signal_until(
    cgroup_dir: Path, sig: signal.Signals, done: Callable[[int], bool], what: str, timeout: float
) -> list[int]:
    """Signal every process of the cgroup that is not ``done`` yet, again and again (processes
    forked meanwhile included), until all are ``done``; return every pid signalled."""
    deadline = time.monotonic() + timeout
    signalled: list[int] = []
    while True:
        pending = [p for p in cgroup_pids(cgroup_dir) if not done(p)]
        if not pending:
            return sorted(signalled)
        if time.monotonic() >= deadline:
            states = ", ".join(f"{p} ({proc_state(p) or 'gone'})" for p in pending)
            raise FaultError(f"processes of {cgroup_dir} not {what} after {timeout:g}s: {states}")
        signalled += signal_pids([p for p in pending if p not in signalled], sig)
        time.sleep(_POLL)


def pause_cgroup(cgroup_dir: Path, *, timeout: float = DEFAULT_TIMEOUT) -> list[int]:
    """SIGSTOP every process of ``cgroup_dir`` (a pod) until all are stopped; return their pids."""
    return _signal_until(cgroup_dir, signal.SIGSTOP, _stopped_or_gone, "stopped", timeout)


def resume_cgroup(cgroup_dir: Path, *, timeout: float = DEFAULT_TIMEOUT) -> list[int]:
    """SIGCONT every process of ``cgroup_dir`` until none is stopped; return the pids signalled."""
    return _signal_until(cgroup_dir, signal.SIGCONT, _running_or_gone, "resumed", timeout)


def kill_cgroup(cgroup_dir: Path, *, timeout: float = DEFAULT_TIMEOUT) -> list[int]:
    """SIGKILL every process of ``cgroup_dir`` and its descendants (through ``cgroup.kill`` where
    the kernel has it: atomic against forks) until the cgroup is empty; return the pids it had."""
    root = _require_cgroup(cgroup_dir)
    before = cgroup_pids(root)
    kill_file = root / "cgroup.kill"
    if kill_file.exists():
        kill_file.write_text("1")
    deadline = time.monotonic() + timeout
    while True:
        left = cgroup_pids(root)  # zombies leave cgroup.procs as they exit
        if not left:
            return sorted(before)
        if time.monotonic() >= deadline:
            states = ", ".join(f"{p} ({proc_state(p) or 'gone'})" for p in left)
            raise FaultError(f"processes of {root} still there {timeout:g}s after SIGKILL: {states}")
        before += [p for p in left if p not in before]
        signal_pids(left, signal.SIGKILL)
        time.sleep(_POLL)
