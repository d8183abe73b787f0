"""Partitions: stateless nftables drop rules on the underlay bridge, one table per partition.

A partition ``N`` between node sets *a* and *b* is the table ``bridge cmlab-partition-N`` in the
underlay namespace::

    table bridge cmlab-partition-N {
        set a { type ether_addr; elements = { <a's underlay MACs> } }
        set b { type ether_addr; elements = { <b's underlay MACs> } }
        chain forward {
            type filter hook forward priority filter; policy accept;
            ether saddr @a ether daddr @b counter drop
            ether saddr @b ether daddr @a counter drop
        }
    }

The rules match frames between bridge ports by their Ethernet addresses only, so they cut every
frame between those nodes, established connections included (no conntrack), whatever the frames
carry: node-to-node IP, VXLAN, or pod IPs routed natively. Each partition lives and dies with its
own table, so partitions coexist and heal independently; the tables *are* the record of what is
in place (:func:`parse_ruleset` reads them back).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from lab.faults import nsexec
from lab.faults.model import FaultError, FaultRecord, InvalidFault, NodeRef, UnknownFault, sides, validate_name

TABLE_PREFIX = "cmlab-partition-"
FAMILY = "bridge"
CHAIN = "forward"
#: The bridge family's ``filter`` priority.
PRIORITY = -200


def table_name(name: str) -> str:
    """The nftables table of partition ``name``."""
    return TABLE_PREFIX + validate_name(name)


def _match(field: str, set_name: str) -> dict[str, Any]:
    return {"match": {"op": "==", "left": {"payload": {"protocol": "ether", "field": field}}, "right": f"@{set_name}"}}


def plan_partition(name: str, a: Sequence[NodeRef], b: Sequence[NodeRef]) -> dict[str, Any]:
    """The nftables JSON batch creating partition ``name`` (fails in the kernel if it exists)."""
    side_a, side_b = sides(a, b)
    table = table_name(name)
    base = {"family": FAMILY, "table": table}
    commands: list[dict[str, Any]] = [{"create": {"table": {"family": FAMILY, "name": table}}}]
    for set_name, nodes in (("a", side_a), ("b", side_b)):
        elems = sorted(n.underlay_mac for n in nodes)
        commands.append({"add": {"set": {**base, "name": set_name, "type": "ether_addr", "elem": elems}}})
    commands.append(
        {"add": {"chain": {**base, "name": CHAIN, "type": "filter", "hook": "forward", "prio": PRIORITY,
                           "policy": "accept"}}}
    )  # fmt: skip
    for src, dst in (("a", "b"), ("b", "a")):
        expr = [_match("saddr", src), _match("daddr", dst), {"counter": None}, {"drop": None}]
        commands.append({"add": {"rule": {**base, "chain": CHAIN, "expr": expr}}})
    return {"nftables": commands}


def plan_delete(names: Sequence[str]) -> dict[str, Any]:
    """The nftables JSON batch deleting the tables of the partitions ``names`` (all or none)."""
    return {"nftables": [{"delete": {"table": {"family": FAMILY, "name": table_name(n)}}} for n in names]}


def parse_ruleset(ruleset: dict[str, Any]) -> list[FaultRecord]:
    """The partitions in an ``nft -j list ruleset`` document, sorted by name."""
    sets: dict[tuple[str, str], tuple[str, ...]] = {}
    dropped: dict[str, int] = {}
    tables: list[str] = []
    for item in ruleset.get("nftables", []):
        for kind, body in item.items():
            if not isinstance(body, dict) or body.get("family") != FAMILY:
                continue
            table = str(body.get("table" if kind != "table" else "name", ""))
            if not table.startswith(TABLE_PREFIX):
                continue
            if kind == "table":
                tables.append(table)
            elif kind == "set":
                elems = body.get("elem", [])
                elems = [elems] if isinstance(elems, str) else elems
                sets[(table, str(body.get("name")))] = tuple(sorted(str(e) for e in elems))
            elif kind == "rule":
                for expr in body.get("expr", []):
                    counter = expr.get("counter") if isinstance(expr, dict) else None
                    if isinstance(counter, dict):
                        dropped[table] = dropped.get(table, 0) + int(counter.get("packets", 0))
    return sorted(
        (
            FaultRecord(
                kind="partition",
                name=t[len(TABLE_PREFIX) :],
                a=sets.get((t, "a"), ()),
                b=sets.get((t, "b"), ()),
                dropped=dropped.get(t, 0),
            )
            for t in tables
        ),
        key=lambda r: r.name,
    )


# --- I/O ----------------------------------------------------------------------------------------


def _nft(underlay_ns: str, *args: str, stdin: str | None = None) -> str:
    return nsexec.run(underlay_ns, nsexec.tool("nft", nsexec.NFT_FALLBACK), *args, stdin=stdin)


def list_partitions(underlay_ns: str) -> list[FaultRecord]:
    """The partitions in place in ``underlay_ns``, read from its nftables ruleset."""
    nsexec.require_namespace(underlay_ns)
    out = _nft(underlay_ns, "-j", "list", "ruleset", "bridge")
    try:
        document = json.loads(out) if out.strip() else {}
    except ValueError as exc:
        raise FaultError(f"nft printed something that is not JSON in {underlay_ns}: {out[:200]!r}") from exc
    return parse_ruleset(document)


def partition(underlay_ns: str, a: Sequence[NodeRef], b: Sequence[NodeRef], *, name: str) -> None:
    """Drop every frame between the nodes of ``a`` and those of ``b``, both directions, on the
    underlay bridge of ``underlay_ns``, as partition ``name`` (one atomic nftables transaction).

    Raises :class:`InvalidFault` for a bad name or node sets, or if a partition ``name`` is in
    place already (heal it first)."""
    batch = plan_partition(name, a, b)
    nsexec.require_namespace(underlay_ns)
    if any(r.name == name for r in list_partitions(underlay_ns)):
        raise InvalidFault(f"partition {name!r} is in place already in {underlay_ns}: heal it or pick another name")
    _nft(underlay_ns, "-j", "-f", "-", stdin=json.dumps(batch))


def heal(underlay_ns: str, *, name: str) -> None:
    """Remove partition ``name``; :class:`UnknownFault` (listing those in place) if there is none."""
    validate_name(name)
    active = [r.name for r in list_partitions(underlay_ns)]
    if name not in active:
        raise UnknownFault(
            f"no partition {name!r} in {underlay_ns}; in place: {', '.join(active) if active else 'none'}"
        )
    _nft(underlay_ns, "-j", "-f", "-", stdin=json.dumps(plan_delete([name])))


def heal_all(underlay_ns: str) -> list[str]:
    """Remove every partition in ``underlay_ns`` (one transaction); return their names."""
    names = [r.name for r in list_partitions(underlay_ns)]
    if names:
        _nft(underlay_ns, "-j", "-f", "-", stdin=json.dumps(plan_delete(names)))
    return names
