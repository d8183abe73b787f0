"""Run the capture inside every node at once: exec :data:`CAPTURE_COMMAND` in the node's agent pod
(its agent container has the host's network, so it sees the node's underlay) and parse its JSON.

The exec is :func:`clustermesh_cli.podexec.exec_json` (``pods/exec`` through the official client,
as ``clustermesh status --context`` asks the agents; no kubectl binary needed).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from kubernetes import client

from clustermesh_cli.encryption.discover import Target
from clustermesh_cli.podexec import exec_json
from encryption.audit.classify import AuditPlan
from encryption.audit.report import NodeCapture

__all__ = ["CAPTURE_COMMAND", "STARTUP_ALLOWANCE", "CaptureExec", "capture_command", "exec_capture", "run_captures"]

#: Resolved on the agent container's PATH: the lab puts its venv's bin first, the image
#: (Containerfile) has python3 with the project installed.
CAPTURE_COMMAND: Final = ("python3", "-m", "encryption.audit.capture")
#: Seconds an exec may take beyond the capture's duration (interpreter start, netlink, JSON).
STARTUP_ALLOWANCE: Final = 20.0
MAX_PARALLEL: Final = 128  # captures run at once: all of them, so their windows overlap

#: Runs one capture: (target, command, timeout) -> its result. Tests give their own.
CaptureExec = Callable[[Target, list[str], float], NodeCapture]


def capture_command(target: Target, plan: AuditPlan, duration: float) -> list[str]:
    """The command line that captures on ``target``'s underlay (the interface holding its IP)."""
    assert target.node_ip is not None
    return [*CAPTURE_COMMAND, "--node-ip", target.node_ip, "--duration", f"{duration:g}",
            "--plan-json", json.dumps(plan.to_json(), separators=(",", ":")), "-o", "json"]


def exec_capture(configuration: client.Configuration, target: Target, command: list[str], timeout: float, *,
                 container: str) -> NodeCapture:
    """Exec ``command`` in ``target``'s pod (``container``) for at most ``timeout`` seconds; its
    JSON document, or the error naming the cause."""
    pod: Mapping[str, Any] = target.pod or {}
    md = pod.get("metadata") or {}
    where = f"pod {md.get('namespace')}/{md.get('name')}"
    result = exec_json(configuration, str(md.get("namespace")), str(md.get("name")), container, command, timeout,
                       what="capture")
    if result.doc is None:
        return NodeCapture(target.node, error=f"{where}: {result.error}")
    return NodeCapture(target.node, result=result.doc)


def run_captures(targets: Sequence[Target], plan: AuditPlan, duration: float, run: CaptureExec) -> list[NodeCapture]:
    """Every target's capture, all at once; a target that cannot be captured keeps its problem."""
    out: dict[int, NodeCapture] = {}
    todo = []
    for i, t in enumerate(targets):
        if t.pod is None or t.node_ip is None:
            out[i] = NodeCapture(t.node, error=t.problem or "nowhere to capture")
        else:
            todo.append(i)
    if todo:
        timeout = duration + STARTUP_ALLOWANCE
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(todo)), thread_name_prefix="capture") as pool:
            results = pool.map(lambda i: run(targets[i], capture_command(targets[i], plan, duration), timeout), todo)
            for i, result in zip(todo, results, strict=True):
                out[i] = result
    return [out[i] for i in range(len(targets))]
