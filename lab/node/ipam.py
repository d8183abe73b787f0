"""Pod IP allocation over one node's podCIDR (pure: no I/O).

Next-fit: an allocation takes the first free address after the one handed out last, wrapping at the
end of the range, so a replacement pod gets a new address rather than the one its predecessor just
freed (until the range wraps), and a stale packet or cache entry for an old pod does not reach its
successor. Never handed out: the network address, the first host (``.1``, reserved for the node,
see lab/README.md) and the broadcast address.

State round-trips through a JSON-able dict (:meth:`Ipam.to_json` / :meth:`Ipam.from_json`); the
caller persists it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

#: Smallest podCIDR with a usable address: network, node (.1), one pod, broadcast.
MAX_PREFIXLEN = 30


class IpamError(RuntimeError):
    """A bad podCIDR or a corrupt allocation state."""


class PoolExhausted(IpamError):
    """Every usable address of the podCIDR is allocated."""


class Ipam:
    """Next-fit allocator of the addresses of ``cidr`` to owners (pod UIDs); see module doc."""

    def __init__(
        self,
        cidr: ipaddress.IPv4Network | str,
        allocations: Mapping[str, ipaddress.IPv4Address] | None = None,
        last: ipaddress.IPv4Address | None = None,
    ) -> None:
        self.cidr = ipaddress.IPv4Network(cidr)
        if self.cidr.prefixlen > MAX_PREFIXLEN:
            raise IpamError(f"podCIDR {self.cidr} is too small: it needs at least a /{MAX_PREFIXLEN}")
        self._first = int(self.cidr.network_address) + 2
        self._size = self.cidr.num_addresses - 3
        self._by_owner: dict[str, ipaddress.IPv4Address] = {}
        self._used: set[int] = set()
        for owner, ip in (allocations or {}).items():
            self._check_usable(ip, f"allocation of {owner!r}")
            if int(ip) in self._used:
                raise IpamError(f"address {ip} is allocated twice (state is corrupt)")
            self._by_owner[owner] = ip
            self._used.add(int(ip))
        if last is not None:
            self._check_usable(last, "last handed-out address")
        self._last = last

    def _check_usable(self, ip: ipaddress.IPv4Address, what: str) -> None:
        if not self.is_usable(ip):
            raise IpamError(f"{what} {ip} is not a usable pod address of {self.cidr} (state is corrupt)")

    # --- views -------------------------------------------------------------------------------

    def is_usable(self, ip: ipaddress.IPv4Address) -> bool:
        """Whether ``ip`` is one of the addresses this allocator may hand out."""
        return self._first <= int(ip) < self._first + self._size

    @property
    def capacity(self) -> int:
        """How many addresses the range has for pods."""
        return self._size

    @property
    def last(self) -> ipaddress.IPv4Address | None:
        """The address handed out last (where the next search starts after), if any."""
        return self._last

    def allocations(self) -> dict[str, ipaddress.IPv4Address]:
        """Owner -> address, a copy."""
        return dict(self._by_owner)

    def lookup(self, owner: str) -> ipaddress.IPv4Address | None:
        """The address of ``owner``, if it has one."""
        return self._by_owner.get(owner)

    # --- changes -----------------------------------------------------------------------------

    def allocate(self, owner: str) -> ipaddress.IPv4Address:
        """The address of ``owner``: its existing one, else the next free one after :attr:`last`.

        Raises :class:`PoolExhausted` if every usable address is taken.
        """
        existing = self._by_owner.get(owner)
        if existing is not None:
            return existing
        if len(self._used) >= self._size:
            raise PoolExhausted(
                f"podCIDR {self.cidr} is exhausted: all {self._size} pod addresses are allocated "
                "(delete pods on this node, or give the node a larger podCIDR)"
            )
        start = 0 if self._last is None else int(self._last) - self._first + 1
        for step in range(self._size):
            candidate = self._first + (start + step) % self._size
            if candidate not in self._used:
                ip = ipaddress.IPv4Address(candidate)
                self._by_owner[owner] = ip
                self._used.add(candidate)
                self._last = ip
                return ip
        raise AssertionError("unreachable: a free address exists")  # pragma: no cover

    def release(self, owner: str) -> ipaddress.IPv4Address | None:
        """Free the address of ``owner`` (returned; ``None`` if it had none). The next-fit cursor
        stays, so the freed address is handed out again only after the range wraps."""
        ip = self._by_owner.pop(owner, None)
        if ip is not None:
            self._used.discard(int(ip))
        return ip

    # --- persistence -------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The state as a JSON-able dict: ``{"cidr", "last", "allocations": {owner: ip}}``."""
        return {
            "cidr": str(self.cidr),
            "last": None if self._last is None else str(self._last),
            "allocations": {owner: str(ip) for owner, ip in sorted(self._by_owner.items())},
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], cidr: ipaddress.IPv4Network | str | None = None) -> Ipam:
        """The allocator saved by :meth:`to_json`. With ``cidr``, the saved range must be that one.

        Raises :class:`IpamError` if ``doc`` is malformed or inconsistent.
        """
        try:
            saved = ipaddress.IPv4Network(doc["cidr"])
            last = None if doc.get("last") is None else ipaddress.IPv4Address(doc["last"])
            raw = doc.get("allocations") or {}
            if not isinstance(raw, Mapping):
                raise TypeError("allocations is not an object")
            allocations = {str(owner): ipaddress.IPv4Address(ip) for owner, ip in raw.items()}
        except (KeyError, TypeError, ValueError) as err:
            raise IpamError(f"malformed IPAM state: {err!r}") from err
        if cidr is not None and ipaddress.IPv4Network(cidr) != saved:
            raise IpamError(f"saved IPAM state is for podCIDR {saved}, not {ipaddress.IPv4Network(cidr)}")
        return cls(saved, allocations, last)
