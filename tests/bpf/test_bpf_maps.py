"""Pinned maps: create, pin, reopen with a layout check, batch writes, LPM lookups, counters."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from bpf import syscall
from bpf.bench import bench_ipcache
from bpf.layouts import (
    MAP_SPECS,
    CounterKey,
    CounterValue,
    Direction,
    IPCacheKey,
    IPCacheValue,
    Reason,
    counter_index,
    decode_mark,
    encode_mark,
    ip_text,
    ipcache_key,
    ipcache_value,
    pack_ipcache_key,
    pack_ipcache_value,
)
from bpf.maps import MapError, MapLayoutError, NodeMaps, node_pin_dir, open_or_create


def test_create_pin_and_reopen_keeps_entries(pin_root: Path) -> None:
    maps = NodeMaps("node-a", pin_root)
    assert sorted(p.name for p in maps.directory.iterdir()) == sorted(MAP_SPECS)
    maps.ipcache.update(ipcache_key("10.1.0.0/16"), ipcache_value(4242, "192.168.0.7", remote_cluster=True))
    maps.close()

    again = NodeMaps("node-a", pin_root)  # a restart: same pins, same entries
    value = again.ipcache.get(ipcache_key("10.1.2.3"))
    assert value is not None and value.sec_identity == 4242
    assert ip_text(1, bytes(value.tunnel_endpoint)) == "192.168.0.7"
    assert value.flags == 0b1010  # has_tunnel_ep | remote_cluster
    again.close()


def test_reopen_with_another_layout_fails_clearly(pin_root: Path) -> None:
    directory = node_pin_dir("node-b", pin_root)
    directory.mkdir()
    spec = MAP_SPECS["policy"]
    fd = syscall.map_create(spec.map_type, spec.key_size, spec.value_size + 8, 1024, 0, "policy")
    syscall.obj_pin(fd, str(directory / "policy"))
    os.close(fd)
    with pytest.raises(MapLayoutError, match="layout changed"):
        NodeMaps("node-b", pin_root)
    assert (directory / "policy").exists()  # never silently recreated


def test_bad_node_name_is_refused(pin_root: Path) -> None:
    with pytest.raises(MapError):
        node_pin_dir("../escape", pin_root)


def test_batch_update_iterate_delete_100k_ipcache(pin_root: Path) -> None:
    maps = NodeMaps("node-c", pin_root)
    base = int(ipaddress.IPv4Address("10.0.0.0"))
    n = 100_000
    entries = [
        (ipcache_key(f"{ipaddress.IPv4Address(base + i)}/32"), ipcache_value(1000 + i % 5000, "172.16.0.1"))
        for i in range(n)
    ]
    assert maps.ipcache.update_many(entries) == n
    seen = {bytes(k): v.sec_identity for k, v in maps.ipcache.items()}
    assert len(seen) == n
    assert seen[bytes(ipcache_key("10.0.0.7/32"))] == 1007

    assert maps.ipcache.delete_many([k for k, _ in entries[: n // 2]]) == n // 2
    # Deleting again is a no-op, also for keys mixed with present ones.
    assert maps.ipcache.delete_many([entries[0][0], entries[n - 1][0]]) == 1
    assert len(maps.ipcache) == n // 2 - 1
    maps.close()


def test_lpm_longest_prefix_wins(pin_root: Path) -> None:
    maps = NodeMaps("node-d", pin_root)
    maps.ipcache.update_many(
        [
            (ipcache_key("0.0.0.0/0"), ipcache_value(2)),
            (ipcache_key("10.0.0.0/8"), ipcache_value(100)),
            (ipcache_key("10.1.0.0/16"), ipcache_value(200, "192.168.1.1")),
            (ipcache_key("10.1.2.3/32"), ipcache_value(300)),
            (ipcache_key("fd00::/64"), ipcache_value(400, "fd00:ffff::1")),
        ]
    )

    def lookup(ip: str) -> int | None:
        value = maps.ipcache.get(ipcache_key(ip))
        return None if value is None else value.sec_identity

    assert lookup("10.1.2.3") == 300
    assert lookup("10.1.2.4") == 200
    assert lookup("10.2.0.1") == 100
    assert lookup("8.8.8.8") == 2
    assert lookup("fd00::5") == 400
    assert lookup("fd01::5") is None  # the v4 default does not cover v6
    v6 = maps.ipcache.get(ipcache_key("fd00::5"))
    assert v6 is not None and v6.flags & 0b0110 == 0b0110  # has_tunnel_ep | ipv6_tunnel_ep
    maps.close()


def test_counters_are_summed_across_cpus(pin_root: Path) -> None:
    maps = NodeMaps("node-e", pin_root)
    counters = maps.counters_map
    key = CounterKey(counter_index(Reason.POLICY_DENIED, Direction.EGRESS))
    per_cpu = [CounterValue(packets=i + 1, bytes=100 * (i + 1)) for i in range(counters.ncpus)]
    counters.update_percpu(key, per_cpu)
    total = sum(range(1, counters.ncpus + 1))
    assert maps.counters() == {(Reason.POLICY_DENIED, Direction.EGRESS): (total, 100 * total)}
    assert len(counters.get_percpu(key)) == counters.ncpus
    maps.close()


def test_open_or_create_types_and_mark_codec(pin_root: Path) -> None:
    handle = open_or_create(MAP_SPECS["ipcache"], pin_root / "x", IPCacheKey, IPCacheValue)
    assert handle.get(ipcache_key("1.2.3.4")) is None
    handle.close()
    assert decode_mark(encode_mark(0x123456)) == 0x123456
    assert decode_mark(0x123456) is None


def test_bulk_packers_match_the_structures() -> None:
    for prefix in ("10.1.2.0/24", "10.1.2.3/32", "0.0.0.0/0", "fd00::/64", "fd00::1/128"):
        assert pack_ipcache_key(prefix) == bytes(ipcache_key(prefix))
        assert pack_ipcache_key(prefix, 7) == bytes(ipcache_key(prefix, 7))
    for args in ((4242, "192.168.0.1"), (6, ""), (9, "fd00::1")):
        assert pack_ipcache_value(*args, remote_cluster=True) == bytes(ipcache_value(*args, remote_cluster=True))


def test_update_packed_and_bench(pin_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    maps = NodeMaps("node-f", pin_root)
    items = [(pack_ipcache_key(f"10.9.{i}.0/24"), pack_ipcache_value(300 + i, "192.168.9.9")) for i in range(200)]
    assert maps.ipcache.update_packed(items) == 200
    value = maps.ipcache.get(ipcache_key("10.9.17.5"))
    assert value is not None and value.sec_identity == 317
    assert maps.ipcache.delete_packed(k for k, _ in items) == 200
    maps.close()

    result = bench_ipcache(2000, pin_root)
    print(result.summary())
    assert result.raw_batch_per_s > 0 and "raw UPDATE_BATCH" in capsys.readouterr().out
