"""``clustermesh bpf dump ipcache|services|policy|counters --node NODE``: read a node's pinned maps.

Reads only: a node whose pins do not exist is an error (it never creates maps)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from bpf.layouts import MAP_SPECS, Affinity, Direction, Reason, ip_text
from bpf.maps import DEFAULT_PIN_ROOT, NodeMaps, node_pin_dir

__all__ = ["bpf"]

_PROTO_NAMES = {0: "ANY", 1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPV6", 132: "SCTP"}
_FLAGS = ("skip-tunnel", "has-tunnel-ep", "ipv6-tunnel-ep", "remote-cluster", "remote-node-ep")
_KINDS = ("ipcache", "services", "policy", "counters")


@click.group("bpf")
def bpf() -> None:
    """Inspect a node's eBPF datapath (its pinned maps; needs root)."""


def _open(node: str, pin_root: Path) -> NodeMaps:
    directory = node_pin_dir(node, pin_root)
    missing = [name for name in MAP_SPECS if not (directory / name).exists()]
    if not directory.is_dir() or missing:
        raise click.ClickException(
            f"node {node!r} has no pinned maps under {directory} (missing: {', '.join(missing) or 'all'}); "
            "is the agent running there with --datapath bpf and the same --pin-root?"
        )
    try:
        return NodeMaps(node, pin_root)
    except Exception as err:
        raise click.ClickException(f"cannot open the maps of node {node!r}: {err}") from err


def _ipcache(maps: NodeMaps) -> list[dict[str, Any]]:
    rows = []
    for k, v in maps.ipcache.items():
        bits = k.prefixlen - 32
        flags = [name for i, name in enumerate(_FLAGS) if v.flags & (1 << i)]
        tunnel = ip_text(2 if v.flags & 4 else 1, bytes(v.tunnel_endpoint)) if v.flags & 2 else ""
        rows.append({
            "prefix": f"{ip_text(k.family, bytes(k.ip))}/{bits}", "identity": v.sec_identity,
            "tunnel-endpoint": tunnel, "cluster-id": v.cluster_id, "encrypt-key": v.encrypt_key, "flags": flags,
        })  # fmt: skip
    return sorted(rows, key=lambda r: (":" in r["prefix"], r["prefix"]))


def _services(maps: NodeMaps) -> list[dict[str, Any]]:
    from bpf.layouts import BackendKey, SlotKey

    rows = []
    for fk, sv in maps.services.items():
        backends: list[dict[str, Any]] = []
        for slot in range(sv.backend_count):
            sl = maps.svc_slots.get(SlotKey(fk, slot))
            bv = maps.backends.get(BackendKey(sl.backend_id)) if sl is not None else None
            if sl is None or bv is None:
                backends.append({"slot": slot, "missing": 1})
                continue
            backends.append({
                "slot": slot, "backend-id": sl.backend_id, "address": ip_text(bv.family, bytes(bv.ip)),
                "port": socket.ntohs(bv.port), "cluster-id": bv.cluster_id, "local": bool(bv.flags & 2),
                "healthy": bool(bv.flags & 1),
            })  # fmt: skip
        rows.append({
            "frontend": f"{ip_text(fk.family, bytes(fk.ip))}:{socket.ntohs(fk.port)}",
            "protocol": _PROTO_NAMES.get(fk.proto, str(fk.proto)), "affinity": Affinity(sv.affinity).name.lower(),
            "backend-count": sv.backend_count, "local-backend-count": sv.local_backend_count, "backends": backends,
        })  # fmt: skip
    return sorted(rows, key=lambda r: (r["frontend"], r["protocol"]))


def _policy(maps: NodeMaps) -> list[dict[str, Any]]:
    enforced = {(k.endpoint_id, k.direction) for k, v in maps.policy_enforce.items() if v.enforced}
    rows = []
    for k, v in maps.policy.items():
        rows.append({
            "endpoint": k.endpoint_id, "direction": Direction(k.direction).name.lower(),
            "identity": k.remote_identity, "port": socket.ntohs(k.dport),
            "protocol": _PROTO_NAMES.get(k.proto, str(k.proto)), "verdict": "allow" if v.verdict else "deny",
            "packets": v.packets, "bytes": v.bytes, "enforced": (k.endpoint_id, k.direction) in enforced,
        })  # fmt: skip
    for endpoint, direction in sorted(enforced):
        if not any(r["endpoint"] == endpoint and r["direction"] == Direction(direction).name.lower() for r in rows):
            rows.append({
                "endpoint": endpoint, "direction": Direction(direction).name.lower(), "identity": None, "port": 0,
                "protocol": "ANY", "verdict": "default-deny", "packets": 0, "bytes": 0, "enforced": True,
            })  # fmt: skip
    return sorted(rows, key=lambda r: (r["endpoint"], r["direction"], r["identity"] or 0, r["port"], r["protocol"]))


def _counters(maps: NodeMaps) -> list[dict[str, Any]]:
    # Names are Reason's: "unencrypted" is egress strict mode, Cilium's drop reason 195
    # (DROP_UNENCRYPTED_TRAFFIC, "Traffic is unencrypted").
    return [
        {"reason": Reason(reason).name.lower(), "direction": Direction(direction).name.lower(),
         "packets": packets, "bytes": nbytes}
        for (reason, direction), (packets, nbytes) in sorted(maps.counters().items())
    ]  # fmt: skip


def _table(kind: str, node: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{kind} of node {node} ({len(rows)})")
    if not rows:
        table.add_column("(empty)")
        return table
    columns = [c for c in rows[0] if c != "backends"]
    for column in columns:
        table.add_column(column)
    if kind == "services":
        table.add_column("backends")
    for row in rows:
        cells = [", ".join(row[c]) if isinstance(row[c], list) else str(row[c]) for c in columns]
        if kind == "services":
            cells.append("\n".join(
                f"{b.get('address')}:{b.get('port')} c{b.get('cluster-id')}{' local' if b.get('local') else ''}"
                for b in row["backends"]
            ))  # fmt: skip
        table.add_row(*cells)
    return table


@bpf.command("dump")
@click.argument("kind", type=click.Choice(_KINDS))
@click.option("--node", required=True, help="The node (the agent's --node-name): maps are in <pin-root>/<node>/.")
@click.option("--pin-root", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_PIN_ROOT,
              show_default=True, help="The agent's --pin-root.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def dump(kind: str, node: str, pin_root: Path, output: str) -> None:
    """Print one of a node's maps: ipcache (prefix -> identity, tunnel endpoint), services (frontends
    with their backend slots and affinity), policy (entries with hit counts, enforced endpoints) or
    counters (packets and bytes per reason and direction, e.g. policy_default_deny)."""
    with _open(node, pin_root) as maps:
        rows = {"ipcache": _ipcache, "services": _services, "policy": _policy, "counters": _counters}[kind](maps)
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    Console().print(_table(kind, node, rows))
