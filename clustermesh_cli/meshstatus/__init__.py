"""``clustermesh status --context C``: the mesh of one cluster as cilium-cli's
``cilium clustermesh status`` shows it.

- :mod:`~clustermesh_cli.meshstatus.model` (pure): :func:`summarise` objects and agent status
  documents into a :class:`MeshStatus`, with the blocking reasons;
- :mod:`~clustermesh_cli.meshstatus.render` (pure): text and table;
- :mod:`~clustermesh_cli.meshstatus.kube` (I/O): the official Kubernetes client, exec into agents;
- :mod:`~clustermesh_cli.meshstatus.run`: show once, or ``--wait``.
"""

from clustermesh_cli.meshstatus.model import AgentProbe, MeshStatus, summarise
from clustermesh_cli.meshstatus.run import run_status

__all__ = ["AgentProbe", "MeshStatus", "run_status", "summarise"]
