"""Binary layouts of every pinned map: the one source of truth for sizes on the Python side.

Each key and value is a :mod:`ctypes` Structure whose size is asserted at import against the size
written in ``bpf/c/common.h`` (which asserts the same numbers with ``_Static_assert``), and each
map is described by a :class:`MapSpec` (kernel map type, key/value structure, capacity, flags).
``bpf/README.md`` documents the byte offsets. Byte order: integers are host order (little endian
on x86) unless the field name ends in ``_be`` in the docs (``port``/``dport``: network order, as
the kernel hands them to BPF programs).
"""

from __future__ import annotations

import ctypes
import enum
import socket
import struct
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "BPF_MAP_TYPE_HASH",
    "BPF_MAP_TYPE_PERCPU_ARRAY",
    "BPF_MAP_TYPE_LPM_TRIE",
    "BPF_MAP_TYPE_LRU_HASH",
    "BPF_F_NO_PREALLOC",
    "FAMILY_IPV4",
    "FAMILY_IPV6",
    "IPCACHE_F_SKIP_TUNNEL",
    "IPCACHE_F_HAS_TUNNEL_EP",
    "IPCACHE_F_IPV6_TUNNEL_EP",
    "IPCACHE_F_REMOTE_CLUSTER",
    "IPCACHE_F_REMOTE_NODE_EP",
    "STATIC_ENCRYPT_KEY",
    "BACKEND_F_HEALTHY",
    "BACKEND_F_LOCAL",
    "MARK_MAGIC_IDENTITY",
    "MARK_MAGIC_MASK",
    "IDENTITY_MASK",
    "ID_ANY",
    "PROTOCOLS",
    "Affinity",
    "Direction",
    "Verdict",
    "Reason",
    "IPCacheKey",
    "IPCacheValue",
    "FrontendKey",
    "ServiceValue",
    "SlotKey",
    "SlotValue",
    "BackendKey",
    "BackendValue",
    "PolicyKey",
    "PolicyValue",
    "EnforceKey",
    "EnforceValue",
    "CounterKey",
    "CounterValue",
    "EndpointKey",
    "EndpointValue",
    "RevNatKey",
    "CTKey",
    "CTValue",
    "MapSpec",
    "MAP_SPECS",
    "ip_bytes",
    "ip_text",
    "ipcache_key",
    "ipcache_value",
    "frontend_key",
    "counter_index",
    "encode_mark",
    "decode_mark",
    "pack_ipcache_key",
    "pack_ipcache_value",
]

# Kernel constants (uapi/linux/bpf.h).
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_F_NO_PREALLOC = 1

FAMILY_IPV4 = 1
FAMILY_IPV6 = 2

# ipcache value flag bits: Cilium's bitfield order in remote_endpoint_info (bpf/lib/eps.h).
IPCACHE_F_SKIP_TUNNEL = 1 << 0
IPCACHE_F_HAS_TUNNEL_EP = 1 << 1
IPCACHE_F_IPV6_TUNNEL_EP = 1 << 2
IPCACHE_F_REMOTE_CLUSTER = 1 << 3
IPCACHE_F_REMOTE_NODE_EP = 1 << 4
"""Ours, not Cilium's: the entry's endpoint is on another node (its HostIP is not this node). In
tunnel mode ``has_tunnel_ep`` says as much; native-mode entries have no tunnel endpoint, so egress
strict mode needs this bit to tell remote endpoints from local ones."""

STATIC_ENCRYPT_KEY = 0xFF
"""``IPCacheValue.encrypt_key`` of a destination whose node is a WireGuard peer (Cilium's
``StaticEncryptKey``); 0: not encrypted (egress strict mode drops it inside the strict CIDR)."""

BACKEND_F_HEALTHY = 1 << 0
BACKEND_F_LOCAL = 1 << 1

# skb->mark carrying a source identity between programs of one node (see README "Marks").
MARK_MAGIC_IDENTITY = 0xCE000000
MARK_MAGIC_MASK = 0xFF000000
IDENTITY_MASK = 0x00FFFFFF
"""Identities are 24 bits: they travel in the VXLAN VNI."""

ID_ANY = 0
"""A policy key's remote identity 0 matches any remote identity (looked up after the exact one)."""

PROTOCOLS = {"ANY": 0, "ICMP": 1, "TCP": 6, "UDP": 17, "ICMPV6": 58, "SCTP": 132}


class Affinity(enum.IntEnum):
    """A service's cluster affinity (annotation ``service.cilium.io/affinity``)."""

    NONE = 0
    LOCAL = 1
    REMOTE = 2


class Direction(enum.IntEnum):
    """Direction as seen by the local endpoint (policy) or by the node (counters)."""

    INGRESS = 0
    EGRESS = 1


class Verdict(enum.IntEnum):
    """A policy entry's verdict."""

    DENY = 0
    ALLOW = 1


class Reason(enum.IntEnum):
    """Counter reasons; the same numbers are ``REASON_*`` in ``bpf/c/common.h``."""

    FORWARDED = 0
    POLICY_DENIED = 1
    POLICY_DEFAULT_DENY = 2
    NO_TUNNEL_ENDPOINT = 3
    UNKNOWN_DESTINATION = 4
    TUNNEL_ENCAP_FAILED = 5
    TO_TUNNEL = 6
    FROM_TUNNEL = 7
    NO_TUNNEL_KEY = 8
    NOT_IPV4 = 9
    UNKNOWN_ENDPOINT = 10
    CT_REPLY = 11
    LB_TRANSLATED = 12
    LB_NO_BACKEND = 13
    LB_REVNAT = 14
    UNENCRYPTED = 15
    """Egress strict mode dropped a packet that would leave unencrypted (Cilium's drop reason
    195, ``DROP_UNENCRYPTED_TRAFFIC``, "Traffic is unencrypted")."""


REASON_SLOTS = 32
"""Reasons reserved in the counters array (``(reason << 1) | direction`` < 2 * REASON_SLOTS)."""

_U8x16 = ctypes.c_uint8 * 16


class IPCacheKey(ctypes.Structure):
    """LPM key: ``prefixlen`` counts the 32 bits of cluster_id/pad/family plus the IP prefix bits."""

    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("cluster_id", ctypes.c_uint16),
        ("pad", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("ip", _U8x16),
    ]


class IPCacheValue(ctypes.Structure):
    """Identity and tunnel endpoint of a prefix; IPv4 tunnel endpoints use the first 4 bytes."""

    _fields_ = [
        ("sec_identity", ctypes.c_uint32),
        ("tunnel_endpoint", _U8x16),
        ("cluster_id", ctypes.c_uint16),
        ("encrypt_key", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
    ]


class FrontendKey(ctypes.Structure):
    """A service frontend; ``port`` is in network byte order."""

    _fields_ = [
        ("ip", _U8x16),
        ("port", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
    ]


class ServiceValue(ctypes.Structure):
    """Slots ``[0, local_backend_count)`` hold local backends, the rest remote ones."""

    _fields_ = [
        ("backend_count", ctypes.c_uint16),
        ("affinity", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("local_backend_count", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    ]


class SlotKey(ctypes.Structure):
    """One backend slot of a frontend."""

    _fields_ = [("frontend", FrontendKey), ("slot", ctypes.c_uint16), ("pad", ctypes.c_uint16)]


class SlotValue(ctypes.Structure):
    """The backend ID in a slot."""

    _fields_ = [("backend_id", ctypes.c_uint32)]


class BackendKey(ctypes.Structure):
    """A backend ID."""

    _fields_ = [("backend_id", ctypes.c_uint32)]


class BackendValue(ctypes.Structure):
    """A backend address; ``port`` in network byte order."""

    _fields_ = [
        ("ip", _U8x16),
        ("port", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("cluster_id", ctypes.c_uint16),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class PolicyKey(ctypes.Structure):
    """``dport`` in network byte order; 0 in ``dport``/``proto``/``remote_identity`` is a wildcard."""

    _fields_ = [
        ("endpoint_id", ctypes.c_uint32),
        ("remote_identity", ctypes.c_uint32),
        ("dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
    ]


class PolicyValue(ctypes.Structure):
    """Verdict plus per-entry hit counters (updated atomically by the programs)."""

    _fields_ = [
        ("verdict", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 7),
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
    ]


class EnforceKey(ctypes.Structure):
    """An endpoint and a direction."""

    _fields_ = [("endpoint_id", ctypes.c_uint32), ("direction", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 3)]


class EnforceValue(ctypes.Structure):
    """1 when policy is enforced (no match means default deny), 0 or absent when not."""

    _fields_ = [("enforced", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 3)]


class CounterKey(ctypes.Structure):
    """Per-CPU array index ``(reason << 1) | direction``."""

    _fields_ = [("index", ctypes.c_uint32)]


class CounterValue(ctypes.Structure):
    """One CPU's packet and byte counts."""

    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class EndpointKey(ctypes.Structure):
    """The node-side ifindex of a local pod's veth."""

    _fields_ = [("ifindex", ctypes.c_uint32)]


class EndpointValue(ctypes.Structure):
    """A local endpoint: its ID (policy key) and security identity (VNI when it sends)."""

    _fields_ = [("endpoint_id", ctypes.c_uint32), ("sec_identity", ctypes.c_uint32)]


class RevNatKey(ctypes.Structure):
    """UDP reverse translation: socket cookie plus the backend the socket was sent to."""

    _fields_ = [
        ("cookie", ctypes.c_uint64),
        ("ip", _U8x16),
        ("port", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 5),
    ]


class CTKey(ctypes.Structure):
    """An IPv4 flow as first seen (addresses and ports in network order)."""

    _fields_ = [
        ("saddr", ctypes.c_uint32),
        ("daddr", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


class CTValue(ctypes.Structure):
    """Flow state: packets seen (the entry's existence is what matters)."""

    _fields_ = [("packets", ctypes.c_uint64)]


# Sizes also asserted in bpf/c/common.h: change both together.
_SIZES: dict[type[ctypes.Structure], int] = {
    IPCacheKey: 24,
    IPCacheValue: 24,
    FrontendKey: 20,
    ServiceValue: 8,
    SlotKey: 24,
    SlotValue: 4,
    BackendKey: 4,
    BackendValue: 24,
    PolicyKey: 12,
    PolicyValue: 24,
    EnforceKey: 8,
    EnforceValue: 4,
    CounterKey: 4,
    CounterValue: 16,
    EndpointKey: 4,
    EndpointValue: 8,
    RevNatKey: 32,
    CTKey: 16,
    CTValue: 8,
}
for _cls, _size in _SIZES.items():
    assert ctypes.sizeof(_cls) == _size, f"{_cls.__name__} is {ctypes.sizeof(_cls)} bytes, expected {_size}"


@dataclass(frozen=True, slots=True)
class MapSpec:
    """One pinned map: its stable pin name, kernel type, layout and capacity."""

    name: str
    map_type: int
    key: type[ctypes.Structure]
    value: type[ctypes.Structure]
    max_entries: int
    flags: int = 0
    per_cpu: bool = False

    @property
    def key_size(self) -> int:
        return ctypes.sizeof(self.key)

    @property
    def value_size(self) -> int:
        return ctypes.sizeof(self.value)


MAP_SPECS: dict[str, MapSpec] = {
    s.name: s
    for s in (
        MapSpec("ipcache", BPF_MAP_TYPE_LPM_TRIE, IPCacheKey, IPCacheValue, 512000, BPF_F_NO_PREALLOC),
        MapSpec("services", BPF_MAP_TYPE_HASH, FrontendKey, ServiceValue, 65536),
        MapSpec("svc_slots", BPF_MAP_TYPE_HASH, SlotKey, SlotValue, 262144),
        MapSpec("backends", BPF_MAP_TYPE_HASH, BackendKey, BackendValue, 262144),
        MapSpec("policy", BPF_MAP_TYPE_HASH, PolicyKey, PolicyValue, 262144),
        MapSpec("policy_enforce", BPF_MAP_TYPE_HASH, EnforceKey, EnforceValue, 16384),
        MapSpec("counters", BPF_MAP_TYPE_PERCPU_ARRAY, CounterKey, CounterValue, 2 * REASON_SLOTS, per_cpu=True),
        MapSpec("endpoints", BPF_MAP_TYPE_HASH, EndpointKey, EndpointValue, 16384),
        MapSpec("sock_revnat", BPF_MAP_TYPE_LRU_HASH, RevNatKey, FrontendKey, 262144),
        MapSpec("ct", BPF_MAP_TYPE_LRU_HASH, CTKey, CTValue, 262144),
    )
}
"""Every map of a node, by its pin name (also the C variable name)."""


# ---- encoders ----


def ip_bytes(ip: str) -> tuple[int, bytes]:
    """``(family, 16 bytes)``: IPv4 in the first 4 bytes, zero-padded."""
    if ":" in ip:
        return FAMILY_IPV6, socket.inet_pton(socket.AF_INET6, ip)
    return FAMILY_IPV4, socket.inet_pton(socket.AF_INET, ip) + bytes(12)


def ip_text(family: int, raw: bytes) -> str:
    """The inverse of :func:`ip_bytes`."""
    if family == FAMILY_IPV6:
        return socket.inet_ntop(socket.AF_INET6, raw[:16])
    return socket.inet_ntop(socket.AF_INET, raw[:4])


def ipcache_key(prefix: str, cluster_id: int = 0) -> IPCacheKey:
    """The LPM key of ``prefix`` (``10.0.0.0/24``; a bare IP is a host prefix).

    Remote entries use ``cluster_id`` 0 as in Cilium OSS; the programs look up with 0.
    """
    ip, _, bits_text = prefix.partition("/")
    family, raw = ip_bytes(ip)
    bits = int(bits_text) if bits_text else (32 if family == FAMILY_IPV4 else 128)
    key = IPCacheKey(prefixlen=32 + bits, cluster_id=cluster_id, family=family)
    ctypes.memmove(key.ip, raw, 16)
    return key


def ipcache_value(
    identity: int,
    tunnel_endpoint: str = "",
    *,
    cluster_id: int = 0,
    encrypt_key: int = 0,
    remote_cluster: bool = False,
    skip_tunnel: bool = False,
    remote_node: bool = False,
) -> IPCacheValue:
    """An ipcache value; flags follow from the arguments (``remote_node``: the endpoint is on
    another node, :data:`IPCACHE_F_REMOTE_NODE_EP`)."""
    flags = (IPCACHE_F_REMOTE_CLUSTER if remote_cluster else 0) | (IPCACHE_F_SKIP_TUNNEL if skip_tunnel else 0)
    flags |= IPCACHE_F_REMOTE_NODE_EP if remote_node else 0
    value = IPCacheValue(sec_identity=identity, cluster_id=cluster_id, encrypt_key=encrypt_key)
    if tunnel_endpoint:
        family, raw = ip_bytes(tunnel_endpoint)
        flags |= IPCACHE_F_HAS_TUNNEL_EP | (IPCACHE_F_IPV6_TUNNEL_EP if family == FAMILY_IPV6 else 0)
        ctypes.memmove(value.tunnel_endpoint, raw, 16)
    value.flags = flags
    return value


def frontend_key(ip: str, port: int, proto: str | int = "TCP") -> FrontendKey:
    """A service frontend (or backend address) key; ``proto`` by name or number."""
    family, raw = ip_bytes(ip)
    number = PROTOCOLS[proto.upper()] if isinstance(proto, str) else proto
    key = FrontendKey(port=socket.htons(port), proto=number, family=family)
    ctypes.memmove(key.ip, raw, 16)
    return key


def counter_index(reason: Reason | int, direction: Direction | int) -> int:
    """The counters array index of ``(reason, direction)``."""
    return (int(reason) << 1) | int(direction)


def encode_mark(identity: int) -> int:
    """The skb->mark carrying ``identity`` between programs."""
    return MARK_MAGIC_IDENTITY | (identity & IDENTITY_MASK)


def decode_mark(mark: int) -> int | None:
    """The identity in ``mark``, or None when the mark is not ours."""
    if mark & MARK_MAGIC_MASK != MARK_MAGIC_IDENTITY:
        return None
    return mark & IDENTITY_MASK


# ---- bulk packers: the same bytes as the Structures, about 4x faster (struct, no ctypes objects) ----

_IPCACHE_KEY = struct.Struct("=IHBB16s")
_IPCACHE_VALUE = struct.Struct("=I16sHBB")
assert _IPCACHE_KEY.size == ctypes.sizeof(IPCacheKey) and _IPCACHE_VALUE.size == ctypes.sizeof(IPCacheValue)
_V4_PAD = bytes(12)


def pack_ipcache_key(prefix: str, cluster_id: int = 0) -> bytes:
    """``bytes(ipcache_key(prefix, cluster_id))`` for a prefix with ``/bits`` (the bulk path)."""
    ip, _, bits = prefix.partition("/")
    if ":" in ip:
        return _IPCACHE_KEY.pack(
            32 + int(bits or 128), cluster_id, 0, FAMILY_IPV6, socket.inet_pton(socket.AF_INET6, ip)
        )
    raw = socket.inet_pton(socket.AF_INET, ip) + _V4_PAD
    return _IPCACHE_KEY.pack(32 + int(bits or 32), cluster_id, 0, FAMILY_IPV4, raw)


@lru_cache(maxsize=65536)
def pack_ipcache_value(
    identity: int,
    tunnel_endpoint: str = "",
    cluster_id: int = 0,
    encrypt_key: int = 0,
    remote_cluster: bool = False,
    skip_tunnel: bool = False,
    remote_node: bool = False,
) -> bytes:
    """``bytes(ipcache_value(...))``, cached: many prefixes share one node and identity."""
    return bytes(
        ipcache_value(
            identity,
            tunnel_endpoint,
            cluster_id=cluster_id,
            encrypt_key=encrypt_key,
            remote_cluster=remote_cluster,
            skip_tunnel=skip_tunnel,
            remote_node=remote_node,
        )
    )
