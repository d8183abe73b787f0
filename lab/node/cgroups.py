"""Pod cgroups on the unified hierarchy: ``<cgroup_root>/<pod uid>/`` holds every process of a pod.

No controllers are enabled (this machine's v2 mount has none to offer); the cgroup is how the node
runtime finds, signals and kills a pod's processes, and where the mesh's socket load balancing
and the lab's faults attach.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


class PodCgroup:
    """The cgroup of one pod."""

    def __init__(self, root: Path, uid: str) -> None:
        self.path = root / uid

    @property
    def procs_file(self) -> Path:
        return self.path / "cgroup.procs"

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def exists(self) -> bool:
        return self.path.is_dir()

    def pids(self) -> list[int]:
        """Processes in the cgroup now (empty if it does not exist)."""
        try:
            return [int(p) for p in self.procs_file.read_text().split()]
        except (OSError, ValueError):
            return []

    def signal(self, sig: int) -> int:
        """Send ``sig`` to every process in it; how many were signalled."""
        sent = 0
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
                sent += 1
        return sent

    def kill(self) -> None:
        """SIGKILL everything in it (``cgroup.kill``, which also catches processes forking meanwhile)."""
        try:
            (self.path / "cgroup.kill").write_text("1")
        except OSError:
            self.signal(signal.SIGKILL)

    def wait_empty(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the cgroup to have no processes (blocking)."""
        deadline = time.monotonic() + timeout
        while self.pids():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def remove(self, *, kill_within: float = 5.0) -> bool:
        """Kill what is left and remove the cgroup; True if it is gone."""
        if not self.exists():
            return True
        if self.pids():
            self.kill()
            self.wait_empty(kill_within)
        for _ in range(50):  # rmdir fails with EBUSY for a moment after the last process exits
            try:
                self.path.rmdir()
                return True
            except FileNotFoundError:
                return True
            except OSError:
                time.sleep(0.02)
        return False


def pod_cgroup_uids(root: Path) -> list[str]:
    """The pod uids that have a cgroup under ``root``."""
    try:
        return sorted(p.name for p in root.iterdir() if p.is_dir())
    except OSError:
        return []
