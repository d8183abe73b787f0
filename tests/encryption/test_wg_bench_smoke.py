"""The WireGuard benchmark (:mod:`benchmarks.wireguard`): its pure parts, and one real 1-second run
of both paths (hand-built wireguard-go and the agents), which must leave nothing behind."""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

import pytest

from benchmarks.wgpaths import PathNode, agent_spec
from benchmarks.wireguard import pair_runs, parse_snmp_ip, run, summary
from encryption.wireguard.device import RUNTIME_DIR
from lab.net import nsutil
from lab.net.topology import Node, Pod
from lab.prereqs import datapath_unavailable
from meshcore.wire import Node as WireNode


def test_pairs_each_agent_run_with_the_baselines_around_it() -> None:
    pairs = pair_runs([10.0, 8.0, 12.0, 10.0], [9.0, 9.0, 11.0])
    assert [p.baseline_bps for p in pairs] == [(10.0, 8.0), (8.0, 12.0), (12.0, 10.0)]
    assert [round(p.ratio, 3) for p in pairs] == [1.0, 0.9, 1.0]
    assert pair_runs([10.0], [5.0])[0].ratio == 0.5  # no closing baseline: the one before
    figures = summary(pairs)
    assert figures["median_ratio"] == 1.0 and round(figures["spread"], 3) == 0.1
    with pytest.raises(ValueError):
        pair_runs([1.0], [1.0, 1.0])


def test_parses_the_ip_counters() -> None:
    text = "Ip: Forwarding FragOKs ReasmOKs\nIp: 1 7 3\nIcmp: InMsgs\nIcmp: 4\n"
    assert parse_snmp_ip(text) == {"Forwarding": 1, "FragOKs": 7, "ReasmOKs": 3}
    with pytest.raises(ValueError):
        parse_snmp_ip("Icmp: InMsgs\nIcmp: 4\n")


def test_agent_spec_names_the_other_cluster_as_remote(tmp_path: Path) -> None:
    def node(cluster: str, cid: int) -> PathNode:
        ip, net = ipaddress.IPv4Address(f"192.168.{cid}.1"), ipaddress.IPv4Network(f"10.{cid}.0.0/24")
        n = Node(cluster, cid, "n0", 0, f"x-{cluster}.n0", "xul", ip, "02:10:00:00:00:00", net)
        p = Pod(cluster, "n0", "p0", 0, f"x-{cluster}.n0.p0", n.ns, n.pod_cidr.network_address + 2, "eth0",
                "02:01:00:00:00:00", "xp0", "02:fe:00:00:00:00")  # fmt: skip
        return PathNode(n, p, f"xw{cid}")

    a, b = node("c1", 1), node("c2", 2)
    spec = agent_spec(a, b, {"c1": "A" * 43 + "=", "c2": "B" * 43 + "="}, tmp_path / "pins", tmp_path / "c1")
    assert spec["routing_mode"] == "tunnel" and spec["encryption"] == {"mode": "wireguard", "device": "xw1"}
    (remote,) = spec["remote"]
    assert remote["name"] == "c2" and list(remote["ipcache"]) == ["10.2.0.2"]
    peer = WireNode.decode(remote["nodes"]["n0"].encode())
    assert peer.wireguard_pub_key == "B" * 43 + "=" and peer.cluster_id == 2
    assert len(spec["local_state"]["pairs"]) == 1


@pytest.mark.timeout(240)
def test_one_second_run_of_both_paths_leaves_nothing_behind() -> None:
    reason = datapath_unavailable() or (None if shutil.which("wireguard-go") else "wireguard-go missing")
    if reason is not None:
        pytest.skip(reason)
    result = run(seconds=1.0, runs=1)
    (paired,) = result["runs"]
    assert paired["agent_bps"] > 0 and all(b > 0 for b in paired["baseline_bps"]) and len(paired["baseline_bps"]) == 2
    assert result["median_ratio"] > 0
    for kind in ("hand-built", "agent"):
        assert all(s["wg_tx_bytes"] > 0 for s in result["samples"][kind])
        assert result["mtu"][kind] == {"pod": 1500, "vxlan": 1500, "wireguard": 1470, "underlay": 1550}
    for built in result["built"].values():
        assert not nsutil.namespaces_with_prefix(built["prefix"])
        for device in built["devices"]:
            assert not (RUNTIME_DIR / f"{device}.sock").exists()
    assert not Path(result["built"]["agent"]["pin_root"]).exists()
