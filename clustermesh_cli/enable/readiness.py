"""Pure: is the install running, and if not, what holds it up (from the API's JSON objects).

``enable --wait`` is done when the ``clustermesh-apiserver`` Deployment has all its replicas
ready and the ``clustermesh-agent`` DaemonSet has a ready agent on every node it schedules to,
both at their current generation. Otherwise the reasons name each pod that is not ready and why,
as ``kubectl describe`` would show it: phase, failing conditions, waiting or crashing containers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["WorkloadState", "daemonset_state", "deployment_state", "pod_problems", "pods_of"]

Obj = Mapping[str, Any]
_MAX_PODS_SHOWN = 6


@dataclass(frozen=True)
class WorkloadState:
    """One workload: ready or not, a short summary (``1/1 ready``) and what blocks it."""

    name: str
    ready: bool
    summary: str
    blockers: tuple[str, ...] = ()


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _observed(obj: Obj) -> bool:
    generation = _int((obj.get("metadata") or {}).get("generation"))
    return _int((obj.get("status") or {}).get("observedGeneration")) >= generation


def pods_of(pods: Iterable[Obj], match_labels: Mapping[str, str]) -> list[Obj]:
    """The pods whose labels include ``match_labels`` (a workload's ``spec.selector.matchLabels``)."""
    return [p for p in pods
            if all(((p.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in match_labels.items())]


def _state_text(state: Obj) -> str:
    if "waiting" in state:
        w = state["waiting"] or {}
        return f"waiting: {w.get('reason') or 'Waiting'}" + (f" ({w['message']})" if w.get("message") else "")
    if "terminated" in state:
        t = state["terminated"] or {}
        return f"terminated: {t.get('reason') or 'Error'}, exit code {t.get('exitCode')}" + (
            f" ({t['message']})" if t.get("message") else "")
    return "running"


def _container_problems(statuses: Sequence[Obj], *, init: bool) -> list[str]:
    out = []
    for cs in statuses:
        state = cs.get("state") or {}
        if init and "terminated" in state and _int((state["terminated"] or {}).get("exitCode")) == 0:
            continue
        if not init and cs.get("ready"):
            continue
        text = f"{'init container' if init else 'container'} {cs.get('name')} {_state_text(state)}"
        restarts = _int(cs.get("restartCount"))
        if restarts:
            last = (cs.get("lastState") or {}).get("terminated") or {}
            text += f", {restarts} restart(s)"
            if last:
                text += f", last exit {last.get('exitCode')} ({last.get('reason') or 'Error'})"
        elif "running" in state and not init:
            text += ", not ready (readiness probe not passing yet)"
        out.append(text)
    return out


def pod_problems(pod: Obj) -> list[str]:
    """Why one pod is not ready (empty when it is Running and Ready)."""
    md, status = pod.get("metadata") or {}, pod.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    if status.get("phase") == "Running" and (conditions.get("Ready") or {}).get("status") == "True" \
            and not md.get("deletionTimestamp"):
        return []
    out = [f"phase {status.get('phase') or 'Pending'}"]
    if md.get("deletionTimestamp"):
        out.append("being deleted")
    if not (pod.get("spec") or {}).get("nodeName"):
        sched = conditions.get("PodScheduled") or {}
        out.append("not scheduled" + (f": {sched.get('reason')}: {sched.get('message')}" if sched.get("reason")
                                       else " yet (is the scheduler running, are there Ready nodes?)"))
    for ctype in ("Initialized", "ContainersReady", "Ready"):
        cond = conditions.get(ctype) or {}
        if cond.get("status") == "False" and cond.get("reason"):
            out.append(f"{ctype}=False ({cond.get('reason')}{': ' + cond['message'] if cond.get('message') else ''})")
            break
    out += _container_problems(status.get("initContainerStatuses") or [], init=True)
    out += _container_problems(status.get("containerStatuses") or [], init=False)
    return out


def _pod_lines(pods: Sequence[Obj]) -> list[str]:
    lines = []
    for pod in pods:
        problems = pod_problems(pod)
        if problems:
            md = pod.get("metadata") or {}
            node = (pod.get("spec") or {}).get("nodeName")
            lines.append(f"pod {md.get('name')}{' on ' + node if node else ''}: {'; '.join(problems)}")
    if len(lines) > _MAX_PODS_SHOWN:
        lines = lines[:_MAX_PODS_SHOWN] + [f"... and {len(lines) - _MAX_PODS_SHOWN} more pod(s) not ready"]
    return lines


def _selector(obj: Obj) -> Mapping[str, str]:
    return dict(((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {})


def deployment_state(name: str, deploy: Obj | None, pods: Iterable[Obj]) -> WorkloadState:
    """The Deployment's readiness: ``readyReplicas`` reaching ``spec.replicas``."""
    if deploy is None:
        return WorkloadState(name, False, "missing", (f"Deployment {name} does not exist",))
    want = _int((deploy.get("spec") or {}).get("replicas", 1))
    status = deploy.get("status") or {}
    ready_n = _int(status.get("readyReplicas"))
    mine = pods_of(pods, _selector(deploy))
    summary = f"{ready_n}/{want} ready"
    if ready_n >= want and _observed(deploy):
        return WorkloadState(name, True, summary)
    blockers = _pod_lines(mine)
    if not mine:
        blockers = [f"Deployment {name} has no pods yet (is the cluster's controller manager running?)"]
    elif not _observed(deploy):
        blockers.append(f"Deployment {name}: the controller has not seen the latest change yet")
    return WorkloadState(name, False, summary, tuple(blockers))


def daemonset_state(name: str, ds: Obj | None, pods: Iterable[Obj]) -> WorkloadState:
    """The DaemonSet's readiness: an up-to-date, ready pod on every node it schedules to."""
    if ds is None:
        return WorkloadState(name, False, "missing", (f"DaemonSet {name} does not exist",))
    status = ds.get("status") or {}
    desired = _int(status.get("desiredNumberScheduled"))
    ready_n = _int(status.get("numberReady"))
    updated = _int(status.get("updatedNumberScheduled")) if "updatedNumberScheduled" in status else desired
    mine = pods_of(pods, _selector(ds))
    summary = f"{ready_n}/{desired} ready" if status else "no status yet"
    if desired > 0 and ready_n >= desired and updated >= desired and _observed(ds):
        return WorkloadState(name, True, summary)
    blockers = _pod_lines(mine)
    if not status or not _observed(ds):
        blockers.append(f"DaemonSet {name}: the controller has not seen it yet (is the controller manager running?)")
    elif desired == 0:
        blockers.append(f"DaemonSet {name} schedules no pod: no node matches it (are there Ready nodes?)")
    elif updated < desired:
        blockers.append(f"DaemonSet {name}: {updated}/{desired} pods run the current template (rolling out)")
    elif not blockers:
        blockers.append(f"DaemonSet {name}: {ready_n}/{desired} pods ready")
    return WorkloadState(name, False, summary, tuple(blockers))
