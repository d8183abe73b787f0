"""The pure parts of the lab faults: validation, nftables and map plans, and reading records back."""

from __future__ import annotations

import ipaddress
import math

import pytest

from lab.faults import FaultRecord, InvalidFault, NodeRef, underlay_ip_of_mac
from lab.faults import losses as loss_mod
from lab.faults import partitions as part_mod
from lab.faults.model import sides, validate_name, validate_percent
from lab.net import names


def ref(cluster_id: int, index: int) -> NodeRef:
    ip = names.node_underlay_ip(cluster_id, index)
    return NodeRef(f"c{cluster_id}", f"lab-c{cluster_id}.n{index}", "labul", ip, names.node_underlay_mac(ip))


@pytest.mark.parametrize("bad", [0, -1, 100.0001, 1000, math.nan, math.inf, True, "50", None])
def test_percent_out_of_range_or_not_a_number_is_refused(bad: object) -> None:
    with pytest.raises(InvalidFault, match="percentage"):
        validate_percent(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("good", [0.001, 1, 50, 99.9, 100])
def test_percent_in_range_is_accepted(good: float) -> None:
    assert validate_percent(good) == float(good)


@pytest.mark.parametrize("bad", ["", "-x", "x-", "A", "a_b", "a" * 33, "a b"])
def test_bad_fault_names_are_refused(bad: str) -> None:
    with pytest.raises(InvalidFault, match="fault name"):
        validate_name(bad)


def test_thresholds_cover_the_whole_random_range() -> None:
    assert loss_mod.threshold(100) == 1 << 32  # every u32 is below it: everything dropped
    assert loss_mod.threshold(50) == 1 << 31
    assert loss_mod.threshold(25) == 1 << 30
    assert loss_mod.threshold(1e-9) == 1  # more than 0 % never rounds to "no loss"


def test_node_ref_normalizes_and_checks_its_mac() -> None:
    node = NodeRef("c1", "lab-c1.n0", "labul", ipaddress.IPv4Address("192.168.1.1"), "02:10:C0:A8:01:01")
    assert node.underlay_mac == "02:10:c0:a8:01:01"
    with pytest.raises(InvalidFault, match="MAC"):
        NodeRef("c1", "lab-c1.n0", "labul", ipaddress.IPv4Address("192.168.1.1"), "02:10:c0:a8:01")


def test_sides_dedupe_and_refuse_overlap_and_emptiness() -> None:
    a, b = sides([ref(1, 0), ref(1, 0), ref(1, 1)], [ref(2, 0)])
    assert [n.ns for n in a] == ["lab-c1.n0", "lab-c1.n1"] and [n.ns for n in b] == ["lab-c2.n0"]
    with pytest.raises(InvalidFault, match="both sides"):
        sides([ref(1, 0)], [ref(2, 0), ref(1, 0)])
    with pytest.raises(InvalidFault, match="no nodes"):
        sides([], [ref(2, 0)])


def test_loss_pairs_are_both_directions_between_exactly_the_two_sets() -> None:
    a, b = [ref(1, 0), ref(1, 1)], [ref(2, 0)]
    entries = loss_mod.plan_pairs(a, b, 10)
    pairs = {(e.src, e.dst, e.side) for e in entries}
    m10, m11, m20 = (n.underlay_mac for n in (*a, *b))
    assert pairs == {(m10, m20, 0), (m11, m20, 0), (m20, m10, 1), (m20, m11, 1)}
    assert {e.threshold for e in entries} == {loss_mod.threshold(10)} and {e.percent_e6 for e in entries} == {10**7}
    assert all(loss_mod.PairEntry.unpack(*e.pack()) == e for e in entries)


def test_loss_records_read_sides_and_percent_back_from_map_entries() -> None:
    a, b = [ref(1, 0)], [ref(2, 0), ref(2, 1)]
    filters = [
        loss_mod.InstalledFilter("labu1n0", "x", 0x4000, 7),
        loss_mod.InstalledFilter("labu2n0", "x", 0x4000, 7),
        loss_mod.InstalledFilter("labu2n1", "x", 0x4000, 7),
        loss_mod.InstalledFilter("labu1n0", "y", 0x4001, None),
    ]
    records = loss_mod.records(filters, {7: loss_mod.plan_pairs(a, b, 12.5)})
    assert records == [
        FaultRecord("loss", "x", (a[0].underlay_mac,), tuple(sorted(n.underlay_mac for n in b)), percent=12.5),
        FaultRecord("loss", "y", (), (), percent=None),
    ]
    assert records[0].describe() == "loss x: 192.168.1.1 <-> 192.168.2.1,192.168.2.2, 12.5%"


def test_tc_filter_listing_yields_only_loss_filters() -> None:
    document = [
        {"protocol": "all", "pref": 16384, "kind": "bpf", "chain": 0},
        {"protocol": "all", "pref": 16384, "kind": "bpf", "chain": 0,
         "options": {"handle": "0x1", "bpf_name": "cmlab-loss/c1-c2", "direct-action": True,
                     "prog": {"id": 223, "name": "lab_loss", "jited": 1}}},
        {"protocol": "all", "pref": 1, "kind": "bpf", "chain": 0,
         "options": {"handle": "0x1", "bpf_name": "from_pod", "prog": {"id": 9}}},
    ]  # fmt: skip
    assert loss_mod.parse_tc_filters("labu1n0", document) == [loss_mod.InstalledFilter("labu1n0", "c1-c2", 16384, 223)]
    assert loss_mod.free_prio({0x4000, 0x4001, 1}) == 0x4002


def test_partition_plan_is_one_table_with_two_stateless_drop_rules() -> None:
    batch = part_mod.plan_partition("c1-c2", [ref(1, 0)], [ref(2, 1), ref(2, 0)])
    commands = batch["nftables"]
    assert commands[0] == {"create": {"table": {"family": "bridge", "name": "cmlab-partition-c1-c2"}}}
    sets = {c["add"]["set"]["name"]: c["add"]["set"]["elem"] for c in commands if "set" in c.get("add", {})}
    assert sets == {"a": ["02:10:c0:a8:01:01"], "b": ["02:10:c0:a8:02:01", "02:10:c0:a8:02:02"]}
    rules = [c["add"]["rule"]["expr"] for c in commands if "rule" in c.get("add", {})]
    assert [[e["match"]["right"] for e in r if "match" in e] for r in rules] == [["@a", "@b"], ["@b", "@a"]]
    assert all({"drop": None} in r for r in rules)
    assert not any("ct" in str(r) for r in rules)  # stateless: established connections are cut too
    assert part_mod.plan_delete(["x", "y"])["nftables"][1] == {
        "delete": {"table": {"family": "bridge", "name": "cmlab-partition-y"}}
    }


def test_partitions_are_read_back_from_the_ruleset_ignoring_other_tables() -> None:
    ruleset = {"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "bridge", "name": "cmlab-partition-p1", "handle": 1}},
        {"set": {"family": "bridge", "name": "a", "table": "cmlab-partition-p1", "elem": "02:10:c0:a8:01:01"}},
        {"set": {"family": "bridge", "name": "b", "table": "cmlab-partition-p1",
                 "elem": ["02:10:c0:a8:02:02", "02:10:c0:a8:02:01"]}},
        {"rule": {"family": "bridge", "table": "cmlab-partition-p1", "chain": "forward",
                  "expr": [{"counter": {"packets": 3, "bytes": 300}}, {"drop": None}]}},
        {"rule": {"family": "bridge", "table": "cmlab-partition-p1", "chain": "forward",
                  "expr": [{"counter": {"packets": 2, "bytes": 200}}, {"drop": None}]}},
        {"table": {"family": "bridge", "name": "someone-else", "handle": 2}},
        {"table": {"family": "inet", "name": "cmlab-partition-not-bridge", "handle": 3}},
    ]}  # fmt: skip
    assert part_mod.parse_ruleset(ruleset) == [
        FaultRecord("partition", "p1", ("02:10:c0:a8:01:01",), ("02:10:c0:a8:02:01", "02:10:c0:a8:02:02"), dropped=5)
    ]


def test_underlay_ips_decode_from_lab_macs_only() -> None:
    assert underlay_ip_of_mac("02:10:c0:a8:03:02") == ipaddress.IPv4Address("192.168.3.2")
    assert underlay_ip_of_mac("02:11:c0:a8:03:02") is None
