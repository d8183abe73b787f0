"""Service entries for the socket-LB maps: the backend-selection rule (reference §5.2), computed
in userspace so the BPF side stays a range pick.

Userspace keeps only *healthy* backends in a frontend's slots, local ones first:
slots ``[0, local_backend_count)`` are local, ``[local_backend_count, backend_count)`` remote.
``sock_lb.c`` then picks a random slot in the range the affinity prefers (none: all slots;
local: the local range; remote: the remote range) and falls back to the other range when the
preferred one is empty. That is exactly Cilium's table: affinity local uses remote backends
only when no local backend is healthy, affinity remote uses local ones only when no remote one is.
"""

from __future__ import annotations

import ctypes
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from bpf.layouts import (
    BACKEND_F_HEALTHY,
    BACKEND_F_LOCAL,
    Affinity,
    BackendKey,
    BackendValue,
    FrontendKey,
    ServiceValue,
    SlotKey,
    SlotValue,
    ip_bytes,
)
from bpf.maps import NodeMaps

__all__ = ["ServiceBackend", "ServicePlan", "backend_value", "plan_service", "write_service", "delete_service"]

MAX_SLOTS = 0xFFFF


@dataclass(frozen=True, slots=True)
class ServiceBackend:
    """A backend as the LB sees it: its ID (the ``backends`` map key) and where it is."""

    backend_id: int
    ip: str
    port: int
    proto: int
    cluster_id: int
    local: bool
    healthy: bool = True


def backend_value(b: ServiceBackend) -> BackendValue:
    """The ``backends`` map value of ``b``."""
    family, raw = ip_bytes(b.ip)
    flags = (BACKEND_F_HEALTHY if b.healthy else 0) | (BACKEND_F_LOCAL if b.local else 0)
    value = BackendValue(port=socket.htons(b.port), proto=b.proto, family=family, cluster_id=b.cluster_id, flags=flags)
    ctypes.memmove(value.ip, raw, 16)
    return value


@dataclass(frozen=True, slots=True)
class ServicePlan:
    """What one frontend's entries should be."""

    service: ServiceValue
    slots: tuple[tuple[SlotKey, SlotValue], ...]
    backends: tuple[tuple[BackendKey, BackendValue], ...]


def plan_service(frontend: FrontendKey, backends: Sequence[ServiceBackend], affinity: Affinity) -> ServicePlan:
    """Slots for ``frontend``: healthy local backends (by ID), then healthy remote ones."""
    healthy = sorted((b for b in backends if b.healthy), key=lambda b: (not b.local, b.backend_id))[:MAX_SLOTS]
    local = sum(1 for b in healthy if b.local)
    slots = tuple((SlotKey(frontend, i), SlotValue(b.backend_id)) for i, b in enumerate(healthy))
    service = ServiceValue(backend_count=len(healthy), affinity=int(affinity), local_backend_count=local)
    values = tuple((BackendKey(b.backend_id), backend_value(b)) for b in backends)
    return ServicePlan(service, slots, values)


def write_service(maps: NodeMaps, frontend: FrontendKey, plan: ServicePlan) -> None:
    """Write a plan so a concurrent program never reads a slot beyond what exists: backends and
    slots first, the service value (with its counts) next, stale slots last."""
    old = maps.services.get(frontend)
    maps.backends.update_many(plan.backends)
    maps.svc_slots.update_many(plan.slots)
    maps.services.update(frontend, plan.service)
    if old is not None and old.backend_count > plan.service.backend_count:
        stale = range(plan.service.backend_count, old.backend_count)
        maps.svc_slots.delete_many(SlotKey(frontend, i) for i in stale)


def delete_service(maps: NodeMaps, frontend: FrontendKey) -> None:
    """Remove a frontend (service value first, then its slots); backends may be shared: kept."""
    old = maps.services.get(frontend)
    maps.services.delete(frontend)
    if old is not None:
        maps.svc_slots.delete_many(SlotKey(frontend, i) for i in range(old.backend_count))
