"""``clustermesh enable`` / ``disable`` on the Kubernetes API emulator (a thread, a kubeconfig
file), through the ``clustermesh`` command line and the official client: what is written, that a
second run writes nothing, the CA reuse, the wait with its reasons, and the removal."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from kubernetes import client, config

from clustermesh_cli.enable.kube import KINDS, KubeObjects
from clustermesh_cli.enable.run import DRY_RUN_PROG
from clustermesh_cli.install import InstallOptions, names, render_manifests
from clustermesh_cli.install.render import render_yaml
from clustermesh_cli.install.secrets import secret_data
from clustermesh_cli.main import cli
from lab.kube.api import K8sApiServer
from meshcore.pki import CertificateAuthority

NS = "kube-system"
CONTEXT = "emu"
INSTALL_KINDS = ("ConfigMap", "Secret", "ServiceAccount", "Service", "Deployment", "DaemonSet", "ClusterRole",
                 "ClusterRoleBinding")
CERT_SECRETS = (names.SERVER_CERT_SECRET, names.ADMIN_CERT_SECRET, names.REMOTE_CERT_SECRET, names.LOCAL_CERT_SECRET)


@dataclass
class Cluster:
    kubeconfig: Path
    kube: KubeObjects
    api: client.ApiClient

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(cli, [args[0], "--kubeconfig", str(self.kubeconfig), "--context", CONTEXT,
                                        *args[1:]])

    def objects(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Every object of the install's kinds that carries the part-of label, by (kind, name)."""
        out = {}
        for kind in INSTALL_KINDS:
            scope = NS if KINDS[kind].namespaced else None
            for obj in self.kube.list(kind, scope, selector=names.PART_OF_SELECTOR):
                out[(kind, obj["metadata"]["name"])] = obj
        return out

    def versions(self) -> dict[tuple[str, str], str]:
        return {k: v["metadata"]["resourceVersion"] for k, v in self.objects().items()}

    def secret(self, name: str) -> dict[str, bytes] | None:
        obj = self.kube.get("Secret", name, NS)
        return None if obj is None else secret_data(obj)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    server = K8sApiServer(bookmark_interval=0.5).start_in_thread()
    kube = None
    api = None
    try:
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig", CONTEXT)
        kube = KubeObjects(CONTEXT, kubeconfig=kubeconfig)
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), context=CONTEXT,  # type: ignore[no-untyped-call]
                                client_configuration=cfg)
        api = client.ApiClient(cfg)
        yield Cluster(kubeconfig, kube, api)
    finally:
        if kube is not None:
            kube.close()
        if api is not None:
            api.close()  # type: ignore[no-untyped-call]
        server.stop_thread()


def _ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def test_first_enable_without_name_and_id_is_a_usage_error(cluster: Cluster) -> None:
    result = cluster.run("enable", "--no-wait")
    assert result.exit_code == 2
    assert "pass --cluster-name and --cluster-id" in result.output
    assert cluster.objects() == {}


def test_dry_run_prints_the_renderers_yaml_and_writes_nothing(cluster: Cluster) -> None:
    out = _ok(cluster.run("enable", "--cluster-name", "c1", "--cluster-id", "1", "--service-type", "LoadBalancer",
                          "--source", "kubernetes", "--dry-run", "-o", "yaml"))
    options = InstallOptions(cluster_name="c1", cluster_id=1, service_type="LoadBalancer", source="kubernetes")
    assert out == render_yaml(options, prog=DRY_RUN_PROG)
    assert "PRIVATE KEY" not in out and "kind: Secret" not in out
    plan = _ok(cluster.run("enable", "--cluster-name", "c1", "--cluster-id", "1", "--dry-run"))
    assert "would create DaemonSet kube-system/clustermesh-agent" in plan
    assert "would create Secret kube-system/cilium-ca" in plan
    assert cluster.objects() == {}
    assert cluster.kube.list("Secret", NS) == []
    assert _ok(cluster.run("enable", "--dry-run", "-o", "yaml", "--cluster-name", "c1", "--cluster-id", "1")) \
        == render_yaml(InstallOptions(cluster_name="c1", cluster_id=1), prog=DRY_RUN_PROG)


def test_enable_creates_every_object_and_a_second_run_changes_nothing(cluster: Cluster) -> None:
    out = _ok(cluster.run("enable", "--cluster-name", "c1", "--cluster-id", "1", "--no-wait"))
    options = InstallOptions(cluster_name="c1", cluster_id=1)
    rendered = {(o["kind"], o["metadata"]["name"]) for o in render_manifests(options)}
    secrets = {("Secret", n) for n in (names.CA_SECRET, *CERT_SECRETS)}
    objects = cluster.objects()
    assert set(objects) == rendered | secrets
    assert f"created DaemonSet {NS}/{names.AGENT}" in out
    # Secret keys as the install names them; private keys nowhere but in Secrets
    assert set(cluster.secret(names.CA_SECRET) or {}) == {names.CA_CRT, names.CA_KEY}
    ca = x509.load_pem_x509_certificate((cluster.secret(names.CA_SECRET) or {})[names.CA_CRT])
    for name in CERT_SECRETS:
        obj = objects[("Secret", name)]
        assert obj["type"] == "kubernetes.io/tls"
        data = secret_data(obj)
        assert set(data) == {names.CA_CRT, names.TLS_CRT, names.TLS_KEY}
        x509.load_pem_x509_certificate(data[names.TLS_CRT]).verify_directly_issued_by(ca)
    for (kind, name), obj in objects.items():
        if kind != "Secret":
            assert "PRIVATE KEY" not in repr(obj), f"{kind} {name} holds a private key"
    live = {k: v for k, v in objects.items() if k[0] != "Secret"}
    desired = {(o["kind"], o["metadata"]["name"]): o for o in render_manifests(options)}
    assert live[("ConfigMap", names.CONFIG_MAP)]["data"] == desired[("ConfigMap", names.CONFIG_MAP)]["data"]

    before = cluster.versions()
    again = _ok(cluster.run("enable", "--no-wait"))  # name and ID from the cluster
    assert "16 object(s) unchanged (nothing to do)" in again, again
    assert cluster.versions() == before

    # drift is repaired, and only what drifted is written
    core: Any = client.CoreV1Api(cluster.api)
    core.patch_namespaced_config_map(names.AGENT_CONFIG_MAP, NS, {"data": {names.AGENT_KVSTORE_FILE: "edited"}})
    core.delete_namespaced_secret(names.REMOTE_CERT_SECRET, NS)
    server_cert = cluster.secret(names.SERVER_CERT_SECRET)
    drifted = cluster.versions()
    repaired = _ok(cluster.run("enable", "--no-wait"))
    assert f"updated ConfigMap {NS}/{names.AGENT_CONFIG_MAP}" in repaired
    assert f"created Secret {NS}/{names.REMOTE_CERT_SECRET}" in repaired
    after = cluster.versions()
    changed = {k for k in after if after[k] != drifted.get(k)}
    assert changed == {("ConfigMap", names.AGENT_CONFIG_MAP), ("Secret", names.REMOTE_CERT_SECRET)}
    assert cluster.secret(names.SERVER_CERT_SECRET) == server_cert
    restored = cluster.kube.get("ConfigMap", names.AGENT_CONFIG_MAP, NS) or {}
    assert restored["data"] == desired[("ConfigMap", names.AGENT_CONFIG_MAP)]["data"]


def test_an_existing_cilium_ca_is_kept_and_signs_the_certificates(cluster: Cluster) -> None:
    ca = CertificateAuthority.create("Cilium CA")
    core: Any = client.CoreV1Api(cluster.api)
    core.create_namespaced_secret(NS, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": names.CA_SECRET},
                                       "data": {k: base64.b64encode(v).decode() for k, v in
                                                {"ca.crt": ca.cert_pem, "ca.key": ca.keypair.key_pem}.items()}})
    _ok(cluster.run("enable", "--cluster-name", "c1", "--cluster-id", "1", "--no-wait"))
    assert cluster.secret(names.CA_SECRET) == {"ca.crt": ca.cert_pem, "ca.key": ca.keypair.key_pem}
    for name in CERT_SECRETS:
        data = cluster.secret(name) or {}
        assert data[names.CA_CRT] == ca.cert_pem
        x509.load_pem_x509_certificate(data[names.TLS_CRT]).verify_directly_issued_by(ca.keypair.cert)
    server = x509.load_pem_x509_certificate((cluster.secret(names.SERVER_CERT_SECRET) or {})[names.TLS_CRT])
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"*.{names.MESH_DOMAIN}" in sans.get_values_for_type(x509.DNSName)


def test_a_cilium_ca_without_its_key_is_refused_and_nothing_is_written(cluster: Cluster) -> None:
    ca = CertificateAuthority.create("Cilium CA")
    core: Any = client.CoreV1Api(cluster.api)
    core.create_namespaced_secret(NS, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": names.CA_SECRET},
                                       "data": {"ca.crt": base64.b64encode(ca.cert_pem).decode()}})
    result = cluster.run("enable", "--cluster-name", "c1", "--cluster-id", "1", "--no-wait")
    assert result.exit_code == 1
    assert f"Secret {NS}/{names.CA_SECRET} has no ca.key" in result.output
    assert cluster.objects() == {}


def test_wait_times_out_naming_what_blocks(cluster: Cluster) -> None:
    result = cluster.run("enable", "--cluster-name", "c1", "--cluster-id", "1", "--wait-duration", "2s")
    assert result.exit_code == 1, result.output
    assert "clustermesh is not ready after 2s" in result.output
    assert f"Deployment {names.APISERVER} has no pods yet" in result.output
    assert f"DaemonSet {names.AGENT}: the controller has not seen it yet" in result.output
    # a pod that is there but stuck is named with its reason
    core: Any = client.CoreV1Api(cluster.api)
    labels = {names.APP_LABEL: names.APISERVER, names.PART_OF_LABEL: names.PART_OF}
    core.create_namespaced_pod(NS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "api-x",
                                                                                   "labels": labels},
                                    "spec": {"nodeName": "n1", "containers": [{"name": "etcd", "image": "i"}]}})
    core.patch_namespaced_pod_status("api-x", NS, {"status": {"phase": "Pending", "containerStatuses": [
        {"name": "etcd", "ready": False, "restartCount": 0, "image": "i", "imageID": "",
         "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}]}})
    result = cluster.run("enable", "--wait-duration", "1s")
    assert result.exit_code == 1
    assert "pod api-x on n1: phase Pending; container etcd waiting: ImagePullBackOff (no such image)" in result.output


def test_disable_removes_everything_but_the_ca_and_is_idempotent(cluster: Cluster) -> None:
    _ok(cluster.run("enable", "--cluster-name", "c1", "--cluster-id", "1", "--no-wait"))
    core: Any = client.CoreV1Api(cluster.api)
    labels = {names.PART_OF_LABEL: names.PART_OF}
    core.create_namespaced_secret(NS, {"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": names.CLUSTERMESH_SECRET, "labels": labels}, "data": {}})  # as connect leaves it
    core.create_namespaced_config_map(NS, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "mine"},
                                           "data": {"a": "b"}})  # not ours: stays
    ca = cluster.secret(names.CA_SECRET)
    out = _ok(cluster.run("disable", "--wait-duration", "5s"))
    assert f"deleted Secret {NS}/{names.CLUSTERMESH_SECRET}" in out
    assert f"kept Secret {NS}/{names.CA_SECRET}" in out
    assert set(cluster.objects()) == {("Secret", names.CA_SECRET)}
    assert cluster.secret(names.CA_SECRET) == ca
    assert cluster.kube.get("ConfigMap", "mine", NS) is not None
    again = _ok(cluster.run("disable"))
    assert "nothing to remove" in again
    # enable again reuses the kept CA; disable --delete-ca removes it as well
    _ok(cluster.run("enable", "--cluster-name", "c1", "--cluster-id", "1", "--no-wait"))
    assert cluster.secret(names.CA_SECRET) == ca
    _ok(cluster.run("disable", "--delete-ca", "--no-wait"))
    assert cluster.objects() == {}
