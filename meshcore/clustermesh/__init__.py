"""Being connected to remote clusters: config directory, connections, cluster config, heartbeat,
cluster IDs and status; shared by the agent and KVStoreMesh (see :mod:`.types`).

- :mod:`.types`: the contract (``RemoteWork``, ``WorkFactory``, ``RemoteClusterStatus``);
- :mod:`.configdir`: the config directory watcher (one etcd YAML per remote cluster);
- :mod:`.remote`: ``RemoteCluster`` (one connection) and ``ClusterMesh`` (all of them).
"""

from meshcore.clustermesh.configdir import ConfigDirWatcher, RemoteConfigFile
from meshcore.clustermesh.remote import ClusterMesh, DrainWaiter, ReadOnlyKVStore, RemoteCluster
from meshcore.clustermesh.types import (
    RemoteClusterConfigStatus,
    RemoteClusterStatus,
    RemoteCounts,
    RemoteWork,
    WorkFactory,
)

__all__ = [
    "ClusterMesh",
    "ConfigDirWatcher",
    "DrainWaiter",
    "ReadOnlyKVStore",
    "RemoteCluster",
    "RemoteClusterConfigStatus",
    "RemoteClusterStatus",
    "RemoteConfigFile",
    "RemoteCounts",
    "RemoteWork",
    "WorkFactory",
]
