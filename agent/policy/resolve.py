"""Policies x identities -> per-endpoint enforcement and policy-map entries. Pure: no I/O, no
clock; the same input (in any order) gives the same output.

What it mirrors (Cilium's ``pkg/policy``: ``Repository.computePolicyEnforcementAndRules``,
``SelectorCache``, ``MapState``):

- Enforcement per endpoint and direction follows ``policy-enforcement``: ``default`` turns it on
  once a rule selecting the endpoint has default deny for that direction (an allow or deny
  section, or ``enableDefaultDeny``); ``always`` turns it on everywhere; ``never`` turns policy
  off altogether (no entries at all).
- Selectors are matched against identities once each, as set operations over an inverted
  label index (the selector cache); an empty selector (the ``all`` entity, an L4-only rule, an
  empty NetworkPolicy peer list) becomes the wildcard identity 0, as in the policy map.
- Deny takes precedence over allow: an allow entry that a deny entry covers (same or wildcard
  identity, a port range and protocol at least as wide) is removed. What is left is meant for a
  datapath that decides a packet as :meth:`PolicyState.verdict` does: ``deny`` if any deny entry
  matches, else ``allow`` if any allow entry matches or the direction is not enforced, else
  ``drop`` (default deny, counted by the datapath under its policy drop reason). A default-deny
  endpoint with no matching allow therefore has no entry.
- Allow entries are only produced for enforced directions (elsewhere everything is allowed);
  deny entries are produced whenever a rule selecting the endpoint has them.
- ``allow-localhost`` (Cilium's agent option): ``auto`` (the default) gives every endpoint with
  enforced ingress an allow entry for the ``reserved:host`` identity (1) on all ports, so the
  node's own traffic (kubelet probes) passes whatever the policies say (a deny still wins, as in
  Cilium's ``MapState``); ``policy``: the host is admitted only as a policy allows it (the
  ``host`` entity).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from agent.policy.model import (
    ALL_PORTS,
    ANY_SOURCE,
    RESERVED_IDENTITIES,
    Direction,
    EndpointSelector,
    PeerRule,
    Policy,
    PortRule,
    Protocol,
    Requirement,
)
from meshcore.wire.identity import LabelSet

__all__ = [
    "ALLOW_LOCALHOST",
    "HOST_IDENTITY",
    "WILDCARD_IDENTITY",
    "AllowLocalhost",
    "EndpointPolicy",
    "Enforcement",
    "LabelIndex",
    "PolicyEntry",
    "PolicyState",
    "ResolveStats",
    "Verdict",
    "compute_policy",
]

WILDCARD_IDENTITY = 0
"""The policy-map identity meaning "every peer"."""

HOST_IDENTITY = 1
"""``reserved:host``: the node's own addresses in the ipcache."""

Enforcement = Literal["default", "always", "never"]
AllowLocalhost = Literal["auto", "policy"]
ALLOW_LOCALHOST: tuple[AllowLocalhost, ...] = ("auto", "policy")
"""The ``--allow-localhost`` choices (see the module docstring)."""
Verdict = Literal["allow", "deny"]
_DIRECTIONS: tuple[Direction, Direction] = ("ingress", "egress")


class PolicyEntry(NamedTuple):
    """One policy-map entry: traffic of ``endpoint_id`` in ``direction`` with ``remote_identity``
    (0: any) on ports ``port``..``end_port`` (``port`` 0: all) of ``protocol`` (``ANY``: TCP,
    UDP and SCTP) is ``verdict``. A named tuple (immutable, ordered by its fields) because a
    computation can produce hundreds of thousands of them."""

    endpoint_id: int
    direction: Direction
    remote_identity: int
    port: int
    end_port: int
    protocol: Protocol
    verdict: Verdict

    @property
    def ports(self) -> PortRule:
        return PortRule(self.port, self.end_port, self.protocol)

    def to_json(self) -> dict[str, object]:
        return {
            "endpoint": self.endpoint_id,
            "direction": self.direction,
            "identity": self.remote_identity,
            "port": self.port,
            "end-port": self.end_port,
            "protocol": self.protocol,
            "verdict": self.verdict,
        }


@dataclass(frozen=True, slots=True)
class EndpointPolicy:
    """Enforcement of one local endpoint, and the policies (keys) whose rules select it."""

    endpoint_id: int
    ingress_enforced: bool
    egress_enforced: bool
    policies: tuple[str, ...] = ()

    def enforced(self, direction: Direction) -> bool:
        return self.ingress_enforced if direction == "ingress" else self.egress_enforced

    def to_json(self) -> dict[str, object]:
        return {
            "endpoint": self.endpoint_id,
            "ingress-enforced": self.ingress_enforced,
            "egress-enforced": self.egress_enforced,
            "policies": list(self.policies),
        }


@dataclass(frozen=True, slots=True)
class ResolveStats:
    """Sizes of one computation: distinct (bound) selectors evaluated against the identities,
    and how many selector lookups the cache answered."""

    policies: int = 0
    rules: int = 0
    identities: int = 0
    endpoints: int = 0
    selectors: int = 0
    cache_hits: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "policies": self.policies,
            "rules": self.rules,
            "identities": self.identities,
            "endpoints": self.endpoints,
            "selectors": self.selectors,
            "cache-hits": self.cache_hits,
        }


@dataclass(frozen=True, slots=True)
class PolicyState:
    """The result of :func:`compute_policy`; every part sorted."""

    enforcement: Enforcement
    endpoints: tuple[EndpointPolicy, ...] = ()
    entries: tuple[PolicyEntry, ...] = ()
    unsupported: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    errors: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    stats: ResolveStats = field(default_factory=ResolveStats, compare=False)

    def endpoint(self, endpoint_id: int) -> EndpointPolicy | None:
        for ep in self.endpoints:
            if ep.endpoint_id == endpoint_id:
                return ep
        return None

    def entries_for(self, endpoint_id: int, direction: Direction | None = None) -> list[PolicyEntry]:
        return [
            e for e in self.entries
            if e.endpoint_id == endpoint_id and (direction is None or e.direction == direction)
        ]

    def verdict(
        self, endpoint_id: int, direction: Direction, identity: int, port: int, protocol: Protocol
    ) -> Literal["allow", "deny", "drop"]:
        """How a datapath holding these entries decides one packet (see the module docstring):
        ``deny`` (explicit), ``allow``, or ``drop`` (default deny). A linear scan, for tests,
        status and debugging."""
        packet = PortRule(port, port, protocol)
        allowed = False
        for e in self.entries_for(endpoint_id, direction):
            if e.remote_identity not in (identity, WILDCARD_IDENTITY) or not e.ports.covers(packet):
                continue
            if e.verdict == "deny":
                return "deny"
            allowed = True
        ep = self.endpoint(endpoint_id)
        if allowed or ep is None or not ep.enforced(direction):
            return "allow"
        return "drop"

    def to_json(self) -> dict[str, Any]:
        return {
            "enforcement": self.enforcement,
            "endpoints": [e.to_json() for e in self.endpoints],
            "entries": [e.to_json() for e in self.entries],
            "unsupported": {k: list(v) for k, v in self.unsupported.items()},
            "errors": {k: list(v) for k, v in self.errors.items()},
            "stats": self.stats.to_json(),
        }


class LabelIndex:
    """Label sets by numeric ID with an inverted index, so a selector is evaluated once as set
    operations (Cilium's ``SelectorCache``: each selector's selections are computed once per
    identity set, then shared by every rule using it)."""

    def __init__(self, items: Mapping[int, LabelSet]) -> None:
        self.all: frozenset[int] = frozenset(items)
        self._by_value: dict[tuple[str, str], set[int]] = defaultdict(set)
        self._by_source_value: dict[tuple[str, str, str], set[int]] = defaultdict(set)
        self._by_key: dict[str, set[int]] = defaultdict(set)
        self._by_source_key: dict[tuple[str, str], set[int]] = defaultdict(set)
        for num, labels in items.items():
            for label in labels.labels:
                self._by_value[(label.key, label.value)].add(num)
                self._by_source_value[(label.source, label.key, label.value)].add(num)
                self._by_key[label.key].add(num)
                self._by_source_key[(label.source, label.key)].add(num)
        self._cache: dict[EndpointSelector, frozenset[int]] = {}
        self.hits = 0

    @property
    def evaluated(self) -> int:
        """Distinct selectors evaluated so far."""
        return len(self._cache)

    def _positive(self, req: Requirement) -> set[int]:
        """IDs with the label (``Exists``/``DoesNotExist``) or with one of the values (``In``/``NotIn``)."""
        empty: set[int] = set()
        if req.operator in ("Exists", "DoesNotExist"):
            if req.source == ANY_SOURCE:
                return self._by_key.get(req.key, empty)
            return self._by_source_key.get((req.source, req.key), empty)
        if req.source == ANY_SOURCE:
            sets = [self._by_value.get((req.key, v), empty) for v in req.values]
        else:
            sets = [self._by_source_value.get((req.source, req.key, v), empty) for v in req.values]
        if len(sets) == 1:
            return sets[0]
        return set().union(*sets)

    def select(self, selector: EndpointSelector) -> frozenset[int]:
        """The IDs whose labels satisfy ``selector`` (its scope must already be bound)."""
        cached = self._cache.get(selector)
        if cached is not None:
            self.hits += 1
            return cached
        positive: list[set[int]] = []
        negative: list[set[int]] = []
        for req in selector.requirements:
            (positive if req.operator in ("In", "Exists") else negative).append(self._positive(req))
        if positive:
            positive.sort(key=len)
            result = set(positive[0])
            for other in positive[1:]:
                if not result:
                    break
                result &= other
        else:
            result = set(self.all)
        for other in negative:
            if not result:
                break
            result -= other
        frozen = frozenset(result)
        self._cache[selector] = frozen
        return frozen


_Ports = tuple[int, int, Protocol]
_Key = tuple[int, int, int, Protocol]
"""(identity, port, end_port, protocol): plain tuples, as they are hashed by the hundred thousand."""


def compute_policy(
    policies: Iterable[Policy],
    local_endpoints: Iterable[tuple[int, LabelSet]],
    identities: Mapping[int, LabelSet],
    *,
    local_cluster: str,
    enforcement: Enforcement = "default",
    default_local_cluster: bool = True,
    allow_localhost: AllowLocalhost = "auto",
) -> PolicyState:
    """Resolve ``policies`` for this node's endpoints (``(endpoint id, labels)``; ids are unique)
    against every known identity (local, remote and reserved; reserved IDs 1-10 missing from
    ``identities`` are added with their ``reserved:`` labels). ``local_cluster`` resolves the
    cluster scope of peer selectors (``default_local_cluster`` is Cilium's
    ``policy-default-local-cluster``); ``allow_localhost`` is Cilium's ``allow-localhost`` (see
    the module docstring)."""
    if enforcement not in ("default", "always", "never"):
        raise ValueError(f"enforcement must be default, always or never, got {enforcement!r}")
    if allow_localhost not in ALLOW_LOCALHOST:
        raise ValueError(f"allow_localhost must be auto or policy, got {allow_localhost!r}")
    ordered = sorted(policies, key=lambda p: (p.key, p.resource_version, repr(p.rules)))
    all_identities: dict[int, LabelSet] = dict(RESERVED_IDENTITIES)
    all_identities.update(identities)
    endpoints = dict(local_endpoints)
    id_index = LabelIndex(all_identities)
    ep_index = LabelIndex(endpoints)

    unsupported: dict[str, set[str]] = defaultdict(set)
    errors: dict[str, set[str]] = defaultdict(set)
    selected_by: dict[int, set[str]] = defaultdict(set)
    default_deny: set[tuple[int, Direction]] = set()
    allows: dict[tuple[int, Direction], list[frozenset[_Key]]] = defaultdict(list)
    denies: dict[tuple[int, Direction], list[frozenset[_Key]]] = defaultdict(list)
    bound: dict[EndpointSelector, EndpointSelector] = {}
    templates: dict[tuple[PeerRule, ...], frozenset[_Key]] = {}
    rule_count = 0

    def template(peer_rules: tuple[PeerRule, ...]) -> frozenset[_Key]:
        """(identity, ports) pairs of a section's peer rules, computed once per distinct section."""
        cached = templates.get(peer_rules)
        if cached is not None:
            return cached
        keys: set[_Key] = set()
        for peer_rule in peer_rules:
            ids: set[int] = set()
            for selector in peer_rule.peers:
                concrete = bound.get(selector)
                if concrete is None:
                    concrete = bound[selector] = selector.bind(
                        local_cluster, default_local_cluster=default_local_cluster
                    )
                if concrete.is_wildcard:
                    ids.add(WILDCARD_IDENTITY)
                else:
                    ids.update(id_index.select(concrete))
            for ports in peer_rule.ports or (ALL_PORTS,):
                port, end, proto = ports.port, ports.end_port, ports.protocol
                keys.update((num, port, end, proto) for num in ids)
        frozen = templates[peer_rules] = frozenset(keys)
        return frozen

    for policy in ordered:
        if policy.unsupported:
            unsupported[policy.key].update(policy.unsupported)
        if policy.errors:
            errors[policy.key].update(policy.errors)
        if enforcement == "never":
            continue
        for rule in policy.rules:
            rule_count += 1
            selected = ep_index.select(rule.endpoint_selector)
            if not selected:
                continue
            for ep in selected:
                selected_by[ep].add(policy.key)
            for direction in _DIRECTIONS:
                if rule.default_deny(direction):
                    default_deny.update((ep, direction) for ep in selected)
                for deny, target in ((False, allows), (True, denies)):
                    section = rule.peer_rules(direction, deny=deny)
                    if not section:
                        continue
                    keys = template(section)
                    if keys:
                        for ep in selected:
                            target[(ep, direction)].append(keys)

    endpoint_policies: list[EndpointPolicy] = []
    rows: list[tuple[int, Direction, int, int, int, Protocol, Verdict]] = []
    for ep in sorted(endpoints):
        enforced: dict[Direction, bool] = {
            d: enforcement == "always" or (enforcement == "default" and (ep, d) in default_deny) for d in _DIRECTIONS
        }
        endpoint_policies.append(
            EndpointPolicy(ep, enforced["ingress"], enforced["egress"], tuple(sorted(selected_by.get(ep, ()))))
        )
        if enforcement == "never":
            continue
        for direction in _DIRECTIONS:
            deny_keys: set[_Key] = set().union(*denies.get((ep, direction), ()))
            rows.extend((ep, direction, num, port, end, proto, "deny") for num, port, end, proto in deny_keys)
            if not enforced[direction]:
                continue
            allow_keys: set[_Key] = set().union(*allows.get((ep, direction), ()))
            if direction == "ingress" and allow_localhost == "auto":
                allow_keys.add((HOST_IDENTITY, ALL_PORTS.port, ALL_PORTS.end_port, ALL_PORTS.protocol))
            if deny_keys:
                allow_keys = _without_denied(allow_keys, deny_keys)
            rows.extend((ep, direction, num, port, end, proto, "allow") for num, port, end, proto in allow_keys)
    rows.sort()
    return PolicyState(
        enforcement=enforcement,
        endpoints=tuple(endpoint_policies),
        entries=tuple(map(PolicyEntry._make, rows)),
        unsupported={k: tuple(sorted(v)) for k, v in sorted(unsupported.items())},
        errors={k: tuple(sorted(v)) for k, v in sorted(errors.items())},
        stats=ResolveStats(
            policies=len(ordered),
            rules=rule_count,
            identities=len(all_identities),
            endpoints=len(endpoints),
            selectors=id_index.evaluated,
            cache_hits=id_index.hits,
        ),
    )


def _covers(deny: _Ports, allow: _Ports) -> bool:
    """:meth:`PortRule.covers` on plain tuples."""
    port, end, proto = deny
    if proto != "ANY" and proto != allow[2]:
        return False
    if port == 0:
        return True
    return allow[0] != 0 and port <= allow[0] and allow[1] <= end


def _without_denied(allow_keys: set[_Key], deny_keys: set[_Key]) -> set[_Key]:
    """Drop the allows a deny covers (deny precedence, as Cilium's ``MapState`` insertion)."""
    by_identity: dict[int, list[_Ports]] = defaultdict(list)
    for num, port, end, proto in deny_keys:
        by_identity[num].append((port, end, proto))
    wildcard = by_identity.pop(WILDCARD_IDENTITY, [])
    kept: set[_Key] = set()
    for key in allow_keys:
        num = key[0]
        specific = by_identity.get(num)
        if specific is None and not wildcard:
            kept.add(key)
            continue
        ports = (key[1], key[2], key[3])
        if any(_covers(d, ports) for d in wildcard) or (specific and any(_covers(d, ports) for d in specific)):
            continue
        kept.add(key)
    return kept
