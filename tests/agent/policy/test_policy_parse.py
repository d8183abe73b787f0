"""Parsing CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy / NetworkPolicy YAML into the
enforced L3/L4 model: namespace and cluster scoping as Cilium does it, deny rules, and every
unsupported field reported (never silently ignored)."""

from __future__ import annotations

from typing import Any

import yaml

from agent.policy.model import EndpointSelector, PortRule, Requirement
from agent.policy.parse import parse_cnp, parse_network_policy, parse_policy

CLUSTER = "io.cilium.k8s.policy.cluster"
NS = "io.kubernetes.pod.namespace"


def load(text: str) -> dict[str, Any]:
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


def req(source: str, key: str, op: str = "In", *values: str) -> Requirement:
    return Requirement(source, key, op, tuple(values))  # type: ignore[arg-type]


# The reference's §6 example, in namespace default.
CROSS_CLUSTER = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-cross-cluster, namespace: default}
spec:
  description: "Allow x-wing in cluster1 to contact rebel-base in cluster2"
  endpointSelector:
    matchLabels: {name: x-wing, io.cilium.k8s.policy.cluster: cluster1}
  egress:
  - toEndpoints:
    - matchLabels: {name: rebel-base, io.cilium.k8s.policy.cluster: cluster2}
"""


def test_reference_cross_cluster_example() -> None:
    policy = parse_cnp(load(CROSS_CLUSTER))
    assert policy.key == "CiliumNetworkPolicy/default/allow-cross-cluster"
    assert policy.errors == () and policy.unsupported == ()
    (rule,) = policy.rules
    # The endpointSelector gets the policy's namespace (ParseToCiliumRule).
    assert rule.endpoint_selector.requirements == (
        req("any", CLUSTER, "In", "cluster1"),
        req("any", "name", "In", "x-wing"),
        req("k8s", NS, "In", "default"),
    )
    assert rule.default_deny_egress and not rule.default_deny_ingress
    (peer_rule,) = rule.egress
    (peer,) = peer_rule.peers
    assert peer_rule.ports == ()  # all ports
    # The cluster is named, so the selector is left alone (no local-cluster scope) ...
    assert peer.scope == "as-is"
    assert peer.bind("cluster1") == peer
    # ... but still restricted to the policy's namespace.
    assert req("k8s", NS, "In", "default") in peer.requirements


def test_peer_without_cluster_key_is_scoped_to_local_cluster() -> None:
    policy = parse_cnp(load("""
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
"""))
    (peer,) = policy.rules[0].ingress[0].peers
    assert peer.scope == "default-local"
    bound = peer.bind("c1")
    assert bound.requirements == (
        req("any", "app", "In", "frontend"),
        req("k8s", CLUSTER, "In", "c1"),
        req("k8s", NS, "In", "shop"),
    )
    # policy-default-local-cluster=false (Cilium <= 1.18): every cluster.
    assert peer.bind("c1", default_local_cluster=False).requirements == (
        req("any", "app", "In", "frontend"),
        req("k8s", NS, "In", "shop"),
    )


def test_cluster_key_exists_means_any_cluster() -> None:
    policy = parse_cnp(load("""
kind: CiliumNetworkPolicy
metadata: {name: any-cluster, namespace: default}
spec:
  endpointSelector: {}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: frontend}
      matchExpressions:
      - {key: io.cilium.k8s.policy.cluster, operator: Exists}
"""))
    (peer,) = policy.rules[0].ingress[0].peers
    assert peer.scope == "as-is"
    assert req("any", CLUSTER, "Exists") in peer.bind("c1").requirements
    assert not any(r.operator == "In" and r.key == CLUSTER for r in peer.bind("c1").requirements)


def test_k8s_prefixed_keys_and_explicit_namespace() -> None:
    policy = parse_cnp(load("""
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: a}
spec:
  endpointSelector: {matchLabels: {"k8s:app": db}}
  ingress:
  - fromEndpoints:
    - matchLabels: {"k8s:app": api, "k8s:io.kubernetes.pod.namespace": b}
    - matchLabels: {"reserved:host": ""}
"""))
    rule = policy.rules[0]
    assert req("k8s", "app", "In", "db") in rule.endpoint_selector.requirements
    explicit_ns, host = sorted(rule.ingress[0].peers, key=lambda s: s.has_source("reserved"))
    # The namespace named by the selector is kept (not replaced by the policy's).
    assert req("k8s", NS, "In", "b") in explicit_ns.requirements
    assert req("k8s", NS, "In", "a") not in explicit_ns.requirements
    # Reserved-label selectors get neither namespace nor cluster.
    assert host == EndpointSelector.labels(("reserved", "host", ""))


def test_clusterwide_policy_peers_need_a_namespace_label() -> None:
    policy = parse_cnp(load("""
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: ccnp}
specs:
- endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{}]
- endpointSelector: {matchLabels: {app: cache}}
  egressDeny:
  - toEndpoints: [{matchLabels: {app: evil}}]
"""))
    assert policy.key == "CiliumClusterwideNetworkPolicy/ccnp" and policy.namespace == ""
    first, second = policy.rules
    assert first.endpoint_selector.requirements == (req("any", "app", "In", "db"),)
    (peer,) = first.ingress[0].peers
    assert peer.bind("c1").requirements == (req("k8s", CLUSTER, "In", "c1"), req("k8s", NS, "Exists"))
    assert second.egress_deny and second.default_deny_egress and not second.egress


def test_deny_rules_and_entities() -> None:
    policy = parse_cnp(load("""
kind: CiliumNetworkPolicy
metadata: {name: deny, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEntities: [world, cluster]
    toPorts: [{ports: [{port: "8080", endPort: 8090, protocol: TCP}, {port: "53", protocol: UDP}]}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: attacker}}]
    toPorts: [{ports: [{port: "8085", protocol: TCP}]}]
"""))
    rule = policy.rules[0]
    (allow,) = rule.ingress
    assert allow.ports == (PortRule(53, 53, "UDP"), PortRule(8080, 8090, "TCP"))
    reserved = {s.requirements[0].key for s in allow.peers if s.has_source("reserved")}
    assert reserved == {"world", "world-ipv4", "world-ipv6", "host", "remote-node", "init", "ingress", "health",
                        "unmanaged", "kube-apiserver"}
    assert EndpointSelector(scope="local") in allow.peers  # cluster entity: the local cluster
    (deny,) = rule.ingress_deny
    assert deny.ports == (PortRule(8085, 8085, "TCP"),)


def test_l7_fqdn_and_cidr_are_reported_never_silently_ignored() -> None:
    policy = parse_cnp(load("""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, k8s-app: kube-dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchPattern: "*"}]
  - toFQDNs: [{matchName: api.github.com}]
    toPorts: [{ports: [{port: "443"}]}]
  - toCIDR: [10.0.0.0/8]
  - toCIDRSet: [{cidr: 0.0.0.0/0, except: [10.0.0.0/8]}]
    toEndpoints: [{matchLabels: {app: proxy}}]
  - toServices: [{k8sService: {serviceName: s, namespace: default}}]
  - toEndpoints: [{matchLabels: {app: api}}]
    toPorts: [{ports: [{port: http}]}]
  - toEndpoints: [{matchLabels: {app: api}}]
    icmps: [{fields: [{type: 8}]}]
  - toEndpoints: [{matchLabels: {app: secure}}]
    authentication: {mode: required}
  - toEntities: [world]
    toGroups: [{aws: {securityGroupsIds: [sg-1]}}]
    toRequires: [{matchLabels: {env: prod}}]
  ingress:
  - fromCIDR: [192.168.0.0/16]
"""))
    text = "\n".join(policy.unsupported)
    for needle in ("egress[0].toPorts[0].rules", "toFQDNs", "toCIDR:", "toCIDRSet", "toServices",
                   "named port 'http'", "icmps", "authentication", "toGroups", "toRequires", "fromCIDR"):
        assert needle in text, needle
    assert policy.errors == ()
    (rule,) = policy.rules
    # Only the CIDRSet rule's endpoint peer survives as an egress allow; everything narrowed by
    # something not understood admits nothing (fail closed).
    assert [[p.format() for p in r.peers] for r in rule.egress] == [
        ["any:app=proxy, k8s:io.kubernetes.pod.namespace=default [+cluster:default-local]"]
    ]
    # The sections are present, so enforcement is on in both directions even with nothing allowed.
    assert rule.default_deny_ingress and rule.default_deny_egress
    assert rule.ingress == ()


def test_empty_ingress_rule_and_enable_default_deny() -> None:
    policy = parse_cnp(load("""
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: default}
specs:
- endpointSelector: {}
  ingress: [{}]
- endpointSelector: {}
  egress: [{toEntities: [all]}]
  enableDefaultDeny: {egress: false}
- endpointSelector: {}
  ingress: [{toPorts: [{ports: [{port: "80"}]}]}]
"""))
    deny_all, audit, l4_only = policy.rules
    assert deny_all.default_deny_ingress and deny_all.ingress == ()
    assert not audit.default_deny_egress and audit.egress[0].peers == (EndpointSelector(),)
    assert l4_only.ingress[0].peers == (EndpointSelector(),)  # L4-only: every peer


def test_malformed_policies_record_errors_and_never_raise() -> None:
    bad_selector = parse_cnp({"kind": "CiliumNetworkPolicy", "metadata": {"name": "x", "namespace": "d"},
                              "spec": {"endpointSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}})
    assert bad_selector.rules == () and "Near" in bad_selector.errors[0]
    assert parse_cnp({"metadata": {"name": "n", "namespace": "d"}}).errors
    assert parse_cnp("nonsense").errors  # type: ignore[arg-type]
    too_high = [{"toPorts": [{"ports": [{"port": "70000"}]}]}]
    bad_port = parse_cnp({"kind": "CiliumNetworkPolicy", "metadata": {"name": "x", "namespace": "d"},
                          "specs": [{"endpointSelector": {}, "ingress": too_high},
                                    {"endpointSelector": {}, "egress": [{}]}]})
    assert len(bad_port.errors) == 1 and "70000" in bad_port.errors[0]
    assert len(bad_port.rules) == 1  # the good rule is kept
    assert parse_network_policy({"metadata": {"name": "np"}, "spec": {"policyTypes": ["Sideways"]}}).errors
    assert parse_cnp({"kind": "CiliumNetworkPolicy", "metadata": {"name": "x", "namespace": "d"},
                      "spec": {"nodeSelector": {}}}).unsupported


NETPOL = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-allow, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: web}}
    - namespaceSelector: {matchLabels: {team: ops}}
      podSelector: {matchLabels: {app: monitor}}
    - namespaceSelector: {}
      podSelector: {matchLabels: {io.cilium.k8s.policy.cluster: c2}}
    - ipBlock: {cidr: 10.0.0.0/8}
    ports:
    - {port: 8080}
    - {port: 9000, endPort: 9100, protocol: UDP}
    - {port: metrics}
  egress:
  - {}
"""


def test_network_policy_conversion() -> None:
    policy = parse_policy(load(NETPOL))
    assert policy.kind == "NetworkPolicy" and policy.key == "NetworkPolicy/shop/api-allow"
    (rule,) = policy.rules
    assert rule.endpoint_selector.requirements == (req("k8s", "app", "In", "api"), req("k8s", NS, "In", "shop"))
    assert rule.default_deny_ingress and rule.default_deny_egress
    (ingress,) = rule.ingress
    assert ingress.ports == (PortRule(8080, 8080, "TCP"), PortRule(9000, 9100, "UDP"))
    peers = {p.bind("c1").format() for p in ingress.peers}
    assert peers == {
        "k8s:app=web, k8s:io.cilium.k8s.policy.cluster=c1, k8s:io.kubernetes.pod.namespace=shop",
        "k8s:app=monitor, k8s:io.cilium.k8s.namespace.labels.team=ops, k8s:io.cilium.k8s.policy.cluster=c1",
        "k8s:io.cilium.k8s.policy.cluster=c2, k8s:io.kubernetes.pod.namespace",
    }
    assert any("ipBlock" in u for u in policy.unsupported)
    assert any("named port 'metrics'" in u for u in policy.unsupported)
    (egress,) = rule.egress
    assert egress.peers == (EndpointSelector(),) and egress.ports == ()  # empty rule: everything


def test_network_policy_default_policy_types() -> None:
    deny_all = parse_network_policy(load("""
kind: NetworkPolicy
metadata: {name: deny, namespace: default}
spec: {podSelector: {}}
"""))
    (rule,) = deny_all.rules
    assert rule.default_deny_ingress and not rule.default_deny_egress and rule.ingress == ()
    egress = parse_network_policy(load("""
kind: NetworkPolicy
metadata: {name: e, namespace: default}
spec:
  podSelector: {}
  egress: [{to: [{podSelector: {}}], ports: [{protocol: UDP, port: 53}]}]
"""))
    (rule,) = egress.rules
    assert rule.default_deny_ingress and rule.default_deny_egress
    assert rule.egress[0].ports == (PortRule(53, 53, "UDP"),)
