"""``--encryption wireguard`` on real node datapaths: namespaces of a :class:`lab.net.Topology`
(clusters c1 and c2 on one underlay bridge), each node's ``NodeDatapath`` (BPF programs, real
wireguard-go, policy routing) running in its namespace (:mod:`lab.wgnode`), fed
with Cilium node and ipcache records (the remote cluster's through the desired-state index, this
cluster's as the local etcd's), traffic between the pods, a capture on the underlay bridge.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.config import wireguard_device_name
from bpf.layouts import STATIC_ENCRYPT_KEY, Direction, IPCacheValue, Reason, pack_ipcache_key
from bpf.maps import NodeMaps
from encryption.wireguard.device import WireGuardDevice
from encryption.wireguard.keys import load_or_generate
from lab.net import Topology, ping, tcp_stream, unique_prefix
from lab.net.topology import Node, Pod
from lab.wgnode import stop as stop_node
from meshcore.wire import CIDR, IPIdentityPair, NodeAddress
from meshcore.wire import Node as WireNode

pytestmark = pytest.mark.timeout(180)

PROJECT = Path(__file__).resolve().parents[3]
STRICT = "10.0.0.0/8"


@dataclass
class LabNode:
    """A topology node with its pod, key and (maybe) running datapath."""

    node: Node
    pod: Pod
    state_dir: Path
    public_key: str
    device: str
    spec: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"{self.node.cluster}/{self.node.name}"

    @property
    def status_path(self) -> Path:
        return self.state_dir.parent / "status.json"

    @property
    def log_path(self) -> Path:
        return self.state_dir.parent / "node.log"

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.status_path.read_text()))
        except (OSError, ValueError):
            return {}

    def log(self) -> str:
        return self.log_path.read_text()[-4000:] if self.log_path.exists() else ""

    def sh(self, *argv: str) -> str:
        out = subprocess.run(["ip", "netns", "exec", self.node.ns, *argv], capture_output=True, text=True,
                             timeout=10, check=True)  # fmt: skip
        return out.stdout


def _identity(cluster_id: int) -> int:
    return (cluster_id << 16) | 100


def _wire_node(n: LabNode, *, key: bool = True, labels: dict[str, str] | None = None) -> WireNode:
    net = n.node.pod_cidr
    return WireNode(
        name=n.node.name,
        cluster=n.node.cluster,
        ip_addresses=[NodeAddress("InternalIP", str(n.node.underlay_ip))],
        ipv4_alloc_cidr=CIDR(str(net.network_address), net.netmask.packed),
        cluster_id=n.node.cluster_id,
        encryption_key=STATIC_ENCRYPT_KEY if key else 0,
        wireguard_pub_key=n.public_key if key else "",
        labels=labels,
    )


def _pair(n: LabNode) -> IPIdentityPair:
    return IPIdentityPair(ip=str(n.pod.ip), host_ip=str(n.node.underlay_ip), id=_identity(n.node.cluster_id))


class WgLab:
    """The topology and its nodes; :meth:`start` runs a node's datapath."""

    def __init__(self, topo: Topology, base: Path, pin_root: Path, tag: str) -> None:
        self.topo = topo
        self.base = base
        self.pin_root = pin_root
        self.tag = tag
        self.nodes: dict[str, LabNode] = {}
        self.keyless: set[str] = set()
        self.labels: dict[str, dict[str, str]] = {}

    def add(self, cluster: str, name: str) -> LabNode:
        node = self.topo.add_node(cluster, name)
        pod = self.topo.add_pod(node, f"p{name}")
        state = self.base / f"{cluster}-{name}" / "state"
        key, _ = load_or_generate(state)
        device = wireguard_device_name(f"w{self.tag}{{hash}}", cluster, name)
        n = LabNode(node, pod, state, key.public_key, device)
        self.nodes[n.name] = n
        return n

    def spec(self, n: LabNode, *, routing_mode: str = "tunnel", **encryption: Any) -> dict[str, Any]:
        def node_json(o: LabNode) -> str:
            return _wire_node(o, key=o.name not in self.keyless, labels=self.labels.get(o.name)).encode().decode()

        remote: dict[str, dict[str, Any]] = {}
        for o in self.nodes.values():
            if o.node.cluster == n.node.cluster:
                continue
            view = remote.setdefault(o.node.cluster, {"name": o.node.cluster, "id": o.node.cluster_id,
                                                      "nodes": {}, "ipcache": {}})  # fmt: skip
            view["nodes"][o.node.name] = node_json(o)
            view["ipcache"][str(o.pod.ip)] = _pair(o).encode().decode()
        same = [o for o in self.nodes.values() if o.node.cluster == n.node.cluster]
        return {
            "local": {"cluster": n.node.cluster, "cluster_id": n.node.cluster_id, "node": n.node.name},
            "pin_root": str(self.pin_root),
            "underlay": n.node.underlay_ifname,
            "routing_mode": routing_mode,
            "state_dir": str(n.state_dir),
            "status": str(n.status_path),
            "encryption": {"device": n.device, **encryption},
            "remote": list(remote.values()),
            "local_state": {"pairs": [_pair(o).encode().decode() for o in same],
                            "nodes": [node_json(o) for o in same]},  # fmt: skip
        }

    def start(self, n: LabNode, spec: dict[str, Any] | None = None) -> None:
        if spec is not None:
            n.spec = spec
        path = n.state_dir.parent / "spec.json"
        path.write_text(json.dumps(n.spec))
        n.status_path.unlink(missing_ok=True)
        argv = ["nsenter", f"--net=/run/netns/{n.node.ns}", "setpriv", "--pdeathsig", "KILL", "--",
                sys.executable, "-m", "lab.wgnode", str(path)]  # fmt: skip
        with open(n.log_path, "ab") as log:
            n.proc = subprocess.Popen(argv, cwd=PROJECT, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                      env={**os.environ, "PYTHONPATH": str(PROJECT)})  # fmt: skip

    def stop(self, n: LabNode) -> None:
        proc, n.proc = n.proc, None
        stop_node(proc)

    def wait(self, n: LabNode, check: Callable[[dict[str, Any]], bool], within: float = 40.0) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if n.proc is not None and n.proc.poll() is not None:
                raise AssertionError(f"{n.name} exited with {n.proc.returncode}:\n{n.log()}")
            status = n.status()
            if status and check(status):
                return status
            time.sleep(0.2)
        raise AssertionError(f"{n.name}: condition not met within {within}s: {n.status()}\n{n.log()}")

    def close(self) -> None:
        for n in self.nodes.values():
            self.stop(n)
        for n in self.nodes.values():  # wireguard-go lives until its device goes
            with contextlib.suppress(Exception):
                WireGuardDevice(n.device, exec_prefix=("ip", "netns", "exec", n.node.ns)).delete()


@pytest.fixture
def wglab(tmp_path: Path, pin_root: Path) -> Iterator[WgLab]:
    with Topology(unique_prefix("wg")) as topo:
        topo.add_cluster("c1", 1)
        topo.add_cluster("c2", 2)
        lab = WgLab(topo, tmp_path, pin_root, uuid.uuid4().hex[:4])
        try:
            yield lab
        finally:
            lab.close()


def _synced(peers: int) -> Callable[[dict[str, Any]], bool]:
    def check(status: dict[str, Any]) -> bool:
        enc = status.get("encryption") or {}
        recs = status.get("reconcilers") or {}
        return bool(
            status.get("programmed")
            and enc.get("peer-count") == peers
            and all(p["in-sync"] for p in enc.get("peers", []))
            and all(r["synced"] for r in recs.values())
        )

    return check


@contextlib.contextmanager
def _capture(lab: WgLab) -> Iterator[dict[str, int]]:
    """tcpdump on the underlay bridge; yields a dict filled on exit: ``wireguard`` (UDP 51871),
    ``plaintext`` (pod addresses in the outer header or VXLAN 8472), ``icmp-nodes`` (node ICMP)."""
    pcap = lab.base / f"cap-{uuid.uuid4().hex[:6]}.pcap"
    err = lab.base / "tcpdump.err"
    bridge = f"{lab.topo.prefix}br"
    with open(err, "wb") as errf:
        proc = subprocess.Popen(["ip", "netns", "exec", lab.topo.underlay_ns, "tcpdump", "-i", bridge, "-nn", "-U",
                                 "-w", str(pcap), "ip"], stdout=subprocess.DEVNULL, stderr=errf)  # fmt: skip
    counts: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 10
        while b"listening on" not in err.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield counts
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc.poll() is None:
            proc.kill()
    for name, flt in (("wireguard", "udp port 51871"), ("plaintext", "net 10.0.0.0/8 or udp port 8472"),
                      ("icmp-nodes", "icmp and net 192.168.0.0/16")):  # fmt: skip
        out = subprocess.run(["tcpdump", "-nn", "-r", str(pcap), flt], capture_output=True, text=True, timeout=30)
        counts[name] = len([line for line in out.stdout.splitlines() if line.strip()])


def _counter(lab: WgLab, n: LabNode, reason: Reason) -> int:
    with NodeMaps(n.node.name, lab.pin_root) as maps:
        return maps.counters().get((reason, Direction.EGRESS), (0, 0))[0]


def _encrypt_key(lab: WgLab, n: LabNode, prefix: str) -> int | None:
    with NodeMaps(n.node.name, lab.pin_root) as maps:
        for k, v in maps.ipcache.items_packed():
            if k == pack_ipcache_key(prefix):
                return int(IPCacheValue.from_buffer_copy(v).encrypt_key)
    return None


def test_tunnel_wireguard_encrypts_and_restarts_without_changes(wglab: WgLab) -> None:
    a, b, c = wglab.add("c1", "n0"), wglab.add("c1", "n1"), wglab.add("c2", "m0")
    a.sh("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1")  # as many distributions ship it
    wglab.start(a, wglab.spec(a, mode="wireguard", strict_cidr=STRICT))
    for n in (b, c):
        wglab.start(n, wglab.spec(n, mode="wireguard"))
    statuses = {n.name: wglab.wait(n, _synced(2)) for n in (a, b, c)}
    enc = statuses[a.name]["encryption"]
    assert enc["implementation"] == "userspace" and enc["device"] == a.device and enc["public-key"] == a.public_key
    assert not enc["key-generated"] and enc["rp-filter-all-was"] == 1
    assert a.sh("sysctl", "-n", "net.ipv4.conf.all.rp_filter").strip() == "0"
    assert {p["node"] for p in enc["peers"]} == {b.name, c.name}
    assert enc["steering"]["rules"] == ["1: ipproto udp dport 8472 lookup 201"]
    assert "ipproto udp dport 8472 lookup 201 proto 201" in a.sh("ip", "rule")
    table = {line.split()[0] for line in a.sh("ip", "route", "show", "table", "201").splitlines()}
    assert table == {str(b.node.underlay_ip), str(c.node.underlay_ip)}
    for peer in (b, c):  # the peers' pods are encrypted: strict mode lets them through
        assert _encrypt_key(wglab, a, f"{peer.pod.ip}/32") == STATIC_ENCRYPT_KEY

    with _capture(wglab) as seen:
        for server, port in ((c, 5701), (b, 5702)):  # cross-cluster and within c1
            result = tcp_stream(server.pod, a.pod, port=port, seconds=1)
            assert result.ok, (server.name, result, a.log())
        assert ping(c.pod, a.pod.ip, count=2)
    assert seen["wireguard"] > 0 and seen["plaintext"] == 0, seen
    assert _counter(wglab, a, Reason.UNENCRYPTED) == 0

    enc = wglab.wait(a, lambda s: all(p["latest-handshake"] for p in s["encryption"]["peers"]))["encryption"]
    assert all(p["rx-bytes"] > 0 and p["tx-bytes"] > 0 for p in enc["peers"]), enc["peers"]
    pid, ifindex = enc["userspace-pid"], enc["ifindex"]
    assert pid

    # restart: same device, same wireguard-go, nothing written or deleted
    wglab.stop(a)
    wglab.start(a)
    status = wglab.wait(a, _synced(2))
    recs = status["reconcilers"]
    for name in ("wireguard-peers", "steering-rules", "steering-routes"):
        assert (recs[name]["updates"], recs[name]["deletes"]) == (0, 0), (name, recs[name])
    assert status["encryption"]["userspace-pid"] == pid and status["encryption"]["ifindex"] == ifindex
    assert tcp_stream(c.pod, a.pod, port=5703, seconds=1).ok


def test_strict_mode_scope_and_opt_out(wglab: WgLab) -> None:
    a, b, c, d = wglab.add("c1", "n0"), wglab.add("c1", "n1"), wglab.add("c2", "m0"), wglab.add("c2", "m1")
    wglab.keyless.add(c.name)  # c2/n0 publishes no key: a plaintext peer
    wglab.labels[a.name] = {"node-role.kubernetes.io/control-plane": ""}
    wglab.start(a, wglab.spec(a, mode="wireguard", scope="inter-cluster", strict_cidr=STRICT, node_encryption=True))
    status = wglab.wait(a, _synced(1))
    enc = status["encryption"]
    # inter-cluster: c1/n1 (with a key) is no peer; c2/n0 has no key; c2/n1 is the only peer
    assert [p["node"] for p in enc["peers"]] == [d.name]
    assert c.name in enc["plaintext-peers"] and b.name not in enc["plaintext-peers"]
    assert enc["node-encryption"] == "OptedOut" and enc["encryption-key"] == 0
    assert enc["steering"]["rules"] == ["1: ipproto udp dport 8472 lookup 201"]  # no node-encryption rule
    assert enc["strict-mode"] == {"cidr": STRICT, "allow-remote-node-identities": False}
    assert _encrypt_key(wglab, a, f"{d.pod.ip}/32") == STATIC_ENCRYPT_KEY
    assert _encrypt_key(wglab, a, f"{b.pod.ip}/32") == 0 and _encrypt_key(wglab, a, f"{c.pod.ip}/32") == 0
    before = _counter(wglab, a, Reason.UNENCRYPTED)
    with _capture(wglab) as seen:
        assert not ping(a.pod, c.pod.ip, count=1)  # no key: dropped by strict mode
        assert not ping(a.pod, b.pod.ip, count=1)  # same cluster, out of scope: dropped too
    assert _counter(wglab, a, Reason.UNENCRYPTED) >= before + 2
    assert seen["plaintext"] == 0, seen

    # c2/m1 comes back with a new key (a reboot): its old peer goes, the new one has every allowed IP
    old_key, d.public_key = d.public_key, load_or_generate(wglab.base / "new-key")[0].public_key
    wglab.stop(a)
    wglab.start(a, wglab.spec(a, mode="wireguard", scope="inter-cluster", strict_cidr=STRICT, node_encryption=True))
    status = wglab.wait(a, lambda s: _synced(1)(s) and s["encryption"]["peers"][0]["public-key"] == d.public_key)
    peers = status["reconcilers"]["wireguard-peers"]
    assert (peers["updates"], peers["deletes"]) == (1, 1), peers
    dump = a.sh("wg", "show", a.device, "allowed-ips")
    assert old_key not in dump and f"{d.public_key}\t{d.node.underlay_ip}/32" in dump, dump

    # --encryption none on a node that had WireGuard: the steering goes (the device is left alone)
    wglab.stop(a)
    wglab.start(a, wglab.spec(a, mode="none", strict_cidr=STRICT))
    status = wglab.wait(a, lambda s: bool(s.get("programmed")))
    assert status["encryption"]["mode"] == "none" and "wireguard-peers" not in status["reconcilers"]
    assert "lookup 201" not in a.sh("ip", "rule") and not a.sh("ip", "route", "show", "table", "201").strip()
    assert _encrypt_key(wglab, a, f"{d.pod.ip}/32") == 0  # nothing is encrypted: strict mode drops it all
    assert a.device in a.sh("ip", "link", "show")


def test_native_wireguard_with_node_encryption(wglab: WgLab) -> None:
    a, c = wglab.add("c1", "n0"), wglab.add("c2", "m0")
    for n in (a, c):
        wglab.start(n, wglab.spec(n, routing_mode="native", mode="wireguard", node_encryption=True))
    for n in (a, c):
        enc = wglab.wait(n, _synced(1))["encryption"]
        assert enc["node-encryption"] == "Enabled"
    peer = enc["peers"][0]
    assert set(peer["allowed-ips"]) == {f"{a.node.underlay_ip}/32", str(a.node.pod_cidr)}
    rules = a.sh("ip", "rule")
    assert "not from all fwmark 0xe00/0xff000f00 lookup 201 proto 201" in rules, rules
    assert "not from all fwmark 0xe00/0xff000f00 lookup 202 proto 201" in rules, rules
    assert str(c.node.pod_cidr) in a.sh("ip", "route", "show", "table", "201")
    assert str(c.node.underlay_ip) in a.sh("ip", "route", "show", "table", "202")
    with _capture(wglab) as seen:
        result = tcp_stream(c.pod, a.pod, port=5711, seconds=1)
        assert result.ok, (result, a.log())
        assert subprocess.run(["ip", "netns", "exec", a.node.ns, "ping", "-c", "2", "-W", "1", "-i", "0.2",
                               str(c.node.underlay_ip)], capture_output=True, timeout=10).returncode == 0  # fmt: skip
    assert seen["wireguard"] > 0 and seen["plaintext"] == 0 and seen["icmp-nodes"] == 0, seen
    assert ipaddress.ip_address(peer["endpoint"].split(":")[0]) == a.node.underlay_ip
