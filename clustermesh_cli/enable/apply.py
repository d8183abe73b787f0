"""I/O: write the install's objects (create, or update only what differs) and wait for them.

:func:`apply_objects` reads each object, creates it when absent, leaves it alone when the live
object already holds every desired value (so a second ``enable`` writes nothing and every
resourceVersion stays), and otherwise replaces it (see :mod:`~clustermesh_cli.enable.diff`).
:func:`wait_ready` and :func:`wait_pods_gone` poll, bounded by a deadline, printing progress.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from clustermesh_cli.enable.diff import covers, differences, update_body
from clustermesh_cli.enable.kube import KubeError, KubeObjects, describe, kind_of
from clustermesh_cli.enable.readiness import WorkloadState, daemonset_state, deployment_state, pod_problems
from clustermesh_cli.install import names
from meshcore.errors import MeshError

__all__ = ["Applied", "WaitTimeout", "apply_objects", "install_states", "wait_pods_gone", "wait_ready"]

Obj = dict[str, Any]
Echo = Callable[[str], None]
POLL_INTERVAL: Final = 1.0
#: A progress line is repeated at least this often while nothing changes.
PROGRESS_EVERY: Final = 15.0


class WaitTimeout(MeshError):
    """The install did not become ready (or go away) in time; the message lists what blocks it."""


@dataclass(frozen=True)
class Applied:
    """What happened to one object: ``created``, ``updated`` or ``unchanged`` (``would ...`` in a dry run)."""

    what: str
    action: str
    detail: str = ""

    @property
    def changed(self) -> bool:
        return self.action != "unchanged"

    def line(self) -> str:
        return f"{self.action} {self.what}" + (f" ({self.detail})" if self.detail else "")


def _immutable_change(desired: Obj, live: Obj) -> bool:
    """A ClusterRoleBinding's roleRef cannot be updated: it is recreated instead."""
    return desired.get("kind") == "ClusterRoleBinding" and live.get("roleRef") != desired.get("roleRef")


def apply_objects(kube: KubeObjects, objs: Sequence[Obj], *, dry_run: bool = False,
                  notes: dict[str, str] | None = None) -> list[Applied]:
    """Create or update each object in order; ``notes`` (object description -> text) are shown
    beside it (e.g. why a certificate is reissued)."""
    out = []
    for obj in objs:
        kind = kind_of(obj)
        md = obj["metadata"]
        what = describe(obj)
        note = (notes or {}).get(what, "")
        live = kube.get(kind.kind, md["name"], md.get("namespace"))
        prefix = "would " if dry_run else ""
        if live is None:
            if not dry_run:
                kube.create(obj)
            out.append(Applied(what, f"{prefix}create" if dry_run else "created", note))
        elif covers(live, obj):
            out.append(Applied(what, "unchanged"))
        else:
            changed = ", ".join(differences(live, obj, limit=3))
            detail = "; ".join(x for x in (note, f"changed: {changed}" if changed else "") if x)
            if not dry_run:
                if _immutable_change(obj, live):
                    kube.delete(kind.kind, md["name"], md.get("namespace"))
                    kube.create(obj)
                else:
                    kube.replace(update_body(obj, live))
            out.append(Applied(what, f"{prefix}update" if dry_run else "updated", detail))
    return out


def install_states(kube: KubeObjects, namespace: str) -> list[WorkloadState]:
    """The API server Deployment's and the agents' DaemonSet's readiness, with their pods'."""
    pods = kube.list("Pod", namespace, selector=names.PART_OF_SELECTOR)
    return [
        deployment_state(names.APISERVER, kube.get("Deployment", names.APISERVER, namespace), pods),
        daemonset_state(names.AGENT, kube.get("DaemonSet", names.AGENT, namespace), pods),
    ]


def _summary(states: Iterable[WorkloadState]) -> str:
    return ", ".join(f"{s.name} {s.summary}" for s in states)


def wait_ready(kube: KubeObjects, namespace: str, *, duration: float, echo: Echo,
               interval: float = POLL_INTERVAL) -> list[WorkloadState]:
    """Poll until the install is ready; :class:`WaitTimeout` with the blocking reasons after
    ``duration`` seconds. Prints a line whenever the state changes (and every
    :data:`PROGRESS_EVERY` seconds)."""
    t0 = time.monotonic()
    deadline = t0 + duration
    shown, shown_at = "", 0.0
    states: list[WorkloadState] = []
    error: str | None = None
    while True:
        try:
            states = install_states(kube, namespace)
            error = None
        except KubeError as err:
            error = str(err)  # keep trying until the deadline: the API may be restarting
        now = time.monotonic()
        if error is None and all(s.ready for s in states):
            echo(f"ready after {now - t0:.0f}s: {_summary(states)}")
            return states
        line = error or _summary(states)
        if line != shown or now - shown_at >= PROGRESS_EVERY:
            first = next((b for s in states for b in s.blockers), "")
            echo(f"[{now - t0:4.0f}s] waiting: {line}" + (f" — {first}" if first and error is None else ""))
            shown, shown_at = line, now
        if now >= deadline:
            reasons = [error] if error else [b for s in states if not s.ready for b in s.blockers]
            raise WaitTimeout(
                f"context {kube.context}: clustermesh is not ready after {duration:g}s ({_summary(states)}):\n  "
                + "\n  ".join(reasons or ["no reason reported"])
                + f"\n(inspect with: kubectl --context {kube.context} -n {namespace} get pods -l "
                f"{names.PART_OF_SELECTOR} -o wide; kubectl describe pod ...; kubectl logs ...)"
            )
        time.sleep(min(interval, max(0.0, deadline - now)))


def wait_pods_gone(kube: KubeObjects, namespace: str, *, duration: float, echo: Echo,
                   interval: float = POLL_INTERVAL) -> None:
    """Poll until no pod of the install is left; :class:`WaitTimeout` naming them after ``duration``."""
    t0 = time.monotonic()
    deadline = t0 + duration
    shown = -1
    while True:
        pods = kube.list("Pod", namespace, selector=names.PART_OF_SELECTOR)
        now = time.monotonic()
        if not pods:
            if shown >= 0:
                echo(f"all clustermesh pods are gone after {now - t0:.0f}s")
            return
        if len(pods) != shown:
            echo(f"[{now - t0:4.0f}s] waiting for {len(pods)} pod(s) to go")
            shown = len(pods)
        if now >= deadline:
            lines = []
            for pod in pods[:6]:
                md = pod.get("metadata") or {}
                state = "terminating" if md.get("deletionTimestamp") else "; ".join(pod_problems(pod)) or "running"
                lines.append(f"pod {md.get('name')}: {state}")
            raise WaitTimeout(
                f"context {kube.context}: {len(pods)} clustermesh pod(s) still exist after {duration:g}s:\n  "
                + "\n  ".join(lines)
                + "\n(their Deployment/DaemonSet are deleted; the garbage collector removes the pods: is the "
                "controller manager running? `kubectl delete pod --force` removes them by hand)"
            )
        time.sleep(min(interval, max(0.0, deadline - now)))
