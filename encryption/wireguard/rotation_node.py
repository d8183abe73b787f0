"""The driver of key rotation on one node: observe the devices, :func:`plan_rotation`, apply.

The agent (or a test) owns the announcement path: it publishes :meth:`RotationNode.announcement`
(current key in ``network.cilium.io/wg-pub-key``, next key in
:data:`~encryption.wireguard.rotation.NEXT_KEY_ANNOTATION`), feeds the other nodes' announcements
to :meth:`RotationNode.step` periodically (every few hundred milliseconds while
:attr:`RotationNode.busy`, else on changes) and calls :meth:`RotationNode.request_rotation` on
schedule. Each step reads both devices once, plans and applies in an order that never breaks a
path: transition device and its peers, peers steered to it, the main device's key (commit), the
main device's peers (an old key is replaced in the same ``wg set`` that gives its IPs to the new
one), peers steered back, and last the transition device's removal.

State kept here, in memory: the keys (the private bytes never leave :class:`WireGuardKey`), when
steering and the transition device's counters last changed. A restart during a rotation loses the
next key, which aborts that rotation safely (the node keeps announcing its current key; peers go
back to their main devices, whose sessions are untouched); a committed key is written to
``key_path`` before it is announced.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Protocol

from encryption.wireguard.device import FWMARK, PeerChange
from encryption.wireguard.dump import DeviceDump
from encryption.wireguard.errors import DeviceError
from encryption.wireguard.keys import WireGuardKey, generate, write_key
from encryption.wireguard.rotation import (
    Announcement,
    Device,
    PeerSpec,
    Phase,
    RotationConfig,
    RotationPlan,
    RotationView,
    plan_rotation,
)
from meshcore.log import get_logger


class RotationDevice(Protocol):
    """What the driver needs of a device (a :class:`~encryption.wireguard.device.WireGuardDevice`)."""

    def mode(self) -> str | None: ...

    def dump(self) -> DeviceDump: ...

    def ensure(self, key: WireGuardKey, *, listen_port: int, fwmark: int, mtu: int | None) -> str: ...

    def set_peers(self, changes: list[PeerChange]) -> None: ...

    def delete(self) -> None: ...


class Steering(Protocol):
    """Chooses, per peer node, the device its traffic is sent through (see
    :class:`~encryption.wireguard.rotation_steering.RouteSteering`)."""

    def read(self) -> dict[str, Device]:
        """The device each peer node is steered through now (unknown nodes left out)."""
        ...

    def set(self, node: str, device: Device) -> None:
        """Steer ``node``'s traffic through ``device`` without a moment of no route."""
        ...


class RotationNode:
    """Key rotation of node ``node`` over its ``main`` and ``transition`` devices (two
    :class:`~encryption.wireguard.device.WireGuardDevice`, the transition one not created yet).

    ``key``: the node's current key (the main device's). ``node_ip`` / ``allowed_ips``: what this
    node announces (its endpoint address, the CIDRs peers route to it). ``mtu``: both devices'
    MTU (``None``: leave). ``key_path``: where a committed key is written (0600), if anywhere.
    """

    def __init__(
        self,
        node: str,
        key: WireGuardKey,
        *,
        main: RotationDevice,
        transition: RotationDevice,
        steering: Steering,
        node_ip: str,
        allowed_ips: Iterable[str],
        config: RotationConfig | None = None,
        mtu: int | None = None,
        key_path: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.main = main
        self.transition = transition
        self.config = config or RotationConfig()
        self._steering = steering
        self._node_ip = node_ip
        self._allowed = frozenset(allowed_ips)
        self._mtu = mtu
        self._key_path = key_path
        self._clock = clock
        self._key = key
        self._next: WireGuardKey | None = None
        self._staged: WireGuardKey | None = None
        self._next_since: float | None = None
        self._main_fresh_since = 0
        self._has_transition = False
        self._transition_since = 0.0
        self._rx_total = -1
        self._rx_since = 0.0
        self._routes: dict[str, Device] = {}
        self._route_since: dict[str, float] = {}
        self._last: RotationPlan | None = None
        self._log = get_logger(__name__, node=node)

    # --- public interface -------------------------------------------------------------------

    def start(self) -> None:
        """Create or adopt the main device with the current key; adopt a transition device and
        the steering a previous run left (a handshake on the main device must then be newer than
        this start before a peer is steered back to it)."""
        now = self._clock()
        self.main.ensure(self._key, listen_port=self.config.main_port, fwmark=FWMARK, mtu=self._mtu)
        self._has_transition = self.transition.mode() is not None
        if self._has_transition:
            self._transition_since = self._rx_since = now
            self._main_fresh_since = int(now) + 1
        self._routes = self._steering.read()

    def request_rotation(self) -> str:
        """Stage a new key for rotation and return its public key; the rotation begins at the next
        :meth:`step` when no other rotation's transition device is in the way. No-op (returns the
        pending key) while one is staged or running."""
        pending = self._next or self._staged
        if pending is None:
            pending = self._staged = generate()
            self._log.info("key rotation requested", next_public_key=pending.public_key)
        return pending.public_key

    def announcement(self) -> Announcement:
        """What this node publishes now."""
        return Announcement(
            node=self.node,
            current=self._key.public_key,
            next=self._next.public_key if self._next else None,
            node_ip=self._node_ip,
            allowed_ips=self._allowed,
        )

    @property
    def key(self) -> WireGuardKey:
        """The current (main device's) key."""
        return self._key

    @property
    def next_public_key(self) -> str | None:
        """The key being rotated to (announced), else the staged one, else None."""
        pending = self._next or self._staged
        return pending.public_key if pending is not None else None

    @property
    def public_key(self) -> str:
        """The current (main device's) public key."""
        return self._key.public_key

    @property
    def phase(self) -> Phase:
        """The phase of the last step (``"idle"`` before any)."""
        return self._last.phase if self._last else "idle"

    @property
    def busy(self) -> bool:
        """A rotation is staged or running here, or the transition device still exists."""
        return self._staged is not None or self._next is not None or self._has_transition

    def step(self, peers: Iterable[Announcement]) -> RotationPlan:
        """Observe both devices, plan with the other nodes' announcements ``peers`` and apply."""
        view = self.observe(peers)
        plan = plan_rotation(view, self.config)
        self.apply(plan, view)
        return plan

    def close(self) -> None:
        """Remove the transition device if there is one (steering must not use it any more)."""
        if self.transition.mode() is not None:
            self.transition.delete()
        self._has_transition = False

    # --- steps ------------------------------------------------------------------------------

    def observe(self, peers: Iterable[Announcement]) -> RotationView:
        """The :class:`RotationView` of now (reads both devices' dumps)."""
        now = self._clock()
        tdump: DeviceDump | None = None
        if self._has_transition:
            try:
                tdump = self.transition.dump()
            except DeviceError:
                self._has_transition = self.transition.mode() is not None
                if self._has_transition:
                    raise
        if tdump is not None:
            total = sum(p.rx_bytes for p in tdump.peers.values())
            if total != self._rx_total:
                self._rx_total, self._rx_since = total, now
        return RotationView(
            now=now,
            node=self.node,
            current=self._key.public_key,
            main=self.main.dump(),
            next=self._next.public_key if self._next else None,
            staged=self._staged.public_key if self._staged else None,
            next_since=self._next_since,
            peers={a.node: a for a in peers if a.node != self.node},
            main_fresh_since=self._main_fresh_since,
            transition=tdump,
            transition_since=self._transition_since,
            transition_rx_since=self._rx_since,
            routes=dict(self._routes),
            route_since=dict(self._route_since),
        )

    def apply(self, plan: RotationPlan, view: RotationView) -> None:
        """Make the devices and steering match ``plan`` (made from ``view``), in a safe order."""
        now = view.now
        seen = self._last.notes if self._last else ()
        for note in plan.notes:
            if note not in seen:  # a waiting note repeats at every step
                self._log.warning("key rotation", note=note)
        if plan.next is not None and self._next is None and self._staged is not None:
            if plan.next != self._staged.public_key:
                raise ValueError("the plan begins a rotation to a key that is not the staged one")
            self._next, self._staged, self._next_since = self._staged, None, plan.next_since
            self._log.info("key rotation begins", next_public_key=plan.next)

        tdump = view.transition
        if plan.transition_key is not None:
            if tdump is not None and tdump.public_key != plan.transition_key:
                self._log.info("recreating the transition device for a new key")
                self.transition.delete()  # the plan keeps the old key while anything uses it
                tdump = None
            if tdump is None:
                self.transition.ensure(
                    self._private(plan.transition_key),
                    listen_port=self.config.transition_port,
                    fwmark=FWMARK,
                    mtu=self._mtu,
                )
                self._has_transition = True
                self._transition_since = self._rx_since = now
                self._rx_total = 0
                tdump = DeviceDump(public_key=plan.transition_key, listen_port=self.config.transition_port, fwmark=0)
            self.transition.set_peers(_changes(tdump, plan.transition_peers))

        self._steer(plan, "transition", now)

        if plan.committed:
            new = self._private(plan.current)
            if self._key_path is not None:
                write_key(self._key_path, new)
            self.main.ensure(new, listen_port=self.config.main_port, fwmark=FWMARK, mtu=self._mtu)
            self._key, self._next, self._next_since = new, None, None
            self._log.info("key rotation committed", public_key=new.public_key)
        self._main_fresh_since = plan.main_fresh_since
        self.main.set_peers(_changes(view.main, plan.main_peers))

        self._steer(plan, "main", now)

        if plan.transition_key is None and self._has_transition:
            self.transition.delete()
            self._has_transition = False
            self._log.info("transition device removed")
        self._last = plan

    # --- internals --------------------------------------------------------------------------

    def _steer(self, plan: RotationPlan, device: Device, now: float) -> None:
        for node, want in plan.routes.items():
            if want == device and self._routes.get(node) != want:
                self._steering.set(node, want)
                if node in self._routes:  # the first route of a node is no switch
                    self._route_since[node] = now
                self._routes[node] = want

    def _private(self, public_key: str) -> WireGuardKey:
        for key in (self._key, self._next, self._staged):
            if key is not None and key.public_key == public_key:
                return key
        raise ValueError(f"no private key for {public_key} on node {self.node}")


def _changes(dump: DeviceDump, wanted: Mapping[str, PeerSpec]) -> list[PeerChange]:
    """``wg set`` changes turning ``dump``'s peers into ``wanted`` (node -> spec): new or changed
    peers first (taking over allowed IPs), then removal of the peers no node wants."""
    specs = {s.public_key: s for s in wanted.values()}
    changes: list[PeerChange] = []
    for key, spec in specs.items():
        have = dump.peers.get(key)
        if have is None:
            changes.append(PeerChange(key, spec.endpoint, spec.allowed_ips, spec.keepalive))
            continue
        ips = None if have.allowed_ips == spec.allowed_ips else spec.allowed_ips
        endpoint = "" if have.endpoint == spec.endpoint else spec.endpoint
        keepalive = None if have.persistent_keepalive == spec.keepalive else spec.keepalive
        if ips is not None or endpoint or keepalive is not None:
            changes.append(PeerChange(key, endpoint, ips, keepalive))
    changes += [PeerChange(key, remove=True) for key in dump.peers if key not in specs]
    return changes
