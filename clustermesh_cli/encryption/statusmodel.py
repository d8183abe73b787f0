"""``clustermesh encryption status`` (pure): every node's encryption section of its agent's
``GET /v1/status`` (``datapath.encryption``, see :mod:`agent.datapath.wireguard`), checked against
the others', as a :class:`MeshEncryption` with its problems, as JSON or text.

A node's problems (they fail the command): its agent could not be asked; a peer the device does
not hold as desired (not in sync); a peer configured with another key than the one that node
reports (a stale key); a node running WireGuard that is neither a peer nor a plaintext peer here
(by the scope: every other node, or only other clusters' with ``inter-cluster``); the agent's own
problems (peer problems, a failed key publication or withdrawal, a failing device read).
Warnings (reported, not failed): plaintext peers, a node whose encryption is off (e.g. its
``clustermesh.io/encryption=disabled`` label), a peer without a handshake yet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["NodeEncryption", "NodeProbe", "MeshEncryption", "PeerState", "render_text", "summarise"]

SHOWN_PLAINTEXT: Final = 20  # plaintext peers named per node in the text output


@dataclass(frozen=True)
class NodeProbe:
    """What was read for one node: its agent's status document, or why it could not be read."""

    node: str  # cluster/name
    context: str
    pod: str | None = None  # namespace/name of the agent pod asked
    status: Mapping[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True)
class PeerState:
    """One peer of a node's device."""

    node: str
    public_key: str
    endpoint: str
    allowed_ips: tuple[str, ...]
    handshake_age: float | None  # seconds; None: no handshake yet
    rx_bytes: int
    tx_bytes: int
    in_sync: bool

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "public-key": self.public_key, "endpoint": self.endpoint,
                "allowed-ips": list(self.allowed_ips), "latest-handshake-seconds-ago": self.handshake_age,
                "rx-bytes": self.rx_bytes, "tx-bytes": self.tx_bytes, "in-sync": self.in_sync}  # fmt: skip


@dataclass(frozen=True)
class NodeEncryption:
    """One node's encryption as its agent reports it, with what was found wrong."""

    node: str
    context: str
    pod: str | None
    reachable: bool
    mode: str | None = None
    configured_mode: str | None = None
    disabled_by: str | None = None
    implementation: str | None = None
    device: str | None = None
    public_key: str | None = None
    key_age: float | None = None
    key_rotations: int = 0
    published: bool | None = None
    node_encryption: str | None = None
    strict_mode: Mapping[str, Any] | None = None
    scope: str | None = None
    userspace_pid: int | None = None
    peers: tuple[PeerState, ...] = ()
    plaintext_peers: tuple[str, ...] = ()
    plaintext_peer_count: int = 0
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def wireguard(self) -> bool:
        return self.mode == "wireguard"

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node, "context": self.context, "agent-pod": self.pod, "reachable": self.reachable,
            "mode": self.mode, "configured-mode": self.configured_mode, "disabled-by": self.disabled_by,
            "implementation": self.implementation, "device": self.device, "public-key": self.public_key,
            "key-age-seconds": self.key_age, "key-rotations": self.key_rotations, "published": self.published,
            "node-encryption": self.node_encryption, "strict-mode": dict(self.strict_mode) if self.strict_mode
            else None, "scope": self.scope, "userspace-pid": self.userspace_pid,
            "peer-count": len(self.peers), "peers-in-sync": sum(p.in_sync for p in self.peers),
            "peers": [p.to_json() for p in self.peers], "plaintext-peers": list(self.plaintext_peers),
            "plaintext-peer-count": self.plaintext_peer_count, "problems": list(self.problems),
            "warnings": list(self.warnings),
        }  # fmt: skip


@dataclass(frozen=True)
class MeshEncryption:
    """Every node's :class:`NodeEncryption`; it passes when no node has a problem."""

    contexts: tuple[str, ...]
    nodes: tuple[NodeEncryption, ...] = field(default=())
    problems: tuple[str, ...] = ()  # mesh-wide (a context that could not be read, no nodes)

    @property
    def passed(self) -> bool:
        return not self.problems and not any(n.problems for n in self.nodes)

    @property
    def unreachable(self) -> list[str]:
        return [n.node for n in self.nodes if not n.reachable]

    def to_json(self) -> dict[str, Any]:
        peers = [p for n in self.nodes for p in n.peers]
        return {
            "verdict": "pass" if self.passed else "fail",
            "contexts": list(self.contexts),
            "problems": list(self.problems) + [f"{n.node}: {p}" for n in self.nodes for p in n.problems],
            "warnings": [f"{n.node}: {w}" for n in self.nodes for w in n.warnings],
            "unreachable": self.unreachable,
            "totals": {
                "nodes": len(self.nodes), "reachable": sum(n.reachable for n in self.nodes),
                "wireguard": sum(n.wireguard for n in self.nodes), "peers": len(peers),
                "peers-in-sync": sum(p.in_sync for p in peers),
                "plaintext-peers": sum(n.plaintext_peer_count for n in self.nodes),
            },
            "nodes": [n.to_json() for n in self.nodes],
        }  # fmt: skip


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _short(key: str | None) -> str:
    return f"{key[:8]}..." if key else "-"


def _peer(raw: Mapping[str, Any]) -> PeerState:
    return PeerState(
        node=str(raw.get("node") or "?"), public_key=str(raw.get("public-key") or ""),
        endpoint=str(raw.get("endpoint") or ""), allowed_ips=tuple(str(a) for a in raw.get("allowed-ips") or []),
        handshake_age=_float(raw.get("latest-handshake-seconds-ago")), rx_bytes=_int(raw.get("rx-bytes")),
        tx_bytes=_int(raw.get("tx-bytes")), in_sync=bool(raw.get("in-sync")),
    )  # fmt: skip


def _encryption_section(status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    datapath = status.get("datapath")
    if not isinstance(datapath, Mapping):
        return None
    section = datapath.get("encryption")
    return section if isinstance(section, Mapping) else None


def _node(probe: NodeProbe) -> NodeEncryption:
    """One probe as a node, with the problems it shows by itself."""
    if probe.status is None:
        return NodeEncryption(probe.node, probe.context, probe.pod, False,
                              problems=(f"not reached: {probe.error or 'no status'}",))  # fmt: skip
    enc = _encryption_section(probe.status)
    if enc is None:
        return NodeEncryption(probe.node, probe.context, probe.pod, True, problems=(
            "the agent reports no node datapath (--datapath none?): no encryption status",))  # fmt: skip
    peers = tuple(_peer(p) for p in enc.get("peers") or [] if isinstance(p, Mapping))
    problems = [str(p) for p in enc.get("problems") or []]
    warnings: list[str] = []
    for p in peers:
        if not p.in_sync:
            problems.append(f"peer {p.node} ({_short(p.public_key)}) is not in sync: the device does not hold it "
                            f"as desired (endpoint {p.endpoint or '-'}, allowed IPs {', '.join(p.allowed_ips) or '-'})")
        elif p.handshake_age is None:
            warnings.append(f"peer {p.node}: no handshake yet (no traffic to it so far?)")
    for key, what in (("publish-error", "publishing the WireGuard key failed"), ("last-error", "reading the device")):
        if enc.get(key):
            problems.append(f"{what}: {enc[key]}")
    plaintext = tuple(str(n) for n in enc.get("plaintext-peers") or [])
    count = max(_int(enc.get("plaintext-peer-count")), len(plaintext))
    mode = str(enc.get("mode") or "none")
    disabled_by = enc.get("disabled-by")
    if mode != "wireguard":
        warnings.append(f"encryption is off on this node ({disabled_by})" if disabled_by
                        else "encryption is off on this node (--encryption none)")
    if count:
        warnings.append(f"{count} plaintext peer(s) (no WireGuard key): {', '.join(plaintext[:SHOWN_PLAINTEXT])}"
                        + (" ..." if count > len(plaintext[:SHOWN_PLAINTEXT]) else ""))
    strict = enc.get("strict-mode")
    return NodeEncryption(
        probe.node, probe.context, probe.pod, True, mode=mode, configured_mode=enc.get("configured-mode") or mode,
        disabled_by=str(disabled_by) if disabled_by else None, implementation=enc.get("implementation"),
        device=enc.get("device"), public_key=enc.get("public-key"), key_age=_float(enc.get("key-file-age-seconds")),
        key_rotations=_int(enc.get("key-rotations")), published=enc.get("published"),
        node_encryption=enc.get("node-encryption"), strict_mode=strict if isinstance(strict, Mapping) else None,
        scope=enc.get("scope"), userspace_pid=enc.get("userspace-pid"), peers=peers, plaintext_peers=plaintext,
        plaintext_peer_count=count, problems=tuple(problems), warnings=tuple(warnings),
    )  # fmt: skip


def _cluster(node: str) -> str:
    return node.split("/", 1)[0]


def _cross_check(node: NodeEncryption, by_name: Mapping[str, NodeEncryption]) -> NodeEncryption:
    """The problems only the other nodes' reports show: stale keys, missing peers."""
    if not node.wireguard:
        return node
    problems = list(node.problems)
    peers = {p.node: p for p in node.peers}
    for p in node.peers:
        other = by_name.get(p.node)
        if other is None or not other.reachable:
            continue
        if not other.wireguard:
            problems.append(f"peer {p.node} has encryption off ({other.disabled_by or 'mode none'}) but is still "
                            "configured here: its key withdrawal has not reached this node")
        elif other.public_key and other.public_key != p.public_key:
            problems.append(f"peer {p.node} is configured with key {_short(p.public_key)} but that node's key is "
                            f"{_short(other.public_key)}: a stale key")
    for name, other in sorted(by_name.items()):
        if name == node.node or not other.wireguard or not other.public_key or not other.published:
            continue
        if node.scope == "inter-cluster" and _cluster(name) == _cluster(node.node):
            continue
        if name not in peers and name not in node.plaintext_peers:
            problems.append(f"{name} runs WireGuard (key {_short(other.public_key)}) but is not a peer here")
    if len(problems) == len(node.problems):
        return node
    return NodeEncryption(**{**node.__dict__, "problems": tuple(problems)})


def summarise(contexts: Sequence[str], probes: Sequence[NodeProbe], problems: Sequence[str] = ()) -> MeshEncryption:
    """The mesh's encryption from every node's probe (see the module docstring)."""
    nodes = [_node(p) for p in probes]
    by_name = {n.node: n for n in nodes}
    checked = tuple(_cross_check(n, by_name) for n in nodes)
    mesh_problems = list(problems)
    if not probes and not mesh_problems:
        mesh_problems.append(f"no nodes in {', '.join(contexts)}")
    return MeshEncryption(tuple(contexts), checked, tuple(mesh_problems))


# ---- text ----

def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = int(seconds)
    if s < 120:
        return f"{s}s ago"
    if s < 7200:
        return f"{s // 60}m ago"
    return f"{s // 3600}h ago"


def _duration(seconds: float | None) -> str:
    return "-" if seconds is None else _age(seconds).removesuffix(" ago")


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _table(rows: Sequence[Sequence[str]], indent: str = "    ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _strict(strict: Mapping[str, Any] | None) -> str:
    if not strict:
        return "off"
    extra = " (remote-node identities allowed)" if strict.get("allow-remote-node-identities") else ""
    return f"{strict.get('cidr')}{extra}"


def _node_lines(n: NodeEncryption) -> list[str]:
    where = f"agent pod {n.pod}" if n.pod else "no agent pod"
    if not n.reachable:
        return [f"{n.node}  UNREACHABLE ({where})", *(f"  problem: {p}" for p in n.problems)]
    if n.wireguard:
        head = (f"{n.node}  wireguard ({n.implementation or '?'}"
                f"{f', pid {n.userspace_pid}' if n.userspace_pid else ''}) device {n.device}")
        lines = [head,
                 f"  public key {n.public_key}  key age {_duration(n.key_age)}  rotations {n.key_rotations}  "
                 f"published {'yes' if n.published else 'not yet' if n.published is None else 'NO'}",
                 f"  node encryption {n.node_encryption}  strict mode {_strict(n.strict_mode)}  scope {n.scope}"]
    else:
        lines = [f"{n.node}  encryption off" + (f" ({n.disabled_by}; configured {n.configured_mode})"
                                               if n.disabled_by else ""),
                 f"  strict mode {_strict(n.strict_mode)}"]
    if n.peers:
        rows = [["PEER", "ENDPOINT", "ALLOWED IPS", "HANDSHAKE", "RX", "TX", "IN SYNC"]]
        rows += [[p.node, p.endpoint, ",".join(p.allowed_ips), _age(p.handshake_age), _bytes(p.rx_bytes),
                  _bytes(p.tx_bytes), "yes" if p.in_sync else "NO"] for p in n.peers]
        lines += _table(rows)
    elif n.wireguard:
        lines.append("    (no peers)")
    if n.plaintext_peer_count:
        shown = list(n.plaintext_peers[:SHOWN_PLAINTEXT])
        more = n.plaintext_peer_count - len(shown)
        lines.append(f"  plaintext peers: {', '.join(shown)}" + (f" and {more} more" if more > 0 else ""))
    lines += [f"  problem: {p}" for p in n.problems]
    return lines


def render_text(mesh: MeshEncryption) -> str:
    """The text output: a block per node, then the verdict line."""
    lines = [f"Encryption of {len(mesh.nodes)} node(s) in {', '.join(mesh.contexts)}", ""]
    for n in mesh.nodes:
        lines += [*_node_lines(n), ""]
    lines += [f"problem: {p}" for p in mesh.problems]
    totals = mesh.to_json()["totals"]
    verdict = "OK" if mesh.passed else "FAILED"
    lines.append(f"{verdict}: {totals['reachable']}/{totals['nodes']} node(s) reached, {totals['wireguard']} with "
                 f"WireGuard, {totals['peers-in-sync']}/{totals['peers']} peer(s) in sync, "
                 f"{totals['plaintext-peers']} plaintext peer(s)"
                 + (f"; unreachable: {', '.join(mesh.unreachable)}" if mesh.unreachable else ""))
    return "\n".join(lines)
