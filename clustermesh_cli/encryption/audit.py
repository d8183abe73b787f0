"""``clustermesh encryption audit``: capture on every node's underlay at once and prove (or refute)
that no pod traffic crosses between nodes in plaintext.

Discovery (:mod:`~clustermesh_cli.encryption.discover`) reads every context's nodes and agent pods;
the captures (:mod:`~clustermesh_cli.encryption.execcapture`) run in the agent pods; the verdict is
:func:`encryption.audit.report.merge`'s.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import click
import websocket
from kubernetes import config
from kubernetes.config.config_exception import ConfigException

from clustermesh_cli.enable.kube import KubeError
from clustermesh_cli.encryption.discover import AGENT_SELECTOR, ClusterObjects, Target, plan_targets, read_cluster
from clustermesh_cli.encryption.execcapture import CaptureExec, exec_capture, run_captures
from clustermesh_cli.install import names
from clustermesh_cli.kubecontext import context_configuration
from encryption.audit.classify import CILIUM_WIREGUARD_PORT
from encryption.audit.report import NodeCapture, merge
from meshcore.errors import ConfigError

__all__ = ["EXIT_FAIL", "EXIT_PASS", "audit", "current_context", "run_audit"]

EXIT_PASS: Final = 0
EXIT_FAIL: Final = 1
_HANDSHAKE_TIMEOUT: Final = 15.0
Read = Callable[[str], ClusterObjects]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def current_context(kubeconfig: Path | None) -> str:
    """The kubeconfig's current context; raises :class:`ConfigError` when there is none."""
    try:
        _, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig) if kubeconfig else None)
    except (ConfigException, OSError, ValueError) as err:
        raise ConfigError(f"no --context given and the kubeconfig has no current context: {err}") from None
    if not active or not active.get("name"):
        raise ConfigError("no --context given and the kubeconfig has no current context")
    return str(active["name"])


def run_audit(contexts: Sequence[str], *, duration: float, output: str = "text", require_traffic: bool = False,
              kubeconfig: Path | None = None, namespace: str = "kube-system", selector: str = AGENT_SELECTOR,
              container: str = names.AGENT_CONTAINER, wireguard_ports: Sequence[int] = (), read: Read | None = None,
              run: CaptureExec | None = None, echo: Callable[[str], None] = _stderr) -> int:
    """Audit the nodes of ``contexts``; prints the report and returns the exit status."""
    if read is None:
        def read(context: str) -> ClusterObjects:
            return read_cluster(context, kubeconfig=kubeconfig, namespace=namespace, selector=selector)

    clusters = []
    for context in contexts:
        try:
            clusters.append(read(context))
        except KubeError as err:
            echo(f"Error: {err}")
            return EXIT_FAIL
    try:
        plan, targets = plan_targets(clusters, wireguard_ports=wireguard_ports, selector=selector)
    except ValueError as err:
        echo(f"Error: the nodes' addresses cannot be used: {err}")
        return EXIT_FAIL
    if not targets:
        echo(f"Error: no nodes in {', '.join(contexts)}: nothing to audit")
        return EXIT_FAIL
    if run is None:
        websocket.setdefaulttimeout(_HANDSHAKE_TIMEOUT)  # the WebSocket client has no connect timeout of its own
        configurations = {c: context_configuration(c, kubeconfig) for c in contexts}

        def run(target: Target, command: list[str], timeout: float) -> NodeCapture:
            return exec_capture(configurations[target.context], target, command, timeout, container=container)

    ready = [t for t in targets if t.pod is not None]
    echo(f"Capturing on {len(ready)} of {len(targets)} node(s) for {duration:g}s ...")
    captures = run_captures(targets, plan, duration, run)
    report = merge(captures, require_traffic=require_traffic, duration=duration)
    if output == "json":
        print(json.dumps(report.to_json(), indent=2), flush=True)
    else:
        print(report.render_text(), flush=True)
    return EXIT_PASS if report.passed else EXIT_FAIL


@click.command("audit")
@click.option("--context", "contexts", multiple=True,
              help="Kubeconfig context of a cluster to audit; repeat it for every cluster of the mesh "
              "(default: the current context).")
@click.option("--kubeconfig", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The kubeconfig holding the contexts (default: $KUBECONFIG or ~/.kube/config).")
@click.option("--duration", type=click.FloatRange(1, 600), default=10.0, show_default=True,
              help="Seconds every node captures for (1 to 600); all nodes capture at the same time.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: a table per node pair and the first plaintext flows; json: the whole report.")
@click.option("--require-traffic", is_flag=True,
              help="Fail when no packet crossed between nodes at all (else only a warning).")
@click.option("-n", "--namespace", default="kube-system", show_default=True,
              help="Namespace of the agent pods the captures run in.")
@click.option("--selector", default=AGENT_SELECTOR, show_default=True, help="Label selector of the agent pods.")
@click.option("--container", default=names.AGENT_CONTAINER, show_default=True,
              help="Container of the agent pod the capture runs in (it needs the host network and CAP_NET_RAW).")
@click.option("--wireguard-port", "wireguard_ports", type=click.IntRange(1, 65535), multiple=True,
              help=f"A WireGuard UDP port besides Cilium's {CILIUM_WIREGUARD_PORT} (repeatable).")
def audit(contexts: tuple[str, ...], kubeconfig: Path | None, duration: float, output: str, require_traffic: bool,
          namespace: str, selector: str, container: str, wireguard_ports: tuple[int, ...]) -> None:
    """Prove from the wire that no pod traffic crosses between nodes in plaintext.

    Every node captures on its underlay (the interface holding its InternalIP) for --duration
    seconds, inside its agent pod, and classifies each packet between mesh endpoints (node IPs
    and pod CIDRs of every given cluster, from the Kubernetes API): WireGuard, IPsec (ESP,
    ESP-in-UDP), plaintext pod traffic (plain IP to or from a pod CIDR, or VXLAN/Geneve whose
    inner packet is), or plaintext node traffic (not a failure).

    \b
      clustermesh encryption audit --context lab-c1 --context lab-c2 --duration 20
      clustermesh encryption audit -o json --require-traffic

    \b
    Exit status: 0 when no plaintext pod packet was seen on any node, 1 when one was, a node could
    not be audited (no agent pod, capture failed) or a cluster's API does not answer, 2 on a usage
    error.
    """
    try:
        chosen = list(dict.fromkeys(contexts)) or [current_context(kubeconfig)]
    except ConfigError as err:
        raise click.UsageError(str(err)) from None
    sys.exit(run_audit(chosen, duration=duration, output=output, require_traffic=require_traffic,
                       kubeconfig=kubeconfig, namespace=namespace, selector=selector, container=container,
                       wireguard_ports=wireguard_ports))
