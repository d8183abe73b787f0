"""The agent's ipcache decoder: its fast path accepts exactly what the reference
(``validate_ip(decode_ip_identity(raw))``) accepts, with the same result, and errors the same way."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.validate import RESERVED_REMOTE_NODE, RemoteInfo, ip_decoder, validate_ip
from meshcore.errors import WireError
from meshcore.wire import IPIdentityPair, decode_ip_identity

REMOTE = RemoteInfo("c2", 2)
LOW, HIGH = REMOTE.identity_range()
# One decoder for every example: what it remembers of earlier values must never change an answer.
DECODE = ip_decoder(lambda: REMOTE)

IPS = ["10.2.0.1", "10.2.0.2", "172.18.0.9", "0.0.0.0", "255.255.255.255", "010.2.0.1", "10.2.0", "256.1.1.1",
       "", " 10.2.0.1", "fd00::1", "FD00::1", "fd00:0:0:0:0:0:0:1", "::ffff:10.2.0.1", "fe80::1%eth0", "x"]
IDS = [0, 1, 2, 6, 255, 256, LOW - 1, LOW, LOW + 5, HIGH, HIGH + 1, 2**32 - 1, 2**32, -1]


def reference(name: str, raw: bytes) -> IPIdentityPair:
    return validate_ip(REMOTE, name, decode_ip_identity(raw))


def outcome(fn: object, name: str, raw: bytes) -> tuple[str, object]:
    try:
        return ("ok", fn(name, raw))  # type: ignore[operator]
    except WireError as err:
        return ("error", str(err))


@st.composite
def values(draw: st.DrawFn) -> tuple[str, bytes]:
    ip = draw(st.sampled_from(IPS))
    doc: dict[str, object] = {"IP": ip, "HostIP": draw(st.sampled_from(IPS)), "ID": draw(st.sampled_from(IDS))}
    if draw(st.booleans()):
        doc["Mask"] = draw(st.sampled_from(["/////w==", "////AA==", "AAAAAA==", "/wD/AA==", None, 5]))
    if draw(st.booleans()):
        doc["Key"] = draw(st.sampled_from([0, 3, 255, 256, "1"]))
    if draw(st.booleans()):
        doc["K8sPodName"] = draw(st.sampled_from(["pod", 7, None]))
    name = draw(st.sampled_from([ip, "10.2.0.1", "10.2.0.1/32", "fd00::1", ""]))
    raw = json.dumps(doc).encode()
    if draw(st.integers(0, 9)) == 0:
        raw = draw(st.sampled_from([b"", b"{", b"[]", b"null", raw[:-1], raw + b"x"]))
    return name, raw


@settings(max_examples=600, deadline=None)
@given(values())
def test_fast_path_equals_the_reference(case: tuple[str, bytes]) -> None:
    name, raw = case
    assert outcome(DECODE, name, raw) == outcome(reference, name, raw)


def test_common_entry_and_rewrites() -> None:
    pair = IPIdentityPair(ip="10.2.0.1", host_ip="172.18.0.9", id=LOW + 1)
    assert DECODE("10.2.0.1", pair.encode()) == pair
    host = IPIdentityPair(ip="172.18.0.9", host_ip="172.18.0.9", id=1)
    assert DECODE("172.18.0.9", host.encode()).id == RESERVED_REMOTE_NODE
    with pytest.raises(WireError, match="outside cluster 'c2'"):
        DECODE("10.2.0.1", IPIdentityPair(ip="10.2.0.1", id=HIGH + 1).encode())
    with pytest.raises(WireError, match="differs from the entry's prefix"):
        DECODE("10.2.0.2", pair.encode())


def test_identity_range_follows_a_new_config() -> None:
    current = [RemoteInfo("c2", 2)]
    decode = ip_decoder(lambda: current[0])
    raw = IPIdentityPair(ip="10.2.0.1", id=LOW + 1).encode()
    assert decode("10.2.0.1", raw).id == LOW + 1
    current[0] = RemoteInfo("c2", 3)
    with pytest.raises(WireError, match="outside cluster 'c2'"):
        decode("10.2.0.1", raw)
