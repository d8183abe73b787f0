"""``clustermesh agent ...``: inspect the local agent through its unix socket."""

from __future__ import annotations

import json
from pathlib import Path

import click

from clustermesh_cli.status import agent_get, socket_option

__all__ = ["agent"]


@click.group("agent")
def agent() -> None:
    """Inspect the node's clustermesh-agent (its local API socket)."""


@agent.command("dump")
@socket_option
@click.option("-o", "--output", type=click.Choice(["json", "summary"]), default="json", show_default=True,
              help="json: the whole desired state; summary: how many entries of each kind.")
def dump(agent_socket: Path, output: str) -> None:
    """Print the desired datapath state the agent computed from the remote clusters.

    \b
    Parts: ipcache (prefix -> identity, tunnel endpoint, encrypt key, cluster), routes (pod CIDR ->
    node), wireguard-peers, services (remote backends per namespace/name), identities (id -> labels).
    """
    desired = agent_get(agent_socket, "/v1/desired")
    if output == "json":
        click.echo(json.dumps(desired, indent=2))
        return
    for part in ("ipcache", "routes", "wireguard-peers", "services", "identities"):
        click.echo(f"{part}: {len(desired.get(part) or [])}")
    click.echo(f"conflicts: {desired.get('conflicts', 0)}")
