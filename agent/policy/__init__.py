"""Identity-based network policy, control-plane half: parse Kubernetes policy objects
(:mod:`~agent.policy.parse`), resolve them against local endpoints and every known identity into
policy-map entries (:mod:`~agent.policy.resolve`), and watch them (:mod:`~agent.policy.source`).
Only the L3/L4 subset is enforced; everything else is reported (see :mod:`agent.policy.parse`)."""

from agent.policy.model import (
    RESERVED_IDENTITIES,
    EndpointSelector,
    PeerRule,
    Policy,
    PortRule,
    Requirement,
    Rule,
)
from agent.policy.parse import parse_cnp, parse_network_policy, parse_policy
from agent.policy.resolve import EndpointPolicy, PolicyEntry, PolicyState, compute_policy

__all__ = [
    "RESERVED_IDENTITIES",
    "EndpointPolicy",
    "EndpointSelector",
    "PeerRule",
    "Policy",
    "PolicyEntry",
    "PolicyState",
    "PortRule",
    "Requirement",
    "Rule",
    "compute_policy",
    "parse_cnp",
    "parse_network_policy",
    "parse_policy",
]
