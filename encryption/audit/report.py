"""Merge every node's capture into one audit report and its verdict (pure).

Each capture point (a node) sees both directions of its own traffic, and the node at the other
end sees the same packets again. A node pair's count of a class is therefore the largest count
any one capture point saw for that pair (both directions), not the sum: no packet is counted
twice, and a pair seen from only one end still shows. Every capture point's own counts stay in
the JSON (``seen_at``). A plaintext flow seen at both ends is listed once, with both nodes.

The audit fails when any plaintext pod packet was seen, when a node could not be audited (no
agent pod, capture failed), and, with ``require_traffic``, when no packet crossed between mesh
endpoints at all (without it, that is a warning).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from encryption.audit.classify import (
    CLASSES,
    IPSEC,
    MALFORMED,
    PLAINTEXT_HOST,
    PLAINTEXT_NODE,
    PLAINTEXT_POD,
    VXLAN_OTHER,
    WIREGUARD,
)

__all__ = ["FIRST_FLOWS", "AuditReport", "NodeCapture", "PairCounts", "merge"]

FIRST_FLOWS: Final = 20
#: What makes two capture points' flows the same flow (seen at both ends: listed once).
_FLOW_KEY: Final = ("src_node", "dst_node", "via", "proto", "src", "sport", "dst", "dport")
_COLUMNS: Final = (("WIREGUARD", (WIREGUARD,)), ("IPSEC", (IPSEC,)), ("PLAINTEXT-POD", (PLAINTEXT_POD,)),
                   ("PLAINTEXT-HOST", (PLAINTEXT_HOST,)), ("PLAINTEXT-NODE", (PLAINTEXT_NODE,)),
                   ("OTHER", (VXLAN_OTHER, MALFORMED)))


@dataclass(frozen=True)
class NodeCapture:
    """One node's capture: its JSON document (:meth:`~encryption.audit.capture.CaptureResult.to_json`),
    or why there is none."""

    node: str
    result: Mapping[str, Any] | None = None
    error: str | None = None


@dataclass
class PairCounts:
    """Packets per class between two mesh endpoints (node names, sorted), over both directions."""

    pair: tuple[str, str]
    counts: dict[str, int] = field(default_factory=dict)
    seen_at: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"pair": list(self.pair), "counts": {c: self.counts.get(c, 0) for c in CLASSES},
                "seen_at": {node: dict(sorted(c.items())) for node, c in sorted(self.seen_at.items())}}


@dataclass
class AuditReport:
    """The merged audit: per pair counts, the first plaintext flows, what was not audited, and the
    verdict (``passed``) with the reasons it failed (``failures``) and ``warnings``."""

    audited: list[str]
    not_audited: dict[str, str]
    pairs: list[PairCounts]
    flows: list[dict[str, Any]]
    failures: list[str]
    warnings: list[str]
    duration: float | None = None
    #: Per capture point: interface, node IP, frames read, frames between mesh endpoints, drops.
    points: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures

    def total(self, cls: str) -> int:
        return sum(p.counts.get(cls, 0) for p in self.pairs)

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": "pass" if self.passed else "fail", "failures": self.failures, "warnings": self.warnings,
            "duration": self.duration, "audited": self.audited, "not_audited": dict(sorted(self.not_audited.items())),
            "totals": {c: self.total(c) for c in CLASSES}, "pairs": [p.to_json() for p in self.pairs],
            "plaintext_flows": self.flows, "capture_points": self.points,
        }  # fmt: skip

    def render_text(self) -> str:
        """The human report: a table per node pair, the first plaintext flows, the verdict."""
        during = f" for {self.duration:g}s" if self.duration is not None else ""
        lines = [f"Encryption audit: {len(self.audited)} node(s) captured{during}"
                 + (f", {len(self.not_audited)} not audited" if self.not_audited else "")]
        header = ["NODE-PAIR", *(name for name, _ in _COLUMNS)]
        rows = [[f"{p.pair[0]} <-> {p.pair[1]}", *(str(sum(p.counts.get(c, 0) for c in classes))
                                                  for _, classes in _COLUMNS)] for p in self.pairs]
        if rows:
            widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
            for r in [header, *rows]:
                lines.append("  ".join([r[0].ljust(widths[0]), *(v.rjust(w) for v, w in zip(r[1:], widths[1:],
                                                                                           strict=True))]).rstrip())
        else:
            lines.append("(no packets between mesh endpoints)")
        if self.flows:
            lines.append(f"First plaintext flows ({len(self.flows)}):")
            for f in self.flows:
                seen = ", ".join(f["seen_at"])
                lines.append(f"  {f['src_node']} -> {f['dst_node']} (seen at {seen}, via {f['via']}): "
                             f"{_flow_text(f)}, {f['packets']} packet(s)")
        for node, why in sorted(self.not_audited.items()):
            lines.append(f"Not audited: {node}: {why}")
        for w in self.warnings:
            lines.append(f"Warning: {w}")
        if self.passed:
            lines.append(f"PASS: no plaintext pod traffic among {sum(self.total(c) for c in CLASSES)} packets "
                         "between mesh endpoints")
        else:
            lines.extend(f"FAIL: {f}" for f in self.failures)
        return "\n".join(lines)


def _end(ip: Any, port: Any) -> str:
    if port is None:
        return str(ip)
    return f"[{ip}]:{port}" if ":" in str(ip) else f"{ip}:{port}"


def _flow_text(f: Mapping[str, Any]) -> str:
    return f"{f.get('proto')} {_end(f.get('src'), f.get('sport'))} -> {_end(f.get('dst'), f.get('dport'))}"


def merge(captures: Sequence[NodeCapture], *, require_traffic: bool = False, first_flows: int = FIRST_FLOWS,
          duration: float | None = None) -> AuditReport:
    """One report from every node's capture (see the module docstring for the verdict)."""
    pairs: dict[tuple[str, str], PairCounts] = {}
    flows: list[dict[str, Any]] = []
    flow_index: dict[tuple[str, ...], dict[str, Any]] = {}
    points: dict[str, dict[str, Any]] = {}
    audited: list[str] = []
    not_audited: dict[str, str] = {}
    warnings: list[str] = []
    for cap in sorted(captures, key=lambda c: c.node):
        if cap.result is None:
            not_audited[cap.node] = cap.error or "no capture"
            continue
        audited.append(cap.node)
        doc = cap.result
        points[cap.node] = {k: doc.get(k) for k in ("interface", "node_ip", "frames", "considered", "drops")}
        for c in doc.get("counts") or []:
            src, dst = str(c.get("src")), str(c.get("dst"))
            key = (src, dst) if src <= dst else (dst, src)
            pc = pairs.setdefault(key, PairCounts(key))
            here = pc.seen_at.setdefault(cap.node, {})
            cls = str(c.get("class"))
            here[cls] = here.get(cls, 0) + int(c.get("packets") or 0)
        for f in doc.get("plaintext_flows") or []:
            fkey = tuple(str(f.get(k)) for k in _FLOW_KEY)
            known = flow_index.get(fkey)
            if known is not None:
                known["seen_at"].append(cap.node)
                known["packets"] = max(int(known.get("packets") or 0), int(f.get("packets") or 0))
            elif len(flows) < first_flows:
                flow_index[fkey] = {**f, "seen_at": [cap.node]}
                flows.append(flow_index[fkey])
        if int(doc.get("drops") or 0):
            warnings.append(f"{cap.node}: the capture dropped {doc['drops']} packet(s) (too much traffic to read "
                            "all; the counts are a lower bound)")
        if doc.get("stopped") == "max-packets":
            warnings.append(f"{cap.node}: the capture stopped at its packet limit after {doc.get('duration')}s")
    for pc in pairs.values():
        for counts in pc.seen_at.values():
            for cls, n in counts.items():
                pc.counts[cls] = max(pc.counts.get(cls, 0), n)
    ordered = [pairs[k] for k in sorted(pairs)]
    failures: list[str] = []
    plaintext = [p for p in ordered if p.counts.get(PLAINTEXT_POD)]
    if plaintext:
        failures.append(f"{sum(p.counts[PLAINTEXT_POD] for p in plaintext)} plaintext pod packet(s) between "
                        + ", ".join(f"{p.pair[0]} and {p.pair[1]}" for p in plaintext))
    if not_audited:
        failures.append(f"{len(not_audited)} node(s) not audited: " + ", ".join(sorted(not_audited)))
    total = sum(sum(p.counts.values()) for p in ordered)
    if total == 0 and audited:
        message = "no packets between mesh endpoints were seen: run traffic between pods on different nodes " \
                  "during the audit"
        (failures if require_traffic else warnings).append(message)
    if not audited and not not_audited:
        failures.append("no nodes to audit")
    return AuditReport(audited, not_audited, ordered, flows, failures, warnings, duration, points)
