"""Lab benchmark: how long `lab up` takes (2 x 2 and 3 x 3), and pod create -> Running latency.

``python -m benchmarks.lab [--pods N] [--runs R]``. Each figure is the median of R runs with the
spread (min-max) beside it. The in-run baseline for `lab up` is a bare etcd start plus a bare API
emulator start measured in the same run (the floor any lab pays per cluster); for pod latency it is
a pod the API accepts and the scheduler binds (create -> bound), so the node runtime's share shows.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from lab.driver import LabDriver, wait_for
from lab.etcd import EtcdProcess
from lab.supervisor import apiclient
from lab.supervisor.spec import ClusterSpec, LabSpec


def _pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"bench": "lab"}},
            "spec": {"terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": "lab", "command": ["sleep", "600"]}]}}


def _baseline_cluster_floor(tmp: Path) -> float:
    t0 = time.monotonic()
    etcd = EtcdProcess(tmp / f"etcd-{secrets.token_hex(2)}", tls=True)
    etcd.start()
    elapsed = time.monotonic() - t0
    etcd.close()
    return elapsed


def _time_up(clusters: int, nodes: int, tmp: Path) -> float:
    driver = LabDriver("b" + secrets.token_hex(3)[:5], tmp / f"kc-{clusters}x{nodes}")
    t0 = time.monotonic()
    try:
        driver.up(clusters, nodes, "--no-mesh", "--timeout", "300", timeout=360)
        return time.monotonic() - t0
    finally:
        driver.down()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _wait_running(spec: LabSpec, cluster: ClusterSpec, name: str, *, within: float = 30.0) -> tuple[float, float]:
    """Poll the pod until Running: (monotonic time it was first seen bound, time it was Running)."""
    t_bound: float | None = None
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        pod: dict[str, Any] = apiclient.api_get(spec, cluster, f"/api/v1/namespaces/default/pods/{name}")
        now = time.monotonic()
        if t_bound is None and pod["spec"].get("nodeName"):
            t_bound = now
        if (pod.get("status") or {}).get("phase") == "Running":
            return (t_bound or now), now
        time.sleep(0.01)
    raise TimeoutError(f"pod {name} not Running within {within} s")


def _pod_latencies(driver: LabDriver, n: int) -> tuple[list[float], list[float]]:
    """(create -> bound, create -> Running) seconds for ``n`` pods created one after the other."""
    bound, running = [], []
    spec = driver.spec
    c1 = spec.cluster("c1")
    for i in range(n):
        name = f"bench-{time.monotonic_ns()}-{i}"
        t0 = time.monotonic()
        apiclient.api_request(spec, c1, "POST", "/api/v1/namespaces/default/pods", _pod(name))
        t_bound, t_run = _wait_running(spec, c1, name)
        bound.append(t_bound - t0)
        running.append(t_run - t0)
    driver.kubectl("c1", "delete", "pods", "-l", "bench=lab", "--wait=false")
    return bound, running


def main(pods: int = 30, runs: int = 3) -> None:
    print(f"== lab: `lab up` time and pod create -> Running ({runs} runs, medians with min-max)")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        floor = [_baseline_cluster_floor(tmp) for _ in range(runs)]
        print(f"  baseline: one etcd (mTLS) start       {statistics.median(floor):6.2f} s "
              f"({min(floor):.2f}-{max(floor):.2f})")
        for clusters, nodes in ((2, 2), (3, 3)):
            times = [_time_up(clusters, nodes, tmp) for _ in range(runs)]
            med = statistics.median(times)
            spread = f"{min(times):.2f}-{max(times):.2f}"
            print(f"  lab up {clusters} x {nodes}                       {med:6.2f} s ({spread})"
                  f"  = {med / statistics.median(floor):.1f}x the etcd-start baseline")
        driver = LabDriver("b" + secrets.token_hex(3)[:5], tmp / "kc-pods")
        driver.up(1, 2, "--no-mesh", timeout=240)
        try:
            p50b, p99b, p50r, p99r = [], [], [], []
            for _ in range(runs):
                bound, running = _pod_latencies(driver, pods)
                p50b.append(_percentile(bound, 0.5))
                p99b.append(_percentile(bound, 0.99))
                p50r.append(_percentile(running, 0.5))
                p99r.append(_percentile(running, 0.99))
                wait_for(lambda: not driver.pods("c1", "bench=lab"), within=60, what="bench pods gone")
        finally:
            driver.down()
        for label, vals in (("create -> bound (baseline) p50", p50b), ("create -> bound (baseline) p99", p99b),
                            ("create -> Running p50", p50r), ("create -> Running p99", p99r)):
            print(f"  {label:<36} {statistics.median(vals) * 1000:7.0f} ms "
                  f"({min(vals) * 1000:.0f}-{max(vals) * 1000:.0f}), {pods} pods per run")


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m benchmarks.lab", description=__doc__)
    p.add_argument("--pods", type=int, default=30)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    main(a.pods, a.runs)
