"""The rendered install, with Secrets holding real certificates, applied with the real ``kubectl`` to
the project's Kubernetes API emulator: accepted, stored as given, idempotent, and removable."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clustermesh_cli.install import (
    InstallOptions,
    certificate_secrets,
    cilium_clustermesh_secret,
    issue_cluster_certificates,
    names,
    peer_entry,
    render_manifests,
    to_yaml,
)
from lab.kube.api import K8sApiServer
from lab.kube.api.kinds import BUILTIN_KINDS
from meshcore.pki import CertificateAuthority

KUBECTL = shutil.which("kubectl")
NEEDED_KINDS = {("", "ConfigMap"), ("", "Secret"), ("", "ServiceAccount"), ("", "Service"), ("apps", "Deployment"),
                ("apps", "DaemonSet"), ("rbac.authorization.k8s.io", "ClusterRole"),
                ("rbac.authorization.k8s.io", "ClusterRoleBinding")}
MISSING_KINDS = sorted(f"{g or 'core'}/{k}" for g, k in NEEDED_KINDS - {(i.group, i.kind) for i in BUILTIN_KINDS})

pytestmark = [
    pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed"),
    pytest.mark.skipif(bool(MISSING_KINDS), reason=f"the API emulator does not serve {', '.join(MISSING_KINDS)} yet"),
]

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
Obj = dict[str, Any]


@pytest.fixture
def kubectl(tmp_path: Path) -> Iterator[Kubectl]:
    server = K8sApiServer(bookmark_interval=0.2).start_in_thread()
    try:
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig", context_name="emu")
        assert KUBECTL is not None

        def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
            cmd = [KUBECTL, "--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "kcache"), *args]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            if check and proc.returncode != 0:
                raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
            return proc

        yield run
    finally:
        server.stop_thread()


def install_objects(options: InstallOptions) -> list[Obj]:
    """Everything ``clustermesh enable`` would apply, with real certificates and one peer entry."""
    ca = CertificateAuthority.create(f"clustermesh-{options.cluster_name}-ca")
    certs = issue_cluster_certificates(ca, options.cluster_name, options.namespace)
    peer_ca = CertificateAuthority.create("clustermesh-peer-ca")
    peer = issue_cluster_certificates(peer_ca, "peer", options.namespace)
    mesh = cilium_clustermesh_secret(options.namespace, [peer_entry("peer", peer.remote, ips=["192.168.2.1"],
                                                                    port=names.DEFAULT_NODE_PORT)])
    return [*certificate_secrets(options.namespace, certs), mesh, *render_manifests(options)]


def _resource(obj: Obj) -> str:
    group = obj["apiVersion"].rpartition("/")[0]
    plural = {"ConfigMap": "configmaps", "Secret": "secrets", "ServiceAccount": "serviceaccounts",
              "Service": "services", "Deployment": "deployments", "DaemonSet": "daemonsets",
              "ClusterRole": "clusterroles", "ClusterRoleBinding": "clusterrolebindings"}[obj["kind"]]
    return f"{plural}.{group}" if group else plural


def _get(kubectl: Kubectl, obj: Obj) -> Obj:
    md = obj["metadata"]
    ns = ["-n", md["namespace"]] if "namespace" in md else []
    doc: Obj = json.loads(kubectl("get", _resource(obj), md["name"], *ns, "-o", "json").stdout)
    return doc


def _contains(stored: Any, sent: Any, where: str) -> None:
    """Everything that was sent is stored unchanged (the server may add defaults and status)."""
    if isinstance(sent, dict):
        assert isinstance(stored, dict), where
        for key, value in sent.items():
            assert key in stored, f"{where}.{key} was dropped"
            _contains(stored[key], value, f"{where}.{key}")
    elif isinstance(sent, list):
        assert isinstance(stored, list) and len(stored) == len(sent), where
        for i, (a, b) in enumerate(zip(stored, sent, strict=True)):
            _contains(a, b, f"{where}[{i}]")
    else:
        assert stored == sent, f"{where}: stored {stored!r}, sent {sent!r}"


@pytest.mark.parametrize("options", [
    InstallOptions(cluster_name="c1", cluster_id=1),
    InstallOptions(cluster_name="c2", cluster_id=2, namespace="mesh", service_type="LoadBalancer", source="kubernetes",
                   service_annotations=(("service.beta.kubernetes.io/azure-load-balancer-internal", "true"),)),
], ids=["defaults", "namespace-loadbalancer-kubernetes"])
def test_kubectl_apply_accepts_the_install(kubectl: Kubectl, tmp_path: Path, options: InstallOptions) -> None:
    if options.namespace != "kube-system":  # (kubectl create sends protobuf, which the emulator does not read)
        (tmp_path / "ns.yaml").write_text(to_yaml([{"apiVersion": "v1", "kind": "Namespace",
                                                    "metadata": {"name": options.namespace}}]))
        kubectl("apply", "-f", str(tmp_path / "ns.yaml"))
    objs = install_objects(options)
    manifest = tmp_path / "install.yaml"
    manifest.write_text(to_yaml(objs))

    applied = kubectl("apply", "-f", str(manifest)).stdout.splitlines()
    assert len(applied) == len(objs) and all(line.endswith(" created") for line in applied), applied
    again = kubectl("apply", "-f", str(manifest)).stdout.splitlines()
    assert all(line.endswith(" unchanged") for line in again), again  # enable's re-run changes nothing

    for obj in objs:
        stored = _get(kubectl, obj)
        _contains(stored, {k: v for k, v in obj.items() if k != "metadata"}, obj["metadata"]["name"])
        assert stored["metadata"]["labels"] == obj["metadata"]["labels"]
    svc = _get(kubectl, next(o for o in objs if o["kind"] == "Service"))
    if options.service_type == "NodePort":
        assert svc["spec"]["ports"][0]["nodePort"] == names.DEFAULT_NODE_PORT

    listed = kubectl("get", "configmaps,secrets,serviceaccounts,services,deployments,daemonsets,clusterroles,"
                     "clusterrolebindings", "-A", "-l", names.PART_OF_SELECTOR, "-o", "name").stdout.split()
    assert len(listed) == len(objs), listed  # disable finds everything by the part-of label

    deleted = kubectl("delete", "-f", str(manifest)).stdout.splitlines()
    assert len(deleted) == len(objs) and all(line.endswith(" deleted") for line in deleted), deleted
    left = kubectl("get", "configmaps,secrets,deployments,daemonsets,clusterroles", "-A", "-l",
                   names.PART_OF_SELECTOR, "-o", "name").stdout.split()
    assert left == []
