"""Test helpers for the controllers: object builders, a simulated node runtime, a restartable API server.

:class:`FakeKubelet` plays every node's runtime against the real emulator's store: a pod bound to a node
it serves gets ``phase: Running``, an IP from that node's podCIDR and ``Ready=True`` (unless
``ready(pod)`` says otherwise), and a terminating pod is deleted with grace 0, as ``lab.node`` will do.
It polls (there is nothing to wait on in another thread's store) and stops when cancelled.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import urllib.request
from collections.abc import Callable
from typing import Any

from lab.kube.api import ApiError, K8sApiServer, ObjectStore
from lab.kube.controllers.actions import PODS, Delete, Patch
from lab.kube.controllers.client import KubeClient
from meshcore.errors import K8sError

Obj = dict[str, Any]


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node(name: str, labels: dict[str, str] | None = None, *, ready: bool = True, unschedulable: bool = False,
         taints: list[Obj] | None = None) -> Obj:
    spec: Obj = {}
    if unschedulable:
        spec["unschedulable"] = True
    if taints:
        spec["taints"] = taints
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels or {}}, "spec": spec,
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                       "reason": "KubeletReady" if ready else "KubeletNotReady"}]}}


def pod_template(labels: dict[str, str], *, image: str = "echo:1", node_selector: dict[str, str] | None = None,
                 ports: list[Obj] | None = None) -> Obj:
    container: Obj = {"name": "app", "image": image}
    if ports:
        container["ports"] = ports
    spec: Obj = {"containers": [container], "terminationGracePeriodSeconds": 5}
    if node_selector:
        spec["nodeSelector"] = node_selector
    return {"metadata": {"labels": labels}, "spec": spec}


def deployment(name: str, replicas: int, template: Obj, *, strategy: Obj | None = None, ns: str = "default") -> Obj:
    spec: Obj = {"replicas": replicas, "selector": {"matchLabels": template["metadata"]["labels"]},
                 "template": template}
    if strategy:
        spec["strategy"] = strategy
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def daemonset(name: str, template: Obj, *, ns: str = "default") -> Obj:
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"matchLabels": template["metadata"]["labels"]}, "template": template}}


def service(name: str, selector: dict[str, str], ports: list[Obj], *, ns: str = "default") -> Obj:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": selector, "ports": ports}}


class FakeKubelet:
    """A node runtime for every node in ``nodes`` (all nodes when None); see the module docstring."""

    def __init__(self, store: ObjectStore | None, *, nodes: set[str] | None = None,
                 ready: Callable[[Obj], bool] = lambda pod: True, interval: float = 0.05) -> None:
        self.store = store
        self.nodes = nodes
        self.ready = ready
        self.interval = interval
        self.started: dict[str, str] = {}  # pod uid -> ip
        self._next: dict[str, int] = {}

    def _ip(self, node_name: str) -> str:
        index = int(node_name.rsplit("n", 1)[-1]) if node_name.rsplit("n", 1)[-1].isdigit() else 99
        n = self._next.get(node_name, 1) + 1
        self._next[node_name] = n
        return f"10.1.{index}.{n}"

    def plan(self, pods: list[Obj]) -> list[tuple[Obj, Obj | None]]:
        """``(pod, status patch)`` for pods to update, ``(pod, None)`` for terminating pods to delete."""
        out: list[tuple[Obj, Obj | None]] = []
        for pod in pods:
            md, spec, st = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
            node_name = spec.get("nodeName")
            if not node_name or (self.nodes is not None and node_name not in self.nodes):
                continue
            if md.get("deletionTimestamp"):
                out.append((pod, None))
                continue
            ip = self.started.get(md["uid"]) or self._ip(node_name)
            self.started[md["uid"]] = ip
            ready = "True" if self.ready(pod) else "False"
            current = {c.get("type"): c.get("status") for c in st.get("conditions") or []}
            if st.get("phase") == "Running" and current.get("Ready") == ready and st.get("podIP") == ip:
                continue
            stamp = now_rfc3339()
            conditions = [c for c in st.get("conditions") or [] if c.get("type") not in ("Ready", "Initialized",
                                                                                        "ContainersReady")]
            conditions += [{"type": "Initialized", "status": "True", "lastTransitionTime": stamp},
                           {"type": "Ready", "status": ready, "lastTransitionTime": stamp},
                           {"type": "ContainersReady", "status": ready, "lastTransitionTime": stamp}]
            out.append((pod, {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                                         "hostIP": "192.168.1.1", "conditions": conditions}}))
        return out

    def step(self) -> None:
        """One pass over all pods, writing through the store."""
        assert self.store is not None
        pods, _ = self.store.list("pods")
        for pod, patch in self.plan(pods):
            md = pod["metadata"]
            try:
                if patch is None:
                    self.store.delete("pods", md["name"], md["namespace"], grace_period_seconds=0)
                else:
                    self.store.patch("pods", md["name"], patch, namespace=md["namespace"], subresource="status")
            except ApiError as err:
                if err.code not in (404, 409):
                    raise

    async def run(self) -> None:
        while True:
            self.step()
            await asyncio.sleep(self.interval)


class ApiKubelet(FakeKubelet):
    """The same node runtime writing through the API (for an API server in another process); API errors
    (the server being restarted) are skipped and retried on the next pass."""

    def __init__(self, client: KubeClient, **kwargs: Any) -> None:
        super().__init__(None, **kwargs)
        self.client = client

    async def run(self) -> None:
        while True:
            try:
                items, _ = await self.client.reader.list("/api/v1/pods")
                for pod, patch in self.plan(items):
                    md = pod["metadata"]
                    if patch is None:
                        await self.client.apply(Delete(PODS, md["namespace"], md["name"], grace_seconds=0))
                    else:
                        await self.client.apply(Patch(PODS, md["namespace"], md["name"], patch, subresource="status"))
            except K8sError:
                pass
            await asyncio.sleep(self.interval)


class RestartableApi:
    """A K8sApiServer in a thread that can be stopped and started again on the same store and port."""

    def __init__(self, *, bookmark_interval: float = 0.2) -> None:
        self.bookmark_interval = bookmark_interval
        self.server = K8sApiServer(bookmark_interval=bookmark_interval).start_in_thread()
        self.store = self.server.store
        self.port = self.server.port
        self.running = True

    def stop(self) -> None:
        self.server.stop_thread()
        self.running = False

    def start(self) -> None:
        self.server = K8sApiServer(self.store, port=self.port, bookmark_interval=self.bookmark_interval)
        self.server.start_in_thread()
        self.running = True

    def close(self) -> None:
        if self.running:
            self.stop()

    def http_delete(self, path: str) -> Obj:
        """DELETE through HTTP, as kubectl does (a bound pod is then deleted gracefully)."""
        req = urllib.request.Request(f"{self.server.url}{path}", method="DELETE")
        with urllib.request.urlopen(req, timeout=10) as answer:
            result: Obj = json.loads(answer.read())
        return result

    def delete_pod(self, name: str, ns: str = "default") -> Obj:
        return self.http_delete(f"/api/v1/namespaces/{ns}/pods/{name}")


def pods_of(store: ObjectStore, prefix: str, *, ns: str = "default", active: bool = True) -> list[Obj]:
    """Pods whose name starts with ``prefix`` (only non-terminating ones if ``active``)."""
    pods, _ = store.list("pods", ns)
    return [p for p in pods if p["metadata"]["name"].startswith(prefix)
            and not (active and p["metadata"].get("deletionTimestamp"))]
