"""What a pod spec asks of the node (pure): environment, command, mounts, volume contents, grace."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from lab.node import podspec, volumes
from lab.node.podspec import ContainerConfigError, Mount

POD: dict[str, Any] = {
    "metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "labels": {"app": "web"},
                 "annotations": {"team": "blue"}},
    "spec": {"nodeName": "c1-n0", "serviceAccountName": "robot", "containers": [{"name": "main"}]},
}  # fmt: skip
REFS = {
    ("secret", "creds"): {"password": b"s3cret", "user": b"admin"},
    ("configmap", "settings"): {"mode": b"fast", "level": b"3"},
    ("secret", "missing"): None,
}


def env(container: dict[str, Any], base: dict[str, str] | None = None) -> dict[str, str]:
    return podspec.container_env(POD, container, base=base or {}, refs=REFS, pod_ip="10.1.0.7", host_ip="192.168.1.1",
                                 node_memory=2**30)


def test_field_refs_key_refs_env_from_and_expansion() -> None:
    got = env({"envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CM_"}, {"secretRef": {"name": "creds"}}],
               "env": [
                   {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                   {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                   {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                   {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                   {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                   {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                   {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                   {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                   {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                   {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
                   {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "missing", "key": "x", "optional": True}}},
                   {"name": "URL", "value": "http://$(IP):80/$(NAME)/$(UNKNOWN)/$$(IP)"},
                   {"name": "CM_mode", "value": "overridden"},
               ]}, base={"PATH": "/bin", "CLUSTER_NAME": "c1"})  # fmt: skip
    assert got["NAME"] == "web" and got["NS"] == "shop" and got["UID"] == "u-1" and got["NODE"] == "c1-n0"
    assert got["IP"] == "10.1.0.7" and got["HOST"] == "192.168.1.1" and got["SA"] == "robot" and got["APP"] == "web"
    assert got["PW"] == "s3cret" and got["MODE"] == "fast" and "OPT" not in got
    assert got["URL"] == "http://10.1.0.7:80/web/$(UNKNOWN)/$(IP)"
    assert got["CM_level"] == "3" and got["CM_mode"] == "overridden" and got["user"] == "admin"
    assert got["PATH"] == "/bin" and got["CLUSTER_NAME"] == "c1"


@pytest.mark.parametrize(("entry", "needle"), [
    ({"name": "X", "valueFrom": {"secretKeyRef": {"name": "missing", "key": "k"}}}, 'secret "missing" not found'),
    ({"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope"}}}, "couldn't find key nope"),
    ({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "k"}}}, 'configmap "absent"'),
    ({"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.weird"}}}, "unsupported fieldRef"),
])  # fmt: skip
def test_env_errors_are_config_errors(entry: dict[str, Any], needle: str) -> None:
    with pytest.raises(ContainerConfigError, match=needle) as info:
        env({"env": [entry]})
    assert info.value.reason == "CreateContainerConfigError"


def test_resource_field_ref_defaults_to_node_capacity() -> None:
    got = env({"resources": {"limits": {"memory": "128Mi"}}, "env": [
        {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
        {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}]})
    assert got["MEM"] == "128" and got["CPU"] == "2"


def test_command_and_args_are_expanded_and_required() -> None:
    assert podspec.container_argv({"command": ["echo", "$(A)"], "args": ["$(B)", "x"]}, {"A": "1", "B": "2"}) == \
        ["echo", "1", "2", "x"]
    with pytest.raises(ContainerConfigError, match="no command") as info:
        podspec.container_argv({"args": ["x"], "image": "nginx"}, {})
    assert info.value.reason == "CreateContainerError"


def test_mounts_sorted_shallow_first_with_sub_paths_and_nesting() -> None:
    mounts = podspec.container_mounts({"volumeMounts": [
        {"name": "data", "mountPath": "/data/cache/"},
        {"name": "cfg", "mountPath": "/etc/app.conf", "subPath": "app.conf", "readOnly": True},
        {"name": "data", "mountPath": "/data"},
    ]}, {"data": "/v/data", "cfg": "/v/cfg"}, is_file=lambda source: source.endswith(".conf"))  # fmt: skip
    assert mounts == [Mount("/v/data", "/data", False, False), Mount("/v/data", "/data/cache", False, False),
                      Mount("/v/cfg/app.conf", "/etc/app.conf", True, True)]
    assert podspec.nested_in_other(mounts[1], mounts) and not podspec.nested_in_other(mounts[2], mounts)
    with pytest.raises(ContainerConfigError, match="no such volume"):
        podspec.container_mounts({"volumeMounts": [{"name": "x", "mountPath": "/x"}]}, {})
    with pytest.raises(ContainerConfigError, match=r"\.\."):
        podspec.container_mounts({"volumeMounts": [{"name": "d", "mountPath": "/x", "subPath": "../etc"}]},
                                 {"d": "/v"})


def test_grace_period_and_restart_policy_defaults() -> None:
    assert podspec.grace_seconds({"spec": {}}, cap=120) == 30
    assert podspec.grace_seconds({"spec": {"terminationGracePeriodSeconds": 5}}, cap=120) == 5
    assert podspec.grace_seconds({"metadata": {"deletionGracePeriodSeconds": 0},
                                  "spec": {"terminationGracePeriodSeconds": 5}}, cap=120) == podspec.MIN_GRACE
    assert podspec.grace_seconds({"spec": {"terminationGracePeriodSeconds": 3600}}, cap=120) == 120
    assert podspec.restart_policy({"spec": {}}) == "Always"
    assert podspec.restart_policy({"spec": {"restartPolicy": "Never"}}) == "Never"
    assert podspec.named_port({"ports": [{"name": "http", "containerPort": 8080}]}, "http") == 8080
    assert podspec.named_port({}, 81) == 81 and podspec.named_port({}, "82") == 82


def test_referenced_objects_cover_volumes_and_env() -> None:
    pod = {"spec": {
        "volumes": [{"name": "a", "secret": {"secretName": "s1"}}, {"name": "b", "configMap": {"name": "c1"}},
                    {"name": "p", "projected": {"sources": [{"secret": {"name": "s2"}},
                                                            {"configMap": {"name": "c2"}}]}}],
        "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "s3"}}]}],
        "containers": [{"name": "m", "env": [{"name": "X",
                                              "valueFrom": {"configMapKeyRef": {"name": "c3", "key": "k"}}}]}],
    }}  # fmt: skip
    assert podspec.referenced_objects(pod) == {("secret", "s1"), ("secret", "s2"), ("secret", "s3"),
                                               ("configmap", "c1"), ("configmap", "c2"), ("configmap", "c3")}


def test_object_data_decodes_secrets_and_binary_config_maps() -> None:
    assert podspec.object_data("secret", {"data": {"k": base64.b64encode(b"\x00v").decode()}}) == {"k": b"\x00v"}
    assert podspec.object_data("configmap", {"data": {"t": "text"}, "binaryData": {"b": "AAE="}}) == \
        {"t": b"text", "b": b"\x00\x01"}


# ----- volumes -----

def content(volume: dict[str, Any]) -> volumes.Content:
    return volumes.volume_content(volume, POD, REFS, pod_ip="10.1.0.7", host_ip="192.168.1.1")


def test_secret_and_config_map_volumes() -> None:
    got = content({"name": "s", "secret": {"secretName": "creds"}})
    assert isinstance(got, volumes.Files)
    assert got.files == {"password": (b"s3cret", 0o600), "user": (b"admin", 0o600)}
    got = content({"name": "c", "configMap": {"name": "settings", "defaultMode": 0o440,
                                              "items": [{"key": "mode", "path": "conf/mode"},
                                                        {"key": "level", "path": "level", "mode": 0o400}]}})
    assert isinstance(got, volumes.Files)
    assert got.files == {"conf/mode": (b"fast", 0o440), "level": (b"3", 0o400)}
    assert content({"name": "o", "secret": {"secretName": "missing", "optional": True}}) == volumes.Files({})
    with pytest.raises(volumes.VolumeError, match='secret "missing" not found'):
        content({"name": "o", "secret": {"secretName": "missing"}})
    with pytest.raises(volumes.VolumeError, match="no key 'nope'"):
        content({"name": "c", "configMap": {"name": "settings", "items": [{"key": "nope", "path": "x"}]}})


def test_projected_downward_and_other_volume_kinds() -> None:
    got = content({"name": "p", "projected": {"sources": [
        {"secret": {"name": "creds", "items": [{"key": "user", "path": "u"}]}},
        {"downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
        {"serviceAccountToken": {"path": "tok", "audience": "mesh"}}]}})  # fmt: skip
    assert isinstance(got, volumes.Files)
    assert got.files["u"] == (b"admin", 0o644) and got.files["name"] == (b"web", 0o644)
    claims = json.loads(base64.urlsafe_b64decode(got.files["tok"][0].split(b".")[1] + b"=="))
    assert claims["aud"] == ["mesh"] and claims["sub"] == "system:serviceaccount:shop:robot"
    # tokens issued at a fixed time keep the volume the same from one computation to the next
    vol = {"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "tok"}}]}}
    fixed = [volumes.volume_content(vol, POD, REFS, pod_ip="", host_ip="", token_issued=1.7e9) for _ in range(2)]
    assert fixed[0] == fixed[1]
    assert isinstance(fixed[0], volumes.Files)
    assert json.loads(base64.urlsafe_b64decode(fixed[0].files["tok"][0].split(b".")[1] + b"=="))["iat"] == 1700000000
    assert content({"name": "e", "emptyDir": {"medium": "Memory"}}) == volumes.EmptyDir()
    assert content({"name": "h", "hostPath": {"path": "/srv", "type": "Directory"}}) == \
        volumes.HostPath("/srv", "Directory")
    with pytest.raises(volumes.VolumeError, match="persistentVolumeClaim is not supported"):
        content({"name": "v", "persistentVolumeClaim": {"claimName": "x"}})


def test_service_account_files() -> None:
    files = volumes.service_account_files(POD, b"CA PEM").files
    assert files["ca.crt"] == (b"CA PEM", 0o644) and files["namespace"] == (b"shop", 0o644)
    assert files["token"][0].count(b".") == 2
