"""The two encrypted cross-cluster paths the WireGuard benchmark compares, each on its own instance
of one topology (clusters c1 and c2 of one node each, a pod behind each node, one underlay bridge:
:class:`lab.net.Topology`, same names and addresses but the prefix):

- **hand-built** (:func:`hand_built_path`): the VXLAN mesh of :func:`lab.net.handbuilt.build_tunnel`
  (plain routes and a kernel VXLAN device), a wireguard-go device per node configured with ``wg``
  (key from :mod:`encryption.wireguard.keys`, port 51871, fwmark 0xE00, MTU underlay - 80, the
  peer's node IP as allowed IP) and the agent's tunnel-mode steering typed by hand: rule
  ``1: ipproto udp dport 8472 lookup 201`` and ``<peer node IP>/32 dev <wg> src <node IP>`` in
  table 201;
- **agent** (:func:`agent_path`): per node a real ``NodeDatapath`` with ``--encryption wireguard``
  in tunnel mode (:mod:`lab.wgnode`, fed with the other cluster's node and pod
  records): its eBPF programs, VXLAN device, wireguard-go device, peers and steering.

Both are context managers that take everything down on exit, failure included: the agents, the
WireGuard devices (each wireguard-go ends and its ``/var/run/wireguard`` socket goes), the
namespaces and the agents' pin root. Device names are ``<topology prefix>w<cluster id>``: unique
on the machine (wireguard-go's sockets are global) and at most 10 characters.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.datapath.steering import VXLAN_PORT, WIREGUARD_PRIORITY, WIREGUARD_TABLE
from bpf.layouts import STATIC_ENCRYPT_KEY
from bpf.maps import remove_pin_tree
from encryption.wireguard.device import FWMARK, LISTEN_PORT, RUNTIME_DIR, WireGuardDevice, device_mtu
from encryption.wireguard.keys import WireGuardKey, generate, load_or_generate
from lab.net import Topology, names, nsutil, ping, unique_prefix
from lab.net.topology import Node, Pod
from lab.wgnode import stop as stop_node
from meshcore.wire import CIDR, IPIdentityPair, NodeAddress
from meshcore.wire import Node as WireNode

PROJECT = Path(__file__).resolve().parents[1]
CLUSTERS = (("c1", 1), ("c2", 2))
AGENT_READY_WITHIN = 120.0
"""Seconds both agents get to load their programs (bcc compiles on 2 shared CPUs) and sync."""
REACH_WITHIN = 20.0


@dataclass
class PathNode:
    """One node of a path: the topology node, its pod and its WireGuard device's name."""

    node: Node
    pod: Pod
    device: str

    def device_handle(self) -> WireGuardDevice:
        """The device, driven from this node's namespace."""
        return WireGuardDevice(self.device, exec_prefix=("ip", "netns", "exec", self.node.ns))


@dataclass
class BenchPath:
    """A built path: its kind (``hand-built`` or ``agent``), topology and the two nodes (c1's sends)."""

    kind: str
    topo: Topology
    nodes: tuple[PathNode, PathNode]
    agents: list[subprocess.Popen[bytes]] = field(default_factory=list)
    pin_root: Path | None = None  # the agents' bpffs pin root

    @property
    def client(self) -> Pod:
        return self.nodes[0].pod

    @property
    def server(self) -> Pod:
        return self.nodes[1].pod


def _topology(base: str) -> tuple[Topology, tuple[PathNode, PathNode]]:
    topo = Topology(unique_prefix(base))
    try:
        built = []
        for cluster, cid in CLUSTERS:
            topo.add_cluster(cluster, cid)
            node = topo.add_node(cluster, "n0")
            device = f"{topo.prefix}w{cid}"
            if (RUNTIME_DIR / f"{device}.sock").exists():
                raise RuntimeError(f"a wireguard-go socket for {device} exists already: pick another prefix")
            built.append(PathNode(node, topo.add_pod(node, "p0"), device))
    except BaseException:
        topo.close()
        raise
    return topo, (built[0], built[1])


def _teardown(path: BenchPath) -> None:
    """Agents, then WireGuard devices (wireguard-go ends, its socket goes), then the namespaces."""
    for proc in path.agents:
        stop_node(proc)
    for n in path.nodes:
        with contextlib.suppress(Exception):
            n.device_handle().delete()
        sock = RUNTIME_DIR / f"{n.device}.sock"
        with contextlib.suppress(Exception):
            n.device_handle().delete()  # a second pass: the namespace may have been busy
        if sock.exists():
            sock.unlink(missing_ok=True)
    path.topo.close()


def _wait_reachable(path: BenchPath) -> None:
    deadline = time.monotonic() + REACH_WITHIN
    while time.monotonic() < deadline:  # the first ping also makes the WireGuard handshake
        if ping(path.client, path.server.ip, count=1, timeout=1.0):
            return
    raise RuntimeError(f"{path.kind} path: {path.server.ip} unreachable from {path.client.ip} in {REACH_WITHIN:g} s")


# ---- hand-built ----


def _wg_set_with_key(ns: str, device: str, key: WireGuardKey, *args: str) -> None:
    """``wg set DEVICE private-key /dev/fd/N ARGS`` in ``ns``: the key goes through a pipe, never argv."""
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, (key.private_b64() + "\n").encode())
        os.close(write_fd)
        write_fd = -1
        argv = nsutil.exec_argv(ns, "wg", "set", device, "private-key", f"/dev/fd/{read_fd}", *args)
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, pass_fds=(read_fd,), check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"wg set {device} failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


def _hand_built_wireguard(local: PathNode, remote: PathNode, key: WireGuardKey, remote_pub: str) -> None:
    ns, dev, peer_ip = local.node.ns, local.device, str(remote.node.underlay_ip)
    env = {k: v for k, v in os.environ.items() if k != "WG_PROCESS_FOREGROUND"}
    subprocess.run(nsutil.exec_argv(ns, "wireguard-go", dev), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env=env, start_new_session=True, timeout=10, check=True)  # fmt: skip
    peer = ("peer", remote_pub, "endpoint", f"{peer_ip}:{LISTEN_PORT}", "allowed-ips", f"{peer_ip}/32")
    _wg_set_with_key(ns, dev, key, "listen-port", str(LISTEN_PORT), "fwmark", f"0x{FWMARK:x}", *peer)
    mtu = device_mtu(names.UNDERLAY_MTU)
    for argv in (
        ("ip", "link", "set", "dev", dev, "mtu", str(mtu), "up"),
        ("sysctl", "-q", "-w", f"net.ipv4.conf.{dev}.rp_filter=0"),
        ("ip", "rule", "add", "priority", str(WIREGUARD_PRIORITY), "ipproto", "udp", "dport", str(VXLAN_PORT),
         "lookup", str(WIREGUARD_TABLE)),
        ("ip", "route", "add", f"{peer_ip}/32", "dev", dev, "src", str(local.node.underlay_ip), "scope", "link",
         "table", str(WIREGUARD_TABLE)),
    ):  # fmt: skip
        nsutil.run_in(ns, *argv)


@contextlib.contextmanager
def hand_built_path() -> Iterator[BenchPath]:
    """The hand-built path, built and reachable; taken down on exit."""
    topo, nodes = _topology("wbh")
    path = BenchPath("hand-built", topo, nodes)
    try:
        topo.hand_built_tunnel()
        keys = (generate(), generate())
        for i in (0, 1):
            _hand_built_wireguard(nodes[i], nodes[1 - i], keys[i], keys[1 - i].public_key)
        _wait_reachable(path)
        yield path
    finally:
        _teardown(path)


# ---- agent ----


def _wire_node(n: PathNode, public_key: str) -> WireNode:
    net = n.node.pod_cidr
    return WireNode(
        name=n.node.name,
        cluster=n.node.cluster,
        ip_addresses=[NodeAddress("InternalIP", str(n.node.underlay_ip))],
        ipv4_alloc_cidr=CIDR(str(net.network_address), net.netmask.packed),
        cluster_id=n.node.cluster_id,
        encryption_key=STATIC_ENCRYPT_KEY,
        wireguard_pub_key=public_key,
    )


def _pair(n: PathNode) -> IPIdentityPair:
    return IPIdentityPair(ip=str(n.pod.ip), host_ip=str(n.node.underlay_ip), id=(n.node.cluster_id << 16) | 100)


def agent_spec(local: PathNode, remote: PathNode, keys: dict[str, str], pin_root: Path, state: Path) -> dict[str, Any]:
    """The :mod:`lab.wgnode` spec of ``local``'s agent (pure): tunnel mode,
    ``--encryption wireguard``, the other cluster's node (with its public key from ``keys``, by
    cluster) and pod as remote records, its own as the local etcd's."""

    def text(value: WireNode | IPIdentityPair) -> str:
        return value.encode().decode()

    return {
        "local": {"cluster": local.node.cluster, "cluster_id": local.node.cluster_id, "node": local.node.name},
        "pin_root": str(pin_root),
        "underlay": local.node.underlay_ifname,
        "routing_mode": "tunnel",
        "state_dir": str(state / "state"),
        "status": str(state / "status.json"),
        "encryption": {"mode": "wireguard", "device": local.device},
        "remote": [{
            "name": remote.node.cluster, "id": remote.node.cluster_id,
            "nodes": {remote.node.name: text(_wire_node(remote, keys[remote.node.cluster]))},
            "ipcache": {str(remote.pod.ip): text(_pair(remote))},
        }],
        "local_state": {"pairs": [text(_pair(local))], "nodes": [text(_wire_node(local, keys[local.node.cluster]))]},
    }  # fmt: skip


def _synced(status: dict[str, Any]) -> bool:
    enc = status.get("encryption") or {}
    return bool(
        status.get("programmed")
        and enc.get("peer-count") == 1
        and all(p.get("in-sync") for p in enc.get("peers", []))
        and all(r.get("synced") for r in (status.get("reconcilers") or {}).values())
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def _start_agent(n: PathNode, spec: dict[str, Any], state: Path) -> subprocess.Popen[bytes]:
    spec_path = state / "spec.json"
    spec_path.write_text(json.dumps(spec))
    argv = ["nsenter", f"--net=/run/netns/{n.node.ns}", "setpriv", "--pdeathsig", "KILL", "--",
            sys.executable, "-m", "lab.wgnode", str(spec_path)]  # fmt: skip
    with open(state / "agent.log", "ab") as log:
        return subprocess.Popen(argv, cwd=PROJECT, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                env={**os.environ, "PYTHONPATH": str(PROJECT)})  # fmt: skip


def _wait_agents(path: BenchPath, states: list[Path]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + AGENT_READY_WITHIN
    while time.monotonic() < deadline:
        for proc, state in zip(path.agents, states, strict=True):
            if proc.poll() is not None:
                log = (state / "agent.log").read_text()[-3000:]
                raise RuntimeError(f"agent exited with {proc.returncode}:\n{log}")
        statuses = [_read_json(s / "status.json") for s in states]
        if all(_synced(s) for s in statuses):
            return statuses
        time.sleep(0.2)
    last = [_read_json(s / "status.json") for s in states]
    raise RuntimeError(f"agents not synced within {AGENT_READY_WITHIN:g} s: {last}")


@contextlib.contextmanager
def agent_path() -> Iterator[BenchPath]:
    """The agent path: both agents running, synced, the pods reachable; taken down on exit."""
    topo, nodes = _topology("wba")
    path = BenchPath("agent", topo, nodes)
    pin_root = Path("/sys/fs/bpf") / f"cmbench-wg-{uuid.uuid4().hex[:8]}"
    path.pin_root = pin_root
    tmp = Path(tempfile.mkdtemp(prefix="cmbench-wg-"))
    try:
        states = [tmp / n.node.cluster for n in nodes]
        keys = {n.node.cluster: load_or_generate(s / "state")[0].public_key for n, s in zip(nodes, states, strict=True)}
        for i, (n, state) in enumerate(zip(nodes, states, strict=True)):
            pins = pin_root / n.node.cluster  # the maps are pinned by node name, and both nodes are n0
            pins.mkdir(parents=True)
            path.agents.append(_start_agent(n, agent_spec(n, nodes[1 - i], keys, pins, state), state))
        _wait_agents(path, states)
        _wait_reachable(path)
        yield path
    finally:
        _teardown(path)
        remove_pin_tree(pin_root)
        shutil.rmtree(tmp, ignore_errors=True)


