"""The pure parts of ``clustermesh enable``: option precedence, the live-object comparison and the
update body, certificate reuse, readiness reasons, durations."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from clustermesh_cli.enable.certs import CertificateError, load_ca, plan_certificates, reuse_problem
from clustermesh_cli.enable.commands import parse_duration
from clustermesh_cli.enable.diff import covers, differences, update_body
from clustermesh_cli.enable.readiness import daemonset_state, deployment_state, pod_problems
from clustermesh_cli.enable.resolve import EnableUsageError, config_defaults, resolve_options, service_defaults
from clustermesh_cli.install import InstallOptions, certificate_secrets, issue_cluster_certificates, names
from clustermesh_cli.install.manifests import apiserver_service, cluster_config_map
from clustermesh_cli.install.secrets import secret_data
from meshcore.pki import CertificateAuthority

NS = "kube-system"


# ---- options ----

def _resolve(params: dict[str, Any] | None = None, *, existing: dict[str, Any] | None = None,
             base: InstallOptions | None = None, name: str | None = None, cid: int | None = None) -> InstallOptions:
    return resolve_options(cluster_name=name, cluster_id=cid, params=params or {}, base=base,
                           existing=existing or {}, context="ctx")


def test_first_enable_needs_name_and_id_and_says_so() -> None:
    with pytest.raises(EnableUsageError, match="first enable: pass --cluster-name and --cluster-id"):
        _resolve()
    with pytest.raises(EnableUsageError, match="pass --cluster-id"):
        _resolve(name="c1")


def test_the_cluster_record_fills_in_what_the_flags_leave_out() -> None:
    options = InstallOptions(cluster_name="c7", cluster_id=7, source="kubernetes", max_connected_clusters=511,
                             routing_mode="native")
    existing = {**config_defaults(cluster_config_map(options)["data"]),
                **service_defaults({"spec": {"type": "NodePort", "ports": [{"port": 2379, "nodePort": 31000}]}})}
    got = _resolve(existing=existing)
    assert (got.cluster_name, got.cluster_id, got.source, got.max_connected_clusters, got.routing_mode,
            got.service_type, got.node_port) == ("c7", 7, "kubernetes", 511, "native", "NodePort", 31000)
    # flags win over the record; a new Service type does not carry the old nodePort over
    got = _resolve({"source": "cilium", "service_type": "LoadBalancer"}, existing=existing, name="c8", cid=8)
    assert (got.cluster_name, got.cluster_id, got.source, got.service_type) == ("c8", 8, "cilium", "LoadBalancer")
    assert _resolve({"service_type": "NodePort"}, existing={**existing, "service_type": "LoadBalancer"}
                    ).node_port == names.DEFAULT_NODE_PORT


def test_base_options_are_the_lowest_layer() -> None:
    base = InstallOptions(cluster_name="c1", cluster_id=1, cgroup_root="/sys/fs/cgroup/unified", source="kubernetes")
    got = _resolve(base=base)
    assert (got.cluster_name, got.cgroup_root, got.source) == ("c1", "/sys/fs/cgroup/unified", "kubernetes")
    assert _resolve({"cgroup_root": "/sys/fs/cgroup"}, base=base, existing={"source": "cilium"}).source == "cilium"


def test_cilium_config_placeholders_are_not_an_identity() -> None:
    assert config_defaults({"cluster-name": "default", "cluster-id": "0"}, cilium=True) == {}
    assert config_defaults({"cluster-name": "east", "cluster-id": "3", "routing-mode": "x"}, cilium=True) == {
        "cluster_name": "east", "cluster_id": 3}


def test_invalid_values_name_their_flag() -> None:
    with pytest.raises(EnableUsageError, match="--cluster-id"):
        _resolve(name="c1", cid=300)


# ---- comparing and updating ----

def test_covers_ignores_server_defaults_but_not_changed_values() -> None:
    desired = {"spec": {"type": "NodePort", "ports": [{"port": 2379, "nodePort": 32379}], "x": None}}
    live = {"metadata": {"uid": "u"}, "spec": {"type": "NodePort", "clusterIP": "172.16.1.10",
                                                "ports": [{"port": 2379, "nodePort": 32379, "protocol": "TCP"}]}}
    assert covers(live, desired)
    changed = {"spec": {"type": "LoadBalancer", "ports": [{"port": 2379}]}}
    assert not covers(live, changed)
    assert differences(live, changed) == ["spec.type"]
    assert not covers({"spec": {"ports": []}}, desired)  # a list of another length


def test_update_body_keeps_what_the_server_allocated() -> None:
    options = InstallOptions(cluster_name="c1", cluster_id=1, node_port=None)
    desired = apiserver_service(options)
    live = {**desired, "metadata": {**desired["metadata"], "resourceVersion": "42", "uid": "u",
                                    "labels": {**desired["metadata"]["labels"], "team": "net"}},
            "spec": {**desired["spec"], "clusterIP": "10.0.0.9", "clusterIPs": ["10.0.0.9"],
                     "ports": [{**desired["spec"]["ports"][0], "nodePort": 30123}]},
            "status": {"loadBalancer": {}}}
    body = update_body(desired, live)
    assert body["metadata"]["resourceVersion"] == "42"
    assert body["metadata"]["labels"]["team"] == "net"
    assert body["spec"]["clusterIP"] == "10.0.0.9"
    assert body["spec"]["ports"][0]["nodePort"] == 30123
    assert "status" not in body


# ---- certificates ----

def _tls_data(certs: Any) -> dict[str, dict[str, bytes]]:
    return {s["metadata"]["name"]: secret_data(s) for s in certificate_secrets(NS, certs)}


def test_valid_certificates_are_reused_and_bad_ones_reissued() -> None:
    ca = CertificateAuthority.create("cilium-ca")
    existing = _tls_data(issue_cluster_certificates(ca, "c1", NS))
    plan = plan_certificates(ca, "c1", NS, existing, ca_created=False)
    assert all(note == "reused" for note in plan.notes.values()), plan.notes
    assert plan.certs.server.key_pem == existing[names.SERVER_CERT_SECRET][names.TLS_KEY]
    # renamed cluster: admin and local carry the name, server and remote do not
    plan = plan_certificates(ca, "c2", NS, existing, ca_created=False)
    assert plan.notes[names.SERVER_CERT_SECRET] == plan.notes[names.REMOTE_CERT_SECRET] == "reused"
    assert plan.notes[names.ADMIN_CERT_SECRET].startswith("reissued (subject")
    # another CA: everything is reissued
    other = CertificateAuthority.create("other")
    plan = plan_certificates(other, "c1", NS, existing, ca_created=True)
    assert {k: v.split(" (")[0] for k, v in plan.notes.items()} == {
        names.CA_SECRET: "created", **{n: "reissued" for n in existing if n != names.CA_SECRET}}


def test_a_certificate_close_to_expiry_or_with_a_foreign_key_is_not_kept() -> None:
    ca = CertificateAuthority.create("cilium-ca")
    certs = issue_cluster_certificates(ca, "c1", NS)
    data = _tls_data(certs)[names.REMOTE_CERT_SECRET]
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=340)
    assert reuse_problem(data, certs.remote, ca, now=later) is not None
    assert reuse_problem(data, certs.remote, ca) is None
    swapped = {**data, names.TLS_KEY: certs.admin.key_pem}
    assert reuse_problem(swapped, certs.remote, ca) == "tls.key does not match tls.crt"


def test_an_unusable_cilium_ca_is_refused_not_replaced() -> None:
    ca = CertificateAuthority.create("cilium-ca")
    assert load_ca(None, namespace=NS) is None
    assert load_ca({"ca.crt": ca.cert_pem, "ca.key": ca.keypair.key_pem}, namespace=NS) is not None
    with pytest.raises(CertificateError, match="has no ca.key"):
        load_ca({"ca.crt": ca.cert_pem}, namespace=NS)
    other = CertificateAuthority.create("other")
    with pytest.raises(CertificateError, match="not the key of ca.crt"):
        load_ca({"ca.crt": ca.cert_pem, "ca.key": other.keypair.key_pem}, namespace=NS)
    leaf = ca.issue_client("x")
    with pytest.raises(CertificateError, match="not a CA certificate"):
        load_ca({"ca.crt": leaf.cert_pem, "ca.key": leaf.key_pem}, namespace=NS)


# ---- readiness ----

def _pod(name: str, app: str, *, phase: str = "Running", ready: bool = True, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {names.APP_LABEL: app}}, "spec": {"nodeName": "n1"},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                       **status}}


def test_readiness_names_the_blocking_pods_and_why() -> None:
    deploy = {"metadata": {"generation": 1}, "spec": {"replicas": 1, "selector": {"matchLabels": {
        names.APP_LABEL: names.APISERVER}}}, "status": {"observedGeneration": 1, "readyReplicas": 0}}
    waiting = _pod("api-1", names.APISERVER, phase="Pending", ready=False, containerStatuses=[
        {"name": "etcd", "ready": False, "state": {"waiting": {"reason": "ContainerCreating",
                                                               "message": 'secret "x" not found'}}}])
    state = deployment_state(names.APISERVER, deploy, [waiting])
    assert not state.ready
    assert state.blockers == ('pod api-1 on n1: phase Pending; container etcd waiting: ContainerCreating '
                              '(secret "x" not found)',)
    assert deployment_state(names.APISERVER, {**deploy, "status": {"observedGeneration": 1, "readyReplicas": 1}},
                            [_pod("api-1", names.APISERVER)]).ready
    assert "has no pods yet" in deployment_state(names.APISERVER, deploy, []).blockers[0]
    crashing = _pod("a", names.AGENT, ready=False, containerStatuses=[
        {"name": "agent", "ready": False, "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
         "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}])
    assert "3 restart(s), last exit 1 (Error)" in pod_problems(crashing)[-1]
    selector = {"matchLabels": {names.APP_LABEL: names.AGENT}}
    ds: dict[str, Any] = {"metadata": {"generation": 2}, "spec": {"selector": selector},
                          "status": {"observedGeneration": 2, "desiredNumberScheduled": 2, "numberReady": 1,
                                     "updatedNumberScheduled": 2}}
    assert not daemonset_state(names.AGENT, ds, [crashing]).ready
    assert daemonset_state(names.AGENT, {**ds, "status": {**ds["status"], "numberReady": 2}}, []).ready
    none = {**ds, "status": {"observedGeneration": 2, "desiredNumberScheduled": 0, "numberReady": 0}}
    assert "no node matches" in daemonset_state(names.AGENT, none, []).blockers[0]


# ---- durations ----

@pytest.mark.parametrize(("text", "seconds"), [("5m", 300), ("90s", 90), ("1m30s", 90), ("1.5h", 5400),
                                               ("250ms", 0.25), ("12", 12)])
def test_durations_as_cilium_cli_takes_them(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "m5", "5m junk", "0s", "-3"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
