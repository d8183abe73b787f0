"""One run of one container: start it through the launcher, follow it through its pid and exit files,
signal it, and pick it up again after a node runtime restart (adoption).

A run is identified by its pod directory, container name and restart number ``n``; its files are
``<container>/<n>.{spec,pid,exit}.json`` and ``<n>.log`` (:mod:`lab.node.layout`). A running
process is only believed when its pid's start time matches the one the launcher recorded.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

import lab
from lab.node import linux
from lab.node.launch import START_ERROR_CODE, LaunchSpec, now_rfc3339
from lab.node.layout import PodDir, read_json

#: How long a started launcher may take to report the container's pid before the run counts as failed.
START_TIMEOUT = 30.0
#: How long to wait for the launcher's exit report after the container's process went away.
EXIT_REPORT_TIMEOUT = 3.0
_REPO_ROOT = str(Path(lab.__file__).resolve().parent.parent)


@dataclass(frozen=True)
class ExitInfo:
    """How a run ended (Kubernetes ``state.terminated``)."""

    exit_code: int
    reason: str
    message: str
    started_at: str | None
    finished_at: str
    signal: int | None = None

    @classmethod
    def from_doc(cls, doc: dict[str, object]) -> ExitInfo:
        code = doc.get("exit_code")
        sig = doc.get("signal")
        return cls(exit_code=int(code) if isinstance(code, int) else 1, reason=str(doc.get("reason") or "Error"),
                   message=str(doc.get("message") or ""),
                   started_at=str(doc["started_at"]) if doc.get("started_at") else None,
                   finished_at=str(doc.get("finished_at") or now_rfc3339()),
                   signal=int(sig) if isinstance(sig, int) else None)


def shim_alive(shim_pid: int | None, spec_file: Path) -> bool:
    """The launcher ``shim_pid`` still runs (checked by its command line, since pids are recycled)."""
    if not shim_pid or not linux.alive(shim_pid):
        return False
    return str(spec_file) in linux.cmdline(shim_pid)


class ContainerRun:
    """Run ``n`` of container ``name`` of a pod. Create with :meth:`start` or :meth:`adopt`; call
    :meth:`poll` to learn whether it runs, and :attr:`exit` once it ended."""

    def __init__(self, pod_dir: PodDir, name: str, n: int, *, shim: subprocess.Popen[bytes] | None = None,
                 shim_pid: int | None = None, launched_at: float | None = None) -> None:
        self.pod_dir = pod_dir
        self.name = name
        self.n = n
        self._shim = shim
        self.shim_pid = shim.pid if shim is not None else shim_pid
        self._launched_at = launched_at if launched_at is not None else time.monotonic()
        self.pid: int | None = None
        self.start_time: int | None = None
        self.started_at: str | None = None
        self.exit: ExitInfo | None = None
        self._gone_since: float | None = None

    @property
    def spec_file(self) -> Path:
        return self.pod_dir.spec_file(self.name, self.n)

    @property
    def log(self) -> Path:
        return self.pod_dir.log(self.name, self.n)

    @classmethod
    def start(cls, pod_dir: PodDir, name: str, n: int, spec: LaunchSpec, *, env_marker: dict[str, str]
              ) -> ContainerRun:
        """Write the spec and start the launcher, in a session of its own, logging to ``<n>.log``."""
        spec_file = pod_dir.spec_file(name, n)
        spec_file.parent.mkdir(parents=True, exist_ok=True)
        for stale in (pod_dir.pid_file(name, n), pod_dir.exit_file(name, n)):
            stale.unlink(missing_ok=True)
        tmp = spec_file.with_name(f".{spec_file.name}.tmp")
        tmp.write_bytes(msgspec.json.encode(spec))
        tmp.replace(spec_file)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": _REPO_ROOT,
               "PYTHONDONTWRITEBYTECODE": "1", **env_marker}
        with open(pod_dir.log(name, n), "ab") as log:
            shim = subprocess.Popen(
                [sys.executable, "-m", "lab.node.launch", str(spec_file)], stdin=subprocess.DEVNULL, stdout=log,
                stderr=log, cwd="/", env=env, start_new_session=True, close_fds=True)  # fmt: skip
        return cls(pod_dir, name, n, shim=shim)

    @classmethod
    def adopt(cls, pod_dir: PodDir, name: str, n: int, *, shim_pid: int | None) -> ContainerRun:
        """The run ``n`` left behind by an earlier node runtime."""
        run = cls(pod_dir, name, n, shim_pid=shim_pid, launched_at=time.monotonic() - START_TIMEOUT / 2)
        run.poll()
        return run

    def _reap(self) -> bool:
        """Reap our own launcher; True while it runs (or, for an adopted one, while it seems to)."""
        if self._shim is not None:
            return self._shim.poll() is None
        return shim_alive(self.shim_pid, self.spec_file)

    def poll(self) -> None:
        """Update :attr:`pid` / :attr:`exit` from the run's files and the process table."""
        shim_running = self._reap()
        if self.exit is not None:
            return
        exit_doc = read_json(self.pod_dir.exit_file(self.name, self.n))
        if self.pid is None:
            pid_doc = read_json(self.pod_dir.pid_file(self.name, self.n))
            if isinstance(pid_doc, dict) and isinstance(pid_doc.get("pid"), int):
                self.pid = int(pid_doc["pid"])
                self.start_time = pid_doc.get("start_time") if isinstance(pid_doc.get("start_time"), int) else None
                self.started_at = str(pid_doc.get("started_at") or now_rfc3339())
                self.shim_pid = self.shim_pid or pid_doc.get("shim_pid")
        if isinstance(exit_doc, dict):
            self.exit = ExitInfo.from_doc(exit_doc)
            return
        if self.pid is not None:
            if linux.alive(self.pid, self.start_time):
                self._gone_since = None
                return
            # the process is gone; its launcher writes the exit file in a moment unless it died too
            now = time.monotonic()
            self._gone_since = self._gone_since or now
            if shim_running and now - self._gone_since < EXIT_REPORT_TIMEOUT:
                return
            self.exit = ExitInfo(137, "ContainerStatusUnknown",
                                 "the container's process is gone and its exit status was not recorded",
                                 self.started_at, now_rfc3339())
            return
        if not shim_running or time.monotonic() - self._launched_at > START_TIMEOUT:
            if shim_running and self._shim is not None:
                with contextlib.suppress(ProcessLookupError):
                    self._shim.kill()
            tail = _tail(self.log)
            self.exit = ExitInfo(START_ERROR_CODE, "StartError",
                                 f"the launcher did not start the container{': ' + tail if tail else ''}",
                                 None, now_rfc3339())

    @property
    def running(self) -> bool:
        return self.pid is not None and self.exit is None

    @property
    def starting(self) -> bool:
        return self.pid is None and self.exit is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the container's process group (its main process and what it started)."""
        if self.pid is None or not linux.alive(self.pid, self.start_time):
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill_leftovers(self, sig: int) -> None:
        """Signal what is left of the run's process group after its main process ended."""
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)


def _tail(path: Path, limit: int = 300) -> str:
    try:
        data = path.read_bytes()[-limit:]
    except OSError:
        return ""
    return data.decode(errors="replace").strip().replace("\n", " | ")
