"""The compact records the agent keeps per remote entry, and the pure functions that make them.

At 250k remote ipcache entries every byte per entry counts (issue 10: well under 300 MB in all),
so the caches do not keep the decoded wire objects. Each validated value is reduced, once, to
what the desired state needs:

- an ipcache pair becomes a :class:`Claim` (64 bytes: a ``gc=False`` msgspec Struct of six
  references to shared objects). The same object is the cache entry, the watch store's value and
  the claim the desired-state index holds for the prefix: there is no second or third copy;
- a node becomes a :class:`NodeRecord`: its ipcache claims, pod CIDRs, tunnel IP and WireGuard
  data, already derived (a wire ``Node`` with its labels and annotations is ~1.5 KB);
- an identity becomes the tuple of its label strings (``source:key=value``), interned;
- a service stays a :class:`~meshcore.wire.ClusterService` (hundreds, not hundreds of thousands).

Strings that repeat across entries (cluster names, node IPs as tunnel endpoints, labels) and
identity numbers are interned through an :class:`Interner`, so 10 endpoints on one node share one
``HostIP`` string and 250k endpoints share 25k identity ints.

Prefix keys: an ipcache prefix is keyed by its bare canonical IP when it is a host prefix
(``10.0.0.1``: exactly the watch store's key suffix, so the key string is shared too) and by
``net/bits`` otherwise; :func:`prefix_of` gives the ``/bits`` form the datapath uses.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Hashable, Iterable
from typing import Any, TypeVar

import msgspec

from clustermesh_apiserver.converters.annotations import WIREGUARD_NEXT_PUB_KEY
from encryption.wireguard.keys import validate_public_key
from meshcore.errors import WireError
from meshcore.wire import CIDR, IPIdentityPair, LabelSet, Node

__all__ = [
    "SOURCES",
    "SOURCE_RANK",
    "ID_WORLD",
    "ID_HEALTH",
    "ID_REMOTE_NODE",
    "ID_INGRESS",
    "Claim",
    "NodeRecord",
    "Labels",
    "Interner",
    "ip_key",
    "prefix_of",
    "prefix_sort_key",
    "endpoint_claim",
    "node_record",
    "node_next_pub_key",
    "identity_labels",
    "node_tunnel_ip",
    "node_pod_cidrs",
]

ID_WORLD = 2
ID_HEALTH = 4
ID_REMOTE_NODE = 6
ID_INGRESS = 8

SOURCES = ("node-ip", "health", "ingress", "endpoint", "pod-cidr")
"""Claim sources in rank order: a lower rank wins a prefix claimed twice."""
SOURCE_RANK = {name: rank for rank, name in enumerate(SOURCES)}
_ENDPOINT = SOURCE_RANK["endpoint"]
_NODE_IP_TYPES = ("InternalIP", "ExternalIP", "CiliumInternalIP")

Labels = tuple[str, ...]
"""An identity's labels as ``source:key=value`` strings, in the wire order."""

_H = TypeVar("_H", bound=Hashable)


class Claim(msgspec.Struct, frozen=True, gc=False):
    """One claim on one ipcache prefix: ``rank`` (index into :data:`SOURCES`), the claiming
    ``cluster`` and ``record`` (node name or ipcache key suffix), and the entry it asks for:
    identity ``id``, ``tunnel`` endpoint (``""``: not tunnelled), encrypt ``key``.

    Claims order by ``(rank, cluster, record)`` (:meth:`order`), the conflict rule."""

    rank: int
    cluster: str
    record: str
    id: int
    tunnel: str
    key: int

    @property
    def source(self) -> str:
        return SOURCES[self.rank]

    def order(self) -> tuple[int, str, str]:
        return (self.rank, self.cluster, self.record)


class NodeRecord(msgspec.Struct, frozen=True, gc=False):
    """A remote node as the desired state needs it (see :func:`node_record`)."""

    cluster: str
    name: str
    tunnel_ip: str
    claims: tuple[tuple[str, Claim], ...]
    """(prefix key, claim), one per prefix: the best of the node's own claims on it."""
    duplicates: int
    """Claims dropped because this node claimed the same prefix more than once (conflicts)."""
    pod_cidrs: tuple[str, ...]
    """Canonical ``net/bits`` pod CIDRs, IPv4 then IPv6, primary then secondary."""
    node_ips: tuple[str, ...]
    """Canonical ``ip/bits`` host prefixes of the node's IPs."""
    encryption_key: int
    wireguard_pub_key: str
    wireguard_next_pub_key: str = ""
    """The key a rotating node announces it rotates to (:func:`node_next_pub_key`); ``""``: none."""


class Interner:
    """Shares equal strings and ints between records (see the module docstring)."""

    def __init__(self) -> None:
        self._values: dict[Any, Any] = {}

    def text(self, text: str) -> str:
        return sys.intern(text)

    def value(self, value: _H) -> _H:
        """The first-seen object equal to ``value``."""
        return self._values.setdefault(value, value)  # type: ignore[no-any-return]


_DEFAULT_INTERNER = Interner()


# ---- prefixes ----


_V4_MAPPED = bytes(10) + b"\xff\xff"


def _canonical(text: str) -> tuple[str, int, int] | None:
    """(network address, bits, full bits) of ``text``, or None if unparsable.

    ``inet_pton``/``inet_ntop`` do the common ``ip[/bits]`` forms (about 8x faster than
    :mod:`ipaddress`, which matters for 25k node records at start); they reject what
    ``ipaddress`` rejects there (IPv4 octets with leading zeros, zones). Anything else (a netmask
    after the slash) goes to :func:`ipaddress.ip_network`."""
    ip, slash, bits_text = text.partition("/")
    family, full = (socket.AF_INET6, 128) if ":" in ip else (socket.AF_INET, 32)
    if "%" in ip or (slash and not (bits_text.isascii() and bits_text.isdigit())):
        return _canonical_slow(text)
    try:
        raw = socket.inet_pton(family, ip)
    except (OSError, ValueError):
        return None
    if full == 128 and raw[:12] == _V4_MAPPED:
        return _canonical_slow(text)
    bits = int(bits_text) if slash else full
    if bits > full:
        return None
    if bits < full:
        shift = full - bits
        raw = (int.from_bytes(raw, "big") >> shift << shift).to_bytes(full // 8, "big")
    return socket.inet_ntop(family, raw), bits, full


def _canonical_slow(text: str) -> tuple[str, int, int] | None:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    return str(net.network_address), net.prefixlen, net.max_prefixlen


def ip_key(text: str) -> str | None:
    """The prefix key of an IP or CIDR: the bare canonical IP for a host prefix, else
    ``net/bits``; None if unparsable. A name without ``/`` (a validated ipcache key suffix) is
    returned as it is: it is already canonical."""
    if "/" not in text:
        return text if text else None
    parsed = _canonical(text)
    if parsed is None:
        return None
    address, bits, full = parsed
    return address if bits == full else f"{address}/{bits}"


def _host_key(ip: str) -> str | None:
    if not ip:
        return None
    parsed = _canonical(ip)
    return parsed[0] if parsed is not None else None


def prefix_of(key: str) -> str:
    """The ``/bits`` form of a prefix key: ``10.0.0.1`` -> ``10.0.0.1/32``."""
    if "/" in key:
        return key
    return f"{key}/128" if ":" in key else f"{key}/32"


def prefix_sort_key(prefix: str) -> tuple[int, bytes, int]:
    """Sort key of a canonical prefix (``/bits`` form or bare IP): family, address bytes, length."""
    ip, _, bits = prefix.partition("/")
    if ":" in ip:
        return (6, socket.inet_pton(socket.AF_INET6, ip), int(bits) if bits else 128)
    return (4, socket.inet_pton(socket.AF_INET, ip), int(bits) if bits else 32)


# ---- converters (pure) ----


def endpoint_claim(cluster: str, name: str, pair: IPIdentityPair | Claim, interner: Interner | None = None) -> Claim:
    """The claim an ipcache pair (validated, read from key suffix ``name`` of ``cluster``) makes:
    its prefix -> its identity, tunnelled to ``HostIP``, encrypt key ``Key``."""
    if isinstance(pair, Claim):
        return pair
    i = interner or _DEFAULT_INTERNER
    return Claim(_ENDPOINT, i.text(cluster), name, i.value(pair.id), i.text(pair.host_ip), i.value(pair.key))


def node_tunnel_ip(node: Node) -> str:
    """The IP other nodes tunnel to: the first InternalIP, else ExternalIP, IPv4 before IPv6;
    ``""`` when the node has none."""
    addresses = node.ip_addresses or []
    for family_v6 in (False, True):
        for wanted in ("InternalIP", "ExternalIP"):
            for addr in addresses:
                if addr.type == wanted and addr.ip and (":" in addr.ip) == family_v6:
                    return addr.ip
    return ""


def node_pod_cidrs(node: Node) -> list[str]:
    """A node's pod CIDRs (IPv4 then IPv6, primary then secondary), canonical ``net/bits``."""
    cidrs: list[CIDR | None] = [node.ipv4_alloc_cidr, *(node.ipv4_secondary_alloc_cidrs or [])]
    cidrs += [node.ipv6_alloc_cidr, *(node.ipv6_secondary_alloc_cidrs or [])]
    out = []
    for cidr in cidrs:
        if cidr is None or not cidr.ip or cidr.mask is None:
            continue
        parsed = _canonical(str(cidr))
        if parsed is not None:
            out.append(f"{parsed[0]}/{parsed[1]}")
    return out


def node_next_pub_key(node: Node) -> str:
    """The next WireGuard public key a rotating node announces in its
    ``clustermesh.io/wg-next-pub-key`` annotation (exported by the API server), or ``""`` when it
    announces none, or one that is not a valid public key or is its current key (remote data: an
    invalid announcement is ignored, never an error)."""
    text = (node.annotations or {}).get(WIREGUARD_NEXT_PUB_KEY)
    if not text or not isinstance(text, str):
        return ""
    try:
        key = validate_public_key(text)
    except WireError:
        return ""
    return "" if key == node.wireguard_pub_key.strip() else key


def node_record(cluster: str, name: str, node: Node | NodeRecord, interner: Interner | None = None) -> NodeRecord:
    """What node ``name`` of ``cluster`` contributes (reference §3.3, ``NodeManager.NodeUpdated``):

    each node IP -> ``remote-node`` (a tunnel endpoint only for the ``CiliumInternalIP``); with a
    tunnel IP, health IPs -> ``health``, ingress IPs -> ``ingress``, pod CIDRs -> ``world``, all
    tunnelled to the node. Of several claims of this node on one prefix the best-ranked (then the
    first) is kept; the others are counted in :attr:`NodeRecord.duplicates`. A valid announced next
    WireGuard key goes to :attr:`NodeRecord.wireguard_next_pub_key` (:func:`node_next_pub_key`)."""
    if isinstance(node, NodeRecord):
        return node
    i = interner or _DEFAULT_INTERNER
    cluster, name = i.text(cluster), i.text(name)
    tunnel = i.text(node_tunnel_ip(node))
    key = i.value(node.encryption_key)
    wanted: list[tuple[str, int, int, str]] = []  # (prefix key, rank, identity, tunnel)
    node_ips: list[str] = []
    for addr in node.ip_addresses or []:
        if addr.type in _NODE_IP_TYPES:
            host = _host_key(addr.ip)
            if host is not None:
                node_ips.append(prefix_of(host))
                tunnel_ep = tunnel if addr.type == "CiliumInternalIP" else ""
                wanted.append((host, SOURCE_RANK["node-ip"], ID_REMOTE_NODE, tunnel_ep))
    pod_cidrs = node_pod_cidrs(node)
    if tunnel:  # nothing below is reachable without a node IP to tunnel to
        for ip, identity, source in (
            (node.ipv4_health_ip, ID_HEALTH, "health"),
            (node.ipv6_health_ip, ID_HEALTH, "health"),
            (node.ipv4_ingress_ip, ID_INGRESS, "ingress"),
            (node.ipv6_ingress_ip, ID_INGRESS, "ingress"),
        ):
            host = _host_key(ip)
            if host is not None:
                wanted.append((host, SOURCE_RANK[source], identity, tunnel))
        for cidr in pod_cidrs:
            prefix = ip_key(cidr)
            if prefix is not None:
                wanted.append((prefix, SOURCE_RANK["pod-cidr"], ID_WORLD, tunnel))
    best: dict[str, Claim] = {}
    for prefix, rank, identity, tunnel_ep in wanted:
        current = best.get(prefix)
        if current is None or rank < current.rank:
            best[prefix] = Claim(rank, cluster, name, identity, tunnel_ep, key)
    return NodeRecord(
        cluster=cluster,
        name=name,
        tunnel_ip=tunnel,
        claims=tuple((i.text(p), c) for p, c in best.items()),
        duplicates=len(wanted) - len(best),
        pod_cidrs=tuple(i.text(c) for c in pod_cidrs),
        node_ips=tuple(node_ips),
        encryption_key=key,
        wireguard_pub_key=i.text(node.wireguard_pub_key),
        wireguard_next_pub_key=i.text(node_next_pub_key(node)),
    )


def identity_labels(labels: LabelSet | Iterable[object], interner: Interner | None = None) -> Labels:
    """An identity's labels as interned ``source:key=value`` strings."""
    del interner  # strings are interned process-wide
    return tuple(sys.intern(str(label)) for label in labels)
