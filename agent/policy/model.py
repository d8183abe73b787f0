"""Frozen records for the L3/L4, identity-based subset of Cilium network policy.

These mirror Cilium's ``pkg/policy/api`` types after the Kubernetes-side translation done by
``pkg/k8s/apis/cilium.io/utils`` (``ParseToCiliumRule``, ``getEndpointSelector``) and
``pkg/k8s/network_policy.go``: every selector has its label keys in Cilium's extended form
(``source`` + ``key``, the source being ``any`` when the policy did not name one), namespaced
policies already carry their namespace match, and peer selectors carry a *cluster scope* that
:meth:`EndpointSelector.bind` turns into the ``k8s:io.cilium.k8s.policy.cluster=<local>``
match once the local cluster name is known (``addClusterFilterByDefault`` with
``policy-default-local-cluster=true``).

Label-key forms in selectors (``labels.ParseSelectLabel``): ``app`` and ``any:app`` match a
label ``app`` of any source; ``k8s:app`` only a ``k8s:`` label; ``reserved:world`` (or
``$world``) only the reserved label. An identity holds at most one label per key
(:class:`~meshcore.wire.identity.LabelSet`), so "any source" simply ignores the source.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from meshcore.wire.identity import CLUSTER_LABEL, Label, LabelSet

__all__ = [
    "ANY_SOURCE",
    "NAMESPACE_LABEL",
    "NAMESPACE_LABELS_PREFIX",
    "RESERVED_IDENTITIES",
    "ClusterScope",
    "Direction",
    "EndpointSelector",
    "Operator",
    "PeerRule",
    "Policy",
    "PolicyKind",
    "PortRule",
    "Protocol",
    "Requirement",
    "Rule",
    "SelectorError",
    "parse_label_key",
]

ANY_SOURCE = "any"
NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
"""Key of the ``k8s:`` label naming a pod's namespace (``k8sConst.PodNamespaceLabel``)."""
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."
"""Prefix of the ``k8s:`` labels copying a pod's namespace labels (``PodNamespaceMetaLabels``)."""
INIT_LABEL = "init"

Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]
Protocol = Literal["TCP", "UDP", "SCTP", "ANY"]
Direction = Literal["ingress", "egress"]
PolicyKind = Literal["CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy", "NetworkPolicy"]
ClusterScope = Literal["as-is", "default-local", "local"]
"""How :meth:`EndpointSelector.bind` scopes a selector to a cluster:

- ``as-is``: never changed (the selector names the cluster key, is a reserved-label selector, or
  is the policy's own ``endpointSelector``);
- ``default-local``: ``k8s:io.cilium.k8s.policy.cluster=<local>`` is added when
  ``policy-default-local-cluster`` is on (the default since Cilium 1.19);
- ``local``: always added (the ``cluster`` entity, ``InitEntities``).
"""

_OPERATORS: frozenset[str] = frozenset(("In", "NotIn", "Exists", "DoesNotExist"))

RESERVED_IDENTITIES: Mapping[int, LabelSet] = {
    num: LabelSet.from_labels([Label("reserved", name)])
    for num, name in (
        (1, "host"),
        (2, "world"),
        (3, "unmanaged"),
        (4, "health"),
        (5, "init"),
        (6, "remote-node"),
        (7, "kube-apiserver"),
        (8, "ingress"),
        (9, "world-ipv4"),
        (10, "world-ipv6"),
    )
}
"""Cilium's reserved numeric identities and their labels (``pkg/identity/numericidentity.go``)."""


class SelectorError(ValueError):
    """A selector, port or rule that cannot be understood."""


def parse_label_key(text: str, *, default_source: str = ANY_SOURCE) -> tuple[str, str]:
    """``(source, key)`` of a selector key, as Cilium's ``parseSource``: ``src:key`` names the
    source, ``$key`` is ``reserved:key``, anything else gets ``default_source``."""
    if not text:
        raise SelectorError("empty label key")
    if text.startswith("$"):
        return "reserved", text[1:]
    source, sep, key = text.partition(":")
    if not sep:
        return default_source, text
    if not source or not key:
        raise SelectorError(f"label key {text!r} has an empty source or key")
    return source, key


@dataclass(frozen=True, slots=True, order=True)
class Requirement:
    """One label requirement of a selector (``matchLabels`` entries are ``In`` with one value)."""

    source: str
    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: LabelSet) -> bool:
        """Kubernetes label-selector semantics, with ``any`` matching a label of any source."""
        label = labels.get(self.key)
        if label is not None and self.source != ANY_SOURCE and label.source != self.source:
            label = None
        if self.operator == "In":
            return label is not None and label.value in self.values
        if self.operator == "NotIn":
            return label is None or label.value not in self.values
        if self.operator == "Exists":
            return label is not None
        return label is None

    def format(self) -> str:
        name = f"{self.source}:{self.key}"
        if self.operator == "In" and len(self.values) == 1:
            return f"{name}={self.values[0]}"
        if self.operator in ("Exists", "DoesNotExist"):
            return name if self.operator == "Exists" else f"!{name}"
        return f"{name} {self.operator.lower()} ({','.join(self.values)})"


@dataclass(frozen=True, slots=True)
class EndpointSelector:
    """A label selector over identities (Cilium's ``api.EndpointSelector``). No requirements
    selects everything (``WildcardEndpointSelector``)."""

    requirements: tuple[Requirement, ...] = ()
    scope: ClusterScope = "as-is"

    @classmethod
    def of(cls, requirements: Iterable[Requirement], scope: ClusterScope = "as-is") -> EndpointSelector:
        """A selector with its requirements sorted and deduplicated (so equal selectors are equal)."""
        return cls(tuple(sorted(set(requirements))), scope)

    @classmethod
    def from_k8s(cls, obj: object, *, default_source: str = ANY_SOURCE, key_prefix: str = "") -> EndpointSelector:
        """Parse a Kubernetes ``LabelSelector`` (``matchLabels``, ``matchExpressions``), as
        ``NewESFromK8sLabelSelector``. ``key_prefix`` is put before every key (the namespace-label
        prefix of a NetworkPolicy ``namespaceSelector``). Raises :class:`SelectorError`."""
        if obj is None:
            return cls()
        if not isinstance(obj, Mapping):
            raise SelectorError(f"selector must be an object, got {type(obj).__name__}")
        unknown = set(obj) - {"matchLabels", "matchExpressions"}
        if unknown:
            raise SelectorError(f"unknown selector field(s): {', '.join(sorted(map(str, unknown)))}")
        reqs: list[Requirement] = []
        match_labels = obj.get("matchLabels") or {}
        if not isinstance(match_labels, Mapping):
            raise SelectorError("matchLabels must be an object")
        for raw_key, value in match_labels.items():
            source, key = parse_label_key(str(raw_key), default_source=default_source)
            if value is None:
                value = ""
            if not isinstance(value, str | int | float | bool):
                raise SelectorError(f"matchLabels[{raw_key!r}] must be a string")
            reqs.append(Requirement(source, key_prefix + key, "In", (str(value),)))
        expressions = obj.get("matchExpressions") or []
        if not isinstance(expressions, list):
            raise SelectorError("matchExpressions must be a list")
        for i, expr in enumerate(expressions):
            if not isinstance(expr, Mapping) or not isinstance(expr.get("key"), str):
                raise SelectorError(f"matchExpressions[{i}] needs a string key")
            source, key = parse_label_key(expr["key"], default_source=default_source)
            op = expr.get("operator")
            if op not in _OPERATORS:
                raise SelectorError(f"matchExpressions[{i}]: unsupported operator {op!r}")
            values = expr.get("values") or []
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise SelectorError(f"matchExpressions[{i}].values must be a list of strings")
            if op in ("In", "NotIn") and not values:
                raise SelectorError(f"matchExpressions[{i}]: operator {op} needs values")
            if op in ("Exists", "DoesNotExist") and values:
                raise SelectorError(f"matchExpressions[{i}]: operator {op} takes no values")
            reqs.append(Requirement(source, key_prefix + key, op, tuple(sorted(set(values)))))
        return cls.of(reqs)

    @classmethod
    def labels(cls, *labels: tuple[str, str, str], scope: ClusterScope = "as-is") -> EndpointSelector:
        """A selector of ``(source, key, value)`` equalities (``NewESFromLabels``)."""
        return cls.of((Requirement(s, k, "In", (v,)) for s, k, v in labels), scope)

    @property
    def is_wildcard(self) -> bool:
        return not self.requirements and self.scope == "as-is"

    def has_key(self, key: str, sources: tuple[str, ...] = ("k8s", ANY_SOURCE)) -> bool:
        """Whether a requirement (matchLabels or matchExpressions) names ``key`` with one of
        ``sources`` (Cilium's ``HasKey`` on ``k8s.key`` and ``any.key``)."""
        return any(r.key == key and r.source in sources for r in self.requirements)

    def has_key_prefix(self, prefix: str, sources: tuple[str, ...] = ("k8s", ANY_SOURCE)) -> bool:
        return any(r.key.startswith(prefix) and r.source in sources for r in self.requirements)

    def has_source(self, source: str) -> bool:
        """Whether any requirement is on a label of ``source`` (``HasKeyPrefix("reserved.")``)."""
        return any(r.source == source for r in self.requirements)

    def with_requirement(self, req: Requirement) -> EndpointSelector:
        return EndpointSelector.of((*self.requirements, req), self.scope)

    def with_match(self, source: str, key: str, value: str) -> EndpointSelector:
        """``AddMatch``: replace any equality on (source, key) by ``key=value``."""
        kept = [r for r in self.requirements if not (r.source == source and r.key == key and r.operator == "In")]
        return EndpointSelector.of((*kept, Requirement(source, key, "In", (value,))), self.scope)

    def with_scope(self, scope: ClusterScope) -> EndpointSelector:
        return replace(self, scope=scope)

    def bind(self, local_cluster: str, *, default_local_cluster: bool = True) -> EndpointSelector:
        """The concrete selector for an agent in ``local_cluster`` (scope resolved to ``as-is``)."""
        if self.scope == "as-is":
            return self
        if self.scope == "default-local" and not default_local_cluster:
            return replace(self, scope="as-is")
        if self.has_key(CLUSTER_LABEL):
            return replace(self, scope="as-is")
        return EndpointSelector.of((*self.requirements, Requirement("k8s", CLUSTER_LABEL, "In", (local_cluster,))))

    def matches(self, labels: LabelSet) -> bool:
        """Whether ``labels`` satisfy every requirement (scope is not applied: :meth:`bind` first)."""
        return all(r.matches(labels) for r in self.requirements)

    def format(self) -> str:
        body = ", ".join(r.format() for r in self.requirements) or "*"
        return body if self.scope == "as-is" else f"{body} [+cluster:{self.scope}]"

    def __str__(self) -> str:
        return self.format()


@dataclass(frozen=True, slots=True, order=True)
class PortRule:
    """An L4 match: ``port`` (0 = all ports) through ``end_port`` (equal to ``port`` for a single
    port, 0 with port 0) on ``protocol`` (``ANY`` = TCP, UDP and SCTP), as ``api.PortProtocol``."""

    port: int = 0
    end_port: int = 0
    protocol: Protocol = "ANY"

    @classmethod
    def make(cls, port: int, end_port: int | None = None, protocol: Protocol = "ANY") -> PortRule:
        if not 0 <= port <= 65535:
            raise SelectorError(f"port {port} out of range 0-65535")
        if end_port is None or end_port == 0 or port == 0:
            end = port
        else:
            if not port <= end_port <= 65535:
                raise SelectorError(f"endPort {end_port} must be between port {port} and 65535")
            end = end_port
        return cls(port, end, protocol)

    @property
    def is_all(self) -> bool:
        return self.port == 0 and self.protocol == "ANY"

    def covers(self, other: PortRule) -> bool:
        """Whether every packet ``other`` matches is matched by ``self``."""
        if self.protocol != "ANY" and self.protocol != other.protocol:
            return False
        if self.port == 0:
            return True
        if other.port == 0:
            return False
        return self.port <= other.port and other.end_port <= self.end_port

    def format(self) -> str:
        if self.port == 0:
            return f"*/{self.protocol}"
        ports = str(self.port) if self.end_port == self.port else f"{self.port}-{self.end_port}"
        return f"{ports}/{self.protocol}"


ALL_PORTS = PortRule()


@dataclass(frozen=True, slots=True)
class PeerRule:
    """One ``ingress``/``egress`` (or deny) element reduced to what is enforced: the peers (any
    selector matching admits the peer) and the ports (empty: all ports and protocols)."""

    peers: tuple[EndpointSelector, ...]
    ports: tuple[PortRule, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"peers": [p.format() for p in self.peers], "ports": [p.format() for p in self.ports]}


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``api.Rule``: the endpoints it applies to and its enforced peer rules per direction.

    ``default_deny_*`` is Cilium's ``evaluateDefaultDenyForRule``: ``enableDefaultDeny.<dir>`` when
    set, else whether the rule has an allow or deny section for that direction. A rule turns on
    default-deny enforcement for the endpoints it selects in that direction (``policy-enforcement
    =default``)."""

    endpoint_selector: EndpointSelector
    ingress: tuple[PeerRule, ...] = ()
    egress: tuple[PeerRule, ...] = ()
    ingress_deny: tuple[PeerRule, ...] = ()
    egress_deny: tuple[PeerRule, ...] = ()
    default_deny_ingress: bool = False
    default_deny_egress: bool = False
    description: str = ""

    def peer_rules(self, direction: Direction, *, deny: bool) -> tuple[PeerRule, ...]:
        if direction == "ingress":
            return self.ingress_deny if deny else self.ingress
        return self.egress_deny if deny else self.egress

    def default_deny(self, direction: Direction) -> bool:
        return self.default_deny_ingress if direction == "ingress" else self.default_deny_egress

    def to_json(self) -> dict[str, Any]:
        return {
            "endpoint-selector": self.endpoint_selector.format(),
            "ingress": [p.to_json() for p in self.ingress],
            "egress": [p.to_json() for p in self.egress],
            "ingress-deny": [p.to_json() for p in self.ingress_deny],
            "egress-deny": [p.to_json() for p in self.egress_deny],
            "default-deny": {"ingress": self.default_deny_ingress, "egress": self.default_deny_egress},
        }


@dataclass(frozen=True, slots=True)
class Policy:
    """One Kubernetes policy object as enforced here.

    ``unsupported`` names every field that was present but is not enforced (with the path and
    what was done instead); ``errors`` are reasons the object (or part of it) could not be parsed
    at all. A policy with errors keeps the rules that did parse; a malformed rule is dropped.
    """

    kind: PolicyKind
    name: str
    namespace: str = ""
    rules: tuple[Rule, ...] = ()
    unsupported: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    resource_version: str = ""

    @property
    def key(self) -> str:
        """``Kind/namespace/name`` (``Kind/name`` when cluster-scoped)."""
        return f"{self.kind}/{self.namespace}/{self.name}" if self.namespace else f"{self.kind}/{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "rules": [r.to_json() for r in self.rules],
            "unsupported": list(self.unsupported),
            "errors": list(self.errors),
        }
