"""The ``cilium_wg0`` device, driven through ``ip`` and ``wg`` in the current network namespace.

Kernel WireGuard (``ip link add NAME type wireguard``) is preferred; when the kernel answers that the
link type is not supported, the device is a TUN run by ``wireguard-go`` (``"userspace"``).

wireguard-go daemonizes by default: the process started here creates the TUN device and the control
socket ``/var/run/wireguard/NAME.sock``, re-executes itself with ``WG_PROCESS_FOREGROUND=1`` and
exits. The daemon runs with /dev/null as stdio (unless ``LOG_LEVEL`` is set, then it inherits
stdout/stderr: hence stderr goes to a file here, never a pipe whose EOF would never come) and stays
in the caller's session unless started in a new one: it is started with ``setsid`` so that a signal
to the agent's process group does not take it down. It lives until the TUN device is deleted
(``ip link del``), then removes its socket and exits. An agent restart therefore finds the device and
its peers untouched. (Where PID 1 does not reap orphans, the exited daemon lingers as a zombie.)

All commands run with a timeout; none ever carries the private key in argv (it goes through a pipe
read as ``/dev/fd/N``) and error messages never include ``wg show``'s stdout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from encryption.wireguard.dump import DeviceDump, parse_dump
from encryption.wireguard.errors import DeviceError
from encryption.wireguard.keys import WireGuardKey
from meshcore.log import get_logger

DEVICE_NAME = "cilium_wg0"
LISTEN_PORT = 51871
#: Cilium's ``WireguardOverhead``: 32-byte message minimum + 40 (IPv6 header) + 8 (UDP).
MTU_OVERHEAD = 80
#: Cilium 1.19's ``MagicMarkEncrypt`` (0x1E00 up to 1.18).
FWMARK = 0xE00
#: Where wireguard-go and ``wg`` keep the userspace control sockets (compiled into both).
RUNTIME_DIR = Path("/var/run/wireguard")
DEFAULT_TIMEOUT = 10.0
#: The kernel refuses a single argv string longer than this (MAX_ARG_STRLEN).
_MAX_ARG = 128 * 1024 - 1

Mode = Literal["kernel", "userspace"]


_IFNAMSIZ = 15  # the kernel's interface name limit, without the NUL


def transition_device_name(main: str) -> str:
    """The name of a key rotation's transition device beside ``main`` (see
    :mod:`encryption.wireguard.rotation`): ``main`` plus ``t``, or with its last character made
    ``t`` (``u`` when it already is) when ``main`` is as long as names go. It keeps ``main``'s
    prefix, so what finds a lab's devices by prefix finds this one too."""
    if not main:
        raise ValueError("the main device needs a name")
    if len(main) < _IFNAMSIZ:
        return main + "t"
    return main[: _IFNAMSIZ - 1] + ("u" if main[_IFNAMSIZ - 1] == "t" else "t")


def device_mtu(underlay_mtu: int) -> int:
    """The WireGuard device MTU for an underlay device of ``underlay_mtu`` (Cilium: minus 80)."""
    return underlay_mtu - MTU_OVERHEAD


@dataclass(frozen=True, slots=True)
class PeerChange:
    """One peer edit inside a ``wg set`` call.

    ``remove`` deletes the peer. Otherwise the peer is created or updated: ``endpoint`` ("" keeps
    the current one), ``keepalive`` (``None`` keeps it, 0 turns it off) and ``allowed_ips``
    (``None`` keeps them; a set *replaces* them, and every IP in it is taken away from whichever
    other peer had it).
    """

    public_key: str
    endpoint: str = ""
    allowed_ips: frozenset[str] | None = None
    keepalive: int | None = None
    remove: bool = False


def peer_set_args(changes: Iterable[PeerChange]) -> list[str]:
    """The ``wg set DEV ...`` arguments for ``changes`` (pure): edits in the given order, then removals,
    so that IPs move to their new peers before an old peer goes away."""
    edits: list[str] = []
    removals: list[str] = []
    for ch in changes:
        if ch.remove:
            removals += ["peer", ch.public_key, "remove"]
            continue
        edits += ["peer", ch.public_key]
        if ch.endpoint:
            edits += ["endpoint", ch.endpoint]
        if ch.keepalive is not None:
            edits += ["persistent-keepalive", str(ch.keepalive) if ch.keepalive else "off"]
        if ch.allowed_ips is not None:
            edits += ["allowed-ips", ",".join(sorted(ch.allowed_ips))]
    return edits + removals


@dataclass(frozen=True, slots=True)
class _Link:
    kind: str  # "wireguard", "tun", ...
    mtu: int
    up: bool
    ifindex: int = 0


class WireGuardDevice:
    """A WireGuard device named ``name`` in the current network namespace.

    ``runtime_dir`` is where userspace control sockets live (default ``/var/run/wireguard``; only
    read, to check for leftovers). ``exec_prefix`` is prepended to every command, e.g.
    ``("ip", "netns", "exec", "ns1")`` to drive a device of another namespace (tests, lab).
    """

    def __init__(
        self,
        name: str,
        *,
        runtime_dir: Path | None = None,
        exec_prefix: Sequence[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if not name or len(name) > 15 or "/" in name or name.strip() != name:
            raise ValueError(f"invalid interface name {name!r}: 1-15 characters, no '/' or spaces")
        self.name = name
        self.runtime_dir = runtime_dir or RUNTIME_DIR
        self._prefix = list(exec_prefix)
        self._timeout = timeout
        self._log = get_logger(__name__, device=name)

    @property
    def socket_path(self) -> Path:
        """The wireguard-go control socket of this device."""
        return self.runtime_dir / f"{self.name}.sock"

    # --- state ------------------------------------------------------------------------------

    def mode(self) -> Mode | None:
        """``"kernel"`` or ``"userspace"`` for an existing device, ``None`` if there is none."""
        link = self._link()
        return None if link is None else _mode_of(link, self.name)

    def ifindex(self) -> int:
        """The device's interface index (0 when there is no such device)."""
        link = self._link()
        return 0 if link is None else link.ifindex

    def dump(self) -> DeviceDump:
        """The device's public configuration and peers (``wg show NAME dump``)."""
        return parse_dump(self._run(["wg", "show", self.name, "dump"], what="read the device").stdout)

    def userspace_pid(self) -> int | None:
        """The PID of the live wireguard-go process serving this device, if any."""
        pids = _wireguard_go_pids(self.name)
        return pids[0] if pids else None

    # --- configuration ----------------------------------------------------------------------

    def ensure(
        self,
        key: WireGuardKey,
        *,
        listen_port: int = LISTEN_PORT,
        fwmark: int = FWMARK,
        mtu: int | None = None,
    ) -> Mode:
        """Create the device unless it exists, and configure key, port, fwmark, MTU (``None``: leave),
        ``rp_filter=0`` and link up. Returns the mode in use.

        Idempotent: an existing device (agent restart) is reused with its peers, and only settings
        that differ are written; the private key is set only if the device's public key differs.
        """
        link = self._link()
        if link is not None and link.kind == "tun" and not self._userspace_alive():
            self._log.warning("removing a TUN device without a live wireguard-go", kind=link.kind)
            self._run(["ip", "link", "del", "dev", self.name], what="remove a stale TUN device")
            link = None
        if link is None:
            chosen = self._create()
            link = self._link()
            if link is None:
                raise DeviceError(f"device {self.name} vanished right after it was created")
            self._log.info("device created", mode=chosen)
        mode = _mode_of(link, self.name)
        self._configure(key, listen_port=listen_port, fwmark=fwmark)
        if mtu is not None and link.mtu != mtu:
            self._run(["ip", "link", "set", "dev", self.name, "mtu", str(mtu)], what="set the MTU")
        self._run(["sysctl", "-q", "-w", f"net/ipv4/conf/{self.name}/rp_filter=0"], what="disable rp_filter")
        if not link.up:
            self._run(["ip", "link", "set", "dev", self.name, "up"], what="bring the device up")
        return mode

    def set_peers(self, changes: list[PeerChange]) -> None:
        """Apply all ``changes`` in one ``wg set`` call (see :func:`peer_set_args`)."""
        if not changes:
            return
        args = peer_set_args(changes)
        long = next((a for a in args if len(a) > _MAX_ARG), None)
        if long is not None:
            raise DeviceError(
                f"{self.name}: an allowed-ips list of {long.count(',') + 1} entries exceeds the kernel's "
                f"{_MAX_ARG + 1}-byte argument limit; split the peer's allowed IPs into CIDRs"
            )
        self._run(["wg", "set", self.name, *args], what=f"update {len(changes)} peer(s)")

    def remove_peers(self, keys: Iterable[str]) -> None:
        """Remove the peers with these public keys (one ``wg set`` call; absent keys are no-ops)."""
        self.set_peers([PeerChange(k, remove=True) for k in keys])

    def delete(self, *, within: float = 3.0) -> None:
        """Delete the device (``ip link del``); for wireguard-go also make sure its process ended
        (SIGTERM, then SIGKILL, each bounded by ``within`` seconds) and no socket is left."""
        pids = _wireguard_go_pids(self.name)
        if self._link() is not None:
            self._run(["ip", "link", "del", "dev", self.name], what="delete the device")
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                for pid in pids:
                    _signal(pid, sig)
            pids = _wait_gone(pids, within)
            if not pids:
                break
        if pids:
            raise DeviceError(f"wireguard-go for {self.name} (pid {pids}) did not exit after SIGKILL")
        if self.socket_path.exists() and not _wireguard_go_pids(self.name):
            self.socket_path.unlink(missing_ok=True)  # left by a killed daemon

    # --- internals --------------------------------------------------------------------------

    def _create(self) -> Mode:
        argv = [*self._prefix, "ip", "link", "add", self.name, "type", "wireguard"]
        proc = self._raw(argv)
        if proc.returncode == 0:
            return "kernel"
        if not _unsupported(proc.stderr):
            raise DeviceError(f"cannot create WireGuard device {self.name}", argv=argv, stderr=proc.stderr)
        self._log.info("kernel WireGuard not supported, using wireguard-go", error=proc.stderr.strip())
        self._start_wireguard_go()
        return "userspace"

    def _start_wireguard_go(self) -> None:
        if self.socket_path.exists() and _wireguard_go_pids(self.name):
            raise DeviceError(
                f"a wireguard-go for {self.name} already runs (socket {self.socket_path}), probably in another "
                "network namespace: WireGuard interface names must be unique on this machine"
            )
        argv = [*self._prefix, "wireguard-go", self.name]
        env = {k: v for k, v in os.environ.items() if k != "WG_PROCESS_FOREGROUND"}
        with tempfile.TemporaryFile(mode="w+") as err:
            try:
                proc = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    env=env,
                    start_new_session=True,
                    timeout=self._timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise DeviceError(f"wireguard-go {self.name} did not start within {self._timeout}s", argv=argv) from exc
            err.seek(0)
            stderr = err.read()
        if proc.returncode != 0:
            raise DeviceError(f"wireguard-go {self.name} failed (exit {proc.returncode})", argv=argv, stderr=stderr)

    def _configure(self, key: WireGuardKey, *, listen_port: int, fwmark: int) -> None:
        current = self.dump()
        args: list[str] = []
        if current.listen_port != listen_port:
            args += ["listen-port", str(listen_port)]
        if current.fwmark != fwmark:
            args += ["fwmark", f"0x{fwmark:x}" if fwmark else "off"]
        set_key = current.public_key != key.public_key
        if not args and not set_key:
            return
        if not set_key:
            self._run(["wg", "set", self.name, *args], what="configure the device")
            return
        read_fd, write_fd = os.pipe()
        try:
            os.write(write_fd, (key.private_b64() + "\n").encode())  # 45 bytes: fits the pipe buffer
            os.close(write_fd)
            write_fd = -1
            self._run(
                ["wg", "set", self.name, "private-key", f"/dev/fd/{read_fd}", *args],
                what="configure the device",
                pass_fds=(read_fd,),
            )
        finally:
            os.close(read_fd)
            if write_fd >= 0:
                os.close(write_fd)
        self._log.info("private key set", public_key=key.public_key)

    def _userspace_alive(self) -> bool:
        return self.socket_path.exists() and self._raw([*self._prefix, "wg", "show", self.name, "dump"]).returncode == 0

    def _link(self) -> _Link | None:
        argv = [*self._prefix, "ip", "-d", "-j", "link", "show", "dev", self.name]
        proc = self._raw(argv)
        if proc.returncode != 0:
            if "does not exist" in proc.stderr:
                return None
            raise DeviceError(f"cannot read device {self.name}", argv=argv, stderr=proc.stderr)
        try:
            info: Any = json.loads(proc.stdout)[0]
            return _Link(
                kind=str(info.get("linkinfo", {}).get("info_kind", "")),
                mtu=int(info["mtu"]),
                up="UP" in info.get("flags", []),
                ifindex=int(info.get("ifindex", 0)),
            )
        except (ValueError, LookupError, TypeError) as exc:
            raise DeviceError(f"cannot parse 'ip -j link show' output for {self.name}: {exc}", argv=argv) from exc

    def _run(self, argv: list[str], *, what: str, pass_fds: Sequence[int] = ()) -> subprocess.CompletedProcess[str]:
        full = [*self._prefix, *argv]
        proc = self._raw(full, pass_fds=pass_fds)
        if proc.returncode != 0:
            raise DeviceError(
                f"{self.name}: cannot {what}: {' '.join(full)} exited with {proc.returncode}",
                argv=full,
                stderr=proc.stderr,
            )
        return proc

    def _raw(self, argv: list[str], *, pass_fds: Sequence[int] = ()) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self._timeout,
                pass_fds=tuple(pass_fds),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise DeviceError(f"{' '.join(argv)} timed out after {self._timeout}s", argv=argv) from exc
        except FileNotFoundError as exc:
            raise DeviceError(f"{argv[0]} is not installed (needed for WireGuard)", argv=argv) from exc


def _unsupported(stderr: str) -> bool:
    """Whether ``ip link add ... type wireguard`` failed for lack of kernel support."""
    text = stderr.lower()
    return "not supported" in text or "unknown device type" in text


def _mode_of(link: _Link, name: str) -> Mode:
    if link.kind == "wireguard":
        return "kernel"
    if link.kind == "tun":
        return "userspace"
    raise DeviceError(f"device {name} exists but is a {link.kind or 'plain'} link, not WireGuard; delete it")


def _wireguard_go_pids(name: str) -> list[int]:
    """Live (not zombie) processes running ``wireguard-go NAME`` on this machine. Names are unique
    machine-wide (the control socket path is global), so the name identifies the device."""
    found: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().rstrip(b"\0").split(b"\0")
            if len(argv) < 2 or os.path.basename(argv[0]) != b"wireguard-go" or argv[-1] != name.encode():
                continue
            if _is_zombie(int(entry.name)):
                continue
        except OSError:
            continue
        found.append(int(entry.name))
    return sorted(found)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 :][:1] in (b"Z", b"X")


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pids: list[int], within: float) -> list[int]:
    deadline = time.monotonic() + within
    alive = [p for p in pids if not _is_zombie(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if not _is_zombie(p)]
    return alive
