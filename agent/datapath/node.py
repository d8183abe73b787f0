"""The node datapath manager: what ``clustermesh-agent --datapath bpf`` runs, inside the node's
network namespace (the agent is started with ``ip netns exec <node-ns> ...`` in the lab).

Two routing modes (``--routing-mode``):

- ``tunnel`` (default): remote pods are reached through a VXLAN collect-metadata device with the
  source identity in the VNI; ``from_pod`` redirects into it for ipcache entries with a tunnel
  endpoint;
- ``native``: no VXLAN device is needed (none is created; an existing one is left alone and gets
  no programs); ipcache entries carry no tunnel endpoint and have ``skip_tunnel`` set, so
  ``from_pod`` hands packets to the kernel, which routes each remote pod CIDR via its node's
  underlay IP. Those routes are a reconciler target of their own (:class:`RoutesTarget`, tagged
  with :data:`ROUTE_PROTO`); ``to_pod`` finds the source identity in the ipcache by source IP.

At start (:meth:`NodeDatapath.start`, blocking, run in a thread):

1. tunnel mode: create the VXLAN ``external`` (collect-metadata) device ``tunnel_device`` on
   ``underlay_device`` with dstport 8472, unless it exists (idempotent: a restarted agent reuses it);
2. ``Datapath.load`` the programs against the node's pinned maps (bcc compile), attach
   ``to_tunnel``/``from_tunnel`` to the VXLAN device (tunnel mode), and the socket LB to ``cgroup``
   if given.

Then (:meth:`NodeDatapath.run`) it keeps the maps equal to the desired state with one
:class:`~meshcore.reconcile.Reconciler` per map:

- local endpoints come from the local cluster's etcd (``--kvstore-config``), followed by watches
  (:class:`~agent.datapath.local.LocalWatch`): the ipcache entries
  whose ``HostIP`` is this node's underlay IP, with their identities. Each pod's host-side veth is
  the device of the node's route to the pod IP; ``from_pod``/``to_pod`` are attached there with
  the endpoint ID (the low 16 bits of the pod IPv4 address: stable across restarts) and identity;
- routes (native mode only): every pod CIDR of the remote clusters' nodes
  (:attr:`~agent.desired.DesiredState.routes`) and of this cluster's other nodes (the local etcd's
  node records) via that node's IP, never this node's own; the reconciler reads back only routes
  with :data:`ROUTE_PROTO` (mark and sweep, never touching other routes);
- ipcache: the remote clusters' entries (the agent's :class:`~agent.incremental.DesiredIndex`:
  written whole once, then per :class:`~agent.incremental.DesiredDelta`) plus
  the local cluster's endpoints (this node's without a tunnel endpoint, other nodes' tunnelled to
  their ``HostIP``), so ``to_pod`` resolves sources; and every local IPv4 address of the node's
  network namespace but loopback 127/8 (read at start: the underlay address, the API address on
  ``lo``, ...) as a ``/32`` with identity ``reserved:host`` (1), as Cilium's ipcache has them, so
  the node's own traffic (kubelet probes) is the host to policy (``--allow-localhost``);
- policy/policy_enforce: :func:`~agent.policy.compute_policy` over the policies watched in the
  local cluster (``--kubeconfig``), the local endpoints and every known identity; policy entries
  are synced before enforcement is switched on;
- services: per global service of the local cluster (its record in the local etcd), its local
  backends plus the remote clusters' backends, with the affinity annotation of the local Service.

Encryption (``--encryption wireguard``, :mod:`agent.datapath.wireguard`): at start the key and the
WireGuard device (before the programs are loaded); then three more reconcilers, the device's peers
and the policy routing that steers traffic into it (:mod:`agent.datapath.steering`), fed from the
remote clusters' WireGuard peers (:attr:`~agent.incremental.DesiredDelta.wireguard_peers`) and, with
``--encryption-scope all``, this cluster's other nodes (the local etcd's node records, watched in
both routing modes then). The ipcache's ``encrypt_key`` is 0xFF exactly for entries hosted on a
configured peer (:attr:`~agent.datapath.ipfeed.IPCacheFeed.encrypt_hosts`), 0 otherwise (so
``--encryption-strict-mode-cidr`` drops those); a change of the peer set re-emits only the entries
of the nodes concerned. On a peer change: encrypt keys withdrawn, peers, steering, encrypt keys
granted, in that order. ``--encryption none`` removes steering a previous agent left.
A node labelled ``clustermesh.io/encryption=disabled`` (read by :meth:`NodeDatapath.prepare`
before the start) runs as with ``--encryption none``, its device deleted and its published key
withdrawn (see :mod:`agent.datapath.wireguard`).

Nothing is programmed before the clustermesh initial sync (or its timeout) and the first local
read: a restarted agent must not sweep live entries from a half-synced view (this is also the
WireGuard peer GC's fence). Nothing is torn down on exit: pinned maps, attached programs, the
WireGuard device and its peers keep forwarding until the next agent resyncs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable, Iterable
from contextlib import aclosing, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from agent.config import ROUTING_MODES
from agent.datapath.ipfeed import IPCacheFeed
from agent.datapath.local import LocalState, LocalWatch
from agent.datapath.targets import (
    ROUTE_PROTO,
    EndpointsTarget,
    EnforceTarget,
    GlobalService,
    IPCacheTarget,
    PolicyTarget,
    RoutesTarget,
    ServicesTarget,
    endpoint_key,
    enforce_desired,
    parse_affinity,
    policy_desired,
    routes_desired,
    services_desired,
)
from agent.datapath.wireguard import (
    ENCRYPTION_LABEL,
    ENCRYPTION_LABEL_DISABLED,
    EncryptionConfig,
    Publisher,
    WireGuardNode,
    disabled_status_json,
    encryption_disabled_by_label,
    index_plaintext_nodes,
    index_wireguard_peers,
    read_node_labels,
    steering_cleanup,
)
from agent.desired import Backend, IPCacheEntry, LocalInfo, NodeRoute, node_pod_cidrs, node_tunnel_ip
from agent.incremental import DesiredDelta, DesiredIndex
from agent.policy.resolve import HOST_IDENTITY, AllowLocalhost, PolicyState, compute_policy
from bpf.maps import DEFAULT_PIN_ROOT
from encryption.wireguard.device import WireGuardDevice
from meshcore.backoff import Backoff
from meshcore.errors import MeshError
from meshcore.log import get_logger
from meshcore.reconcile import Reconciler
from meshcore.wire import LabelSet

__all__ = [
    "DEFAULT_TUNNEL_DEVICE",
    "ROUTE_PROTO",
    "ROUTING_MODES",
    "VXLAN_PORT",
    "NodeDatapathConfig",
    "LocalEndpoint",
    "LocalState",
    "NodeDatapath",
    "endpoint_id_of",
    "host_ipcache_entries",
]

DEFAULT_TUNNEL_DEVICE = "cilium_vxlan"
_ALL_PARTS = ("endpoints", "routes", "services", "policy", "wireguard")
ENDPOINT_RETRY = 1.0
"""Seconds between attempts to attach local pods whose veth was not there yet."""
VXLAN_PORT = 8472


class DatapathError(MeshError):
    """The node's datapath could not be set up."""


@dataclass(frozen=True)
class NodeDatapathConfig:
    """Where the node's datapath lives (flags ``--pin-root``, ``--tunnel-device``,
    ``--underlay-device``, ``--cgroup``, ``--routing-mode``, ``--allow-localhost``).
    ``underlay_device`` None: the first device with a global IPv4 address (other than the tunnel
    device). ``routing_mode``: one of :data:`ROUTING_MODES` (see the module docstring).
    ``allow_localhost``: see :func:`~agent.policy.resolve.compute_policy`."""

    pin_root: Path = Path(DEFAULT_PIN_ROOT)
    tunnel_device: str = DEFAULT_TUNNEL_DEVICE
    underlay_device: str | None = None
    cgroup: Path | None = None
    policy_sync_timeout: float = 10.0
    routing_mode: str = "tunnel"
    allow_localhost: AllowLocalhost = "auto"
    encryption: EncryptionConfig = EncryptionConfig()

    @property
    def native(self) -> bool:
        return self.routing_mode == "native"

    @classmethod
    def from_agent(cls, config: Any) -> NodeDatapathConfig:
        """The node datapath part of an :class:`~agent.config.AgentConfig`."""
        return cls(
            pin_root=config.pin_root,
            tunnel_device=config.tunnel_device,
            underlay_device=config.underlay_device,
            cgroup=config.cgroup,
            routing_mode=config.routing_mode,
            allow_localhost="policy" if config.allow_localhost == "policy" else "auto",
            encryption=EncryptionConfig(
                mode=config.encryption,
                device=config.wireguard_device_name,
                keepalive=config.wireguard_persistent_keepalive,
                scope=config.encryption_scope,
                node_encryption=config.node_encryption,
                opt_out_labels=config.node_encryption_opt_out_labels,
                strict_cidr=config.strict_mode_cidr,
                strict_allow_remote_node=config.strict_mode_allow_remote_node,
                rotation_interval=config.wireguard_key_rotation_interval,
                state_dir=config.state_dir,
                kubeconfig=config.kubeconfig,
            ),
        )


@dataclass(frozen=True, slots=True)
class LocalEndpoint:
    """A pod of this node."""

    ip: str
    identity: int
    endpoint_id: int
    ifname: str
    ifindex: int


def endpoint_id_of(ip: str) -> int:
    """The endpoint ID of a local pod: the low 16 bits of its IPv4 address (never 0)."""
    return int(ipaddress.ip_address(ip)) & 0xFFFF or 0xFFFF


def host_ipcache_entries(addresses: Iterable[str], cluster_id: int, cluster: str) -> list[IPCacheEntry]:
    """The node's own IPv4 ``addresses`` as ``/32`` ipcache entries of identity ``reserved:host``
    (1), sorted, without loopback 127/8 (which never reaches a pod's veth)."""
    ips = {ipaddress.IPv4Address(a) for a in addresses if ":" not in a}
    return [
        IPCacheEntry(f"{ip}/32", HOST_IDENTITY, "", 0, cluster_id, cluster, "host", remote_cluster=False)
        for ip in sorted(ips)
        if not ip.is_loopback
    ]


class NodeDatapath:
    """One node's datapath (see the module docstring)."""

    def __init__(self, local: LocalInfo, config: NodeDatapathConfig, *, publisher: Publisher | None = None) -> None:
        self.local = local
        self.config = config
        self.wireguard: WireGuardNode | None = None
        self.encryption_disabled_by: str | None = None  # the migration label switched WireGuard off
        self._node_labels: dict[str, str] | None = None  # this node's Kubernetes labels, read at prepare()
        self.key_withdrawn: bool | None = None
        self.withdraw_error = ""
        self._publisher = publisher
        self.node_ip = ""
        self.host_addresses: tuple[str, ...] = ()  # this namespace's IPv4 addresses (reserved:host)
        self.underlay_ifindex = 0
        self.routes_target: RoutesTarget | None = None
        self.dp: Any = None  # bpf.loader.Datapath, once started
        self.endpoints: dict[str, LocalEndpoint] = {}
        self.local_state: LocalState | None = None
        self.policy_state: PolicyState | None = None
        self.affinities: dict[str, Any] = {}
        self.reconcilers: dict[str, Reconciler[Any, Any]] = {}
        self.started = False
        self.programmed = False
        self.last_error = ""
        self._version = 0
        self._delta = DesiredDelta()  # desired-state changes not programmed yet
        self._parts: set[str] = set(_ALL_PARTS)  # what to recompute whole at the next programming
        self._full_ipcache = True  # the first programming writes the whole ipcache
        self._ipfeed: IPCacheFeed | None = None
        self._local_ip_changed: set[str] = set()
        self._endpoints_missing = 0  # local pods whose veth was not found at the last attach
        self._index: DesiredIndex | None = None
        self._changed = asyncio.Event()
        self._local_read = asyncio.Event()
        self._log = get_logger(__name__, node=local.node_name)

    # ---- setup ----

    async def prepare(self) -> None:
        """Before :meth:`start`: read this node's migration label (``--encryption wireguard`` with
        ``--kubeconfig`` only); ``clustermesh.io/encryption=disabled`` switches WireGuard off here."""
        self._node_labels = await read_node_labels(self.config.encryption, self.local.node_name, self._log)
        if self._node_labels is not None and encryption_disabled_by_label(self._node_labels):
            self.encryption_disabled_by = f"label {ENCRYPTION_LABEL}={ENCRYPTION_LABEL_DISABLED}"
            self._log.warning("this node's encryption is disabled by its label: no WireGuard device, no published "
                              "key; other nodes see it as a plaintext peer", label=self.encryption_disabled_by)

    def _local_nodes(self) -> Iterable[Any]:
        return (self.local_state or LocalState()).nodes

    def start(self) -> None:
        """Create the tunnel device (tunnel mode), load and attach the programs (idempotent across
        restarts)."""
        from pyroute2 import IPRoute

        from bpf.loader import Datapath, DatapathConfig

        if self.config.routing_mode not in ROUTING_MODES:
            raise DatapathError(f"routing mode must be one of {', '.join(ROUTING_MODES)}: {self.config.routing_mode!r}")
        native = self.config.native
        with IPRoute() as ipr:
            underlay = self.config.underlay_device or self._guess_underlay(ipr)
            found = ipr.link_lookup(ifname=underlay)
            if not found:
                raise DatapathError(f"no underlay device {underlay!r} in this network namespace (--underlay-device)")
            ul = int(found[0])
            addrs = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=2, index=ul)]
            if not addrs:
                raise DatapathError(f"underlay device {underlay!r} has no IPv4 address")
            self.node_ip = str(addrs[0])
            underlay_mtu = int(ipr.get_links(ul)[0].get_attr("IFLA_MTU") or 1500)
            self.host_addresses = tuple(sorted({str(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(family=2)}))
            self.underlay_ifindex = ul
            if native:
                pass  # no VXLAN device: an existing one is left exactly as it is
            elif not ipr.link_lookup(ifname=self.config.tunnel_device):
                ipr.link(
                    "add",
                    ifname=self.config.tunnel_device,
                    kind="vxlan",
                    vxlan_collect_metadata=1,
                    vxlan_port=VXLAN_PORT,
                    vxlan_link=ul,
                    vxlan_learning=0,
                )
                self._log.info("tunnel device created", device=self.config.tunnel_device, underlay=underlay)
            if not native:
                vx = int(ipr.link_lookup(ifname=self.config.tunnel_device)[0])
                ipr.link("set", index=vx, state="up")
        _check_bpffs(self.config.pin_root)
        self._start_encryption(underlay_mtu)
        enc = self.config.encryption
        self.dp = Datapath.load(
            self.local.node_name,
            self.config.pin_root,
            DatapathConfig(
                tunnel_device=None if native else self.config.tunnel_device,
                cgroup=str(self.config.cgroup) if self.config.cgroup else None,
                strict_cidr=enc.strict_cidr,
                strict_allow_remote_node=enc.strict_allow_remote_node,
            ),
        )
        if not native:
            self.dp.attach_tunnel()
        maps = self.dp.maps
        self.reconcilers = {
            "ipcache": Reconciler("ipcache", IPCacheTarget(maps), batch_size=65536),
            "endpoints": Reconciler("endpoints", EndpointsTarget(maps)),
            "policy": Reconciler("policy", PolicyTarget(maps), batch_size=65536),
            "policy_enforce": Reconciler("policy_enforce", EnforceTarget(maps)),
            "services": Reconciler("services", ServicesTarget(maps)),
        }
        self._ipfeed = IPCacheFeed(self.reconcilers["ipcache"], native=native)
        self._local_ip_changed.update(self._ipfeed.set_local(self._local_ipcache(self.local_state or LocalState())))
        if native:
            self.routes_target = RoutesTarget(self.underlay_ifindex)
            self.reconcilers["routes"] = Reconciler("routes", self.routes_target)
        if self.wireguard is not None:
            self.reconcilers.update(self.wireguard.reconcilers)
        self.started = True
        self._log.info(
            "datapath loaded", node_ip=self.node_ip, pins=str(maps.directory), routing_mode=self.config.routing_mode
        )

    def _start_encryption(self, underlay_mtu: int) -> None:
        """WireGuard key and device (``--encryption wireguard``), else remove leftover steering."""
        enc = self.config.encryption
        if enc.strict_cidr is not None and not enc.wireguard:
            self._log.warning(
                "egress strict mode without --encryption wireguard: all pod traffic to other nodes inside the "
                "strict CIDR is dropped (nothing is encrypted)", cidr=enc.strict_cidr)  # fmt: skip
        if not enc.wireguard or self.encryption_disabled_by is not None:
            steering_cleanup(self._log)
            if enc.wireguard:  # disabled by the label: the device goes too (its wireguard-go ends with it)
                device = WireGuardDevice(enc.device)
                if device.mode() is not None:
                    device.delete()
                    self._log.info("WireGuard device deleted (encryption disabled by label)", device=enc.device)
            return
        self.wireguard = WireGuardNode(
            self.local, enc, routing_mode=self.config.routing_mode, publisher=self._publisher
        )
        self.wireguard.start(self.node_ip, underlay_mtu)

    def _guess_underlay(self, ipr: Any) -> str:
        for addr in ipr.get_addr(family=2):
            if addr.get("scope") != 0:
                continue
            name = ipr.get_links(addr["index"])[0].get_attr("IFLA_IFNAME")
            if name not in ("lo", self.config.tunnel_device):
                return str(name)
        raise DatapathError("no device with a global IPv4 address: name one with --underlay-device")

    def close(self) -> None:
        """Release this process's handles; everything attached and pinned stays."""
        if self.dp is not None:
            self.dp.close()
            self.dp = None

    # ---- inputs ----

    def touch(self) -> None:
        """An input changed: wake the feeding loop."""
        self._version += 1
        self._changed.set()

    def set_local_state(self, state: LocalState) -> None:
        if state != self.local_state:
            if self.local_state is None or state.nodes != self.local_state.nodes:
                self._parts.add("wireguard")
            self.local_state = state
            if self._ipfeed is not None:
                self._local_ip_changed.update(self._ipfeed.set_local(self._local_ipcache(state)))
            self._parts.update(("endpoints", "routes", "services", "policy"))
            self.touch()
        self._local_read.set()

    def set_affinities(self, affinities: dict[str, Any]) -> None:
        if affinities != self.affinities:
            self.affinities = affinities
            self._parts.add("services")
            self.touch()

    def desired_changed(self, delta: DesiredDelta) -> None:
        """The agent's desired state changed by ``delta`` (see :class:`~agent.incremental.DesiredIndex`)."""
        self._delta.merge(delta)
        if delta.wireguard_peers and self.wireguard is not None and self.wireguard.apply_remote(delta.wireguard_peers):
            self._parts.add("wireguard")
        if delta.routes:
            self._parts.add("routes")
        if delta.services:
            self._parts.add("services")
        if delta.identities:
            self._parts.add("policy")
        self.touch()

    async def watch_local(self, kv: Any) -> None:
        """Follow the local cluster's endpoints, identities, services (and, in native mode, nodes)
        in its etcd with watches (forever): a change reaches the maps without a polling delay."""
        nodes = self.config.native or self.config.encryption.wireguard
        watch = LocalWatch(kv, self.local.cluster_name, nodes=nodes)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(watch.run(), name="local kvstore watches")
            while True:
                state = await watch.next_state()
                self.last_error = watch.last_error() or self.last_error
                self.set_local_state(state)

    # ---- the feeding loop ----

    async def run(
        self,
        desired: DesiredIndex,
        initial_sync: Awaitable[object],
        policies: Any = None,
    ) -> None:
        """Run the reconcilers and feed them whenever an input changes (forever).

        ``desired`` is the agent's desired-state index, complete once ``initial_sync`` is done;
        its changes arrive through :meth:`desired_changed`. ``policies`` is an optional
        :class:`~agent.policy.source.PolicySource`."""
        self._index = desired
        async with asyncio.TaskGroup() as tasks:
            for rec in self.reconcilers.values():
                tasks.create_task(rec.run(), name=f"reconciler {rec.name}")
            wg = self.wireguard
            if wg is not None:
                tasks.create_task(wg.monitor(), name="wireguard status")
            await initial_sync
            await self._local_read.wait()
            if wg is not None:  # decided before the first programming: it shapes the steering
                await wg.decide_opt_out(wg.labels_source(self._local_nodes, self._node_labels))
                tasks.create_task(wg.publish(), name="wireguard key publication")
                tasks.create_task(wg.rotate(), name="wireguard key rotation")
            elif self.encryption_disabled_by is not None and (kubeconfig := self.config.encryption.kubeconfig):
                tasks.create_task(self._withdraw_key(kubeconfig), name="wireguard key withdrawal")
            if policies is not None:
                with suppress(TimeoutError):
                    await asyncio.wait_for(_policies_synced(policies), self.config.policy_sync_timeout)
            seen: tuple[int, int] | None = None
            retried = time.monotonic()
            while True:
                policy_version = policies.version if policies is not None else 0
                if seen is not None and seen[1] != policy_version:
                    self._parts.add("policy")
                if seen != (self._version, policy_version):
                    seen = (self._version, policy_version)
                    try:
                        await self._program(desired, policies)
                    except Exception as err:
                        self.last_error = f"{type(err).__name__}: {err}"
                        self._log.warning("programming the datapath failed", error=self.last_error)
                        self._full_ipcache = True  # start over from the whole state
                        self._parts.update(_ALL_PARTS)
                        await asyncio.sleep(1.0)
                        self.touch()
                self._changed.clear()
                if seen == (self._version, policy_version):
                    with suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), 0.2)  # also polls the policy version
                    if self._endpoints_missing and time.monotonic() - retried >= ENDPOINT_RETRY:
                        retried = time.monotonic()
                        self._parts.update(("endpoints", "policy"))
                        self.touch()

    def request_key_rotation(self) -> dict[str, Any]:
        """Stage a rotation of this node's WireGuard key (``clustermesh encryption rotate``): the node,
        its current and next public key and the rotation's phase. Raises :class:`MeshError` when
        WireGuard does not run here."""
        if self.wireguard is None:
            why = f"disabled by {self.encryption_disabled_by}" if self.encryption_disabled_by else (
                f"--encryption {self.config.encryption.mode}")
            raise MeshError(f"node {self.local.node_name} runs without WireGuard ({why}): no key to rotate")
        return self.wireguard.request_rotation()

    async def _withdraw_key(self, kubeconfig: Path) -> None:
        """Remove this node's published key (disabled by its label), retrying until done. Never raises."""
        from agent.nodepublish import withdraw_node_encryption

        backoff = Backoff(initial=1.0, maximum=30.0)
        while True:
            try:
                await withdraw_node_encryption(kubeconfig, self.local.node_name)
            except Exception as err:
                self.key_withdrawn, self.withdraw_error = False, f"{type(err).__name__}: {err}"
                self._log.warning("withdrawing the WireGuard key failed, retrying", error=self.withdraw_error)
                await backoff.wait()
                continue
            self.key_withdrawn, self.withdraw_error = True, ""
            return

    async def _program(self, desired: DesiredIndex, policies: Any) -> None:
        delta, self._delta = self._delta, DesiredDelta()
        parts, self._parts = self._parts, set()
        local_changed, self._local_ip_changed = self._local_ip_changed, set()
        local = self.local_state or LocalState()
        # ipcache: the whole state once, then only what changed (remote entries win a prefix)
        feed = self._ipfeed
        assert feed is not None  # made by start()
        if "wireguard" in parts and self.wireguard is not None:
            await self._program_wireguard(desired, local, feed)
        if self._full_ipcache:
            await feed.load(desired)
            self._full_ipcache = False
        elif delta.ipcache or local_changed:
            feed.apply(desired, delta.ipcache, local_changed)
        if "endpoints" in parts:
            endpoints = await asyncio.to_thread(self._attach_endpoints, local)
            self.reconcilers["endpoints"].set_desired(
                {endpoint_key(e.ifindex): (e.endpoint_id, e.identity) for e in endpoints}
            )
        if "routes" in parts and "routes" in self.reconcilers:
            routes = desired.routes() + self._local_routes(local)
            self.reconcilers["routes"].set_desired(routes_desired(routes, self.node_ip))
        if "services" in parts:
            self._program_services(local, desired)
        if "policy" in parts:
            await self._program_policy(local, desired, policies)
        self.programmed = True

    async def _program_wireguard(self, desired: DesiredIndex, local: LocalState, feed: IPCacheFeed) -> None:
        """Encrypt keys of lost peers withdrawn, peers, steering, encrypt keys of new peers granted
        (on the first programming the ipcache load that follows packs against the new set)."""
        wg = self.wireguard
        assert wg is not None
        if self._full_ipcache:
            wg.load_remote(index_wireguard_peers(desired))
        plan = await wg.replan(local.nodes)
        if not self._full_ipcache:
            await feed.set_encrypt_hosts(desired, feed.encrypt_hosts & plan.encrypt_hosts)
        await wg.program(plan)
        if self._full_ipcache:
            feed.encrypt_hosts = plan.encrypt_hosts
        else:
            await feed.set_encrypt_hosts(desired, plan.encrypt_hosts)

    def _program_services(self, local: LocalState, desired: DesiredIndex) -> None:
        local_svcs = []
        for svc in local.services:
            name = f"{svc.namespace}/{svc.name}"
            frontends = tuple(
                (ip, l4.port, l4.protocol, port_name)
                for ip, ports in sorted((svc.frontends or {}).items())
                for port_name, l4 in sorted((ports or {}).items())
                if l4 is not None
            )
            backends = tuple(
                Backend(ip, l4.port, l4.protocol, port_name)
                for ip, ports in sorted((svc.backends or {}).items())
                for port_name, l4 in sorted((ports or {}).items())
                if l4 is not None
            )
            local_svcs.append(GlobalService(name, frontends, backends, parse_affinity(self.affinities.get(name))))
        self.reconcilers["services"].set_desired(
            services_desired(local_svcs, desired.services(), self.local.cluster_id)
        )

    async def _program_policy(self, local: LocalState, desired: DesiredIndex, policies: Any) -> None:
        """Policy entries first, enforcement once they are in."""
        endpoints = list(self.endpoints.values())
        identities: dict[int, LabelSet] = dict(local.identities)
        for ident in desired.identities():
            identities.setdefault(ident.id, LabelSet.from_strings(ident.labels))
        eps = [(e.endpoint_id, identities.get(e.identity, LabelSet.from_strings([]))) for e in endpoints]
        policy_list = list(policies.policies.values()) if policies is not None else []
        state = await asyncio.to_thread(
            partial(
                compute_policy,
                policy_list,
                eps,
                identities,
                local_cluster=self.local.cluster_name,
                allow_localhost=self.config.allow_localhost,
            )
        )
        self.policy_state = state
        self.reconcilers["policy"].set_desired(policy_desired(state.entries))
        with suppress(TimeoutError):
            await asyncio.wait_for(self.reconcilers["policy"].wait_synced(), 5)
        self.reconcilers["policy_enforce"].set_desired(enforce_desired(state))

    def _local_ipcache(self, local: LocalState) -> list[IPCacheEntry]:
        """The local cluster's entries: this node's own addresses (reserved:host, winning a prefix
        an endpoint record also claims), then the endpoints of the local etcd."""
        out = host_ipcache_entries(self.host_addresses, self.local.cluster_id, self.local.cluster_name)
        own = {e.prefix for e in out}
        for pair in local.pairs:
            prefix = pair.prefix_string()
            if "/" not in prefix:
                prefix += "/128" if ":" in prefix else "/32"
            if prefix in own:
                continue
            mine = pair.host_ip == self.node_ip
            out.append(
                IPCacheEntry(
                    prefix,
                    pair.id,
                    "" if mine else pair.host_ip,
                    pair.key,
                    self.local.cluster_id,
                    self.local.cluster_name,
                    "endpoint",
                    remote_cluster=False,
                )
            )
        return out

    def _local_routes(self, local: LocalState) -> list[NodeRoute]:
        """This cluster's nodes' pod CIDRs via their node IPs (native mode; this node's own are
        dropped by :func:`routes_desired`)."""
        out = []
        for node in sorted(local.nodes, key=lambda n: n.name):
            ip = node_tunnel_ip(node)
            if ip:
                out += [NodeRoute(p, ip, self.local.cluster_name, node.name) for p in node_pod_cidrs(node)]
        return out

    def _attach_endpoints(self, local: LocalState) -> list[LocalEndpoint]:
        """Attach the pod programs to each local endpoint's veth (blocking; netlink)."""
        from pyroute2 import IPRoute

        found: dict[str, LocalEndpoint] = {}
        wanted = 0
        with IPRoute() as ipr:
            for pair in local.pairs:
                if pair.host_ip != self.node_ip or not pair.is_host() or ":" in pair.ip:
                    continue
                wanted += 1
                try:
                    routes = ipr.route("get", dst=pair.ip)
                except Exception:
                    continue
                oif = routes[0].get_attr("RTA_OIF") if routes else None
                if oif is None:
                    continue
                links = ipr.get_links(oif)
                ifname = str(links[0].get_attr("IFLA_IFNAME"))
                if ifname in (self.config.tunnel_device, self.config.underlay_device, "lo"):
                    continue
                found[pair.ip] = LocalEndpoint(pair.ip, pair.id, endpoint_id_of(pair.ip), ifname, int(oif))
        for ip, ep in found.items():
            if self.endpoints.get(ip) != ep:
                try:
                    self.dp.attach_pod(ep.ifname, ep.endpoint_id, ep.identity)
                    self._log.info("endpoint attached", ip=ip, ifname=ep.ifname, identity=ep.identity)
                except Exception as err:
                    self.last_error = f"attach {ep.ifname}: {err}"
                    self._log.warning("attaching an endpoint failed", ip=ip, error=str(err))
                    continue
            self.endpoints[ip] = ep
        for ip in [ip for ip in self.endpoints if ip not in found]:
            del self.endpoints[ip]
        # A pod may be in etcd before its veth is up here: the feeding loop retries those.
        self._endpoints_missing = wanted - len(self.endpoints)
        return list(self.endpoints.values())

    # ---- status ----

    def status_json(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "programmed": self.programmed,
            "node-ip": self.node_ip,
            "host-addresses": list(self.host_addresses),
            "allow-localhost": self.config.allow_localhost,
            "routing-mode": self.config.routing_mode,
            "tunnel-device": None if self.config.native else self.config.tunnel_device,
            "route-protocol": ROUTE_PROTO if self.config.native else None,
            "routes-skipped": sorted(self.routes_target.skipped) if self.routes_target is not None else [],
            "pin-dir": str(self.config.pin_root / self.local.node_name),
            "endpoints": [
                {"ip": e.ip, "identity": e.identity, "endpoint-id": e.endpoint_id, "ifname": e.ifname}
                for e in sorted(self.endpoints.values(), key=lambda e: e.ip)
            ],
            "reconcilers": {
                name: {
                    "desired": s.desired,
                    "pending": s.pending,
                    "updates": s.updates,
                    "deletes": s.deletes,
                    "failures": s.failures,
                    "last-error": s.last_error,
                    "synced": s.synced,
                }
                for name, rec in self.reconcilers.items()
                for s in [rec.status()]
            },
            "policy": self.policy_state.stats.to_json() if self.policy_state is not None else None,
            "encryption": self.encryption_status(),
            "last-error": self.last_error,
        }

    def encryption_status(self) -> dict[str, Any]:
        """The ``encryption`` section of the status (also what the WireGuard metrics are read from)."""
        index = self._index
        remote_plain = index_plaintext_nodes(index) if index is not None else []
        local_plain: list[str] = []
        enc = self.config.encryption
        if enc.scope == "all" and self.local_state is not None:
            local_plain = sorted(f"{self.local.cluster_name}/{n.name}" for n in self.local_state.nodes
                                 if n.name != self.local.node_name and not n.wireguard_pub_key)  # fmt: skip
        if self.wireguard is None:
            return disabled_status_json(enc, len(remote_plain) + len(local_plain), plaintext=local_plain + remote_plain,
                                        disabled_by=self.encryption_disabled_by, withdrawn=self.key_withdrawn,
                                        withdraw_error=self.withdraw_error)  # fmt: skip
        return self.wireguard.status_json(local_plain + remote_plain)


def _check_bpffs(pin_root: Path) -> None:
    """Raise unless ``pin_root`` is on a bpffs mount (``ip netns exec`` remounts /sys, hiding
    /sys/fs/bpf: an agent in a named namespace needs a pin root on a bpffs mounted elsewhere)."""
    best, fstype = "", ""
    target = str(pin_root.resolve()) if pin_root.exists() else str(pin_root)
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            parts = line.split()
            point = parts[1]
            if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                best, fstype = point, parts[2]
    if fstype != "bpf":
        raise DatapathError(
            f"--pin-root {pin_root} is not on a bpffs mount (it is on {fstype or 'nothing'} at {best or '/'}); "
            "mount one (mount -t bpf bpf /sys/fs/bpf) or, under `ip netns exec` (which remounts /sys), bind a "
            "bpffs outside /sys (mount --bind /sys/fs/bpf /run/clustermesh-bpf) and pass that"
        )


async def _policies_synced(policies: Any) -> None:
    while not policies.synced:
        await policies.wait_changed(policies.version)


async def watch_affinities(api: Any, node: NodeDatapath) -> None:
    """Follow the local cluster's Services and hand their annotations to ``node`` (forever)."""
    from meshcore.k8s.resource import Delete, ResourceRef, ResourceWatch, Synced, Upsert, object_key

    watch = ResourceWatch(api, ResourceRef("", "v1", "services", namespaced=True))
    current: dict[str, Any] = {}
    async with aclosing(watch.events()) as events:
        async for event in events:
            if isinstance(event, Synced):
                node.set_affinities(dict(current))
                continue
            if isinstance(event, (Upsert, Delete)):
                key = object_key(event.obj)
                if isinstance(event, Delete):
                    current.pop(key, None)
                else:
                    current[key] = dict((event.obj.get("metadata") or {}).get("annotations") or {})
                node.set_affinities(dict(current))
