"""Stop every pod of a node for good (``lab down``, test teardown), without the node runtime or the API.

Works from the pod records alone (``<state_dir>/pods/*/pod.json``, :mod:`lab.node.worker`), so it
also cleans after a runtime killed with SIGKILL. Stop the node runtime first: a live runtime would
start the pods again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

from lab.net import nsutil
from lab.node import layout, linux, mountpoints
from lab.node.cgroups import PodCgroup, pod_cgroup_uids


@dataclass
class StopReport:
    """What :func:`stop_all_pods` stopped and removed."""

    pods: list[str] = field(default_factory=list)
    processes: int = 0
    namespaces: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


def _kill_shim(pid: object, pod_dir: Path) -> bool:
    """SIGKILL a container launcher of this pod (recognised by its command line)."""
    if not isinstance(pid, int) or not linux.alive(pid):
        return False
    if not any(str(pod_dir) in arg for arg in linux.cmdline(pid)):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True


def stop_all_pods(state_dir: Path, *, cgroup_root: Path | None = None, remove_dirs: bool = False) -> StopReport:
    """SIGKILL every pod's processes (cgroup and launchers), remove the pods' network namespaces,
    cgroups, created mount points and volumes; with ``remove_dirs`` also the pod directories.
    ``cgroup_root`` (the node's cgroup directory), if given, has every pod cgroup below it removed too,
    recorded or not."""
    report = StopReport()
    root = layout.pods_root(state_dir)
    pod_dirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for d in pod_dirs:
        record = layout.read_json(d / layout.POD_RECORD)
        record = record if isinstance(record, dict) else {}
        report.pods.append(d.name)
        cgroup_path = record.get("cgroup")
        if isinstance(cgroup_path, str):
            cg = PodCgroup(Path(cgroup_path).parent, Path(cgroup_path).name)
            report.processes += len(cg.pids())
            if cg.remove():
                report.cgroups.append(cgroup_path)
        for entry in (record.get("containers") or {}).values():
            if isinstance(entry, dict) and _kill_shim(entry.get("shim_pid"), d):
                report.processes += 1
        netns = record.get("netns")
        if isinstance(netns, str) and netns and os.path.exists(os.path.join(nsutil.NETNS_RUN_DIR, netns)):
            nsutil.remove_namespace(netns)
            report.namespaces.append(netns)
        with contextlib.suppress(OSError):
            report.paths += [str(p) for p in mountpoints.release(d / layout.CREATED_PATHS, layout.labs_root(state_dir))]
        shutil.rmtree(d if remove_dirs else d / "volumes", ignore_errors=True)
    if cgroup_root is not None:
        for uid in pod_cgroup_uids(cgroup_root):
            cg = PodCgroup(cgroup_root, uid)
            report.processes += len(cg.pids())
            if cg.remove():
                report.cgroups.append(str(cg.path))
    return report
