"""Kubernetes policy objects -> :class:`~agent.policy.model.Policy`.

Mirrors Cilium's translation of the objects it watches:

- ``CiliumNetworkPolicy`` / ``CiliumClusterwideNetworkPolicy`` (``spec`` and ``specs``):
  ``pkg/k8s/apis/cilium.io/utils/utils.go`` ``ParseToCiliumRule``. A namespaced policy's
  ``endpointSelector`` gets ``k8s:io.kubernetes.pod.namespace=<ns>`` (unless it selects
  ``reserved:init``); each peer selector (``getEndpointSelector``) is returned unchanged when it
  names a ``reserved:`` label, else it gets the policy's namespace unless it names the namespace
  (or namespace labels) itself - a clusterwide policy gets ``Exists`` on the namespace label
  instead - and, unless it names ``io.cilium.k8s.policy.cluster`` (in ``matchLabels`` or
  ``matchExpressions``), the local-cluster scope of ``addClusterFilterByDefault``
  (``policy-default-local-cluster=true``), resolved by
  :meth:`~agent.policy.model.EndpointSelector.bind`.
- ``networking.k8s.io/v1`` ``NetworkPolicy``: ``pkg/k8s/network_policy.go``: pod labels are
  ``k8s:`` labels, a ``namespaceSelector`` matches ``k8s:io.cilium.k8s.namespace.labels.<key>``
  (an empty one: any namespace), an empty ``from``/``to`` admits every peer, an absent ``port``
  means every port of the protocol (default TCP), ``policyTypes`` defaults as the API server does.

Only the L3/L4, identity-based subset is enforced. Every other field present in a policy is
named in :attr:`Policy.unsupported <agent.policy.model.Policy.unsupported>`, and handled so the
result errs towards dropping: an allow rule narrowed by something not understood (L7 ``rules``,
TLS/SNI, ``authentication``, ``fromRequires``, ICMP-only ports, named ports) admits nothing; a
peer kind not understood (CIDR, FQDN, services, groups, nodes) is left out of the rule's peers;
in deny rules the unsupported parts are simply not denied (reported, as the deny is weaker than
written). Nothing here raises for bad input: malformed parts land in ``Policy.errors``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from agent.policy.model import (
    ALL_PORTS,
    NAMESPACE_LABEL,
    NAMESPACE_LABELS_PREFIX,
    Direction,
    EndpointSelector,
    PeerRule,
    Policy,
    PolicyKind,
    PortRule,
    Protocol,
    Requirement,
    Rule,
    SelectorError,
)
from meshcore.wire.identity import CLUSTER_LABEL

__all__ = ["ENTITIES", "parse_cnp", "parse_network_policy", "parse_policy", "entity_selectors"]

_RESERVED_ENTITIES = (
    "host", "init", "ingress", "remote-node", "health", "unmanaged", "none", "kube-apiserver", "world-ipv4",
    "world-ipv6",
)
ENTITIES: frozenset[str] = frozenset((*_RESERVED_ENTITIES, "all", "world", "cluster"))
"""Entity names understood in ``fromEntities``/``toEntities`` (all of Cilium's ``api.Entity``)."""

_PROTOCOLS: frozenset[str] = frozenset(("TCP", "UDP", "SCTP", "ANY"))
# toPorts[] fields that narrow an allow (L7 / TLS / proxy); without them the rule would admit more.
_L7_FIELDS = ("rules", "serverNames", "terminatingTLS", "originatingTLS", "listener")
_RULE_FIELDS = frozenset((
    "endpointSelector", "nodeSelector", "ingress", "ingressDeny", "egress", "egressDeny", "labels", "description",
    "enableDefaultDeny", "log",
))


def _reserved(name: str) -> EndpointSelector:
    return EndpointSelector.labels(("reserved", name, ""))


def entity_selectors(entity: str) -> tuple[EndpointSelector, ...] | None:
    """Cilium's ``EntitySelectorMapping`` (``pkg/policy/api/entity.go``, ``InitEntities``):
    ``all`` is the wildcard, ``world`` the three world identities, ``cluster`` the reserved
    in-cluster identities plus everything labelled with the local cluster. ``None`` if unknown."""
    if entity == "all":
        return (EndpointSelector(),)
    if entity == "world":
        return (_reserved("world"), _reserved("world-ipv4"), _reserved("world-ipv6"))
    if entity == "cluster":
        inner = ("host", "remote-node", "init", "ingress", "health", "unmanaged", "kube-apiserver")
        return (*(_reserved(n) for n in inner), EndpointSelector(scope="local"))
    if entity in _RESERVED_ENTITIES:
        return (_reserved(entity),)
    return None


class _Ctx:
    """Collects what a parse could not enforce or understand."""

    def __init__(self) -> None:
        self.unsupported: list[str] = []
        self.errors: list[str] = []

    def skip(self, path: str, what: str) -> None:
        self.unsupported.append(f"{path}: {what}")

    def error(self, path: str, what: str) -> None:
        self.errors.append(f"{path}: {what}")


def _meta(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        meta = {}
    return str(meta.get("name") or ""), str(meta.get("namespace") or ""), str(meta.get("resourceVersion") or "")


def parse_policy(obj: Mapping[str, Any]) -> Policy:
    """Dispatch on ``kind``: :func:`parse_network_policy` for ``NetworkPolicy``, else :func:`parse_cnp`."""
    if isinstance(obj, Mapping) and obj.get("kind") == "NetworkPolicy":
        return parse_network_policy(obj)
    return parse_cnp(obj)


# ---------------------------------------------------------------- CiliumNetworkPolicy


def parse_cnp(obj: Mapping[str, Any]) -> Policy:
    """Parse a ``CiliumNetworkPolicy`` or ``CiliumClusterwideNetworkPolicy`` (by ``kind``; a
    clusterwide policy ignores any namespace). Never raises; see the module docstring."""
    ctx = _Ctx()
    if not isinstance(obj, Mapping):
        return Policy("CiliumNetworkPolicy", "", errors=(f"policy must be an object, got {type(obj).__name__}",))
    clusterwide = obj.get("kind") == "CiliumClusterwideNetworkPolicy"
    kind: PolicyKind = "CiliumClusterwideNetworkPolicy" if clusterwide else "CiliumNetworkPolicy"
    name, namespace, version = _meta(obj)
    if kind == "CiliumClusterwideNetworkPolicy":
        namespace = ""
    elif not namespace:
        ctx.error("metadata.namespace", "a CiliumNetworkPolicy needs a namespace")
    if not name:
        ctx.error("metadata.name", "required")
    rules: list[Rule] = []
    specs: list[tuple[str, object]] = []
    if obj.get("spec") is not None:
        specs.append(("spec", obj["spec"]))
    raw_specs = obj.get("specs")
    if raw_specs is not None:
        if isinstance(raw_specs, list):
            specs.extend((f"specs[{i}]", s) for i, s in enumerate(raw_specs))
        else:
            ctx.error("specs", "must be a list")
    if not specs:
        ctx.error("spec", "the policy has neither spec nor specs")
    for path, spec in specs:
        try:
            rule = _cnp_rule(spec, path, namespace, ctx)
        except (SelectorError, TypeError, ValueError, KeyError, AttributeError) as err:
            ctx.error(path, f"rule dropped: {err}")
            continue
        if rule is not None:
            rules.append(rule)
    return Policy(kind, name, namespace, tuple(rules), tuple(ctx.unsupported), tuple(ctx.errors), version)


def _cnp_rule(spec: object, path: str, namespace: str, ctx: _Ctx) -> Rule | None:
    if not isinstance(spec, Mapping):
        ctx.error(path, "rule dropped: must be an object")
        return None
    for unknown in sorted(set(map(str, spec)) - _RULE_FIELDS):
        ctx.skip(f"{path}.{unknown}", "unknown field, ignored")
    if spec.get("endpointSelector") is None:
        if spec.get("nodeSelector") is not None:
            ctx.skip(f"{path}.nodeSelector", "host policy (nodeSelector) not enforced; rule skipped")
        else:
            ctx.error(path, "rule dropped: needs an endpointSelector")
        return None
    selector = EndpointSelector.from_k8s(spec["endpointSelector"])
    matches_init = selector.has_key("init", ("reserved",))
    if namespace and not matches_init:
        selector = selector.with_match("k8s", NAMESPACE_LABEL, namespace)
    sections: dict[str, tuple[PeerRule, ...]] = {}
    present: dict[str, bool] = {}
    for section in ("ingress", "egress", "ingressDeny", "egressDeny"):
        raw = spec.get(section)
        present[section] = isinstance(raw, list) and len(raw) > 0
        if raw is None:
            sections[section] = ()
            continue
        if not isinstance(raw, list):
            raise SelectorError(f"{section} must be a list")
        direction: Direction = "ingress" if section.startswith("ingress") else "egress"
        deny = section.endswith("Deny")
        peer_rules = []
        for i, element in enumerate(raw):
            peer_rule = _cnp_peer_rule(element, f"{path}.{section}[{i}]", direction, deny, namespace, ctx)
            if peer_rule is not None:
                peer_rules.append(peer_rule)
        sections[section] = tuple(peer_rules)
    default_deny = {"ingress": present["ingress"] or present["ingressDeny"],
                    "egress": present["egress"] or present["egressDeny"]}
    enable = spec.get("enableDefaultDeny")
    if enable is not None:
        if not isinstance(enable, Mapping):
            raise SelectorError("enableDefaultDeny must be an object")
        for direction_name in ("ingress", "egress"):
            value = enable.get(direction_name)
            if value is not None:
                if not isinstance(value, bool):
                    raise SelectorError(f"enableDefaultDeny.{direction_name} must be a boolean")
                default_deny[direction_name] = value
    description = spec.get("description")
    return Rule(
        endpoint_selector=selector,
        ingress=sections["ingress"],
        egress=sections["egress"],
        ingress_deny=sections["ingressDeny"],
        egress_deny=sections["egressDeny"],
        default_deny_ingress=default_deny["ingress"],
        default_deny_egress=default_deny["egress"],
        description=description if isinstance(description, str) else "",
    )


def _scope_peer(selector: EndpointSelector, namespace: str) -> EndpointSelector:
    """Cilium's ``getEndpointSelector`` for a peer of a CNP (``namespace``) or CCNP (``""``)."""
    if selector.has_source("reserved"):
        return selector
    if not selector.has_key(NAMESPACE_LABEL):
        if not namespace:
            selector = selector.with_requirement(Requirement("k8s", NAMESPACE_LABEL, "Exists"))
        elif not selector.has_key_prefix(NAMESPACE_LABELS_PREFIX):
            selector = selector.with_match("k8s", NAMESPACE_LABEL, namespace)
    return selector if selector.has_key(CLUSTER_LABEL) else selector.with_scope("default-local")


def _cnp_peer_rule(
    raw: object, path: str, direction: Direction, deny: bool, namespace: str, ctx: _Ctx
) -> PeerRule | None:
    """One ``IngressRule``/``EgressRule`` (or deny variant); ``None`` when it enforces nothing."""
    if not isinstance(raw, Mapping):
        raise SelectorError(f"{path} must be an object")
    verb = "admits nothing" if not deny else "denies nothing"
    side = "from" if direction == "ingress" else "to"
    endpoints_key, entities_key = f"{side}Endpoints", f"{side}Entities"
    ignored_peers = {
        f"{side}CIDR": "CIDR peers", f"{side}CIDRSet": "CIDR peers", f"{side}Groups": "cloud-provider group peers",
        f"{side}Nodes": "node-selector peers",
    }
    if direction == "egress":
        ignored_peers |= {"toFQDNs": "FQDN peers", "toServices": "service peers"}
    requires_key = f"{side}Requires"
    known = {endpoints_key, entities_key, requires_key, "toPorts", "icmps", "authentication", *ignored_peers}
    for unknown in sorted(set(map(str, raw)) - known):
        ctx.skip(f"{path}.{unknown}", "unknown field, ignored")

    has_l3 = any(raw.get(k) is not None for k in (endpoints_key, entities_key, *ignored_peers))
    selectors: list[EndpointSelector] = []
    empty_list = False
    endpoints = raw.get(endpoints_key)
    if endpoints is not None:
        if not isinstance(endpoints, list):
            raise SelectorError(f"{endpoints_key} must be a list")
        empty_list |= not endpoints
        for i, sel in enumerate(endpoints):
            try:
                selectors.append(_scope_peer(EndpointSelector.from_k8s(sel), namespace))
            except SelectorError as err:
                raise SelectorError(f"{endpoints_key}[{i}]: {err}") from None
    entities = raw.get(entities_key)
    if entities is not None:
        if not isinstance(entities, list):
            raise SelectorError(f"{entities_key} must be a list")
        empty_list |= not entities
        for entity in entities:
            mapped = entity_selectors(str(entity))
            if mapped is None:
                ctx.skip(f"{path}.{entities_key}", f"unknown entity {entity!r} not enforced")
            else:
                selectors.extend(mapped)
    for key, what in ignored_peers.items():
        if raw.get(key) is not None:
            ctx.skip(f"{path}.{key}", f"{what} not enforced" + ("" if deny else " (those peers are not admitted)"))
    if raw.get(requires_key) is not None:
        if deny:
            ctx.skip(f"{path}.{requires_key}", "not enforced; the deny applies without the requirement")
        else:
            ctx.skip(f"{path}.{requires_key}", "not enforced; this rule admits nothing (fail closed)")
            return None
    if raw.get("authentication") is not None:
        if deny:
            ctx.skip(f"{path}.authentication", "mutual authentication not enforced")
        else:
            ctx.skip(f"{path}.authentication", "mutual authentication not enforced; this rule admits nothing")
            return None
    ports, constrained = _cnp_ports(raw, path, deny, ctx)
    if constrained and not ports:
        return None
    if empty_list:
        return None
    if not has_l3:
        if not constrained:
            return None  # `- {}`: turns on enforcement, selects nothing
        selectors = [EndpointSelector()]  # an L4-only rule applies to every peer
    if not selectors:
        if has_l3:
            ctx.skip(path, f"no supported peer left; this rule {verb}")
        return None
    return PeerRule(tuple(sorted(set(selectors), key=_selector_order)), ports)


def _selector_order(selector: EndpointSelector) -> tuple[tuple[Requirement, ...], str]:
    return (selector.requirements, selector.scope)


def _cnp_ports(raw: Mapping[str, Any], path: str, deny: bool, ctx: _Ctx) -> tuple[tuple[PortRule, ...], bool]:
    """``toPorts`` (and ``icmps``) -> (enforced ports, whether the rule is port-constrained).
    A constrained rule with no enforced ports enforces nothing."""
    to_ports = raw.get("toPorts")
    icmps = raw.get("icmps")
    constrained = bool(to_ports) or bool(icmps)
    if icmps:
        ctx.skip(f"{path}.icmps", "ICMP rules not enforced" + ("" if deny else "; ICMP is not admitted"))
    if not to_ports:
        return (), constrained
    if not isinstance(to_ports, list):
        raise SelectorError("toPorts must be a list")
    out: set[PortRule] = set()
    for i, element in enumerate(to_ports):
        where = f"{path}.toPorts[{i}]"
        if not isinstance(element, Mapping):
            raise SelectorError(f"toPorts[{i}] must be an object")
        narrowing = [f for f in _L7_FIELDS if element.get(f)]
        if narrowing:
            if not deny:
                ctx.skip(f"{where}.{narrowing[0]}", f"L7/TLS ({', '.join(narrowing)}) not enforced; "
                         "this port rule admits nothing (fail closed)")
                continue
            ctx.skip(f"{where}.{narrowing[0]}", "not allowed in a deny rule, ignored")
        for unknown in sorted(set(map(str, element)) - {"ports", *_L7_FIELDS}):
            ctx.skip(f"{where}.{unknown}", "unknown field, ignored")
        ports = element.get("ports")
        if not ports:
            out.add(ALL_PORTS)
            continue
        if not isinstance(ports, list):
            raise SelectorError(f"toPorts[{i}].ports must be a list")
        for j, port in enumerate(ports):
            rule = _port_protocol(port, f"{where}.ports[{j}]", "ANY", ctx)
            if rule is not None:
                out.add(rule)
    return tuple(sorted(out)), constrained


def _port_protocol(raw: object, where: str, default_protocol: Protocol, ctx: _Ctx) -> PortRule | None:
    """One ``PortProtocol`` / ``NetworkPolicyPort``; ``None`` (reported) when not enforceable."""
    if not isinstance(raw, Mapping):
        raise SelectorError(f"{where} must be an object")
    protocol = str(raw.get("protocol") or default_protocol).upper()
    if protocol not in _PROTOCOLS:
        ctx.skip(f"{where}.protocol", f"protocol {protocol} not enforced; port skipped")
        return None
    port_value = raw.get("port")
    if port_value is None or port_value == "":
        port = 0
    elif isinstance(port_value, bool):
        raise SelectorError(f"{where}.port must be a number or a name")
    elif isinstance(port_value, int):
        port = port_value
    elif isinstance(port_value, str) and port_value.isdigit():
        port = int(port_value)
    elif isinstance(port_value, str):
        ctx.skip(f"{where}.port", f"named port {port_value!r} not resolved; port skipped")
        return None
    else:
        raise SelectorError(f"{where}.port must be a number or a name")
    end_port = raw.get("endPort")
    if end_port is not None and (isinstance(end_port, bool) or not isinstance(end_port, int)):
        raise SelectorError(f"{where}.endPort must be a number")
    try:
        return PortRule.make(port, end_port, cast(Protocol, protocol))
    except SelectorError as err:
        raise SelectorError(f"{where}: {err}") from None


# ---------------------------------------------------------------- NetworkPolicy


def parse_network_policy(obj: Mapping[str, Any]) -> Policy:
    """Parse a ``networking.k8s.io/v1`` ``NetworkPolicy`` as Cilium's ``ParseNetworkPolicy``
    does (see the module docstring). ``ipBlock`` peers and named ports are reported as
    unsupported and not admitted. Never raises."""
    ctx = _Ctx()
    if not isinstance(obj, Mapping):
        return Policy("NetworkPolicy", "", errors=(f"policy must be an object, got {type(obj).__name__}",))
    name, namespace, version = _meta(obj)
    namespace = namespace or "default"
    if not name:
        ctx.error("metadata.name", "required")
    spec = obj.get("spec")
    rules: tuple[Rule, ...] = ()
    if not isinstance(spec, Mapping):
        ctx.error("spec", "required object")
    else:
        try:
            rules = (_np_rule(spec, namespace, ctx),)
        except (SelectorError, TypeError, ValueError, KeyError, AttributeError) as err:
            ctx.error("spec", f"rule dropped: {err}")
    return Policy("NetworkPolicy", name, namespace, rules, tuple(ctx.unsupported), tuple(ctx.errors), version)


def _np_rule(spec: Mapping[str, Any], namespace: str, ctx: _Ctx) -> Rule:
    selector = EndpointSelector.from_k8s(spec.get("podSelector") or {}, default_source="k8s")
    selector = selector.with_match("k8s", NAMESPACE_LABEL, namespace)
    types = spec.get("policyTypes")
    if types is None:
        types = ["Ingress", "Egress"] if spec.get("egress") is not None else ["Ingress"]
    if not isinstance(types, list) or not set(types) <= {"Ingress", "Egress"}:
        raise SelectorError(f"policyTypes must be a list of Ingress/Egress, got {types!r}")
    for unknown in sorted(set(map(str, spec)) - {"podSelector", "policyTypes", "ingress", "egress"}):
        ctx.skip(f"spec.{unknown}", "unknown field, ignored")
    out: dict[Direction, tuple[PeerRule, ...]] = {"ingress": (), "egress": ()}
    for direction, type_name, peers_key in (("ingress", "Ingress", "from"), ("egress", "Egress", "to")):
        if type_name not in types:
            continue
        raw_rules = spec.get(direction) or []
        if not isinstance(raw_rules, list):
            raise SelectorError(f"{direction} must be a list")
        peer_rules = []
        for i, raw in enumerate(raw_rules):
            path = f"spec.{direction}[{i}]"
            if not isinstance(raw, Mapping):
                raise SelectorError(f"{path} must be an object")
            rule = _np_peer_rule(raw, path, peers_key, namespace, ctx)
            if rule is not None:
                peer_rules.append(rule)
        out[cast(Direction, direction)] = tuple(peer_rules)
    return Rule(
        endpoint_selector=selector,
        ingress=out["ingress"],
        egress=out["egress"],
        default_deny_ingress="Ingress" in types,
        default_deny_egress="Egress" in types,
    )


def _np_peer_rule(raw: Mapping[str, Any], path: str, peers_key: str, namespace: str, ctx: _Ctx) -> PeerRule | None:
    ports: set[PortRule] = set()
    raw_ports = raw.get("ports") or []
    if not isinstance(raw_ports, list):
        raise SelectorError(f"{path}.ports must be a list")
    for j, port in enumerate(raw_ports):
        rule = _port_protocol(port, f"{path}.ports[{j}]", "TCP", ctx)
        if rule is not None:
            ports.add(rule)
    if raw_ports and not ports:
        return None
    peers = raw.get(peers_key) or []
    if not isinstance(peers, list):
        raise SelectorError(f"{path}.{peers_key} must be a list")
    if not peers:
        return PeerRule((EndpointSelector(),), tuple(sorted(ports)))
    selectors: set[EndpointSelector] = set()
    for k, peer in enumerate(peers):
        where = f"{path}.{peers_key}[{k}]"
        if not isinstance(peer, Mapping):
            raise SelectorError(f"{where} must be an object")
        if peer.get("ipBlock") is not None:
            ctx.skip(f"{where}.ipBlock", "CIDR peers not enforced (those peers are not admitted)")
            continue
        selector = _np_peer(peer, namespace)
        if selector is None:
            raise SelectorError(f"{where} needs a podSelector, namespaceSelector or ipBlock")
        selectors.add(selector)
    if not selectors:
        return None
    return PeerRule(tuple(sorted(selectors, key=_selector_order)), tuple(sorted(ports)))


def _np_peer(peer: Mapping[str, Any], namespace: str) -> EndpointSelector | None:
    """``parseNetworkPolicyPeer``: pods of the policy's namespace, or of the namespaces whose
    labels match, scoped to the local cluster unless the selector names the cluster label."""
    pod_selector = peer.get("podSelector")
    ns_selector = peer.get("namespaceSelector")
    if ns_selector is not None:
        selector = EndpointSelector.from_k8s(ns_selector, default_source="k8s", key_prefix=NAMESPACE_LABELS_PREFIX)
        if not selector.requirements:
            selector = selector.with_requirement(Requirement("k8s", NAMESPACE_LABEL, "Exists"))
        if pod_selector is not None:
            pods = EndpointSelector.from_k8s(pod_selector, default_source="k8s")
            selector = EndpointSelector.of((*selector.requirements, *pods.requirements))
    elif pod_selector is not None:
        selector = EndpointSelector.from_k8s(pod_selector, default_source="k8s")
        selector = selector.with_match("k8s", NAMESPACE_LABEL, namespace)
    else:
        return None
    return selector if selector.has_key(CLUSTER_LABEL) else selector.with_scope("default-local")
