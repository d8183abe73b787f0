"""Mesh propagation benchmark (issue 9): a pod created in c2 (Kubernetes API) until its IP is in
the ipcache map of a node of c1.

``python -m benchmarks.mesh_propagation [--pods 200] [--runs 3] [--batch 5]``, on a lab of 2 x 2
nodes with the mesh (``clustermesh lab up``: enable, connect, the agents with their eBPF
datapath). Each run creates ``--pods`` pods in c2, ``--batch`` at a time (a POST each, straight to
the cluster's API: no kubectl start-up in the figures), and for each pod records:

- the create call (just before its POST);
- the in-run baseline, the lab's own share: the first watch event of c2's API that shows the pod
  with an IP (scheduler, node runtime, status update), from a watch opened before the run;
- the end-to-end figure: its ``/32`` entry in the pinned ipcache map of c1's node ``c1-n0``,
  polled every millisecond by point lookups in the LPM trie (an entry of a pod has a
  non-reserved identity; a miss falls back on the node's pod CIDR entry, identity ``world``).

Between them is the mesh's share (c2's clustermesh-apiserver exporting the IP into its etcd, c1's
agent watching it, validating it and writing the map). Every figure is the median over the runs
with the spread (min-max) beside it; the pods are deleted (and their IPs gone from the map)
before the next run. Needs root and bpffs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import secrets
import socket
import ssl
import statistics
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bpf.layouts import MAP_SPECS, IPCacheKey, IPCacheValue, ipcache_key
from bpf.maps import PinnedMap, node_pin_dir, open_or_create
from lab.driver import LabDriver, wait_for
from lab.mesh import agent_pin_root
from lab.prereqs import datapath_unavailable
from lab.supervisor import apiclient
from lab.supervisor.spec import ClusterSpec, LabSpec

__all__ = ["Sample", "main", "percentile"]

SOURCE: Final = "c2"
READER_NODE: Final = "c1-n0"
RESERVED_IDENTITIES: Final = 256  # Cilium's reserved identities are below this
PER_POD_DEADLINE: Final = 30.0
POLL: Final = 0.001


@dataclass
class Sample:
    """One pod: monotonic times of its create call, its IP in c2's API, its entry in c1's ipcache."""

    name: str
    created: float
    ip: str = ""
    ip_seen: float | None = None
    in_ipcache: float | None = None


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _pod(name: str, run: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"bench": "mesh-propagation", "run": run}},
            "spec": {"terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": "lab", "command": ["sleep", "900"]}]}}


@dataclass
class _IPWatch:
    """A watch on c2's pods of one run, in a thread: the first time each pod is seen with an IP."""

    spec: LabSpec
    cluster: ClusterSpec
    selector: str
    seen: dict[str, tuple[str, float]] = field(default_factory=dict)
    error: str = ""
    _conn: http.client.HTTPSConnection | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: bool = False

    def start(self) -> None:
        listed = apiclient.api_get(self.spec, self.cluster, "/api/v1/namespaces/default/pods?labelSelector="
                                   + urllib.parse.quote(self.selector))
        rv = listed["metadata"]["resourceVersion"]
        ctx = ssl.create_default_context(cafile=str(apiclient.api_ca_file(self.spec, self.cluster)))
        self._conn = http.client.HTTPSConnection("127.0.0.1", self.cluster.api_port, context=ctx, timeout=900)
        query = urllib.parse.urlencode({"watch": "1", "labelSelector": self.selector, "resourceVersion": rv,
                                        "timeoutSeconds": "900"})
        self._conn.request("GET", f"/api/v1/namespaces/default/pods?{query}", headers={"Authorization": "Bearer lab"})
        resp = self._conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"watch of {self.selector} answered {resp.status}: {resp.read()[:200]!r}")
        self._thread = threading.Thread(target=self._read, args=(resp,), name="ip-watch", daemon=True)
        self._thread.start()

    def _read(self, resp: http.client.HTTPResponse) -> None:
        try:
            for line in resp:
                now = time.monotonic()
                event = json.loads(line)
                obj = event.get("object") or {}
                ip = (obj.get("status") or {}).get("podIP")
                name = (obj.get("metadata") or {}).get("name")
                if ip and name:
                    with self._lock:
                        self.seen.setdefault(name, (ip, now))
        except Exception as err:  # noqa: BLE001 - also what stop() causes: the reader must end, not raise
            if not self._stopping:
                self.error = str(err) or type(err).__name__

    def get(self, name: str) -> tuple[str, float] | None:
        with self._lock:
            return self.seen.get(name)

    def stop(self) -> None:
        self._stopping = True
        if self._conn is not None and self._conn.sock is not None:
            try:
                self._conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._conn.close()
        if self._thread is not None:
            self._thread.join(10)


def _has_pod_entry(ipcache: PinnedMap[IPCacheKey, IPCacheValue], ip: str) -> bool:
    value = ipcache.get(ipcache_key(f"{ip}/32"))
    return value is not None and value.sec_identity >= RESERVED_IDENTITIES


@contextmanager
def _ipcache(spec: LabSpec, node: str) -> Iterator[PinnedMap[IPCacheKey, IPCacheValue]]:
    directory = node_pin_dir(node, agent_pin_root(spec))
    if not (directory / "ipcache").exists():
        raise RuntimeError(f"no pinned ipcache under {directory}: is the agent of {node} running with its datapath?")
    handle = open_or_create(MAP_SPECS["ipcache"], directory, IPCacheKey, IPCacheValue)
    try:
        yield handle
    finally:
        handle.close()


def _one_run(driver: LabDriver, ipcache: PinnedMap[IPCacheKey, IPCacheValue], pods: int, batch: int,
             run: str) -> list[Sample]:
    spec = driver.spec
    c2 = spec.cluster(SOURCE)
    watch = _IPWatch(spec, c2, f"bench=mesh-propagation,run={run}")
    watch.start()
    samples: list[Sample] = []
    try:
        for first in range(0, pods, batch):
            group = []
            for i in range(first, min(pods, first + batch)):
                sample = Sample(f"prop-{run}-{i:04d}", time.monotonic())
                apiclient.api_request(spec, c2, "POST", "/api/v1/namespaces/default/pods", _pod(sample.name, run))
                group.append(sample)
            deadline = time.monotonic() + PER_POD_DEADLINE
            pending = list(group)
            while pending:
                now = time.monotonic()
                for sample in list(pending):
                    if sample.ip_seen is None:
                        got = watch.get(sample.name)
                        if got is None:
                            continue
                        sample.ip, sample.ip_seen = got
                    if _has_pod_entry(ipcache, sample.ip):
                        sample.in_ipcache = now
                        pending.remove(sample)
                if now > deadline:
                    raise TimeoutError(f"pods {[s.name for s in pending]} not in the ipcache of {READER_NODE} within "
                                       f"{PER_POD_DEADLINE:g}s (watch error: {watch.error or 'none'})")
                time.sleep(POLL)
            samples += group
    finally:
        watch.stop()
    return samples


def _clean(driver: LabDriver, ipcache: PinnedMap[IPCacheKey, IPCacheValue], samples: list[Sample]) -> None:
    driver.kubectl(SOURCE, "delete", "pods", "-l", "bench=mesh-propagation", "--wait=false", timeout=120)
    wait_for(lambda: not driver.pods(SOURCE, "bench=mesh-propagation"), within=180, interval=1.0,
             what="benchmark pods gone")
    wait_for(lambda: not any(_has_pod_entry(ipcache, s.ip) for s in samples if s.ip), within=60, interval=0.5,
             what=f"benchmark pod IPs gone from the ipcache of {READER_NODE}")


def _row(label: str, per_run: list[tuple[float, float]], note: str = "") -> str:
    p50 = [p for p, _ in per_run]
    p99 = [p for _, p in per_run]
    return (f"  {label:<50} p50 {statistics.median(p50) * 1000:6.0f} ms ({min(p50) * 1000:.0f}-{max(p50) * 1000:.0f})"
            f"   p99 {statistics.median(p99) * 1000:6.0f} ms ({min(p99) * 1000:.0f}-{max(p99) * 1000:.0f}){note}")


def main(pods: int = 200, runs: int = 3, batch: int = 5) -> None:
    print(f"== mesh propagation: pod created in {SOURCE} (Kubernetes API) -> its IP in the ipcache map of "
          f"{READER_NODE} ({pods} pods per run in batches of {batch}, {runs} runs; medians with min-max)")
    why = datapath_unavailable()
    if why is not None:
        print(f"  skipped: {why}")
        return
    with tempfile.TemporaryDirectory() as d:
        driver = LabDriver("p" + secrets.token_hex(3)[:5], Path(d) / "kubeconfig")
        try:
            driver.up(2, 2, timeout=360)
            base: list[tuple[float, float]] = []
            e2e: list[tuple[float, float]] = []
            mesh: list[tuple[float, float]] = []
            with _ipcache(driver.spec, READER_NODE) as ipcache:
                for r in range(runs):
                    samples = _one_run(driver, ipcache, pods, batch, f"r{r}")
                    ip_times = [s.ip_seen - s.created for s in samples if s.ip_seen is not None]
                    ends = [s.in_ipcache - s.created for s in samples if s.in_ipcache is not None]
                    shares = [s.in_ipcache - s.ip_seen for s in samples
                              if s.in_ipcache is not None and s.ip_seen is not None]
                    for into, values in ((base, ip_times), (e2e, ends), (mesh, shares)):
                        into.append((percentile(values, 0.5), percentile(values, 0.99)))
                    _clean(driver, ipcache, samples)
        finally:
            driver.down()
    print(_row(f"baseline: create -> pod IP in {SOURCE}'s API (the lab)", base))
    print(_row(f"end to end: create -> in {READER_NODE}'s ipcache", e2e, f"   ({pods * runs} changes)"))
    print(_row(f"the mesh's share: pod IP -> {READER_NODE}'s ipcache", mesh,
               f"   = {statistics.median(p for p, _ in mesh) / statistics.median(p for p, _ in e2e):.0%} of the p50"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mesh_propagation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=200, help="pods per run (default 200)")
    parser.add_argument("--runs", type=int, default=3, help="runs (default 3)")
    parser.add_argument("--batch", type=int, default=5, help="pods created together (default 5)")
    args = parser.parse_args()
    if args.pods < 1 or args.runs < 1 or args.batch < 1:
        parser.error("--pods, --runs and --batch must be at least 1")
    main(args.pods, args.runs, args.batch)
