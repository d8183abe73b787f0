"""WireGuard in the node datapath (``--encryption wireguard``): the key, the device, the peers,
the steering and what the ipcache's ``encrypt_key`` says, for one node.

Start (:meth:`WireGuardNode.start`, blocking, in the node's network namespace): load or generate
the key in ``--state-dir`` (Cilium's raw 32-byte ``cilium_wg0.key``, 0600), create or reuse the
device (kernel WireGuard, else wireguard-go; MTU = underlay MTU - 80; port 51871; fwmark 0xE00;
``rp_filter`` 0 on it, and ``net.ipv4.conf.all.rp_filter`` lowered to 0 as Cilium's sysctl fix does:
the device has no address, so any other value makes the kernel drop what it decrypts).

Peers (:func:`plan_peers`, pure): every node that publishes a key becomes a peer, by Cilium's
``updatePeer`` rules (:func:`~encryption.wireguard.peers.desired_peers`): the remote clusters'
nodes (the desired-state index's WireGuard peers) and, with ``--encryption-scope all``, this
cluster's other nodes (the local etcd's node records). Allowed IPs: the node IPs; in native routing
also the node's pod CIDRs. (Cilium lists each remote pod's /32 there; the CIDR gives the same
reachability, and a pod change then costs no WireGuard update.) The plan also says which nodes'
traffic is encrypted (:attr:`PeerPlan.encrypt_hosts`: the ipcache gives entries hosted there
``encrypt_key`` 0xFF, the others 0, which egress strict mode drops) and what steering needs
(:mod:`agent.datapath.steering`).

Programming order on a change (:meth:`WireGuardNode.program`, called by the node datapath): peers
first, then the steering routes, each waited for (bounded), so a packet is only steered into the
device once its peer is there; the node datapath withdraws ``encrypt_key`` of lost peers before
and grants it to new ones after. Nothing is programmed before the clustermesh initial sync and the
first local read (the node datapath's rule): the peers' reconciler reads the device only then, and
its first desired state is what removes stale peers (Cilium's peer GC).

Publication: with ``--kubeconfig`` the public key and the advertised encryption key (0xFF, or 0 for
a node that opts out of node encryption by ``--node-encryption-opt-out-labels``) are put on this
node's Node/CiliumNode (:func:`agent.nodepublish.publish_node_encryption`), retried until done.
The opt-out is decided once, from the node's labels (the Kubernetes Node with ``--kubeconfig``,
else this node's record in the local etcd).

``--encryption none`` on a node that had WireGuard: :func:`~agent.datapath.steering.remove_steering`
removes the rules and routes at start; the device and its key are left alone (harmless without
steering; ``ip link del`` removes them).

Per-node migration switch: a node whose Kubernetes Node carries the label
``clustermesh.io/encryption=disabled`` (:data:`ENCRYPTION_LABEL`, read once at start with
``--kubeconfig``, before the device is made: :func:`encryption_disabled_by_label`) runs as with
``--encryption none``: the steering is removed, the device deleted (its wireguard-go ends with it;
the key file is kept, so re-enabling the node brings back the same key) and the published key
withdrawn (:func:`agent.nodepublish.withdraw_node_encryption`: no ``wg-pub-key``, encryption key
0). Every other node then has it among its plaintext peers and, with egress strict mode, drops
pod traffic to it (counted ``unencrypted``). Unreadable labels never switch encryption off.

Metrics (:meth:`AgentMetrics.watch_encryption <agent.metrics.AgentMetrics.watch_encryption>`) are
read from :meth:`WireGuardNode.status_json` at scrape time; :attr:`WireGuardNode.key_rotations`
counts the key rotations this agent committed.

Key rotation (``clustermesh encryption rotate``, ``--wireguard-key-rotation-interval``): make-before-
break through a second, transition device (:func:`~encryption.wireguard.device.transition_device_name`,
port 51872), driven by :mod:`agent.datapath.wgrotation`; the next key is published beside the
current one (``clustermesh.io/wg-next-pub-key``) and the peers read it from the node records.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from agent.datapath.labelselector import parse_selector
from agent.datapath.steering import (
    RouteKey,
    RouteValue,
    Rule,
    RulesTarget,
    SteeringPeer,
    SteeringRoutesTarget,
    remove_steering,
    steering_desired,
)
from agent.datapath.wgrotation import RotationDriver, RotationState, announcements
from agent.desired import LocalInfo, WireGuardPeer, node_peer
from agent.incremental import DesiredIndex
from agent.records import node_record
from bpf.layouts import STATIC_ENCRYPT_KEY
from encryption.wireguard.device import (
    DEVICE_NAME,
    FWMARK,
    LISTEN_PORT,
    WireGuardDevice,
    device_mtu,
    transition_device_name,
)
from encryption.wireguard.dump import DeviceDump
from encryption.wireguard.keys import KEY_FILENAME, WireGuardKey, load_or_generate
from encryption.wireguard.peers import PeerConfig, PeerSource, PeersTarget, desired_peers
from encryption.wireguard.rotation import Announcement, RotationConfig
from meshcore.backoff import Backoff
from meshcore.errors import MeshError
from meshcore.log import get_logger
from meshcore.reconcile import Reconciler
from meshcore.wire import Node as WireNode

__all__ = [
    "DEFAULT_OPT_OUT_LABELS",
    "ENCRYPTION_LABEL",
    "ENCRYPTION_LABEL_DISABLED",
    "EncryptionConfig",
    "PeerCandidate",
    "PeerPlan",
    "Publisher",
    "WireGuardNode",
    "disabled_status_json",
    "encryption_disabled_by_label",
    "read_node_labels",
    "index_peer_candidates",
    "index_wireguard_peers",
    "index_plaintext_nodes",
    "local_peer_candidates",
    "peer_source",
    "plan_peers",
    "steering_cleanup",
]

DEFAULT_OPT_OUT_LABELS = "node-role.kubernetes.io/control-plane"
SYNC_TIMEOUT = 5.0
"""Seconds to wait for the peers (then the steering) to be written before going on anyway."""
DUMP_INTERVAL = 2.0
"""Seconds between two reads of the device for the status (``wg show dump``)."""
LABELS_TIMEOUT = 10.0
"""Seconds to wait for this node's labels (the opt-out decision) before deciding without them."""
_PLAINTEXT_SHOWN = 200
ENCRYPTION_LABEL = "clustermesh.io/encryption"
"""The per-node migration switch: ``disabled`` makes this node's agent run without encryption."""
ENCRYPTION_LABEL_DISABLED = "disabled"


def encryption_disabled_by_label(labels: Mapping[str, str]) -> bool:
    """Whether a node's labels switch its encryption off (``clustermesh.io/encryption=disabled``)."""
    return str(labels.get(ENCRYPTION_LABEL, "")).strip().lower() == ENCRYPTION_LABEL_DISABLED


async def read_node_labels(config: EncryptionConfig, node_name: str, log: Any = None) -> dict[str, str] | None:
    """This node's Kubernetes Node labels, read once at start (bounded by :data:`LABELS_TIMEOUT`),
    for the migration label and the opt-out; None without ``--encryption wireguard`` and
    ``--kubeconfig``, or when the Node cannot be read (then :func:`encryption_disabled_by_label`
    is not applied: an API outage must never turn encryption off)."""
    if not config.wireguard or config.kubeconfig is None:
        return None
    try:
        return await asyncio.wait_for(_k8s_node_labels(config.kubeconfig, node_name), LABELS_TIMEOUT)
    except Exception as err:
        if log is not None:
            log.warning(f"cannot read this node's labels: {ENCRYPTION_LABEL} is not honoured, encryption stays on",
                        error=f"{type(err).__name__}: {err}")  # fmt: skip
        return None


class Publisher(Protocol):
    """:func:`agent.nodepublish.publish_node_encryption`'s signature."""

    def __call__(
        self,
        kubeconfig: Path,
        node_name: str,
        *,
        public_key: str,
        encryption_key: int,
        next_public_key: str | None = None,
    ) -> Awaitable[None]: ...


@dataclass(frozen=True)
class EncryptionConfig:
    """The encryption flags as the node datapath takes them (see ``clustermesh-agent --help``).
    ``device`` is the final device name (``{hash}`` already resolved); ``state_dir`` holds the key;
    ``kubeconfig`` (optional) is where the key is published."""

    mode: str = "none"
    device: str = DEVICE_NAME
    keepalive: int = 0
    scope: str = "all"
    node_encryption: bool = False
    opt_out_labels: str = DEFAULT_OPT_OUT_LABELS
    strict_cidr: str | None = None
    strict_allow_remote_node: bool = False
    rotation_interval: float = 0.0
    """Rotate the key when it is this many seconds old (0: only when asked)."""
    state_dir: Path = Path("/var/run/clustermesh-agent")
    kubeconfig: Path | None = None

    @property
    def wireguard(self) -> bool:
        return self.mode == "wireguard"


# ---- pure: from nodes to the plan ----


@dataclass(frozen=True, slots=True)
class PeerCandidate:
    """A node that publishes a key: where it is and its advertised encryption key (0: it opted
    out of node encryption)."""

    source: PeerSource
    encryption_key: int = STATIC_ENCRYPT_KEY
    next_public_key: str = ""
    """The key it announces to rotate to (``""``: none)."""


def _is_host(prefix: str) -> bool:
    addr, _, bits = prefix.partition("/")
    return not bits or int(bits) == (128 if ":" in addr else 32)


def peer_source(peer: WireGuardPeer) -> PeerSource:
    """A desired-state :class:`~agent.desired.WireGuardPeer` as a peer source: the host prefixes of
    its allowed IPs are its node IPs (the endpoint's first: it is the node's tunnel IP), the others
    its pod CIDRs (so a /32 pod CIDR counts as a node IP)."""
    endpoint_ip = peer.endpoint.rsplit(":", 1)[0].strip("[]") if peer.endpoint else ""
    hosts = [p.split("/")[0] for p in peer.allowed_ips if _is_host(p)]
    node_ips = ([endpoint_ip] if endpoint_ip else []) + [h for h in hosts if h != endpoint_ip]
    cidrs = tuple(p for p in peer.allowed_ips if not _is_host(p))
    return PeerSource(node=f"{peer.cluster}/{peer.node}", public_key=peer.public_key,
                      node_ips=tuple(node_ips), pod_cidrs=cidrs)  # fmt: skip


def local_peer_candidates(nodes: Iterable[WireNode], local: LocalInfo) -> list[PeerCandidate]:
    """This cluster's other nodes (local etcd records) that publish a key."""
    out = []
    for node in nodes:
        if not node.name or node.name == local.node_name:
            continue
        peer = node_peer(node_record(local.cluster_name, node.name, node))
        if peer is not None:
            out.append(PeerCandidate(peer_source(peer), node.encryption_key, peer.next_public_key))
    return out


def index_wireguard_peers(index: DesiredIndex) -> list[WireGuardPeer]:
    """Every winning WireGuard peer of the remote clusters' desired state."""
    return index.wireguard_peers()


def index_peer_candidates(peers: Iterable[WireGuardPeer]) -> list[PeerCandidate]:
    """The remote clusters' peers as candidates, each with its node's encryption key."""
    return [PeerCandidate(peer_source(p), p.encryption_key, p.next_public_key) for p in peers]


def index_plaintext_nodes(index: DesiredIndex) -> list[str]:
    """The remote clusters' nodes known without a WireGuard key (``cluster/name``, sorted)."""
    return sorted(f"{c}/{n}" for (c, n), record in index.nodes().items() if not record.wireguard_pub_key)


@dataclass(frozen=True)
class PeerPlan:
    """What the device, steering and ipcache should say (see :func:`plan_peers`)."""

    peers: dict[str, PeerConfig] = field(default_factory=dict)
    nodes: dict[str, str] = field(default_factory=dict)
    """public key -> node (``cluster/name``)"""
    steering: tuple[SteeringPeer, ...] = ()
    encrypt_hosts: frozenset[str] = frozenset()
    """The node IPs of the configured peers: ipcache entries with such a tunnel endpoint (HostIP)
    get ``encrypt_key`` 0xFF."""
    problems: tuple[str, ...] = ()
    next_keys: dict[str, str] = field(default_factory=dict)
    """node -> the next key it announces (key rotation), for the peers' nodes that announce one"""


def plan_peers(
    local_public_key: str,
    remote: Iterable[PeerCandidate],
    local: Iterable[PeerCandidate] = (),
    *,
    scope: str = "all",
    routing_mode: str = "tunnel",
    keepalive: int = 0,
) -> PeerPlan:
    """The peers (:func:`~encryption.wireguard.peers.desired_peers` over ``remote`` plus, with
    scope ``all``, ``local``), the node of each, what steering needs and the encrypted hosts."""
    candidates = list(remote) + (list(local) if scope == "all" else [])
    by_node = {c.source.node: c for c in candidates}
    peers, problems = desired_peers(
        local_public_key, [c.source for c in candidates], routing_mode=routing_mode, keepalive=keepalive  # type: ignore[arg-type]
    )
    nodes: dict[str, str] = {}
    for c in sorted(candidates, key=lambda c: (c.source.node, c.source.public_key)):
        key = c.source.public_key.strip()
        if key in peers and key not in nodes:
            nodes[key] = c.source.node
    steering: list[SteeringPeer] = []
    hosts: set[str] = set()
    for key, node in sorted(nodes.items(), key=lambda kv: kv[1]):
        cfg, cand = peers[key], by_node[node]
        node_ips = tuple(ip for ip in cand.source.node_ips if _host_prefix(ip) in cfg.allowed_ips)
        cidrs = tuple(c for c in cand.source.pod_cidrs if _net(c) in cfg.allowed_ips)
        steering.append(SteeringPeer(node, node_ips, cidrs, node_encryption=cand.encryption_key != 0))
        hosts.update(str(ipaddress.ip_address(ip)) for ip in node_ips)
    next_keys = {n: c.next_public_key for n in nodes.values() if (c := by_node[n]).next_public_key}
    return PeerPlan(peers, nodes, tuple(steering), frozenset(hosts), tuple(problems), next_keys)


def _host_prefix(ip: str) -> str:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ""
    return f"{addr}/{addr.max_prefixlen}"


def _net(cidr: str) -> str:
    try:
        return str(ipaddress.ip_network(cidr, strict=False))
    except ValueError:
        return ""


def steering_cleanup(log: Any = None) -> None:
    """``--encryption none``: remove the steering a WireGuard agent left (blocking)."""
    rules, routes = remove_steering()
    if (rules or routes) and log is not None:
        log.warning("encryption is off: removed the WireGuard steering left by a previous agent",
                    rules=[str(r) for r in rules], routes=len(routes))  # fmt: skip


# ---- I/O: one node's WireGuard ----


async def _default_publisher(
    kubeconfig: Path, node_name: str, *, public_key: str, encryption_key: int, next_public_key: str | None = None
) -> None:
    from agent.nodepublish import publish_node_encryption

    await publish_node_encryption(
        kubeconfig, node_name, public_key=public_key, encryption_key=encryption_key, next_public_key=next_public_key
    )


async def _k8s_node_labels(kubeconfig: Path, node_name: str) -> dict[str, str]:
    from meshcore.k8s.client import K8sApi

    async with await K8sApi.from_kubeconfig(kubeconfig) as api:
        node = await api.get(f"/api/v1/nodes/{node_name}")
    return dict((node.get("metadata") or {}).get("labels") or {})


class WireGuardNode:
    """One node's WireGuard (see the module docstring). ``publisher`` (default
    :func:`agent.nodepublish.publish_node_encryption`) is only called with a kubeconfig."""

    def __init__(
        self,
        local: LocalInfo,
        config: EncryptionConfig,
        *,
        routing_mode: str = "tunnel",
        publisher: Publisher | None = None,
        ipr_factory: Callable[[], Any] | None = None,
        publish_retry: float = 1.0,
    ) -> None:
        self.local = local
        self.config = config
        self.routing_mode = routing_mode
        self.device = WireGuardDevice(config.device)
        self.key: WireGuardKey | None = None
        self.key_generated = False
        self.implementation: str | None = None
        self.ifindex = 0
        self.mtu = 0
        self.node_ip = ""
        self.rp_filter_was: int | None = None
        self.plan = PeerPlan()
        self.remote: dict[str, WireGuardPeer] = {}  # public key -> the index's winning peer
        self.dump: DeviceDump | None = None
        self.dump_at = 0.0
        self.encryption_key: int | None = None  # what this node advertises, once decided
        self.opted_out: bool | None = None
        self.published: bool | None = None
        self.publish_error = ""
        self.last_error = ""
        self.transition = WireGuardDevice(transition_device_name(config.device))
        self.rotation_state = RotationState()
        self.rotation: RotationDriver | None = None  # made by start()
        self.reconcilers: dict[str, Reconciler[Any, Any]] = {}
        self._next_announced: str | None = None
        self._publish_wanted = asyncio.Event()
        self._programmed = asyncio.Event()
        self._publisher = publisher or _default_publisher
        self._retry = publish_retry
        self._ipr_factory = ipr_factory
        self._routes_target: SteeringRoutesTarget | None = None
        self._log = get_logger(__name__, node=local.node_name, device=config.device)

    @property
    def key_file(self) -> Path:
        return self.config.state_dir / KEY_FILENAME

    # ---- start (blocking, in the node's namespace) ----

    def start(self, node_ip: str, underlay_mtu: int) -> None:
        """Key, device, rp_filter; then the reconcilers (not yet fed)."""
        self.node_ip = node_ip
        key, new = load_or_generate(self.config.state_dir)
        self.key, self.key_generated = key, new
        self._log.info("WireGuard key " + ("generated" if new else "loaded"), public_key=key.public_key,
                       new=new, key_file=str(self.key_file))  # fmt: skip
        self.mtu = device_mtu(underlay_mtu)
        self.implementation = self.device.ensure(key, listen_port=LISTEN_PORT, fwmark=FWMARK, mtu=self.mtu)
        self.ifindex = self._ifindex()
        self.rp_filter_was = _lower_rp_filter_all()
        if self.rp_filter_was:
            self._log.warning("net.ipv4.conf.all.rp_filter lowered to 0 (as Cilium's sysctl fix): otherwise the "
                              "kernel drops what the WireGuard device decrypts", was=self.rp_filter_was)  # fmt: skip
        self._log.info("WireGuard device ready", implementation=self.implementation, mtu=self.mtu,
                       ifindex=self.ifindex, pid=self.device.userspace_pid())  # fmt: skip
        self._routes_target = SteeringRoutesTarget(ipr_factory=self._ipr_factory)
        self.reconcilers = {
            "wireguard-peers": Reconciler("wireguard-peers", PeersTarget(self.device), batch_size=256),
            "steering-rules": Reconciler("steering-rules", RulesTarget(ipr_factory=self._ipr_factory)),
            "steering-routes": Reconciler("steering-routes", self._routes_target, batch_size=1024),
        }
        self.rotation = RotationDriver(
            self.local.node_name,
            key,
            main=self.device,
            transition=self.transition,
            peers_reconciler=self.reconcilers["wireguard-peers"],
            state=self.rotation_state,
            peers=lambda: announcements(self.plan.peers, self.plan.nodes, self.plan.next_keys),
            resteer=self._resteer,
            reprogram=lambda: self.program(self.plan),
            announce=self._announced,
            key_age=self.key_age,
            node_ip=node_ip,
            config=RotationConfig(keepalive=self.config.keepalive),
            mtu=self.mtu,
            key_path=self.key_file,
            interval=self.config.rotation_interval,
        )

    def _ifindex(self) -> int:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=self.config.device)
        if not found:
            raise MeshError(f"WireGuard device {self.config.device} vanished after it was set up")
        return int(found[0])

    # ---- inputs ----

    def load_remote(self, peers: Iterable[WireGuardPeer]) -> None:
        """The remote clusters' peers, whole (the initial load)."""
        self.remote = {p.public_key: p for p in peers}

    def apply_remote(self, changes: Mapping[str, WireGuardPeer | None]) -> bool:
        """A delta's WireGuard part; whether anything changed."""
        changed = False
        for key, peer in changes.items():
            if peer is None:
                changed |= self.remote.pop(key, None) is not None
            elif self.remote.get(key) != peer:
                self.remote[key] = peer
                changed = True
        return changed

    async def replan(self, local_nodes: Iterable[WireNode]) -> PeerPlan:
        """The plan for the current inputs: the candidates are read here (the inputs change on
        this loop), the plan is made in a thread (thousands of keys and addresses to check)."""
        assert self.key is not None  # started
        remote = index_peer_candidates(list(self.remote.values()))
        local = local_peer_candidates(local_nodes, self.local) if self.config.scope == "all" else []
        return await asyncio.to_thread(
            partial(plan_peers, self.key.public_key, remote, local, scope=self.config.scope,
                    routing_mode=self.routing_mode, keepalive=self.config.keepalive)  # fmt: skip
        )

    def node_encryption_on(self) -> bool:
        """Node encryption is asked for and this node did not opt out (unknown yet: on)."""
        return self.config.node_encryption and not self.opted_out

    def steering(self, plan: PeerPlan) -> tuple[dict[Rule, bool], dict[RouteKey, RouteValue]]:
        """The steering rules and routes for ``plan`` (peer nodes a key rotation moved to its
        transition device are routed there)."""
        s = steering_desired(plan.steering, routing_mode=self.routing_mode, oif=self.ifindex,
                             node_ip=self.node_ip, node_encryption=self.node_encryption_on(),
                             oif_by_node=self.rotation_state.transition_oif)  # fmt: skip
        return s.rules, s.routes

    async def program(self, plan: PeerPlan) -> None:
        """Peers, then steering (each waited for, bounded); logs what the plan found wrong. While
        a key rotation is engaged the rotation writes the peers (:mod:`agent.datapath.wgrotation`):
        the plan then only reaches the steering, and the rotation looks at it at once."""
        for problem in set(plan.problems) - set(self.plan.problems):
            self._log.warning("WireGuard peer problem", problem=problem)
        self.plan = plan
        if not self.rotation_state.engaged:
            peers = self.reconcilers["wireguard-peers"]
            peers.set_desired(plan.peers)
            with suppress(TimeoutError):
                await asyncio.wait_for(peers.wait_synced(), SYNC_TIMEOUT)
        await self._resteer()
        self._programmed.set()
        if self.rotation is not None:
            self.rotation.wake()

    async def _resteer(self) -> None:
        """Write the steering of the current plan (waited for, bounded)."""
        rules, routes = self.steering(self.plan)
        self.reconcilers["steering-rules"].set_desired(rules)
        self.reconcilers["steering-routes"].set_desired(routes)
        with suppress(TimeoutError):
            await asyncio.wait_for(self.reconcilers["steering-routes"].wait_synced(), SYNC_TIMEOUT)

    # ---- key rotation ----

    async def rotate(self) -> None:
        """Key rotation (forever), from the first programming on (see :mod:`agent.datapath.wgrotation`)."""
        assert self.rotation is not None  # started
        await self._programmed.wait()
        await self.rotation.run()

    def request_rotation(self) -> dict[str, Any]:
        """Stage a rotation of this node's key; raises :class:`MeshError` when it cannot be now."""
        if self.rotation is None:
            raise MeshError(f"node {self.local.node_name}: WireGuard is not started")
        return self.rotation.request()

    @property
    def key_rotations(self) -> int:
        """Key rotations committed by this agent."""
        return self.rotation.rotations if self.rotation is not None else 0

    def key_age(self) -> float | None:
        """Seconds since the key file was written (None when it cannot be read)."""
        try:
            return time.time() - os.stat(self.key_file).st_mtime
        except OSError:
            return None

    def _announced(self, announcement: Announcement) -> None:
        """This node's announcement changed (a rotation began or committed): publish it."""
        assert self.rotation is not None
        self.key = self.rotation.key
        self._next_announced = announcement.next
        self._publish_wanted.set()

    # ---- background work ----

    async def monitor(self) -> None:
        """Read the device every :data:`DUMP_INTERVAL` seconds for the status (forever)."""
        while True:
            try:
                self.dump = await asyncio.to_thread(self.device.dump)
                self.dump_at = time.time()
            except Exception as err:  # the status says so; never fatal
                self.last_error = f"{type(err).__name__}: {err}"
            await asyncio.sleep(DUMP_INTERVAL)

    async def decide_opt_out(self, labels: Callable[[], Awaitable[Mapping[str, str]]]) -> None:
        """Whether this node opts out of node encryption (``--node-encryption-opt-out-labels`` over
        ``labels``, this node's; bounded by :data:`LABELS_TIMEOUT`), hence the encryption key it
        advertises: 0 when it does, else 0xFF. Never raises (unreadable labels: no opt-out)."""
        try:
            node_labels = await asyncio.wait_for(labels(), LABELS_TIMEOUT)
        except Exception as err:
            self._log.warning("cannot read this node's labels; not opting out of node encryption",
                              error=f"{type(err).__name__}: {err}")  # fmt: skip
            node_labels = {}
        selector = parse_selector(self.config.opt_out_labels)
        self.opted_out = self.config.node_encryption and selector.matches(node_labels)
        self.encryption_key = 0 if self.opted_out else STATIC_ENCRYPT_KEY
        if self.opted_out:
            self._log.info("opting out of node encryption", selector=str(selector))

    async def publish(self) -> None:
        """Publish the public key, :attr:`encryption_key` (decided first) and, during a rotation,
        the next key on this node's Node/CiliumNode with a kubeconfig: at start, then whenever a
        rotation changes them, each retried until it worked (forever; never raises)."""
        assert self.key is not None and self.encryption_key is not None
        kubeconfig = self.config.kubeconfig
        if kubeconfig is None:
            self._log.info("no --kubeconfig: the WireGuard public key is not published by this agent",
                           public_key=self.key.public_key)  # fmt: skip
            return
        backoff = Backoff(initial=self._retry, maximum=30.0)
        done: tuple[str, int, str | None] | None = None
        while True:
            wanted = (self.key.public_key, self.encryption_key, self._next_announced)
            if wanted == done:
                self._publish_wanted.clear()
                await self._publish_wanted.wait()
                continue
            try:
                await self._publisher(kubeconfig, self.local.node_name, public_key=wanted[0],
                                      encryption_key=wanted[1], next_public_key=wanted[2])  # fmt: skip
            except Exception as err:  # MeshError subclasses, or anything a broken API does
                self.published = False
                self.publish_error = f"{type(err).__name__}: {err}"
                self._log.warning("publishing the WireGuard key failed, retrying", error=self.publish_error)
                await backoff.wait()
                continue
            backoff.reset()
            done = wanted
            self.published, self.publish_error = True, ""
            self._log.info("WireGuard key published", public_key=wanted[0], encryption_key=wanted[1],
                           next_public_key=wanted[2])  # fmt: skip

    def labels_source(
        self, local_nodes: Callable[[], Iterable[WireNode]], known: Mapping[str, str] | None = None
    ) -> Callable[[], Awaitable[Mapping[str, str]]]:
        """Where this node's labels come from: ``known`` (its Kubernetes Node as read at start),
        else its Kubernetes Node with a kubeconfig, else its record in the local etcd."""

        async def given() -> Mapping[str, str]:
            assert known is not None
            return known

        async def from_local() -> Mapping[str, str]:
            for node in local_nodes():
                if node.name == self.local.node_name:
                    return dict(node.labels or {})
            return {}

        async def from_k8s() -> Mapping[str, str]:
            assert self.config.kubeconfig is not None
            try:
                return await _k8s_node_labels(self.config.kubeconfig, self.local.node_name)
            except MeshError as err:
                self._log.warning("cannot read this node's Kubernetes labels, using its kvstore record", error=str(err))
                return await from_local()

        if known is not None:
            return given
        return from_k8s if self.config.kubeconfig is not None else from_local

    # ---- status ----

    def node_encryption_status(self) -> str:
        """Cilium's ``NodeEncryption``: Disabled, Enabled or OptedOut."""
        if not self.config.node_encryption:
            return "Disabled"
        return "OptedOut" if self.opted_out else "Enabled"

    def status_json(self, plaintext: Iterable[str] = ()) -> dict[str, Any]:
        """The ``encryption`` section of the node datapath's status."""
        now = time.time()
        age = self.key_age()
        key_age = round(age, 1) if age is not None else None
        dump = self.dump
        peers = []
        for key, cfg in sorted(self.plan.peers.items(), key=lambda kv: self.plan.nodes.get(kv[0], kv[0])):
            seen = dump.peers.get(key) if dump is not None else None
            in_sync = seen is not None and (
                seen.endpoint == cfg.endpoint
                and seen.allowed_ips == cfg.allowed_ips
                and seen.persistent_keepalive == cfg.keepalive
            )
            peers.append({
                "node": self.plan.nodes.get(key, ""),
                "public-key": key,
                "endpoint": cfg.endpoint,
                "allowed-ips": sorted(cfg.allowed_ips),
                "latest-handshake": seen.latest_handshake if seen is not None else 0,
                "latest-handshake-seconds-ago": (
                    round(now - seen.latest_handshake, 1) if seen is not None and seen.latest_handshake else None
                ),
                "rx-bytes": seen.rx_bytes if seen is not None else 0,
                "tx-bytes": seen.tx_bytes if seen is not None else 0,
                "in-sync": in_sync,
            })  # fmt: skip
        unknown = sorted(set(dump.peers) - set(self.plan.peers)) if dump is not None else []
        plain = list(plaintext)
        rules, routes = self.steering(self.plan) if self.key is not None else ({}, {})
        return {
            "mode": "wireguard",
            "implementation": self.implementation,
            "device": self.config.device,
            "ifindex": self.ifindex,
            "mtu": self.mtu,
            "listen-port": LISTEN_PORT,
            "fwmark": f"0x{FWMARK:x}",
            "public-key": self.key.public_key if self.key is not None else None,
            "key-file": str(self.key_file),
            "key-generated": self.key_generated,
            "key-file-age-seconds": key_age,
            "key-rotations": self.key_rotations,
            "rotation": self.rotation.status_json() if self.rotation is not None else None,
            "userspace-pid": self.device.userspace_pid() if self.implementation == "userspace" else None,
            "scope": self.config.scope,
            "routing-mode": self.routing_mode,
            "node-encryption": self.node_encryption_status(),
            "node-encryption-opt-out-labels": self.config.opt_out_labels,
            "encryption-key": self.encryption_key,
            "published": self.published,
            "publish-error": self.publish_error,
            "strict-mode": _strict_json(self.config),
            "rp-filter-all-was": self.rp_filter_was,
            "peer-count": len(self.plan.peers),
            "peers": peers,
            "unknown-device-peers": unknown,
            "plaintext-peers": plain[:_PLAINTEXT_SHOWN],
            "plaintext-peer-count": len(plain),
            "encrypted-hosts": len(self.plan.encrypt_hosts),
            "problems": list(self.plan.problems),
            "steering": {
                "rules": [str(r) for r in sorted(rules)],
                "routes": len(routes),
                "skipped": sorted(str(k) for k in self._routes_target.skipped) if self._routes_target else [],
            },
            "dump-age-seconds": round(now - self.dump_at, 1) if self.dump_at else None,
            "last-error": self.last_error,
        }


def _strict_json(config: EncryptionConfig) -> dict[str, Any] | None:
    if config.strict_cidr is None:
        return None
    return {"cidr": config.strict_cidr, "allow-remote-node-identities": config.strict_allow_remote_node}


def disabled_status_json(config: EncryptionConfig, plaintext_count: int = 0, *, plaintext: Iterable[str] = (),
                         disabled_by: str | None = None, withdrawn: bool | None = None,
                         withdraw_error: str = "") -> dict[str, Any]:
    """The ``encryption`` section of a node without WireGuard: ``--encryption none``, or
    ``disabled_by`` the migration label (then ``withdrawn`` says whether its key is unpublished)."""
    plain = list(plaintext)[:_PLAINTEXT_SHOWN]
    out: dict[str, Any] = {
        "mode": "none",
        "configured-mode": config.mode,
        "disabled-by": disabled_by,
        "implementation": None,
        "device": None,
        "public-key": None,
        "scope": config.scope,
        "node-encryption": "Disabled",
        "strict-mode": _strict_json(config),
        "peer-count": 0,
        "peers": [],
        "plaintext-peers": plain,
        "plaintext-peer-count": max(plaintext_count, len(plain)),
        "problems": [],
    }
    if disabled_by is not None:
        out["key-withdrawn"] = withdrawn
        out["withdraw-error"] = withdraw_error
        if withdraw_error:
            out["problems"] = [f"withdrawing the published WireGuard key failed: {withdraw_error}"]
    return out


_RP_FILTER_ALL = Path("/proc/sys/net/ipv4/conf/all/rp_filter")


def _lower_rp_filter_all() -> int:
    """Set this namespace's ``net.ipv4.conf.all.rp_filter`` to 0; the value it had."""
    try:
        was = int(_RP_FILTER_ALL.read_text().strip())
    except (OSError, ValueError):
        return 0
    if was:
        _RP_FILTER_ALL.write_text("0\n")
    return was
