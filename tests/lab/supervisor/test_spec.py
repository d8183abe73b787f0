"""The lab plan: names, addresses and ports follow lab/README.md, and bad requests say why."""

from __future__ import annotations

import ipaddress

import pytest

from lab.supervisor.spec import LabSpecError, from_dict, plan, validate_lab_name


def test_plan_follows_the_readme_address_plan() -> None:
    spec = plan("lab", 2, 3, api_ports=[6001, 6002])
    assert [c.name for c in spec.clusters] == ["c1", "c2"]
    c2 = spec.cluster("c2")
    assert (c2.cluster_id, c2.context, c2.api_port) == (2, "lab-c2", 6002)
    assert c2.pod_cidr == "10.2.0.0/16" and c2.service_cidr == "172.16.2.0/24" and c2.api_service_ip == "172.16.2.1"
    n = spec.node("c2-n2")
    assert (n.netns, n.internal_ip, n.pod_cidr) == ("lab-c2.n2", "192.168.2.3", "10.2.2.0/24")
    assert ipaddress.ip_network(n.pod_cidr).subnet_of(ipaddress.ip_network(c2.pod_cidr))  # type: ignore[arg-type]
    assert spec.cluster("lab-c1") is spec.clusters[0]  # a context names its cluster too


def test_pod_and_service_ranges_are_disjoint_across_clusters() -> None:
    spec = plan("lab", 16, 2)
    nets = [ipaddress.ip_network(c.pod_cidr) for c in spec.clusters] + [
        ipaddress.ip_network(c.service_cidr) for c in spec.clusters]
    assert all(not a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1:])


def test_spec_round_trips_through_json() -> None:
    import json

    spec = plan("ab1", 2, 2, api_ports=[1, 2], kubeconfig_merged="/tmp/k")
    assert from_dict(json.loads(spec.to_json())) == spec


@pytest.mark.parametrize("name", ["", "a", "Lab", "1ab", "toolongname", "a-b"])
def test_bad_lab_names_are_refused_with_the_rule(name: str) -> None:
    with pytest.raises(LabSpecError, match="2-7 characters"):
        validate_lab_name(name)


@pytest.mark.parametrize(("clusters", "nodes", "match"), [(0, 1, "--clusters"), (17, 1, "--clusters"),
                                                          (1, 0, "--nodes"), (1, 17, "--nodes")])
def test_bad_sizes_are_refused(clusters: int, nodes: int, match: str) -> None:
    with pytest.raises(LabSpecError, match=match):
        plan("lab", clusters, nodes)


def test_unknown_cluster_or_node_names_the_known_ones() -> None:
    spec = plan("lab", 2, 1)
    with pytest.raises(LabSpecError, match="clusters: c1, c2"):
        spec.cluster("c9")
    with pytest.raises(LabSpecError, match="c1-n0"):
        spec.node("c1-n5")


def test_broken_spec_document_is_reported() -> None:
    with pytest.raises(LabSpecError, match="broken lab spec"):
        from_dict({"name": "lab"})


def test_internal_api_ports_and_specs_written_before_them() -> None:
    import json

    spec = plan("lab", 2, 1, api_ports=[6001, 6002], api_internal_ports=[7001, 7002])
    assert [(c.api_port, c.api_internal_port) for c in spec.clusters] == [(6001, 7001), (6002, 7002)]
    old = json.loads(spec.to_json())
    for c in old["clusters"]:
        del c["api_internal_port"]
    assert [c.api_internal_port for c in from_dict(old).clusters] == [0, 0]
    with pytest.raises(LabSpecError, match="internal API port"):
        plan("lab", 2, 1, api_ports=[6001, 6002], api_internal_ports=[7001])
