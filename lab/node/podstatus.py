"""A pod's ``status`` from what the node knows about its containers (pure).

The phase follows the kubelet's ``getPhase``; conditions are PodScheduled, Initialized,
ContainersReady and Ready, each keeping its ``lastTransitionTime`` while its status stays the same.
:func:`status_patch` returns the merge patch to send, or None when the API already shows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
TERMINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Waiting:
    reason: str
    message: str = ""


@dataclass(frozen=True)
class Running:
    started_at: str


@dataclass(frozen=True)
class Terminated:
    exit_code: int
    reason: str
    started_at: str | None
    finished_at: str
    message: str = ""
    signal: int | None = None
    container_id: str = ""


State = Waiting | Running | Terminated


@dataclass(frozen=True)
class ContainerView:
    """One container as the node sees it."""

    name: str
    image: str
    state: State
    restart_count: int = 0
    last: Terminated | None = None
    ready: bool = False
    started: bool = False
    container_id: str = ""


def _state_doc(state: State) -> Obj:
    if isinstance(state, Waiting):
        w: Obj = {"reason": state.reason}
        if state.message:
            w["message"] = state.message
        return {"waiting": w}
    if isinstance(state, Running):
        return {"running": {"startedAt": state.started_at}}
    t: Obj = {"exitCode": state.exit_code, "reason": state.reason, "finishedAt": state.finished_at}
    if state.started_at:
        t["startedAt"] = state.started_at
    if state.message:
        t["message"] = state.message
    if state.signal is not None:
        t["signal"] = state.signal
    if state.container_id:
        t["containerID"] = state.container_id
    return {"terminated": t}


def container_status(view: ContainerView) -> Obj:
    """One entry of ``containerStatuses`` / ``initContainerStatuses``."""
    doc: Obj = {
        "name": view.name, "image": view.image, "imageID": f"lab://{view.image}", "ready": view.ready,
        "started": view.started, "restartCount": view.restart_count, "state": _state_doc(view.state),
        "lastState": _state_doc(view.last) if view.last is not None else {},
    }  # fmt: skip
    if view.container_id:
        doc["containerID"] = view.container_id
    return doc


def init_done(inits: Sequence[ContainerView]) -> bool:
    return all(isinstance(v.state, Terminated) and v.state.exit_code == 0 for v in inits)


def phase(restart_policy: str, inits: Sequence[ContainerView], regular: Sequence[ContainerView], *,
          init_failed: bool = False) -> str:
    """The pod phase (kubelet ``getPhase``); ``init_failed``: an init container failed for good."""
    if init_failed:
        return "Failed"
    if not init_done(inits):
        return "Pending"
    running = waiting = stopped = succeeded = 0
    for v in regular:
        if isinstance(v.state, Running):
            running += 1
        elif isinstance(v.state, Terminated):
            stopped += 1
            succeeded += v.state.exit_code == 0
        elif v.last is not None:
            stopped += 1  # waiting to restart after a run
        else:
            waiting += 1
    if waiting > 0 or not regular:
        return "Pending"
    if running > 0:
        return "Running"
    if restart_policy == "Always":
        return "Running"
    if stopped == succeeded:
        return "Succeeded"
    if restart_policy == "Never":
        return "Failed"
    return "Running"  # OnFailure: the failed ones restart


def _condition(ctype: str, ok: bool, now: str, previous: Sequence[Obj], reason: str = "", message: str = "") -> Obj:
    status = "True" if ok else "False"
    old = next((c for c in previous if c.get("type") == ctype), None)
    since = old.get("lastTransitionTime") if old is not None and old.get("status") == status else None
    doc: Obj = {"type": ctype, "status": status, "lastTransitionTime": since or now}
    if not ok and reason:
        doc["reason"] = reason
        if message:
            doc["message"] = message
    return doc


def conditions(pod_phase: str, inits: Sequence[ContainerView], regular: Sequence[ContainerView], now: str,
               previous: Sequence[Obj]) -> list[Obj]:
    """PodScheduled, Initialized, ContainersReady, Ready (other condition types are kept as they are)."""
    terminal = pod_phase in TERMINAL
    unready = [v.name for v in regular if not v.ready]
    pending_inits = [v.name for v in inits if not (isinstance(v.state, Terminated) and v.state.exit_code == 0)]
    initialized = not pending_inits
    ready = not unready and not terminal
    if terminal:
        reason, message = "PodCompleted", ""
    else:
        reason, message = "ContainersNotReady", f"containers with unready status: [{' '.join(unready)}]"
    ours = [
        _condition("Initialized", initialized, now, previous, "ContainersNotInitialized",
                   f"containers with incomplete status: [{' '.join(pending_inits)}]"),
        _condition("Ready", ready, now, previous, reason, message),
        _condition("ContainersReady", ready, now, previous, reason, message),
    ]
    scheduled = next((c for c in previous if c.get("type") == "PodScheduled"), None)
    if scheduled is None or scheduled.get("status") != "True":
        scheduled = _condition("PodScheduled", True, now, previous)
    kept = [c for c in previous if c.get("type") not in ("PodScheduled", "Initialized", "Ready", "ContainersReady")]
    return [*kept, scheduled, *ours]


def pod_status(*, pod_phase: str, inits: Sequence[ContainerView], regular: Sequence[ContainerView], now: str,
               previous: Obj, pod_ip: str | None, host_ip: str, start_time: str | None) -> Obj:
    """The part of ``status`` the node owns."""
    status: Obj = {
        "phase": pod_phase,
        "conditions": conditions(pod_phase, inits, regular, now, previous.get("conditions") or []),
        "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
        "containerStatuses": [container_status(v) for v in regular],
    }  # fmt: skip
    if inits:
        status["initContainerStatuses"] = [container_status(v) for v in inits]
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    if start_time:
        status["startTime"] = start_time
    return status


def status_patch(current: Obj, desired: Obj) -> Obj | None:
    """``{"status": desired}`` if any of ``desired``'s fields differs from ``current``, else None."""
    if all(current.get(k) == v for k, v in desired.items()):
        return None
    return {"status": desired}
