"""Properties of compute_policy: the result does not depend on the order of policies, identities
or endpoints; the indexed selector evaluation agrees with matching label by label; deny always
wins. Plus a printed (loosely bounded) measurement at 25k identities x 100 policies."""

from __future__ import annotations

import random
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.policy.model import EndpointSelector, Policy, Requirement
from agent.policy.parse import parse_cnp
from agent.policy.resolve import LabelIndex, compute_policy
from meshcore.wire.identity import LabelSet

CLUSTERS = ("c1", "c2", "c3")
APPS = ("web", "api", "db", "cache")
NAMESPACES = ("default", "shop")


def ident(cluster: str, namespace: str, app: str, tier: str | None = None) -> LabelSet:
    labels = [f"k8s:app={app}", f"k8s:io.cilium.k8s.policy.cluster={cluster}",
              f"k8s:io.kubernetes.pod.namespace={namespace}"]
    if tier is not None:
        labels.append(f"k8s:tier={tier}")
    return LabelSet.from_strings(labels)


identity_labels = st.builds(
    ident, st.sampled_from(CLUSTERS), st.sampled_from(NAMESPACES), st.sampled_from(APPS),
    st.one_of(st.none(), st.sampled_from(("a", "b"))),
)
identity_maps = st.dictionaries(st.integers(256, 300_000), identity_labels, max_size=30)


@st.composite
def label_selectors(draw: st.DrawFn) -> dict[str, Any]:
    sel: dict[str, Any] = {}
    if draw(st.booleans()):
        sel["matchLabels"] = {"app": draw(st.sampled_from(APPS))}
    expressions = []
    if draw(st.booleans()):
        op = draw(st.sampled_from(("In", "NotIn", "Exists", "DoesNotExist")))
        key = draw(st.sampled_from(("io.cilium.k8s.policy.cluster", "tier", "k8s:tier", "app")))
        expr: dict[str, Any] = {"key": key, "operator": op}
        if op in ("In", "NotIn"):
            expr["values"] = draw(st.lists(st.sampled_from((*CLUSTERS, "a", "b", *APPS)), min_size=1, max_size=2))
        expressions.append(expr)
    if expressions:
        sel["matchExpressions"] = expressions
    return sel


@st.composite
def peer_rules(draw: st.DrawFn, direction: str) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    side = "from" if direction == "ingress" else "to"
    if draw(st.booleans()):
        rule[f"{side}Endpoints"] = draw(st.lists(label_selectors(), min_size=1, max_size=2))
    elif draw(st.booleans()):
        rule[f"{side}Entities"] = draw(st.lists(st.sampled_from(("world", "cluster", "all", "host")), min_size=1,
                                                max_size=2))
    if draw(st.booleans()):
        ports = draw(st.lists(st.tuples(st.sampled_from(("80", "443", "0")),
                                        st.sampled_from(("TCP", "UDP", "ANY"))), min_size=1, max_size=2))
        rule["toPorts"] = [{"ports": [{"port": p, "protocol": proto} for p, proto in ports]}]
    return rule


@st.composite
def policies(draw: st.DrawFn, index: int) -> Policy:
    spec: dict[str, Any] = {"endpointSelector": draw(label_selectors())}
    for section, direction in (("ingress", "ingress"), ("egress", "egress"), ("ingressDeny", "ingress"),
                               ("egressDeny", "egress")):
        if draw(st.booleans()):
            spec[section] = draw(st.lists(peer_rules(direction), min_size=1, max_size=2))
    namespace = draw(st.sampled_from(("default", "shop", "")))
    kind = "CiliumClusterwideNetworkPolicy" if not namespace else "CiliumNetworkPolicy"
    meta = {"name": f"p{index}", **({"namespace": namespace} if namespace else {})}
    return parse_cnp({"kind": kind, "metadata": meta, "spec": spec})


policy_lists = st.integers(0, 4).flatmap(lambda n: st.tuples(*(policies(i) for i in range(n))))
endpoint_lists = st.dictionaries(st.integers(1, 50), identity_labels.filter(lambda ls: ls.cluster() == "c1"),
                                 max_size=4)


@settings(max_examples=150, deadline=None)
@given(policy_lists, identity_maps, endpoint_lists, st.randoms(use_true_random=False),
       st.sampled_from(("default", "always")))
def test_result_independent_of_order(pols: tuple[Policy, ...], identities: dict[int, LabelSet],
                                     endpoints: dict[int, LabelSet], rnd: random.Random, mode: str) -> None:
    first = compute_policy(list(pols), list(endpoints.items()), identities, local_cluster="c1",
                           enforcement=mode)  # type: ignore[arg-type]
    shuffled_pols = list(pols)
    rnd.shuffle(shuffled_pols)
    id_items = list(identities.items())
    rnd.shuffle(id_items)
    ep_items = list(endpoints.items())
    rnd.shuffle(ep_items)
    second = compute_policy(shuffled_pols, ep_items, dict(id_items), local_cluster="c1",
                            enforcement=mode)  # type: ignore[arg-type]
    assert first == second
    assert list(first.entries) == sorted(first.entries)
    # Deny precedence: no allow entry is covered by a deny entry of the same endpoint/direction.
    denies = [e for e in first.entries if e.verdict == "deny"]
    for allow in (e for e in first.entries if e.verdict == "allow"):
        assert not any(d.endpoint_id == allow.endpoint_id and d.direction == allow.direction
                       and d.remote_identity in (0, allow.remote_identity) and d.ports.covers(allow.ports)
                       for d in denies)


@settings(max_examples=200, deadline=None)
@given(identity_maps, label_selectors())
def test_index_agrees_with_label_matching(identities: dict[int, LabelSet], raw: dict[str, Any]) -> None:
    selector = EndpointSelector.from_k8s(raw)
    index = LabelIndex(identities)
    expected = frozenset(num for num, labels in identities.items() if selector.matches(labels))
    assert index.select(selector) == expected
    assert index.select(selector) == expected and index.hits == 1  # cached


def test_source_specific_keys() -> None:
    identities = {1: LabelSet.from_strings(["reserved:host="]), 2: LabelSet.from_strings(["k8s:host="])}
    index = LabelIndex(identities)
    assert index.select(EndpointSelector.labels(("any", "host", ""))) == {1, 2}
    assert index.select(EndpointSelector.labels(("reserved", "host", ""))) == {1}
    assert index.select(EndpointSelector.of([Requirement("k8s", "host", "DoesNotExist")])) == {1}


def test_performance_25k_identities_100_policies() -> None:
    """Not a benchmark gate: prints the time, asserts only a generous bound."""
    rnd = random.Random(7)
    apps = [f"app{i}" for i in range(200)]
    identities: dict[int, LabelSet] = {}
    for cluster_index, cluster in enumerate(("c1", "c2", "c3", "c4", "c5")):
        base = 256 if cluster_index == 0 else (cluster_index + 1) << 16
        for i in range(5000):
            identities[base + i] = ident(cluster, rnd.choice(NAMESPACES), rnd.choice(apps), rnd.choice(("a", "b")))
    endpoints = [(i, ident("c1", rnd.choice(NAMESPACES), rnd.choice(apps[:40]))) for i in range(1, 111)]
    pols = []
    for i in range(100):
        spec = {
            "endpointSelector": {"matchLabels": {"app": apps[i % 40]}},
            "ingress": [
                {"fromEndpoints": [{"matchLabels": {"app": apps[(i + 1) % 200], "io.cilium.k8s.policy.cluster":
                                                    rnd.choice(("c2", "c3"))}}],
                 "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]},
                {"fromEndpoints": [{"matchLabels": {"app": apps[(i + 2) % 200]},
                                    "matchExpressions": [{"key": "io.cilium.k8s.policy.cluster",
                                                          "operator": "Exists"}]}]},
                {"fromEndpoints": [{"matchLabels": {"tier": "a"}}]},
            ],
            "egress": [{"toEntities": ["world"]}, {"toEndpoints": [{}]}],
            "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": apps[(i + 3) % 200]}}]}],
        }
        pols.append(parse_cnp({"kind": "CiliumNetworkPolicy",
                               "metadata": {"name": f"p{i}", "namespace": NAMESPACES[i % 2]}, "spec": spec}))
    start = time.perf_counter()
    state = compute_policy(pols, endpoints, identities, local_cluster="c1")
    elapsed = time.perf_counter() - start
    print(f"\ncompute_policy: {len(identities)} identities, {len(pols)} policies, {len(endpoints)} endpoints "
          f"-> {len(state.entries)} entries, {state.stats.selectors} selectors "
          f"({state.stats.cache_hits} cache hits) in {elapsed * 1000:.0f} ms")
    assert state.entries and elapsed < 10.0
