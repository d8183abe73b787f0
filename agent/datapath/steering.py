"""Which packets enter the WireGuard device: policy routing the agent keeps (``--encryption
wireguard``). A pure desired state (:func:`steering_desired`) and two thin pyroute2 targets
(:class:`RulesTarget`, :class:`SteeringRoutesTarget`) for :class:`~meshcore.reconcile.Reconciler`.

Our eBPF programs do not redirect to the WireGuard device (Cilium's ``wg_maybe_redirect_to_encrypt``);
the kernel's routing does, as in Cilium 1.10-1.13 (rule priority 1, table 201):

- tunnel mode (Cilium's double encapsulation): rule ``1: ipproto udp dport 8472 lookup 201``;
  table 201 holds ``<peer node IP>/32 dev <wg>`` for every node IP of every peer, so the VXLAN
  packets to a peer enter the device and leave as WireGuard UDP 51871; VXLAN to a node that is no
  peer finds nothing in table 201 and falls through to the main table (plaintext);
- native mode: rule ``1: not fwmark 0xe00/0xff000f00 lookup 201``; table 201 holds the peers' pod
  CIDRs ``dev <wg>`` (the main table's ``<pod CIDR> via <node IP>`` routes stay, for non-peers);
- node encryption (``--encryption-node-encryption``, this node not opted out): rule
  ``2: not fwmark 0xe00/0xff000f00 lookup 202``; table 202 holds the node IPs of the peers that did
  not opt out (encryption key != 0), so host traffic to them is encrypted too.

WireGuard's own UDP carries the device fwmark 0xE00 and must never be steered back into the device.
A FIB rule's ``not`` inverts its whole selector, so it cannot be combined with the port match:
the tunnel rule leaves WireGuard's packets out by their port (51871, never 8472); the other rules by
the mark. The mask includes the top byte so that the datapath's identity marks (``0xCE`` in the top
byte, an identity in the low 24 bits, which may have 0xE00 in them) never look like WireGuard's.

Every route here has ``src <node IP>`` (the device has no address of its own: the peer only
accepts the node IPs it knows) and protocol :data:`STEERING_PROTO`; every rule protocol
:data:`STEERING_PROTO` too. The targets read back and touch only rules of priority 1/2 pointing to
tables 201/202, and routes of :data:`STEERING_PROTO` in those tables (mark and sweep: a restart
writes nothing; ``--encryption none`` removes them all with :func:`remove_steering`). IPv4 only, as
the programs.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "WIREGUARD_TABLE",
    "NODE_TABLE",
    "WIREGUARD_PRIORITY",
    "NODE_PRIORITY",
    "STEERING_PROTO",
    "MARK_MASK",
    "VXLAN_PORT",
    "Rule",
    "RouteKey",
    "RouteValue",
    "SteeringPeer",
    "Steering",
    "steering_desired",
    "RulesTarget",
    "SteeringRoutesTarget",
    "remove_steering",
]

WIREGUARD_TABLE = 201
NODE_TABLE = 202
WIREGUARD_PRIORITY = 1
NODE_PRIORITY = 2
STEERING_PROTO = 201
"""Protocol of the agent's rules and routes (``ip rule``/``ip route show table 201 proto 201``)."""
WIREGUARD_FWMARK = 0xE00
MARK_MASK = 0xFF000F00
VXLAN_PORT = 8472
_UDP = 17
_FIB_RULE_INVERT = 0x2
_SCOPE_LINK = 253
_TABLES = (WIREGUARD_TABLE, NODE_TABLE)
_PRIORITIES = (WIREGUARD_PRIORITY, NODE_PRIORITY)
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, order=True)
class Rule:
    """One IPv4 policy-routing rule: ``priority: [not] [fwmark M/mask] [ipproto P dport D] lookup table``."""

    priority: int
    table: int
    ipproto: int = 0
    dport: int = 0
    fwmark: int = 0
    fwmask: int = 0
    invert: bool = False

    def __str__(self) -> str:
        parts = [f"{self.priority}:"]
        if self.invert:
            parts.append("not")
        if self.fwmask:
            parts.append(f"fwmark 0x{self.fwmark:x}/0x{self.fwmask:x}")
        if self.ipproto:
            parts.append("ipproto udp" if self.ipproto == _UDP else f"ipproto {self.ipproto}")
        if self.dport:
            parts.append(f"dport {self.dport}")
        parts.append(f"lookup {self.table}")
        return " ".join(parts)


@dataclass(frozen=True, slots=True, order=True)
class RouteKey:
    """A route's identity: its table and destination prefix."""

    table: int
    prefix: str

    def __str__(self) -> str:
        return f"{self.prefix} table {self.table}"


@dataclass(frozen=True, slots=True)
class RouteValue:
    """Where a steering route sends: out of device ``oif`` with source address ``src``."""

    oif: int
    src: str


@dataclass(frozen=True, slots=True)
class SteeringPeer:
    """A configured WireGuard peer as steering needs it. ``node_encryption``: the peer did not opt
    out of node encryption (its advertised encryption key is not 0)."""

    node: str
    node_ips: tuple[str, ...]
    pod_cidrs: tuple[str, ...] = ()
    node_encryption: bool = True


@dataclass(frozen=True)
class Steering:
    """The rules and routes steering should hold (reconciler desired states)."""

    rules: dict[Rule, bool]
    routes: dict[RouteKey, RouteValue]


def _v4_host(ip: str) -> str | None:
    try:
        addr = ipaddress.ip_address(ip.split("/")[0])
    except ValueError:
        return None
    return f"{addr}/32" if addr.version == 4 else None


def _v4_net(cidr: str) -> str | None:
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return None
    return str(net) if net.version == 4 else None


def steering_desired(
    peers: Iterable[SteeringPeer],
    *,
    routing_mode: str,
    oif: int,
    node_ip: str,
    node_encryption: bool = False,
    oif_by_node: Mapping[str, int] | None = None,
) -> Steering:
    """The rules and routes for ``peers`` (see the module docstring). ``oif`` is the WireGuard
    device's ifindex, ``node_ip`` this node's IP (the routes' source; never a destination here).
    ``node_encryption``: node encryption is on and this node did not opt out. ``oif_by_node``: the
    peer nodes steered through another device (a key rotation's transition device). A prefix
    claimed by several peers goes to the first by node name."""
    if routing_mode not in ("tunnel", "native"):
        raise ValueError(f"routing_mode must be 'tunnel' or 'native', not {routing_mode!r}")
    by_mark = {"fwmark": WIREGUARD_FWMARK, "fwmask": MARK_MASK, "invert": True}
    rules: dict[Rule, bool] = {}
    if routing_mode == "tunnel":
        rules[Rule(WIREGUARD_PRIORITY, WIREGUARD_TABLE, ipproto=_UDP, dport=VXLAN_PORT)] = True
    else:
        rules[Rule(WIREGUARD_PRIORITY, WIREGUARD_TABLE, **by_mark)] = True  # type: ignore[arg-type]
    if node_encryption:
        rules[Rule(NODE_PRIORITY, NODE_TABLE, **by_mark)] = True  # type: ignore[arg-type]
    own = _v4_host(node_ip)
    main = RouteValue(oif, node_ip)
    overrides = oif_by_node or {}
    routes: dict[RouteKey, RouteValue] = {}
    for peer in sorted(peers, key=lambda p: p.node):
        other = overrides.get(peer.node)
        value = main if other is None else RouteValue(other, node_ip)
        hosts = [h for h in map(_v4_host, peer.node_ips) if h is not None and h != own]
        if routing_mode == "tunnel":
            wanted = hosts
        else:
            wanted = [n for n in map(_v4_net, peer.pod_cidrs) if n is not None]
        for prefix in wanted:
            routes.setdefault(RouteKey(WIREGUARD_TABLE, prefix), value)
        if node_encryption and peer.node_encryption:
            for prefix in hosts:
                routes.setdefault(RouteKey(NODE_TABLE, prefix), value)
    return Steering(rules, routes)


# ---- I/O: thin pyroute2 targets ----


def _iproute() -> Any:
    from pyroute2 import IPRoute

    return IPRoute()


class _Netlink:
    """Runs pyroute2 calls on a worker thread of its own: pyroute2's synchronous ``IPRoute``
    refuses to run on a thread with a running event loop (the reconciler's)."""

    def __init__(self, ipr_factory: Callable[[], Any] | None, name: str) -> None:
        self._factory = ipr_factory or _iproute
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def _call(self, fn: Callable[[Any], _T]) -> _T:
        def run() -> _T:
            with self._factory() as ipr:
                return fn(ipr)

        return self._worker.submit(run).result()

    def close(self) -> None:
        self._worker.shutdown(wait=False)


def _read_rules(ipr: Any) -> list[Rule]:
    out = []
    for r in ipr.get_rules(family=socket.AF_INET):
        priority = r.get_attr("FRA_PRIORITY") or 0
        table = r.get_attr("FRA_TABLE") or r.get("table")
        if priority not in _PRIORITIES or table not in _TABLES:
            continue
        dport = 0
        ports = r.get_attr("FRA_DPORT_RANGE")
        if ports:
            dport = int(str(ports).split(":")[0])
        out.append(
            Rule(
                priority=int(priority),
                table=int(table),
                ipproto=int(r.get_attr("FRA_IP_PROTO") or 0),
                dport=dport,
                fwmark=int(r.get_attr("FRA_FWMARK") or 0),
                fwmask=int(r.get_attr("FRA_FWMASK") or 0),
                invert=bool(r.get("flags", 0) & _FIB_RULE_INVERT),
            )
        )
    return out


def _rule_args(rule: Rule) -> dict[str, Any]:
    args: dict[str, Any] = {"family": socket.AF_INET, "priority": rule.priority, "table": rule.table}
    if rule.ipproto:
        args["ip_proto"] = rule.ipproto
    if rule.dport:
        args["dport_range"] = f"{rule.dport}:{rule.dport}"
    if rule.fwmask:
        args["fwmark"] = rule.fwmark
        args["fwmask"] = rule.fwmask
    if rule.invert:
        args["flags"] = _FIB_RULE_INVERT
    return args


class RulesTarget(_Netlink):
    """The steering rules of the current network namespace (rules of priority 1/2 to table 201/202)."""

    def __init__(self, *, ipr_factory: Callable[[], Any] | None = None) -> None:
        super().__init__(ipr_factory, "steering-rules")

    def items(self) -> Iterator[tuple[Rule, bool]]:
        for rule in self._call(_read_rules):
            yield rule, True

    def update_many(self, items: list[tuple[Rule, bool]]) -> None:
        def add(ipr: Any) -> None:
            present = set(_read_rules(ipr))
            for rule, _ in items:
                if rule not in present:
                    ipr.rule("add", protocol=STEERING_PROTO, **_rule_args(rule))

        self._call(add)

    def delete_many(self, keys: list[Rule]) -> None:
        self._call(lambda ipr: _delete_rules(ipr, keys))


def _delete_rules(ipr: Any, rules: Iterable[Rule]) -> None:
    present = set(_read_rules(ipr))
    for rule in rules:
        if rule in present:
            ipr.rule("del", **_rule_args(rule))


def _read_routes(ipr: Any) -> dict[RouteKey, tuple[RouteValue, int]]:
    """Every IPv4 route of tables 201/202: key -> (value, protocol)."""
    out: dict[RouteKey, tuple[RouteValue, int]] = {}
    for table in _TABLES:
        for r in ipr.get_routes(family=socket.AF_INET, table=table):
            if (r.get_attr("RTA_TABLE") or r.get("table")) != table:
                continue
            dst = r.get_attr("RTA_DST") or "0.0.0.0"
            key = RouteKey(table, f"{dst}/{r['dst_len']}")
            value = RouteValue(int(r.get_attr("RTA_OIF") or 0), str(r.get_attr("RTA_PREFSRC") or ""))
            out[key] = (value, int(r.get("proto") or 0))
    return out


class SteeringRoutesTarget(_Netlink):
    """The routes of tables 201/202 with protocol :data:`STEERING_PROTO` (others are never touched:
    a destination held by another protocol's route is skipped and listed in :attr:`skipped`)."""

    def __init__(self, *, ipr_factory: Callable[[], Any] | None = None) -> None:
        super().__init__(ipr_factory, "steering-routes")
        self.skipped: set[RouteKey] = set()

    def items(self) -> Iterator[tuple[RouteKey, RouteValue]]:
        for key, (value, proto) in self._call(_read_routes).items():
            if proto == STEERING_PROTO:
                yield key, value

    def update_many(self, items: list[tuple[RouteKey, RouteValue]]) -> None:
        def write(ipr: Any) -> None:
            current = _read_routes(ipr)
            for key, value in items:
                held = current.get(key)
                if held is not None and held[1] != STEERING_PROTO:
                    self.skipped.add(key)
                    continue
                self.skipped.discard(key)
                ipr.route(
                    "replace",
                    dst=key.prefix,
                    table=key.table,
                    oif=value.oif,
                    prefsrc=value.src or None,
                    proto=STEERING_PROTO,
                    scope=_SCOPE_LINK,
                )

        self._call(write)

    def delete_many(self, keys: list[RouteKey]) -> None:
        def delete(ipr: Any) -> None:
            _delete_routes(ipr, keys)
            self.skipped.difference_update(keys)

        self._call(delete)


def _delete_routes(ipr: Any, keys: Iterable[RouteKey]) -> None:
    current = _read_routes(ipr)
    for key in keys:
        held = current.get(key)
        if held is not None and held[1] == STEERING_PROTO:
            ipr.route("del", dst=key.prefix, table=key.table, proto=STEERING_PROTO, scope=_SCOPE_LINK)


def remove_steering(ipr_factory: Callable[[], Any] | None = None) -> tuple[list[Rule], list[RouteKey]]:
    """Remove every steering rule and route (blocking; not on an event loop's thread): what an
    agent with ``--encryption none`` does on a node that had WireGuard. Returns what it removed."""
    with (ipr_factory or _iproute)() as ipr:
        rules = _read_rules(ipr)
        routes = [k for k, (_, proto) in _read_routes(ipr).items() if proto == STEERING_PROTO]
        _delete_rules(ipr, rules)
        _delete_routes(ipr, routes)
    return rules, routes
