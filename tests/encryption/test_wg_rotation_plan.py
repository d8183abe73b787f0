"""The rotation protocol without I/O: :func:`plan_rotation` phase by phase, then whole rotations of
three :class:`RotationNode` drivers over an in-memory model of WireGuard (sessions, handshakes,
allowed-IP checks; the real wireguard-go proof is ``test_wg_rotation_netns.py``)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from encryption.wireguard import keys
from encryption.wireguard.device import PeerChange
from encryption.wireguard.dump import DeviceDump, PeerDump
from encryption.wireguard.rotation import (
    Announcement,
    Device,
    RotationConfig,
    RotationPlan,
    RotationTimings,
    RotationView,
    plan_rotation,
)
from encryption.wireguard.rotation_node import RotationNode

T0 = 1_800_000_000.0
CFG = RotationConfig(main_port=51971, transition_port=51972)
K = {name: keys.generate().public_key for name in ("a", "a2", "b", "b2", "c", "c2")}
IPS = {"a": "10.9.0.1", "b": "10.9.0.2", "c": "10.9.0.3"}


def ann(node: str, current: str, nxt: str | None = None) -> Announcement:
    ip = f"10.251.0.{ord(node) - 96}/32"
    return Announcement(node, K[current], K[nxt] if nxt else None, IPS[node], frozenset({ip}))


def peer(key: str, handshake: float = 0, rx: int = 0, keepalive: int = 0) -> PeerDump:
    return PeerDump(K[key], "", frozenset(), int(handshake), rx, 0, keepalive)


def dev(key: str, *peers: PeerDump, port: int = 51971) -> DeviceDump:
    return DeviceDump(K[key], port, 0xE00, {p.public_key: p for p in peers})


def view(**kw: Any) -> RotationView:
    base: dict[str, Any] = {"now": T0, "node": "a", "current": K["a"], "main": dev("a", peer("b", T0 - 30))}
    base.update(kw)
    return RotationView(**base)


B = ann("b", "b")
B_ROT = ann("b", "b", "b2")
B_DONE = ann("b", "b2")


# --- plan_rotation, phase by phase ---------------------------------------------------------


def test_idle() -> None:
    plan = plan_rotation(view(peers={"b": B}), CFG)
    assert (plan.phase, plan.current, plan.next, plan.transition_key) == ("idle", K["a"], None, None)
    assert plan.routes == {"b": "main"}
    assert plan.main_peers["b"].public_key == K["b"] and plan.main_peers["b"].endpoint == "10.9.0.2:51971"
    assert plan.main_peers["b"].keepalive == 0 and not plan.committed


def test_begin_announces_next_and_creates_the_transition_device() -> None:
    plan = plan_rotation(view(peers={"b": B}, staged=K["a2"]), CFG)
    assert (plan.phase, plan.current, plan.next, plan.next_since) == ("preparing", K["a"], K["a2"], T0)
    assert plan.transition_key == K["a2"]
    tb = plan.transition_peers["b"]
    assert (tb.public_key, tb.endpoint, tb.keepalive) == (K["b"], "10.9.0.2:51972", 1)
    assert tb.allowed_ips == B.allowed_ips
    assert plan.routes == {"b": "main"}, "no transition device yet, so no handshake: stay"


def test_no_begin_while_a_transition_device_exists() -> None:
    plan = plan_rotation(view(peers={"b": B}, staged=K["a2"], transition=dev("a", port=51972)), CFG)
    assert plan.next is None and any("waiting" in n for n in plan.notes)


@pytest.mark.parametrize(
    ("handshake", "switched"),
    [(0, False), (T0 - 200, False), (T0 - 1, True)],
    ids=["no-handshake", "handshake-too-old", "live-handshake"],
)
def test_switch_to_transition_only_with_a_live_handshake(handshake: float, switched: bool) -> None:
    v = view(peers={"b": B}, next=K["a2"], next_since=T0 - 1, transition=dev("a2", peer("b", handshake), port=51972))
    plan = plan_rotation(v, CFG)
    assert plan.routes["b"] == ("transition" if switched else "main")
    assert plan.phase == ("transition" if switched else "preparing") and not plan.committed


def _on_transition(**kw: Any) -> RotationView:
    base: dict[str, Any] = {
        "peers": {"b": B},
        "next": K["a2"],
        "next_since": T0 - 10,
        "transition": dev("a2", peer("b", T0 - 1), port=51972),
        "routes": {"b": "transition"},
        "route_since": {"b": T0 - 0.5},
    }
    base.update(kw)
    return view(**base)


def test_commit_waits_for_the_hold_then_changes_the_main_key() -> None:
    assert not plan_rotation(_on_transition(), CFG).committed
    plan = plan_rotation(_on_transition(now=T0 + 3), CFG)
    assert plan.committed and plan.phase == "committing"
    assert (plan.current, plan.next, plan.main_fresh_since) == (K["a2"], None, int(T0 + 3))
    assert plan.routes == {"b": "transition"}, "back to main only after a fresh main handshake"
    assert plan.transition_key == K["a2"] and plan.transition_peers["b"].public_key == K["b"]
    assert plan.main_peers["b"].keepalive == 1, "main device probed while the peer is away"


def test_commit_waits_for_a_second_without_main_handshakes() -> None:
    now = T0 + 3
    plan = plan_rotation(_on_transition(now=now, main=dev("a", peer("b", int(now)))), CFG)
    assert not plan.committed and any("second" in n for n in plan.notes)


def test_commit_after_prepare_timeout_even_without_handshake() -> None:
    v = view(peers={"b": B}, next=K["a2"], next_since=T0 - 61, transition=dev("a2", peer("b"), port=51972))
    plan = plan_rotation(v, CFG)
    assert plan.committed and plan.current == K["a2"] and any("timeout" in n for n in plan.notes)


def test_commit_without_peers_needs_no_transition_device() -> None:
    plan = plan_rotation(view(main=dev("a"), staged=K["a2"]), CFG)
    assert plan.next == K["a2"] and plan.transition_key is None
    plan = plan_rotation(view(main=dev("a"), next=K["a2"], next_since=T0), CFG)
    assert plan.committed and plan.current == K["a2"]


def test_peer_rotating_uses_its_next_key_on_the_transition_device() -> None:
    plan = plan_rotation(view(peers={"b": B_ROT}), CFG)
    assert plan.phase == "preparing" and plan.transition_key == K["a"]
    assert plan.transition_peers["b"].public_key == K["b2"] and plan.main_peers["b"].public_key == K["b"]


def _converging(main_peer: PeerDump, **kw: Any) -> RotationView:
    base: dict[str, Any] = {
        "peers": {"b": B_DONE},
        "main": dev("a", main_peer),
        "transition": dev("a", peer("b2", T0 - 1, rx=500), port=51972),
        "routes": {"b": "transition"},
        "route_since": {"b": T0 - 5},
        "transition_since": T0 - 6,
        "transition_rx_since": T0,
    }
    base.update(kw)
    return view(**base)


def test_converging_replaces_the_main_peer_and_waits_for_its_handshake() -> None:
    plan = plan_rotation(_converging(peer("b", T0 - 30)), CFG)  # the old key still on main
    assert plan.main_peers["b"].public_key == K["b2"] and plan.main_peers["b"].keepalive == 1
    assert plan.routes == {"b": "transition"} and plan.phase == "converging"
    assert plan.transition_peers["b"].public_key == K["b2"] and plan.transition_peers["b"].keepalive == 1
    plan = plan_rotation(_converging(peer("b2", T0 - 0.2)), CFG)
    assert plan.routes == {"b": "main"} and plan.main_peers["b"].keepalive == 0
    assert plan.transition_key is not None, "the device stays while its last peer leaves"
    assert plan.transition_peers["b"].keepalive == 0


def test_stale_main_handshake_after_own_commit_is_not_enough() -> None:
    v = _converging(peer("b2", T0 - 20), peers={"b": B_DONE}, main_fresh_since=int(T0 - 2))
    assert plan_rotation(v, CFG).routes == {"b": "transition"}
    v = _converging(peer("b2", int(T0 - 2)), peers={"b": B_DONE}, main_fresh_since=int(T0 - 2))
    assert plan_rotation(v, CFG).routes == {"b": "main"}


def test_draining_keeps_the_device_until_its_counters_are_quiet() -> None:
    quiet = CFG.timings.drain_quiet
    base = {"main": dev("a", peer("b2", T0 - 3)), "routes": {"b": "main"}, "route_since": {"b": T0 - 1}}
    plan = plan_rotation(_converging(peer("b2"), **base, transition_rx_since=T0 - 0.1), CFG)
    assert plan.phase == "draining" and plan.transition_key == K["a"] and plan.transition_peers["b"].keepalive == 0
    later = {**base, "now": T0 + quiet, "transition_rx_since": T0 - 0.1}
    assert plan_rotation(_converging(peer("b2"), **later), CFG).transition_key is None
    noisy = {**base, "now": T0 + 28, "transition_rx_since": T0 + 27.5}
    assert plan_rotation(_converging(peer("b2"), **noisy), CFG).transition_key is not None
    timeout = {**base, "now": T0 + 29.5, "transition_rx_since": T0 + 29.4}
    assert plan_rotation(_converging(peer("b2"), **timeout), CFG).transition_key is None


def test_never_removes_the_transition_device_while_a_peer_uses_it() -> None:
    late = _converging(peer("b", T0 - 30), now=T0 + 100, transition_rx_since=T0)
    plan = plan_rotation(late, CFG)
    assert plan.routes == {"b": "transition"} and plan.transition_key is not None


def test_forced_back_to_main_when_the_transition_session_died() -> None:
    dead = _converging(peer("b", T0 - 30), transition=dev("a", peer("b2", T0 - 200), port=51972))
    plan = plan_rotation(dead, CFG)
    assert plan.routes == {"b": "main"} and any("anyway" in n for n in plan.notes)
    assert plan.transition_key is not None  # removed at a later step, never in the same one


def test_in_use_transition_peer_and_key_are_never_replaced() -> None:
    # The view says b now rotates to b2, but a routes b through a transition peer under b's key.
    v = view(
        peers={"b": B_ROT},
        transition=dev("a", peer("b", T0 - 1), port=51972),
        routes={"b": "transition"},
        route_since={"b": T0 - 1},
    )
    plan = plan_rotation(v, CFG)
    assert plan.transition_peers["b"].public_key == K["b"] and plan.routes == {"b": "transition"}
    # Own key: a transition device under another key in use is kept as is.
    v2 = replace(v, peers={"b": B}, next=K["a2"], next_since=T0)
    assert plan_rotation(v2, CFG).transition_key == K["a"]


def test_two_simultaneous_rotations_stay_on_transition_until_both_committed() -> None:
    v = view(
        peers={"b": B_ROT},
        next=K["a2"],
        next_since=T0 - 10,
        transition=dev("a2", peer("b2", T0 - 1), port=51972),
        routes={"b": "transition"},
        route_since={"b": T0 - 5},
    )
    plan = plan_rotation(v, CFG)
    assert plan.committed and plan.transition_key == K["a2"] and plan.transition_peers["b"].public_key == K["b2"]
    after = replace(v, now=T0 + 1, current=K["a2"], next=None, next_since=None, main_fresh_since=int(T0))
    after = replace(after, main=dev("a2", peer("b", T0 + 0.5)))
    plan = plan_rotation(after, CFG)
    assert plan.routes == {"b": "transition"} and plan.phase == "transition", "b still rotates"
    done = replace(after, now=T0 + 5, peers={"b": B_DONE}, main=dev("a2", peer("b2", T0 + 4)))
    plan = plan_rotation(done, CFG)
    assert plan.routes == {"b": "main"} and plan.main_peers["b"].public_key == K["b2"]


def test_invalid_announcements_are_ignored() -> None:
    bad = Announcement("c", "not-a-key", None, "10.9.0.3", frozenset())
    plan = plan_rotation(view(peers={"b": B, "c": bad, "a": ann("a", "a")}), CFG)
    assert set(plan.main_peers) == {"b"} and any("c:" in n for n in plan.notes)


# --- a model of WireGuard, driven by real RotationNodes -------------------------------------

_ids = itertools.count(1)


@dataclass
class Session:
    id: int
    local_key: str  # the device's key when it was made (the key the far end knows us by)


@dataclass
class FakePeer:
    endpoint: str
    allowed_ips: frozenset[str]
    keepalive: int
    handshake: int = 0
    rx: int = 0
    session: Session | None = None
    can_send: bool = False


@dataclass
class FakeNet:
    now: float = T0
    devices: dict[str, FakeDevice] = field(default_factory=dict)  # "ip:port" -> device


class FakeDevice:
    """A device of :class:`FakeNet`: a key change stops sending on its sessions (receiving goes
    on), a replaced or removed peer loses its session, as in wireguard-go."""

    def __init__(self, net: FakeNet, ip: str) -> None:
        self.net, self.ip = net, ip
        self.key: str | None = None
        self.port = 0
        self.peers: dict[str, FakePeer] = {}

    def mode(self) -> str | None:
        return "userspace" if self.key is not None else None

    def dump(self) -> DeviceDump:
        assert self.key is not None
        peers = {
            k: PeerDump(k, p.endpoint, p.allowed_ips, p.handshake, p.rx, 0, p.keepalive) for k, p in self.peers.items()
        }
        return DeviceDump(self.key, self.port, 0xE00, peers)

    def ensure(self, key: keys.WireGuardKey, *, listen_port: int, fwmark: int, mtu: int | None) -> str:
        if self.key is not None and self.key != key.public_key:
            for p in self.peers.values():
                p.can_send = False
        self.key, self.port = key.public_key, listen_port
        self.net.devices[f"{self.ip}:{listen_port}"] = self
        return "userspace"

    def set_peers(self, changes: list[PeerChange]) -> None:
        for ch in sorted(changes, key=lambda c: c.remove):
            if ch.remove:
                self.peers.pop(ch.public_key, None)
                continue
            p = self.peers.setdefault(ch.public_key, FakePeer(ch.endpoint, frozenset(), 0))
            if ch.endpoint:
                p.endpoint = ch.endpoint
            if ch.keepalive is not None:
                p.keepalive = ch.keepalive
            if ch.allowed_ips is not None:
                for other in self.peers.values():
                    other.allowed_ips -= ch.allowed_ips
                p.allowed_ips = ch.allowed_ips

    def delete(self) -> None:
        self.net.devices.pop(f"{self.ip}:{self.port}", None)
        self.key, self.peers = None, {}

    def owner(self, ip: str) -> FakePeer | None:
        return next((p for p in self.peers.values() if f"{ip}/32" in p.allowed_ips), None)

    def far(self, p: FakePeer) -> FakeDevice | None:
        return self.net.devices.get(p.endpoint)


class DictSteering:
    def __init__(self) -> None:
        self.routes: dict[str, Device] = {}

    def read(self) -> dict[str, Device]:
        return dict(self.routes)

    def set(self, node: str, device: Device) -> None:
        self.routes[node] = device


@dataclass
class SimNode:
    name: str
    test_ip: str
    driver: RotationNode
    devices: dict[Device, FakeDevice]
    steering: DictSteering


class Sim:
    """Three nodes; each steps with the others' announcements every ``periods[i]``-th tick (so
    they do not move in lockstep), then every node sends one packet to every other one through its
    steered device, and keepalives and handshakes happen."""

    def __init__(
        self,
        names: Iterable[str] = ("a", "b", "c"),
        timings: RotationTimings | None = None,
        periods: Iterable[int] = (1, 2, 3),
    ) -> None:
        self.net = FakeNet()
        self.ticks = 0
        self.periods = dict(zip(names, periods, strict=True))
        self.cfg = replace(CFG, timings=timings or RotationTimings())
        self.nodes: dict[str, SimNode] = {}
        self.down: set[str] = set()
        self._stale: dict[str, Announcement] = {}
        self.lost: list[tuple[float, str, str, str]] = []
        self.switches: list[tuple[str, str, Device, bool]] = []
        for i, name in enumerate(names, start=1):
            ip = f"10.9.0.{i}"
            devs: dict[Device, FakeDevice] = {"main": FakeDevice(self.net, ip), "transition": FakeDevice(self.net, ip)}
            steering = DictSteering()
            driver = RotationNode(
                name,
                keys.generate(),
                main=devs["main"],
                transition=devs["transition"],
                steering=steering,
                node_ip=ip,
                allowed_ips=[f"10.251.0.{i}/32"],
                config=self.cfg,
                clock=lambda: self.net.now,
            )
            driver.start()
            self.nodes[name] = SimNode(name, f"10.251.0.{i}", driver, devs, steering)
        for _ in range(8):  # the first packets wait for the first handshakes
            self.tick()
        assert all(when < T0 + 1 for when, *_ in self.lost), self.lost
        self.lost.clear()

    def announcements(self) -> list[Announcement]:
        return [self._stale.get(n.name) or n.driver.announcement() for n in self.nodes.values()]

    def stop(self, name: str) -> None:
        """Node ``name`` goes down: its devices vanish, its last announcement stays."""
        node = self.nodes[name]
        self._stale[name] = node.driver.announcement()
        self.down.add(name)
        for d in node.devices.values():
            d.delete()

    def tick(self, dt: float = 0.25) -> None:
        for n in self.nodes.values():
            if n.name in self.down or self.ticks % self.periods[n.name]:
                continue
            before = dict(n.steering.routes)
            n.driver.step(self.announcements())
            for peer, dev_ in n.steering.routes.items():
                if peer in before and before[peer] != dev_:
                    self.switches.append((n.name, peer, dev_, self._has_session(n, peer, dev_)))
        for src, dst in itertools.permutations(self.nodes.values(), 2):
            if src.name not in self.down and dst.name not in self.down:
                self._deliver(src, dst)
        self._handshakes_and_keepalives()
        self.net.now += dt
        self.ticks += 1

    def _has_session(self, n: SimNode, peer: str, device: Device) -> bool:
        p = n.devices[device].owner(self.nodes[peer].test_ip)
        return p is not None and p.session is not None and p.can_send

    def _deliver(self, src: SimNode, dst: SimNode) -> None:
        device = src.steering.routes.get(dst.name, "main")
        d = src.devices[device]
        p = d.owner(dst.test_ip)
        ok = False
        if p is not None and p.session is not None and p.can_send:
            far = d.far(p)
            q = far.peers.get(p.session.local_key) if far else None
            ok = q is not None and q.session is not None and q.session.id == p.session.id
            ok = ok and f"{src.test_ip}/32" in q.allowed_ips  # type: ignore[union-attr]
            if ok:
                q.rx += 100  # type: ignore[union-attr]
        if not ok:
            self.lost.append((self.net.now, src.name, dst.name, device))
            if p is not None:
                self._handshake(d, p)  # the data packet triggers a handshake, as in WireGuard

    def _handshakes_and_keepalives(self) -> None:
        for d in list(self.net.devices.values()):
            for p in d.peers.values():
                if p.keepalive <= 0:
                    continue
                if p.session is None or not p.can_send:
                    self._handshake(d, p)
                far = d.far(p)
                if p.session is not None and p.can_send and far is not None:
                    q = far.peers.get(p.session.local_key)
                    if q is not None and q.session is not None and q.session.id == p.session.id:
                        q.rx += 32

    def _handshake(self, d: FakeDevice, p: FakePeer) -> None:
        far = d.far(p)
        key = next(k for k, v in d.peers.items() if v is p)
        if far is None or far.key != key or d.key is None or d.key not in far.peers:
            return
        q = far.peers[d.key]
        stamp = int(self.net.now)
        p.session, q.session = Session(next(_ids), d.key), None
        q.session = Session(p.session.id, far.key)
        p.can_send = q.can_send = True
        p.handshake = q.handshake = stamp
        p.rx += 92
        q.rx += 148

    def run_until_idle(self, limit: float = 120.0) -> float:
        start = self.net.now
        while self.net.now - start < limit:
            self.tick()
            if not any(n.driver.busy for n in self.nodes.values() if n.name not in self.down):
                return self.net.now - start
        raise AssertionError(f"not idle after {limit}s: {[n.driver.phase for n in self.nodes.values()]}")


def _assert_clean(sim: Sim, old: Mapping[str, str]) -> None:
    assert sim.lost == [], sim.lost[:10]
    assert all(ok for *_, ok in sim.switches), [s for s in sim.switches if not s[3]]
    for n in sim.nodes.values():
        if n.name in sim.down:
            continue
        assert n.devices["transition"].key is None
        assert set(n.steering.routes.values()) == {"main"}
        main = n.devices["main"]
        assert main.key == n.driver.public_key
        assert set(main.peers) == {a.current for a in sim.announcements() if a.node != n.name}
    for name, key in old.items():
        assert sim.nodes[name].driver.public_key != key


def test_sim_single_rotation_loses_nothing() -> None:
    sim = Sim()
    assert sim.lost == []
    old = {"a": sim.nodes["a"].driver.public_key}
    sim.nodes["a"].driver.request_rotation()
    took = sim.run_until_idle()
    _assert_clean(sim, old)
    assert len(sim.switches) == 8 and took < 10, (sim.switches, took)  # 4 there, 4 back


def test_sim_all_rotate_at_once_and_one_node_joins_late() -> None:
    sim = Sim()
    old = {n: s.driver.public_key for n, s in sim.nodes.items()}
    for s in sim.nodes.values():
        s.driver.request_rotation()
    sim.run_until_idle()
    _assert_clean(sim, old)
    # b requests while a's rotation runs: it waits for its transition device to go, then rotates.
    old = {n: sim.nodes[n].driver.public_key for n in ("a", "b")}
    sim.nodes["a"].driver.request_rotation()
    for _ in range(3):
        sim.tick()
    sim.nodes["b"].driver.request_rotation()
    sim.run_until_idle()
    _assert_clean(sim, old)


def test_sim_dead_peer_bounds_the_rotation() -> None:
    sim = Sim(timings=RotationTimings(prepare_timeout=5.0))
    sim.stop("c")  # down, but its node record (announcement) is still there
    old = {"a": sim.nodes["a"].driver.public_key}
    sim.nodes["a"].driver.request_rotation()
    took = sim.run_until_idle(limit=60)
    _assert_clean(sim, old)  # nothing lost between a and b
    assert 5 <= took < 15, took


def test_plan_type_is_frozen() -> None:
    plan = plan_rotation(view(peers={"b": B}), CFG)
    assert isinstance(plan, RotationPlan)
    with pytest.raises(AttributeError):
        plan.current = "x"  # type: ignore[misc]
