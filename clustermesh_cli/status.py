"""``clustermesh status``: the remote clusters as the local agent sees them.

Reads ``GET /v1/status`` from the agent's unix socket. The ``cluster-mesh.clusters[]`` records are
Cilium's ``RemoteCluster`` JSON, so the same rendering works on ``cilium-dbg status -o json``
output. Formats follow cilium-dbg (``summary``) and cilium-cli (errors naming what is not synced).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from clustermesh_cli.enable.commands import DURATION

__all__ = [
    "DEFAULT_AGENT_SOCKET",
    "AgentUnreachableError",
    "agent_get",
    "agent_post",
    "cluster_error",
    "render_summary",
    "render_table",
    "status",
    "socket_option",
]

DEFAULT_AGENT_SOCKET = Path(os.environ.get("CLUSTERMESH_AGENT_SOCKET", "/var/run/clustermesh-agent/agent.sock"))
_SYNC_ORDER = ("nodes", "endpoints", "identities", "services")
_PIPE_WIDTH = 300


class AgentUnreachableError(click.ClickException):
    """The agent's socket is missing, refuses, or answered with an error."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def agent_get(socket_path: Path, path: str, *, timeout: float = 10.0) -> Any:
    """``GET path`` from the agent on ``socket_path``; the decoded JSON body.

    Raises :class:`AgentUnreachableError` with what to do when the agent cannot be asked."""
    body = agent_get_raw(socket_path, path, timeout=timeout)
    try:
        return json.loads(body)
    except ValueError as err:
        raise AgentUnreachableError(f"agent answered GET {path} with invalid JSON: {err}") from None


def agent_get_raw(socket_path: Path, path: str, *, timeout: float = 10.0) -> bytes:
    """``GET path`` from the agent on ``socket_path``; the body as sent (e.g. ``/metrics``)."""
    code, body = _agent_request(socket_path, "GET", path, timeout)
    if code != 200:
        raise AgentUnreachableError(f"agent answered {code} to GET {path}: {body[:200]!r}")
    return body


def agent_post(socket_path: Path, path: str, *, timeout: float = 10.0) -> Any:
    """``POST path`` (no body) to the agent on ``socket_path``; the decoded JSON answer.

    Raises :class:`AgentUnreachableError` when the agent cannot be asked, or with the agent's own
    ``{"error": ...}`` message when it refused."""
    code, body = _agent_request(socket_path, "POST", path, timeout)
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if code == 200 and doc is not None:
        return doc
    if isinstance(doc, dict) and doc.get("error"):
        raise AgentUnreachableError(str(doc["error"]))
    if code == 404:
        raise AgentUnreachableError(f"the agent on {socket_path} has no POST {path}: it is older than this CLI; "
                                    "upgrade it")
    raise AgentUnreachableError(f"agent answered {code} to POST {path}: {body[:200]!r}")


def _agent_request(socket_path: Path, method: str, path: str, timeout: float) -> tuple[int, bytes]:
    """One request to the agent: its status and body (raises :class:`AgentUnreachableError`)."""
    if not socket_path.exists():
        raise AgentUnreachableError(
            f"agent socket {socket_path} does not exist: is clustermesh-agent running on this node? "
            "(start it, or pass --agent-socket / set CLUSTERMESH_AGENT_SOCKET)"
        )
    conn = _UnixHTTPConnection(socket_path, timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        body = resp.read()
    except ConnectionRefusedError:
        raise AgentUnreachableError(
            f"agent socket {socket_path} refused the connection: no agent is listening (a stale socket "
            "left by a stopped agent?)"
        ) from None
    except PermissionError:
        raise AgentUnreachableError(
            f"no permission to use {socket_path} (mode 0600): run as the agent's user or root"
        ) from None
    except (OSError, http.client.HTTPException) as err:
        raise AgentUnreachableError(f"agent socket {socket_path}: {err or type(err).__name__}") from None
    finally:
        conn.close()
    return resp.status, body


def socket_option(func: Any) -> Any:
    """The ``--agent-socket`` option shared by the commands that talk to the agent."""
    return click.option(
        "--agent-socket",
        type=click.Path(dir_okay=False, path_type=Path),
        default=DEFAULT_AGENT_SOCKET,
        show_default=True,
        help="Unix socket of the local agent (env CLUSTERMESH_AGENT_SOCKET).",
    )(func)


# ---- rendering (pure) ----


def _clusters(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    mesh = doc.get("cluster-mesh") or {}
    return list(mesh.get("clusters") or [])


def cluster_error(cluster: Mapping[str, Any]) -> str | None:
    """Why a cluster is not ready, as cilium-cli's ``remoteClusterStatusToError``; None if ready."""
    if not cluster.get("connected"):
        return str(cluster.get("status") or "not connected")
    config = cluster.get("config") or {}
    if config.get("required", True) and not config.get("retrieved"):
        return "remote cluster configuration retrieval in progress"
    synced = cluster.get("synced") or {}
    pending = [kind for kind in _SYNC_ORDER if not synced.get(kind)]
    if pending:
        return f"synchronization in progress for {', '.join(pending)}"
    if not cluster.get("ready"):
        return str(cluster.get("status") or "not ready")
    return None


def _b(value: Any) -> str:
    return "true" if value else "false"


def _header(clusters: Sequence[Mapping[str, Any]]) -> str:
    ready = sum(1 for c in clusters if c.get("ready"))
    return f"ClusterMesh:   {ready}/{len(clusters)} remote clusters ready"


def render_summary(doc: Mapping[str, Any]) -> str:
    """cilium-dbg's ``ClusterMesh:`` block, for every cluster."""
    clusters = _clusters(doc)
    lines = [_header(clusters)]
    for c in clusters:
        state = "ready" if c.get("ready") else "not ready"
        lines.append(
            f"   {c.get('name')}: {state}, {c.get('num-nodes', 0)} nodes, {c.get('num-endpoints', 0)} endpoints, "
            f"{c.get('num-identities', 0)} identities, {c.get('num-shared-services', 0)} services, "
            f"{c.get('num-endpoint-slices', 0)} endpoint slices, {c.get('num-service-exports', 0)} MCS-API service "
            f"exports, {c.get('num-failures', 0)} reconnections (last: {c.get('last-failure') or 'never'})"
        )
        config = c.get("config") or {}
        lines.append(
            f"   └  remote configuration: expected={_b(config.get('required', True))}, "
            f"retrieved={_b(config.get('retrieved'))}, cluster-id={config.get('cluster-id', 0)}, "
            f"kvstoremesh={_b(config.get('kvstoremesh'))}, sync-canaries={_b(config.get('sync-canaries'))}"
        )
        synced = c.get("synced") or {}
        lines.append(
            "   └  synchronization status: " + ", ".join(f"{k}={_b(synced.get(k))}" for k in _SYNC_ORDER)
        )
        error = cluster_error(c)
        if error is not None:
            lines.append(f"   └  error: {error}")
    return "\n".join(lines)


def render_table(doc: Mapping[str, Any]) -> Table:
    """One row per remote cluster."""
    clusters = _clusters(doc)
    table = Table(title=_header(clusters), title_justify="left")
    for column in ("Cluster", "Ready", "Connected", "Nodes", "Endpoints", "Identities", "Services",
                   "Synced", "Config", "Failures", "Last failure", "Status"):
        table.add_column(column, overflow="fold")
    for c in clusters:
        synced = c.get("synced") or {}
        pending = [k for k in _SYNC_ORDER if not synced.get(k)]
        config = c.get("config") or {}
        table.add_row(
            str(c.get("name")),
            "yes" if c.get("ready") else "[red]no[/red]",
            "yes" if c.get("connected") else "[red]no[/red]",
            str(c.get("num-nodes", 0)),
            str(c.get("num-endpoints", 0)),
            str(c.get("num-identities", 0)),
            str(c.get("num-shared-services", 0)),
            "all" if not pending else "waiting: " + ", ".join(pending),
            f"cluster-id={config.get('cluster-id', 0)} kvstoremesh={_b(config.get('kvstoremesh'))} "
            f"sync-canaries={_b(config.get('sync-canaries'))}",
            str(c.get("num-failures", 0)),
            str(c.get("last-failure") or "never"),
            cluster_error(c) or str(c.get("status") or ""),
        )
    return table


def _not_ready(doc: Mapping[str, Any]) -> list[str]:
    return [f"{c.get('name')} ({cluster_error(c) or 'not ready'})" for c in _clusters(doc) if not c.get("ready")]


def _print(doc: Mapping[str, Any], output: str) -> None:
    if output == "json":
        click.echo(json.dumps(doc, indent=2))
    elif output == "table":
        # On a terminal, fit it; piped (scripts, CI logs), keep rows on one line.
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else _PIPE_WIDTH
        Console(width=width, soft_wrap=False).print(render_table(doc))
    else:
        click.echo(render_summary(doc))


def _given(ctx: click.Context, *params: str) -> list[str]:
    """The options among ``params`` set on the command line (not left at their defaults)."""
    out = []
    for name in params:
        source = ctx.get_parameter_source(name)
        if source is not None and source not in (click.core.ParameterSource.DEFAULT,
                                                 click.core.ParameterSource.DEFAULT_MAP):
            out.append("--" + name.replace("_", "-"))
    return out


@click.command("status")
@socket_option
@click.option("--context", default=None,
              help="Show the whole mesh of this cluster (kubeconfig context), as cilium-cli's `cilium clustermesh "
              "status`: the clustermesh-apiserver Deployment and Service, then every node's agent (read with "
              "kubectl-style exec) and its remote clusters. Without it: this node's agent, by --agent-socket.")
@click.option("--kubeconfig", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --context: the kubeconfig holding it (default: $KUBECONFIG or ~/.kube/config).")
@click.option("-n", "--namespace", default="kube-system", show_default=True,
              help="With --context: the namespace of the install.")
@click.option("-o", "--output", type=click.Choice(["summary", "table", "json"]), default="summary",
              show_default=True, help="summary: text (cilium-dbg's, or with --context cilium-cli's); table: one row "
              "per cluster (with --context: per agent and cluster); json: the whole record (the agent's status "
              "document; with --context the mesh status with every agent's RemoteCluster records).")
@click.option("--wait", is_flag=True, help="Poll until every remote cluster is ready (with --context: the Deployment "
              "available and every agent with every peer of the cilium-clustermesh Secret ready); exit 1 at the "
              "deadline, naming what is not ready.")
@click.option("--wait-duration", type=DURATION, default=None,
              help="How long --wait waits, as cilium-cli takes it (90s, 5m, 1m30s). Default: --timeout.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=300.0, show_default=True,
              help="Seconds --wait waits (--wait-duration overrides it).")
@click.option("--interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              help="Seconds between polls with --wait.")
@click.option("--request-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Seconds one answer of an agent may take (with --context: one agent's exec).")
@click.pass_context
def status(ctx: click.Context, agent_socket: Path, context: str | None, kubeconfig: Path | None, namespace: str,
           output: str, wait: bool, wait_duration: float | None, timeout: float, interval: float,
           request_timeout: float) -> None:
    """Show whether the agents are connected to, and synced with, every remote cluster.

    \b
    Without --context: this node's agent, through its unix socket (--agent-socket).
    With --context C: the cluster's whole mesh, as `cilium clustermesh status` shows it:
      clustermesh status --context kind-c1
      clustermesh status --context kind-c1 --wait --wait-duration 5m
      clustermesh status --context kind-c1 -o json

    \b
    Exit status: 0 once shown (with --wait: once all are ready), 1 when the agent (or the
    cluster's API) cannot be reached or --wait timed out (naming what is not ready), 2 on a
    usage error.
    """
    duration = wait_duration if wait_duration is not None else timeout
    if context is not None:
        if "--agent-socket" in _given(ctx, "agent_socket"):
            raise click.UsageError("--agent-socket reads one local agent; --context reads every agent of the "
                                   "cluster through its API: give one of them")
        from clustermesh_cli.meshstatus.run import run_status  # its imports are not needed in socket mode

        code = run_status(context, kubeconfig=kubeconfig, namespace=namespace, output=output, wait=wait,
                          wait_duration=duration, interval=interval, request_timeout=request_timeout)
        sys.exit(code)
    misplaced = _given(ctx, "kubeconfig", "namespace")
    if misplaced:
        raise click.UsageError(f"{' and '.join(misplaced)} only apply with --context")
    if not wait:
        _print(agent_get(agent_socket, "/v1/status", timeout=request_timeout), output)
        return
    deadline = time.monotonic() + duration
    doc: Mapping[str, Any] | None = None
    problem = ""
    while True:
        try:
            remaining = max(0.5, deadline - time.monotonic())
            doc = agent_get(agent_socket, "/v1/status", timeout=min(request_timeout, remaining))
            not_ready = _not_ready(doc)
            problem = "not ready: " + "; ".join(not_ready) if not_ready else ""
        except AgentUnreachableError as err:
            problem = err.message
        if not problem:
            assert doc is not None
            _print(doc, output)
            return
        if time.monotonic() >= deadline:
            if doc is not None:
                _print(doc, output)
            click.echo(f"Error: timed out after {duration:g}s waiting for the remote clusters; {problem}", err=True)
            sys.exit(1)
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
