"""The product tour (``make demo``, ``clustermesh demo``): from nothing to two meshed lab clusters
with WireGuard, a cross-cluster request, every node's encryption status and a wire audit proving
that pod traffic is encrypted, a global service with local and remote affinity, a policy drop that
the datapath counts, and nothing left behind.

Everything is done with the commands a user types (``clustermesh ...``, ``kubectl ...``), shown
as they run; the tour only reads their output to check what they claim. Its lab (default name
``tour``) is always taken down, also after a failed step, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from lab.mesh import agent_pin_root
from lab.supervisor import control
from lab.supervisor.spec import LabSpec, LabSpecError, load, state_dir, validate_lab_name
from lab.tour.runner import (
    CLI,
    PROJECT,
    CommandResult,
    StepFailed,
    TourInterrupted,
    TourRunner,
    sigterm_as_interrupt,
)

__all__ = ["DEFAULT_NAME", "POLICY_FILE", "REQUESTS", "run_tour", "tour_blockers"]

DEFAULT_NAME: Final = "tour"
REQUESTS: Final = 6  # per affinity: enough that answers from both clusters would show
POLICY_FILE: Final = "lab/examples/policy/echo-deny-c1.yaml"
EXAMPLES: Final = "lab/examples/"
ECHO_PORT: Final = 8080
SERVICE_PORT: Final = 80
GLOBAL: Final = "service.cilium.io/global"
AFFINITY: Final = "service.cilium.io/affinity"
CURL_TIMEOUT: Final = "3"
PROPAGATION: Final = 30.0  # seconds a change may take to reach the other cluster's maps
POLL: Final = 0.5
AUDIT_SECONDS: Final = "5"
TRAFFIC_SECONDS: Final = 15  # the background requests during the audit stop by themselves after this


def tour_blockers(name: str) -> list[str]:
    """Why the tour cannot start here (pure checks of the machine and the lab name)."""
    out = []
    if os.geteuid() != 0:
        out.append("the tour builds a lab: run it as root")
    for tool in ("kubectl", "curl"):
        if shutil.which(tool) is None:
            out.append(f"{tool} is not on PATH (apt-get install {'kubernetes-client' if tool == 'kubectl' else tool})")
    try:
        validate_lab_name(name)
    except LabSpecError as err:
        out.append(str(err))
        return out
    pid = control.supervisor_pid(name)
    if pid is not None:
        out.append(f"a lab named {name!r} is up already (supervisor pid {pid}); the tour builds and removes its "
                   f"own: pick another name (clustermesh demo --name NAME) or remove it (clustermesh lab down "
                   f"--name {name})")
    return out


@dataclass
class _Pod:
    name: str
    ip: str
    node: str


@dataclass
class _Tour:
    name: str
    run: TourRunner
    spec: LabSpec | None = None
    target: _Pod | None = None  # the c2 echo pod every cross-cluster request aims at
    client_node: str = ""  # c1's client pod's node: its agent's socket LB answers the ClusterIP
    cluster_ip: str = ""
    seen: dict[str, Any] = field(default_factory=dict)

    def ctx(self, cluster: str) -> str:
        return f"{self.name}-{cluster}"

    @property
    def pin_root(self) -> str:
        assert self.spec is not None
        return str(agent_pin_root(self.spec))

    # ---- helpers (commands whose output is read) ----

    def get_json(self, cluster: str, *args: str) -> Any:
        out = self.run.check(self.run.kubectl("--context", self.ctx(cluster), "get", *args, "-o", "json", quiet=True),
                             f"reading {' '.join(args)} in {cluster}")
        return json.loads(out.output)

    def pods(self, cluster: str, selector: str) -> list[_Pod]:
        items = self.get_json(cluster, "pods", "-l", selector)["items"]
        return sorted((_Pod(p["metadata"]["name"], (p.get("status") or {}).get("podIP") or "",
                            (p.get("spec") or {}).get("nodeName") or "") for p in items), key=lambda p: p.name)

    def bpf_dump(self, kind: str, node: str) -> list[dict[str, Any]]:
        out = self.run.check(self.run.clustermesh("bpf", "dump", kind, "--node", node, "--pin-root", self.pin_root,
                                                  "-o", "json", quiet=True), f"reading the {kind} map of {node}")
        return list(json.loads(out.output))

    def request(self, cluster: str, url: str, *, quiet: bool = False) -> tuple[CommandResult, dict[str, Any] | None]:
        """``curl`` from ``cluster``'s client pod (``lab exec`` puts it in the pod's namespaces and
        cgroup); the echo server's JSON answer, or None."""
        result = self.run.clustermesh("lab", "exec", "--name", self.name, "--context", self.ctx(cluster), "client",
                                      "--", "curl", "-s", "-m", CURL_TIMEOUT, url, quiet=quiet, timeout=30)
        if not result.ok:
            return result, None
        try:
            answer = json.loads(result.output)
        except ValueError:
            return result, None
        return result, answer if isinstance(answer, dict) else None

    def wait_for(self, what: str, check: Callable[[], Any], *, within: float = PROPAGATION) -> Any:
        deadline = time.monotonic() + within
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise StepFailed(f"{what}: not seen within {within:g}s")
            time.sleep(POLL)

    # ---- the steps ----

    def lab_up(self) -> str:
        self.run.check(self.run.clustermesh("lab", "up", "--name", self.name, "--no-mesh", "--clusters", "2",
                                            "--nodes", "2", "--encryption", "wireguard", "--no-kubeconfig",
                                            timeout=240), "lab up")
        self.spec = load(self.name)
        return (f"clusters c1, c2 with 2 nodes each, WireGuard for the mesh, no mesh yet (contexts "
                f"{self.ctx('c1')}, {self.ctx('c2')})")

    def enable(self, cluster: str) -> str:
        out = self.run.check(self.run.clustermesh("enable", "--context", self.ctx(cluster), "--wait-duration", "3m",
                                                  timeout=240), f"enable {cluster}")
        ready = [line.strip() for line in out.output.splitlines() if line.strip().startswith("ready after")]
        return (ready[-1] if ready else "installed") + " (the lab's install options, picked by enable)"

    def connect(self) -> str:
        out = self.run.check(self.run.clustermesh("connect", "--context", self.ctx("c1"),
                                                  "--destination-context", self.ctx("c2")), "connect")
        added = [line.split(": ")[-1] for line in out.output.splitlines() if "added peer" in line]
        return "cilium-clustermesh Secrets written both ways" + (f" ({'; '.join(added)})" if added else "")

    def status(self, cluster: str) -> str:
        out = self.run.check(self.run.clustermesh("status", "--context", self.ctx(cluster), "--wait",
                                                  "--wait-duration", "2m", timeout=180), f"status {cluster}")
        lines = [line.strip(" ✅") for line in out.output.splitlines() if line.strip()]
        return lines[-1] if lines else "every agent has every remote cluster ready"

    def workload(self) -> str:
        for cluster in ("c1", "c2"):
            self.run.check(self.run.kubectl("--context", self.ctx(cluster), "apply", "-f", EXAMPLES), "apply")
        for cluster in ("c1", "c2"):
            self.run.check(self.run.kubectl("--context", self.ctx(cluster), "wait", "--for=condition=Ready", "pod",
                                            "-l", "app in (echo, client)", "--timeout=90s", timeout=120),
                           f"waiting for the pods of {cluster}")
        echo2 = self.pods("c2", "app=echo")
        clients = self.pods("c1", "app=client")
        if len(echo2) < 2 or not all(p.ip for p in echo2) or not clients:
            raise StepFailed(f"expected 2 echo pods with IPs in c2 and a client in c1, got {echo2} / {clients}")
        self.target, self.client_node = echo2[0], clients[0].node
        service = self.get_json("c1", "service", "echo")
        self.cluster_ip = str(service["spec"]["clusterIP"])
        return f"echo (2 replicas) + client Ready in c1 and c2; c1's echo Service is {self.cluster_ip}:{SERVICE_PORT}"

    def pod_ip(self) -> str:
        assert self.target is not None
        url = f"http://{self.target.ip}:{ECHO_PORT}/"
        deadline = time.monotonic() + PROPAGATION
        while True:
            result, answer = self.request("c1", url)
            if answer is not None:
                break
            if time.monotonic() >= deadline:
                raise StepFailed(f"no answer from {url} within {PROPAGATION:g}s (curl exit {result.returncode})")
            self.run.say("no answer yet (the pod's IP may not have reached c1's maps): retrying")
            time.sleep(1)
        if answer.get("cluster") != "c2" or answer.get("pod") != self.target.name:
            raise StepFailed(f"{url} was answered by {answer.get('cluster')}/{answer.get('pod')}, "
                             f"not c2/{self.target.name}")
        return (f"c1's client ({answer.get('client')}) -> {self.target.ip}: answered by c2/{self.target.name} "
                f"on {answer.get('node')}")

    def contexts(self) -> list[str]:
        return ["--context", self.ctx("c1"), "--context", self.ctx("c2")]

    def encryption_status(self) -> str:
        def in_sync() -> CommandResult | None:
            result = self.run.clustermesh("encryption", "status", *self.contexts(), "-o", "json", quiet=True,
                                          timeout=60)
            doc = json.loads(result.output) if result.output.strip().startswith("{") else {}
            totals = doc.get("totals") or {}
            # every node runs WireGuard and peers with the 3 others (the last keys may still be arriving)
            return result if result.ok and totals.get("wireguard") == 4 and totals.get("peers-in-sync") == 12 \
                else None

        self.wait_for("every node with WireGuard and 3 peers in sync", in_sync)
        out = self.run.check(self.run.clustermesh("encryption", "status", *self.contexts(), timeout=60),
                             "encryption status")
        lines = [line for line in out.output.splitlines() if line.startswith("OK:")]
        return lines[-1].removeprefix("OK: ") if lines else "every node's peers in sync"

    def _traffic(self) -> subprocess.Popen[str]:
        """Requests from c1's client to the c2 echo pod in the background (bounded in time)."""
        assert self.target is not None
        script = (f"for i in $(seq 1 {TRAFFIC_SECONDS * 5}); do curl -s -m 1 -o /dev/null "
                  f"http://{self.target.ip}:{ECHO_PORT}/; sleep 0.2; done")
        argv = ["lab", "exec", "--name", self.name, "--context", self.ctx("c1"), "client", "--", "timeout",
                str(TRAFFIC_SECONDS), "sh", "-c", script]
        self.run.say(f"in the background: clustermesh {' '.join(argv[:7])} -- curl http://{self.target.ip}:"
                     f"{ECHO_PORT}/ (5 requests a second)")
        return subprocess.Popen([*CLI, *argv], cwd=PROJECT, env={**os.environ, **self.run.env},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)

    def encryption_audit(self) -> str:
        traffic = self._traffic()
        try:
            time.sleep(1.0)  # the requests are flowing when the capture starts
            out = self.run.check(self.run.clustermesh("encryption", "audit", *self.contexts(), "--duration",
                                                      AUDIT_SECONDS, timeout=90), "encryption audit")
        finally:
            traffic.terminate()
            try:
                traffic.wait(10)
            except subprocess.TimeoutExpired:
                traffic.kill()
                traffic.wait()
        header, *rows = [line.split() for line in out.output.splitlines() if "<->" in line or
                         line.startswith("NODE-PAIR")] or [[]]
        if not header:
            raise StepFailed("the audit printed no node pairs")
        wireguard = sum(int(r[header.index("WIREGUARD") + 2]) for r in rows)  # "a <-> b" is 3 fields
        if not wireguard:
            raise StepFailed("the audit saw no WireGuard packet while c1's client sent requests to c2")
        verdict = next((line for line in out.output.splitlines() if line.startswith("PASS:")), "PASS")
        return f"{wireguard} WireGuard packets between nodes; {verdict}"

    def _service_entry(self, affinity: str) -> dict[str, Any] | None:
        frontend = f"{self.cluster_ip}:{SERVICE_PORT}"
        for row in self.bpf_dump("services", self.client_node):
            clusters = {b.get("cluster-id") for b in row.get("backends") or []}
            if row.get("frontend") == frontend and row.get("affinity") == affinity and clusters >= {1, 2}:
                return row
        return None

    def _affinity(self, affinity: str, expect: str) -> str:
        self.run.check(self.run.kubectl("--context", self.ctx("c1"), "annotate", "service", "echo",
                                        f"{AFFINITY}={affinity}", "--overwrite"), "annotate")
        row = self.wait_for(f"{self.cluster_ip}:{SERVICE_PORT} with affinity {affinity} and backends of c1 and c2 in "
                            f"the services map of {self.client_node}", lambda: self._service_entry(affinity))
        backends = ", ".join(f"{b['address']}:{b['port']} (c{b['cluster-id']}{', local' if b.get('local') else ''})"
                             for b in row["backends"])
        self.run.say(f"services map of {self.client_node}: {row['frontend']} affinity {row['affinity']} -> {backends}")
        answers: Counter[tuple[str, str]] = Counter()
        for _ in range(REQUESTS):
            result, answer = self.request("c1", f"http://{self.cluster_ip}:{SERVICE_PORT}/")
            if answer is None:
                raise StepFailed(f"no answer from the ClusterIP (curl exit {result.returncode})")
            answers[(str(answer.get("cluster")), str(answer.get("pod")))] += 1
        wrong = {k: n for k, n in answers.items() if k[0] != expect}
        if wrong:
            raise StepFailed(f"affinity {affinity}: answers from {dict(answers)}, expected only {expect}")
        pods = sorted({pod for _, pod in answers})
        return (f"{sum(answers.values())}/{REQUESTS} requests to {self.cluster_ip} answered by {expect} "
                f"({', '.join(pods)}); the map holds {len(row['backends'])} backends of c1 and c2")

    def global_local(self) -> str:
        for cluster in ("c1", "c2"):
            self.run.check(self.run.kubectl("--context", self.ctx(cluster), "annotate", "service", "echo",
                                            f"{GLOBAL}=true", "--overwrite"), "annotate")
        return self._affinity("local", "c1")

    def global_remote(self) -> str:
        return self._affinity("remote", "c2")

    def _denied(self, node: str) -> int:
        rows = self.bpf_dump("counters", node)
        return sum(int(r["packets"]) for r in rows if r["reason"] == "policy_denied" and r["direction"] == "ingress")

    def policy(self) -> str:
        assert self.target is not None
        node = self.target.node
        self.run.check(self.run.kubectl("--context", self.ctx("c2"), "apply", "-f", POLICY_FILE), "apply the policy")

        def enforced() -> list[dict[str, Any]]:
            return [r for r in self.bpf_dump("policy", node) if r["verdict"] == "deny" and r["enforced"]]

        self.wait_for(f"deny entries for c1's identities in the policy map of {node}", enforced)
        before = self._denied(node)
        url = f"http://{self.target.ip}:{ECHO_PORT}/"
        result, answer = self.request("c1", url)
        if answer is not None or result.ok:
            raise StepFailed(f"c1's client still got an answer from {url}: {result.output.strip()[:200]}")
        why = ": timed out" if result.returncode == 28 else ""
        self.run.say(f"c1's client got no answer (curl exit {result.returncode}{why})")
        _, answer2 = self.request("c2", url)
        if answer2 is None or answer2.get("cluster") != "c2":
            raise StepFailed(f"c2's own client got no answer from {url}: the policy should drop only c1")
        self.run.say("c2's client is still answered: only cluster c1 is denied")
        after = self._denied(node)
        for kind in ("counters", "policy"):  # as a user would look: the tables
            self.run.clustermesh("bpf", "dump", kind, "--node", node, "--pin-root", self.pin_root)
        hits = [r for r in self.bpf_dump("policy", node) if r["verdict"] == "deny" and r["packets"]]
        if after <= before:
            raise StepFailed(f"the policy_denied counter of {node} did not grow ({before} -> {after})")
        identities = ", ".join(f"{r['identity']} ({r['packets']} packets)" for r in hits)
        return (f"c1's client dropped, c2's answered; {node}: policy_denied ingress {before} -> {after} packets"
                + (f", deny entries hit: identity {identities}" if identities else ""))

    def lab_down(self) -> str:
        out = self.run.check(self.run.clustermesh("lab", "down", "--name", self.name, timeout=180, new_session=True),
                             "lab down")
        if state_dir(self.name).exists():
            raise StepFailed(f"{state_dir(self.name)} is still there after lab down")
        return out.output.strip().splitlines()[-1] if out.output.strip() else "removed"


def run_tour(name: str = DEFAULT_NAME, *, runner: TourRunner | None = None) -> int:
    """Run the tour with a lab called ``name``; 0 if every step passed, 1 if one failed, 130 if
    interrupted, 2 if it could not start (the lab name is taken, no root, a missing tool)."""
    blockers = tour_blockers(name)
    run = runner or TourRunner()
    if blockers:
        for line in blockers:
            run.console.print(f"[red]cannot start the tour: {line}[/red]", soft_wrap=True)
        return 2
    run.env = {**run.env, "KUBECONFIG": str(state_dir(name) / "kubeconfig")}
    tour = _Tour(name, run)
    run.console.print(f"[bold]The clustermesh tour[/bold]: lab {name!r}, two clusters of two nodes, from nothing "
                      f"(commands run from {PROJECT}, KUBECONFIG={run.env['KUBECONFIG']})", soft_wrap=True)
    steps: list[tuple[str, Callable[[], str]]] = [
        ("lab up --no-mesh (2 clusters x 2 nodes)", tour.lab_up),
        ("clustermesh enable c1", lambda: tour.enable("c1")),
        ("clustermesh enable c2", lambda: tour.enable("c2")),
        ("clustermesh connect c1 <-> c2", tour.connect),
        ("clustermesh status --wait c1", lambda: tour.status("c1")),
        ("clustermesh status --wait c2", lambda: tour.status("c2")),
        ("echo workload in both clusters", tour.workload),
        ("c1 -> a c2 pod by pod IP", tour.pod_ip),
        ("clustermesh encryption status", tour.encryption_status),
        ("clustermesh encryption audit --duration 5", tour.encryption_audit),
        ("global service, affinity local", tour.global_local),
        ("global service, affinity remote", tour.global_remote),
        ("policy in c2 drops c1's client", tour.policy),
    ]
    with sigterm_as_interrupt():
        try:
            for title, body in steps:
                run.step(title, body)
        except (KeyboardInterrupt, TourInterrupted):  # between two steps
            run.interrupted = run.failed = True
        finally:
            run.finally_step("lab down", tour.lab_down)
    run.summary(f"clustermesh tour (lab {name!r})")
    if run.interrupted:
        return 130
    return 1 if run.failed else 0
