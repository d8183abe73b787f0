"""`lab down` and WireGuard: the lab's real wireguard-go processes (found by the lab's environment
marker, as the agent's children carry it) are stopped and their control sockets removed, including
the socket a SIGKILLed one left behind; other labs' and tests' wireguard-go and sockets stay."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.net import nsutil
from lab.supervisor import cleanup
from lab.supervisor.spec import ENV_MARKER, wireguard_device_template

RUN_DIR = cleanup.WIREGUARD_RUN_DIR

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="needs wireguard-go"),
]


def device_of(lab_name: str) -> str:
    """A device name of lab ``lab_name``'s pattern (as the agent expands the lab's template)."""
    return wireguard_device_template(lab_name).replace("{hash}", secrets.token_hex(4))


def pid_of(device: str) -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and cleanup.wireguard_go_device(int(entry.name)) == device:
            return int(entry.name)
    return None


class WireGuards:
    """wireguard-go processes started by a test in its own namespaces, all stopped at the end."""

    def __init__(self) -> None:
        self.devices: list[str] = []
        self.netns: list[str] = []

    def start(self, netns: str, device: str, marker: str | None) -> int:
        if netns not in nsutil.list_namespaces():
            nsutil.create_namespace(netns)
            self.netns.append(netns)
        env = {k: v for k, v in os.environ.items() if k != ENV_MARKER}
        if marker:
            env[ENV_MARKER] = marker
        self.devices.append(device)
        subprocess.run(["ip", "netns", "exec", netns, "wireguard-go", device], env=env, start_new_session=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            pid = pid_of(device)
            if pid is not None and (RUN_DIR / f"{device}.sock").is_socket():
                return pid
            time.sleep(0.02)
        raise AssertionError(f"wireguard-go {device} did not come up")

    def close(self) -> None:
        for device in self.devices:
            pid = pid_of(device)
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(pid_of(d) for d in self.devices):
            time.sleep(0.02)
        for device in self.devices:
            (RUN_DIR / f"{device}.sock").unlink(missing_ok=True)
        for ns in self.netns:
            nsutil.remove_namespace(ns)


@pytest.fixture
def wg() -> Iterator[WireGuards]:
    fleet = WireGuards()
    try:
        yield fleet
    finally:
        fleet.close()


def test_sweep_stops_the_labs_wireguard_go_and_removes_only_its_sockets(wg: WireGuards) -> None:
    name = "t" + secrets.token_hex(3)[:5]
    other = "t" + secrets.token_hex(3)[:5]
    node_ns = f"{name}-c1.n0"  # a lab node namespace: the sweep removes it
    test_ns = f"wgt-{secrets.token_hex(3)}"
    mine = device_of(name)
    mine_by_process = f"wgt{secrets.token_hex(4)}"  # not the lab's pattern: known by its process only
    killed = device_of(name)
    wg.start(node_ns, mine, name)
    wg.start(node_ns, mine_by_process, name)
    os.kill(wg.start(node_ns, killed, name), signal.SIGKILL)  # dies without removing its socket
    theirs = device_of(other)
    wg.start(test_ns, theirs, other)
    their_stale = device_of(other)
    os.kill(wg.start(test_ns, their_stale, None), signal.SIGKILL)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and (pid_of(killed) or pid_of(their_stale)):
        time.sleep(0.02)
    assert (RUN_DIR / f"{killed}.sock").is_socket() and (RUN_DIR / f"{their_stale}.sock").is_socket()

    t0 = time.monotonic()
    report = cleanup.sweep(name)
    assert time.monotonic() - t0 < 15

    assert pid_of(mine) is None and pid_of(mine_by_process) is None
    for device in (mine, mine_by_process, killed):
        assert not (RUN_DIR / f"{device}.sock").exists(), device
    assert str(RUN_DIR / f"{killed}.sock") in report.paths
    assert node_ns in report.namespaces
    # another lab's live device and a stale socket not of this lab are untouched
    assert pid_of(theirs) is not None and (RUN_DIR / f"{theirs}.sock").is_socket()
    assert (RUN_DIR / f"{their_stale}.sock").is_socket()


def test_socket_removal_spares_devices_a_live_wireguard_go_serves(wg: WireGuards, tmp_path: Path) -> None:
    name = "t" + secrets.token_hex(3)[:5]
    live = device_of(name)
    wg.start(f"wgt-{secrets.token_hex(3)}", live, None)
    report = cleanup.CleanupReport()
    cleanup.remove_wireguard_sockets({live}, report)
    assert (RUN_DIR / f"{live}.sock").is_socket() and report.paths == []
    assert cleanup.pattern_wireguard_devices(name) == {live}
    # the record an interrupted sweep leaves is read back by the next one
    (tmp_path / cleanup.WIREGUARD_RECORD).write_text('["wgtrecorded"]')
    assert cleanup.lab_wireguard_devices(tmp_path, [pid_of(live) or 0]) == {"wgtrecorded", live}
