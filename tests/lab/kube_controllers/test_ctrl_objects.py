"""Pure helpers: selectors, taints, pod state, timestamps, int-or-percent, the template hash."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lab.kube.controllers import objects as o


def test_label_selector_match_labels_and_expressions() -> None:
    sel = {"matchLabels": {"app": "web"},
           "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                {"key": "old", "operator": "DoesNotExist"}]}
    assert o.selector_matches(sel, {"app": "web", "tier": "a"})
    assert not o.selector_matches(sel, {"app": "web", "tier": "c"})
    assert not o.selector_matches(sel, {"app": "web", "tier": "a", "old": "1"})
    assert not o.selector_matches(sel, {"tier": "a"})
    assert o.selector_matches({}, {"anything": "x"})  # empty selector: everything
    assert not o.selector_matches(None, {"anything": "x"})  # no selector: nothing


def test_node_affinity_terms_are_ored_and_expressions_anded() -> None:
    pod_spec = {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]},
                                  {"key": "gpu", "operator": "Exists"}]},
            {"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a", "b"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["special"]}]},
        ]}}}}

    def node(name: str, **labels: str) -> dict[str, object]:
        return {"metadata": {"name": name, "labels": labels}}

    assert o.node_matches_pod_selectors(pod_spec, node("x", zone="a", gpu="1"))
    assert not o.node_matches_pod_selectors(pod_spec, node("x", zone="a"))
    assert o.node_matches_pod_selectors(pod_spec, node("x", zone="c"))
    assert o.node_matches_pod_selectors(pod_spec, node("x"))  # NotIn matches a missing label
    assert not o.node_matches_pod_selectors(pod_spec, node("x", zone="b"))
    assert o.node_matches_pod_selectors(pod_spec, node("special", zone="b"))
    with_selector = {**pod_spec, "nodeSelector": {"disk": "ssd"}}
    assert not o.node_matches_pod_selectors(with_selector, node("x", zone="c"))
    assert o.node_matches_pod_selectors(with_selector, node("x", zone="c", disk="ssd"))


def test_gt_lt_requirements() -> None:
    term = {"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4"]}]}
    assert o.node_selector_term_matches(term, {"metadata": {"name": "n", "labels": {"cores": "8"}}})
    assert not o.node_selector_term_matches(term, {"metadata": {"name": "n", "labels": {"cores": "4"}}})
    assert not o.node_selector_term_matches(term, {"metadata": {"name": "n", "labels": {"cores": "many"}}})
    assert not o.node_selector_term_matches({}, {"metadata": {"name": "n"}})  # an empty term matches nothing


def test_taints_and_tolerations() -> None:
    node = {"spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"},
                                {"key": "soft", "effect": "PreferNoSchedule"}]}}
    assert o.untolerated_taint([], node) == {"key": "dedicated", "value": "db", "effect": "NoSchedule"}
    assert o.untolerated_taint([{"key": "dedicated", "value": "db"}], node) is None
    assert o.untolerated_taint([{"key": "dedicated", "value": "web"}], node) is not None
    assert o.untolerated_taint([{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}], node) is None
    assert o.untolerated_taint([{"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}], node) is not None
    assert o.untolerated_taint([{"operator": "Exists"}], node) is None


def test_pod_state() -> None:
    running = {"status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z"}]}}
    assert o.is_active(running) and o.is_ready(running)
    t0 = o.parse_time("2024-01-01T00:00:00Z")
    assert t0 is not None
    assert o.is_available(running, 0, t0)
    assert not o.is_available(running, 10, t0 + 5)
    assert o.available_in(running, 10, t0 + 5) == 5
    assert o.is_available(running, 10, t0 + 10)
    terminating = {**running, "metadata": {"deletionTimestamp": "2024-01-01T00:00:10Z"}}
    assert not o.is_active(terminating) and o.is_terminating(terminating)
    assert not o.is_active({"status": {"phase": "Succeeded"}})
    assert o.phase({}) == "Pending"


def test_set_condition_keeps_transition_time_while_status_holds() -> None:
    first = o.set_condition([], {"type": "Available", "status": "False", "reason": "A"}, 100.0,
                            update_time_field="lastUpdateTime")
    assert first[0]["lastTransitionTime"] == o.rfc3339(100)
    same = o.set_condition(first, {"type": "Available", "status": "False", "reason": "A"}, 200.0,
                           update_time_field="lastUpdateTime")
    assert same == first
    reason = o.set_condition(first, {"type": "Available", "status": "False", "reason": "B"}, 200.0,
                             update_time_field="lastUpdateTime")
    assert reason[0]["lastTransitionTime"] == o.rfc3339(100) and reason[0]["lastUpdateTime"] == o.rfc3339(200)
    flipped = o.set_condition(first, {"type": "Available", "status": "True", "reason": "B"}, 300.0)
    assert flipped[0]["lastTransitionTime"] == o.rfc3339(300)


def test_scaled_value() -> None:
    assert o.scaled_value("25%", 3, round_up=True, default="0") == 1
    assert o.scaled_value("25%", 3, round_up=False, default="0") == 0
    assert o.scaled_value(2, 10, round_up=False, default="0") == 2
    assert o.scaled_value(None, 8, round_up=False, default="25%") == 2
    assert o.scaled_value("3", 8, round_up=False, default="0") == 3


def test_template_hash_is_stable_and_ignores_its_own_label() -> None:
    tpl = {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}}
    h = o.template_hash(tpl)
    assert h == o.template_hash({"spec": tpl["spec"], "metadata": {"labels": {"app": "web"}}})  # key order
    assert h == o.template_hash({**tpl, "metadata": {"labels": {"app": "web", "pod-template-hash": h}}})
    assert h != o.template_hash(tpl, collision_count=1)
    changed = {**tpl, "spec": {"containers": [{"name": "c", "image": "x:2"}]}}
    assert h != o.template_hash(changed)
    assert set(h) <= set(o.SAFE_ALPHABET) and 1 <= len(h) <= 10


@given(st.dictionaries(st.text(min_size=1, max_size=5), st.text(max_size=5), max_size=4))
def test_map_selector_subset(lbls: dict[str, str]) -> None:
    assert o.map_selector_matches({}, lbls)
    assert o.map_selector_matches(lbls, lbls)
    assert o.map_selector_matches(lbls, {**lbls, "extra-key-not-generated-": "v"})


def test_keys() -> None:
    assert o.key({"metadata": {"namespace": "ns", "name": "a"}}) == "ns/a"
    assert o.key({"metadata": {"name": "n0"}}) == "n0"
    assert o.split_key("ns/a") == ("ns", "a") and o.split_key("n0") == (None, "n0")


def test_templates_compare_semantically() -> None:
    """What ``kubectl rollout undo`` writes back (typed, with null/empty fields) is the same template."""
    stored = {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    typed = {"metadata": {"creationTimestamp": None, "labels": {"app": "web"}},
             "spec": {"containers": [{"name": "c", "image": "x", "resources": {}, "env": []}]}}
    assert o.pruned(typed) == o.pruned(stored)
    assert o.template_hash(typed) == o.template_hash(stored)
    assert o.pruned({"a": [{}, {"b": None}], "c": 0, "d": ""}) == {"a": [{}, {}], "c": 0, "d": ""}
