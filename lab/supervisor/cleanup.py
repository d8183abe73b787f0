"""Remove every trace of a lab, whether it is running, half built, or its supervisor was killed.

Nothing here needs the supervisor: a lab is found by its name alone (lab/README.md), so a ``lab up``
killed with SIGKILL half way is cleaned as well as a healthy lab. The order matters: processes
first (so nothing re-creates what is removed next), then mounts, namespaces, cgroups, pins,
kubeconfig contexts, and the state directory last (it holds the records the earlier steps read).

WireGuard: with ``lab up --encryption wireguard`` each agent runs a ``wireguard-go`` (in its own
session, but with the agent's environment and cgroup, so the sweep finds it as a lab process).
Deleting a node namespace does not end it (the process keeps the namespace alive), and a
SIGKILLed wireguard-go leaves its control socket ``/var/run/wireguard/<device>.sock`` behind. So
the lab's wireguard-go processes get SIGTERM first (they then remove their own socket); then the
sockets still there of the lab's devices (those its processes served, and those named with the
lab's own device pattern, ``spec.wireguard_device_pattern``) are removed unless a live wireguard-go
serves them. Other sockets (other labs', tests') are never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lab.net import nsutil
from lab.supervisor import kubeconfig
from lab.supervisor.spec import (
    BPFFS,
    ENV_MARKER,
    LabSpecError,
    cgroup_unified_root,
    labs_present,
    load,
    state_dir,
    validate_lab_name,
    wireguard_device_pattern,
)

_KILL_ROUNDS = 10
_TERM_WAIT = 10.0
_WG_TERM_WAIT = 3.0
WIREGUARD_RUN_DIR = Path("/var/run/wireguard")
WIREGUARD_RECORD = "wireguard-devices.json"


@dataclass
class CleanupReport:
    """What a sweep found and removed (for progress output and tests)."""

    processes: list[int] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    contexts: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not any((self.processes, self.mounts, self.namespaces, self.cgroups, self.paths, self.contexts))


def _own_lineage() -> set[int]:
    pids, pid = set(), os.getpid()
    for _ in range(64):
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid <= 1:
            break
    return pids


def lab_processes(name: str) -> list[int]:
    """PIDs whose environment says they belong to lab ``name`` (this process and its parents excluded)."""
    marker = f"{ENV_MARKER}={name}".encode()
    mine = _own_lineage()
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in env.split(b"\0"):
            out.append(int(entry.name))
    return sorted(out)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_all(find: Callable[[], Iterable[int]], report: CleanupReport) -> None:
    """SIGKILL (after SIGCONT, so stopped ones die too) whatever ``find`` returns, until it returns
    nothing alive; bounded rounds, since processes may fork while they are being killed."""
    for _ in range(_KILL_ROUNDS):
        pids = [p for p in find() if _alive(p)]
        if not pids:
            return
        for pid in pids:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            if pid not in report.processes:
                report.processes.append(pid)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.02)


def _stop_supervisor(name: str, report: CleanupReport) -> None:
    """Ask a live supervisor to take its lab down (SIGTERM), bounded; the sweep does the rest."""
    pid_file = state_dir(name) / "supervisor.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    if not _alive(pid) or f"{ENV_MARKER}={name}".encode() not in _environ(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + _TERM_WAIT
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    report.processes.append(pid)


def _environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


def _cgroup_pids(root: Path) -> list[int]:
    pids: list[int] = []
    if not root.is_dir():
        return pids
    for procs in root.rglob("cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            pids += [int(line) for line in procs.read_text().split()]
    return pids


def _lab_cgroup(name: str) -> Path:
    try:
        return cgroup_unified_root() / f"clustermesh-lab-{name}"
    except LabSpecError:
        return Path("/nonexistent")


def _remove_cgroups(root: Path, report: CleanupReport) -> None:
    if not root.is_dir():
        return
    dirs = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
    for d in [*dirs, root]:
        with contextlib.suppress(OSError):
            d.rmdir()
            report.cgroups.append(str(d))


def mounts_below(paths: Iterable[Path]) -> list[str]:
    """Mount points (deepest first) at or below any of ``paths``, from /proc/self/mountinfo."""
    roots = [str(p).rstrip("/") for p in paths]
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == r or point.startswith(r + "/") for r in roots):
            found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def _unmount(paths: Iterable[Path], report: CleanupReport) -> None:
    for point in mounts_below(paths):
        # lazy: a mount still held open by a dying process must not block the rest of the sweep
        rc = os.spawnvp(os.P_WAIT, "umount", ["umount", "-l", point])
        if rc == 0:
            report.mounts.append(point)


def created_paths(root: Path) -> list[Path]:
    """Host directories the node runtimes created as mount points (``created-paths`` records)."""
    out: list[Path] = []
    if not root.is_dir():
        return out
    for record in root.rglob("created-paths.json"):
        with contextlib.suppress(OSError, ValueError, TypeError):
            out += [Path(p) for p in json.loads(record.read_text())]
    return sorted(set(out), key=lambda p: len(p.parts), reverse=True)


def _remove_created_paths(name: str, paths: list[Path], report: CleanupReport) -> None:
    """Remove the (empty) mount points lab ``name`` created, except those another lab on this
    machine also records: its pods may still have something mounted there."""
    in_use = {p for other in labs_present() if other != name for p in created_paths(state_dir(other))}
    for p in paths:
        if p in in_use:
            continue
        with contextlib.suppress(OSError):
            p.rmdir()  # only if empty: never remove a user's files
            report.paths.append(str(p))


def _rm_pins(directory: Path, report: CleanupReport) -> None:
    if not directory.exists():
        return
    for child in sorted(directory.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            child.rmdir() if child.is_dir() and not child.is_symlink() else child.unlink()
    with contextlib.suppress(OSError):
        directory.rmdir()
    report.paths.append(str(directory))


def _argv(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return []


def wireguard_go_device(pid: int) -> str | None:
    """The device a live ``wireguard-go [-f] NAME`` process serves (None for any other process)."""
    argv = _argv(pid)
    if len(argv) < 2 or os.path.basename(argv[0]) != b"wireguard-go" or not _alive(pid):
        return None
    device = argv[-1].decode(errors="replace")
    valid = 0 < len(device) <= 15 and "/" not in device and device not in (".", "..") and not device.startswith("-")
    return device if valid else None


def _wireguard_go_pids(pids: Iterable[int]) -> dict[int, str]:
    return {pid: dev for pid in set(pids) if (dev := wireguard_go_device(pid)) is not None}


def _recorded_devices(root: Path) -> set[str]:
    with contextlib.suppress(OSError, ValueError, TypeError):
        return {str(d) for d in json.loads((root / WIREGUARD_RECORD).read_text())}
    return set()


def lab_wireguard_devices(root: Path, pids: Iterable[int]) -> set[str]:
    """The WireGuard devices of a lab: those its live wireguard-go processes (among ``pids``) serve,
    plus those an earlier, interrupted sweep recorded in ``root``. The union is recorded there (if
    the state directory exists), so that a sweep killed half way still knows them next time."""
    devices = _recorded_devices(root) | set(_wireguard_go_pids(pids).values())
    if devices and root.is_dir():
        with contextlib.suppress(OSError):
            (root / WIREGUARD_RECORD).write_text(json.dumps(sorted(devices)))
    return devices


def stop_wireguard_go(pids: Iterable[int], report: CleanupReport, *, within: float = _WG_TERM_WAIT) -> None:
    """SIGTERM the wireguard-go processes among ``pids`` and wait (bounded) for them to end: they
    delete their device and remove their control socket themselves (SIGKILL would leave it)."""
    found = list(_wireguard_go_pids(pids))
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
        report.processes.append(pid)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and any(_alive(p) for p in found):
        time.sleep(0.02)


def pattern_wireguard_devices(name: str, run_dir: Path = WIREGUARD_RUN_DIR) -> set[str]:
    """Devices of ``run_dir``'s sockets whose names are lab ``name``'s (its device pattern)."""
    pattern = wireguard_device_pattern(name)
    try:
        entries = list(run_dir.iterdir())
    except OSError:
        return set()
    return {e.name[: -len(".sock")] for e in entries
            if e.name.endswith(".sock") and pattern.fullmatch(e.name[: -len(".sock")])}


def remove_wireguard_sockets(devices: Iterable[str], report: CleanupReport,
                             run_dir: Path = WIREGUARD_RUN_DIR) -> None:
    """Remove ``<run_dir>/<device>.sock`` of each of ``devices`` that no live wireguard-go serves
    (sockets of other devices, e.g. other labs' or tests', are never looked at)."""
    live = set(_wireguard_go_pids(int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()).values())
    for device in sorted(set(devices) - live):
        sock = run_dir / f"{device}.sock"
        if sock.is_socket():
            with contextlib.suppress(OSError):
                sock.unlink()
                report.paths.append(str(sock))


def sweep(name: str) -> CleanupReport:
    """Take lab ``name`` down completely; safe to call on a lab that does not exist."""
    validate_lab_name(name)
    report = CleanupReport()
    root = state_dir(name)
    try:
        spec = load(name)
    except LabSpecError:
        spec = None
    cgroup_root = _lab_cgroup(name)
    wireguard = lab_wireguard_devices(root, [*lab_processes(name), *_cgroup_pids(cgroup_root)])
    _stop_supervisor(name, report)
    if wireguard:
        stop_wireguard_go([*lab_processes(name), *_cgroup_pids(cgroup_root)], report)
    kill_all(lambda: [*lab_processes(name), *_cgroup_pids(cgroup_root)], report)
    remove_wireguard_sockets(wireguard | pattern_wireguard_devices(name), report)
    made = created_paths(root)
    bpf_dir = BPFFS / f"clustermesh-lab-{name}"
    _unmount([root, bpf_dir, *made], report)
    for ns in nsutil.namespaces_with_prefix(name):
        report.namespaces.append(ns)
    nsutil.cleanup_stale(name)
    _remove_cgroups(cgroup_root, report)
    _rm_pins(bpf_dir, report)
    _remove_created_paths(name, made, report)
    if spec is not None and spec.kubeconfig_merged:
        contexts = [c.context for c in spec.clusters]
        with contextlib.suppress(OSError, ValueError):
            if kubeconfig.remove_from(Path(spec.kubeconfig_merged), contexts):
                report.contexts += contexts
    if root.exists():
        shutil.rmtree(root, ignore_errors=True)
        report.paths.append(str(root))
    return report
