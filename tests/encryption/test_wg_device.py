"""The WireGuard device on real devices: two network namespaces joined by a veth pair, one
``wgt<random>`` device in each (kernel WireGuard where the kernel has it, else wireguard-go)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from encryption.wireguard import keys
from encryption.wireguard.device import FWMARK, LISTEN_PORT, PeerChange, WireGuardDevice, _unsupported
from encryption.wireguard.errors import DeviceError
from encryption.wireguard.peers import PeerConfig, PeerSource, PeersTarget, desired_peers
from lab.net import nsutil
from meshcore.reconcile import Reconciler

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")


@dataclass
class Side:
    ns: str
    dev: WireGuardDevice
    key: keys.WireGuardKey
    node_ip: str
    wg_ip: str

    def sh(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return nsutil.run_in(self.ns, *argv, check=check)

    def source(self, *, key: str | None = None) -> PeerSource:
        """How the other side's node sources would describe this node (native routing)."""
        return PeerSource(f"c1/{self.ns}", key or self.key.public_key, (self.node_ip,), pod_ips=(self.wg_ip,))


@pytest.fixture
def pair() -> Iterator[tuple[Side, Side]]:
    suffix = secrets.token_hex(3)
    sides = [
        Side(
            ns=f"wgt-{suffix}-{x}",
            dev=WireGuardDevice(f"wgt{suffix}{x}", exec_prefix=("ip", "netns", "exec", f"wgt-{suffix}-{x}")),
            key=keys.generate(),
            node_ip=f"10.231.0.{i}",
            wg_ip=f"10.250.0.{i}",
        )
        for i, x in ((1, "a"), (2, "b"))
    ]
    a, b = sides
    try:
        for s in sides:
            nsutil.create_namespace(s.ns)
            s.sh("ip", "link", "set", "lo", "up")
        a.sh("ip", "link", "add", f"wgt{suffix}va", "type", "veth", "peer", "name", f"wgt{suffix}vb", "netns", b.ns)
        for s, veth in ((a, f"wgt{suffix}va"), (b, f"wgt{suffix}vb")):
            s.sh("ip", "addr", "add", f"{s.node_ip}/24", "dev", veth)
            s.sh("ip", "link", "set", veth, "up")
        yield a, b
    finally:
        for s in sides:
            with contextlib.suppress(Exception):
                s.dev.delete()
            nsutil.remove_namespace(s.ns)
            s.dev.socket_path.unlink(missing_ok=True)


def _ensure(s: Side) -> str:
    mode = s.dev.ensure(s.key, mtu=1420)
    s.sh("ip", "addr", "replace", f"{s.wg_ip}/24", "dev", s.dev.name)
    return mode


def _ping(src: Side, dst: Side) -> bool:
    for _ in range(3):
        if src.sh("ping", "-c", "1", "-W", "1", dst.wg_ip, check=False).returncode == 0:
            return True
    return False


def _peer_view(dev: WireGuardDevice) -> dict[str, tuple[str, frozenset[str], int]]:
    return {k: (p.endpoint, p.allowed_ips, p.persistent_keepalive) for k, p in dev.dump().peers.items()}


def test_unsupported_messages() -> None:
    assert _unsupported("Error: Unknown device type.\n")
    assert _unsupported("RTNETLINK answers: Operation not supported\n")
    assert not _unsupported("RTNETLINK answers: File exists\n")


def test_ensure_configures_and_is_idempotent(pair: tuple[Side, Side]) -> None:
    a, b = pair
    mode = _ensure(a)
    assert mode in ("kernel", "userspace")
    print(f"device mode chosen: {mode}")
    dump = a.dev.dump()
    assert (dump.public_key, dump.listen_port, dump.fwmark) == (a.key.public_key, LISTEN_PORT, FWMARK)
    assert a.sh("cat", f"/sys/class/net/{a.dev.name}/mtu").stdout.strip() == "1420"
    assert a.sh("sysctl", "-n", f"net.ipv4.conf.{a.dev.name}.rp_filter").stdout.strip() == "0"
    assert "UP" in a.sh("ip", "link", "show", a.dev.name).stdout
    a.dev.set_peers([PeerChange(b.key.public_key, f"{b.node_ip}:{LISTEN_PORT}", frozenset({"10.250.0.2/32"}), 25)])
    before, pid = _peer_view(a.dev), a.dev.userspace_pid()
    assert (pid is not None) == (mode == "userspace")

    # A restarted agent: a new object, the same key: nothing is recreated, peers stay.
    again = WireGuardDevice(a.dev.name, exec_prefix=("ip", "netns", "exec", a.ns))
    assert again.ensure(a.key, mtu=1420) == mode
    assert _peer_view(again) == before and again.userspace_pid() == pid
    # A new key is set in place (peers stay too).
    new_key = keys.generate()
    again.ensure(new_key, mtu=1420)
    assert again.dump().public_key == new_key.public_key and _peer_view(again) == before


def test_tunnel_between_namespaces(pair: tuple[Side, Side]) -> None:
    a, b = pair
    for s in pair:
        _ensure(s)
    for s, other in ((a, b), (b, a)):
        peers, problems = desired_peers(s.key.public_key, [s.source(), other.source()], routing_mode="native")
        assert problems == []
        target = PeersTarget(s.dev)
        assert target.items() == []
        target.update_many(list(peers.items()))
    assert a.dev.dump().peers[b.key.public_key].allowed_ips == {"10.231.0.2/32", "10.250.0.2/32"}
    assert _ping(a, b) and _ping(b, a)
    peer = a.dev.dump().peers[b.key.public_key]
    assert peer.latest_handshake > 0 and peer.rx_bytes > 0 and peer.tx_bytes > 0
    assert peer.endpoint == f"{b.node_ip}:{LISTEN_PORT}"


def test_move_allowed_ip_and_remove_in_one_call(pair: tuple[Side, Side]) -> None:
    a, b = pair
    _ensure(a)
    kb, kx = b.key.public_key, keys.generate().public_key
    a.dev.set_peers(
        [
            PeerChange(kb, f"{b.node_ip}:{LISTEN_PORT}", frozenset({"10.250.0.2/32", "10.250.0.9/32"})),
            PeerChange(kx, allowed_ips=frozenset()),
        ]
    )
    # Giving .9 to X takes it from B, without touching B's entry.
    a.dev.set_peers([PeerChange(kx, allowed_ips=frozenset({"10.250.0.9/32"}))])
    peers = a.dev.dump().peers
    assert peers[kb].allowed_ips == {"10.250.0.2/32"} and peers[kx].allowed_ips == {"10.250.0.9/32"}
    # Back to B and X removed, in one wg set.
    a.dev.set_peers(
        [PeerChange(kx, remove=True), PeerChange(kb, allowed_ips=frozenset({"10.250.0.2/32", "10.250.0.9/32"}))]
    )
    peers = a.dev.dump().peers
    assert list(peers) == [kb] and peers[kb].allowed_ips == {"10.250.0.2/32", "10.250.0.9/32"}
    a.dev.remove_peers([kb, kx])  # an absent key is a no-op
    assert a.dev.dump().peers == {}


async def test_key_change_through_reconciler(pair: tuple[Side, Side]) -> None:
    a, b = pair
    for s in pair:
        _ensure(s)
    b.dev.set_peers([PeerChange(a.key.public_key, f"{a.node_ip}:{LISTEN_PORT}", frozenset({"10.250.0.1/32"}))])
    rec: Reconciler[str, PeerConfig] = Reconciler("wg-peers", PeersTarget(a.dev))
    task = asyncio.create_task(rec.run())
    try:
        rec.set_desired(desired_peers(a.key.public_key, [b.source()], routing_mode="native")[0])
        await asyncio.wait_for(rec.wait_synced(), 5)
        assert await asyncio.to_thread(_ping, a, b)
        # B reboots with a new key: the node record changes, A replaces the peer.
        b.key = keys.generate()
        b.dev.ensure(b.key, mtu=1420)
        rec.set_desired(desired_peers(a.key.public_key, [b.source()], routing_mode="native")[0])
        await asyncio.wait_for(rec.wait_synced(), 5)
        assert list(a.dev.dump().peers) == [b.key.public_key]
        assert a.dev.dump().peers[b.key.public_key].allowed_ips == {"10.231.0.2/32", "10.250.0.2/32"}
        assert await asyncio.to_thread(_ping, a, b)
        assert rec.status().failures == 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_device_survives_agent_exit_then_delete_cleans_up(pair: tuple[Side, Side], tmp_path: Path) -> None:
    a, _ = pair
    key, _new = keys.load_or_generate(tmp_path)
    code = (
        "import sys; from pathlib import Path; from encryption.wireguard import keys, device;"
        "k, _ = keys.load_or_generate(Path(sys.argv[1]));"
        "print(device.WireGuardDevice(sys.argv[2]).ensure(k, mtu=1400))"
    )
    agent = nsutil.run_in(a.ns, sys.executable, "-c", code, str(tmp_path), a.dev.name, timeout=10)
    mode = agent.stdout.strip().splitlines()[-1]  # unconfigured structlog prints to stdout
    assert mode in ("kernel", "userspace"), agent.stderr
    assert a.dev.dump().public_key == key.public_key
    pid = a.dev.userspace_pid()
    if mode == "userspace":
        assert pid is not None and a.dev.socket_path.exists()
    assert a.dev.ensure(key, mtu=1400) == mode and a.dev.userspace_pid() == pid
    a.dev.delete()
    assert a.dev.mode() is None
    assert not a.dev.socket_path.exists()
    assert a.dev.userspace_pid() is None


def test_errors_carry_stderr_never_the_key(pair: tuple[Side, Side]) -> None:
    a, _ = pair
    _ensure(a)
    with pytest.raises(DeviceError) as info:
        a.dev.set_peers([PeerChange("not-a-key", allowed_ips=frozenset({"10.250.0.9/32"}))])
    assert "not-a-key" in str(info.value) and info.value.stderr
    assert a.key.private_b64() not in str(info.value)
    with pytest.raises(DeviceError, match="does not exist|No such device|Unable to access"):
        WireGuardDevice("wgtnone" + secrets.token_hex(3)).dump()
