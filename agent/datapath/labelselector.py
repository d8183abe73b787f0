"""Kubernetes label selectors in their string form (``k8s.io/apimachinery/pkg/labels.Parse``), for
``--node-encryption-opt-out-labels``. Pure.

Requirements, comma-joined as AND: ``key`` (exists), ``!key`` (does not exist), ``key=value``,
``key==value``, ``key!=value``, ``key in (a,b)``, ``key notin (a,b)``. An empty selector has no
requirement: as the opt-out selector it selects no node (Cilium: "an empty selector forces
encryption everywhere").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = ["Requirement", "Selector", "parse_selector"]

Operator = Literal["exists", "!exists", "=", "!=", "in", "notin"]

_KEY = r"[A-Za-z0-9]([A-Za-z0-9_./-]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?)?"
_SET = re.compile(rf"^({_KEY})\s+(in|notin)\s+\(([^()]*)\)$")
_EQ = re.compile(rf"^({_KEY})\s*(==|!=|=)\s*({_VALUE})$")
_EXISTS = re.compile(rf"^(!?)\s*({_KEY})$")
_VALUE_RE = re.compile(rf"^{_VALUE}$")


@dataclass(frozen=True, slots=True)
class Requirement:
    """One requirement on one label key."""

    key: str
    op: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        has = self.key in labels
        if self.op == "exists":
            return has
        if self.op == "!exists":
            return not has
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return has and value in self.values
        return not has or value not in self.values  # "!=" and "notin" also select nodes without the key


@dataclass(frozen=True, slots=True)
class Selector:
    """A parsed selector; :attr:`empty` when it has no requirement (see the module docstring)."""

    requirements: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether ``labels`` satisfy every requirement (an empty selector matches nothing)."""
        return bool(self.requirements) and all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        parts = []
        for r in self.requirements:
            if r.op == "exists":
                parts.append(r.key)
            elif r.op == "!exists":
                parts.append(f"!{r.key}")
            elif r.op in ("in", "notin"):
                parts.append(f"{r.key} {r.op} ({','.join(r.values)})")
            else:
                parts.append(f"{r.key}{r.op}{r.values[0]}")
        return ",".join(parts)


def _terms(text: str) -> list[str]:
    terms: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0 or depth > 1:
            raise ValueError(f"unbalanced parentheses in label selector {text!r}")
        if ch == "," and depth == 0:
            terms.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    if depth:
        raise ValueError(f"unbalanced parentheses in label selector {text!r}")
    terms.append("".join(current).strip())
    return terms


def parse_selector(text: str) -> Selector:
    """Parse ``text``; :class:`ValueError` says which term is malformed."""
    if not text.strip():
        return Selector()
    out: list[Requirement] = []
    for term in _terms(text):
        if not term:
            raise ValueError(f"empty requirement in label selector {text!r}")
        if m := _SET.match(term):
            values = tuple(v.strip() for v in m.group(4).split(","))
            bad = [v for v in values if not v or not _VALUE_RE.match(v)]
            if bad:
                raise ValueError(f"invalid value {bad[0]!r} in {term!r}")
            out.append(Requirement(m.group(1), "in" if m.group(3) == "in" else "notin", values))
        elif m := _EQ.match(term):
            op: Operator = "!=" if m.group(3) == "!=" else "="
            out.append(Requirement(m.group(1), op, (m.group(4),)))
        elif m := _EXISTS.match(term):
            out.append(Requirement(m.group(2), "!exists" if m.group(1) else "exists"))
        else:
            raise ValueError(
                f"cannot parse {term!r}: expected key, !key, key=value, key!=value, key in (a,b) or key notin (a,b)"
            )
    return Selector(tuple(out))
