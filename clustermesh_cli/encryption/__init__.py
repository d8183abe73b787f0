"""``clustermesh encryption``: transparent encryption between nodes (WireGuard, IPsec).

- :mod:`~clustermesh_cli.encryption.audit`: ``clustermesh encryption audit``, captures on every
  node's underlay and fails on plaintext pod traffic;
- :mod:`~clustermesh_cli.encryption.status`: ``clustermesh encryption status``, every node's
  WireGuard state from its agent (:mod:`~clustermesh_cli.encryption.statusmodel`: the checks);
- :mod:`~clustermesh_cli.encryption.rotate`: ``clustermesh encryption rotate``, WireGuard key
  rotation of chosen nodes (make-before-break), waiting until it is over;
- :mod:`~clustermesh_cli.encryption.discover`: nodes, addresses and agent pods of each context;
- :mod:`~clustermesh_cli.encryption.execcapture`: the captures, exec'd in the agent pods.
"""

from __future__ import annotations

import click

from clustermesh_cli.encryption.audit import audit
from clustermesh_cli.encryption.rotate import encryption_rotate
from clustermesh_cli.encryption.status import encryption_status
from meshcore.cliopts import CONTEXT_SETTINGS

__all__ = ["encryption"]


@click.group("encryption", context_settings=CONTEXT_SETTINGS)
def encryption() -> None:
    """Check the transparent encryption between nodes, and rotate its keys."""


encryption.add_command(audit)
encryption.add_command(encryption_status)
encryption.add_command(encryption_rotate)
