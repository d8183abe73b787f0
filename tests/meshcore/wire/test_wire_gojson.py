"""Go encoding/json emulation: string escapes, json.Indent, json.Compact, floats."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.errors import WireError
from meshcore.wire.gojson import (
    decode_generic,
    encode_generic,
    go_compact,
    go_escape,
    go_float,
    go_indent,
    go_marshal,
)

_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def go_string_reference(s: str) -> bytes:
    """Go's encodeState.string (HTML-safe, Go >= 1.22), written out character by character."""
    out = ['"']
    for ch in s:
        c = ord(ch)
        if ch in _SHORT:
            out.append(_SHORT[ch])
        elif c < 0x20 or ch in "<>&":
            out.append(f"\\u00{c:02x}")
        elif ch in "\u2028\u2029":
            out.append(f"\\u{c:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out).encode("utf-8")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('say "hi"', b'"say \\"hi\\""'),
        ("back\\slash", b'"back\\\\slash"'),
        ("\b\f\n\r\t", b'"\\b\\f\\n\\r\\t"'),
        ("\x00\x01\x0b\x1f", b'"\\u0000\\u0001\\u000b\\u001f"'),
        ("\x1a\x1e", b'"\\u001a\\u001e"'),
        ("<script>&amp;</script>", b'"\\u003cscript\\u003e\\u0026amp;\\u003c/script\\u003e"'),
        ("line\u2028sep\u2029para", b'"line\\u2028sep\\u2029para"'),
        ("caf\u00e9 \u65e5\u672c \U0001f600", '"caf\u00e9 \u65e5\u672c \U0001f600"'.encode()),
        ("\x7f", b'"\x7f"'),
        ("/", b'"/"'),
    ],
)
def test_go_string_escapes(value: str, expected: bytes) -> None:
    assert go_marshal(value) == expected
    assert go_string_reference(value) == expected


def test_msgspec_native_escapes_match_go_for_every_control_byte() -> None:
    # The post-processing in go_escape relies on msgspec already matching Go here.
    for c in range(0x20):
        assert msgspec.json.encode(chr(c)) == go_string_reference(chr(c)), hex(c)


@given(st.text())
def test_escape_matches_reference_for_any_text(value: str) -> None:
    encoded = go_marshal(value)
    assert encoded == go_string_reference(value)
    assert json.loads(encoded) == value


@given(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=4))
def test_escape_applies_to_keys(mapping: dict[str, str]) -> None:
    encoded = go_marshal(mapping)
    for raw in (b"<", b">", b"&", "\u2028".encode()):
        assert raw not in encoded
    assert json.loads(encoded) == mapping


def test_go_escape_is_identity_without_special_characters() -> None:
    data = b'{"a":"b","c":[1,2]}'
    assert go_escape(data) is data


def test_nil_versus_empty() -> None:
    assert go_marshal({"m": None, "e": {}, "l": None, "k": []}) == b'{"m":null,"e":{},"l":null,"k":[]}'


INDENT_CASES = [
    (b"{}", b"{}"),
    (b"[]", b"[]"),
    (b'{"a":{},"b":[]}', b'{\n  "a": {},\n  "b": []\n}'),
    (b'{"a":[1,2],"b":{"c":null}}', b'{\n  "a": [\n    1,\n    2\n  ],\n  "b": {\n    "c": null\n  }\n}'),
    (b'  \n{"a":1}', b'{\n  "a": 1\n}'),
    (b'{"a":1}\n ', b'{\n  "a": 1\n}\n '),
    (b'{"x":"{[,:]} \\"q\\" "}', b'{\n  "x": "{[,:]} \\"q\\" "\n}'),
    (b'{ "z" : 1 , "a" : [ true , false ] }', b'{\n  "z": 1,\n  "a": [\n    true,\n    false\n  ]\n}'),
    (b'"str"', b'"str"'),
    (b"12", b"12"),
    (b"[[]]", b"[\n  []\n]"),
]


@pytest.mark.parametrize(("src", "expected"), INDENT_CASES)
def test_go_indent(src: bytes, expected: bytes) -> None:
    assert go_indent(src) == expected


def test_go_indent_keeps_key_order_and_matches_python_for_simple_values() -> None:
    src = b'{"z":1,"a":{"y":[1,{"b":2}],"c":"d"}}'
    assert go_indent(src) == json.dumps(json.loads(src), indent=2).encode()


def test_go_indent_rejects_invalid_json() -> None:
    with pytest.raises(WireError):
        go_indent(b'{"a":')


def test_go_compact() -> None:
    assert go_compact(b'{ "a" : [ 1 , "x y" ] }\n') == b'{"a":[1,"x y"]}'
    assert go_compact(go_indent(b'{"a":[1,{"b":"c d"}]}')) == b'{"a":[1,{"b":"c d"}]}'


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, "1"),
        (-0.0, "-0"),
        (0.5, "0.5"),
        (100.0, "100"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (1.5e-7, "1.5e-7"),
        (0.000001, "0.000001"),
        (1.2345e-10, "1.2345e-10"),
        (3.14, "3.14"),
    ],
)
def test_go_float(value: float, expected: str) -> None:
    assert go_float(value) == expected


def test_generic_round_trip_keeps_order() -> None:
    data = b'{"z":1,"a":[true,null,"<x>"],"m":{"b":1.5,"a":2}}'
    assert encode_generic(decode_generic(data)) == data.replace(b"<", b"\\u003c").replace(b">", b"\\u003e")
