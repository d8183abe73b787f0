"""The scheduler: bind each unscheduled Pod to a feasible Node through ``pods/<name>/binding``.

Pure part: :func:`wants_scheduling`, :func:`filter_node` (kube-scheduler's NodeUnschedulable,
TaintToleration and NodeAffinity filters, in that order, with a not-Ready node treated as tainted
``node.kubernetes.io/not-ready``), :func:`schedule` (the feasible node with the fewest non-terminated pods,
ties by name) and :func:`unschedulable_patch` (``PodScheduled=False``, reason ``Unschedulable``, with the
real scheduler's message). I/O part: :class:`Scheduler`, which keeps "assumed" bindings (made, not yet seen
through the watch) so a burst of pods spreads instead of piling onto the node that looked emptiest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lab.kube.controllers import objects as o
from lab.kube.controllers.actions import PODS, Bind, Patch
from lab.kube.controllers.client import KubeClient, RequestError
from lab.kube.controllers.informer import Informer, ReconcileLoop
from meshcore.log import get_logger

Obj = dict[str, Any]
DEFAULT_SCHEDULER = "default-scheduler"
REASON_UNSCHEDULABLE = "node(s) were unschedulable"
REASON_SELECTOR = "node(s) didn't match Pod's node affinity/selector"
NO_NODES = "no nodes available to schedule pods"
_NOT_READY_TAINT = {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}
_UNSCHEDULABLE_TAINT = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
_ASSUME_TTL = 30.0


def wants_scheduling(pod: Mapping[str, Any]) -> bool:
    """Unbound, ours (``schedulerName`` default or unset), not terminating and not finished."""
    sp = o.spec(pod)
    if sp.get("nodeName"):
        return False
    if (sp.get("schedulerName") or DEFAULT_SCHEDULER) != DEFAULT_SCHEDULER:
        return False
    return not o.is_terminating(pod) and not o.is_terminal(pod)


def _taint_reason(taint: Mapping[str, Any]) -> str:
    return f"node(s) had untolerated taint {{{taint.get('key', '')}: {taint.get('value') or ''}}}"


def filter_node(pod: Mapping[str, Any], node: Mapping[str, Any]) -> str | None:
    """Why ``node`` cannot run ``pod`` (the real scheduler's reason text), or None if it can."""
    sp = o.spec(pod)
    tolerations = [t for t in sp.get("tolerations") or [] if isinstance(t, dict)]
    if o.spec(node).get("unschedulable") and o.untolerated_taint(
            tolerations, {"spec": {"taints": [_UNSCHEDULABLE_TAINT]}}) is not None:
        return REASON_UNSCHEDULABLE
    taints = list(o.spec(node).get("taints") or [])
    if not o.node_ready(node):
        taints.append(_NOT_READY_TAINT)
    taint = o.untolerated_taint(tolerations, {"spec": {"taints": taints}})
    if taint is not None:
        return _taint_reason(taint)
    if not o.node_matches_pod_selectors(sp, node):
        return REASON_SELECTOR
    return None


def pod_counts(pods: Iterable[Mapping[str, Any]], assumed: Mapping[str, str] | None = None) -> dict[str, int]:
    """Non-terminated pods per node; ``assumed`` maps pod keys to nodes they were bound to but not yet seen on."""
    counts: dict[str, int] = {}
    assumed = assumed or {}
    for p in pods:
        if o.is_terminal(p):
            continue
        node = o.spec(p).get("nodeName") or assumed.get(o.key(p))
        if node:
            counts[str(node)] = counts.get(str(node), 0) + 1
    return counts


@dataclass(frozen=True, slots=True)
class Decision:
    """Where to bind (``node``), or why nowhere (``message``, the PodScheduled condition's text)."""

    node: str | None
    message: str = ""


def failure_message(total: int, reasons: Mapping[str, int]) -> str:
    """``0/N nodes are available: <count> <reason>, ...`` with the reasons sorted as kube-scheduler does."""
    if total == 0:
        return NO_NODES
    parts = sorted(f"{n} {r}" for r, n in reasons.items())
    return f"0/{total} nodes are available: {', '.join(parts)}."


def schedule(pod: Mapping[str, Any], nodes: Iterable[Mapping[str, Any]], counts: Mapping[str, int]) -> Decision:
    """The feasible node with the fewest pods (by ``counts``), ties broken by name."""
    feasible: list[tuple[int, str]] = []
    reasons: dict[str, int] = {}
    total = 0
    for node in nodes:
        total += 1
        why = filter_node(pod, node)
        if why is None:
            feasible.append((counts.get(o.name(node), 0), o.name(node)))
        else:
            reasons[why] = reasons.get(why, 0) + 1
    if not feasible:
        return Decision(None, failure_message(total, reasons))
    return Decision(min(feasible)[1])


def unschedulable_patch(pod: Mapping[str, Any], message: str, now: float) -> Obj | None:
    """A status merge patch setting ``PodScheduled=False/Unschedulable``, or None if already so."""
    current = o.condition(pod, "PodScheduled")
    if (current is not None and current.get("status") == "False" and current.get("reason") == "Unschedulable"
            and current.get("message") == message):
        return None
    conditions = o.set_condition(o.status(pod).get("conditions") or [], {
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
        "lastProbeTime": None}, now)
    return {"status": {"conditions": conditions}}


def _node_facts(node: Mapping[str, Any] | None) -> Any:
    if node is None:
        return None
    return (o.labels(node), o.spec(node).get("unschedulable"), o.spec(node).get("taints"), o.node_ready(node))


class Scheduler:
    """Binds pending pods; re-examines them when nodes change (and every resync period)."""

    def __init__(self, client: KubeClient, pods: Informer, nodes: Informer, *,
                 clock: Callable[[], float] = time.time, resync_period: float = 30.0) -> None:
        self._client = client
        self._pods = pods
        self._nodes = nodes
        self._clock = clock
        self._assumed: dict[str, tuple[str, str, float]] = {}  # pod key -> (uid, node, monotonic deadline)
        self._log = get_logger(__name__)
        self.loop = ReconcileLoop("scheduler", self.reconcile, informers=[pods, nodes], all_keys=self._pending,
                                  resync_period=resync_period)
        pods.add_handler(self._on_pod)
        nodes.add_handler(self._on_node)

    def _pending(self) -> list[str]:
        return [o.key(p) for p in self._pods.items() if wants_scheduling(p)]

    def _on_pod(self, old: Obj | None, new: Obj | None) -> None:
        if new is None or o.spec(new).get("nodeName"):
            self._assumed.pop(o.key(new if new is not None else old or {}), None)
        if new is not None and wants_scheduling(new):
            self.loop.enqueue(o.key(new))

    def _on_node(self, old: Obj | None, new: Obj | None) -> None:
        if _node_facts(old) != _node_facts(new):
            for k in self._pending():
                self.loop.enqueue(k)

    def _assumed_nodes(self) -> dict[str, str]:
        now = time.monotonic()
        for k in [k for k, (_, _, deadline) in self._assumed.items() if deadline <= now]:
            del self._assumed[k]
        return {k: node for k, (_, node, _) in self._assumed.items()}

    async def reconcile(self, key: str) -> float | None:
        pod = self._pods.get_key(key)
        if pod is None or not wants_scheduling(pod):
            return None
        assumed = self._assumed_nodes()
        if key in assumed and self._assumed[key][0] == o.uid(pod):
            return None  # bound already; waiting for the watch to show it
        decision = schedule(pod, self._nodes.items(), pod_counts(self._pods.items(), assumed))
        ns, name = o.namespace(pod), o.name(pod)
        if decision.node is None:
            patch = unschedulable_patch(pod, decision.message, self._clock())
            if patch is not None:
                await self._client.apply(Patch(PODS, ns, name, patch, subresource="status"))
                self._log.info("pod unschedulable", pod=key, message=decision.message)
            return None
        try:
            await self._client.apply(Bind(ns, name, decision.node, o.uid(pod) or None))
        except RequestError as err:
            if err.status in (404, 409):
                self._log.info("binding skipped", pod=key, node=decision.node, status=err.status)
                return None
            raise
        self._assumed[key] = (o.uid(pod), decision.node, time.monotonic() + _ASSUME_TTL)
        self._log.info("pod bound", pod=key, node=decision.node)
        return None
