"""Client side of the supervisor's control socket, and starting a supervisor for ``lab up``."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from lab.supervisor.spec import ENV_MARKER, LabSpec, state_dir


class SupervisorUnavailable(RuntimeError):
    """The lab's supervisor does not answer (not running, or not ready to)."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def request(name: str, method: str, path: str, *, timeout: float = 30.0) -> Any:
    """Send one request to lab ``name``'s supervisor and decode the JSON answer."""
    sock_path = state_dir(name) / "supervisor.sock"
    conn = _UnixConnection(sock_path, timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        body = resp.read()
    except OSError as err:
        raise SupervisorUnavailable(f"the supervisor of lab {name!r} does not answer on {sock_path} ({err}); "
                                    f"is the lab up? (`clustermesh lab status --name {name}`)") from None
    finally:
        conn.close()
    if resp.status >= 400:
        raise SupervisorUnavailable(body.decode(errors="replace").strip() or f"HTTP {resp.status}")
    return json.loads(body)


def supervisor_pid(name: str) -> int | None:
    """PID of lab ``name``'s supervisor if it is alive (checked by its environment marker)."""
    try:
        pid = int((state_dir(name) / "supervisor.pid").read_text().strip())
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if f"{ENV_MARKER}={name}".encode() in env else None


def spawn_supervisor(spec: LabSpec) -> subprocess.Popen[bytes]:
    """Start ``python -m lab.supervisor`` for ``spec`` detached from the caller (its own session), so
    that the lab outlives ``lab up``; its output goes to ``supervisor.log``."""
    root = spec.state_dir
    root.mkdir(parents=True, exist_ok=True)
    log = open(root / "supervisor.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "lab.supervisor", "--name", spec.name], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, ENV_MARKER: spec.name},
            cwd=str(Path(__file__).resolve().parents[2]),
        )  # fmt: skip
    finally:
        log.close()
