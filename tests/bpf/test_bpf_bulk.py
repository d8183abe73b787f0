"""The bulk write/read paths on a real pinned ipcache map: ``update_columns`` / ``update_packed``
then ``items_packed`` / ``items`` read back exactly what was packed, and a reconciler over
:class:`~agent.datapath.targets.IPCacheTarget` writes in bulk and, restarted, reads the map back
with ``LOOKUP_BATCH`` and rewrites nothing that is unchanged."""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.datapath.targets import IPCacheTarget
from bpf import maps as bpf_maps
from bpf.layouts import (
    IPCACHE_F_HAS_TUNNEL_EP,
    IPCACHE_F_IPV6_TUNNEL_EP,
    IPCACHE_F_REMOTE_CLUSTER,
    IPCACHE_F_SKIP_TUNNEL,
    IPCacheKey,
    IPCacheValue,
    ip_text,
    pack_ipcache_key,
    pack_ipcache_value,
)
from bpf.maps import MapError, NodeMaps
from meshcore.reconcile import Reconciler
from tests.meshcore.store.helpers import running

_V4 = st.builds(
    lambda ip, bits: str(ipaddress.ip_network(f"{ipaddress.IPv4Address(ip)}/{bits}", strict=False)),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
_V6 = st.builds(
    lambda ip, bits: str(ipaddress.ip_network(f"{ipaddress.IPv6Address(ip)}/{bits}", strict=False)),
    st.integers(0, 2**128 - 1),
    st.integers(0, 128),
)
_VALUE = st.tuples(
    st.integers(0, 2**24 - 1),  # identity
    st.sampled_from(["", "192.168.0.1", "10.255.0.7", "fd00::1"]),  # tunnel endpoint
    st.integers(0, 511),  # cluster id
    st.integers(0, 255),  # encrypt key
    st.booleans(),  # remote cluster
    st.booleans(),  # skip tunnel
)


@pytest.fixture(scope="module")
def node_maps() -> Iterator[NodeMaps]:
    """One node's maps for the whole module (hypothesis examples empty the ipcache in between)."""
    root = Path("/sys/fs/bpf") / f"cmtest-{uuid.uuid4().hex[:10]}"
    root.mkdir()
    maps = NodeMaps("bulk", root)
    try:
        yield maps
    finally:
        maps.unpin()
        root.rmdir()


def _empty(maps: NodeMaps) -> None:
    maps.ipcache.delete_packed([k for k, _ in maps.ipcache.items_packed()])
    assert list(maps.ipcache.items_packed()) == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.dictionaries(st.one_of(_V4, _V6), _VALUE, max_size=300), columns=st.booleans())
def test_packed_entries_read_back_equal(
    node_maps: NodeMaps, entries: dict[str, tuple[int, str, int, int, bool, bool]], columns: bool
) -> None:
    _empty(node_maps)
    packed = {pack_ipcache_key(prefix): pack_ipcache_value(*value) for prefix, value in entries.items()}
    ipcache = node_maps.ipcache
    written = ipcache.update_columns(list(packed), list(packed.values())) if columns else ipcache.update_packed(
        list(packed.items())
    )
    assert written == len(packed)
    assert dict(ipcache.items_packed()) == packed
    typed = {bytes(k): v for k, v in ipcache.items()}
    assert {k: bytes(v) for k, v in typed.items()} == packed
    for prefix, (identity, tunnel, cluster_id, encrypt_key, remote, skip) in entries.items():
        key = IPCacheKey.from_buffer_copy(pack_ipcache_key(prefix))
        net = ipaddress.ip_network(prefix)
        assert key.prefixlen == 32 + net.prefixlen
        assert ipaddress.ip_address(ip_text(key.family, bytes(key.ip))) == net.network_address
        value = typed[bytes(key)]
        assert isinstance(value, IPCacheValue)
        assert (value.sec_identity, value.cluster_id, value.encrypt_key) == (identity, cluster_id, encrypt_key)
        flags = (IPCACHE_F_SKIP_TUNNEL * skip) | (IPCACHE_F_REMOTE_CLUSTER * remote)
        if tunnel:
            flags |= IPCACHE_F_HAS_TUNNEL_EP | (IPCACHE_F_IPV6_TUNNEL_EP * (":" in tunnel))
        assert value.flags == flags


def test_update_columns_spans_batches_and_checks_lengths(node_maps: NodeMaps, monkeypatch: pytest.MonkeyPatch) -> None:
    _empty(node_maps)
    monkeypatch.setattr(bpf_maps, "BATCH_CHUNK", 7)  # many chunks, the last one partial
    keys = [pack_ipcache_key(f"10.7.{i >> 8}.{i & 255}/32") for i in range(100)]
    values = [pack_ipcache_value(1000 + i, "192.168.7.7") for i in range(100)]
    assert node_maps.ipcache.update_columns(keys, values) == 100
    assert dict(node_maps.ipcache.items_packed()) == dict(zip(keys, values, strict=True))
    with pytest.raises(MapError, match="100 keys but 99 values"):
        node_maps.ipcache.update_columns(keys, values[:99])
    assert node_maps.ipcache.update_columns([], []) == 0 and node_maps.ipcache.update_packed([]) == 0


def test_items_packed_refuses_a_percpu_map(node_maps: NodeMaps) -> None:
    with pytest.raises(MapError, match="per-CPU"):
        next(node_maps.counters_map.items_packed())


def _desired(n: int, identity: int) -> dict[bytes, bytes]:
    return {
        pack_ipcache_key(f"10.8.{i >> 8}.{i & 255}/32"): pack_ipcache_value(identity + i % 3, "192.168.8.8", 2)
        for i in range(n)
    }


async def _sync(maps: NodeMaps, desired: dict[bytes, bytes]) -> Reconciler[bytes, bytes]:
    rec: Reconciler[bytes, bytes] = Reconciler("ipcache", IPCacheTarget(maps), batch_size=1000)
    async with running(rec.run()):
        rec.set_desired(desired)
        await asyncio.wait_for(rec.wait_synced(), 30)
    return rec


def test_reconciler_over_the_map_writes_in_bulk_and_restarts_without_rewrites(node_maps: NodeMaps) -> None:
    _empty(node_maps)
    first = _desired(5000, 700)
    rec = asyncio.run(_sync(node_maps, first))
    assert (rec.updates, rec.deletes) == (5000, 0)
    assert dict(node_maps.ipcache.items_packed()) == first

    # Restart: a new reconciler reads the pinned map back; only the real difference is written.
    second = dict(list(first.items())[100:])
    changed = list(second)[:10]
    for k in changed:
        second[k] = pack_ipcache_value(9999, "192.168.8.9", 2)
    rec = asyncio.run(_sync(node_maps, second))
    assert (rec.updates, rec.deletes) == (10, 100)
    assert dict(node_maps.ipcache.items_packed()) == second
    rec = asyncio.run(_sync(node_maps, second))
    assert (rec.updates, rec.deletes) == (0, 0)
