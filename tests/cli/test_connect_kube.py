"""``clustermesh connect`` / ``disconnect`` end to end on the Kubernetes API emulator (one per
cluster, one merged kubeconfig), through the official client: both Secrets get their entries,
the entries take an agent to the peer's real etcd over mTLS, refusals change nothing, re-runs
write nothing, disconnect removes the entries, and a failed second write is undone."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from clustermesh_cli.install import InstallOptions, certificate_secrets, issue_cluster_certificates, names
from clustermesh_cli.install.manifests import apiserver_service, cluster_config_map
from clustermesh_cli.mesh import connect, disconnect
from clustermesh_cli.mesh.access import MeshAccessError
from clustermesh_cli.mesh.kube import apply_plan, open_clusters
from clustermesh_cli.mesh.peers import DEFAULT_CONFIG_DIR, peer_keys, plan_connect
from lab.etcd import EtcdProcess
from lab.kube.api import K8sApiServer
from meshcore.clustermesh.configdir import ConfigDirWatcher
from meshcore.kvstore.client import EtcdClient
from meshcore.pki import CertificateAuthority
from tests.cli.test_connect_plan import write_secret_volume

NS = "kube-system"


@dataclass
class Cluster:
    """One emulated cluster: its API server, context and a client to seed and inspect it."""

    name: str
    cluster_id: int
    server: K8sApiServer
    ca: CertificateAuthority = field(default_factory=lambda: CertificateAuthority.create("cilium-ca"))
    api: client.ApiClient | None = None

    @property
    def context(self) -> str:
        return f"lab-{self.name}"

    @property
    def core(self) -> client.CoreV1Api:
        assert self.api is not None
        return client.CoreV1Api(self.api)

    def mesh_secret(self) -> dict[str, Any] | None:
        """The cilium-clustermesh Secret as the API holds it (None: absent)."""
        try:
            secret = self.core.read_namespaced_secret(names.CLUSTERMESH_SECRET, NS)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        assert self.api is not None
        result: dict[str, Any] = self.api.sanitize_for_serialization(secret)  # type: ignore[no-untyped-call]
        return result

    def mesh_data(self) -> dict[str, bytes]:
        secret = self.mesh_secret() or {}
        return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}


def seed(c: Cluster, *, node_ips: list[str], node_port: int = names.DEFAULT_NODE_PORT,
         service_type: str = "NodePort", cluster_id: int | None = None) -> None:
    """Create, through the API, what ``clustermesh enable`` leaves behind, built by the install's
    own functions: the cluster ConfigMap, ``cilium-ca`` and the certificate Secrets (real
    certificates from the cluster's CA), the clustermesh-apiserver Service; plus the Nodes (with
    pod CIDRs and InternalIPs) that a cluster has anyway."""
    core: Any = c.core  # the client takes the install's dict objects as bodies
    options = InstallOptions(cluster_name=c.name, cluster_id=cluster_id or c.cluster_id, service_type=service_type,
                             node_port=node_port if service_type == "NodePort" else None)
    core.create_namespaced_config_map(NS, cluster_config_map(options))
    for secret in certificate_secrets(NS, issue_cluster_certificates(c.ca, c.name, NS)):
        core.create_namespaced_secret(NS, secret)
    core.create_namespaced_service(NS, apiserver_service(options))
    for j, ip in enumerate(node_ips):
        cidr = f"10.{c.cluster_id}.{j}.0/24"
        core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"{c.name}-n{j}"},
                          "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})
        core.patch_node_status(f"{c.name}-n{j}", {"status": {
            "addresses": [{"type": "InternalIP", "address": ip}],
            "conditions": [{"type": "Ready", "status": "True"}]}})


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Callable[..., tuple[Path, list[Cluster]]]]:
    """``mesh(n)``: n emulated clusters c1..cn and one kubeconfig with a context ``lab-cK`` each."""
    started: list[Cluster] = []

    def make(n: int) -> tuple[Path, list[Cluster]]:
        merged: dict[str, Any] = {"apiVersion": "v1", "kind": "Config", "clusters": [], "users": [],
                                  "contexts": [], "preferences": {}}
        for cid in range(1, n + 1):
            c = Cluster(f"c{cid}", cid, K8sApiServer(bookmark_interval=0.5).start_in_thread())
            started.append(c)
            doc = c.server.kubeconfig(c.context)
            for key in ("clusters", "users", "contexts"):
                merged[key] += doc[key]
            cfg = client.Configuration()
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(c.server.write_kubeconfig(tmp_path / f"kc-{c.name}", c.context)),
                client_configuration=cfg)
            c.api = client.ApiClient(cfg)
        merged["current-context"] = started[0].context
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump(merged))
        return path, started[-n:]

    try:
        yield make
    finally:
        for c in started:
            if c.api is not None:
                c.api.close()  # type: ignore[no-untyped-call]
            c.server.stop_thread()


def cli(command: Any, kubeconfig: Path, a: Cluster, b: Cluster, *extra: str) -> Result:
    return CliRunner().invoke(command, ["--kubeconfig", str(kubeconfig), "--context", a.context,
                                        "--destination-context", b.context, *extra])


def volume_for_agent(data: dict[str, bytes], mount: Path, *, generation: int = 1) -> None:
    """What the agent's pod sees of the Secret, with the pod's mount path mapped onto ``mount``."""
    prefix = str(DEFAULT_CONFIG_DIR)
    local = {k: v.replace(prefix.encode(), str(mount).encode()) if b"endpoints:" in v else v for k, v in data.items()}
    write_secret_volume(mount, local, generation=generation)


async def test_connect_writes_both_secrets_and_the_agent_reaches_the_peer_etcd(
    mesh: Callable[..., tuple[Path, list[Cluster]]], etcd_factory: Callable[..., EtcdProcess], tmp_path: Path
) -> None:
    etcd2 = etcd_factory("c2-etcd", tls=True)  # c2's clustermesh etcd: server cert SAN *.mesh.cilium.io
    kubeconfig, (c1, c2) = mesh(2)
    assert etcd2.pki is not None
    c2.ca = etcd2.pki.ca  # c2's cilium-ca is the CA of its etcd; c1 has a CA of its own
    seed(c1, node_ips=["192.168.1.1", "192.168.1.2"])
    seed(c2, node_ips=["127.0.0.1"], node_port=etcd2.ports.client)  # the "NodePort" is the real etcd

    result = cli(connect, kubeconfig, c1, c2)
    assert result.exit_code == 0, result.output
    assert "connected c1 (context lab-c1) and c2 (context lab-c2)" in result.output
    in_c1, in_c2 = c1.mesh_data(), c2.mesh_data()
    assert sorted(in_c1) == sorted(peer_keys("c2")) and sorted(in_c2) == sorted(peer_keys("c1"))
    assert in_c1["c2.etcd-client-ca.crt"] == etcd2.pki.ca.cert_pem
    assert in_c2["c1.etcd-client-ca.crt"] == c1.ca.cert_pem
    assert yaml.safe_load(in_c2["c1"])["cilium-host-aliases"] == [
        {"hostname": "c1.mesh.cilium.io", "ips": ["192.168.1.1", "192.168.1.2"]}]
    created = c1.mesh_secret()
    assert created is not None and created["metadata"]["labels"] == {names.PART_OF_LABEL: names.PART_OF}

    # c1's agent: the Secret as a volume, read by the agent's own reader, then a real mTLS call to c2's etcd.
    mount = tmp_path / "c1-agent-clustermesh"
    volume_for_agent(in_c1, mount)
    watcher = ConfigDirWatcher(mount, local_cluster="c1")
    changes = dict(watcher.scan())
    cfg = changes["c2"]
    assert cfg is not None and list(cfg.config.endpoints) == [f"https://c2.mesh.cilium.io:{etcd2.ports.client}"]
    async with EtcdClient(etcd2.client_config("root")) as admin:
        await admin.put("cilium/cluster-config/c2", b'{"id":2}')
    async with EtcdClient(cfg.config) as remote:
        got = await remote.get("cilium/cluster-config/c2")
    assert got is not None and got.value == b'{"id":2}'

    # Again: nothing to write (same resourceVersions).
    versions = [c.mesh_secret()["metadata"]["resourceVersion"] for c in (c1, c2)]  # type: ignore[index]
    again = cli(connect, kubeconfig, c2, c1)
    assert again.exit_code == 0, again.output
    assert "already connected: nothing changed" in again.output
    assert [c.mesh_secret()["metadata"]["resourceVersion"] for c in (c1, c2)] == versions  # type: ignore[index]

    # Disconnect removes every key of the peer on both sides; again changes nothing.
    gone = cli(disconnect, kubeconfig, c1, c2)
    assert gone.exit_code == 0, gone.output
    assert c1.mesh_data() == {} and c2.mesh_data() == {}
    volume_for_agent(c1.mesh_data(), mount, generation=2)
    assert watcher.scan() == [("c2", None)]  # the agent drains c2
    twice = cli(disconnect, kubeconfig, c1, c2)
    assert twice.exit_code == 0 and "were not connected: nothing changed" in twice.output


def test_duplicate_cluster_id_is_refused_and_changes_nothing(
    mesh: Callable[..., tuple[Path, list[Cluster]]]
) -> None:
    kubeconfig, (c1, c2, c3) = mesh(3)
    seed(c1, node_ips=["192.168.1.1"])
    seed(c2, node_ips=["192.168.2.1"], cluster_id=1)  # c2 was enabled with c1's ID by mistake
    seed(c3, node_ips=["192.168.3.1"])
    assert cli(connect, kubeconfig, c1, c3).exit_code == 0  # c1's Secret exists and has a peer
    before = (c1.mesh_secret(), c2.mesh_secret())
    assert before[0] is not None and before[1] is None

    result = cli(connect, kubeconfig, c1, c2)
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert "refused: c1 (context lab-c1) and c2 (context lab-c2) both have cluster ID 1" in message
    assert "re-enable one of them with another --cluster-id" in message
    assert (c1.mesh_secret(), c2.mesh_secret()) == before  # byte-identical, c2's still absent


def test_three_clusters_pairwise_make_a_full_mesh(mesh: Callable[..., tuple[Path, list[Cluster]]]) -> None:
    kubeconfig, clusters = mesh(3)
    for c in clusters:
        seed(c, node_ips=[f"192.168.{c.cluster_id}.1", f"192.168.{c.cluster_id}.2"])
    for a, b in ((0, 1), (0, 2), (1, 2)):
        result = cli(connect, kubeconfig, clusters[a], clusters[b])
        assert result.exit_code == 0, result.output
    for c in clusters:
        others = [o.name for o in clusters if o is not c]
        assert sorted(c.mesh_data()) == sorted(k for o in others for k in peer_keys(o))


def test_clear_errors_for_missing_context_objects_and_a_dead_api(
    mesh: Callable[..., tuple[Path, list[Cluster]]]
) -> None:
    kubeconfig, (c1, c2) = mesh(2)
    seed(c1, node_ips=["192.168.1.1"])
    result = CliRunner().invoke(connect, ["--kubeconfig", str(kubeconfig), "--destination-context", "nope"])
    assert result.exit_code == 1
    assert "context 'nope' is not in kubeconfig" in result.output and "lab-c1, lab-c2" in result.output

    result = cli(connect, kubeconfig, c1, c2)  # c2 not enabled
    assert result.exit_code == 1 and "no ConfigMap clustermesh-config or cilium-config" in result.output
    assert "clustermesh enable --context lab-c2" in result.output

    seed(c2, node_ips=["192.168.2.1"], service_type="LoadBalancer")
    result = cli(connect, kubeconfig, c1, c2)
    assert result.exit_code == 1 and "LoadBalancer Service without an address yet" in result.output

    c2.server.stop_thread()
    result = cli(disconnect, kubeconfig, c1, c2)
    assert result.exit_code == 1
    assert "the Kubernetes API of context lab-c2" in result.output and "does not answer" in result.output
    assert c1.mesh_secret() is None


def test_a_failed_second_write_is_undone(mesh: Callable[..., tuple[Path, list[Cluster]]]) -> None:
    kubeconfig, (c1, c2, c3, c4) = mesh(4)
    for c in (c1, c2, c3, c4):
        seed(c, node_ips=[f"192.168.{c.cluster_id}.1"])
    assert cli(connect, kubeconfig, c1, c3).exit_code == 0

    def connect_while_dying(a: Cluster, b: Cluster) -> str:
        with open_clusters([a.context, b.context], kubeconfig=kubeconfig) as (ka, kb):
            plan = plan_connect(ka.read(), kb.read())
            assert [c.context for c in plan.changes] == [a.context, b.context]
            b.server.stop_thread()  # b's API dies between reading and writing: a's write is done first
            with pytest.raises(MeshAccessError) as err:
                apply_plan(plan, {ka.context: ka, kb.context: kb})
        return str(err.value)

    before = c1.mesh_secret()
    assert "the other cluster's Secret was restored: nothing changed" in connect_while_dying(c1, c2)
    after = c1.mesh_secret()
    assert before is not None and after is not None and after["data"] == before["data"]
    # A Secret the failed command created is deleted again.
    assert c4.mesh_secret() is None
    assert "restored: nothing changed" in connect_while_dying(c4, c3)
    assert c4.mesh_secret() is None


def test_a_concurrent_edit_fails_the_write_instead_of_being_lost(
    mesh: Callable[..., tuple[Path, list[Cluster]]]
) -> None:
    kubeconfig, (c1, c2, c3) = mesh(3)
    for c in (c1, c2, c3):
        seed(c, node_ips=[f"192.168.{c.cluster_id}.1"])
    assert cli(connect, kubeconfig, c1, c3).exit_code == 0
    with open_clusters([c1.context, c2.context], kubeconfig=kubeconfig) as (k1, k2):
        plan = plan_connect(k1.read(), k2.read())
        c1.core.patch_namespaced_secret(names.CLUSTERMESH_SECRET, NS, {"data": {"notes": "eA=="}})
        with pytest.raises(MeshAccessError, match="was changed by someone else while this command ran"):
            apply_plan(plan, {k1.context: k1, k2.context: k2})
    assert c1.mesh_data()["notes"] == b"x" and c2.mesh_secret() is None
