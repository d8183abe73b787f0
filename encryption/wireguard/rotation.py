"""Scheduled WireGuard key rotation without packet loss: the pure protocol (:func:`plan_rotation`).

Cilium never rotates WireGuard keys (reference §1.10): a new key is set in place and the other
nodes replace the peer when they see the new public key, which loses packets in one direction
whatever the order. With one device that cannot be helped, as measured on wireguard-go: a receiver
accepts a packet only if its inner source is in the allowed IPs of the peer it came from, an
allowed IP belongs to one peer per device, and a device whose private key changed can no longer
send on its sessions (it still receives on them until they expire). So between "B moves A's IPs
to A's new key" and "A switches to its new key" one direction is dropped.

Make-before-break with a second device per node. While a rotation involving a node runs, the node
also runs a *transition device* (port ``transition_port``) whose key is the node's next key if it
is rotating, else its current key; its peers are the other nodes under their next key if they are
rotating, else their current key, at ``<node ip>:transition_port``, with the same allowed IPs as on
the main device. Both devices accept traffic all along; steering (one route per peer node) picks
the device each node *sends* through, so each direction moves on its own, without loss.

Phases, as one node ``X`` sees them (:data:`Phase`):

1. ``preparing``: ``X`` has staged a next key and no transition device (a node never begins while
   its transition device exists: its key must not change under traffic), or a peer announces a
   next key. ``X`` announces its next key, creates the transition device with keepalive 1 on its
   peers (the probe), and switches a peer to it only once its dump shows a live handshake with that
   peer, so no packet waits for a handshake.
2. ``transition``: every peer of a running rotation is steered through the transition device.
3. ``committing`` (rotating node): once all its peers have been on the transition device for
   ``commit_hold`` seconds (they have switched too by then), or after ``prepare_timeout``, ``X``
   sets its main device's private key to the next key and announces it as current (next: none).
   Its main sessions can no longer send but still receive, so a peer still sending through its
   main device loses nothing either. Handshake times are whole seconds, so the commit waits for a
   second in which no main handshake happened: any handshake stamped at or after that second
   (``main_fresh_since``) is one made with the new key.
4. ``converging``: every node seeing a new current key replaces the old peer on its main device
   with the new key (one ``wg set``: the allowed IPs move atomically); peers steered through the
   transition device get keepalive 1 on the main device until a fresh handshake shows there, then
   are steered back to the main device.
5. ``draining``: nothing is steered through the transition device any more; it is removed once its
   receive counters have been still for ``drain_quiet`` seconds (a peer that still sends through
   its own transition device keeps them moving), or after ``drain_timeout``.

Several nodes may rotate at once: each commits on its own; a pair is back on the main devices when
neither of its nodes announces a next key any more and both main devices have handshaked.

This module only decides (no I/O); :mod:`encryption.wireguard.rotation_node` applies the plans.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from clustermesh_apiserver.converters.annotations import WIREGUARD_NEXT_PUB_KEY
from encryption.wireguard.device import LISTEN_PORT
from encryption.wireguard.dump import DeviceDump, PeerDump
from encryption.wireguard.keys import validate_public_key
from encryption.wireguard.peers import endpoint_for
from meshcore.errors import WireError

Device = Literal["main", "transition"]
Phase = Literal["idle", "preparing", "transition", "committing", "converging", "draining"]

#: The transition device's UDP port (the main device keeps Cilium's 51871).
TRANSITION_PORT = 51872
#: Node annotation carrying the next public key while a rotation runs (the current key stays in
#: Cilium's ``network.cilium.io/wg-pub-key``).
NEXT_KEY_ANNOTATION: Final = WIREGUARD_NEXT_PUB_KEY


@dataclass(frozen=True, slots=True)
class Announcement:
    """What a node publishes about its WireGuard keys (node annotations in the agent).

    ``current``: the key of its main device; ``next``: the key it rotates to, while it does.
    ``node_ip`` is the endpoint address of both devices, ``allowed_ips`` the CIDRs its peers give it.
    """

    node: str
    current: str
    next: str | None
    node_ip: str
    allowed_ips: frozenset[str]


@dataclass(frozen=True, slots=True)
class RotationTimings:
    """Bounds of the protocol, in seconds."""

    #: How long a rotating node keeps all its peers on the transition device before it commits:
    #: enough for the peers to have switched too (several of their reconcile periods).
    commit_hold: float = 2.0
    #: A rotating node commits after this long even if some peer never handshaked (a dead node).
    prepare_timeout: float = 60.0
    #: A handshake older than this is not live enough to switch to (sessions last 180 s).
    handshake_max_age: float = 150.0
    #: The transition device goes once its receive counters have been still this long (more than
    #: the probe keepalive interval, so a peer still probing is noticed).
    drain_quiet: float = 2.5
    #: ... or this long after the last peer left it, whatever the counters do.
    drain_timeout: float = 30.0
    #: A peer steered through the transition device longer than this, or whose transition session
    #: died, goes back to the main device even without a fresh handshake there (a node gone away).
    max_on_transition: float = 300.0


@dataclass(frozen=True, slots=True)
class RotationConfig:
    """Ports and keepalives of both devices, and the timings."""

    main_port: int = LISTEN_PORT
    transition_port: int = TRANSITION_PORT
    #: The main device's configured persistent keepalive (0: off, Cilium's default).
    keepalive: int = 0
    #: Keepalive interval used as a handshake probe on the transition device, and on the main
    #: device while a peer is steered away from it.
    probe_keepalive: int = 1
    timings: RotationTimings = field(default_factory=RotationTimings)


@dataclass(frozen=True, slots=True)
class RotationView:
    """What one node knows at time ``now`` (unix seconds, the clock of WireGuard's handshakes).

    Keys are public keys. ``staged``: a next key generated for a requested rotation, not announced
    yet. ``next_since``: when the node's own rotation began. ``main`` / ``transition``: the devices'
    dumps (``transition`` None when there is no transition device). ``main_fresh_since``: handshakes
    on the main device older than this second predate its last key change. ``transition_since``:
    when the transition device was created; ``transition_rx_since``: when its receive counters
    last moved. ``routes``: the device each peer node is steered through now (absent: main);
    ``route_since``: when each peer's steering last changed.
    """

    now: float
    node: str
    current: str
    main: DeviceDump
    next: str | None = None
    staged: str | None = None
    next_since: float | None = None
    peers: Mapping[str, Announcement] = field(default_factory=dict)
    main_fresh_since: int = 0
    transition: DeviceDump | None = None
    transition_since: float = 0.0
    transition_rx_since: float = 0.0
    routes: Mapping[str, Device] = field(default_factory=dict)
    route_since: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """One peer as a device should have it."""

    public_key: str
    endpoint: str
    allowed_ips: frozenset[str]
    keepalive: int


@dataclass(frozen=True, slots=True)
class RotationPlan:
    """What the node should configure and announce.

    ``current`` / ``next``: its keys to announce (``current`` is the main device's key).
    ``main_peers`` / ``transition_peers``: peers by node name; ``transition_key`` None means no
    transition device. ``routes``: the device to steer each peer node through. ``committed``: this
    plan changes the main device's key. ``notes``: forced steps and problems, for the log.
    """

    phase: Phase
    current: str
    next: str | None
    next_since: float | None
    main_peers: Mapping[str, PeerSpec]
    main_fresh_since: int
    transition_key: str | None
    transition_peers: Mapping[str, PeerSpec]
    routes: Mapping[str, Device]
    committed: bool = False
    notes: tuple[str, ...] = ()


def plan_rotation(view: RotationView, config: RotationConfig | None = None) -> RotationPlan:
    """The next step of the rotation protocol for the node of ``view`` (see the module docstring).

    Guarantees, whatever the view: a peer is switched to a device only if that device shows a live
    handshake with it (fresh, on the main device), except the bounded fallbacks listed in
    ``notes``; the transition device is never removed, nor its key or a peer changed, while a peer
    is steered through it; the main device's key changes only in a commit.
    """
    cfg = config or RotationConfig()
    t = cfg.timings
    now = view.now
    notes: list[str] = []
    peers = _valid_peers(view, notes)
    rotating = {n for n, a in peers.items() if a.next is not None and a.next != a.current}

    current, nxt, next_since = view.current, view.next, view.next_since
    if nxt is None and view.staged is not None:
        if view.transition is None:
            nxt, next_since = view.staged, now
        else:
            notes.append("rotation requested: waiting for the transition device of another rotation to go")

    def active(node: str, own_next: str | None) -> bool:
        return own_next is not None or node in rotating

    def transition_key_for(node: str) -> str:
        a = peers[node]
        return a.next if node in rotating and a.next is not None else a.current

    routes_now: dict[str, Device] = {n: view.routes.get(n, "main") for n in peers}
    in_use = {n for n, r in routes_now.items() if r == "transition"}
    tdump = view.transition
    existing_tpeer = {n: _transition_peer(tdump, peers[n]) for n in peers}

    def t_usable(key: str) -> bool:
        return tdump is not None and _live(tdump.peers.get(key), now, t.handshake_max_age, 0)

    def main_usable(node: str) -> bool:
        """A fresh handshake with the node's announced key on the main device as it is now."""
        return view.main.public_key == view.current and _live(
            view.main.peers.get(peers[node].current), now, t.handshake_max_age, view.main_fresh_since
        )

    # Steering, decided on what the devices show now.
    routes: dict[str, Device] = {}
    for n in peers:
        route = routes_now[n]
        if active(n, nxt):
            if route == "main" and t_usable(transition_key_for(n)):
                route = "transition"
        elif route == "transition":
            held = existing_tpeer[n]
            since = view.route_since.get(n, now)
            if main_usable(n):
                route = "main"
            elif held is None or not t_usable(held.public_key):
                route = "main"
                notes.append(f"{n}: transition session gone and no fresh main handshake: steered back anyway")
            elif now - since >= t.max_on_transition:
                route = "main"
                notes.append(f"{n}: on the transition device for {now - since:.0f}s: steered back anyway")
        routes[n] = route

    # Commit of the node's own rotation.
    committed = False
    main_fresh_since = view.main_fresh_since
    if nxt is not None and nxt == view.next:
        all_on = all(
            routes_now[n] == "transition" and (held := existing_tpeer[n]) is not None and t_usable(held.public_key)
            for n in peers
        )
        last_switch = max((view.route_since.get(n, 0.0) for n in peers), default=0.0)
        held_long = all_on and now - last_switch >= t.commit_hold
        timed_out = next_since is not None and now - next_since >= t.prepare_timeout
        if held_long or timed_out or not peers:
            if all(p.latest_handshake < int(now) for p in view.main.peers.values()):
                committed = True
                if timed_out and not held_long and peers:
                    missing = sorted(n for n in peers if routes[n] != "transition")
                    notes.append(f"commit after prepare timeout; not on the transition device: {missing}")
                current, nxt, next_since = nxt, None, None
                main_fresh_since = int(now)
            else:
                notes.append("commit waits for a second without main handshakes")

    # Transition device.
    any_active = any(active(n, nxt) for n in peers)
    transition_key: str | None = None
    transition_peers: dict[str, PeerSpec] = {}
    if any_active or in_use or routes_now != routes or _keep_draining(view, now, t):
        own_tkey = nxt or current
        if tdump is not None and tdump.public_key and tdump.public_key != own_tkey and in_use:
            notes.append("transition device key differs from the wanted one but is in use: kept")
            own_tkey = tdump.public_key
        transition_key = own_tkey
        for n, a in peers.items():
            held = existing_tpeer[n]
            steered = routes[n] == "transition" or n in in_use
            if steered and held is not None:
                want = held.public_key  # never replace a peer under traffic
                if active(n, nxt) and want != transition_key_for(n):
                    notes.append(f"{n}: transition peer key differs from the wanted one but is in use: kept")
            elif active(n, nxt):
                want = transition_key_for(n)
            elif held is not None:
                want = held.public_key
            else:
                continue
            keepalive = cfg.probe_keepalive if active(n, nxt) or routes[n] == "transition" else 0
            endpoint = endpoint_for([a.node_ip], cfg.transition_port)
            transition_peers[n] = PeerSpec(want, endpoint, a.allowed_ips, keepalive)

    main_peers = {
        n: PeerSpec(
            a.current,
            endpoint_for([a.node_ip], cfg.main_port),
            a.allowed_ips,
            cfg.probe_keepalive if routes[n] == "transition" else cfg.keepalive,
        )
        for n, a in peers.items()
    }

    phase = _phase(committed, transition_key, [active(n, nxt) for n in peers], peers, routes)
    return RotationPlan(
        phase=phase,
        current=current,
        next=nxt,
        next_since=next_since,
        main_peers=main_peers,
        main_fresh_since=main_fresh_since,
        transition_key=transition_key,
        transition_peers=transition_peers,
        routes=routes,
        committed=committed,
        notes=tuple(notes),
    )


def _valid_peers(view: RotationView, notes: list[str]) -> dict[str, Announcement]:
    out: dict[str, Announcement] = {}
    for node, a in sorted(view.peers.items()):
        if node == view.node:
            continue
        try:
            validate_public_key(a.current)
            if a.next is not None:
                validate_public_key(a.next)
        except WireError as err:
            notes.append(f"{node}: {err}; ignored")
            continue
        if not endpoint_for([a.node_ip]):
            notes.append(f"{node}: invalid node IP {a.node_ip!r}; ignored")
            continue
        out[node] = a
    return out


def _transition_peer(tdump: DeviceDump | None, a: Announcement) -> PeerDump | None:
    """The transition device's peer for node ``a`` (by its current or next key)."""
    if tdump is None:
        return None
    for key in (a.current, a.next):
        if key is not None and key in tdump.peers:
            return tdump.peers[key]
    return None


def _live(peer: PeerDump | None, now: float, max_age: float, fresh_since: int) -> bool:
    return (
        peer is not None
        and peer.latest_handshake > 0
        and peer.latest_handshake >= fresh_since
        and now - peer.latest_handshake < max_age
    )


def _keep_draining(view: RotationView, now: float, t: RotationTimings) -> bool:
    """Whether an idle transition device must stay a little longer (see ``drain_quiet``)."""
    if view.transition is None:
        return False
    idle_since = max([view.transition_since, *view.route_since.values()])
    if now - idle_since >= t.drain_timeout:
        return False
    return now - max(idle_since, view.transition_rx_since) < t.drain_quiet


def _phase(
    committed: bool,
    transition_key: str | None,
    actives: list[bool],
    peers: Mapping[str, Announcement],
    routes: Mapping[str, Device],
) -> Phase:
    if committed:
        return "committing"
    if transition_key is None:
        return "idle"
    if any(actives):
        on = all(routes[n] == "transition" for n, act in zip(peers, actives, strict=True) if act)
        return "transition" if on else "preparing"
    if any(r == "transition" for r in routes.values()):
        return "converging"
    return "draining"
