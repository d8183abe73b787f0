"""Pure: a :class:`~clustermesh_cli.meshstatus.model.MeshStatus` as text, in cilium-cli's manner
(``✅``/``❌`` lines for the API server's Deployment and Service, then each agent with its remote
clusters, then ``N/N agents ready, M/M peers per agent [min / avg / max]``), or as a table."""

from __future__ import annotations

from rich.table import Table

from clustermesh_cli.install import names
from clustermesh_cli.meshstatus.model import AgentStatus, MeshStatus, PeerStatus

__all__ = ["header_lines", "render_text", "render_table", "summary_line"]

OK, BAD, INFO = "✅", "❌", "ℹ️ "


def _mark(ok: bool) -> str:
    return OK if ok else BAD


def header_lines(status: MeshStatus) -> list[str]:
    """The cluster, the API server's Deployment and Service, and the expected peers."""
    lines = [f"Cluster {status.cluster or '(name unknown)'} (context {status.context}, namespace {status.namespace})"]
    api = status.apiserver
    if not api.exists:
        lines.append(f"{BAD} Deployment {api.name} does not exist")
    else:
        state = "is available" if api.available else "is not available"
        pods = ", ".join(f"{p.name}{' on ' + p.node if p.node else ''}: {p.phase}{', ready' if p.ready else ''}"
                         for p in api.pods) or "no pods"
        lines.append(f"{_mark(api.available)} Deployment {api.name} {state}: {api.ready_replicas}/{api.replicas} "
                     f"replicas ready ({pods})")
    svc = status.service
    if svc.error is not None:
        kind = f" of type {svc.type}" if svc.type else ""
        lines.append(f"{BAD} Service {svc.name}{kind}: {svc.error}")
    else:
        where = ", ".join(f"{a}:{svc.port}" for a in svc.addresses)
        lines.append(f"{OK} Service {svc.name} of type {svc.type}: peers reach it at {where}")
    if status.peers:
        lines.append(f"{INFO} Expected peers (Secret {names.CLUSTERMESH_SECRET}): {', '.join(status.peers)}")
    else:
        lines.append(f"{INFO} No peers configured (Secret {names.CLUSTERMESH_SECRET} has no peer entries): add one "
                     f"with clustermesh connect --context {status.context} --destination-context OTHER")
    return lines


def _peer_line(peer: PeerStatus) -> str:
    if not peer.listed:
        return f"   - {peer.name}: not listed: {peer.reason}"
    text = (f"   - {peer.name}: {'ready' if peer.ready else 'not ready'}, "
            f"{'connected' if peer.connected else 'not connected'}, {peer.nodes} nodes, {peer.endpoints} endpoints, "
            f"{peer.identities} identities, {peer.services} services, {peer.failures} failures "
            f"(last: {peer.last_failure or 'never'})")
    return text + (f": {peer.reason}" if peer.reason else "")


def _agent_lines(agent: AgentStatus, expected: int) -> list[str]:
    head = f"{_mark(agent.ready)} {agent.node} (pod {agent.pod}, {agent.phase}{', ready' if agent.pod_ready else ''})"
    if agent.error is not None:
        return [f"{head}: status cannot be read: {agent.error}"]
    if not expected and not agent.peers:
        return [f"{head}: no remote clusters"]
    return [f"{head}: {agent.peers_ready}/{expected} peers ready", *(_peer_line(p) for p in agent.peers)]


def summary_line(status: MeshStatus) -> str:
    """``✅ 2/2 agents ready, 1/1 peers per agent [min:1 / avg:1.0 / max:1]``."""
    agents = f"{status.agents_ready}/{status.agents_expected} agents ready"
    if not status.peers:
        return f"{_mark(status.ready)} {agents}, no peers configured"
    low, avg, high = status.peers_per_agent()
    return (f"{_mark(status.ready)} {agents}, {low}/{len(status.peers)} peers per agent "
            f"[min:{low} / avg:{avg:.1f} / max:{high}]")


def _blocker_lines(status: MeshStatus) -> list[str]:
    blockers = status.blockers()
    return ["", "Not ready:", *(f"  - {b}" for b in blockers)] if blockers else []


def render_text(status: MeshStatus) -> str:
    """The whole status as text (cilium-cli's layout)."""
    lines = header_lines(status)
    lines += ["", f"Agents (DaemonSet {names.AGENT}):"]
    if not status.agents:
        lines.append(f"{BAD} no agent pods")
    for agent in status.agents:
        lines += _agent_lines(agent, len(status.peers))
    lines += [f"{BAD} {b}" for b in status.agent_blockers]
    lines += ["", summary_line(status)]
    return "\n".join(lines + _blocker_lines(status))


def render_table(status: MeshStatus) -> Table:
    """One row per agent and remote cluster (an agent whose status cannot be read: one row)."""
    table = Table(title=f"Agents (DaemonSet {names.AGENT})", title_justify="left")
    for column in ("Node", "Pod", "Peer", "Ready", "Connected", "Nodes", "Endpoints", "Identities", "Services",
                   "Failures", "Last failure", "Reason"):
        table.add_column(column, overflow="fold")
    for agent in status.agents:
        if agent.error is not None or not agent.peers:
            table.add_row(agent.node, agent.pod, "-", "[red]no[/red]" if agent.error else "yes", "", "", "", "", "",
                          "", "", agent.error or "no peers")
        for p in agent.peers:
            table.add_row(
                agent.node, agent.pod, p.name, "yes" if p.ok else "[red]no[/red]",
                "yes" if p.connected else "[red]no[/red]" if p.listed else "-",
                *(str(v) if p.listed else "-" for v in (p.nodes, p.endpoints, p.identities, p.services, p.failures)),
                p.last_failure or "never", p.reason or "")
    return table
