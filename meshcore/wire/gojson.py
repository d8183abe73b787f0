"""Byte-exact emulation of Go's ``encoding/json`` output (Marshal, Indent, Compact).

Records are encoded by building plain dicts in Go struct-field order and handing them to
``msgspec.json.encode``; :func:`go_escape` then rewrites the few escapes where msgspec and Go
differ. msgspec already matches Go for ``\\"``, ``\\\\``, ``\\b``, ``\\f``, ``\\n``, ``\\r``,
``\\t`` and lowercase ``\\u00XX`` for other control bytes (see tests/meshcore/wire/test_gojson.py);
Go additionally escapes ``<``, ``>``, ``&`` (HTML-safe mode, the Marshal default) and U+2028 /
U+2029. Those characters can only occur inside JSON strings, so a byte-level replace is safe.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any

import msgspec

from meshcore.errors import WireError

__all__ = [
    "go_escape",
    "go_marshal",
    "go_indent",
    "go_compact",
    "go_float",
    "decode_generic",
    "encode_generic",
]

_REPLACEMENTS: tuple[tuple[bytes, bytes], ...] = (
    (b"<", b"\\u003c"),
    (b">", b"\\u003e"),
    (b"&", b"\\u0026"),
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
)
_NEEDS_FIXUP = re.compile(b"[<>&]|\xe2\x80[\xa8\xa9]")

_encoder = msgspec.json.Encoder()


def go_escape(data: bytes) -> bytes:
    """Rewrite msgspec JSON output so that its string escapes match Go's HTML-safe escaping."""
    if _NEEDS_FIXUP.search(data) is None:
        return data
    for raw, escaped in _REPLACEMENTS:
        data = data.replace(raw, escaped)
    return data


def go_marshal(obj: Any) -> bytes:
    """Encode ``obj`` (dicts in the wanted key order, lists, str, int, bool, None, msgspec
    Structs) compactly, with Go's string escaping. Dict order is kept as given: callers sort Go
    maps themselves."""
    return go_escape(_encoder.encode(obj))


# --- json.Indent / json.Compact -------------------------------------------------------------

_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\],:]|[ \t\r\n]+|[^{}\[\],:" \t\r\n]+', re.DOTALL)
_SPACE = b" \t\r\n"


def _validate_json(data: bytes) -> None:
    try:
        msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise WireError(f"invalid JSON: {exc}") from None


def go_indent(data: bytes, prefix: bytes = b"", indent: bytes = b"  ") -> bytes:
    """Reproduce Go's ``json.Indent(dst, data, prefix, indent)`` byte for byte.

    Key order and string contents are kept verbatim; empty objects and arrays stay ``{}`` and
    ``[]``; leading whitespace is dropped and trailing whitespace copied, as Go does. Like Go,
    nothing is appended after the value (``kvstore/list -o json`` adds its own newline).
    Raises :class:`WireError` when ``data`` is not valid JSON.
    """
    _validate_json(data)
    body = data.rstrip(_SPACE)
    trailer = data[len(body) :]
    out = bytearray()
    need_indent = False
    depth = 0

    def newline() -> None:
        out.extend(b"\n")
        out.extend(prefix)
        out.extend(indent * depth)

    for match in _TOKEN.finditer(body):
        tok = match.group()
        first = tok[0]
        if first in _SPACE:
            continue
        if need_indent and tok not in (b"}", b"]"):
            need_indent = False
            depth += 1
            newline()
        if tok in (b"{", b"["):
            need_indent = True
            out.extend(tok)
        elif tok == b",":
            out.extend(tok)
            newline()
        elif tok == b":":
            out.extend(b": ")
        elif tok in (b"}", b"]"):
            if need_indent:
                need_indent = False
            else:
                depth -= 1
                newline()
            out.extend(tok)
        else:
            out.extend(tok)
    out.extend(trailer)
    return bytes(out)


def go_compact(data: bytes) -> bytes:
    """Reproduce Go's ``json.Compact``: drop insignificant whitespace, keep everything else."""
    _validate_json(data)
    return b"".join(m.group() for m in _TOKEN.finditer(data) if m.group()[0] not in _SPACE)


# --- generic (schema-less) values -----------------------------------------------------------


def go_float(value: float) -> str:
    """Format a float64 as Go's encoding/json does (shortest repr; ``e`` notation outside
    [1e-6, 1e21), with ``e-07`` cleaned to ``e-7``)."""
    if math.isnan(value) or math.isinf(value):
        raise WireError(f"unsupported float value {value!r}")
    magnitude = abs(value)
    dec = Decimal(repr(value))
    if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):
        text = f"{dec.normalize():e}"
        mantissa, _, exponent = text.partition("e")
        sign = exponent[0] if exponent[0] in "+-" else "+"
        digits = exponent.lstrip("+-")
        if len(digits) < 2:
            digits = "0" + digits
        if sign == "-" and digits[0] == "0":
            digits = digits[1:]
        return f"{mantissa}e{sign}{digits}"
    return format(dec.normalize(), "f")


def _floats_to_raw(obj: Any) -> Any:
    if isinstance(obj, float):
        return msgspec.Raw(go_float(obj).encode())
    if isinstance(obj, dict):
        return {k: _floats_to_raw(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_floats_to_raw(v) for v in obj]
    return obj


def decode_generic(data: bytes, *, key: str | None = None) -> Any:
    """Decode any JSON value, keeping object key order (for values without a typed record,
    such as the display form of ``cilium/state/endpointslices/v1`` entries)."""
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise WireError(f"invalid JSON: {exc}", key=key) from None


def encode_generic(obj: Any) -> bytes:
    """Encode a value from :func:`decode_generic` as Go would re-marshal it, in the given key
    order (Go only sorts keys of maps, which the original writer already did)."""
    return go_marshal(_floats_to_raw(obj))
