"""The real capture: two network namespaces joined by a veth, each "node" with a node address and a
pod address; ``python -m encryption.audit.capture`` runs inside both namespaces while plain pod
UDP/TCP and WireGuard-looking UDP to port 51871 cross, and the counts are checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from encryption.audit.classify import AuditPlan
from encryption.audit.report import NodeCapture, merge
from lab.net import nsutil

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, AF_PACKET)")

REPO = Path(__file__).resolve().parents[2]
NODE_A, NODE_B = "192.168.251.1", "192.168.251.2"
POD_A, POD_B = "10.251.1.1", "10.251.2.1"
PLAN = AuditPlan.build({NODE_A: "t/a", NODE_B: "t/b"}, [("10.251.1.0/24", "t/a"), ("10.251.2.0/24", "t/b")])
UDP_PACKETS, WG_PACKETS, NODE_PACKETS = 7, 5, 3
DURATION = 3.0

SENDER = r"""
import socket, sys, time
pod_a, pod_b, node_a, node_b, n_udp, n_wg, n_node = sys.argv[1:8]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind((pod_a, 0))
for i in range(int(n_udp)):
    u.sendto(b"plain pod datagram %d" % i, (pod_b, 9999))
    time.sleep(0.01)
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.bind((pod_a, 0))
t.settimeout(2)
try:
    t.connect((pod_b, 9998))  # refused: one SYN, one RST
except OSError:
    pass
w = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
w.bind((node_a, 51871))
for i in range(int(n_wg)):
    w.sendto(bytes([4, 0, 0, 0]) + i.to_bytes(4, "little") + bytes(8) + bytes(48), (node_b, 51871))
    time.sleep(0.01)
for i in range(int(n_node)):
    w.sendto(b"node to node", (node_b, 10250))
"""


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    if_a: str
    if_b: str


@pytest.fixture
def pair() -> Iterator[Pair]:
    tag = uuid.uuid4().hex[:6]
    p = Pair(f"aud-{tag}-a", f"aud-{tag}-b", f"audA{tag}", f"audB{tag}")
    try:
        nsutil.create_namespace(p.a)
        nsutil.create_namespace(p.b)
        for ns, cmd in [
            (p.a, f"ip link add {p.if_a} type veth peer name {p.if_b}"),
            (p.a, f"ip link set {p.if_b} netns {p.b}"),
            (p.a, f"ip addr add {NODE_A}/24 dev {p.if_a}"), (p.a, f"ip addr add {POD_A}/32 dev {p.if_a}"),
            (p.b, f"ip addr add {NODE_B}/24 dev {p.if_b}"), (p.b, f"ip addr add {POD_B}/32 dev {p.if_b}"),
            (p.a, f"ip link set {p.if_a} up"), (p.b, f"ip link set {p.if_b} up"),
            (p.a, "ip link set lo up"), (p.b, "ip link set lo up"),
            (p.a, f"ip route add 10.251.2.0/24 via {NODE_B} src {POD_A}"),
            (p.b, f"ip route add 10.251.1.0/24 via {NODE_A} src {POD_B}"),
        ]:
            nsutil.run_in(ns, *cmd.split())
        yield p
    finally:
        nsutil.remove_namespace(p.a)
        nsutil.remove_namespace(p.b)


def start_capture(ns: str, node_ip: str, plan_file: Path) -> subprocess.Popen[str]:
    argv = nsutil.exec_argv(ns, sys.executable, "-m", "encryption.audit.capture", "--node-ip", node_ip,
                            "--duration", str(DURATION), "--plan-json", str(plan_file), "-o", "json")
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def packet_sockets(ns: str) -> int:
    """Packet sockets open in ``ns`` (/proc/net/packet is per network namespace)."""
    lines = nsutil.run_in(ns, "cat", "/proc/net/packet").stdout.splitlines()
    return len(lines) - 1


def finish(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, err = proc.communicate(timeout=DURATION + 15)
    assert proc.returncode == 0, err
    doc = json.loads(out)
    assert isinstance(doc, dict)
    return doc


def counts(doc: dict[str, object]) -> dict[tuple[str, str, str], int]:
    return {(c["src"], c["dst"], c["class"]): c["packets"] for c in doc["counts"]}  # type: ignore[attr-defined]


def test_capture_counts_pod_plaintext_and_wireguard(pair: Pair, tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(PLAN.to_json()))
    cap_a, cap_b = start_capture(pair.a, NODE_A, plan_file), start_capture(pair.b, NODE_B, plan_file)
    try:
        deadline = time.monotonic() + DURATION
        while (packet_sockets(pair.a) < 1 or packet_sockets(pair.b) < 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert packet_sockets(pair.a) >= 1 and packet_sockets(pair.b) >= 1, "the captures did not start"
        nsutil.run_in(pair.a, sys.executable, "-c", SENDER, POD_A, POD_B, NODE_A, NODE_B, str(UDP_PACKETS),
                      str(WG_PACKETS), str(NODE_PACKETS))
        doc_a, doc_b = finish(cap_a), finish(cap_b)
    finally:
        for proc in (cap_a, cap_b):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert doc_a["interface"] == pair.if_a and doc_b["interface"] == pair.if_b
    for doc in (doc_a, doc_b):
        got = counts(doc)
        assert got[("t/a", "t/b", "wireguard")] == WG_PACKETS
        # the datagrams and the SYN; B answers with a RST and ICMP port unreachables (rate limited)
        assert UDP_PACKETS + 1 <= got[("t/a", "t/b", "plaintext-pod")] <= 2 * UDP_PACKETS + 1
        assert got[("t/b", "t/a", "plaintext-pod")] >= 1
        assert got.get(("t/a", "t/b", "plaintext-node"), 0) == NODE_PACKETS
        flows = doc["plaintext_flows"]
        assert isinstance(flows, list)
        udp = [f for f in flows if f["proto"] == "udp" and f["dport"] == 9999]
        assert udp and udp[0]["packets"] == UDP_PACKETS and udp[0]["src"] == POD_A and udp[0]["via"] == "ip"
        assert any(f["proto"] == "tcp" and f["dport"] == 9998 for f in flows)
    report = merge([NodeCapture("t/a", doc_a), NodeCapture("t/b", doc_b)])
    assert not report.passed and "plaintext pod packet" in report.failures[0]
    assert report.pairs[0].counts["wireguard"] == WG_PACKETS  # seen at both ends, counted once


def test_capture_usage_and_capture_errors(pair: Pair) -> None:
    plan = json.dumps(PLAN.to_json())
    base = [sys.executable, "-m", "encryption.audit.capture", "--plan-json", plan]
    bad = subprocess.run([*base, "--interface", "lo", "--duration", "0"], cwd=REPO, capture_output=True, text=True,
                         timeout=30)
    assert bad.returncode == 2 and "must be more than 0" in bad.stderr
    missing = nsutil.run_in(pair.a, *base, "--node-ip", "192.0.2.77", "--duration", "1", check=False, timeout=30)
    assert missing.returncode == 1 and "no interface in this network namespace holds 192.0.2.77" in missing.stderr
    nodev = nsutil.run_in(pair.a, *base, "--interface", "audnosuch0", "--duration", "1", check=False, timeout=30)
    assert nodev.returncode == 1 and "cannot capture on audnosuch0" in nodev.stderr
