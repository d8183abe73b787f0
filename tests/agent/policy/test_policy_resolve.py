"""compute_policy: which remote identities (in which cluster) each local endpoint may talk to,
enforcement modes, deny precedence, reserved identities and NetworkPolicy semantics."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from agent.policy.model import Policy
from agent.policy.parse import parse_cnp, parse_network_policy
from agent.policy.resolve import PolicyEntry, PolicyState, compute_policy
from meshcore.wire.identity import LabelSet

LOCAL = "c1"
WORLD, HOST, REMOTE_NODE = 2, 1, 6


def ident(cluster: str, namespace: str = "default", **labels: str) -> LabelSet:
    return LabelSet.from_strings(
        [f"k8s:{k}={v}" for k, v in labels.items()]
        + [f"k8s:io.cilium.k8s.policy.cluster={cluster}", f"k8s:io.kubernetes.pod.namespace={namespace}"]
    )


# c1 (local, cluster ID 0 range), c2 (ID 2 -> 131072..), c3 (ID 3 -> 196608..)
FRONTEND_C1, BACKEND_C1 = 300, 301
FRONTEND_C2, BACKEND_C2 = 131372, 131373
FRONTEND_C3 = 196908
FRONTEND_C2_OTHER_NS = 131374
IDENTITIES: dict[int, LabelSet] = {
    FRONTEND_C1: ident("c1", app="frontend"),
    BACKEND_C1: ident("c1", app="backend"),
    FRONTEND_C2: ident("c2", app="frontend"),
    BACKEND_C2: ident("c2", app="backend"),
    FRONTEND_C3: ident("c3", app="frontend"),
    FRONTEND_C2_OTHER_NS: ident("c2", "other", app="frontend"),
}
EP_BACKEND, EP_OTHER = 11, 12
ENDPOINTS = [(EP_BACKEND, ident("c1", app="backend")), (EP_OTHER, ident("c1", app="db"))]


def cnp(text: str) -> Policy:
    doc: dict[str, Any] = yaml.safe_load(text)
    doc.setdefault("kind", "CiliumNetworkPolicy")
    doc.setdefault("metadata", {"name": "p", "namespace": "default"})
    policy = parse_cnp(doc)
    assert policy.errors == (), policy.errors
    return policy


def compute(*policies: Policy, **kwargs: Any) -> PolicyState:
    """compute_policy over the module's endpoints and identities; ``allow_localhost="policy"``
    unless given, so the host shows up only where a policy admits it (see the allow-localhost tests)."""
    kwargs.setdefault("local_cluster", LOCAL)
    kwargs.setdefault("allow_localhost", "policy")
    return compute_policy(list(policies), ENDPOINTS, IDENTITIES, **kwargs)


def remotes(state: PolicyState, endpoint: int = EP_BACKEND, direction: str = "ingress",
            verdict: str = "allow") -> set[int]:
    return {e.remote_identity for e in state.entries
            if e.endpoint_id == endpoint and e.direction == direction and e.verdict == verdict}


FRONTEND_FROM_C2 = """
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: frontend, io.cilium.k8s.policy.cluster: c2}
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"""


def test_only_frontend_from_c2_is_admitted() -> None:
    state = compute(cnp(FRONTEND_FROM_C2))
    assert state.entries == (
        PolicyEntry(EP_BACKEND, "ingress", FRONTEND_C2, 8080, 8080, "TCP", "allow"),
    )
    assert state.verdict(EP_BACKEND, "ingress", FRONTEND_C2, 8080, "TCP") == "allow"
    assert state.verdict(EP_BACKEND, "ingress", FRONTEND_C2, 8081, "TCP") == "drop"
    assert state.verdict(EP_BACKEND, "ingress", FRONTEND_C1, 8080, "TCP") == "drop"  # local frontend: no
    assert state.verdict(EP_BACKEND, "ingress", BACKEND_C2, 8080, "TCP") == "drop"  # c2 backend: no entry
    assert state.verdict(EP_BACKEND, "ingress", FRONTEND_C2_OTHER_NS, 8080, "TCP") == "drop"  # other namespace
    ep = state.endpoint(EP_BACKEND)
    assert ep is not None and ep.ingress_enforced and not ep.egress_enforced
    assert ep.policies == ("CiliumNetworkPolicy/default/p",)
    other = state.endpoint(EP_OTHER)
    assert other is not None and not other.ingress_enforced and other.policies == ()
    assert state.verdict(EP_OTHER, "ingress", BACKEND_C2, 1, "UDP") == "allow"  # not selected: no enforcement


def test_selector_without_cluster_means_local_cluster_only() -> None:
    state = compute(cnp("""
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress: [{fromEndpoints: [{matchLabels: {app: frontend}}]}]
"""))
    assert remotes(state) == {FRONTEND_C1}
    # policy-default-local-cluster=false (Cilium <= 1.18): every cluster's frontend.
    legacy = compute(cnp("""
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress: [{fromEndpoints: [{matchLabels: {app: frontend}}]}]
"""), default_local_cluster=False)
    assert remotes(legacy) == {FRONTEND_C1, FRONTEND_C2, FRONTEND_C3}


def test_any_cluster_with_exists_and_in_lists() -> None:
    state = compute(cnp("""
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: frontend}
      matchExpressions: [{key: io.cilium.k8s.policy.cluster, operator: Exists}]
  egress:
  - toEndpoints:
    - matchExpressions:
      - {key: io.cilium.k8s.policy.cluster, operator: In, values: [c1, c3]}
      - {key: app, operator: NotIn, values: [backend]}
"""))
    assert remotes(state) == {FRONTEND_C1, FRONTEND_C2, FRONTEND_C3}
    assert remotes(state, direction="egress") == {FRONTEND_C1, FRONTEND_C3}


def test_enforcement_modes() -> None:
    policy = cnp(FRONTEND_FROM_C2)
    never = compute(policy, enforcement="never")
    assert never.entries == () and not any(e.ingress_enforced or e.egress_enforced for e in never.endpoints)
    assert never.verdict(EP_BACKEND, "ingress", BACKEND_C2, 8080, "TCP") == "allow"
    always = compute(policy, enforcement="always")
    assert all(e.ingress_enforced and e.egress_enforced for e in always.endpoints)
    assert always.entries == compute(policy).entries
    assert always.verdict(EP_OTHER, "ingress", FRONTEND_C1, 80, "TCP") == "drop"  # nothing selects it
    assert always.verdict(EP_BACKEND, "egress", FRONTEND_C1, 80, "TCP") == "drop"
    empty = compute(enforcement="default")
    assert empty.entries == () and not any(e.ingress_enforced for e in empty.endpoints)
    with pytest.raises(ValueError):
        compute(policy, enforcement="sometimes")


def test_enable_default_deny_false_does_not_enforce() -> None:
    state = compute(cnp("""
spec:
  endpointSelector: {matchLabels: {app: backend}}
  enableDefaultDeny: {ingress: false}
  ingressDeny: [{fromEntities: [world]}]
"""))
    ep = state.endpoint(EP_BACKEND)
    assert ep is not None and not ep.ingress_enforced
    assert state.verdict(EP_BACKEND, "ingress", WORLD, 443, "TCP") == "deny"
    assert state.verdict(EP_BACKEND, "ingress", FRONTEND_C2, 443, "TCP") == "allow"


def test_deny_takes_precedence_over_allow() -> None:
    state = compute(cnp("""
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchExpressions: [{key: io.cilium.k8s.policy.cluster, operator: Exists}]}]
  - fromEndpoints: [{matchLabels: {app: frontend, io.cilium.k8s.policy.cluster: c3}}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {io.cilium.k8s.policy.cluster: c3}}]
  - fromEndpoints: [{matchLabels: {io.cilium.k8s.policy.cluster: c2, app: backend}}]
    toPorts: [{ports: [{port: "22", protocol: TCP}]}]
"""))
    # c3 is denied entirely: its allows (all ports and 443) are gone, only the deny remains.
    assert [e for e in state.entries if e.remote_identity == FRONTEND_C3] == [
        PolicyEntry(EP_BACKEND, "ingress", FRONTEND_C3, 0, 0, "ANY", "deny"),
    ]
    assert state.verdict(EP_BACKEND, "ingress", FRONTEND_C3, 443, "TCP") == "deny"
    # c2 backend: allowed except port 22 (narrower deny; both entries stay).
    assert {(e.port, e.verdict) for e in state.entries if e.remote_identity == BACKEND_C2} == {(0, "allow"),
                                                                                            (22, "deny")}
    assert state.verdict(EP_BACKEND, "ingress", BACKEND_C2, 22, "TCP") == "deny"
    assert state.verdict(EP_BACKEND, "ingress", BACKEND_C2, 22, "UDP") == "allow"
    assert state.verdict(EP_BACKEND, "ingress", FRONTEND_C1, 22, "TCP") == "allow"


def test_deny_from_another_policy_and_wildcard() -> None:
    allow = cnp(FRONTEND_FROM_C2)
    deny_all_world = cnp("""
metadata: {name: no-world, namespace: default}
spec:
  endpointSelector: {}
  ingressDeny: [{toPorts: [{ports: [{port: "8080", protocol: TCP}]}]}]
""")
    state = compute(allow, deny_all_world)
    # An L4-only deny applies to every peer (identity 0) and removes the covered allow.
    assert remotes(state) == set()
    assert remotes(state, verdict="deny") == {0}
    assert remotes(state, endpoint=EP_OTHER, verdict="deny") == {0}
    assert state.verdict(EP_BACKEND, "ingress", FRONTEND_C2, 8080, "TCP") == "deny"


def test_entities_and_reserved_identities() -> None:
    state = compute(cnp("""
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEntities: [cluster]
  egress:
  - toEntities: [world, remote-node]
  - toEntities: [all]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
"""))
    # `cluster`: the reserved in-cluster identities plus the local cluster's endpoints, not c2/c3.
    assert remotes(state) == {1, 3, 4, 5, 6, 7, 8, FRONTEND_C1, BACKEND_C1}
    assert remotes(state, direction="egress") == {WORLD, 9, 10, REMOTE_NODE, 0}
    assert state.verdict(EP_BACKEND, "egress", BACKEND_C2, 53, "UDP") == "allow"  # wildcard entry
    assert state.verdict(EP_BACKEND, "egress", BACKEND_C2, 80, "TCP") == "drop"


def test_unsupported_is_aggregated_per_policy() -> None:
    l7 = cnp("""
metadata: {name: l7, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend, io.cilium.k8s.policy.cluster: c2}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET}]}}]
""")
    state = compute(l7, cnp(FRONTEND_FROM_C2))
    assert list(state.unsupported) == ["CiliumNetworkPolicy/default/l7"]
    assert "rules" in state.unsupported["CiliumNetworkPolicy/default/l7"][0]
    # Fail closed: the L7 port is not opened at L4.
    assert state.verdict(EP_BACKEND, "ingress", FRONTEND_C2, 80, "TCP") == "drop"
    assert state.verdict(EP_BACKEND, "ingress", FRONTEND_C2, 8080, "TCP") == "allow"
    broken = parse_cnp({"kind": "CiliumNetworkPolicy", "metadata": {"name": "b", "namespace": "default"}})
    assert "CiliumNetworkPolicy/default/b" in compute(broken).errors


def test_network_policy_across_clusters() -> None:
    policy = parse_network_policy(yaml.safe_load("""
kind: NetworkPolicy
metadata: {name: np, namespace: default}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: frontend}}
    - podSelector: {matchLabels: {app: backend, io.cilium.k8s.policy.cluster: c2}}
    ports: [{port: 8080}]
  - ports: [{port: 9090, protocol: UDP}]
"""))
    state = compute(policy)
    assert state.entries == (
        PolicyEntry(EP_BACKEND, "ingress", 0, 9090, 9090, "UDP", "allow"),
        PolicyEntry(EP_BACKEND, "ingress", FRONTEND_C1, 8080, 8080, "TCP", "allow"),
        PolicyEntry(EP_BACKEND, "ingress", BACKEND_C2, 8080, 8080, "TCP", "allow"),
    )
    ep = state.endpoint(EP_BACKEND)
    assert ep is not None and ep.ingress_enforced and not ep.egress_enforced


def test_namespace_selector_peer() -> None:
    identities = dict(IDENTITIES)
    ops_pod = LabelSet.from_strings([
        "k8s:app=monitor", "k8s:io.kubernetes.pod.namespace=ops", "k8s:io.cilium.k8s.namespace.labels.team=ops",
        "k8s:io.cilium.k8s.policy.cluster=c1",
    ])
    identities[400] = ops_pod
    policy = parse_network_policy(yaml.safe_load("""
kind: NetworkPolicy
metadata: {name: np, namespace: default}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: ops}}}]}]
"""))
    state = compute_policy([policy], ENDPOINTS, identities, local_cluster=LOCAL, allow_localhost="policy")
    assert remotes(state) == {400} and remotes(state, endpoint=EP_OTHER) == {400}


# ---- allow-localhost (Cilium's agent option; default auto) ----


def test_allow_localhost_auto_admits_the_host_to_every_enforced_endpoint_by_default() -> None:
    policy = cnp(FRONTEND_FROM_C2)
    state = compute_policy([policy], ENDPOINTS, IDENTITIES, local_cluster=LOCAL)  # the default: auto
    assert remotes(state) == {FRONTEND_C2, HOST}
    assert PolicyEntry(EP_BACKEND, "ingress", HOST, 0, 0, "ANY", "allow") in state.entries
    # any port and protocol from the host (a kubelet probe), while others are still default-denied
    assert state.verdict(EP_BACKEND, "ingress", HOST, 9999, "TCP") == "allow"
    assert state.verdict(EP_BACKEND, "ingress", HOST, 53, "UDP") == "allow"
    assert state.verdict(EP_BACKEND, "ingress", BACKEND_C2, 8080, "TCP") == "drop"
    assert state.verdict(EP_BACKEND, "ingress", WORLD, 8080, "TCP") == "drop"
    # ingress only, and only where ingress is enforced (elsewhere everything passes anyway)
    assert remotes(state, direction="egress") == set()
    assert remotes(state, endpoint=EP_OTHER) == set()
    assert compute_policy([], ENDPOINTS, IDENTITIES, local_cluster=LOCAL).entries == ()


def test_allow_localhost_auto_under_enforcement_always_and_with_a_host_deny() -> None:
    state = compute_policy([], ENDPOINTS, IDENTITIES, local_cluster=LOCAL, enforcement="always")
    assert remotes(state) == {HOST} and remotes(state, endpoint=EP_OTHER) == {HOST}
    assert remotes(state, direction="egress") == set()
    deny = cnp("""
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingressDeny: [{fromEntities: [host]}]
""")
    state = compute_policy([cnp(FRONTEND_FROM_C2), deny], ENDPOINTS, IDENTITIES, local_cluster=LOCAL)
    assert HOST not in remotes(state)  # deny precedence, as Cilium's MapState
    assert state.verdict(EP_BACKEND, "ingress", HOST, 8080, "TCP") == "deny"


def test_allow_localhost_policy_admits_the_host_only_as_a_policy_says() -> None:
    state = compute_policy([cnp(FRONTEND_FROM_C2)], ENDPOINTS, IDENTITIES, local_cluster=LOCAL,
                           allow_localhost="policy")
    assert remotes(state) == {FRONTEND_C2}
    assert state.verdict(EP_BACKEND, "ingress", HOST, 8080, "TCP") == "drop"
    host = cnp("""
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress: [{fromEntities: [host], toPorts: [{ports: [{port: "8080", protocol: TCP}]}]}]
""")
    state = compute_policy([host], ENDPOINTS, IDENTITIES, local_cluster=LOCAL, allow_localhost="policy")
    assert state.verdict(EP_BACKEND, "ingress", HOST, 8080, "TCP") == "allow"
    assert state.verdict(EP_BACKEND, "ingress", HOST, 9999, "TCP") == "drop"
    with pytest.raises(ValueError, match="allow_localhost"):
        compute_policy([], ENDPOINTS, IDENTITIES, local_cluster=LOCAL, allow_localhost="always")  # type: ignore[arg-type]
