"""Reconciler targets over a node's pinned maps, and the pure builders of their desired content.

Each target speaks :class:`meshcore.reconcile.Target` with keys and values that compare by value,
so a restarted agent (a new :class:`~meshcore.reconcile.Reconciler` over the same pins) reads the
maps, writes only differences and deletes only what is no longer wanted: never a flush.

- ipcache: packed key bytes -> packed value bytes (``pack_ipcache_*``; ``update_packed`` /
  ``delete_packed``: the bulk path).
- policy: packed :class:`PolicyKey` -> verdict. The value's hit counters are the programs'; they
  are not part of the compared value, so a resync never resets them.
- policy_enforce: packed :class:`EnforceKey` -> 1 (only enforced directions are written).
- services: packed :class:`FrontendKey` -> :class:`ServiceSpec` (affinity + healthy backends),
  written with :func:`bpf.services.write_service` (safe order) and removed with
  :func:`bpf.services.delete_service`.
- endpoints: packed :class:`EndpointKey` (veth ifindex) -> (endpoint id, identity).
- routes (``--routing-mode native``): kernel routes of the node's namespace, pod CIDR -> underlay
  next hop, tagged with :data:`ROUTE_PROTO`; only routes with that protocol are read, written or
  deleted.
"""

from __future__ import annotations

import socket
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Set
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from agent.desired import Backend, IPCacheEntry, NodeRoute, ServiceBackends
from agent.policy.resolve import PolicyEntry, PolicyState
from bpf.layouts import (
    PROTOCOLS,
    STATIC_ENCRYPT_KEY,
    Affinity,
    BackendKey,
    EndpointKey,
    EndpointValue,
    EnforceKey,
    EnforceValue,
    FrontendKey,
    PolicyKey,
    PolicyValue,
    SlotKey,
    ip_text,
    pack_ipcache_key,
    pack_ipcache_value,
)
from bpf.maps import NodeMaps
from bpf.services import ServiceBackend, delete_service, plan_service, write_service

__all__ = [
    "MAX_PORT_RANGE",
    "IPCacheTarget",
    "PolicyTarget",
    "EnforceTarget",
    "ServiceSpec",
    "ServicesTarget",
    "EndpointsTarget",
    "ROUTE_PROTO",
    "RoutesTarget",
    "routes_desired",
    "ipcache_desired",
    "policy_desired",
    "enforce_desired",
    "backend_id",
    "frontend_bytes",
    "endpoint_key",
    "GlobalService",
    "services_desired",
    "parse_affinity",
]

MAX_PORT_RANGE = 1024
"""A port range wider than this is written as "all ports" (the map has one port per key)."""

_L4_ANY = ("TCP", "UDP", "SCTP")


# ---- ipcache ----


def ipcache_desired(
    entries: Iterable[IPCacheEntry], *, native: bool = False, encrypt_hosts: Set[str] | None = None
) -> dict[bytes, bytes]:
    """Packed ipcache map content for ``entries`` (the first entry of a prefix wins).

    ``native`` (``--routing-mode native``): no entry carries a tunnel endpoint (``has_tunnel_ep``
    clear) and every entry has ``skip_tunnel`` set, so ``from_pod`` hands packets to the kernel,
    which routes them (:class:`RoutesTarget`). In both modes an entry with a tunnel endpoint (its
    ``HostIP``: never this node's) is flagged ``remote_node`` (egress strict mode's "on another
    node").

    ``encrypt_hosts`` (the node datapath always gives it): the node IPs whose traffic is encrypted
    (WireGuard peers): an entry with such a tunnel endpoint gets ``encrypt_key``
    :data:`~bpf.layouts.STATIC_ENCRYPT_KEY`, every other entry 0 (egress strict mode drops those),
    whatever key the record carried. None: the entries' own ``encrypt_key``."""
    out: dict[bytes, bytes] = {}
    for e in entries:
        key = pack_ipcache_key(e.prefix)
        if key not in out:
            if encrypt_hosts is None:
                encrypt = e.encrypt_key
            else:
                encrypt = STATIC_ENCRYPT_KEY if e.tunnel_endpoint in encrypt_hosts else 0
            out[key] = pack_ipcache_value(
                e.identity,
                "" if native else e.tunnel_endpoint,
                e.cluster_id,
                encrypt,
                e.remote_cluster,
                native,
                bool(e.tunnel_endpoint),
            )
    return out


class IPCacheTarget:
    """The ``ipcache`` LPM trie as packed bytes (a :class:`~meshcore.reconcile.ColumnTarget`:
    the reconciler hands it keys and values as two lists, written in that order)."""

    def __init__(self, maps: NodeMaps) -> None:
        self._map = maps.ipcache

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        return self._map.items_packed()

    def update_many(self, items: list[tuple[bytes, bytes]]) -> None:
        self._map.update_packed(items)

    def update_columns(self, keys: list[bytes], values: list[bytes]) -> None:
        self._map.update_columns(keys, values)

    def delete_many(self, keys: list[bytes]) -> None:
        self._map.delete_packed(keys)


# ---- policy ----

_DIR = {"ingress": 0, "egress": 1}


def _policy_keys(e: PolicyEntry) -> Iterator[tuple[int, int, int]]:
    """(identity, dport, proto) keys of one entry: ports expanded, ``ANY`` with a port expanded to
    TCP/UDP/SCTP; ``ANY`` without a port is proto 0 (any, ICMP included, as an L3-only rule)."""
    port, end = e.port, max(e.end_port, e.port)
    if port == 0 or end - port >= MAX_PORT_RANGE:
        ports: Iterable[int] = (0,)
    else:
        ports = range(port, end + 1)
    if e.protocol == "ANY":
        protos: tuple[int, ...] = (0,) if port == 0 else tuple(PROTOCOLS[p] for p in _L4_ANY)
    else:
        protos = (PROTOCOLS.get(e.protocol.upper(), 0),)
    for p in ports:
        for proto in protos:
            yield e.remote_identity, p, proto


def _covers(deny: tuple[int, int, int], allow: tuple[int, int, int]) -> bool:
    return all(d in (0, a) for d, a in zip(deny, allow, strict=True))


def policy_desired(entries: Iterable[PolicyEntry]) -> dict[bytes, int]:
    """Packed policy keys -> verdict (1 allow, 0 deny), with deny precedence made explicit.

    The programs take the first hit of (identity, port, proto), (identity, 0, proto),
    (identity, 0, 0) and the same with identity 0. So an allow covered by a deny becomes a deny,
    and a wildcard-identity deny is copied onto every identity that has allows, at the deny's own
    port/proto (where it would otherwise be shadowed)."""
    groups: dict[tuple[int, int], tuple[set[tuple[int, int, int]], set[tuple[int, int, int]]]] = {}
    for e in entries:
        allows, denies = groups.setdefault((e.endpoint_id, _DIR[e.direction]), (set(), set()))
        (allows if e.verdict == "allow" else denies).update(_policy_keys(e))
    out: dict[bytes, int] = {}
    for (endpoint, direction), (allows, denies) in groups.items():
        verdicts = {k: 1 for k in allows}
        for d in denies:
            verdicts[d] = 0
        if denies:
            for a in allows:
                for d in denies:
                    if _covers(d, a):
                        verdicts[a] = 0
                    if d[0] == 0 and a[0] != 0:
                        verdicts[(a[0], d[1], d[2])] = 0
        for (identity, port, proto), verdict in verdicts.items():
            key = PolicyKey(endpoint, identity, socket.htons(port), proto, direction)
            out[bytes(key)] = verdict
    return out


class PolicyTarget:
    """The ``policy`` map: key -> verdict (hit counters left to the programs)."""

    def __init__(self, maps: NodeMaps) -> None:
        self._map = maps.policy

    def items(self) -> Iterator[tuple[bytes, int]]:
        for k, v in self._map.items():
            yield bytes(k), int(v.verdict)

    def update_many(self, items: list[tuple[bytes, int]]) -> None:
        self._map.update_packed((k, bytes(PolicyValue(verdict=v))) for k, v in items)

    def delete_many(self, keys: list[bytes]) -> None:
        self._map.delete_packed(keys)


def enforce_desired(state: PolicyState) -> dict[bytes, int]:
    """Packed enforce keys of every enforced (endpoint, direction)."""
    out: dict[bytes, int] = {}
    for ep in state.endpoints:
        for name, direction in _DIR.items():
            if ep.enforced(name):  # type: ignore[arg-type]
                out[bytes(EnforceKey(ep.endpoint_id, direction))] = 1
    return out


class EnforceTarget:
    """The ``policy_enforce`` map: key -> enforced flag."""

    def __init__(self, maps: NodeMaps) -> None:
        self._map = maps.policy_enforce

    def items(self) -> Iterator[tuple[bytes, int]]:
        for k, v in self._map.items():
            yield bytes(k), int(v.enforced)

    def update_many(self, items: list[tuple[bytes, int]]) -> None:
        self._map.update_packed((k, bytes(EnforceValue(enforced=v))) for k, v in items)

    def delete_many(self, keys: list[bytes]) -> None:
        self._map.delete_packed(keys)


# ---- services ----


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """What one frontend should hold: its affinity and its healthy backends, in slot order
    (local first, then by backend ID), exactly as :func:`bpf.services.plan_service` lays them out."""

    affinity: Affinity
    backends: tuple[ServiceBackend, ...]

    @classmethod
    def of(cls, affinity: Affinity, backends: Iterable[ServiceBackend]) -> ServiceSpec:
        healthy = sorted({b for b in backends if b.healthy}, key=lambda b: (not b.local, b.backend_id))
        return cls(affinity, tuple(healthy))


def frontend_bytes(ip: str, port: int, proto: str | int = "TCP") -> bytes:
    """Packed :class:`FrontendKey`."""
    from bpf.layouts import frontend_key

    return bytes(frontend_key(ip, port, proto))


def backend_id(ip: str, port: int, proto: int, taken: Mapping[int, tuple[str, int, int]] | None = None) -> int:
    """A stable backend ID for an address (CRC32 of it, probing past IDs ``taken`` by others)."""
    ident = zlib.crc32(f"{ip}:{port}/{proto}".encode()) or 1
    while taken is not None and ident in taken and taken[ident] != (ip, port, proto):
        ident = (ident + 1) & 0xFFFFFFFF or 1
    return ident


class ServicesTarget:
    """The ``services``/``svc_slots``/``backends`` maps, one frontend per key."""

    def __init__(self, maps: NodeMaps) -> None:
        self._maps = maps

    def items(self) -> Iterator[tuple[bytes, ServiceSpec]]:
        for fk, sv in list(self._maps.services.items()):
            backends: list[ServiceBackend] = []
            for slot in range(sv.backend_count):
                sl = self._maps.svc_slots.get(SlotKey(fk, slot))
                bv = self._maps.backends.get(BackendKey(sl.backend_id)) if sl is not None else None
                if sl is None or bv is None:
                    continue  # half-written: the desired state will rewrite it
                backends.append(
                    ServiceBackend(
                        backend_id=sl.backend_id,
                        ip=ip_text(bv.family, bytes(bv.ip)),
                        port=socket.ntohs(bv.port),
                        proto=bv.proto,
                        cluster_id=bv.cluster_id,
                        local=bool(bv.flags & 2),
                        healthy=bool(bv.flags & 1),
                    )
                )
            yield bytes(fk), ServiceSpec.of(Affinity(sv.affinity), backends)

    def update_many(self, items: list[tuple[bytes, ServiceSpec]]) -> None:
        for raw, spec in items:
            fk = FrontendKey.from_buffer_copy(raw)
            write_service(self._maps, fk, plan_service(fk, spec.backends, spec.affinity))

    def delete_many(self, keys: list[bytes]) -> None:
        for raw in keys:
            delete_service(self._maps, FrontendKey.from_buffer_copy(raw))


@dataclass(frozen=True, slots=True)
class GlobalService:
    """A global service as this node's cluster has it: frontends ``(ip, port, protocol, port
    name)``, the local backends and the affinity (annotation ``service.cilium.io/affinity``)."""

    name: str
    frontends: tuple[tuple[str, int, str, str], ...]
    backends: tuple[Backend, ...]
    affinity: Affinity = Affinity.NONE


def parse_affinity(annotations: Mapping[str, str] | None) -> Affinity:
    """``local``/``remote`` (case-insensitive, also ``io.cilium/service-affinity``), else none."""
    annotations = annotations or {}
    value = (annotations.get("service.cilium.io/affinity") or annotations.get("io.cilium/service-affinity") or "")
    return {"local": Affinity.LOCAL, "remote": Affinity.REMOTE}.get(value.lower(), Affinity.NONE)


def services_desired(
    local: Iterable[GlobalService], remote: Iterable[ServiceBackends], local_cluster_id: int
) -> dict[bytes, ServiceSpec]:
    """Per frontend of each local global service: its local backends plus every remote cluster's
    backends of the same service (matched by port name, else by protocol when unnamed)."""
    remote_by_name = {s.service: s for s in remote}
    taken: dict[int, tuple[str, int, int]] = {}

    def make(b: Backend, cluster_id: int, is_local: bool) -> ServiceBackend:
        proto = PROTOCOLS.get(b.protocol.upper(), 6)
        ident = backend_id(b.address, b.port, proto, taken)
        taken[ident] = (b.address, b.port, proto)
        return ServiceBackend(ident, b.address, b.port, proto, cluster_id, is_local)

    out: dict[bytes, ServiceSpec] = {}
    for svc in sorted(local, key=lambda s: s.name):
        others = remote_by_name.get(svc.name)
        for ip, port, protocol, port_name in svc.frontends:
            def wanted(b: Backend, protocol: str = protocol, port_name: str = port_name) -> bool:
                return b.port_name == port_name and b.protocol.upper() == protocol.upper()

            backends = [make(b, local_cluster_id, True) for b in sorted(svc.backends) if wanted(b)]
            for cluster in others.clusters if others is not None else ():
                backends += [make(b, cluster.cluster_id, False) for b in cluster.backends if wanted(b)]
            out[frontend_bytes(ip, port, protocol)] = ServiceSpec.of(svc.affinity, backends)
    return out


# ---- endpoints ----


class EndpointsTarget:
    """The ``endpoints`` map: packed ifindex -> (endpoint id, identity)."""

    def __init__(self, maps: NodeMaps) -> None:
        self._map = maps.endpoints

    def items(self) -> Iterator[tuple[bytes, tuple[int, int]]]:
        for k, v in self._map.items():
            yield bytes(k), (int(v.endpoint_id), int(v.sec_identity))

    def update_many(self, items: list[tuple[bytes, tuple[int, int]]]) -> None:
        self._map.update_packed((k, bytes(EndpointValue(*v))) for k, v in items)

    def delete_many(self, keys: list[bytes]) -> None:
        self._map.delete_packed(keys)


def endpoint_key(ifindex: int) -> bytes:
    """Packed :class:`EndpointKey`."""
    return bytes(EndpointKey(ifindex))



# ---- routes (native routing) ----

ROUTE_PROTO = 201
"""Routing protocol number of the agent's native-routing routes (``ip route show proto 201``):
:class:`RoutesTarget` reads back exactly these, so it never touches anyone else's routes."""

_MAIN_TABLE = 254
_T = TypeVar("_T")


def routes_desired(routes: Iterable[NodeRoute], node_ip: str) -> dict[str, str]:
    """IPv4 pod CIDR -> next hop (the owning node's underlay IP), skipping this node's own
    CIDRs (``node_ip``) and anything not IPv4 via IPv4 (the programs are IPv4 only). The first
    route of a prefix wins."""
    out: dict[str, str] = {}
    for r in routes:
        if r.node_ip == node_ip or ":" in r.prefix or ":" in r.node_ip or not r.node_ip:
            continue
        out.setdefault(r.prefix, r.node_ip)
    return out


class RoutesTarget:
    """Kernel routes in the current network namespace's main table: ``"<net>/<len>"`` -> gateway,
    all with protocol ``proto`` and out of ``oif`` (the underlay device). ``ipr_factory`` makes a
    pyroute2 ``IPRoute`` (tests may bind it to a namespace). A destination held by a route of
    another protocol is left alone (and reported in :attr:`skipped`).

    pyroute2's synchronous ``IPRoute`` refuses to run on a thread with a running event loop (the
    reconciler's), so every call runs on a worker thread of this target and is waited for."""

    def __init__(self, oif: int, *, proto: int = ROUTE_PROTO, ipr_factory: Callable[[], Any] | None = None) -> None:
        self.oif = oif
        self.proto = proto
        self.skipped: set[str] = set()
        self._factory = ipr_factory or _iproute
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="routes-target")

    def _call(self, fn: Callable[[], _T]) -> _T:
        return self._worker.submit(fn).result()

    def items(self) -> Iterator[tuple[str, str]]:
        def read() -> list[tuple[str, int, str]]:
            with self._factory() as ipr:
                return _main_routes(ipr)

        for prefix, proto, gateway in self._call(read):
            if proto == self.proto:
                yield prefix, gateway

    def update_many(self, items: list[tuple[str, str]]) -> None:
        self._call(lambda: self._update(items))

    def delete_many(self, keys: list[str]) -> None:
        self._call(lambda: self._delete(keys))

    def close(self) -> None:
        self._worker.shutdown(wait=False)

    def _update(self, items: list[tuple[str, str]]) -> None:
        with self._factory() as ipr:
            foreign = {prefix for prefix, proto, _ in _main_routes(ipr) if proto != self.proto}
            for prefix, gateway in items:
                if prefix in foreign:
                    self.skipped.add(prefix)
                    continue
                self.skipped.discard(prefix)
                ipr.route(
                    "replace", dst=prefix, gateway=gateway, oif=self.oif, proto=self.proto, table=_MAIN_TABLE
                )

    def _delete(self, keys: list[str]) -> None:
        with self._factory() as ipr:
            ours = {prefix for prefix, proto, _ in _main_routes(ipr) if proto == self.proto}
            for prefix in keys:
                self.skipped.discard(prefix)
                if prefix in ours:
                    ipr.route("del", dst=prefix, proto=self.proto, table=_MAIN_TABLE)


def _main_routes(ipr: Any) -> list[tuple[str, int, str]]:
    """(prefix, protocol, gateway) of every IPv4 unicast route in the main table."""
    out = []
    for r in ipr.get_routes(family=socket.AF_INET, table=_MAIN_TABLE):
        table = r.get_attr("RTA_TABLE") or r.get("table")
        if table != _MAIN_TABLE or r.get("type") != 1:  # RTN_UNICAST
            continue
        dst = r.get_attr("RTA_DST") or "0.0.0.0"
        out.append((f"{dst}/{r['dst_len']}", int(r.get("proto") or 0), str(r.get_attr("RTA_GATEWAY") or "")))
    return out


def _iproute() -> Any:
    from pyroute2 import IPRoute

    return IPRoute()
