"""Entry point of the ``clustermesh`` command-line tool.

Other modules add their command groups with ``cli.add_command(...)``. Run it as the installed
``clustermesh`` script or as ``python -m clustermesh_cli.main``.
"""

from __future__ import annotations

import click

from clustermesh_cli.agent import agent
from clustermesh_cli.bpf import bpf
from clustermesh_cli.certs import certs
from clustermesh_cli.demo import demo
from clustermesh_cli.enable import disable, enable
from clustermesh_cli.encryption import encryption
from clustermesh_cli.lab import lab
from clustermesh_cli.mesh import connect, disconnect
from clustermesh_cli.status import status
from clustermesh_cli.wire import wire
from meshcore.cliopts import CONTEXT_SETTINGS, log_options
from meshcore.log import configure as configure_logging

__all__ = ["cli", "CONTEXT_SETTINGS"]


@click.group(name="clustermesh", context_settings=CONTEXT_SETTINGS)
@log_options(default="warning")
def cli(log_level: str, log_json: bool) -> None:
    """Run and inspect a Cilium-ClusterMesh-compatible mesh.

    Each cluster publishes its nodes, services, identities and pod IPs into an etcd that
    the other clusters read. The keys and values must be byte-for-byte what Cilium
    writes, so that real Cilium agents and this project can share one mesh.

    \b
    Join clusters, as with cilium-cli's `cilium clustermesh ...`:
      clustermesh enable --context C1 --cluster-name c1 --cluster-id 1    install into each cluster
      clustermesh enable --context C2 --cluster-name c2 --cluster-id 2
      clustermesh connect --context C1 --destination-context C2          peer them, both ways
      clustermesh disconnect --context C1 --destination-context C2       and apart again
      clustermesh disable --context C1                                   remove the install

    \b
    Start here:
      clustermesh lab up               whole clusters on this machine, meshed (kubectl works on them)
      clustermesh wire --help          what the kvstore values look like
      clustermesh wire encode -h       turn a JSON value into Cilium's exact bytes
      clustermesh wire decode -h       check a value read from etcd, pretty-printed
      clustermesh demo                 the product tour: a lab, enable, connect, traffic, policy
      clustermesh demo kvstore         two clusters' etcds, one exporting, one reading

    Exit status: 0 on success, 1 when the input is invalid, 2 on a usage error.
    """
    configure_logging(level=log_level, json=log_json)


cli.add_command(enable)
cli.add_command(disable)
cli.add_command(connect)
cli.add_command(disconnect)
cli.add_command(wire)
cli.add_command(demo)
cli.add_command(certs)
cli.add_command(status)
cli.add_command(agent)
cli.add_command(bpf)
cli.add_command(lab)
cli.add_command(encryption)


if __name__ == "__main__":
    cli(prog_name="clustermesh")
