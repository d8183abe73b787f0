"""Pure: does a live object already hold what the install wants, and what to PUT when it does not.

The API server adds defaults (a Service's ``clusterIP``, a Deployment's ``strategy``, ...) and
bookkeeping (``uid``, ``resourceVersion``, ``status``), so "the same" means: every field the
install sets has that value in the live object (:func:`covers`). An update replaces the object
with the desired one, keeping what the server owns or allocated (:func:`update_body`), so fields
the install stopped setting disappear as with ``kubectl apply``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["covers", "differences", "update_body"]

Obj = dict[str, Any]
# Service fields the server allocates and that may not change (or would be reallocated) on update.
_SERVICE_KEPT = ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy")


def covers(live: Any, desired: Any) -> bool:
    """True when ``live`` has every value ``desired`` sets (dicts: per key; lists: same length,
    element by element; scalars: equal). A desired ``None`` is also met by an absent key."""
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return False
        return all(covers(live.get(k), v) if k in live else v is None for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and len(live) == len(desired) and all(
            covers(a, b) for a, b in zip(live, desired, strict=True))
    return bool(live == desired)


def differences(live: Any, desired: Any, path: str = "", *, limit: int = 5) -> list[str]:
    """The paths (``spec.template.spec.containers[0].args``) where ``live`` does not cover
    ``desired``, at most ``limit``: what an update would change, for the user."""
    out: list[str] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(b, Mapping) and isinstance(a, Mapping):
            for k, v in b.items():
                if k not in a:
                    if v is not None:
                        out.append(f"{where}.{k}".lstrip("."))
                else:
                    walk(a[k], v, f"{where}.{k}")
        elif isinstance(b, list) and isinstance(a, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(x, y, f"{where}[{i}]")
        elif not covers(a, b):
            out.append(where.lstrip(".") or "(object)")

    walk(live, desired, path)
    return out


def _service_spec(desired: Obj, live: Obj) -> Obj:
    spec = dict(desired)
    for key in _SERVICE_KEPT:
        if key in live and key not in spec:
            spec[key] = live[key]
    live_ports = {(p.get("port"), p.get("protocol", "TCP")): p for p in live.get("ports") or []}
    ports = []
    for port in spec.get("ports") or []:
        port = dict(port)
        old = live_ports.get((port.get("port"), port.get("protocol", "TCP")))
        if "nodePort" not in port and old is not None and old.get("nodePort") and spec.get("type") != "ClusterIP":
            port["nodePort"] = old["nodePort"]  # keep the one the server picked
        ports.append(port)
    if ports:
        spec["ports"] = ports
    return spec


def update_body(desired: Mapping[str, Any], live: Mapping[str, Any]) -> Obj:
    """The object to PUT over ``live``: ``desired`` with the live metadata the server owns
    (``resourceVersion``, ``uid``, ...) and labels/annotations others added, and, for a Service,
    its allocated cluster IPs and node ports."""
    body: Obj = {k: v for k, v in desired.items()}
    live_md: Mapping[str, Any] = live.get("metadata") or {}
    md: Obj = {k: v for k, v in live_md.items() if k not in ("labels", "annotations", "managedFields")}
    for key in ("labels", "annotations"):
        merged = {**(live_md.get(key) or {}), **((desired.get("metadata") or {}).get(key) or {})}
        if merged:
            md[key] = merged
    md.update({k: v for k, v in (desired.get("metadata") or {}).items() if k not in ("labels", "annotations")})
    body["metadata"] = md
    if desired.get("kind") == "Service" and isinstance(desired.get("spec"), Mapping):
        body["spec"] = _service_spec(dict(desired["spec"]), dict(live.get("spec") or {}))
    return body
