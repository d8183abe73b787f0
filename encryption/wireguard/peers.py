"""Desired WireGuard peers from remote nodes (pure, Cilium's ``updatePeer`` rules) and the
reconciler target that writes them to a device.

Conflicts never depend on arrival order: every rule that must pick a winner picks the node whose
name (``cluster/name``) sorts first, and reports the loser.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

from encryption.wireguard.device import LISTEN_PORT, PeerChange
from encryption.wireguard.dump import DeviceDump
from encryption.wireguard.keys import validate_public_key
from meshcore.errors import WireError

RoutingMode = Literal["tunnel", "native"]


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """What one peer should look like on the device."""

    endpoint: str  # "ip:port", "[v6]:port" or "" (none)
    allowed_ips: frozenset[str]  # normalized CIDRs, /32 or /128 for hosts
    keepalive: int = 0  # seconds, 0 = off


@dataclass(frozen=True)
class PeerSource:
    """A remote node as the node sources know it."""

    node: str  # "cluster/name"
    public_key: str
    node_ips: tuple[str, ...]
    pod_ips: tuple[str, ...] = ()  # native routing: per-pod host addresses
    pod_cidrs: tuple[str, ...] = ()


def endpoint_for(node_ips: Iterable[str], port: int = LISTEN_PORT) -> str:
    """``<first IPv4>:port``, else ``[<first IPv6>]:port``, else "" (invalid addresses skipped)."""
    v6: str | None = None
    for text in node_ips:
        try:
            ip = ipaddress.ip_address(text.strip())
        except ValueError:
            continue
        if ip.version == 4:
            return f"{ip}:{port}"
        v6 = v6 or f"[{ip}]:{port}"
    return v6 or ""


def desired_peers(
    local_public_key: str,
    sources: Iterable[PeerSource],
    *,
    routing_mode: RoutingMode,
    keepalive: int = 0,
) -> tuple[dict[str, PeerConfig], list[str]]:
    """The peers the device should have, keyed by public key, and the problems found (text).

    - the local key is skipped (the local node is not its own peer);
    - invalid and all-zero keys are rejected;
    - a key claimed by several nodes stays with the first by node name ("detected duplicate public
      key"), the others get no peer;
    - endpoint: first node IP, IPv4 preferred, port 51871;
    - allowed IPs: node IPs as /32 or /128 always; in native routing also pod IPs (host routes) and
      pod CIDRs; an allowed IP claimed by several peers stays with the first by node name.
    """
    if routing_mode not in ("tunnel", "native"):
        raise ValueError(f"routing_mode must be 'tunnel' or 'native', not {routing_mode!r}")
    problems: list[str] = []
    owner_of_key: dict[str, str] = {}
    owner_of_ip: dict[str, str] = {}
    peers: dict[str, PeerConfig] = {}
    for src in sorted(sources, key=lambda s: (s.node, s.public_key)):
        try:
            key = validate_public_key(src.public_key)
        except WireError as err:
            problems.append(f"node {src.node}: {err}; no WireGuard peer")
            continue
        if key == local_public_key:
            continue
        if key in owner_of_key:
            problems.append(
                f"detected duplicate public key {key} on node {src.node} (already used by node "
                f"{owner_of_key[key]}); no WireGuard peer for {src.node}"
            )
            continue
        owner_of_key[key] = src.node
        wanted = _host_cidrs(src.node, "node IP", src.node_ips, problems)
        if routing_mode == "native":
            wanted += _host_cidrs(src.node, "pod IP", src.pod_ips, problems)
            wanted += _cidrs(src.node, src.pod_cidrs, problems)
        allowed: set[str] = set()
        for cidr in wanted:
            owner = owner_of_ip.setdefault(cidr, src.node)
            if owner == src.node:
                allowed.add(cidr)
            else:
                problems.append(f"allowed IP {cidr} claimed by nodes {owner} and {src.node}; kept on {owner}")
        endpoint = endpoint_for(src.node_ips)
        if not endpoint:
            problems.append(f"node {src.node}: no valid node IP, WireGuard peer has no endpoint")
        peers[key] = PeerConfig(endpoint=endpoint, allowed_ips=frozenset(allowed), keepalive=keepalive)
    return peers, problems


def _host_cidrs(node: str, what: str, ips: Iterable[str], problems: list[str]) -> list[str]:
    out: list[str] = []
    for text in ips:
        try:
            ip = ipaddress.ip_address(text.strip())
        except ValueError:
            problems.append(f"node {node}: ignoring invalid {what} {text!r}")
            continue
        out.append(f"{ip}/{ip.max_prefixlen}")
    return out


def _cidrs(node: str, cidrs: Iterable[str], problems: list[str]) -> list[str]:
    out: list[str] = []
    for text in cidrs:
        try:
            out.append(str(ipaddress.ip_network(text.strip(), strict=False)))
        except ValueError:
            problems.append(f"node {node}: ignoring invalid pod CIDR {text!r}")
    return out


class PeerDevice(Protocol):
    """What :class:`PeersTarget` needs of a device (a :class:`~encryption.wireguard.device.WireGuardDevice`)."""

    def dump(self) -> DeviceDump: ...

    def set_peers(self, changes: list[PeerChange]) -> None: ...

    def remove_peers(self, keys: Iterable[str]) -> None: ...


class PeersTarget:
    """A :class:`meshcore.reconcile.Target` of ``public key -> PeerConfig`` over a device.

    Ordering on a node's key change (``delete(old)`` + ``update(new)``): the reconciler's
    ``_apply_pending`` writes before it deletes, so the new peer first takes all allowed IPs
    (taking an IP away from the old peer is atomic in WireGuard), and removing the old peer then
    removes nothing routed. Only when more writes are pending than one batch holds can a delete run
    before the matching write; the old node's IPs are then unrouted via WireGuard (not sent in the
    clear) until the next batch, moments later. Removed peers' IPs claimed by nobody simply stop
    being routed via WireGuard.

    Allowed IPs are only sent when they differ from what this target last saw or wrote: ``wg set
    ... allowed-ips`` replaces the whole list, which leaves a short window without the IPs a peer
    keeps (the reason for Cilium's dummy peer); an endpoint or keepalive change then leaves them
    alone. The target must be the only writer of the device's peers.
    """

    def __init__(self, device: PeerDevice) -> None:
        self._device = device
        self._known: dict[str, frozenset[str]] = {}  # peer -> allowed IPs it holds
        self._owner: dict[str, str] = {}  # allowed IP -> peer holding it

    def items(self) -> list[tuple[str, PeerConfig]]:
        """The device's peers now (read at the reconciler's first run: restart and GC)."""
        peers = self._device.dump().peers
        self._known, self._owner = {}, {}
        for k, p in peers.items():
            self._record(k, p.allowed_ips)
        return [
            (k, PeerConfig(endpoint=p.endpoint, allowed_ips=p.allowed_ips, keepalive=p.persistent_keepalive))
            for k, p in peers.items()
        ]

    def update_many(self, items: list[tuple[str, PeerConfig]]) -> None:
        """Create or update these peers in one ``wg set`` call."""
        changes = [
            PeerChange(
                public_key=k,
                endpoint=cfg.endpoint,
                allowed_ips=None if self._known.get(k) == cfg.allowed_ips else cfg.allowed_ips,
                keepalive=cfg.keepalive,
            )
            for k, cfg in items
        ]
        self._device.set_peers(changes)
        for k, cfg in items:
            self._record(k, cfg.allowed_ips)

    def delete_many(self, keys: list[str]) -> None:
        """Remove these peers in one ``wg set`` call."""
        self._device.remove_peers(keys)
        for k in keys:
            for ip in self._known.pop(k, frozenset()):
                if self._owner.get(ip) == k:
                    del self._owner[ip]

    def _record(self, key: str, ips: frozenset[str]) -> None:
        """Note that ``key`` now holds exactly ``ips``, taken away from any previous holder."""
        owner, known = self._owner, self._known
        for ip in known.get(key, frozenset()) - ips:
            if owner.get(ip) == key:
                del owner[ip]
        taken: dict[str, set[str]] = {}
        for ip in ips:
            prev = owner.get(ip)
            if prev is not None and prev != key:
                taken.setdefault(prev, set()).add(ip)
            owner[ip] = key
        for prev, lost in taken.items():
            known[prev] = known[prev] - lost
        known[key] = ips
