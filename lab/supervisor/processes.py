"""The lab's own processes (API emulators, controllers, node runtimes): start, signal, observe.

Each :class:`ManagedProcess` knows its command line, so it can be killed and started again as a
fault and its counterpart. Every one carries the lab's environment marker (lab/README.md) and dies
with the supervisor (``setpriv --pdeathsig``); pods do not: they belong to the node runtimes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lab.net.nsutil import die_with_parent_prefix

ProcessState = Literal["running", "paused", "exited", "not started"]


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state of ``pid`` (``R``, ``S``, ``T``, ``Z``...), None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


@dataclass
class ManagedProcess:
    """One long-running lab process and its log file."""

    name: str
    role: str
    cluster: str
    argv: Sequence[str]
    log: Path
    node: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        """Start it (again); the log is appended to, with a marker line per start."""
        if self.running:
            return
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            out.write(f"---- starting {self.name} at {time.strftime('%H:%M:%S')} ----\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [*die_with_parent_prefix(), *self.argv], stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env={**os.environ, **self.env},
            )  # fmt: skip
        self.starts += 1

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def state(self) -> ProcessState:
        if self.proc is None:
            return "not started"
        if self.proc.poll() is not None:
            return "exited"
        return "paused" if process_state(self.proc.pid) == "T" else "running"

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` if it runs (SIGKILL also reaps it)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (and SIGCONT, in case it is paused), then SIGKILL after ``timeout`` seconds."""
        if not self.running or self.proc is None:
            return
        self.signal(signal.SIGTERM)
        self.signal(signal.SIGCONT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of its log."""
        try:
            data = self.log.read_bytes()[-32 * 1024:]
        except OSError:
            return "(no log)"
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
