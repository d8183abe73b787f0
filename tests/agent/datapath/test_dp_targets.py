"""Reconciler targets on real pinned maps in a private pin root: desired state in, map content out;
a restart (a new Reconciler over the same pins) writes only differences and deletes nothing live."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from agent.datapath.targets import (
    EndpointsTarget,
    EnforceTarget,
    GlobalService,
    IPCacheTarget,
    PolicyTarget,
    ServicesTarget,
    endpoint_key,
    enforce_desired,
    ipcache_desired,
    policy_desired,
    services_desired,
)
from agent.desired import Backend, ClusterBackends, IPCacheEntry, ServiceBackends
from agent.policy.resolve import EndpointPolicy, PolicyEntry, PolicyState
from bpf.layouts import Affinity, PolicyKey, frontend_key, ip_text
from bpf.maps import NodeMaps
from meshcore.reconcile import Reconciler


def _entries(n: int, identity: int = 1000) -> list[IPCacheEntry]:
    return [
        IPCacheEntry(f"10.2.{i // 250}.{i % 250 + 1}/32", identity, "192.168.2.1", 0, 2, "c2", "endpoint")
        for i in range(n)
    ]


async def _sync(rec: Reconciler, desired: dict) -> None:  # type: ignore[type-arg]
    task = asyncio.create_task(rec.run())
    try:
        rec.set_desired(desired)
        await asyncio.wait_for(rec.wait_synced(), 30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_ipcache_restart_writes_only_differences(pin_root: Path) -> None:
    with NodeMaps("n1", pin_root) as maps:
        first = ipcache_desired(_entries(5000))
        rec = Reconciler("ipcache", IPCacheTarget(maps))
        await _sync(rec, first)
        assert rec.status().updates == 5000 and len(maps.ipcache) == 5000
        # Restart: same desired state -> nothing written, nothing deleted.
        again = Reconciler("ipcache", IPCacheTarget(maps))
        await _sync(again, first)
        assert (again.status().updates, again.status().deletes) == (0, 0)
        # Restart with 10 entries changed and 5 gone: exactly those are touched.
        changed = _entries(4995)
        changed[:10] = [IPCacheEntry(e.prefix, 2000, e.tunnel_endpoint, 0, 2, "c2", "endpoint") for e in changed[:10]]
        third = Reconciler("ipcache", IPCacheTarget(maps))
        await _sync(third, ipcache_desired(changed))
        assert (third.status().updates, third.status().deletes) == (10, 5)
        values = {bytes(k): v.sec_identity for k, v in maps.ipcache.items()}
        assert len(values) == 4995 and sorted(values.values()).count(2000) == 10


def test_policy_desired_expands_ports_and_deny_precedence() -> None:
    entries = [
        PolicyEntry(7, "ingress", 1000, 80, 81, "TCP", "allow"),
        PolicyEntry(7, "ingress", 2000, 0, 0, "ANY", "allow"),
        PolicyEntry(7, "ingress", 0, 81, 0, "TCP", "deny"),
        PolicyEntry(7, "egress", 0, 53, 0, "ANY", "allow"),
    ]
    got = {
        (k.endpoint_id, k.direction, k.remote_identity, socket.ntohs(k.dport), k.proto): v
        for raw, v in policy_desired(entries).items()
        for k in [PolicyKey.from_buffer_copy(raw)]
    }
    assert got[(7, 0, 1000, 80, 6)] == 1
    assert got[(7, 0, 1000, 81, 6)] == 0  # covered by the wildcard deny
    assert got[(7, 0, 2000, 0, 0)] == 1
    assert got[(7, 0, 2000, 81, 6)] == 0  # the wildcard deny copied where it would be shadowed
    assert got[(7, 0, 0, 81, 6)] == 0
    assert {got[(7, 1, 0, 53, p)] for p in (6, 17, 132)} == {1}


async def test_policy_resync_keeps_hit_counters(pin_root: Path) -> None:
    state = PolicyState(
        enforcement="default",
        endpoints=(EndpointPolicy(7, True, False),),
        entries=(PolicyEntry(7, "ingress", 1000, 0, 0, "ANY", "allow"),),
    )
    with NodeMaps("n1", pin_root) as maps:
        await _sync(Reconciler("policy", PolicyTarget(maps)), policy_desired(state.entries))
        await _sync(Reconciler("enforce", EnforceTarget(maps)), enforce_desired(state))
        key, value = next(iter(maps.policy.items()))
        value.packets = 42  # as if the programs had counted hits
        maps.policy.update(key, value)
        again = Reconciler("policy", PolicyTarget(maps))
        await _sync(again, policy_desired(state.entries))
        assert again.status().updates == 0
        assert maps.policy.get(key).packets == 42  # type: ignore[union-attr]
        assert [(k.endpoint_id, k.direction, v.enforced) for k, v in maps.policy_enforce.items()] == [(7, 0, 1)]


async def test_services_local_and_remote_backends(pin_root: Path) -> None:
    local = [
        GlobalService(
            "default/echo",
            (("10.96.0.10", 80, "TCP", "http"),),
            (Backend("10.1.0.2", 8080, "TCP", "http"),),
            Affinity.LOCAL,
        )
    ]
    remote = [ServiceBackends("default/echo", (ClusterBackends("c2", 2, (Backend("10.2.0.2", 8080, "TCP", "http"),)),))]
    desired = services_desired(local, remote, 1)
    with NodeMaps("n1", pin_root) as maps:
        await _sync(Reconciler("services", ServicesTarget(maps)), desired)
        sv = maps.services.get(frontend_key("10.96.0.10", 80))
        assert sv is not None and (sv.backend_count, sv.local_backend_count, sv.affinity) == (2, 1, 1)
        addrs = {(ip_text(b.family, bytes(b.ip)), b.cluster_id, b.flags) for _, b in maps.backends.items()}
        assert addrs == {("10.1.0.2", 1, 3), ("10.2.0.2", 2, 1)}
        again = Reconciler("services", ServicesTarget(maps))
        await _sync(again, desired)
        assert (again.status().updates, again.status().deletes) == (0, 0)
        # The remote cluster's backend goes away: one update, the slot count shrinks.
        third = Reconciler("services", ServicesTarget(maps))
        await _sync(third, services_desired(local, [], 1))
        assert third.status().updates == 1
        sv = maps.services.get(frontend_key("10.96.0.10", 80))
        assert sv is not None and sv.backend_count == 1


async def test_endpoints_target(pin_root: Path) -> None:
    with NodeMaps("n1", pin_root) as maps:
        await _sync(Reconciler("endpoints", EndpointsTarget(maps)), {endpoint_key(5): (7, 1000)})
        again = Reconciler("endpoints", EndpointsTarget(maps))
        await _sync(again, {endpoint_key(5): (7, 1000), endpoint_key(6): (8, 1001)})
        assert (again.status().updates, again.status().deletes) == (1, 0)
