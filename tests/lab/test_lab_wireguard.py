"""Issue 11 acceptance: WireGuard in a lab, driven as a user does (``clustermesh lab up --encryption
wireguard``, ``kubectl apply -f lab/examples/``, ``clustermesh lab exec ... -- curl``, ``clustermesh
encryption audit|status``, ``clustermesh bpf dump counters``, ``kubectl label``/``delete pod``).

Two labs of 2 clusters x 2 nodes, brought up at once for the module: ``wg`` (WireGuard) for the
traffic, audit, status, metrics, agent-crash, key-rotation and per-node migration scenarios,
``strict`` (WireGuard with egress strict mode over 10.0.0.0/8, every cluster's pod CIDR
10.<id>.0.0/16) for the dropped-not-leaked scenario. The key rotation (``clustermesh encryption
rotate --all`` during 90 s of numbered UDP and paced TCP between the clusters, both ways, with
:mod:`lab.net.traffic` run in the pods through ``clustermesh lab exec``) runs after the scenarios
that expect no rotation yet; the migration (label) scenario runs last on ``wg``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clustermesh_cli.status import AgentUnreachableError, agent_get_raw
from lab.driver import CLI, PROJECT, LabDriver, running_ready, wait_for
from lab.mesh import agent_pin_root, agent_socket, agent_status
from lab.meshtest import LabPod
from lab.net import StreamResult, StreamRun, UdpResult, UdpRun, start_tcp_stream, start_udp_stream
from lab.prereqs import datapath_unavailable

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(datapath_unavailable() is not None, reason=str(datapath_unavailable())),
    pytest.mark.timeout(600),
]

EXAMPLES = PROJECT / "lab" / "examples"
STRICT_CIDR = "10.0.0.0/8"
LABEL = "clustermesh.io/encryption"
AGENT_SELECTOR = "k8s-app=clustermesh-agent"
AUDIT_SECONDS = "10"


@dataclass
class WgLab:
    """A running lab with the examples applied: echo pods (2 per cluster, one per node) and a client."""

    driver: LabDriver
    echo: dict[str, list[dict[str, Any]]]  # cluster -> echo pods
    client_node: dict[str, str]  # cluster -> the client pod's node

    @property
    def contexts(self) -> list[str]:
        return [a for c in ("c1", "c2") for a in ("--context", self.driver.context(c))]

    def echo_on(self, cluster: str, node: str) -> dict[str, Any]:
        return next(p for p in self.echo[cluster] if p["spec"]["nodeName"] == node)

    def echo_off(self, cluster: str, node: str) -> dict[str, Any]:
        return next(p for p in self.echo[cluster] if p["spec"]["nodeName"] != node)


def _up(name: str, tmp: Path, *extra: str) -> WgLab:
    driver = LabDriver(name, tmp / f"{name}.kubeconfig")
    out = driver.up(2, 2, "--encryption", "wireguard", *extra, timeout=300)
    assert f"lab {name!r} is up" in out.stdout, out.stdout
    for cluster in ("c1", "c2"):
        driver.kubectl(cluster, "apply", "-f", str(EXAMPLES))
    echo: dict[str, list[dict[str, Any]]] = {}
    clients: dict[str, str] = {}
    for cluster in ("c1", "c2"):
        echo[cluster] = wait_for(lambda c=cluster: (lambda ps: ps if len(ps) == 2 else None)(  # type: ignore[misc]
            [p for p in driver.pods(c, "app=echo") if running_ready(p)]), within=60, what=f"echo Ready in {cluster}")
        client = wait_for(lambda c=cluster: next((p for p in driver.pods(c, "app=client")  # type: ignore[misc]
                                                  if running_ready(p)), None), within=60, what="client Ready")
        clients[cluster] = client["spec"]["nodeName"]
    return WgLab(driver, echo, clients)


@pytest.fixture(scope="module")
def labs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, WgLab]]:
    tmp = tmp_path_factory.mktemp("wglabs")
    tag = secrets.token_hex(2)
    names = {"wg": f"wgw{tag}", "strict": f"wgs{tag}"}
    plans = {"wg": (), "strict": ("--encryption-strict-mode-cidr", STRICT_CIDR)}
    try:
        with ThreadPoolExecutor(2) as pool:  # both bring-ups at once: most of it is waiting
            futures = {k: pool.submit(_up, names[k], tmp, *plans[k]) for k in names}
            yield {k: f.result() for k, f in futures.items()}
    finally:
        for name in names.values():
            LabDriver(name, tmp / f"{name}.kubeconfig").down()


@pytest.fixture(scope="module")
def wg(labs: dict[str, WgLab]) -> WgLab:
    return labs["wg"]


@pytest.fixture(scope="module")
def strict(labs: dict[str, WgLab]) -> WgLab:
    return labs["strict"]


# ---- helpers: what a user types ----

def _curl(lab: WgLab, cluster: str, ip: str, *, timeout: str = "5") -> dict[str, Any] | None:
    out = lab.driver.exec(cluster, "client", "curl", "-s", "-m", timeout, f"http://{ip}:8080/", check=False)
    return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else None


@contextmanager
def _traffic(lab: WgLab, streams: dict[str, list[str]], *, seconds: float = 25) -> Iterator[None]:
    """A steady stream of requests from each cluster's client to the given pod IPs (bounded: at
    most ``seconds``, 5 requests a second per target), stopped on exit."""
    procs = []
    rounds = int(seconds * 5)
    for cluster, ips in streams.items():
        requests = "; ".join(f"curl -s -m 1 -o /dev/null http://{ip}:8080/" for ip in ips)
        script = f"for i in $(seq 1 {rounds}); do {requests}; sleep 0.2; done"
        procs.append(subprocess.Popen([*CLI, "lab", "exec", "--name", lab.driver.name, "--context",
                                       lab.driver.context(cluster), "client", "--", "timeout", str(int(seconds)),
                                       "sh", "-c", script], cwd=PROJECT, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))  # fmt: skip
    try:
        time.sleep(2.0)  # the streams are flowing before the capture starts
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _audit(lab: WgLab, seconds: str = AUDIT_SECONDS) -> tuple[int, dict[str, Any]]:
    out = lab.driver.clustermesh("encryption", "audit", *lab.contexts, "--kubeconfig", str(lab.driver.kubeconfig),
                                 "--duration", seconds, "-o", "json", timeout=120, check=False)
    assert out.returncode in (0, 1), out.stdout + out.stderr
    return out.returncode, json.loads(out.stdout)


def _enc_status(lab: WgLab) -> tuple[int, dict[str, Any]]:
    out = lab.driver.clustermesh("encryption", "status", *lab.contexts, "--kubeconfig", str(lab.driver.kubeconfig),
                                 "-o", "json", timeout=120, check=False)
    assert out.returncode in (0, 1), out.stdout + out.stderr
    return out.returncode, json.loads(out.stdout)


def _pair(doc: dict[str, Any], a: str, b: str) -> dict[str, Any]:
    return next((p for p in doc["pairs"] if set(p["pair"]) == {a, b}),
                {"pair": [a, b], "counts": {"wireguard": 0, "plaintext-pod": 0}})


def _agent_pod(lab: WgLab, node: str) -> dict[str, Any]:
    cluster = node.split("-")[0]
    pods = lab.driver.pods(cluster, AGENT_SELECTOR, namespace="kube-system")
    return next(p for p in pods if p["spec"]["nodeName"] == node and not p["metadata"].get("deletionTimestamp"))


def _encryption(lab: WgLab, node: str) -> dict[str, Any]:
    """The agent's encryption status ({} while its agent does not answer, e.g. restarting)."""
    try:
        return dict(agent_status(lab.driver.spec, node)["datapath"]["encryption"])
    except AgentUnreachableError:
        return {}


def _synced_agent(lab: WgLab, node: str) -> dict[str, Any] | None:
    """The agent's status once it has programmed the datapath and its WireGuard reconcilers are synced."""
    try:
        doc = agent_status(lab.driver.spec, node)
    except AgentUnreachableError:
        return None
    dp = doc.get("datapath") or {}
    recs = dp.get("reconcilers") or {}
    ok = dp.get("programmed") and all((recs.get(r) or {}).get("synced") for r in ("wireguard-peers", "steering-routes"))
    return doc if ok else None


def _disable(lab: WgLab, node: str) -> None:
    """``kubectl label node N clustermesh.io/encryption=disabled``, then delete its agent pod (the
    DaemonSet starts a new one, which reads the label at start)."""
    cluster = node.split("-")[0]
    old = _agent_pod(lab, node)["metadata"]["name"]
    lab.driver.kubectl(cluster, "label", "node", node, f"{LABEL}=disabled", "--overwrite")
    lab.driver.kubectl(cluster, "-n", "kube-system", "delete", "pod", old, "--wait=true", timeout=60)

    def restarted() -> bool:
        pod = _agent_pod(lab, node)
        if pod["metadata"]["name"] == old or not running_ready(pod):
            return False
        enc = _encryption(lab, node)
        return bool(enc.get("mode") == "none" and enc.get("disabled-by") and enc.get("key-withdrawn"))

    wait_for(restarted, within=60, what=f"{node}'s new agent running without encryption, its key withdrawn")
    others = [n.name for n in lab.driver.spec.nodes if n.name != node]
    wait_for(lambda: all(f"{cluster}/{node}" in _encryption(lab, o).get("plaintext-peers", []) for o in others),
             within=60, what=f"every other node lists {node} as a plaintext peer")


# ---- a. traffic, audit, status, metrics ----

def test_pod_traffic_is_encrypted_across_and_within_clusters(wg: WgLab) -> None:
    c1_node = wg.client_node["c1"]
    for cluster, echo in (("c2", wg.echo["c2"][0]), ("c2", wg.echo["c2"][1]), ("c1", wg.echo_off("c1", c1_node))):
        answer = wait_for(lambda e=echo: _curl(wg, "c1", e["status"]["podIP"]), within=30,  # type: ignore[misc]
                          what=f"an answer from {echo['metadata']['name']}")
        assert (answer["cluster"], answer["pod"]) == (cluster, echo["metadata"]["name"]), answer
    streams = {"c1": [p["status"]["podIP"] for p in wg.echo["c2"]] + [wg.echo_off("c1", c1_node)["status"]["podIP"]],
               "c2": [wg.echo_off("c2", wg.client_node["c2"])["status"]["podIP"]]}
    with _traffic(wg, streams):
        code, audit = _audit(wg)
    assert code == 0, json.dumps(audit, indent=1)[:4000]
    assert audit["verdict"] == "pass" and audit["totals"]["plaintext-pod"] == 0
    assert audit["totals"]["wireguard"] > 0
    src = f"c1/{c1_node}"
    traffic_pairs = [(src, f"c2/{p['spec']['nodeName']}") for p in wg.echo["c2"]]
    c2_node = wg.client_node["c2"]
    traffic_pairs += [(src, f"c1/{wg.echo_off('c1', c1_node)['spec']['nodeName']}"),
                      (f"c2/{c2_node}", f"c2/{wg.echo_off('c2', c2_node)['spec']['nodeName']}")]
    for a, b in traffic_pairs:  # across clusters and within each
        counts = _pair(audit, a, b)["counts"]
        assert counts["wireguard"] > 0 and counts["plaintext-pod"] == 0, (a, b, counts)

    code, status = _enc_status(wg)
    assert code == 0, json.dumps(status, indent=1)[:4000]
    assert status["verdict"] == "pass" and not status["unreachable"]
    nodes = {n["node"]: n for n in status["nodes"]}
    assert set(nodes) == {"c1/c1-n0", "c1/c1-n1", "c2/c2-n0", "c2/c2-n1"}
    keys = {name: n["public-key"] for name, n in nodes.items()}
    for name, n in nodes.items():
        assert (n["mode"], n["implementation"], n["published"], n["key-rotations"]) == ("wireguard", "userspace",
                                                                                      True, 0), n
        assert n["device"] and n["key-age-seconds"] is not None
        assert {p["node"] for p in n["peers"]} == set(nodes) - {name}
        assert all(p["in-sync"] and p["public-key"] == keys[p["node"]] for p in n["peers"]), n["peers"]
        assert n["plaintext-peers"] == []
    for a, b in traffic_pairs:
        for x, y in ((a, b), (b, a)):
            peer = next(p for p in nodes[x]["peers"] if p["node"] == y)
            assert peer["latest-handshake-seconds-ago"] is not None and peer["latest-handshake-seconds-ago"] < 120
            assert peer["rx-bytes"] > 0 and peer["tx-bytes"] > 0, peer


def _metric(text: str, name: str, **labels: str) -> list[float]:
    out = []
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            out.append(float(m.group(2)))
    return out


def test_agent_metrics_show_peers_handshakes_bytes_and_key(wg: WgLab) -> None:
    node = wg.client_node["c1"]
    enc = _encryption(wg, node)
    text = agent_get_raw(agent_socket(wg.driver.spec, node), "/metrics").decode()
    src = {"source_cluster": "c1", "source_node_name": node}
    assert _metric(text, "clustermesh_wireguard_enabled", **src) == [1.0]
    assert _metric(text, "clustermesh_wireguard_peers", **src) == [3.0]
    assert _metric(text, "clustermesh_wireguard_plaintext_peers", **src) == [0.0]
    assert _metric(text, "clustermesh_wireguard_key_rotations_total", **src) == [0.0]
    assert _metric(text, "clustermesh_wireguard_key_age_seconds", **src)[0] > 0
    other = wg.echo["c2"][0]["spec"]["nodeName"]
    peer = next(p for p in enc["peers"] if p["node"] == f"c2/{other}")
    labels = {**src, "peer_node": f"c2/{other}", "peer_public_key": peer["public-key"][:8]}
    assert 0 <= _metric(text, "clustermesh_wireguard_peer_latest_handshake_age_seconds", **labels)[0] < 180
    assert _metric(text, "clustermesh_wireguard_peer_received_bytes_total", **labels)[0] > 0
    assert _metric(text, "clustermesh_wireguard_peer_sent_bytes_total", **labels)[0] > 0
    assert _metric(text, "clustermesh_wireguard_peer_in_sync", **labels) == [1.0]


# ---- d. an agent crash: same key, same device, nothing rewritten ----

def _agent_pid(lab: WgLab, pod: dict[str, Any]) -> int:
    """The agent's own process (not its wireguard-go) in the agent pod's cgroup."""
    cgroup = lab.driver.spec.node_cgroup(lab.driver.spec.node(pod["spec"]["nodeName"])) / pod["metadata"]["uid"]
    for pid in (int(p) for p in (cgroup / "cgroup.procs").read_text().split()):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if any(a.endswith(b"clustermesh-agent") for a in argv):
            return pid
    raise AssertionError(f"no clustermesh-agent process in {cgroup}")


def test_sigkilled_agent_comes_back_with_the_same_key_device_and_no_peer_changes(wg: WgLab) -> None:
    node = wg.client_node["c1"]
    before = wait_for(lambda: _synced_agent(wg, node), within=30, what="agent synced")
    enc0 = before["datapath"]["encryption"]
    pod = _agent_pod(wg, node)
    restarts = pod["status"]["containerStatuses"][0]["restartCount"]
    pid = _agent_pid(wg, pod)
    assert enc0["userspace-pid"] and enc0["userspace-pid"] != pid
    os.kill(pid, signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        p = _agent_pod(wg, node)
        if p["status"]["containerStatuses"][0]["restartCount"] <= restarts or not running_ready(p):
            return None
        doc = _synced_agent(wg, node)
        return doc if doc and doc["local"]["uptime-seconds"] < 60 else None

    after = wait_for(restarted, within=60, what="the agent restarted by the node runtime and synced")
    enc1 = after["datapath"]["encryption"]
    assert enc1["public-key"] == enc0["public-key"] and enc1["key-generated"] is False
    assert enc1["userspace-pid"] == enc0["userspace-pid"], "wireguard-go was restarted"
    assert enc1["device"] == enc0["device"] and enc1["ifindex"] == enc0["ifindex"]
    peers = after["datapath"]["reconcilers"]["wireguard-peers"]
    assert (peers["updates"], peers["deletes"], peers["failures"]) == (0, 0, 0), peers
    assert peers["desired"] == 3
    assert all(p["in-sync"] for p in enc1["peers"])
    assert _curl(wg, "c1", wg.echo["c2"][0]["status"]["podIP"]) is not None
    code, status = _enc_status(wg)  # the user's view agrees
    assert code == 0
    mine = next(n for n in status["nodes"] if n["node"] == f"c1/{node}")
    assert (mine["public-key"], mine["userspace-pid"]) == (enc0["public-key"], enc0["userspace-pid"])


# ---- e. zero-loss key rotation of every node during a cross-cluster stream ----

STREAM_SECONDS = 90.0
UDP_RATE = 200  # datagrams a second and direction
ROTATE_AFTER = 5.0  # seconds after the last stream started (~8 s after the first) before the rotation
ROTATE_TIMEOUT = 60  # `encryption rotate --timeout` (it took 30-45 s with the CLI under load), inside the streams
MAX_TCP_GAP = 0.2

Run = UdpRun | StreamRun


def _endpoint(lab: WgLab, cluster: str, pod: dict[str, Any]) -> LabPod:
    """A pod of the lab as a traffic endpoint (its commands run through ``clustermesh lab exec``)."""
    meta = pod["metadata"]
    return LabPod(lab.driver.name, lab.driver.context(cluster), cluster, meta.get("namespace", "default"),
                  meta["name"], pod["spec"]["nodeName"], meta["labels"].get("app", ""),
                  ipaddress.IPv4Address(pod["status"]["podIP"]))  # fmt: skip


def _cross_paths(lab: WgLab) -> dict[str, tuple[LabPod, LabPod]]:
    """Each cluster's client to an echo pod of the other cluster (source, destination): c1 -> c2
    and c2 -> c1, every node of the lab at one end of a path."""
    clients = {c: _endpoint(lab, c, next(p for p in lab.driver.pods(c, "app=client") if running_ready(p)))
               for c in ("c1", "c2")}  # fmt: skip
    return {"c1->c2": (clients["c1"], _endpoint(lab, "c2", lab.echo_off("c2", lab.client_node["c2"]))),
            "c2->c1": (clients["c2"], _endpoint(lab, "c1", lab.echo_off("c1", lab.client_node["c1"])))}  # fmt: skip


def _start_streams(paths: dict[str, tuple[LabPod, LabPod]], seconds: float, runs: dict[str, Run]) -> None:
    """Start, per path, ``UDP_RATE`` numbered UDP datagrams a second and a paced TCP echo stream (a
    256-byte chunk every 10 ms, pauses over 50 ms recorded), both ``seconds`` long, into ``runs`` as
    they start (the caller collects what started even if a later one fails). One after the other,
    ~2 s each (``lab exec``), from this thread: a pod's command dies with the thread that started it."""
    for name, (src, dst) in paths.items():
        runs[f"udp {name}"] = start_udp_stream(dst, src, seconds=seconds, rate=UDP_RATE)
        runs[f"tcp {name}"] = start_tcp_stream(dst, src, seconds=seconds, chunk_size=256, interval=0.01,
                                               gap_threshold=0.05)  # fmt: skip


def _window(result: UdpResult | StreamResult, seconds: float) -> tuple[float, float]:
    """When a stream was sending (``time.monotonic()``)."""
    if isinstance(result, UdpResult):
        return result.started, result.ended
    return result.started, result.started + seconds


def _summary(results: dict[str, UdpResult | StreamResult]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, r in results.items():
        if isinstance(r, UdpResult):
            out[name] = {"sent": r.sent, "received": r.received, "missing": r.missing,
                         "missing_ranges": r.missing_ranges[:10], "duplicates": r.duplicates, "reordered": r.reordered,
                         "max_gap_ms": round(r.max_gap * 1000, 1), "sender_max_late_ms": round(r.max_late * 1000, 1),
                         "error": r.error}  # fmt: skip
        else:
            out[name] = {"chunks": [r.chunks_sent, r.chunks_received], "bytes": [r.bytes_sent, r.bytes_received],
                         "max_gap_ms": round(r.max_gap * 1000, 1), "gaps": r.gaps[:10], "error": r.error}  # fmt: skip
    return out


def _idle_encryption(lab: WgLab, node: str) -> dict[str, Any] | None:
    """The agent's encryption status once it is synced, has a key and no rotation in progress."""
    doc = _synced_agent(lab, node)
    enc = dict(doc["datapath"]["encryption"]) if doc else {}
    return enc if enc.get("public-key") and not (enc.get("rotation") or {}).get("busy") else None


def _qualified(node: str) -> str:
    """``c1-n0`` or ``c1/c1-n0`` as ``c1/c1-n0`` (the lab's node names begin with their cluster)."""
    return node if "/" in node else f"{node.split('-')[0]}/{node}"


def _announced(doc: Any) -> dict[str, tuple[str, str]]:
    """``encryption rotate --wait -o json`` (``{"passed", "waited", "nodes": [...]}``, each node
    ``cluster/name``) as ``{cluster/node: (public key, next public key)}``; every node rotated."""
    assert doc["passed"] is True and doc["waited"] is True, doc
    assert all(e["rotated"] is True and e["error"] is None for e in doc["nodes"]), doc
    return {e["node"]: (e["public-key"], e["next-public-key"]) for e in doc["nodes"]}


def test_rotating_every_nodes_key_during_a_cross_cluster_stream_loses_nothing(wg: WgLab) -> None:
    nodes = [n.name for n in wg.driver.spec.nodes]
    before = {n: wait_for(lambda n=n: _idle_encryption(wg, n), within=60, what=f"{n} synced, no rotation")  # type: ignore[misc]
              for n in nodes}  # fmt: skip
    paths = _cross_paths(wg)
    runs: dict[str, Run] = {}
    try:
        _start_streams(paths, STREAM_SECONDS, runs)
        time.sleep(ROTATE_AFTER)
        began = time.monotonic()
        out = wg.driver.clustermesh("encryption", "rotate", "--all", *wg.contexts, "--kubeconfig",
                                    str(wg.driver.kubeconfig), "--wait", "--timeout", str(ROTATE_TIMEOUT), "-o",
                                    "json", timeout=ROTATE_TIMEOUT + 30, check=False)  # fmt: skip
        ended = time.monotonic()
        after = {n: _encryption(wg, n) for n in nodes}
    finally:
        results = {name: run.result() for name, run in runs.items()}  # bounded by each stream's budget
    print(f"\nrotation {began - min(r.started for r in results.values()):.1f}s into the streams, took "
          f"{ended - began:.1f}s; traffic: {json.dumps(_summary(results))}")  # fmt: skip

    assert out.returncode == 0, out.stdout + out.stderr
    announced = _announced(json.loads(out.stdout))
    assert set(announced) == {_qualified(n) for n in nodes}, out.stdout
    for n in nodes:
        old, new = announced[_qualified(n)]
        assert old == before[n]["public-key"] and new and new != old, (n, announced)
        enc = after[n]
        assert enc.get("public-key") == new, (n, enc)
        assert enc["key-rotations"] == before[n]["key-rotations"] + 1, (n, enc["key-rotations"])
        assert not enc["rotation"]["busy"], (n, enc["rotation"])

    for name, r in results.items():
        assert r.error is None, (name, r)
        start, end = _window(r, STREAM_SECONDS)
        assert start < began and ended < end, ("the rotation was not inside the stream", name, start, began, ended, end)
        if isinstance(r, UdpResult):
            assert r.sent == r.count and r.missing == 0, (name, r.missing, r.missing_ranges[:10], r.max_gap)
        else:
            assert r.bytes_received == r.bytes_sent > 0 and r.max_gap < MAX_TCP_GAP, (name, r.max_gap, r.gaps)

    code, status = _enc_status(wg)
    since = time.monotonic() - began
    assert code == 0, json.dumps(status, indent=1)[:4000]
    assert status["verdict"] == "pass" and not status["unreachable"]
    by_name = {s["node"]: s for s in status["nodes"]}
    keys = {name: announced[name][1] for name in announced}
    assert {name: s["public-key"] for name, s in by_name.items()} == keys
    for n in nodes:
        s = by_name[_qualified(n)]
        assert s["key-rotations"] == before[n]["key-rotations"] + 1, s
        assert s["key-age-seconds"] is not None and s["key-age-seconds"] < since, (s["key-age-seconds"], since)
        assert all(p["in-sync"] and p["public-key"] == keys[p["node"]] for p in s["peers"]), s["peers"]

    streams = {"c1": [p["status"]["podIP"] for p in wg.echo["c2"]], "c2": [p["status"]["podIP"] for p in wg.echo["c1"]]}
    with _traffic(wg, streams):
        code, audit = _audit(wg)
    assert code == 0 and audit["verdict"] == "pass", json.dumps(audit, indent=1)[:4000]
    assert audit["totals"]["plaintext-pod"] == 0 and audit["totals"]["wireguard"] > 0


# ---- b. per-node migration switch: a node without encryption is a plaintext peer ----

def test_a_node_disabled_by_label_is_a_plaintext_peer_and_the_audit_fails(wg: WgLab) -> None:
    c1_node = wg.client_node["c1"]
    target = wg.echo["c2"][0]
    node = target["spec"]["nodeName"]
    _disable(wg, node)
    annotations = wg.driver.get("c2", "node", node)["metadata"].get("annotations") or {}
    assert "network.cilium.io/wg-pub-key" not in annotations and "network.cilium.io/encryption-key" not in annotations
    code, status = _enc_status(wg)
    assert code == 0, status["problems"]  # plaintext peers are warnings
    nodes = {n["node"]: n for n in status["nodes"]}
    assert (nodes[f"c2/{node}"]["mode"], nodes[f"c2/{node}"]["disabled-by"]) == (
        "none", f"label {LABEL}=disabled")
    for name, n in nodes.items():
        if name != f"c2/{node}":
            assert f"c2/{node}" in n["plaintext-peers"] and f"c2/{node}" not in {p["node"] for p in n["peers"]}, n
    assert wait_for(lambda: _curl(wg, "c1", target["status"]["podIP"]), within=30, what="an answer")["pod"] == (
        target["metadata"]["name"])
    with _traffic(wg, {"c1": [target["status"]["podIP"]]}):
        code, audit = _audit(wg, "5")
    assert code == 1 and audit["verdict"] == "fail", json.dumps(audit, indent=1)[:4000]
    pair = (f"c1/{c1_node}", f"c2/{node}")
    assert any(pair[0] in f and pair[1] in f and "plaintext" in f for f in audit["failures"]), audit["failures"]
    assert _pair(audit, *pair)["counts"]["plaintext-pod"] > 0
    flows = [f for f in audit["plaintext_flows"] if {f["src_node"], f["dst_node"]} == set(pair)]
    assert flows and {f["dst"] for f in flows} & {target["status"]["podIP"]}, audit["plaintext_flows"][:5]


# ---- c. strict mode: traffic to the disabled node is dropped, counted, not leaked ----

def _unencrypted(lab: WgLab, node: str) -> int:
    out = lab.driver.clustermesh("bpf", "dump", "counters", "--node", node, "--pin-root",
                                 str(agent_pin_root(lab.driver.spec)), "-o", "json")
    return sum(int(r["packets"]) for r in json.loads(out.stdout)
               if r["reason"] == "unencrypted" and r["direction"] == "egress")


def test_strict_mode_drops_traffic_to_a_disabled_node_and_counts_it(strict: WgLab) -> None:
    sender = strict.client_node["c1"]
    target = strict.echo_off("c1", sender)  # an echo pod on the other node of c1
    node = target["spec"]["nodeName"]
    ip = target["status"]["podIP"]
    assert wait_for(lambda: _curl(strict, "c1", ip), within=30, what="an answer before")["pod"] == (
        target["metadata"]["name"])
    _disable(strict, node)
    before = _unencrypted(strict, sender)
    assert _curl(strict, "c1", ip, timeout="3") is None, "strict mode let traffic to a node without a key through"
    after = _unencrypted(strict, sender)
    assert after > before, (before, after)
    # encrypted peers still work under strict mode
    assert _curl(strict, "c1", strict.echo["c2"][0]["status"]["podIP"]) is not None
    with _traffic(strict, {"c1": [ip, strict.echo["c2"][0]["status"]["podIP"]]}):
        code, audit = _audit(strict, "5")
    assert _pair(audit, f"c1/{sender}", f"c1/{node}")["counts"]["plaintext-pod"] == 0, audit["pairs"]
    assert code == 0 and audit["totals"]["plaintext-pod"] == 0, audit["failures"]
    assert _unencrypted(strict, sender) > after  # the stream was dropped, counted
