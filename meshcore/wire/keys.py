"""etcd key layout of Cilium ClusterMesh: prefix constants, key builders and key parsers.

Layouts (reference §1.1, §1.2, §1.4, §2.7):

* state (a cluster's own data, written by the clustermesh-apiserver)::

    cilium/state/nodes/v1/<cluster>/<node>
    cilium/state/services/v1/<cluster>/<ns>/<name>
    cilium/state/identities/v1/id/<id>            (no cluster segment)
    cilium/state/ip/v1/default/<ip>               (literal "default", no cluster segment)
    cilium/state/serviceexports/v1/<cluster>/<ns>/<name>
    cilium/state/endpointslices/v1/<cluster>/<ns>/<name>

* cache (remote data copied by KVStoreMesh; always cluster-scoped)::

    cilium/cache/nodes/v1/<cluster>/<node>
    cilium/cache/identities/v1/<cluster>/id/<id>
    cilium/cache/ip/v1/<cluster>/<ip>
    ...
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

from meshcore.errors import WireError

__all__ = [
    "BASE",
    "STATE",
    "CACHE",
    "INIT_LOCK",
    "HEARTBEAT",
    "CLUSTER_CONFIG",
    "SYNCED",
    "NODES",
    "SERVICES",
    "IDENTITIES",
    "IDENTITIES_ID",
    "IDENTITIES_VALUE",
    "IDENTITIES_LOCKS",
    "IP",
    "IP_DEFAULT",
    "DEFAULT_ADDRESS_SPACE",
    "SERVICE_EXPORTS",
    "ENDPOINT_SLICES",
    "CACHE_NODES",
    "CACHE_SERVICES",
    "CACHE_IDENTITIES",
    "CACHE_IP",
    "CACHE_SERVICE_EXPORTS",
    "CACHE_ENDPOINT_SLICES",
    "Kind",
    "KeyInfo",
    "join_key",
    "state_to_cache",
    "node_key",
    "cache_node_key",
    "service_key",
    "cache_service_key",
    "identity_key",
    "identity_cache_key",
    "identity_value_key",
    "ip_key",
    "cache_ip_key",
    "serviceexport_key",
    "cache_serviceexport_key",
    "endpointslice_key",
    "cache_endpointslice_key",
    "cluster_config_key",
    "synced_key",
    "apiserver_synced_keys",
    "kvstoremesh_synced_keys",
    "watch_prefix",
    "parse_key",
    "kind_for_key",
]

BASE = "cilium"
STATE = "cilium/state"
CACHE = "cilium/cache"
INIT_LOCK = "cilium/.initlock"
HEARTBEAT = "cilium/.heartbeat"
CLUSTER_CONFIG = "cilium/cluster-config"
SYNCED = "cilium/synced"

NODES = "cilium/state/nodes/v1"
SERVICES = "cilium/state/services/v1"
IDENTITIES = "cilium/state/identities/v1"
IDENTITIES_ID = "cilium/state/identities/v1/id"
IDENTITIES_VALUE = "cilium/state/identities/v1/value"
IDENTITIES_LOCKS = "cilium/state/identities/v1/locks"
IP = "cilium/state/ip/v1"
DEFAULT_ADDRESS_SPACE = "default"
IP_DEFAULT = "cilium/state/ip/v1/default"
SERVICE_EXPORTS = "cilium/state/serviceexports/v1"
ENDPOINT_SLICES = "cilium/state/endpointslices/v1"

CACHE_NODES = "cilium/cache/nodes/v1"
CACHE_SERVICES = "cilium/cache/services/v1"
CACHE_IDENTITIES = "cilium/cache/identities/v1"
CACHE_IP = "cilium/cache/ip/v1"
CACHE_SERVICE_EXPORTS = "cilium/cache/serviceexports/v1"
CACHE_ENDPOINT_SLICES = "cilium/cache/endpointslices/v1"

Kind = Literal[
    "node",
    "service",
    "identity",
    "identity-value",
    "ip",
    "serviceexport",
    "endpointslice",
    "clusterconfig",
    "synced",
    "heartbeat",
]

_MULTI_SLASH = re.compile("/{2,}")


def join_key(*parts: str) -> str:
    """Cilium's ``JoinKey``: join with ``/``, skipping empty parts, collapsing ``//`` and
    stripping a trailing ``/``."""
    joined = "/".join(p for p in parts if p)
    joined = _MULTI_SLASH.sub("/", joined)
    if len(joined) > 1:
        joined = joined.rstrip("/")
    return joined


def state_to_cache(prefix: str) -> str:
    """Cilium's ``StateToCachePrefix``: replace a leading ``cilium/state`` by ``cilium/cache``."""
    if prefix.startswith(STATE):
        return CACHE + prefix[len(STATE) :]
    return prefix


def _segment(value: str, what: str) -> str:
    if not value or "/" in value:
        raise WireError(f"{what} {value!r} must be non-empty and must not contain '/'")
    return value


def node_key(cluster: str, name: str) -> str:
    """``cilium/state/nodes/v1/<cluster>/<name>``."""
    return f"{NODES}/{_segment(cluster, 'cluster')}/{_segment(name, 'node name')}"


def cache_node_key(cluster: str, name: str) -> str:
    """``cilium/cache/nodes/v1/<cluster>/<name>``."""
    return f"{CACHE_NODES}/{_segment(cluster, 'cluster')}/{_segment(name, 'node name')}"


def service_key(cluster: str, namespace: str, name: str) -> str:
    """``cilium/state/services/v1/<cluster>/<namespace>/<name>``."""
    return f"{SERVICES}/{_segment(cluster, 'cluster')}/{_segment(namespace, 'namespace')}/" + _segment(
        name, "name"
    )


def cache_service_key(cluster: str, namespace: str, name: str) -> str:
    """``cilium/cache/services/v1/<cluster>/<namespace>/<name>``."""
    return state_to_cache(service_key(cluster, namespace, name))


def identity_key(identity: int) -> str:
    """``cilium/state/identities/v1/id/<id>``."""
    return f"{IDENTITIES_ID}/{int(identity)}"


def identity_cache_key(cluster: str, identity: int) -> str:
    """``cilium/cache/identities/v1/<cluster>/id/<id>``."""
    return f"{CACHE_IDENTITIES}/{_segment(cluster, 'cluster')}/id/{int(identity)}"


def identity_value_key(labels: str, node_suffix: str) -> str:
    """``cilium/state/identities/v1/value/<labels>/<node-suffix>`` (kvstore identity mode)."""
    return f"{IDENTITIES_VALUE}/{labels}/{node_suffix}"


def ip_key(prefix: str) -> str:
    """``cilium/state/ip/v1/default/<ip>`` where ``prefix`` is ``IPIdentityPair.prefix_string()``."""
    if not prefix:
        raise WireError("IP prefix must be non-empty")
    return f"{IP_DEFAULT}/{prefix}"


def cache_ip_key(cluster: str, prefix: str) -> str:
    """``cilium/cache/ip/v1/<cluster>/<ip>`` (KVStoreMesh drops the ``default`` segment)."""
    if not prefix:
        raise WireError("IP prefix must be non-empty")
    return f"{CACHE_IP}/{_segment(cluster, 'cluster')}/{prefix}"


def serviceexport_key(cluster: str, namespace: str, name: str) -> str:
    """``cilium/state/serviceexports/v1/<cluster>/<namespace>/<name>``."""
    return f"{SERVICE_EXPORTS}/{_segment(cluster, 'cluster')}/{_segment(namespace, 'namespace')}/" + _segment(
        name, "name"
    )


def cache_serviceexport_key(cluster: str, namespace: str, name: str) -> str:
    """``cilium/cache/serviceexports/v1/<cluster>/<namespace>/<name>``."""
    return state_to_cache(serviceexport_key(cluster, namespace, name))


def endpointslice_key(cluster: str, namespace: str, name: str) -> str:
    """``cilium/state/endpointslices/v1/<cluster>/<namespace>/<name>``."""
    return f"{ENDPOINT_SLICES}/{_segment(cluster, 'cluster')}/{_segment(namespace, 'namespace')}/" + _segment(
        name, "name"
    )


def cache_endpointslice_key(cluster: str, namespace: str, name: str) -> str:
    """``cilium/cache/endpointslices/v1/<cluster>/<namespace>/<name>``."""
    return state_to_cache(endpointslice_key(cluster, namespace, name))


def cluster_config_key(cluster: str) -> str:
    """``cilium/cluster-config/<cluster>``."""
    return f"{CLUSTER_CONFIG}/{_segment(cluster, 'cluster')}"


def synced_key(cluster: str, prefix: str) -> str:
    """The synced canary ``JoinKey("cilium/synced", cluster, prefix)``."""
    return join_key(SYNCED, _segment(cluster, "cluster"), prefix)


_APISERVER_SYNCED = (NODES, SERVICES, IDENTITIES, IP, SERVICE_EXPORTS)


def apiserver_synced_keys(cluster: str, *, endpointslices: bool = False) -> list[str]:
    """The canaries the clustermesh-apiserver writes for its own ``cluster`` (reference §1.4):
    ``cilium/synced/<c>/cilium/state/{nodes,services,identities,ip,serviceexports}/v1`` (plus
    endpointslices when that export is enabled)."""
    prefixes = list(_APISERVER_SYNCED)
    if endpointslices:
        prefixes.append(ENDPOINT_SLICES)
    return [synced_key(cluster, p) for p in prefixes]


def kvstoremesh_synced_keys(
    remote: str, *, serviceexports: bool = False, endpointslices: bool = False
) -> list[str]:
    """The canaries KVStoreMesh writes into the local etcd for a ``remote`` cluster, e.g.
    ``cilium/synced/<r>/cilium/cache/nodes/v1``. Serviceexports are mirrored only when the
    remote's ``serviceExportsEnabled`` is set, endpointslices only when exported."""
    prefixes = [NODES, SERVICES, IDENTITIES, IP]
    if serviceexports:
        prefixes.append(SERVICE_EXPORTS)
    if endpointslices:
        prefixes.append(ENDPOINT_SLICES)
    return [synced_key(remote, state_to_cache(p)) for p in prefixes]


_STATE_PREFIX_OF: dict[str, str] = {
    "node": NODES,
    "service": SERVICES,
    "serviceexport": SERVICE_EXPORTS,
    "endpointslice": ENDPOINT_SLICES,
}


def watch_prefix(kind: Kind, cluster: str, *, cached: bool = False) -> str:
    """The prefix (with trailing ``/``) to list-watch for one remote ``cluster``'s ``kind``
    entries, in the state layout (direct connection) or the cache layout (via KVStoreMesh)."""
    _segment(cluster, "cluster")
    if kind == "identity":
        return f"{CACHE_IDENTITIES}/{cluster}/id/" if cached else f"{IDENTITIES_ID}/"
    if kind == "ip":
        return f"{CACHE_IP}/{cluster}/" if cached else f"{IP_DEFAULT}/"
    if kind == "synced":
        return f"{SYNCED}/{cluster}/"
    if kind == "clusterconfig":
        return f"{CLUSTER_CONFIG}/{cluster}"
    try:
        base = _STATE_PREFIX_OF[kind]
    except KeyError:
        raise WireError(f"no watch prefix for kind {kind!r}") from None
    return f"{state_to_cache(base) if cached else base}/{cluster}/"


class KeyInfo(NamedTuple):
    """A key split into its parts.

    ``suffix`` is what the record must match: the node name, ``namespace/name``, the IP prefix
    string, the numeric identity, or for canaries the synced prefix. ``cluster`` is ``None`` where
    the state layout has no cluster segment (identities, ip).
    """

    kind: Kind
    cached: bool
    cluster: str | None
    suffix: str


def _split(rest: str, parts: int, key: str) -> list[str]:
    pieces = rest.split("/")
    if len(pieces) != parts or not all(pieces):
        raise WireError(f"expected {parts} non-empty segments after the prefix", key=key)
    return pieces


def parse_key(key: str) -> KeyInfo:
    """Split a ClusterMesh key into :class:`KeyInfo`; raise :class:`WireError` if it is not one."""
    if key == HEARTBEAT:
        return KeyInfo("heartbeat", False, None, "")
    if key.startswith(CLUSTER_CONFIG + "/"):
        (cluster,) = _split(key[len(CLUSTER_CONFIG) + 1 :], 1, key)
        return KeyInfo("clusterconfig", False, cluster, cluster)
    if key.startswith(SYNCED + "/"):
        cluster, _, prefix = key[len(SYNCED) + 1 :].partition("/")
        if not cluster or not prefix:
            raise WireError("synced canary key needs a cluster and a prefix", key=key)
        return KeyInfo("synced", False, cluster, prefix)
    if key.startswith(STATE + "/"):
        cached, rest = False, key[len(STATE) + 1 :]
    elif key.startswith(CACHE + "/"):
        cached, rest = True, key[len(CACHE) + 1 :]
    else:
        raise WireError("not a ClusterMesh key (expected cilium/state/, cilium/cache/, ...)", key=key)
    type_name, _, rest = rest.partition("/")
    version, _, rest = rest.partition("/")
    if version != "v1":
        raise WireError(f"unknown version {version!r}", key=key)
    if type_name == "nodes":
        cluster, name = _split(rest, 2, key)
        return KeyInfo("node", cached, cluster, name)
    if type_name in ("services", "serviceexports", "endpointslices"):
        cluster, namespace, name = _split(rest, 3, key)
        kind: Kind = "endpointslice"
        if type_name == "services":
            kind = "service"
        elif type_name == "serviceexports":
            kind = "serviceexport"
        return KeyInfo(kind, cached, cluster, f"{namespace}/{name}")
    if type_name == "identities":
        scope: str | None = None
        if cached:
            scope, _, rest = rest.partition("/")
            if not scope:
                raise WireError("missing cluster segment", key=key)
        sub, _, ident = rest.partition("/")
        if sub == "id":
            if not ident.isdigit():
                raise WireError(f"identity {ident!r} is not a decimal number", key=key)
            return KeyInfo("identity", cached, scope, ident)
        if sub == "value" and ident:
            return KeyInfo("identity-value", cached, scope, ident)
        raise WireError("expected identities/v1/id/<id> or identities/v1/value/...", key=key)
    if type_name == "ip":
        space, _, prefix = rest.partition("/")
        if not space or not prefix:
            raise WireError("expected ip/v1/<default|cluster>/<ip>", key=key)
        if cached:
            return KeyInfo("ip", True, space, prefix)
        if space != DEFAULT_ADDRESS_SPACE:
            raise WireError(f"unexpected address space {space!r} (Cilium uses 'default')", key=key)
        return KeyInfo("ip", False, None, prefix)
    raise WireError(f"unknown key type {type_name!r}", key=key)


def kind_for_key(key: str) -> Kind:
    """The record kind stored under ``key`` (see :func:`parse_key`)."""
    return parse_key(key).kind
