"""Installing clustermesh into a cluster and removing it: ``clustermesh enable`` / ``disable``.

- :mod:`~clustermesh_cli.enable.resolve` (pure): the install options from flags, cluster, platform;
- :mod:`~clustermesh_cli.enable.certs`: the CA and certificates, reused while still good;
- :mod:`~clustermesh_cli.enable.diff` (pure): does a live object hold what is wanted, the update;
- :mod:`~clustermesh_cli.enable.readiness` (pure): what keeps the install from being ready;
- :mod:`~clustermesh_cli.enable.kube` and :mod:`~clustermesh_cli.enable.apply` (I/O): the
  official Kubernetes client, applying and waiting;
- :mod:`~clustermesh_cli.enable.run`: :func:`run_enable` / :func:`run_disable`;
- :mod:`~clustermesh_cli.enable.commands`: the click commands.
"""

from clustermesh_cli.enable.apply import Applied, WaitTimeout
from clustermesh_cli.enable.commands import disable, enable, parse_duration
from clustermesh_cli.enable.run import EnableError, EnableResult, run_disable, run_enable

__all__ = ["Applied", "EnableError", "EnableResult", "WaitTimeout", "disable", "enable", "parse_duration",
           "run_disable", "run_enable"]
