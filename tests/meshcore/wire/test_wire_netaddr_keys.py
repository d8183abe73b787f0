"""IP/mask text, key builders and parsers, cluster names and identity ranges, txtar."""

from __future__ import annotations

import base64

import pytest

from meshcore import txtar
from meshcore.errors import WireError
from meshcore.wire import keys
from meshcore.wire.clusterinfo import (
    cluster_id_bits,
    cluster_id_max,
    cluster_id_of_identity,
    cluster_id_shift,
    identity_in_cluster_range,
    identity_range,
    validate_cluster_id,
    validate_cluster_name,
)
from meshcore.wire.netaddr import canonical_ip, mask_ones, prefix_mask, validate_mask


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ""),
        ("10.0.0.1", "10.0.0.1"),
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
        ("2001:0db8::0001", "2001:db8::1"),
        ("fd00:0::1", "fd00::1"),
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("::FFFF:102:304", "1.2.3.4"),
        ("::1.2.3.4", "::102:304"),
        ("2001:DB8::A", "2001:db8::a"),
        ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),
        ("2001:0:0:1:0:0:0:1", "2001:0:0:1::1"),
        ("2001:db8:0:0:1:1:0:0", "2001:db8::1:1:0:0"),
        ("0:0:0:0:0:0:0:0", "::"),
        ("::1", "::1"),
        ("fe80::", "fe80::"),
    ],
)
def test_canonical_ip_matches_go_net_ip_string(text: str, expected: str) -> None:
    assert canonical_ip(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "fe80::1%eth0",
        "010.0.0.1",
        "1.2.3",
        "1.2.3.256",
        "::ffff:01.2.3.4",
        "x",
        " 1.2.3.4",
        "1:2:3:4:5:6:7:8:9",
    ],
)
def test_canonical_ip_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        canonical_ip(text)


def test_masks() -> None:
    assert base64.b64encode(prefix_mask(24, 32)) == b"////AA=="
    assert base64.b64encode(prefix_mask(64, 128)) == b"//////////8AAAAAAAAAAA=="
    assert mask_ones(prefix_mask(0, 32)) == 0
    assert mask_ones(prefix_mask(128, 128)) == 128
    assert mask_ones(b"\xff\x00\xff\x00") is None
    validate_mask(prefix_mask(17, 32))
    for bad in (b"", b"\xff\xff", b"\xff\x00\xff\x00", b"\xff" * 5):
        with pytest.raises(ValueError):
            validate_mask(bad)


def test_join_key_and_state_to_cache() -> None:
    assert (
        keys.join_key("cilium/synced", "c1", "cilium/state/nodes/v1")
        == "cilium/synced/c1/cilium/state/nodes/v1"
    )
    assert keys.join_key("a", "", "b/", "/c//d/") == "a/b/c/d"
    assert keys.state_to_cache("cilium/state/ip/v1") == "cilium/cache/ip/v1"
    assert keys.state_to_cache("cilium/synced/x") == "cilium/synced/x"


def test_key_builders() -> None:
    assert keys.ip_key("10.0.0.1") == "cilium/state/ip/v1/default/10.0.0.1"
    assert keys.cache_ip_key("c2", "10.0.0.1") == "cilium/cache/ip/v1/c2/10.0.0.1"
    assert keys.identity_key(199472) == "cilium/state/identities/v1/id/199472"
    assert keys.identity_cache_key("c2", 5) == "cilium/cache/identities/v1/c2/id/5"
    assert keys.node_key("cluster3", "n1") == "cilium/state/nodes/v1/cluster3/n1"
    assert keys.cache_node_key("cluster3", "n1") == "cilium/cache/nodes/v1/cluster3/n1"
    assert keys.service_key("c", "ns", "svc") == "cilium/state/services/v1/c/ns/svc"
    assert keys.cache_service_key("c", "ns", "svc") == "cilium/cache/services/v1/c/ns/svc"
    assert keys.serviceexport_key("c", "ns", "s") == "cilium/state/serviceexports/v1/c/ns/s"
    assert keys.cache_serviceexport_key("c", "ns", "s") == "cilium/cache/serviceexports/v1/c/ns/s"
    assert keys.endpointslice_key("c", "ns", "s") == "cilium/state/endpointslices/v1/c/ns/s"
    assert keys.cache_endpointslice_key("c", "ns", "s") == "cilium/cache/endpointslices/v1/c/ns/s"
    assert keys.cluster_config_key("c") == "cilium/cluster-config/c"
    assert (
        keys.identity_value_key("k8s:a=b;", "172.0.124.60")
        == "cilium/state/identities/v1/value/k8s:a=b;/172.0.124.60"
    )
    with pytest.raises(WireError):
        keys.node_key("c/x", "n")
    with pytest.raises(WireError):
        keys.node_key("", "n")


def test_canary_keys() -> None:
    assert keys.apiserver_synced_keys("c1") == [
        "cilium/synced/c1/cilium/state/nodes/v1",
        "cilium/synced/c1/cilium/state/services/v1",
        "cilium/synced/c1/cilium/state/identities/v1",
        "cilium/synced/c1/cilium/state/ip/v1",
        "cilium/synced/c1/cilium/state/serviceexports/v1",
    ]
    assert keys.kvstoremesh_synced_keys("r", serviceexports=True) == [
        "cilium/synced/r/cilium/cache/nodes/v1",
        "cilium/synced/r/cilium/cache/services/v1",
        "cilium/synced/r/cilium/cache/identities/v1",
        "cilium/synced/r/cilium/cache/ip/v1",
        "cilium/synced/r/cilium/cache/serviceexports/v1",
    ]


def test_watch_prefixes() -> None:
    assert keys.watch_prefix("node", "r") == "cilium/state/nodes/v1/r/"
    assert keys.watch_prefix("node", "r", cached=True) == "cilium/cache/nodes/v1/r/"
    assert keys.watch_prefix("identity", "r") == "cilium/state/identities/v1/id/"
    assert keys.watch_prefix("identity", "r", cached=True) == "cilium/cache/identities/v1/r/id/"
    assert keys.watch_prefix("ip", "r") == "cilium/state/ip/v1/default/"
    assert keys.watch_prefix("ip", "r", cached=True) == "cilium/cache/ip/v1/r/"


@pytest.mark.parametrize(
    ("key", "info"),
    [
        ("cilium/state/nodes/v1/c3/n1", keys.KeyInfo("node", False, "c3", "n1")),
        ("cilium/cache/nodes/v1/c3/n1", keys.KeyInfo("node", True, "c3", "n1")),
        ("cilium/state/services/v1/c3/ns/s", keys.KeyInfo("service", False, "c3", "ns/s")),
        ("cilium/state/ip/v1/default/fd00::1", keys.KeyInfo("ip", False, None, "fd00::1")),
        ("cilium/state/ip/v1/default/10.0.0.0/8", keys.KeyInfo("ip", False, None, "10.0.0.0/8")),
        ("cilium/cache/ip/v1/c2/10.0.0.1", keys.KeyInfo("ip", True, "c2", "10.0.0.1")),
        ("cilium/state/identities/v1/id/7", keys.KeyInfo("identity", False, None, "7")),
        ("cilium/cache/identities/v1/c2/id/7", keys.KeyInfo("identity", True, "c2", "7")),
        ("cilium/state/serviceexports/v1/c/ns/n", keys.KeyInfo("serviceexport", False, "c", "ns/n")),
        ("cilium/state/endpointslices/v1/c/ns/n", keys.KeyInfo("endpointslice", False, "c", "ns/n")),
        ("cilium/cluster-config/c5", keys.KeyInfo("clusterconfig", False, "c5", "c5")),
        (
            "cilium/synced/c3/cilium/state/ip/v1",
            keys.KeyInfo("synced", False, "c3", "cilium/state/ip/v1"),
        ),
        ("cilium/.heartbeat", keys.KeyInfo("heartbeat", False, None, "")),
    ],
)
def test_parse_key(key: str, info: keys.KeyInfo) -> None:
    assert keys.parse_key(key) == info


@pytest.mark.parametrize(
    "key",
    [
        "foo/bar",
        "cilium/state/nodes/v2/c/n",
        "cilium/state/nodes/v1/c",
        "cilium/state/ip/v1/c3/10.0.0.1",
        "cilium/state/identities/v1/id/abc",
    ],
)
def test_parse_key_rejects(key: str) -> None:
    with pytest.raises(WireError) as info:
        keys.parse_key(key)
    assert info.value.key == key


def test_cluster_names() -> None:
    for good in ("c1", "cluster3", "a", "a-b-1", "x" * 32):
        validate_cluster_name(good, cluster_id=1)
    validate_cluster_name("default", cluster_id=0)
    for bad in ("", "-a", "a-", "A", "a_b", "x" * 33, "a.b"):
        with pytest.raises(WireError):
            validate_cluster_name(bad)
    with pytest.raises(WireError):
        validate_cluster_name("default", cluster_id=3)


def test_cluster_ids_and_identity_ranges() -> None:
    assert cluster_id_max() == 255
    assert cluster_id_max(511) == 511
    with pytest.raises(WireError):
        cluster_id_max(256)
    assert (cluster_id_bits(255), cluster_id_shift(255)) == (8, 16)
    assert (cluster_id_bits(511), cluster_id_shift(511)) == (9, 15)
    assert identity_range(3) == (196608, 262143)
    assert identity_range(3, 511) == (3 << 15, (4 << 15) - 1)
    assert identity_range(0) == (256, 65535)
    assert identity_range(255) == (255 << 16, (1 << 24) - 1)
    assert identity_in_cluster_range(199472, 3)
    assert not identity_in_cluster_range(199472, 4)
    assert cluster_id_of_identity(199472) == 3
    validate_cluster_id(1)
    validate_cluster_id(511, 511)
    for bad in (0, 256):
        with pytest.raises(WireError):
            validate_cluster_id(bad)


TXTAR = b"""#! --flag
comment line
-- a.txt --
hello
-- b.txt --
no final newline"""


def test_txtar_parse() -> None:
    archive = txtar.parse(TXTAR)
    assert archive.comment == b"#! --flag\ncomment line\n"
    assert archive.files == [("a.txt", b"hello\n"), ("b.txt", b"no final newline\n")]


@pytest.mark.parametrize(
    ("data", "comment", "files"),
    [
        (b"", b"", []),
        (b"-- f --\n", b"", [("f", b"")]),
        (b"-- f --", b"", [("f", b"")]),
        (b"x\n-- f --\n-- g --\nz", b"x\n", [("f", b""), ("g", b"z\n")]),
        (b"x -- f --\n", b"x -- f --\n", []),
        (b"--  --\n-- f --\n", b"--  --\n", [("f", b"")]),
        (b"-- spaced name  --\ny\n", b"", [("spaced name", b"y\n")]),
        (b"-- f --\n -- g --\n", b"", [("f", b" -- g --\n")]),
    ],
)
def test_txtar_edge_cases(data: bytes, comment: bytes, files: list[tuple[str, bytes]]) -> None:
    archive = txtar.parse(data)
    assert (archive.comment, archive.files) == (comment, files)
