"""Watch the agent's own cluster for policy objects and keep them parsed.

Like Cilium's policy watchers (``pkg/policy/k8s``: ``ciliumNetworkPolicyHandler``,
``networkPolicyHandler``), one list/watch per kind: ``CiliumNetworkPolicy``,
``CiliumClusterwideNetworkPolicy`` (``cilium.io/v2``) and ``networking.k8s.io/v1``
``NetworkPolicy``. Each object is parsed on arrival (:func:`~agent.policy.parse.parse_policy`,
which never raises) into :attr:`PolicySource.policies`, keyed ``Kind/namespace/name``; every change
bumps :attr:`PolicySource.version` and wakes :meth:`PolicySource.wait_changed`.

A kind whose resource is not served (the Cilium CRDs not installed yet) does not stop the
others: its watch keeps retrying with backoff, and :meth:`PolicySource.status` shows the error
until the CRD appears.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from contextlib import aclosing
from typing import Any

from agent.policy.model import Policy, PolicyKind
from agent.policy.parse import parse_cnp, parse_network_policy
from meshcore.backoff import Backoff
from meshcore.k8s.client import K8sApi
from meshcore.k8s.resource import Delete, ResourceRef, ResourceWatch, Synced, Upsert, object_key
from meshcore.log import get_logger

__all__ = ["POLICY_RESOURCES", "PolicySource"]

POLICY_RESOURCES: Mapping[PolicyKind, ResourceRef] = {
    "CiliumNetworkPolicy": ResourceRef("cilium.io", "v2", "ciliumnetworkpolicies", namespaced=True),
    "CiliumClusterwideNetworkPolicy": ResourceRef(
        "cilium.io", "v2", "ciliumclusterwidenetworkpolicies", namespaced=False
    ),
    "NetworkPolicy": ResourceRef("networking.k8s.io", "v1", "networkpolicies", namespaced=True),
}


class PolicySource:
    """The parsed policies of the local cluster; :meth:`run` keeps them current (forever)."""

    def __init__(
        self,
        api: K8sApi,
        *,
        kinds: tuple[PolicyKind, ...] = tuple(POLICY_RESOURCES),
        backoff: Callable[[], Backoff] | None = None,
    ) -> None:
        self.policies: dict[str, Policy] = {}
        self.version = 0
        self._changed = asyncio.Event()
        self._watches: dict[PolicyKind, ResourceWatch] = {
            kind: ResourceWatch(api, POLICY_RESOURCES[kind], backoff=backoff() if backoff else None)
            for kind in kinds
        }
        self._log = get_logger(__name__)

    @property
    def synced(self) -> bool:
        """Every kind has been listed completely at least once."""
        return all(w.synced for w in self._watches.values())

    def errors(self) -> dict[str, str]:
        """The current list/watch error per kind (absent when healthy)."""
        return {kind: w.error for kind, w in self._watches.items() if w.error}

    def status(self) -> dict[str, Any]:
        """For the agent's status output: per kind synced/error/count, and the policies with
        unsupported fields or parse errors."""
        counts: dict[str, int] = {kind: 0 for kind in self._watches}
        for policy in self.policies.values():
            counts[policy.kind] = counts.get(policy.kind, 0) + 1
        return {
            "version": self.version,
            "kinds": {
                kind: {"synced": w.synced, "error": w.error, "policies": counts.get(kind, 0)}
                for kind, w in self._watches.items()
            },
            "unsupported": {k: list(p.unsupported) for k, p in sorted(self.policies.items()) if p.unsupported},
            "errors": {k: list(p.errors) for k, p in sorted(self.policies.items()) if p.errors},
        }

    def _touch(self) -> None:
        self.version += 1
        self._changed.set()

    async def wait_changed(self, since: int) -> int:
        """Wait until :attr:`version` differs from ``since``; return the new version."""
        while self.version == since:
            self._changed.clear()
            await self._changed.wait()
        return self.version

    async def run(self) -> None:
        """Watch every kind until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for kind, watch in self._watches.items():
                tg.create_task(self._consume(kind, watch), name=f"policy watch {kind}")

    async def _consume(self, kind: PolicyKind, watch: ResourceWatch) -> None:
        parse = parse_network_policy if kind == "NetworkPolicy" else parse_cnp
        async with aclosing(watch.events()) as events:
            async for event in events:
                if isinstance(event, Synced):
                    self._log.info("policies listed", kind=kind)
                    self._touch()
                    continue
                obj = dict(event.obj)
                obj.setdefault("kind", kind)
                key = f"{kind}/{object_key(obj)}"
                if isinstance(event, Delete):
                    if self.policies.pop(key, None) is not None:
                        self._touch()
                elif isinstance(event, Upsert):
                    policy = parse(obj)
                    if policy.errors:
                        self._log.warning("policy has errors", policy=key, errors=list(policy.errors))
                    self.policies[key] = policy
                    self._touch()
