"""The emulator backed by a real etcd (TLS): kube-apiserver's ``/registry`` keys, resourceVersion =
mod_revision, SIGKILL + restart losing nothing, watches resuming from their last resourceVersion with
exactly the missed events (selector transitions included), 410 for compacted or out-of-window
resourceVersions, the real kubectl across a kill, the Service IP allocator and TLS reuse."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from lab.etcd import EtcdProcess, free_port
from tests.lab.kube_api.apiproc import REPO, ApiProcess, etcd_compact, etcd_get, etcd_put, etcd_revision

KUBECTL = shutil.which("kubectl")


@pytest.fixture
def api(etcd_tls: EtcdProcess, tmp_path: Path) -> Iterator[ApiProcess]:
    proc = ApiProcess(etcd_tls, tmp_path / "api", extra=["--service-cidr", "172.16.1.0/24"]).start()
    try:
        yield proc
    finally:
        proc.kill()


def cm(name: str, app: str, data: str = "1") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"app": app}},
            "data": {"d": data}}


def everything(api: ApiProcess) -> dict[str, str]:
    """``kind/namespace/name -> resourceVersion`` of every object of the kinds the test writes."""
    out: dict[str, str] = {}
    for path in ("/api/v1/namespaces", "/api/v1/configmaps", "/api/v1/services", "/api/v1/pods", "/api/v1/nodes",
                 "/apis/apps/v1/deployments", "/apis/cilium.io/v2/ciliumnodes",
                 "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"):
        for o in api.get_json(path)["items"]:
            md = o["metadata"]
            out[f"{o['kind']}/{md.get('namespace', '')}/{md['name']}"] = md["resourceVersion"]
    return out


def test_objects_live_at_kube_apiserver_keys(api: ApiProcess, etcd_tls: EtcdProcess) -> None:
    with api.api_client() as c:
        core, apps, custom = client.CoreV1Api(c), client.AppsV1Api(c), client.CustomObjectsApi(c)
        pod = core.create_namespaced_pod("default", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                                                     "spec": {"containers": [{"name": "c", "image": "x"}]}})
        svc = core.create_namespaced_service("default", {"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}})
        node = core.create_node({"metadata": {"name": "c1-n0"}})
        ep = core.create_namespaced_endpoints("default", {"metadata": {"name": "s"}, "subsets": []})
        dep = apps.create_namespaced_deployment("default", {
            "metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"a": "b"}},
                                                "template": {"metadata": {"labels": {"a": "b"}},
                                                             "spec": {"containers": [{"name": "c", "image": "x"}]}}}})
        cn = custom.create_cluster_custom_object("cilium.io", "v2", "ciliumnodes", {
            "apiVersion": "cilium.io/v2", "kind": "CiliumNode", "metadata": {"name": "c1-n0"}})
        cep = custom.create_namespaced_custom_object("cilium.io", "v2", "default", "ciliumendpoints", {
            "apiVersion": "cilium.io/v2", "kind": "CiliumEndpoint", "metadata": {"name": "p"}})
    expect = {
        "/registry/pods/default/p": pod.metadata.resource_version,
        "/registry/services/specs/default/s": svc.metadata.resource_version,
        "/registry/services/endpoints/default/s": ep.metadata.resource_version,
        "/registry/minions/c1-n0": node.metadata.resource_version,
        "/registry/deployments/default/d": dep.metadata.resource_version,
        "/registry/cilium.io/ciliumnodes/c1-n0": cn["metadata"]["resourceVersion"],
        "/registry/cilium.io/ciliumendpoints/default/p": cep["metadata"]["resourceVersion"],
        "/registry/namespaces/default": None,
        "/registry/apiextensions.k8s.io/customresourcedefinitions/ciliumnodes.cilium.io": None,
    }
    for key, rv in expect.items():
        kv = etcd_get(etcd_tls, key)
        assert kv is not None, key
        stored = json.loads(kv.value)
        assert "resourceVersion" not in stored["metadata"]  # it is the key's mod_revision, as in kube-apiserver
        if rv is not None:
            assert str(kv.mod_revision) == rv, key
    stored_cn = json.loads(etcd_get(etcd_tls, "/registry/cilium.io/ciliumnodes/c1-n0").value)  # type: ignore[union-attr]
    assert stored_cn["apiVersion"] == "cilium.io/v2" and stored_cn["kind"] == "CiliumNode"
    # the list resourceVersion is etcd's revision
    assert api.get_json("/api/v1/pods")["metadata"]["resourceVersion"] == str(etcd_revision(etcd_tls))


def test_guarded_writes_and_foreign_writes(api: ApiProcess, etcd_tls: EtcdProcess) -> None:
    """A stale resourceVersion is refused (409); writes made straight into etcd are learnt, events and all,
    on the API's next write."""
    with api.api_client() as c:
        core = client.CoreV1Api(c)
        first = core.create_namespaced_config_map("default", cm("g", "x"))
        core.patch_namespaced_config_map("g", "default", {"data": {"d": "2"}})
        stale = cm("g", "x", "3")
        stale["metadata"]["resourceVersion"] = first.metadata.resource_version
        with pytest.raises(ApiException) as e:
            core.replace_namespaced_config_map("g", "default", stale)
        assert e.value.status == 409
        with pytest.raises(ApiException) as e:
            core.create_namespaced_config_map("default", cm("g", "x"))
        assert e.value.status == 409

        # writes made straight into etcd: a new key, and a change to "g" behind the API's back
        since = core.list_namespaced_config_map("default").metadata.resource_version
        foreign = {**cm("foreign", "x"), "metadata": {"name": "foreign", "namespace": "default", "uid": "u-1",
                                                      "labels": {"app": "x"}}}
        etcd_put(etcd_tls, "/registry/configmaps/default/foreign", json.dumps(foreign).encode())
        current = core.read_namespaced_config_map("g", "default")
        g_changed = current.to_dict()
        etcd_put(etcd_tls, "/registry/configmaps/default/g", json.dumps(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "g", "namespace": "default",
                                                                   "uid": current.metadata.uid}, "data": {"d": "9"}}
        ).encode())
        assert g_changed["data"] == {"d": "2"}
        core.create_namespaced_config_map("default", cm("mine", "x"))  # sees the gap and learns both
        got = core.read_namespaced_config_map("foreign", "default")
        assert got.metadata.resource_version == str(etcd_get(etcd_tls, "/registry/configmaps/default/foreign")
                                                    .mod_revision)  # type: ignore[union-attr]
        assert core.read_namespaced_config_map("g", "default").data == {"d": "9"}
        stale = cm("g", "x", "10")
        stale["metadata"]["resourceVersion"] = current.metadata.resource_version
        with pytest.raises(ApiException) as e:
            core.replace_namespaced_config_map("g", "default", stale)
        assert e.value.status == 409
        # the API's cached "g" is stale again: its guarded write fails in etcd, it resyncs and answers 409
        etcd_put(etcd_tls, "/registry/configmaps/default/g", json.dumps(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "g", "namespace": "default",
                                                                   "uid": current.metadata.uid}, "data": {"d": "11"}}
        ).encode())
        with pytest.raises(ApiException) as e:
            core.patch_namespaced_config_map("g", "default", {"data": {"e": "1"}})
        assert e.value.status == 409
        assert core.patch_namespaced_config_map("g", "default", {"data": {"e": "1"}}).data == {"d": "11", "e": "1"}
    events = [(e["type"], e["object"]["metadata"]["name"]) for e in api.watch_lines(
        f"/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={since}&timeoutSeconds=1")]
    assert events == [("ADDED", "foreign"), ("MODIFIED", "g"), ("ADDED", "mine"), ("MODIFIED", "g"),
                      ("MODIFIED", "g")]


def test_sigkill_restart_loses_nothing_and_watches_resume(api: ApiProcess) -> None:
    with api.api_client() as c:
        core = client.CoreV1Api(c)
        for n in ("a1", "a2", "a3"):
            core.create_namespaced_config_map("default", cm(n, "x"))
        core.create_node({"metadata": {"name": "c1-n0"}})
        r0 = core.list_namespaced_config_map("default").metadata.resource_version

    # a client watching app=x from r0 while the writes below happen, then the API dies under it
    live: list[tuple[str, str, str]] = []

    def watch_live() -> None:
        try:
            for ev in api.watch_lines(f"/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={r0}"
                                      "&labelSelector=app%3Dx&allowWatchBookmarks=true", within=30):
                md = ev["object"]["metadata"]
                live.append((ev["type"], md["name"], md["resourceVersion"]))
        except OSError:
            pass  # the connection broke: expected

    t = threading.Thread(target=watch_live)
    t.start()
    with api.api_client() as c:
        core = client.CoreV1Api(c)
        core.patch_namespaced_config_map("a1", "default", {"metadata": {"labels": {"app": "y"}}})  # leaves app=x
        core.patch_namespaced_config_map("a2", "default", {"data": {"d": "2"}})
        core.delete_namespaced_config_map("a3", "default")
        core.create_namespaced_config_map("default", cm("a4", "x"))
    deadline = time.monotonic() + 10
    while len(live) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    before = everything(api)

    api.restart()  # SIGKILL, then the same port, etcd and TLS directory
    t.join(15)
    assert not t.is_alive()
    assert everything(api) == before  # every object, every resourceVersion
    with api.api_client() as c:  # the kubeconfig written before the kill still works
        core = client.CoreV1Api(c)
        core.create_namespaced_config_map("default", cm("a5", "x"))
        core.patch_namespaced_config_map("a1", "default", {"metadata": {"labels": {"app": "x"}}})  # back in
        r_end = core.list_namespaced_config_map("default").metadata.resource_version

    want = [("DELETED", "a1"), ("MODIFIED", "a2"), ("DELETED", "a3"), ("ADDED", "a4"), ("ADDED", "a5"),
            ("ADDED", "a1")]
    assert [(ty, n) for ty, n, _ in live] == want[:4]

    # the live watcher resumes from the last resourceVersion it saw: exactly what it missed, no 410
    last = live[-1][2]
    resumed = [(e["type"], e["object"]["metadata"]["name"]) for e in api.watch_lines(
        f"/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={last}&labelSelector=app%3Dx"
        "&timeoutSeconds=2")]
    assert resumed == want[4:]

    # a watch from r0 (before the kill) replays everything, with selector transitions (official client)
    with api.api_client() as c:
        core = client.CoreV1Api(c)
        got = [(e["type"], e["object"].metadata.name, e["object"].metadata.resource_version)
               for e in watch.Watch().stream(core.list_namespaced_config_map, "default", resource_version=r0,
                                             label_selector="app=x", timeout_seconds=2)]
    assert [(ty, n) for ty, n, _ in got] == want
    rvs = [int(rv) for _, _, rv in got]
    assert rvs == sorted(rvs) and rvs[-1] == int(r_end)
    # the DELETED event of the selector transition carries the object as it left (app=y)
    raw = list(api.watch_lines(f"/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={r0}"
                               "&labelSelector=app%3Dx&timeoutSeconds=2"))
    assert raw[0]["type"] == "DELETED" and raw[0]["object"]["metadata"]["labels"] == {"app": "y"}
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in raw] == want


def test_compacted_and_out_of_window_resource_versions_get_410(etcd_tls: EtcdProcess, tmp_path: Path) -> None:
    api = ApiProcess(etcd_tls, tmp_path / "api").start()
    try:
        with api.api_client() as c:
            core = client.CoreV1Api(c)
            old_rv = core.create_namespaced_config_map("default", cm("c0", "x")).metadata.resource_version
            for i in range(1, 4):
                core.create_namespaced_config_map("default", cm(f"c{i}", "x"))
        compact_at = etcd_revision(etcd_tls)
        etcd_compact(etcd_tls, compact_at)
        api.restart()
        with api.api_client() as c:
            core = client.CoreV1Api(c)
            core.create_namespaced_config_map("default", cm("c4", "x"))
            with pytest.raises(ApiException) as e:
                list(watch.Watch().stream(core.list_namespaced_config_map, "default", resource_version=old_rv,
                                          timeout_seconds=2))
            assert e.value.status == 410
        raw = list(api.watch_lines(f"/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={old_rv}"))
        assert raw[0]["type"] == "ERROR" and raw[0]["object"]["code"] == 410
        assert raw[0]["object"]["reason"] == "Expired"
        # from the compaction revision on, the history is there
        ok = list(api.watch_lines(f"/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={compact_at}"
                                  "&timeoutSeconds=1"))
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in ok] == [("ADDED", "c4")]

        # a history window of 3 revisions: older resourceVersions are Gone, newer ones replay
        api.extra = ["--history-window", "3"]
        with api.api_client() as c:
            core = client.CoreV1Api(c)
            mid = core.create_namespaced_config_map("default", cm("c5", "x")).metadata.resource_version
            for i in range(6, 10):
                core.create_namespaced_config_map("default", cm(f"c{i}", "x"))
        api.restart()
        raw = list(api.watch_lines(f"/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={mid}"))
        assert raw[0]["type"] == "ERROR" and raw[0]["object"]["code"] == 410
        last = api.get_json("/api/v1/namespaces/default/configmaps/c9")["metadata"]["resourceVersion"]
        prev = str(int(last) - 1)  # c8's revision, inside the window
        ok = list(api.watch_lines(f"/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={prev}"
                                  "&timeoutSeconds=1"))
        assert [e["object"]["metadata"]["name"] for e in ok] == ["c9"]
    finally:
        api.kill()


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_kubectl_get_watch_across_an_api_kill(api: ApiProcess, tmp_path: Path) -> None:
    """What kubectl 1.32 does when the API dies under ``kubectl get pods -w``, as observed: once its watch
    request is established, it ends at once with exit status 0 and prints no error (client-go logs
    "Unexpected EOF during watch stream event decoding" at -v=6 only); it does not re-watch. (Killed before
    the watch request went out, it fails instead: "The connection to the server ... was refused", status 1.)
    A client that does resume (a raw watch from the last resourceVersion, or a new ``kubectl get -w``
    after the restart) gets the new pod, without any 410."""
    assert KUBECTL is not None
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "before"},
           "spec": {"containers": [{"name": "c", "image": "x"}]}}
    with api.api_client() as c:
        client.CoreV1Api(c).create_namespaced_pod("default", pod)
        last_rv = client.CoreV1Api(c).list_namespaced_pod("default").metadata.resource_version
    base = [KUBECTL, "--kubeconfig", str(api.kubeconfig), "--cache-dir", str(tmp_path / "kc")]
    kubectl = subprocess.Popen([*base, "get", "pods", "-w", "-v=6"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    log: list[str] = []
    watching = threading.Event()

    def read_log() -> None:
        assert kubectl.stderr is not None
        for line in kubectl.stderr:
            log.append(line)
            if "watch=true 200 OK" in line:
                watching.set()

    reader = threading.Thread(target=read_log)
    reader.start()
    try:
        assert watching.wait(20), "".join(log)
        api.kill()
        rc = kubectl.wait(15)  # observed: kubectl ends by itself when its watch connection drops
        api.start()
        with api.api_client() as c:
            pod["metadata"]["name"] = "after"
            client.CoreV1Api(c).create_namespaced_pod("default", pod)
        out, _ = kubectl.communicate(timeout=5)
    finally:
        if kubectl.poll() is None:
            kubectl.kill()
            kubectl.wait(5)
        reader.join(5)
    assert [ln.split()[0] for ln in out.splitlines()] == ["NAME", "before"]
    assert rc == 0
    assert not [ln for ln in log if ln.startswith(("E", "W")) or "error" in ln.lower()], "".join(log)
    assert any("Unexpected EOF during watch stream" in ln for ln in log)
    assert sum("watch=true" in ln for ln in log) == 1  # no second watch, no relist

    # resuming from the last resourceVersion kubectl's list had: exactly the new pod, no 410
    raw = subprocess.run([*base, "get", "--raw",
                          f"/api/v1/namespaces/default/pods?watch=1&resourceVersion={last_rv}&timeoutSeconds=1"],
                         capture_output=True, text=True, timeout=30, check=True)
    events = [json.loads(line) for line in raw.stdout.splitlines()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "after")]
    again = subprocess.run([*base, "get", "pods", "-w", "--request-timeout=2s"], capture_output=True, text=True,
                           timeout=30)
    assert [ln.split()[0] for ln in again.stdout.splitlines()[1:]] == ["after", "before"]
    assert "error" not in again.stderr.lower()


def test_kubernetes_service_and_ip_allocator_survive_restarts(api: ApiProcess) -> None:
    svc = api.get_json("/api/v1/namespaces/default/services/kubernetes")
    assert svc["spec"]["clusterIP"] == "172.16.1.1"
    assert svc["spec"]["ports"] == [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": api.port}]
    ips = ["172.16.1.1"]
    for round_ in range(2):
        with api.api_client() as c:
            core = client.CoreV1Api(c)
            for i in range(3):
                s = core.create_namespaced_service("default", {"metadata": {"name": f"s{round_}-{i}"},
                                                               "spec": {"ports": [{"port": 80}]}})
                ips.append(s.spec.cluster_ip)
        api.restart()
    assert len(set(ips)) == len(ips) and all(ip.startswith("172.16.1.") for ip in ips)
    assert api.get_json("/api/v1/namespaces/default/services/kubernetes")["metadata"]["uid"] == svc["metadata"]["uid"]


def test_tls_dir_is_reused_across_restarts(api: ApiProcess) -> None:
    ca, cert = (api.tls_dir / "ca.crt").read_bytes(), (api.tls_dir / "tls.crt").read_bytes()
    old_kubeconfig = api.kubeconfig.read_text()
    api.restart()
    assert (api.tls_dir / "ca.crt").read_bytes() == ca and (api.tls_dir / "tls.crt").read_bytes() == cert
    assert api.kubeconfig.read_text() == old_kubeconfig
    api.extra += ["--tls-san", "172.16.1.1", "--tls-san", "api.c1.lab"]
    api.restart()
    assert (api.tls_dir / "ca.crt").read_bytes() == ca  # same CA: existing kubeconfigs stay valid
    assert (api.tls_dir / "tls.crt").read_bytes() != cert  # re-issued for the new names
    from cryptography import x509
    sans = x509.load_pem_x509_certificate((api.tls_dir / "tls.crt").read_bytes()).extensions \
        .get_extension_for_class(x509.SubjectAlternativeName).value
    assert "api.c1.lab" in sans.get_values_for_type(x509.DNSName)
    assert "172.16.1.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    with api.api_client() as c:
        assert client.CoreV1Api(c).read_namespace("default").metadata.name == "default"


def test_unreachable_etcd_is_a_one_line_error(tmp_path: Path) -> None:
    cfg = tmp_path / "etcd.yaml"
    cfg.write_text(f"endpoints:\n- http://127.0.0.1:{free_port()}\n")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "lab.kube.api", "--etcd-config", str(cfg), "--etcd-timeout", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and time.monotonic() - t0 < 30
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: etcd http://127.0.0.1:") and "unreachable" in lines[0]


def test_etcd_down_then_back_while_the_api_runs(api: ApiProcess, etcd_tls: EtcdProcess) -> None:
    """Writes fail with 503 while etcd is down (reads are served from the store), and work again after."""
    with api.api_client() as c:
        core = client.CoreV1Api(c)
        core.create_namespaced_config_map("default", cm("up", "x"))
        etcd_tls.kill()
        try:
            t0 = time.monotonic()
            with pytest.raises(ApiException) as e:
                core.create_namespaced_config_map("default", cm("down", "x"))
            assert e.value.status == 503 and "etcd" in json.loads(e.value.body)["message"]
            assert time.monotonic() - t0 < 15
            assert core.read_namespaced_config_map("up", "default").data == {"d": "1"}
        finally:
            etcd_tls.start()
        deadline = time.monotonic() + 20
        while True:
            try:
                made = core.create_namespaced_config_map("default", cm("down", "x"))
                break
            except ApiException as err:
                assert err.status == 503 and time.monotonic() < deadline
                time.sleep(0.2)
    kv = etcd_get(etcd_tls, "/registry/configmaps/default/down")
    assert kv is not None and str(kv.mod_revision) == made.metadata.resource_version
