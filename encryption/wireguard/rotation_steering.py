"""Steering for key rotation: which device (main or transition) traffic to each peer node enters.

:class:`RouteSteering` keeps one route per prefix of a peer node, ``<prefix> dev <device> src
<src>`` (in ``table`` if given, as the agent's policy table 201; else the main table), changed in
place with ``ip route replace`` so that there is never a moment without a route. The agent can
implement :class:`~encryption.wireguard.rotation_node.Steering` over its own steering routes instead.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterable, Mapping, Sequence

from encryption.wireguard.errors import DeviceError
from encryption.wireguard.rotation import Device

DEFAULT_TIMEOUT = 10.0


class RouteSteering:
    """Routes ``<prefix> dev <device>`` for the prefixes of each peer node.

    ``devices`` names the interface of ``"main"`` and ``"transition"``; ``prefixes`` maps each peer
    node to the destinations steered (e.g. its node IP in tunnel mode, or a test address);
    ``exec_prefix`` runs the ``ip`` commands elsewhere (``("ip", "netns", "exec", NS)``).
    """

    def __init__(
        self,
        devices: Mapping[Device, str],
        src: str,
        prefixes: Mapping[str, Iterable[str]] | None = None,
        *,
        table: int | None = None,
        exec_prefix: Sequence[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._devices = dict(devices)
        self._src = src
        self._table = ["table", str(table)] if table is not None else []
        self._prefix = list(exec_prefix)
        self._timeout = timeout
        self._prefixes: dict[str, tuple[str, ...]] = {}
        for node, cidrs in (prefixes or {}).items():
            self.set_prefixes(node, cidrs)

    def set_prefixes(self, node: str, prefixes: Iterable[str]) -> None:
        """Steer these destinations for ``node`` from the next :meth:`set` on."""
        self._prefixes[node] = tuple(sorted(str(ipaddress.ip_network(p, strict=False)) for p in prefixes))

    def read(self) -> dict[str, Device]:
        """The device each node's prefixes are routed through now (nodes whose routes are missing or
        split between devices are left out)."""
        by_dev = {name: dev for dev, name in self._devices.items()}
        out = self._run(["ip", "-j", "route", "show", *self._table]).stdout
        routes: dict[str, Device] = {}
        for entry in json.loads(out or "[]"):
            dst, dev = entry.get("dst", ""), entry.get("dev", "")
            if dev in by_dev and dst and dst != "default":
                routes[str(ipaddress.ip_network(dst, strict=False))] = by_dev[dev]
        found: dict[str, Device] = {}
        for node, prefixes in self._prefixes.items():
            devs = {routes.get(p) for p in prefixes}
            if len(devs) == 1 and None not in devs:
                found[node] = devs.pop()  # type: ignore[assignment]
        return found

    def set(self, node: str, device: Device) -> None:
        """Route ``node``'s prefixes through ``device`` (atomic replace, one command per prefix)."""
        ifname = self._devices[device]
        for prefix in self._prefixes.get(node, ()):
            self._run(["ip", "route", "replace", prefix, "dev", ifname, "src", self._src, *self._table])

    def remove(self, node: str) -> None:
        """Delete ``node``'s routes (missing ones are ignored)."""
        for prefix in self._prefixes.pop(node, ()):
            self._run(["ip", "route", "del", prefix, *self._table], check=False)

    def _run(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        full = [*self._prefix, *argv]
        try:
            proc = subprocess.run(full, capture_output=True, text=True, timeout=self._timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise DeviceError(f"{' '.join(full)} timed out after {self._timeout}s", argv=full) from exc
        if check and proc.returncode != 0:
            raise DeviceError(
                f"cannot steer: {' '.join(full)} exited with {proc.returncode}", argv=full, stderr=proc.stderr
            )
        return proc
