"""The ipcache ownership tracker, driven through the ciliumendpoints.txtar event sequence."""

from __future__ import annotations

from typing import Any

import yaml

from clustermesh_apiserver.converters import cilium_endpoint_owner, cilium_endpoint_to_pairs, ipcache_tracker
from clustermesh_apiserver.converters.ownership import OwnershipTracker
from lab.shared import CONFORMANCE_DIR
from meshcore import txtar

CORPUS = CONFORMANCE_DIR / "clustermesh-apiserver/clustermesh/testdata"
SHARED_IP = "10.244.2.91"


def _objects() -> dict[str, dict[str, Any]]:
    archive = txtar.parse_file(CORPUS / "ciliumendpoints.txtar")
    return {name[: -len(".yaml")]: yaml.safe_load(data) for name, data in archive.files if name.endswith(".yaml")}


def test_ciliumendpoints_sequence() -> None:
    objs = _objects()
    tracker = ipcache_tracker()
    kv: dict[str, str] = {}

    def upsert(name: str) -> tuple[list[str], list[str]]:
        obj = objs[name]
        changes = tracker.upsert(cilium_endpoint_owner(obj), cilium_endpoint_to_pairs(obj))
        for pair in changes.upserts:
            kv[pair.prefix_string()] = pair.k8s_pod_name
        for key in changes.deletes:
            del kv[key]
        return [p.prefix_string() for p in changes.upserts], list(changes.deletes)

    def delete(name: str) -> tuple[list[str], list[str]]:
        changes = tracker.delete(cilium_endpoint_owner(objs[name]))
        for pair in changes.upserts:
            kv[pair.prefix_string()] = pair.k8s_pod_name
        for key in changes.deletes:
            del kv[key]
        return [p.prefix_string() for p in changes.upserts], list(changes.deletes)

    ep3, ep4 = ("foo", "cep-002"), ("foo", "cep-004")
    upsert("endpoint-3")
    assert tracker.primary(SHARED_IP) == ep3
    # endpoint-4 claims the same IPv4: endpoint-3 keeps it, only the new IPv6 is written.
    assert upsert("endpoint-4") == (["fd00:10:244:2::e4b5"], [])
    assert tracker.queued(SHARED_IP) == [ep4] and kv[SHARED_IP] == "cep-002"
    # Deleting the queued owner changes nothing for the shared key.
    assert delete("endpoint-4") == ([], ["fd00:10:244:2::e4b5"])
    assert kv[SHARED_IP] == "cep-002" and tracker.queued(SHARED_IP) == []
    upsert("endpoint-4")
    # Deleting the primary promotes the queued owner and rewrites the key with its entry.
    ups, dels = delete("endpoint-3")
    assert ups == [SHARED_IP] and sorted(dels) == ["fd00:10:244:2::e4b4"]
    assert tracker.primary(SHARED_IP) == ep4 and kv[SHARED_IP] == "cep-004"
    upsert("endpoint-3")
    assert tracker.primary(SHARED_IP) == ep4 and tracker.queued(SHARED_IP) == [ep3]
    # An update of the primary re-emits its entries (the store drops unchanged values).
    assert SHARED_IP in upsert("endpoint-4")[0]
    delete("endpoint-4")
    assert tracker.primary(SHARED_IP) == ep3 and kv[SHARED_IP] == "cep-002"
    delete("endpoint-3")
    assert SHARED_IP not in kv and len(tracker) == 0


def test_queued_update_is_remembered_not_written() -> None:
    tracker: OwnershipTracker[str, tuple[str, str]] = OwnershipTracker(lambda e: e[0])
    assert tracker.upsert("a", [("k", "a1")]).upserts == (("k", "a1"),)
    assert not tracker.upsert("b", [("k", "b1")])
    assert not tracker.upsert("b", [("k", "b2")])  # queued update: no store change
    changes = tracker.delete("a")
    assert changes.upserts == (("k", "b2"),) and changes.deletes == ()  # latest queued entry wins


def test_update_dropping_a_key_releases_it() -> None:
    tracker: OwnershipTracker[str, tuple[str, str]] = OwnershipTracker(lambda e: e[0])
    tracker.upsert("a", [("k1", "a"), ("k2", "a")])
    tracker.upsert("b", [("k2", "b")])
    changes = tracker.upsert("a", [("k1", "a")])
    assert changes.upserts == (("k1", "a"), ("k2", "b")) and changes.deletes == ()
    changes = tracker.upsert("a", [])
    assert changes.deletes == ("k1",) and tracker.keys("a") == frozenset()
    # Releasing a key one never claimed, or deleting an unknown owner, is a no-op.
    assert not tracker.delete("nobody")


def test_order_of_queue_is_arrival_order() -> None:
    tracker: OwnershipTracker[str, tuple[str, str]] = OwnershipTracker(lambda e: e[0])
    for owner in "abcd":
        tracker.upsert(owner, [("k", owner)])
    tracker.delete("c")
    assert tracker.queued("k") == ["b", "d"]
    assert tracker.delete("a").upserts == (("k", "b"),)
    assert tracker.delete("b").upserts == (("k", "d"),)
    assert tracker.delete("d").deletes == ("k",)
