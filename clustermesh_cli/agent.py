"""``clustermesh agent ...``: inspect the local agent through its unix socket."""

from __future__ import annotations

import json
from pathlib import Path

import click

from clustermesh_cli.status import agent_get, agent_post, socket_option

__all__ = ["ROTATE_PATH", "agent"]

ROTATE_PATH = "/v1/encryption/rotate"


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


@agent.group("encryption")
def agent_encryption() -> None:
    """The node's transparent encryption (WireGuard), through its agent."""


@agent_encryption.command("rotate")
@socket_option
@click.option("--request-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Seconds the agent may take to answer.")
def agent_encryption_rotate(agent_socket: Path, request_timeout: float) -> None:
    """Ask this node's agent to rotate its WireGuard key; print what it rotates to (JSON).

    \b
    The agent stages a next key and rotates to it make-before-break (see `clustermesh
    encryption rotate --help`, which runs this in every chosen node's agent pod and waits):
      {"node": ..., "public-key": <current>, "next-public-key": <next>, "phase": ...}

    \b
    Exit status: 0 once the rotation is staged; 1 when the agent cannot be reached or cannot
    rotate now (its reason on stderr: WireGuard off or not programmed yet, ...).
    """
    doc = agent_post(agent_socket, ROTATE_PATH, timeout=request_timeout)
    click.echo(json.dumps(doc, indent=2))
