"""The watch-resuming API front (lab/kube/front.py) in front of the real API process on etcd: requests
pass through unchanged (official client, kubectl apply, logs -f); watches survive a SIGKILL + restart of
the API (official client, raw HTTP, kubectl get -w) with every later event exactly once and in order; a
re-watch refused with 410 ends the stream with that ERROR event; 503 while the API is down."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from multidict import MultiDict

from lab.etcd import EtcdProcess
from lab.kube.front import ApiFront, FrontError, WatchProgress, error_event, is_watch
from tests.lab.kube_api.apiproc import ApiProcess, FrontThread, etcd_compact, etcd_put, etcd_revision

KUBECTL = shutil.which("kubectl")
T = TypeVar("T")


def wait_until(check: Callable[[], T | None], within: float = 20.0, what: str = "condition") -> T:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {within} s")


@pytest.fixture
def api(etcd_tls: EtcdProcess, tmp_path: Path) -> Iterator[ApiProcess]:
    proc = ApiProcess(etcd_tls, tmp_path / "api").start()
    try:
        yield proc
    finally:
        proc.kill()


@pytest.fixture
def front(api: ApiProcess) -> Iterator[FrontThread]:
    f = FrontThread(api).start()
    try:
        yield f
    finally:
        f.stop()


@pytest.fixture
def front_kubeconfig(front: FrontThread, api: ApiProcess, tmp_path: Path) -> Path:
    return front.write_kubeconfig(api, tmp_path / "front-kubeconfig")


def front_client(kubeconfig: Path) -> client.ApiClient:
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    return client.ApiClient(cfg)


def cm(name: str, data: str = "1") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"app": "f"}},
            "data": {"d": data}}


class RawWatch:
    """A raw HTTP watch through the front, read line by line in a thread (BOOKMARKs kept apart)."""

    def __init__(self, front: FrontThread, api: ApiProcess, path: str) -> None:
        self.events: list[dict[str, Any]] = []
        self.bookmarks = 0
        self.ended: str | None = None  # "eof" or the error that ended the read
        self._resp = urllib.request.urlopen(front.url + path, context=front.ssl_context(api), timeout=90)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        pending = b""
        try:
            # read1, not line iteration: http.client's readline takes a cut chunked stream for its end
            while chunk := self._resp.read1(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    ev = json.loads(line)
                    if ev["type"] == "BOOKMARK":
                        self.bookmarks += 1
                    else:
                        self.events.append(ev)
            self.ended = "eof"
        except Exception as e:  # the assertions look at it
            self.ended = repr(e)

    def names(self) -> list[tuple[str, str]]:
        return [(e["type"], e["object"]["metadata"].get("name", "")) for e in self.events]

    def close(self) -> None:
        self._resp.close()
        self._thread.join(10)


def test_requests_pass_through_unchanged(front: FrontThread, front_kubeconfig: Path, api: ApiProcess,
                                         tmp_path: Path) -> None:
    with front_client(front_kubeconfig) as c:
        core = client.CoreV1Api(c)
        made = core.create_namespaced_config_map("default", cm("p1"))
        assert core.read_namespaced_config_map("p1", "default").metadata.uid == made.metadata.uid
        core.patch_namespaced_config_map("p1", "default", {"data": {"d": "merge"}})  # strategic merge
        # a list body goes as application/json-patch+json
        core.patch_namespaced_config_map("p1", "default", [{"op": "add", "path": "/data/e", "value": "json-patch"}])
        got = core.read_namespaced_config_map("p1", "default")
        assert got.data == {"d": "merge", "e": "json-patch"}
        # the same object, byte for byte, straight from the API
        assert api.get_json("/api/v1/namespaces/default/configmaps/p1")["metadata"]["resourceVersion"] == \
            got.metadata.resource_version
        with pytest.raises(ApiException) as e:
            core.create_namespaced_config_map("default", cm("p1"))
        assert e.value.status == 409 and json.loads(e.value.body)["reason"] == "AlreadyExists"
        core.delete_namespaced_config_map("p1", "default")
        with pytest.raises(ApiException) as e:
            core.read_namespaced_config_map("p1", "default")
        assert e.value.status == 404
        # a large body (beyond aiohttp's default 1 MiB request limit)
        big = core.create_namespaced_config_map("default", cm("big", "x" * 1_200_000))
        assert len(core.read_namespaced_config_map("big", "default").data["d"]) == 1_200_000
        assert big.metadata.name == "big"
    if KUBECTL is None:
        return
    base = [KUBECTL, "--kubeconfig", str(front_kubeconfig), "--cache-dir", str(tmp_path / "kc")]
    manifest = tmp_path / "cm.yaml"
    manifest.write_text(yaml.safe_dump(cm("applied")))
    for extra in ([], ["--server-side"]):
        out = subprocess.run([*base, "apply", "-f", str(manifest), *extra], capture_output=True, text=True,
                             timeout=30)
        assert out.returncode == 0, out.stderr
    manifest.write_text(yaml.safe_dump(cm("applied", "2")))
    out = subprocess.run([*base, "apply", "-f", str(manifest), "--server-side"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0 and "serverside-applied" in out.stdout, out.stdout + out.stderr
    table = subprocess.run([*base, "get", "configmaps"], capture_output=True, text=True, timeout=30, check=True)
    assert {ln.split()[0] for ln in table.stdout.splitlines()[1:]} >= {"applied", "big"}
    assert api.get_json("/api/v1/namespaces/default/configmaps/applied")["data"] == {"d": "2"}
    subprocess.run([*base, "delete", "-f", str(manifest)], capture_output=True, text=True, timeout=30, check=True)
    assert front.front.stats.unavailable == 0


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_kubectl_logs_follow_streams_through_the_front(front: FrontThread, front_kubeconfig: Path,
                                                       api: ApiProcess, tmp_path: Path) -> None:
    assert KUBECTL is not None
    with front_client(front_kubeconfig) as c:
        pod = client.CoreV1Api(c).create_namespaced_pod("default", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "logger"},
            "spec": {"nodeName": "n0", "containers": [{"name": "c", "image": "x"}]}})
    log = api.log_root / "n0" / "pods" / f"default_logger_{pod.metadata.uid}" / "c" / "0.log"
    log.parent.mkdir(parents=True)
    log.write_text("one\n")
    base = [KUBECTL, "--kubeconfig", str(front_kubeconfig), "--cache-dir", str(tmp_path / "kc")]
    follow = subprocess.Popen([*base, "logs", "-f", "logger"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        assert follow.stdout is not None
        assert follow.stdout.readline() == "one\n"
        with log.open("a") as f:
            f.write("two\n")
        assert follow.stdout.readline() == "two\n"  # streamed, not buffered until the end
        subprocess.run([*base, "delete", "pod", "logger", "--grace-period=0", "--force"], capture_output=True,
                       timeout=30, check=True)
        out, err = follow.communicate(timeout=20)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.communicate(timeout=10)
    assert follow.returncode == 0 and out == "", err


def test_official_client_watch_survives_an_api_sigkill(front: FrontThread, front_kubeconfig: Path,
                                                        api: ApiProcess) -> None:
    got: list[tuple[str, str, str]] = []
    failure: list[BaseException] = []
    with front_client(front_kubeconfig) as c:
        core = client.CoreV1Api(c)
        rv = core.list_namespaced_config_map("default").metadata.resource_version

        def watch_it() -> None:
            w = watch.Watch()
            try:
                for ev in w.stream(core.list_namespaced_config_map, "default", resource_version=rv,
                                   allow_watch_bookmarks=True, timeout_seconds=60):
                    if ev["type"] == "BOOKMARK":
                        continue
                    md = ev["object"].metadata
                    got.append((ev["type"], md.name, md.resource_version))
                    if md.name == "end":
                        w.stop()
            except BaseException as e:
                failure.append(e)

        t = threading.Thread(target=watch_it, daemon=True)
        t.start()
        core.create_namespaced_config_map("default", cm("w1"))
        wait_until(lambda: len(got) == 1, what="the first event")
        api.restart()  # SIGKILL: the watch's upstream connection breaks mid-stream
        core.patch_namespaced_config_map("w1", "default", {"data": {"d": "2"}})
        core.create_namespaced_config_map("default", cm("w2"))
        core.delete_namespaced_config_map("w1", "default")
        core.create_namespaced_config_map("default", cm("end"))
        t.join(30)
    assert not t.is_alive() and not failure, failure
    assert [(ty, n) for ty, n, _ in got] == [("ADDED", "w1"), ("MODIFIED", "w1"), ("ADDED", "w2"),
                                             ("DELETED", "w1"), ("ADDED", "end")]
    rvs = [int(r) for _, _, r in got]
    assert rvs == sorted(set(rvs))  # in order, each once
    assert front.front.stats.watches == 1 and front.front.stats.resumed >= 1  # the client never re-watched


def test_raw_watch_gets_later_events_exactly_once_in_order(front: FrontThread, api: ApiProcess,
                                                           etcd_tls: EtcdProcess) -> None:
    with front_client(front.write_kubeconfig(api, api.directory / "fk")) as c:
        core = client.CoreV1Api(c)
        for i in range(3):
            core.create_namespaced_config_map("default", cm(f"r{i}"))
        rv = core.list_namespaced_config_map("default").metadata.resource_version
        w = RawWatch(front, api, f"/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}"
                                 "&allowWatchBookmarks=true")
        try:
            core.patch_namespaced_config_map("r0", "default", {"data": {"d": "before"}})
            wait_until(lambda: len(w.events) == 1, what="the event before the kill")
            wait_until(lambda: w.bookmarks > 0, what="a BOOKMARK")
            for round_ in range(2):  # two kills in a row: each resume starts where the stream stopped
                api.restart()
                for i in range(3):
                    core.patch_namespaced_config_map(f"r{i}", "default", {"data": {"d": f"after{round_}"}})
                wait_until(lambda n=4 + 3 * round_: len(w.events) == n, what=f"the events after kill {round_ + 1}")
            core.delete_namespaced_config_map("r2", "default")
            wait_until(lambda: len(w.events) == 8, what="every event after the restarts")
            time.sleep(0.5)  # nothing more (no duplicates) arrives
            assert w.ended is None
        finally:
            w.close()
    assert w.names() == [("MODIFIED", "r0")] + [("MODIFIED", f"r{i}") for i in range(3)] * 2 + [("DELETED", "r2")]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in w.events]
    assert rvs == sorted(set(rvs)) and rvs[-1] == etcd_revision(etcd_tls)
    assert front.front.stats.watches == 1 and front.front.stats.resumed >= 2


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
@pytest.mark.parametrize("output", [["-o", "name"], []], ids=["name", "table"])
def test_kubectl_get_watch_resumes_across_an_api_restart(front: FrontThread, front_kubeconfig: Path,
                                                         api: ApiProcess, tmp_path: Path, output: list[str]) -> None:
    assert KUBECTL is not None
    base = [KUBECTL, "--kubeconfig", str(front_kubeconfig), "--cache-dir", str(tmp_path / "kc")]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "before"},
           "spec": {"containers": [{"name": "c", "image": "x"}]}}
    with front_client(front_kubeconfig) as c:
        core = client.CoreV1Api(c)
        core.create_namespaced_pod("default", pod)
        kubectl = subprocess.Popen([*base, "get", "pods", "-w", *output, "-v=6"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        log: list[str] = []
        readers = [threading.Thread(target=lambda s=s, into=into: into.extend(iter(s.readline, "")), daemon=True)
                   for s, into in ((kubectl.stdout, lines), (kubectl.stderr, log))]
        for r in readers:
            r.start()
        try:
            wait_until(lambda: any("watch=true 200 OK" in ln for ln in log), what="kubectl watching")
            api.restart()
            pod["metadata"]["name"] = "after"
            core.create_namespaced_pod("default", pod)
            wait_until(lambda: any("after" in ln for ln in lines), what=f"kubectl printing the new pod: {log}")
            assert kubectl.poll() is None  # still watching
        finally:
            kubectl.kill()
            kubectl.communicate(timeout=10)
            for r in readers:
                r.join(10)
    names = [ln.split()[0].removeprefix("pod/") for ln in lines if not ln.startswith("NAME")]
    assert names == ["before", "after"]
    assert not [ln for ln in log if ln.startswith(("E", "W")) or "error" in ln.lower()], "".join(log)
    assert sum("watch=true" in ln for ln in log) == 1  # no re-watch, no relist by kubectl


def test_rewatch_refused_with_410_ends_the_stream_with_the_error(front: FrontThread, api: ApiProcess,
                                                                  etcd_tls: EtcdProcess) -> None:
    with front_client(front.write_kubeconfig(api, api.directory / "fk")) as c:
        core = client.CoreV1Api(c)
        rv = core.list_namespaced_config_map("default").metadata.resource_version
        w = RawWatch(front, api, f"/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}")
        try:
            core.create_namespaced_config_map("default", cm("g1"))
            wait_until(lambda: w.events, what="the first event")
            api.kill()
            # while the API is down, history moves on and is compacted past what the watch has seen
            for name in ("g2", "g3"):
                foreign = {**cm(name), "metadata": {"name": name, "namespace": "default", "uid": f"u-{name}"}}
                rev = etcd_put(etcd_tls, f"/registry/configmaps/default/{name}", json.dumps(foreign).encode())
            etcd_compact(etcd_tls, rev)  # the watch would need g2's revision next: gone
            api.start()
            wait_until(lambda: w.ended, what="the stream to end")
        finally:
            w.close()
    assert w.ended == "eof"
    assert w.names()[0] == ("ADDED", "g1")
    last = w.events[-1]
    assert last["type"] == "ERROR" and last["object"]["code"] == 410 and last["object"]["reason"] == "Expired"
    assert len(w.events) == 2


def test_503_while_the_api_is_down_then_back(front: FrontThread, front_kubeconfig: Path, api: ApiProcess) -> None:
    api.kill()
    ctx = front.ssl_context(api)
    t0 = time.monotonic()
    for path in ("/api/v1/namespaces/default/configmaps", "/api/v1/namespaces/default/configmaps?watch=1"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(front.url + path, context=ctx, timeout=30)
        assert e.value.code == 503 and e.value.headers["Retry-After"] == "1"
        status = json.loads(e.value.read())
        assert (status["kind"], status["code"], status["reason"]) == ("Status", 503, "ServiceUnavailable")
        assert "the lab's Kubernetes API is restarting" in status["message"]
    assert time.monotonic() - t0 < 20  # answered, not hung
    with front_client(front_kubeconfig) as c:
        core = client.CoreV1Api(c)
        with pytest.raises(ApiException) as err:
            core.list_namespaced_config_map("default")
        assert err.value.status == 503
        api.start()
        assert core.list_namespaced_config_map("default").items is not None  # the same client, back in business


def test_clean_upstream_end_ends_the_client_stream(front: FrontThread, api: ApiProcess) -> None:
    t0 = time.monotonic()
    events = list(urllib.request.urlopen(front.url + "/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=1",
                                         context=front.ssl_context(api), timeout=30))
    assert time.monotonic() - t0 < 20
    assert front.front.stats.resumed == 0
    assert all(json.loads(e)["type"] == "ADDED" for e in events)


def test_a_watch_whose_api_stays_down_is_closed_after_the_resume_window(api: ApiProcess) -> None:
    f = FrontThread(api, resume_within=1.0).start()
    try:
        w = RawWatch(f, api, "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion="
                     + api.get_json("/api/v1/namespaces/default/configmaps")["metadata"]["resourceVersion"])
        try:
            time.sleep(0.5)
            api.kill()
            wait_until(lambda: w.ended, within=30, what="the stream to be closed")
        finally:
            w.close()
        assert w.ended != "eof"  # closed as a broken connection, not as a clean end
        assert f.front.stats.resume_failures == 1
    finally:
        f.stop()


def test_front_without_tls_files_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(FrontError, match="tls.crt"):
        asyncio.run(ApiFront(0, 1, tmp_path).start())


# ----- pure parts -----


@pytest.mark.parametrize(("path", "query", "want"), [
    ("/api/v1/pods", {"watch": "true"}, True),
    ("/api/v1/pods", {"watch": "1"}, True),
    ("/api/v1/pods", {"watch": "false"}, False),
    ("/api/v1/watch/namespaces/default/pods", {}, True),
    ("/apis/apps/v1/watch/deployments", {}, True),
    ("/apis/apps/v1/deployments", {}, False),
    ("/api/v1/namespaces/watch/pods", {}, False),
])
def test_is_watch(path: str, query: dict[str, str], want: bool) -> None:
    assert is_watch(path, query) is want


def test_watch_progress_resumes_from_the_last_resource_version() -> None:
    p = WatchProgress.of(MultiDict([("watch", "1"), ("resourceVersion", "5"), ("labelSelector", "a=b"),
                                    ("timeoutSeconds", "300")]))
    assert p.resume_query(120) == MultiDict([("watch", "1"), ("resourceVersion", "5"), ("labelSelector", "a=b"),
                                             ("timeoutSeconds", "120")])  # nothing seen: as the client asked
    p.see(b'{"type":"ADDED","object":{"kind":"Pod","metadata":{"name":"x","resourceVersion":"7"}}}')
    p.see(b'{"type":"BOOKMARK","object":{"kind":"Pod","metadata":{"resourceVersion":"9"}}}')
    p.see(b"")
    q = p.resume_query(None)
    assert q.getall("resourceVersion") == ["9"] and "timeoutSeconds" not in q and q["labelSelector"] == "a=b"
    assert p.resumable and p.events == 2
    p.see(b'{"type":"ERROR","object":{"kind":"Status","code":410}}')
    assert p.error and not p.resumable


def test_watch_progress_waits_for_the_end_of_initial_events() -> None:
    p = WatchProgress.of(MultiDict([("watch", "1"), ("sendInitialEvents", "true"),
                                    ("resourceVersionMatch", "NotOlderThan")]))
    p.see(b'{"type":"ADDED","object":{"metadata":{"resourceVersion":"3"}}}')
    assert not p.resumable  # a re-watch could not deliver the end-of-initial-events BOOKMARK
    p.see(b'{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"4",'
          b'"annotations":{"k8s.io/initial-events-end":"true"}}}}')
    assert p.resumable
    q = p.resume_query(None)
    assert "sendInitialEvents" not in q and "resourceVersionMatch" not in q and q["resourceVersion"] == "4"
    p.see(b"not json")
    assert not p.resumable


def test_error_event_keeps_a_status_body_or_makes_one() -> None:
    status = {"kind": "Status", "code": 404, "reason": "NotFound"}
    assert json.loads(error_event(404, json.dumps(status).encode())) == {"type": "ERROR", "object": status}
    made = json.loads(error_event(410, b"<html>"))
    assert made["object"]["code"] == 410 and made["object"]["reason"] == "Expired"
