"""The JSONPath subset CRDs' ``additionalPrinterColumns`` use (pure).

Paths as kube-apiserver takes them for printer columns (without the surrounding ``{}``):
``.spec.replicas``, ``.metadata.labels.app``, ``.metadata.annotations['a.b/c']``, ``.items[0].x``,
``.items[-1]``, ``.items[*].name``, and filters ``[?(@.type=="Ready")]`` (``==``, ``!=``, ``<``,
``<=``, ``>``, ``>=`` against a quoted string, a number, ``true``/``false``, or ``@.x`` alone for
"present"). Missing keys give no result (kube-apiserver's ``AllowMissingKeys``), never an error.
:func:`parse` raises :class:`JSONPathError` for a path outside the subset.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


class JSONPathError(ValueError):
    """The path is not in the supported subset."""


@dataclass(frozen=True, slots=True)
class Field:
    name: str


@dataclass(frozen=True, slots=True)
class Index:
    index: int


@dataclass(frozen=True, slots=True)
class Wildcard:
    pass


@dataclass(frozen=True, slots=True)
class Filter:
    path: tuple[Step, ...]
    op: str | None  # None: the path only has to exist
    value: Any = None


Step = Field | Index | Wildcard | Filter

_NAME = re.compile(r"[^.\[\]\s]+")
_FILTER = re.compile(r"""^@((?:\.[^.\[\]\s=!<>]+)+)\s*(?:(==|!=|<=|>=|<|>)\s*(.+?))?\s*$""")
_OPS = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _literal(text: str) -> Any:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise JSONPathError(f"unsupported filter value {text!r}") from None


def _bracket(body: str, path: str) -> Step:
    body = body.strip()
    if body == "*":
        return Wildcard()
    if body.startswith("?(") and body.endswith(")"):
        m = _FILTER.match(body[2:-1].strip())
        if m is None:
            raise JSONPathError(f"unsupported filter [{body}] in {path!r}")
        sub = tuple(Field(n) for n in m.group(1).split(".")[1:])
        return Filter(sub, m.group(2), _literal(m.group(3)) if m.group(2) else None)
    if len(body) >= 2 and body[0] == body[-1] and body[0] in "'\"":
        return Field(body[1:-1])
    try:
        return Index(int(body))
    except ValueError:
        raise JSONPathError(f"unsupported subscript [{body}] in {path!r}") from None


def parse(path: str) -> tuple[Step, ...]:
    """The steps of ``path`` (``{...}`` around it is accepted and dropped)."""
    text = path.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1].strip()
    if text.startswith("$"):
        text = text[1:]
    steps: list[Step] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == ".":
            m = _NAME.match(text, i + 1)
            if m is None:
                raise JSONPathError(f"expected a field name after '.' at {i} in {path!r}")
            steps.append(Field(m.group(0)))
            i = m.end()
        elif c == "[":
            depth, j = 0, i
            quote: str | None = None
            while j < len(text):  # the matching ']' (filters nest brackets and quotes)
                ch = text[j]
                if quote:
                    quote = None if ch == quote else quote
                elif ch in "'\"":
                    quote = ch
                elif ch == "[":
                    depth += 1
                elif ch == "]":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if j >= len(text):
                raise JSONPathError(f"unclosed '[' at {i} in {path!r}")
            steps.append(_bracket(text[i + 1:j], path))
            i = j + 1
        else:
            raise JSONPathError(f"unexpected {c!r} at {i} in {path!r}")
    return tuple(steps)


def _apply(step: Step, value: Any) -> Iterator[Any]:
    if isinstance(step, Field):
        if isinstance(value, dict) and step.name in value:
            yield value[step.name]
    elif isinstance(step, Index):
        if isinstance(value, list) and -len(value) <= step.index < len(value):
            yield value[step.index]
    elif isinstance(step, Wildcard):
        if isinstance(value, list):
            yield from value
        elif isinstance(value, dict):
            yield from value.values()
    elif isinstance(value, list):
        for item in value:
            if _matches(step, item):
                yield item


def _matches(f: Filter, item: Any) -> bool:
    found = find_steps(f.path, item)
    if f.op is None:
        return bool(found)
    for v in found:
        try:
            if _OPS[f.op](v, f.value):
                return True
        except TypeError:
            continue
    return False


def find_steps(steps: tuple[Step, ...], doc: Any) -> list[Any]:
    """Every value ``steps`` reach in ``doc``, in document order."""
    current = [doc]
    for step in steps:
        current = [out for v in current for out in _apply(step, v)]
    return current


def find(path: str, doc: Any) -> list[Any]:
    """Every value ``path`` reaches in ``doc`` (raises :class:`JSONPathError` for an unsupported path)."""
    return find_steps(parse(path), doc)
