"""Label and field selectors, parsed once and matched against object dicts.

Label selectors follow ``k8s.io/apimachinery/pkg/labels``: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``,
``k notin (a,b)``, ``k`` (exists) and ``!k`` (does not exist), comma-joined as AND. Field selectors
support ``=``, ``==`` and ``!=`` on ``metadata.name``, ``metadata.namespace`` and any other dotted path
into the object (``spec.nodeName``, ``status.phase``, ``type``...); a missing field compares as ``""``.
Malformed selectors raise :class:`ApiError` 400.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from lab.kube.api.errors import bad_request

Predicate = Callable[[dict[str, Any]], bool]

_SET_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|!=|=)\s*([A-Za-z0-9_.-]*)\s*$")
_EXISTS_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*$")


def _split_terms(selector: str) -> list[str]:
    terms: list[str] = []
    depth = 0
    cur: list[str] = []
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    terms.append("".join(cur))
    return [t for t in terms if t.strip()]


def _label_term(term: str) -> Callable[[dict[str, str]], bool]:
    m = _SET_RE.match(term)
    if m and not m.group(1):
        key, op = m.group(2), m.group(3)
        values = {v.strip() for v in m.group(4).split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    m = _EQ_RE.match(term)
    if m:
        key, op, value = m.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    m = _EXISTS_RE.match(term)
    if m:
        neg, key = m.groups()
        if neg:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise bad_request(f"unable to parse requirement: invalid label selector term {term!r}")


def label_selector(selector: str | None) -> Predicate:
    """Compile a label selector string into a predicate on objects (empty: matches everything)."""
    if not selector or not selector.strip():
        return lambda obj: True
    terms = [_label_term(t) for t in _split_terms(selector)]

    def match(obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(t(labels) for t in terms)

    return match


def field_value(obj: dict[str, Any], path: str) -> str:
    """The string value at a dotted path (``""`` if absent); booleans render like Go (``true``)."""
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return ""
        cur = cur[part]
    if isinstance(cur, bool):
        return "true" if cur else "false"
    if cur is None or isinstance(cur, dict | list):
        return ""
    return str(cur)


def field_selector(selector: str | None) -> Predicate:
    """Compile a field selector string into a predicate on objects (empty: matches everything)."""
    if not selector or not selector.strip():
        return lambda obj: True
    terms: list[tuple[str, bool, str]] = []
    for term in _split_terms(selector):
        m = _EQ_RE.match(term)
        if not m:
            raise bad_request(f"invalid field selector term {term!r}")
        path, op, value = m.groups()
        terms.append((path, op == "!=", value))

    def match(obj: dict[str, Any]) -> bool:
        return all((field_value(obj, p) != v) if neg else (field_value(obj, p) == v) for p, neg, v in terms)

    return match


def selector_predicate(labels: str | None, fields: str | None) -> Predicate:
    """Both selectors combined (AND)."""
    lp, fp = label_selector(labels), field_selector(fields)
    return lambda obj: lp(obj) and fp(obj)
