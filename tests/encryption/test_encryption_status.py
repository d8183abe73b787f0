"""``clustermesh encryption status``: the checks across nodes (pure), the exit status and output
of the command with given cluster reads and agent answers (the real exec path is exercised in
tests/lab/test_lab_wireguard.py)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from click.testing import CliRunner

from clustermesh_cli.encryption import encryption
from clustermesh_cli.encryption.discover import ClusterObjects, Target
from clustermesh_cli.encryption.status import run_encryption_status
from clustermesh_cli.encryption.statusmodel import NodeProbe, render_text, summarise

KEYS = {f"c{c}/c{c}-n{j}": f"{c}{j}".ljust(43, "A") + "=" for c in (1, 2) for j in (0, 1)}


def enc(node: str, *, peers: list[str] | None = None, mode: str = "wireguard", **extra: Any) -> dict[str, Any]:
    peer_names = peers if peers is not None else [n for n in KEYS if n != node]
    doc: dict[str, Any] = {
        "mode": mode, "implementation": "userspace", "device": "cmwg0", "public-key": KEYS[node],
        "key-file-age-seconds": 12.5, "key-rotations": 0, "published": True, "node-encryption": "Disabled",
        "strict-mode": None, "scope": "all", "userspace-pid": 42, "plaintext-peers": [], "plaintext-peer-count": 0,
        "problems": [], "publish-error": "", "last-error": "",
        "peers": [{"node": p, "public-key": KEYS[p], "endpoint": "192.168.0.1:51871", "allowed-ips": ["192.168.0.1/32"],
                   "latest-handshake-seconds-ago": 3.2, "rx-bytes": 2048, "tx-bytes": 1024, "in-sync": True}
                  for p in peer_names],
    }  # fmt: skip
    if mode != "wireguard":
        doc.update({"implementation": None, "device": None, "public-key": None, "peers": []})
    doc.update(extra)
    return doc


def probe(node: str, section: Mapping[str, Any] | None = None, error: str | None = None) -> NodeProbe:
    status = None if error else {"datapath": {"encryption": dict(section or enc(node))}}
    return NodeProbe(node, "ctx-" + node.split("/")[0], f"kube-system/agent-{node[-2:]}", status=status, error=error)


def test_a_healthy_mesh_passes_and_shows_every_node_and_peer() -> None:
    mesh = summarise(["ctx-c1", "ctx-c2"], [probe(n) for n in KEYS])
    assert mesh.passed
    doc = mesh.to_json()
    assert doc["verdict"] == "pass" and doc["totals"] == {
        "nodes": 4, "reachable": 4, "wireguard": 4, "peers": 12, "peers-in-sync": 12, "plaintext-peers": 0}
    node = doc["nodes"][0]
    assert (node["mode"], node["implementation"], node["key-age-seconds"], node["key-rotations"]) == (
        "wireguard", "userspace", 12.5, 0)
    assert node["peers"][0]["latest-handshake-seconds-ago"] == 3.2
    text = render_text(mesh)
    assert "c1/c1-n0  wireguard (userspace, pid 42) device cmwg0" in text
    assert "PEER" in text and "3s ago" in text and "2.0 KiB" in text
    assert text.splitlines()[-1].startswith("OK: 4/4 node(s) reached, 4 with WireGuard, 12/12 peer(s) in sync")


def test_out_of_sync_peers_stale_keys_and_missing_peers_are_problems() -> None:
    bad = enc("c1/c1-n0")
    bad["peers"][0]["in-sync"] = False
    bad["peers"][1]["public-key"] = "stale".ljust(43, "B") + "="
    lonely = enc("c2/c2-n1", peers=["c1/c1-n0", "c1/c1-n1"])  # c2/c2-n0 neither peer nor plaintext
    mesh = summarise(["a"], [probe("c1/c1-n0", bad), probe("c1/c1-n1"), probe("c2/c2-n0"), probe("c2/c2-n1", lonely)])
    assert not mesh.passed
    problems = mesh.to_json()["problems"]
    assert any(p.startswith("c1/c1-n0: peer c1/c1-n1") and "not in sync" in p for p in problems), problems
    assert any("c1/c1-n0: peer c2/c2-n0 is configured with key stale" in p for p in problems), problems
    assert any(p.startswith("c2/c2-n1: c2/c2-n0 runs WireGuard") for p in problems), problems
    # inter-cluster scope: the own cluster's nodes are not expected as peers
    scoped = enc("c2/c2-n1", peers=["c1/c1-n0", "c1/c1-n1"], scope="inter-cluster")
    ok = summarise(["a"], [probe("c1/c1-n0"), probe("c1/c1-n1"), probe("c2/c2-n0"), probe("c2/c2-n1", scoped)])
    assert not any(n.problems for n in ok.nodes if n.node == "c2/c2-n1")


def test_a_node_disabled_by_label_is_a_warning_and_a_plaintext_peer_elsewhere() -> None:
    off = enc("c2/c2-n1", mode="none")
    off.update({"disabled-by": "label clustermesh.io/encryption=disabled", "configured-mode": "wireguard"})
    others = [n for n in KEYS if n != "c2/c2-n1"]
    probes = []
    for n in others:
        doc = enc(n, peers=[o for o in others if o != n])
        doc.update({"plaintext-peers": ["c2/c2-n1"], "plaintext-peer-count": 1})
        probes.append(probe(n, doc))
    mesh = summarise(["a"], [*probes, probe("c2/c2-n1", off)])
    assert mesh.passed, mesh.to_json()["problems"]
    doc = mesh.to_json()
    assert doc["totals"]["plaintext-peers"] == 3 and doc["totals"]["wireguard"] == 3
    assert any("encryption is off on this node (label clustermesh.io/encryption=disabled)" in w
               for w in doc["warnings"])
    assert "c2/c2-n1  encryption off (label clustermesh.io/encryption=disabled; configured wireguard)" in (
        render_text(mesh))
    assert "plaintext peers: c2/c2-n1" in render_text(mesh)
    # still configured as a peer somewhere after it switched off: its withdrawal has not arrived
    stale = summarise(["a"], [probe(n) for n in others] + [probe("c2/c2-n1", off)])
    assert not stale.passed
    assert any("has encryption off" in p for p in stale.to_json()["problems"])


def test_an_unreachable_node_fails_and_is_named() -> None:
    mesh = summarise(["a"], [probe("c1/c1-n0"), probe("c1/c1-n1", error="no answer within 10s")])
    assert not mesh.passed and mesh.unreachable == ["c1/c1-n1"]
    assert "unreachable: c1/c1-n1" in render_text(mesh).splitlines()[-1]
    assert "c1/c1-n1: not reached: no answer within 10s" in mesh.to_json()["problems"]


def _cluster(context: str, name: str, nodes: list[str], pods: list[str]) -> ClusterObjects:
    def node(n: str, i: int) -> dict[str, Any]:
        return {"metadata": {"name": n}, "spec": {"podCIDR": f"10.{name[1]}.{i}.0/24"},
                "status": {"addresses": [{"type": "InternalIP", "address": f"192.168.{name[1]}.{i + 1}"}]}}

    agents = [{"metadata": {"name": f"agent-{n}", "namespace": "kube-system"}, "spec": {"nodeName": n},
               "status": {"phase": "Running"}} for n in pods]
    return ClusterObjects(context, name, [node(n, i) for i, n in enumerate(nodes)], agent_pods=agents)


@pytest.mark.parametrize("broken", [False, True])
def test_the_command_asks_every_agent_and_exits_1_on_a_problem(broken: bool, capsys: pytest.CaptureFixture[str]
                                                               ) -> None:
    clusters = {"k1": _cluster("k1", "c1", ["c1-n0", "c1-n1"], ["c1-n0", "c1-n1"]),
                "k2": _cluster("k2", "c2", ["c2-n0", "c2-n1"], ["c2-n0"] if broken else ["c2-n0", "c2-n1"])}
    asked: list[str] = []

    def ask(target: Target, timeout: float) -> tuple[Mapping[str, Any] | None, str | None]:
        asked.append(target.node)
        return {"datapath": {"encryption": enc(target.node)}}, None

    code = run_encryption_status(["k1", "k2"], output="json", read=clusters.__getitem__, ask=ask, echo=print)
    doc = json.loads(capsys.readouterr().out)
    assert code == (1 if broken else 0) and doc["verdict"] == ("fail" if broken else "pass")
    if broken:
        assert doc["unreachable"] == ["c2/c2-n1"] and sorted(asked) == sorted(set(KEYS) - {"c2/c2-n1"})
        assert any("c2/c2-n1: not reached: no agent pod" in p for p in doc["problems"])
    else:
        assert sorted(asked) == sorted(KEYS)


def test_help_teaches_the_fields_and_the_exit_status() -> None:
    out = CliRunner().invoke(encryption, ["status", "--help"])
    assert out.exit_code == 0
    for words in ("clustermesh.io/encryption=disabled", "plaintext", "in sync", "Exit status", "--context",
                  "kernel WireGuard or userspace", "strict mode"):
        assert words in out.output, words
