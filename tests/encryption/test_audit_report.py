"""merge(): counts per node pair without double counting, the first flows, the verdict and its text."""

from __future__ import annotations

from typing import Any

from encryption.audit.report import NodeCapture, merge


def doc(counts: list[tuple[str, str, str, int]], flows: list[dict[str, Any]] | None = None, **extra: Any
        ) -> dict[str, Any]:
    return {"interface": "eth0", "duration": 5.0, "frames": 100, "drops": 0, "stopped": "duration",
            "counts": [{"src": s, "dst": d, "class": c, "packets": n, "bytes": n * 100} for s, d, c, n in counts],
            "plaintext_flows": flows or [], **extra}


def flow(i: int) -> dict[str, Any]:
    return {"src_node": "c1/n1", "dst_node": "c1/n2", "outer_src": "10.1.0.5", "outer_dst": "10.2.0.7", "via": "ip",
            "proto": "tcp", "src": "10.1.0.5", "sport": 1000 + i, "dst": "10.2.0.7", "dport": 80, "packets": 2}


def test_encrypted_mesh_passes_and_pairs_are_not_double_counted() -> None:
    n1 = doc([("c1/n1", "c1/n2", "wireguard", 40), ("c1/n2", "c1/n1", "wireguard", 38),
              ("c1/n1", "c1/n2", "plaintext-node", 5)])
    n2 = doc([("c1/n2", "c1/n1", "wireguard", 37), ("c1/n1", "c1/n2", "wireguard", 40)])
    report = merge([NodeCapture("c1/n2", n2), NodeCapture("c1/n1", n1)], duration=5)
    assert report.passed and report.failures == []
    [pair] = report.pairs
    assert pair.pair == ("c1/n1", "c1/n2")
    assert pair.counts == {"wireguard": 78, "plaintext-node": 5}  # the larger capture point's, not 78 + 77
    assert pair.seen_at == {"c1/n1": {"wireguard": 78, "plaintext-node": 5}, "c1/n2": {"wireguard": 77}}
    out = report.to_json()
    assert out["verdict"] == "pass" and out["totals"]["wireguard"] == 78 and out["audited"] == ["c1/n1", "c1/n2"]
    assert out["capture_points"]["c1/n1"]["interface"] == "eth0"
    text = report.render_text()
    assert "NODE-PAIR" in text and "PLAINTEXT-POD" in text and "PLAINTEXT-NODE" in text
    assert "c1/n1 <-> c1/n2" in text and "PASS" in text


def test_plaintext_pod_traffic_fails_with_the_first_20_flows() -> None:
    n1 = doc([("c1/n1", "c1/n2", "plaintext-pod", 30)], [flow(i) for i in range(15)])
    n2 = doc([("c1/n1", "c1/n2", "plaintext-pod", 29)], [flow(i) for i in range(10, 30)])
    report = merge([NodeCapture("c1/n1", n1), NodeCapture("c1/n2", n2)])
    assert not report.passed
    assert report.failures == ["30 plaintext pod packet(s) between c1/n1 and c1/n2"]
    assert len(report.flows) == 20  # flows 10-14 were seen at both ends: listed once
    assert report.flows[0]["seen_at"] == ["c1/n1"] and report.flows[10]["seen_at"] == ["c1/n1", "c1/n2"]
    assert report.flows[19]["seen_at"] == ["c1/n2"] and report.flows[19]["sport"] == 1019
    text = report.render_text()
    assert "First plaintext flows (20):" in text
    assert "c1/n1 -> c1/n2 (seen at c1/n1, via ip): tcp 10.1.0.5:1000 -> 10.2.0.7:80, 2 packet(s)" in text
    assert "FAIL: 30 plaintext pod packet(s)" in text
    assert report.to_json()["verdict"] == "fail"


def test_a_node_not_audited_fails_and_says_why() -> None:
    report = merge([NodeCapture("c1/n1", doc([("c1/n1", "c1/n2", "wireguard", 3)])),
                    NodeCapture("c1/n2", error="no agent pod (k8s-app=clustermesh-agent) runs on this node")])
    assert not report.passed
    assert report.not_audited == {"c1/n2": "no agent pod (k8s-app=clustermesh-agent) runs on this node"}
    assert "Not audited: c1/n2: no agent pod" in report.render_text()


def test_no_traffic_is_a_warning_unless_required() -> None:
    quiet = [NodeCapture("c1/n1", doc([])), NodeCapture("c1/n2", doc([]))]
    report = merge(quiet)
    assert report.passed and report.warnings and "no packets between mesh endpoints" in report.warnings[0]
    assert "(no packets between mesh endpoints)" in report.render_text()
    strict = merge(quiet, require_traffic=True)
    assert not strict.passed and "no packets" in strict.failures[0]


def test_drops_and_packet_limit_are_warnings() -> None:
    report = merge([NodeCapture("c1/n1", doc([("c1/n1", "c1/n2", "ipsec", 9)], drops=12, stopped="max-packets"))])
    assert report.passed and len(report.warnings) == 2
    assert "dropped 12" in report.warnings[0] and "packet limit" in report.warnings[1]
    assert report.pairs[0].to_json()["counts"]["ipsec"] == 9


def test_nothing_to_audit_fails() -> None:
    assert not merge([]).passed
