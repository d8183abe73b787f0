"""Cilium-compatible wire records: the kvstore keys and the exact JSON bytes Cilium reads and
writes (nodes, services, ipcache entries, identities, cluster configs, MCS-API exports).

Every ``decode_*`` is strict and raises :class:`meshcore.errors.WireError` naming the field and
the key; every ``encode_*`` returns the bytes Go's ``encoding/json.Marshal`` produces for the
matching Cilium struct.
"""

from meshcore.wire.clusterconfig import (
    ENDPOINT_SLICES_EXPORT_MODES,
    ClusterConfig,
    ClusterConfigCapabilities,
    decode_cluster_config,
    encode_cluster_config,
)
from meshcore.wire.gojson import decode_generic, encode_generic, go_compact, go_indent, go_marshal
from meshcore.wire.identity import CLUSTER_LABEL, Label, LabelSet, decode_identity, encode_identity
from meshcore.wire.ipidentity import IPIdentityPair, NamedPort, decode_ip_identity, encode_ip_identity
from meshcore.wire.node import CIDR, Node, NodeAddress, decode_node, encode_node
from meshcore.wire.registry import CODECS, Codec, check_key, codec_for, codec_for_key
from meshcore.wire.service import (
    BackendZone,
    ClusterService,
    ForZone,
    L4Addr,
    PortConfiguration,
    decode_service,
    encode_service,
)
from meshcore.wire.serviceexport import (
    ClientIPConfig,
    MCSAPIServiceSpec,
    ServicePort,
    SessionAffinityConfig,
    decode_serviceexport,
    encode_serviceexport,
)

__all__ = [
    "BackendZone",
    "CIDR",
    "CLUSTER_LABEL",
    "CODECS",
    "ClientIPConfig",
    "ClusterConfig",
    "ClusterConfigCapabilities",
    "ClusterService",
    "Codec",
    "ENDPOINT_SLICES_EXPORT_MODES",
    "ForZone",
    "IPIdentityPair",
    "L4Addr",
    "Label",
    "LabelSet",
    "MCSAPIServiceSpec",
    "NamedPort",
    "Node",
    "NodeAddress",
    "PortConfiguration",
    "ServicePort",
    "SessionAffinityConfig",
    "check_key",
    "codec_for",
    "codec_for_key",
    "decode_cluster_config",
    "decode_generic",
    "decode_identity",
    "decode_ip_identity",
    "decode_node",
    "decode_service",
    "decode_serviceexport",
    "encode_cluster_config",
    "encode_generic",
    "encode_identity",
    "encode_ip_identity",
    "encode_node",
    "encode_service",
    "encode_serviceexport",
    "go_compact",
    "go_indent",
    "go_marshal",
]
