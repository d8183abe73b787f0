"""IP address and mask text as Go's ``net.IP`` / ``net.IPMask`` read and write it."""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache

__all__ = ["canonical_ip", "validate_ip_text", "mask_ones", "validate_mask", "prefix_mask"]


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def canonical_ip(text: str) -> str:
    """Return Go's ``net.ParseIP(text).String()``; ``""`` stays ``""`` (a nil ``net.IP``).

    IPv4 and IPv4-mapped IPv6 addresses come out as a dotted quad, IPv6 in RFC 5952 form
    (``2001:db8:0:0:1:0:0:1`` -> ``2001:db8::1:0:0:1``). Zones (``%eth0``), IPv4 octets with
    leading zeros and anything else ``net.ParseIP`` rejects raise ``ValueError``.
    """
    # Fast path: most values are already-canonical IPv4 text (250k at agent start-up).
    if _CANONICAL_IPV4.fullmatch(text) is not None:
        return text
    return _canonical_ip_slow(text)


@lru_cache(maxsize=65536)
def _canonical_ip_slow(text: str) -> str:
    if text == "":
        return ""
    if "%" in text or not text.isascii():
        raise ValueError(f"invalid IP address {text!r}")
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"invalid IP address {text!r}") from None
    if isinstance(addr, ipaddress.IPv6Address):
        mapped = addr.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        return addr.compressed
    return str(addr)


def validate_ip_text(text: str) -> None:
    """Check that ``text`` parses as a zone-less IP address (``netip.ParseAddr`` rules, used for
    ClusterService map keys, which Go keeps verbatim)."""
    if text == "":
        raise ValueError("empty IP address")
    canonical_ip(text)


def mask_ones(mask: bytes) -> int | None:
    """Go's ``IPMask.Size()`` ones count, or ``None`` if ``mask`` is not a canonical prefix mask."""
    value = int.from_bytes(mask, "big")
    bits = len(mask) * 8
    inverted = ~value & ((1 << bits) - 1)
    if inverted & (inverted + 1):
        return None
    return bits - inverted.bit_length()


def validate_mask(mask: bytes) -> None:
    """A mask must be 4 or 16 bytes of leading ones then zeros; raise ``ValueError`` otherwise."""
    if len(mask) not in (4, 16):
        raise ValueError(f"mask must be 4 or 16 bytes, got {len(mask)}")
    if mask_ones(mask) is None:
        raise ValueError(f"mask {mask.hex()} is not a prefix mask (ones followed by zeros)")


def prefix_mask(ones: int, bits: int) -> bytes:
    """The mask with ``ones`` leading one bits out of ``bits`` (32 or 128), like ``net.CIDRMask``."""
    if bits not in (32, 128) or not 0 <= ones <= bits:
        raise ValueError(f"invalid prefix length /{ones} for {bits}-bit mask")
    value = ((1 << ones) - 1) << (bits - ones)
    return value.to_bytes(bits // 8, "big")
