"""Parse ``wg show <dev> dump`` (pure). The private-key column is dropped on sight.

Format (``wg(8)``): one interface line ``private-key public-key listen-port fwmark``, then one line
per peer ``public-key preshared-key endpoint allowed-ips latest-handshake transfer-rx transfer-tx
persistent-keepalive``, tab-separated; ``(none)`` and ``off`` mark absent values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from encryption.wireguard.errors import DumpFormatError

_NONE = "(none)"
_OFF = "off"


@dataclass(frozen=True, slots=True)
class PeerDump:
    """One peer as the device reports it."""

    public_key: str
    endpoint: str  # "ip:port" / "[v6]:port", "" when none
    allowed_ips: frozenset[str]
    latest_handshake: int  # unix seconds, 0 = never
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int  # seconds, 0 = off


@dataclass(frozen=True, slots=True)
class DeviceDump:
    """The device's public state (no private key)."""

    public_key: str  # "" when no private key is set
    listen_port: int
    fwmark: int  # 0 = off
    peers: dict[str, PeerDump] = field(default_factory=dict)


def parse_dump(text: str) -> DeviceDump:
    """Parse the output of ``wg show <dev> dump``; :class:`DumpFormatError` if malformed.

    Error messages never quote the interface line (it holds the private key).
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise DumpFormatError("empty 'wg show dump' output: expected an interface line")
    head = lines[0].split("\t")
    if len(head) != 4:
        raise DumpFormatError(f"'wg show dump' line 1: expected 4 tab-separated fields, got {len(head)}")
    _private, public, port, fwmark = head
    del _private
    device_key = "" if public == _NONE else public
    peers: dict[str, PeerDump] = {}
    for number, line in enumerate(lines[1:], start=2):
        peer = _parse_peer(line, number)
        peers[peer.public_key] = peer
    return DeviceDump(
        public_key=device_key,
        listen_port=_int(port, "listen-port", 1),
        fwmark=0 if fwmark == _OFF else _int(fwmark, "fwmark", 1, base=0),
        peers=peers,
    )


def _parse_peer(line: str, number: int) -> PeerDump:
    cols = line.split("\t")
    if len(cols) != 8:
        raise DumpFormatError(f"'wg show dump' line {number}: expected 8 tab-separated peer fields, got {len(cols)}")
    key, _psk, endpoint, allowed, handshake, rx, tx, keepalive = cols
    return PeerDump(
        public_key=key,
        endpoint="" if endpoint == _NONE else endpoint,
        allowed_ips=frozenset() if allowed in (_NONE, "") else frozenset(allowed.split(",")),
        latest_handshake=_int(handshake, "latest-handshake", number),
        rx_bytes=_int(rx, "transfer-rx", number),
        tx_bytes=_int(tx, "transfer-tx", number),
        persistent_keepalive=0 if keepalive == _OFF else _int(keepalive, "persistent-keepalive", number),
    )


def _int(text: str, what: str, number: int, *, base: int = 10) -> int:
    try:
        return int(text, base)
    except ValueError:
        raise DumpFormatError(f"'wg show dump' line {number}: {what} {text!r} is not a number") from None
