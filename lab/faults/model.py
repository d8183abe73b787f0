"""What a fault is about, and the checks on it (pure: no I/O).

A network fault acts between two sets of nodes, *a* and *b*, identified on the underlay by their
underlay MACs (deterministic in the lab: ``02:10:<underlay ip bytes>``, see
:func:`lab.net.names.node_underlay_mac`). Every frame a node sends on the underlay carries its MAC
as the Ethernet source, whatever it carries inside (node-to-node traffic, VXLAN, or pod IPs routed
natively), so matching on MAC pairs catches all of it.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

FaultKind = Literal["partition", "loss"]

#: Fault names: 1-32 characters of ``[a-z0-9-]``, not starting or ending in ``-``.
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
#: First two bytes of the lab's node underlay MACs (the rest is the underlay IPv4 address).
_NODE_MAC_PREFIX = "02:10:"


class FaultError(RuntimeError):
    """A fault could not be put in place, read back or removed."""


class InvalidFault(FaultError, ValueError):
    """A fault was asked for with invalid arguments (name, percentage, node sets)."""


class UnknownFault(FaultError, LookupError):
    """No fault of that kind and name is in place."""


class _NodeLike(Protocol):
    @property
    def cluster(self) -> str: ...
    @property
    def ns(self) -> str: ...
    @property
    def underlay_ifname(self) -> str: ...
    @property
    def underlay_ip(self) -> ipaddress.IPv4Address: ...
    @property
    def underlay_mac(self) -> str: ...


@dataclass(frozen=True)
class NodeRef:
    """A node as the faults see it: its cluster, namespace and underlay device, address and MAC."""

    cluster: str
    ns: str
    underlay_ifname: str
    underlay_ip: ipaddress.IPv4Address
    underlay_mac: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "underlay_mac", normalize_mac(self.underlay_mac))
        object.__setattr__(self, "underlay_ip", ipaddress.IPv4Address(self.underlay_ip))

    @classmethod
    def of(cls, node: _NodeLike) -> NodeRef:
        """The reference of anything with the same attributes (e.g. a :class:`lab.net.Node`)."""
        return cls(node.cluster, node.ns, node.underlay_ifname, node.underlay_ip, node.underlay_mac)


@dataclass(frozen=True)
class FaultRecord:
    """A fault in place, as read back from the kernel.

    ``a`` and ``b``: the underlay MACs of both sides (sorted). ``percent``: the loss rate (loss
    only). ``dropped``: packets dropped so far, when the kernel counts them (partitions).
    """

    kind: FaultKind
    name: str
    a: tuple[str, ...]
    b: tuple[str, ...]
    percent: float | None = None
    dropped: int | None = None

    @property
    def a_ips(self) -> tuple[ipaddress.IPv4Address | None, ...]:
        """Side a's underlay IPs, decoded from the lab's MAC plan (None where a MAC is not the lab's)."""
        return tuple(underlay_ip_of_mac(m) for m in self.a)

    @property
    def b_ips(self) -> tuple[ipaddress.IPv4Address | None, ...]:
        """Side b's underlay IPs (see :attr:`a_ips`)."""
        return tuple(underlay_ip_of_mac(m) for m in self.b)

    def describe(self) -> str:
        """One line for humans: ``loss x: 192.168.1.1 <-> 192.168.2.1, 2.5%``."""

        def side(macs: tuple[str, ...]) -> str:
            return ",".join(str(underlay_ip_of_mac(m) or m) for m in macs)

        text = f"{self.kind} {self.name}: {side(self.a)} <-> {side(self.b)}"
        if self.percent is not None:
            text += f", {self.percent:g}%"
        if self.dropped is not None:
            text += f", {self.dropped} dropped"
        return text


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid fault name, else raise :class:`InvalidFault`."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidFault(
            f"invalid fault name {name!r}: use 1-32 characters of [a-z0-9-], not starting or ending in '-'"
        )
    return name


def validate_percent(percent: float) -> float:
    """Return ``percent`` as a float if ``0 < percent <= 100``, else raise :class:`InvalidFault`."""
    if isinstance(percent, bool) or not isinstance(percent, int | float):
        raise InvalidFault(f"loss percentage must be a number, not {percent!r}")
    value = float(percent)
    if not math.isfinite(value) or not 0 < value <= 100:
        raise InvalidFault(
            f"loss percentage {percent!r} is out of range: use more than 0 and at most 100 "
            "(clear a loss with clear_loss)"
        )
    return value


def normalize_mac(mac: str) -> str:
    """``mac`` in lower case with colons; :class:`InvalidFault` if it is not a MAC address."""
    text = mac.strip().lower().replace("-", ":") if isinstance(mac, str) else ""
    if not _MAC_RE.match(text):
        raise InvalidFault(f"invalid MAC address {mac!r}")
    return text


def mac_bytes(mac: str) -> bytes:
    """The 6 bytes of ``mac``."""
    return bytes(int(part, 16) for part in normalize_mac(mac).split(":"))


def mac_text(raw: bytes) -> str:
    """``aa:bb:cc:dd:ee:ff`` for 6 raw bytes."""
    return ":".join(f"{b:02x}" for b in raw)


def underlay_ip_of_mac(mac: str) -> ipaddress.IPv4Address | None:
    """The underlay IP a lab node MAC (``02:10:<ip bytes>``) encodes, or None for another MAC."""
    text = normalize_mac(mac)
    if not text.startswith(_NODE_MAC_PREFIX):
        return None
    return ipaddress.IPv4Address(mac_bytes(text)[2:])


def sides(a: Sequence[NodeRef], b: Sequence[NodeRef]) -> tuple[tuple[NodeRef, ...], tuple[NodeRef, ...]]:
    """Both sides without duplicates (by MAC, first kept, order kept), checked: neither empty,
    no node on both sides."""
    side_a, side_b = _unique(a, "a"), _unique(b, "b")
    both = {n.underlay_mac for n in side_a} & {n.underlay_mac for n in side_b}
    if both:
        clash = [n.ns for n in side_a if n.underlay_mac in both]
        raise InvalidFault(f"nodes on both sides of the fault: {', '.join(clash)} (a node cannot be cut from itself)")
    return side_a, side_b


def _unique(nodes: Iterable[NodeRef], label: str) -> tuple[NodeRef, ...]:
    seen: dict[str, NodeRef] = {}
    for node in nodes:
        if not isinstance(node, NodeRef):
            raise InvalidFault(f"side {label}: expected NodeRef, got {type(node).__name__} (use NodeRef.of(node))")
        seen.setdefault(node.underlay_mac, node)
    if not seen:
        raise InvalidFault(f"side {label} of the fault has no nodes")
    return tuple(seen.values())
