"""Joining clusters into a mesh: ``clustermesh connect`` / ``clustermesh disconnect``.

- :mod:`~clustermesh_cli.mesh.peers` (pure): the peer entries of the ``cilium-clustermesh``
  Secret and the plans, with the refusals;
- :mod:`~clustermesh_cli.mesh.access` (pure): a cluster's mesh facts from its objects;
- :mod:`~clustermesh_cli.mesh.kube` (I/O): reading and writing them with the official client;
- :mod:`~clustermesh_cli.mesh.commands`: the click commands.
"""

from clustermesh_cli.mesh.access import MeshAccessError
from clustermesh_cli.mesh.commands import connect, disconnect, run_connect, run_disconnect
from clustermesh_cli.mesh.peers import (
    ClusterInfo,
    ConnectPlan,
    ConnectRefused,
    PeerAccess,
    SecretChange,
    plan_connect,
    plan_disconnect,
)

__all__ = [
    "ClusterInfo",
    "ConnectPlan",
    "ConnectRefused",
    "MeshAccessError",
    "PeerAccess",
    "SecretChange",
    "connect",
    "disconnect",
    "plan_connect",
    "plan_disconnect",
    "run_connect",
    "run_disconnect",
]
