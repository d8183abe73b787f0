"""Wiring: shared informers, the enabled controllers, one TaskGroup (the kube-controller-manager part).

Each resource is listed and watched once (one :class:`~lab.kube.controllers.informer.Informer`) and
shared by every controller that reads it; only the informers the enabled controllers need are started.
A controller starts when its own informers have synced, so e.g. the scheduler works while the
``apps/v1`` kinds are not (yet) served.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lab.kube.controllers.actions import (
    DAEMONSETS,
    DEPLOYMENTS,
    ENDPOINTSLICES,
    NODES,
    PODS,
    REPLICASETS,
    SERVICES,
)
from lab.kube.controllers.client import KubeClient
from lab.kube.controllers.daemonset import DaemonSetController
from lab.kube.controllers.deployment import DeploymentController
from lab.kube.controllers.endpointslice import EndpointSliceController
from lab.kube.controllers.gc import GarbageCollector
from lab.kube.controllers.informer import Informer, ReconcileLoop
from lab.kube.controllers.replicaset import ReplicaSetController
from lab.kube.controllers.scheduler import Scheduler
from meshcore.backoff import Backoff
from meshcore.errors import ConfigError
from meshcore.k8s.resource import ResourceRef
from meshcore.log import get_logger

CONTROLLERS = ("scheduler", "deployment", "replicaset", "daemonset", "endpointslice", "garbagecollector")


@dataclass
class ControllerManager:
    """The informers and reconcile loops of one cluster; :meth:`run` them until cancelled."""

    client: KubeClient
    informers: dict[str, Informer] = field(default_factory=dict)
    loops: dict[str, ReconcileLoop] = field(default_factory=dict)

    async def run(self) -> None:
        log = get_logger(__name__)
        log.info("controllers starting", controllers=sorted(self.loops), informers=sorted(self.informers))
        async with asyncio.TaskGroup() as tg:
            for plural, inf in self.informers.items():
                tg.create_task(inf.run(), name=f"informer-{plural}")
            for name, loop in self.loops.items():
                tg.create_task(loop.run(), name=f"controller-{name}")


def build(client: KubeClient, *, enabled: Iterable[str] = CONTROLLERS, resync_period: float = 30.0,
          max_backoff: float = 3.0) -> ControllerManager:
    """Create the informers and controllers named in ``enabled`` (a subset of :data:`CONTROLLERS`)."""
    wanted = list(dict.fromkeys(enabled))
    unknown = [c for c in wanted if c not in CONTROLLERS]
    if unknown:
        raise ConfigError(f"unknown controller(s) {', '.join(unknown)}; choose from {', '.join(CONTROLLERS)}")
    mgr = ControllerManager(client)

    def inf(ref: ResourceRef) -> Informer:
        if ref.plural not in mgr.informers:
            mgr.informers[ref.plural] = Informer(client.reader, ref, backoff=Backoff(initial=0.2, maximum=max_backoff))
        return mgr.informers[ref.plural]

    if "scheduler" in wanted:
        mgr.loops["scheduler"] = Scheduler(client, inf(PODS), inf(NODES), resync_period=resync_period).loop
    if "deployment" in wanted:
        mgr.loops["deployment"] = DeploymentController(client, inf(DEPLOYMENTS), inf(REPLICASETS), inf(PODS),
                                                       resync_period=resync_period).loop
    if "replicaset" in wanted:
        mgr.loops["replicaset"] = ReplicaSetController(client, inf(REPLICASETS), inf(PODS),
                                                       resync_period=resync_period).loop
    if "daemonset" in wanted:
        mgr.loops["daemonset"] = DaemonSetController(client, inf(DAEMONSETS), inf(NODES), inf(PODS),
                                                     resync_period=resync_period).loop
    if "endpointslice" in wanted:
        mgr.loops["endpointslice"] = EndpointSliceController(client, inf(SERVICES), inf(PODS), inf(ENDPOINTSLICES),
                                                             inf(NODES), resync_period=resync_period).loop
    if "garbagecollector" in wanted:
        owners = {("apps", "Deployment"): inf(DEPLOYMENTS), ("apps", "ReplicaSet"): inf(REPLICASETS),
                  ("apps", "DaemonSet"): inf(DAEMONSETS), ("", "Service"): inf(SERVICES)}
        dependents = {REPLICASETS.plural: inf(REPLICASETS), PODS.plural: inf(PODS),
                      ENDPOINTSLICES.plural: inf(ENDPOINTSLICES)}
        mgr.loops["garbagecollector"] = GarbageCollector(client, owners=owners, dependents=dependents,
                                                         pods=inf(PODS), nodes=inf(NODES),
                                                         resync_period=resync_period).loop
    return mgr


async def run(kubeconfig: str | Path, *, context: str | None = None, enabled: Iterable[str] = CONTROLLERS,
              resync_period: float = 30.0) -> None:
    """Connect with ``kubeconfig`` and run the controllers until cancelled."""
    client = await KubeClient.from_kubeconfig(kubeconfig, context=context)
    try:
        await build(client, enabled=enabled, resync_period=resync_period).run()
    finally:
        await client.close()
