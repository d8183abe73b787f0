"""Drive a lab as a user does, for tests, benchmarks and the demo: the `clustermesh lab` commands and
`kubectl`, as subprocesses, with bounded waits. Nothing here reaches into the lab's internals."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lab.net import nsutil
from lab.supervisor import cleanup
from lab.supervisor.spec import BPFFS, LabSpec, cgroup_unified_root, load, state_dir

PROJECT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "clustermesh_cli.main"]
T = TypeVar("T")


class LabCommandError(RuntimeError):
    """A lab or kubectl command failed; the message has its output."""


def _run(argv: Sequence[str], *, timeout: float, check: bool = True, stdin: str | None = None
         ) -> subprocess.CompletedProcess[str]:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=stdin,
                             cwd=PROJECT)
    except subprocess.TimeoutExpired as err:
        raise LabCommandError(f"{' '.join(argv)} did not finish within {timeout} s") from err
    if check and out.returncode != 0:
        raise LabCommandError(f"{' '.join(argv)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


def wait_for(check: Callable[[], T | None], *, within: float, interval: float = 0.2, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy (returned), at most ``within`` seconds."""
    deadline = time.monotonic() + within
    last_error: Exception | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except (LabCommandError, KeyError, IndexError, ValueError) as err:
            last_error = err
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {within} s" + (f" (last error: {last_error})"
                                                                           if last_error else ""))
        time.sleep(interval)


@dataclass
class LabDriver:
    """One lab, by name, with its contexts in ``kubeconfig`` (a file the driver owns)."""

    name: str
    kubeconfig: Path

    def cli(self, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``clustermesh lab ARGS`` (``--name`` is added where the command takes it)."""
        return _run([*CLI, "lab", *args], timeout=timeout, check=check)

    def clustermesh(self, *args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``clustermesh ARGS`` (any command, e.g. ``bpf dump``)."""
        return _run([*CLI, *args], timeout=timeout, check=check)

    def up(self, clusters: int, nodes: int, *extra: str, timeout: float = 240.0) -> subprocess.CompletedProcess[str]:
        return self.cli("up", "--name", self.name, "--clusters", str(clusters), "--nodes", str(nodes),
                        "--kubeconfig", str(self.kubeconfig), *extra, timeout=timeout)

    def down(self) -> subprocess.CompletedProcess[str]:
        return self.cli("down", "--name", self.name, timeout=120)

    @property
    def spec(self) -> LabSpec:
        return load(self.name)

    def context(self, cluster: str) -> str:
        return f"{self.name}-{cluster}"

    def kubectl(self, cluster: str, *args: str, timeout: float = 60.0, check: bool = True,
                stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """``kubectl --context <lab>-<cluster> ARGS``."""
        return _run(["kubectl", "--kubeconfig", str(self.kubeconfig), "--context", self.context(cluster), *args],
                    timeout=timeout, check=check, stdin=stdin)

    def get(self, cluster: str, *args: str) -> Any:
        """``kubectl get ARGS -o json``, decoded."""
        return json.loads(self.kubectl(cluster, "get", *args, "-o", "json").stdout)

    def pods(self, cluster: str, selector: str | None = None, namespace: str = "default") -> list[dict[str, Any]]:
        args = ["pods", "-n", namespace] + (["-l", selector] if selector else [])
        return list(self.get(cluster, *args)["items"])

    def exec(self, cluster: str, pod: str, *command: str, timeout: float = 30.0, check: bool = True,
             namespace: str = "default") -> subprocess.CompletedProcess[str]:
        """``clustermesh lab exec --context <lab>-<cluster> POD -- COMMAND``."""
        return self.cli("exec", "--name", self.name, "--context", self.context(cluster), "-n", namespace, pod,
                        "--", *command, timeout=timeout, check=check)

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.cli("status", "--name", self.name, "-o", "json").stdout))

    def fault(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self.cli("fault", *args, "--name", self.name, timeout=timeout)


def lab_traces(name: str) -> dict[str, list[str]]:
    """Everything of lab ``name`` that `lab down` must remove: namespaces, processes, mounts, pins,
    cgroups and the state directory (empty lists when nothing is left)."""
    def ours(point: str) -> bool:
        return f"clustermesh-lab/{name}" in point or f"clustermesh-lab-{name}" in point

    mounts = [p for p in (line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()) if ours(p)]
    return {
        "namespaces": nsutil.namespaces_with_prefix(name),
        "processes": [str(p) for p in cleanup.lab_processes(name)],
        "mounts": mounts,
        "bpffs": [str(p) for p in BPFFS.glob(f"clustermesh-lab-{name}*")],
        "cgroups": [str(p) for p in cgroup_unified_root().glob(f"clustermesh-lab-{name}*")],
        "state": [str(state_dir(name))] if state_dir(name).exists() else [],
    }


def running_ready(pod: dict[str, Any]) -> bool:
    """A pod is Running, Ready, has an IP and is not being deleted."""
    st = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])
    return bool(st.get("phase") == "Running" and ready and st.get("podIP") and
                not pod["metadata"].get("deletionTimestamp"))
