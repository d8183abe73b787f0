"""Graceful Pod deletion meeting finalizers, through the official client over HTTP, as kube-apiserver
does it: a DELETE with grace 0 of a Pod that is already terminating shortens its deletion to grace 0
(``deletionTimestamp`` moves back by the old grace), so the last finalizer's removal deletes it; a
DELETE can never lengthen a deletion under way."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

FINALIZER = "lab.test/hold"


def bound_pod(name: str, *, finalizers: list[str] | None = None) -> Any:
    md: dict[str, Any] = {"name": name, "namespace": "default"}
    if finalizers:
        md["finalizers"] = finalizers
    return {"apiVersion": "v1", "kind": "Pod", "metadata": md,
            "spec": {"nodeName": "c1-n0", "terminationGracePeriodSeconds": 30,
                     "containers": [{"name": "c", "image": "lab/echo"}]}}


def read(core: client.CoreV1Api, name: str, kind: str = "pod") -> dict[str, Any] | None:
    """The object as the API's JSON (None if it does not exist)."""
    reader: Any = core.read_namespaced_pod if kind == "pod" else core.read_namespaced_config_map
    try:
        doc: dict[str, Any] = json.loads(reader(name, "default", _preload_content=False).data)
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    return doc


def when(timestamp: str) -> datetime.datetime:
    return datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


@pytest.fixture
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


def test_grace_zero_delete_of_a_terminating_pod_lets_the_finalizer_removal_delete_it(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", bound_pod("held", finalizers=[FINALIZER]))
    core.patch_namespaced_pod_status("held", "default", {"status": {"phase": "Running"}})
    core.delete_namespaced_pod("held", "default")  # graceful: the pod's 30 s
    marked = read(core, "held")
    assert marked is not None and marked["metadata"]["deletionGracePeriodSeconds"] == 30
    first_ts = when(marked["metadata"]["deletionTimestamp"])
    assert first_ts > datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=20)

    # a plain DELETE, or one asking for more time, changes nothing: a deletion may only be shortened
    core.delete_namespaced_pod("held", "default")
    core.delete_namespaced_pod("held", "default", grace_period_seconds=60)
    again = read(core, "held")
    assert again is not None and again["metadata"]["resourceVersion"] == marked["metadata"]["resourceVersion"]

    # the node runtime's DELETE with grace 0: the finalizer keeps the object, now with grace 0
    core.delete_namespaced_pod("held", "default", grace_period_seconds=0)
    shortened = read(core, "held")
    assert shortened is not None
    md = shortened["metadata"]
    assert md["deletionGracePeriodSeconds"] == 0 and md["finalizers"] == [FINALIZER]
    assert when(md["deletionTimestamp"]) == first_ts - datetime.timedelta(seconds=30)
    # a second grace-0 DELETE is a no-op
    core.delete_namespaced_pod("held", "default", grace_period_seconds=0)
    same = read(core, "held")
    assert same is not None and same["metadata"]["resourceVersion"] == md["resourceVersion"]

    # the controller owning the finalizer lets go: the object is deleted by that update
    core.patch_namespaced_pod("held", "default", {"metadata": {"finalizers": None}})
    assert read(core, "held") is None


def test_finalizer_removal_alone_leaves_a_gracefully_terminating_pod(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", bound_pod("slow", finalizers=[FINALIZER]))
    core.delete_namespaced_pod("slow", "default", grace_period_seconds=20)
    core.patch_namespaced_pod("slow", "default", {"metadata": {"finalizers": None}})
    left = read(core, "slow")
    assert left is not None and left["metadata"]["deletionGracePeriodSeconds"] == 20  # the kubelet has not confirmed
    core.delete_namespaced_pod("slow", "default", grace_period_seconds=0)  # the kubelet's confirmation
    assert read(core, "slow") is None


def test_grace_zero_delete_of_a_held_object_that_is_not_a_pod(core: client.CoreV1Api) -> None:
    cm: Any = {"metadata": {"name": "cm", "finalizers": [FINALIZER]}}
    core.create_namespaced_config_map("default", cm)
    core.delete_namespaced_config_map("cm", "default", grace_period_seconds=0)
    held = read(core, "cm", "configmap")
    assert held is not None
    assert held["metadata"]["deletionGracePeriodSeconds"] == 0 and held["metadata"]["deletionTimestamp"]
    core.delete_namespaced_config_map("cm", "default", grace_period_seconds=0)
    again = read(core, "cm", "configmap")
    assert again is not None and again["metadata"]["resourceVersion"] == held["metadata"]["resourceVersion"]
    core.patch_namespaced_config_map("cm", "default", {"metadata": {"finalizers": None}})
    assert read(core, "cm", "configmap") is None
