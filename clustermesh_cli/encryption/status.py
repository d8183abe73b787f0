"""``clustermesh encryption status``: ask every node's agent of every given context for its
encryption status and show it mesh-wide (:mod:`~clustermesh_cli.encryption.statusmodel`).

The nodes and agent pods of each context are read as the audit reads them
(:func:`~clustermesh_cli.encryption.discover.read_cluster`); each agent is asked as ``clustermesh
status --context`` asks it (:func:`clustermesh_cli.meshstatus.kube.exec_agent_status`: pods/exec
into its agent container running ``clustermesh status -o json --agent-socket <its socket>``, which
prints the agent's whole ``GET /v1/status``), all at once.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import click
import websocket

from clustermesh_cli.enable.kube import KubeError
from clustermesh_cli.encryption.audit import current_context
from clustermesh_cli.encryption.discover import AGENT_SELECTOR, ClusterObjects, Target, plan_targets, read_cluster
from clustermesh_cli.encryption.statusmodel import MeshEncryption, NodeProbe, render_text, summarise
from clustermesh_cli.kubecontext import context_configuration
from clustermesh_cli.meshstatus.kube import exec_agent_status
from meshcore.errors import ConfigError

__all__ = ["EXIT_FAIL", "EXIT_OK", "AgentAsk", "collect", "encryption_status", "run_encryption_status"]

EXIT_OK: Final = 0
EXIT_FAIL: Final = 1
PARALLEL: Final = 32
Read = Callable[[str], ClusterObjects]
#: Asks one node's agent: (target, timeout) -> its status document, or raises/returns the error.
AgentAsk = Callable[[Target, float], tuple[Mapping[str, Any] | None, str | None]]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _pod_name(target: Target) -> str | None:
    md = (target.pod or {}).get("metadata") or {}
    return f"{md.get('namespace')}/{md.get('name')}" if md.get("name") else None


def collect(contexts: Sequence[str], *, read: Read, ask: AgentAsk, timeout: float) -> MeshEncryption:
    """Read every context, ask every node's agent (in parallel), summarise (see the module docstring)."""
    clusters, problems = [], []
    for context in contexts:
        try:
            clusters.append(read(context))
        except KubeError as err:
            problems.append(str(err))
    try:
        _, targets = plan_targets(clusters, selector=AGENT_SELECTOR)
    except ValueError as err:
        return summarise(contexts, [], [*problems, f"the nodes' addresses cannot be used: {err}"])

    def probe(target: Target) -> NodeProbe:
        if target.pod is None:
            return NodeProbe(target.node, target.context, None, error=target.problem or "no agent pod")
        status, error = ask(target, timeout)
        return NodeProbe(target.node, target.context, _pod_name(target), status=status, error=error)

    probes: list[NodeProbe] = []
    if targets:
        with ThreadPoolExecutor(max_workers=min(PARALLEL, len(targets)), thread_name_prefix="enc-status") as pool:
            probes = list(pool.map(probe, targets))
    return summarise(contexts, probes, problems)


def run_encryption_status(contexts: Sequence[str], *, output: str = "text", kubeconfig: Path | None = None,
                          namespace: str = "kube-system", timeout: float = 10.0, read: Read | None = None,
                          ask: AgentAsk | None = None, echo: Callable[[str], None] = _stderr) -> int:
    """Print the mesh's encryption status of ``contexts``; the exit status."""
    if read is None:
        def read(context: str) -> ClusterObjects:
            return read_cluster(context, kubeconfig=kubeconfig, namespace=namespace)

    if ask is None:
        websocket.setdefaulttimeout(max(timeout, 1.0))  # the WebSocket client has no connect timeout of its own
        configurations: dict[str, Any] = {}
        for context in contexts:
            try:
                configurations[context] = context_configuration(context, kubeconfig)
            except ConfigError as err:
                echo(f"Error: {err}")
                return EXIT_FAIL

        def ask(target: Target, limit: float) -> tuple[Mapping[str, Any] | None, str | None]:
            probe = exec_agent_status(configurations[target.context], target.pod or {}, limit)
            return probe.status, probe.error

    mesh = collect(contexts, read=read, ask=ask, timeout=timeout)
    if output == "json":
        print(json.dumps(mesh.to_json(), indent=2), flush=True)
    else:
        print(render_text(mesh), flush=True)
    return EXIT_OK if mesh.passed else EXIT_FAIL


@click.command("status")
@click.option("--context", "contexts", multiple=True,
              help="Kubeconfig context of a cluster of the mesh; repeat it for every cluster (default: the current "
              "context). Peers are checked against every node given, so give them all.")
@click.option("--kubeconfig", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The kubeconfig holding the contexts (default: $KUBECONFIG or ~/.kube/config).")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: a block per node with its peers; json: everything, per node and peer.")
@click.option("-n", "--namespace", default="kube-system", show_default=True, help="Namespace of the agent pods.")
@click.option("--request-timeout", "timeout", type=click.FloatRange(1, 120), default=10.0, show_default=True,
              help="Seconds each agent may take to answer.")
def encryption_status(contexts: tuple[str, ...], kubeconfig: Path | None, output: str, namespace: str,
                      timeout: float) -> None:
    """Show the transparent encryption of every node of the mesh, as each node's agent sees it.

    Every node's agent is asked (pods/exec into its agent pod, running `clustermesh status -o json`
    on the agent's socket, as `clustermesh status --context` does) for the encryption section of
    its status. Per node:

    \b
      mode             wireguard, or off (--encryption none, or the node's
                       clustermesh.io/encryption=disabled label: a node being migrated)
      implementation   kernel WireGuard or userspace (wireguard-go, with its pid)
      device, public key, key age (of the key file) and rotations
      node encryption  Enabled / Disabled / OptedOut (host traffic too, Cilium's encrypt-node)
      strict mode      the CIDR inside which unencrypted pod traffic is dropped, or off

    \b
    and per peer: its node, endpoint, allowed IPs, latest handshake (age), bytes received and
    sent, and whether the device holds it as the agent wants it (in sync). Then the plaintext
    peers: mesh nodes without a WireGuard key, to which traffic is not encrypted (and, with
    strict mode, dropped).

    \b
    The nodes are checked against each other: a peer with a stale key, a node running
    WireGuard that another node neither peers with nor lists as plaintext, a peer whose
    encryption is off but still configured. Plaintext peers and nodes with encryption off
    are warnings. To prove what crosses the wire, use `clustermesh encryption audit`.

    \b
      clustermesh encryption status --context lab-c1 --context lab-c2
      clustermesh encryption status --context lab-c1 --context lab-c2 -o json

    \b
    Exit status: 0 when every node was reached and none has a problem; 1 when a node has an
    out-of-sync peer or another problem, or could not be reached (named in the output); 2 on a
    usage error.
    """
    try:
        chosen = list(dict.fromkeys(contexts)) or [current_context(kubeconfig)]
    except ConfigError as err:
        raise click.UsageError(str(err)) from None
    sys.exit(run_encryption_status(chosen, output=output, kubeconfig=kubeconfig, namespace=namespace,
                                   timeout=timeout))
