"""WireGuard key rotation in the agent: :class:`~encryption.wireguard.rotation_node.RotationNode`
driven over this node's device, with the agent's reconcilers as the only writers.

Announcements: every node publishes its current key (Cilium's ``network.cilium.io/wg-pub-key``) and,
while it rotates, its next key (``clustermesh.io/wg-next-pub-key``, exported by the API server in
the node record's ``Annotations``). The peers of the agent's WireGuard plan are the other nodes'
announcements (:func:`announcements`): their node name, current key, next key, node IP and the
allowed IPs the plan gives them.

Who writes what, so that no two writers race:

- the main device's peers: always the ``wireguard-peers`` reconciler. While a rotation is
  *engaged* (this node has one staged or running, a peer announces a next key, or the transition
  device still exists) the rotation's plans feed it (:class:`ReconciledPeers`: each ``wg set`` the
  rotation wants becomes a desired-state change, written before the step goes on) and the WireGuard
  plan does not; once the rotation is over the WireGuard plan feeds it again (the two agree by then);
- the steering routes: always the ``steering-routes`` reconciler; the rotation only says which
  peer nodes go through the transition device (:class:`ReconciledSteering`), which every steering
  desired state then honours (:attr:`RotationState.transition_oif`);
- the transition device (its key and peers) and the main device's private key: the rotation alone.

:class:`RotationDriver` runs the loop: idle, it waits for a request (``clustermesh encryption
rotate``, through :meth:`RotationDriver.request`), the key's age to reach
``--wireguard-key-rotation-interval``, or a peer's next key; engaged, it steps every
:data:`STEP_INTERVAL` seconds (each step reads both devices, plans and applies, in a thread) and
publishes this node's announcement whenever it changes. A restart during a rotation loses the next
key (it lives in memory only): the rotation is abandoned safely, as
:mod:`~encryption.wireguard.rotation_node` explains, and the transition device a previous run left is
adopted and drained.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from encryption.wireguard.device import PeerChange, WireGuardDevice
from encryption.wireguard.dump import DeviceDump
from encryption.wireguard.errors import DeviceError
from encryption.wireguard.keys import WireGuardKey
from encryption.wireguard.peers import PeerConfig
from encryption.wireguard.rotation import Announcement, Device, RotationConfig, RotationPlan
from encryption.wireguard.rotation_node import RotationNode
from meshcore.errors import MeshError
from meshcore.log import get_logger
from meshcore.reconcile import Reconciler

__all__ = [
    "STEP_INTERVAL",
    "ReconciledPeers",
    "ReconciledSteering",
    "RotationDriver",
    "RotationState",
    "announcements",
    "endpoint_ip",
]

STEP_INTERVAL = 0.25
"""Seconds between two steps of an engaged rotation."""
WRITE_TIMEOUT = 10.0
"""Seconds a step waits for a reconciler to write what it asked for."""
INTERVAL_CHECK = 60.0
"""At most this many seconds between two checks of the key's age against the rotation interval."""


def endpoint_ip(endpoint: str) -> str:
    """The address of a WireGuard endpoint ``ip:port`` or ``[v6]:port`` (``""`` for none)."""
    host = endpoint.rsplit(":", 1)[0] if endpoint else ""
    return host.strip("[]")


def announcements(peers: dict[str, PeerConfig], nodes: dict[str, str], next_keys: dict[str, str]) -> list[Announcement]:
    """The other nodes' announcements as the WireGuard plan knows them: ``peers`` (public key ->
    config), ``nodes`` (public key -> node) and ``next_keys`` (node -> its announced next key).
    Peers without an endpoint are left out (a rotation cannot reach them)."""
    out = []
    for key, node in sorted(nodes.items(), key=lambda kv: kv[1]):
        cfg = peers.get(key)
        ip = endpoint_ip(cfg.endpoint) if cfg is not None else ""
        if cfg is None or not ip:
            continue
        nxt = next_keys.get(node) or None
        out.append(Announcement(node=node, current=key, next=nxt if nxt != key else None, node_ip=ip,
                                allowed_ips=cfg.allowed_ips))  # fmt: skip
    return out


@dataclass
class RotationState:
    """What the rest of the node's WireGuard needs to know of the rotation."""

    engaged: bool = False
    transition_oif: dict[str, int] = field(default_factory=dict)
    """Peer node -> the ifindex of the device its traffic is steered through, when not the main one."""


def _on_loop(loop: asyncio.AbstractEventLoop, make: Callable[[], Coroutine[Any, Any, None]], what: str) -> None:
    """Run ``make()`` on ``loop`` from a worker thread and wait for it (bounded)."""
    future = asyncio.run_coroutine_threadsafe(make(), loop)
    try:
        future.result(WRITE_TIMEOUT)
    except FutureTimeout:
        future.cancel()
        raise DeviceError(f"{what}: not written within {WRITE_TIMEOUT:.0f}s") from None


class ReconciledPeers:
    """The main device as the rotation sees it (:class:`~encryption.wireguard.rotation_node.RotationDevice`):
    read directly, its peers written through the ``wireguard-peers`` reconciler. Called from the
    rotation's worker thread; ``loop`` is the agent's event loop."""

    def __init__(self, device: WireGuardDevice, reconciler: Reconciler[str, PeerConfig],
                 loop: asyncio.AbstractEventLoop) -> None:  # fmt: skip
        self._device = device
        self._reconciler = reconciler
        self._loop = loop

    def mode(self) -> str | None:
        return self._device.mode()

    def dump(self) -> DeviceDump:
        return self._device.dump()

    def ensure(self, key: WireGuardKey, *, listen_port: int, fwmark: int, mtu: int | None) -> str:
        return self._device.ensure(key, listen_port=listen_port, fwmark=fwmark, mtu=mtu)

    def delete(self) -> None:
        raise DeviceError("the rotation never removes the main device")

    def set_peers(self, changes: list[PeerChange]) -> None:
        if changes:
            _on_loop(self._loop, lambda: self._apply(changes), "the main device's peers")

    async def _apply(self, changes: list[PeerChange]) -> None:
        rec = self._reconciler
        desired = rec.desired
        updates: dict[str, PeerConfig] = {}
        deletes = []
        for c in changes:
            if c.remove:
                deletes.append(c.public_key)
                continue
            have = desired.get(c.public_key)
            updates[c.public_key] = PeerConfig(
                endpoint=c.endpoint or (have.endpoint if have else ""),
                allowed_ips=c.allowed_ips if c.allowed_ips is not None else (have.allowed_ips if have else frozenset()),
                keepalive=c.keepalive if c.keepalive is not None else (have.keepalive if have else 0),
            )
        rec.change_desired(updates, deletes)
        await rec.wait_synced()


class ReconciledSteering:
    """The rotation's :class:`~encryption.wireguard.rotation_node.Steering` over the agent's steering
    routes: ``set(node, "transition")`` records the transition device's ifindex for ``node`` in
    ``state`` and has ``resteer()`` (the node's steering, re-planned with it) written."""

    def __init__(
        self,
        state: RotationState,
        transition: WireGuardDevice,
        resteer: Callable[[], Coroutine[Any, Any, None]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._state = state
        self._transition = transition
        self._resteer = resteer
        self._loop = loop

    def read(self) -> dict[str, Device]:
        return {node: "transition" for node in self._state.transition_oif}

    def set(self, node: str, device: Device) -> None:
        if device == "transition":
            ifindex = self._transition.ifindex()
            if not ifindex:
                raise DeviceError(f"cannot steer {node} through {self._transition.name}: no such device")
            self._state.transition_oif[node] = ifindex
        else:
            self._state.transition_oif.pop(node, None)
        _on_loop(self._loop, self._resteer, f"the steering of {node}")


class RotationDriver:
    """Drives the key rotation of one node (see the module docstring).

    ``announce`` is called with this node's announcement whenever it changes (the agent publishes
    it); ``peers`` gives the other nodes' announcements now; ``reprogram`` hands the main device's
    peers back to the WireGuard plan once a rotation is over; ``key_age`` is the current key's age
    in seconds (None: unknown). ``interval``: rotate when the key is this old (0: never)."""

    def __init__(
        self,
        node: str,
        key: WireGuardKey,
        *,
        main: WireGuardDevice,
        transition: WireGuardDevice,
        peers_reconciler: Reconciler[str, PeerConfig],
        state: RotationState,
        peers: Callable[[], list[Announcement]],
        resteer: Callable[[], Coroutine[Any, Any, None]],
        reprogram: Callable[[], Awaitable[None]],
        announce: Callable[[Announcement], None],
        key_age: Callable[[], float | None],
        node_ip: str,
        config: RotationConfig,
        mtu: int | None,
        key_path: Any,
        interval: float = 0.0,
    ) -> None:
        self.node = node
        self.state = state
        self.interval = interval
        self.transition = transition
        self.rotations = 0
        self.last_committed_at: float | None = None
        self.last_error = ""
        self.plan: RotationPlan | None = None
        self._key = key
        self._main = main
        self._peers_reconciler = peers_reconciler
        self._peers = peers
        self._resteer = resteer
        self._reprogram = reprogram
        self._announce = announce
        self._key_age = key_age
        self._node_ip = node_ip
        self._config = config
        self._mtu = mtu
        self._key_path = key_path
        self._wakeup = asyncio.Event()
        self._ready = asyncio.Event()
        self._rotation: RotationNode | None = None
        self._log = get_logger(__name__, node=node)

    # ---- inputs ----

    def wake(self) -> None:
        """The announcements may have changed: look again now."""
        self._wakeup.set()

    def request(self) -> dict[str, Any]:
        """Stage a rotation of this node's key (``clustermesh encryption rotate``); what it will
        rotate to. Raises :class:`MeshError` before the driver runs."""
        rotation = self._rotation
        if rotation is None or not self._ready.is_set():
            raise MeshError(f"node {self.node}: WireGuard is not programmed yet; retry in a few seconds")
        nxt = rotation.request_rotation()
        self.wake()
        return {"node": self.node, "public-key": rotation.public_key, "next-public-key": nxt,
                "phase": rotation.phase}  # fmt: skip

    @property
    def key(self) -> WireGuardKey:
        """The current key (the main device's)."""
        return self._rotation.key if self._rotation is not None else self._key

    def status_json(self) -> dict[str, Any]:
        rotation = self._rotation
        return {
            "phase": rotation.phase if rotation is not None else "idle",
            "busy": bool(rotation is not None and rotation.busy),
            "engaged": self.state.engaged,
            "next-public-key": rotation.next_public_key if rotation is not None else None,
            "interval-seconds": self.interval,
            "last-committed-at": self.last_committed_at,
            "transition-device": self.transition.name,
            "steered-to-transition": sorted(self.state.transition_oif),
            "notes": list(self.plan.notes) if self.plan is not None else [],
            "last-error": self.last_error,
        }

    # ---- the loop ----

    async def run(self) -> None:
        """Adopt what a previous run left, then rotate when asked (forever; never raises on a
        device error: it is logged, kept in the status and retried)."""
        loop = asyncio.get_running_loop()
        rotation = RotationNode(
            self.node,
            self._key,
            main=ReconciledPeers(self._main, self._peers_reconciler, loop),
            transition=self.transition,
            steering=ReconciledSteering(self.state, self.transition, self._resteer, loop),
            node_ip=self._node_ip,
            allowed_ips=(),
            config=self._config,
            mtu=self._mtu,
            key_path=self._key_path,
        )
        await asyncio.to_thread(rotation.start)
        self._rotation = rotation
        self._ready.set()
        announced = rotation.announcement()
        next_check = time.monotonic()
        while True:
            peers = self._peers()
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + min(INTERVAL_CHECK, self.interval or INTERVAL_CHECK)
                self._maybe_schedule(rotation)
            if rotation.busy or any(a.next is not None for a in peers):
                await self._engage()
                try:
                    self.plan = await asyncio.to_thread(rotation.step, peers)
                    self.last_error = ""
                except (DeviceError, MeshError, OSError, ValueError) as err:
                    self.last_error = f"{type(err).__name__}: {err}"
                    self._log.warning("key rotation step failed, retrying", error=self.last_error)
                    await asyncio.sleep(1.0)
                    continue
                if self.plan.committed:
                    self.rotations += 1
                    self.last_committed_at = time.time()
                now = rotation.announcement()
                if now != announced:
                    announced = now
                    self._announce(now)
                self._wakeup.clear()
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), STEP_INTERVAL)
                continue
            if self.state.engaged:
                await self._disengage()
            self._wakeup.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), max(0.0, next_check - time.monotonic()))

    def _maybe_schedule(self, rotation: RotationNode) -> None:
        if self.interval <= 0 or rotation.busy:
            return
        age = self._key_age()
        if age is not None and age >= self.interval:
            self._log.info("the key reached the rotation interval: rotating", age_seconds=round(age),
                           interval_seconds=self.interval)  # fmt: skip
            rotation.request_rotation()

    async def _engage(self) -> None:
        if self.state.engaged:
            return
        # the WireGuard plan's last writes land first: from now on the rotation feeds the peers
        with suppress(TimeoutError):
            await asyncio.wait_for(self._peers_reconciler.wait_synced(), WRITE_TIMEOUT)
        self.state.engaged = True
        self._log.info("key rotation engaged: the rotation drives the WireGuard peers and steering")

    async def _disengage(self) -> None:
        self.state.engaged = False
        self.state.transition_oif.clear()
        await self._reprogram()
        self._log.info("key rotation over: the WireGuard plan drives the peers again",
                       public_key=self.key.public_key)  # fmt: skip
