"""One place mapping a record kind (or a key) to its decoder and encoder, and checking that a
key matches the record stored under it (what Cilium's watchers enforce)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshcore.errors import WireError
from meshcore.wire.clusterconfig import ClusterConfig, decode_cluster_config, encode_cluster_config
from meshcore.wire.identity import LabelSet, decode_identity, encode_identity
from meshcore.wire.ipidentity import IPIdentityPair, decode_ip_identity, encode_ip_identity
from meshcore.wire.keys import parse_key
from meshcore.wire.node import Node, decode_node, encode_node
from meshcore.wire.service import ClusterService, decode_service, encode_service
from meshcore.wire.serviceexport import MCSAPIServiceSpec, decode_serviceexport, encode_serviceexport

__all__ = ["Codec", "CODECS", "KEY_KINDS", "codec_for", "codec_for_key", "check_key"]


@dataclass(frozen=True)
class Codec:
    """How one kind of record is read from and written to the kvstore."""

    kind: str
    record_type: type[Any]
    decode: Callable[..., Any]
    encode: Callable[[Any], bytes]
    is_json: bool = True


CODECS: dict[str, Codec] = {
    "node": Codec("node", Node, decode_node, encode_node),
    "service": Codec("service", ClusterService, decode_service, encode_service),
    "ip": Codec("ip", IPIdentityPair, decode_ip_identity, encode_ip_identity),
    "identity": Codec("identity", LabelSet, decode_identity, encode_identity, is_json=False),
    "clusterconfig": Codec("clusterconfig", ClusterConfig, decode_cluster_config, encode_cluster_config),
    "serviceexport": Codec("serviceexport", MCSAPIServiceSpec, decode_serviceexport, encode_serviceexport),
}
"""Record codecs by kind (the ``--kind`` names of ``clustermesh wire``)."""

KEY_KINDS = {"node", "service", "ip", "identity", "clusterconfig", "serviceexport"}


def codec_for(kind: str) -> Codec:
    """The codec for ``kind``; raises :class:`WireError` for an unknown kind."""
    try:
        return CODECS[kind]
    except KeyError:
        raise WireError(f"unknown record kind {kind!r} (known: {', '.join(CODECS)})") from None


def codec_for_key(key: str) -> Codec:
    """The codec for the record stored under ``key``."""
    kind = parse_key(key).kind
    if kind not in CODECS:
        raise WireError(f"keys of kind {kind!r} hold no typed record", key=key)
    return CODECS[kind]


def check_key(key: str, record: Any) -> None:
    """Raise :class:`WireError` unless ``record`` may be stored under ``key``: the node key ends
    in ``<cluster>/<name>``, service and export keys in ``<cluster>/<ns>/<name>``, ip keys in
    ``prefix_string()``."""
    info = parse_key(key)
    if isinstance(record, Node):
        if info.kind != "node" or (info.cluster, info.suffix) != (record.cluster, record.name):
            raise WireError(f"node {record.key_name()!r} does not match its key", key=key)
    elif isinstance(record, (ClusterService, MCSAPIServiceSpec)):
        expected_kind = "service" if isinstance(record, ClusterService) else "serviceexport"
        if info.kind != expected_kind or (info.cluster, info.suffix) != (
            record.cluster,
            record.namespaced_name(),
        ):
            raise WireError(f"{expected_kind} {record.key_name()!r} does not match its key", key=key)
    elif isinstance(record, IPIdentityPair):
        if info.kind != "ip" or info.suffix != record.prefix_string():
            raise WireError(
                f"key suffix {info.suffix!r} differs from the entry's prefix {record.prefix_string()!r}",
                key=key,
            )
    elif isinstance(record, LabelSet):
        if info.kind != "identity":
            raise WireError("an identity label set belongs under identities/v1/id/<ID>", key=key)
    elif isinstance(record, ClusterConfig):
        if info.kind != "clusterconfig":
            raise WireError("a cluster config belongs under cilium/cluster-config/<cluster>", key=key)
    else:
        raise WireError(f"not a wire record: {type(record).__name__}", key=key)
