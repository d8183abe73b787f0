"""A real ``clustermesh-agent`` subprocess for tests, and how to reach it."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from clustermesh_cli.status import agent_get
from lab.wait import poll_until

PROJECT = Path(__file__).resolve().parents[2]


@dataclass
class AgentProcess:
    """A running agent subprocess and where to reach it."""

    proc: asyncio.subprocess.Process
    socket: Path
    config_dir: Path
    log: Path

    def status(self) -> Any:
        return agent_get(self.socket, "/v1/status")

    def desired(self) -> Any:
        return agent_get(self.socket, "/v1/desired")

    def clusters(self) -> dict[str, Any]:
        return {c["name"]: c for c in self.status()["cluster-mesh"]["clusters"]}

    def log_tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""


def _open_log(path: Path) -> BinaryIO:
    return open(path, "wb")


@asynccontextmanager
async def agent_process(base: Path, *, args: Sequence[str] = ()) -> AsyncIterator[AgentProcess]:
    """Start ``python -m agent.cli`` as cluster c1 (ID 1) with ``base/clustermesh`` as config dir;
    wait (bounded) for its socket; SIGTERM it (then SIGKILL) at the end."""
    config_dir = base / "clustermesh"
    config_dir.mkdir(parents=True, exist_ok=True)
    sock = base / "state" / "agent.sock"
    log = base / "agent.log"
    with _open_log(log) as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.cli",
            "--cluster-name", "c1", "--cluster-id", "1", "--node-name", "c1-node-0",
            "--clustermesh-config", str(config_dir), "--state-dir", str(base / "state"),
            "--datapath", "none", "--clustermesh-sync-timeout", "10", "--log-level", "debug", *args,
            cwd=PROJECT, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
        )
    agent = AgentProcess(proc, sock, config_dir, log)
    try:
        if not await poll_until(lambda: sock.exists() or proc.returncode is not None, within=20):
            raise AssertionError(f"agent socket never appeared:\n{agent.log_tail()}")
        assert proc.returncode is None, f"agent exited with {proc.returncode}:\n{agent.log_tail()}"
        yield agent
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await asyncio.wait_for(proc.wait(), 5)


