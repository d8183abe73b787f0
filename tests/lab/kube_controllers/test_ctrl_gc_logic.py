"""The garbage collector's verdicts: dangling dependents and orphaned pods."""

from __future__ import annotations

from lab.kube.controllers import gc


def ref(kind: str, uid: str, api_version: str = "apps/v1") -> dict[str, object]:
    return {"apiVersion": api_version, "kind": kind, "name": "x", "uid": uid, "controller": True}


def test_dangling_only_when_every_owner_is_known_gone() -> None:
    alive = {("apps", "ReplicaSet", "rs-1"), ("", "Service", "svc-1")}

    def exists(group: str, kind: str, uid: str) -> bool | None:
        if (group, kind) not in {("apps", "ReplicaSet"), ("", "Service"), ("apps", "Deployment")}:
            return None
        return (group, kind, uid) in alive

    def obj(*refs: dict[str, object], terminating: bool = False) -> dict[str, object]:
        md: dict[str, object] = {"name": "o", "ownerReferences": list(refs)}
        if terminating:
            md["deletionTimestamp"] = "2024-01-01T00:00:00Z"
        return {"metadata": md}

    assert not gc.is_dangling(obj(), exists)  # no owners: not ours to collect
    assert not gc.is_dangling(obj(ref("ReplicaSet", "rs-1")), exists)
    assert gc.is_dangling(obj(ref("ReplicaSet", "rs-gone")), exists)
    assert not gc.is_dangling(obj(ref("ReplicaSet", "rs-gone"), ref("Service", "svc-1", "v1")), exists)
    assert gc.is_dangling(obj(ref("ReplicaSet", "rs-gone"), ref("Deployment", "d-gone")), exists)
    assert not gc.is_dangling(obj(ref("ReplicaSet", "rs-gone"), ref("StatefulSet", "s")), exists)  # unknown kind
    assert not gc.is_dangling(obj(ref("ReplicaSet", "rs-gone"), terminating=True), exists)


def test_orphaned_pod() -> None:
    nodes = {"n0"}
    assert gc.orphaned_pod({"spec": {"nodeName": "n1"}}, nodes.__contains__)
    assert not gc.orphaned_pod({"spec": {"nodeName": "n0"}}, nodes.__contains__)
    assert not gc.orphaned_pod({"spec": {}}, nodes.__contains__)
    assert gc.api_group("apps/v1") == "apps" and gc.api_group("v1") == ""
