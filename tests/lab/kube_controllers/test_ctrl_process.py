"""The real ``python -m lab.kube.controllers`` process, driven with the real ``kubectl``.

``kubectl apply -f`` a Deployment and a Service, ``kubectl rollout status`` until rolled out, an API server
restart (same store and port) under the running process, ``kubectl scale`` and ``kubectl set image`` after
it, ``kubectl delete`` with garbage collection, and SIGTERM ending the process promptly and cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from lab.etcd import EtcdProcess
from lab.kube.controllers.actions import DEPLOYMENTS, NODES, Create, Patch
from lab.kube.controllers.client import KubeClient
from lab.wait import poll_until
from meshcore.errors import K8sError
from tests.lab.kube_api.apiproc import ApiProcess
from tests.lab.kube_controllers.cluster import (
    ApiKubelet,
    FakeKubelet,
    RestartableApi,
    deployment,
    node,
    pod_template,
    pods_of,
)
from tests.lab.kube_controllers.conftest import running

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[3]
KUBECTL = shutil.which("kubectl")
WITHIN = 60.0

MANIFEST = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      nodeSelector: {zone: a}
      terminationGracePeriodSeconds: 5
      containers:
      - name: app
        image: echo:1
        ports:
        - {name: http, containerPort: 8080}
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
"""


class Kubectl:
    def __init__(self, kubeconfig: Path, cache: Path) -> None:
        assert KUBECTL is not None
        self.base = [KUBECTL, "--kubeconfig", str(kubeconfig), "--cache-dir", str(cache)]

    async def __call__(self, *args: str, stdin: str | None = None) -> str:
        """Run kubectl without blocking the event loop (the simulated kubelet runs on it)."""
        proc = await asyncio.create_subprocess_exec(
            *self.base, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), 90)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"kubectl {' '.join(args)} timed out") from None
        if proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {err.decode()}")
        return out.decode()


@contextlib.asynccontextmanager
async def controller_process(kubeconfig: Path, log_file: Path, *context: str
                             ) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lab.kube.controllers", "--kubeconfig", str(kubeconfig), *context,
        "--cluster-name", "c1", "--log-file", str(log_file), "--resync-period", "2",
        cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
async def test_controller_process_with_kubectl(api: RestartableApi, kubeconfig: Path, tmp_path: Path) -> None:
    for name, zone in (("n0", "a"), ("n1", "a"), ("n2", "b")):
        api.store.create(node(name, {"zone": zone}))
    kubectl = Kubectl(kubeconfig, tmp_path / "kcache")
    log_file = tmp_path / "controllers.log"
    async with (controller_process(kubeconfig, log_file, "--context", "lab-c1") as proc,
                running(FakeKubelet(api.store).run())):
        await kubectl("apply", "-f", "-", stdin=MANIFEST)
        out = await kubectl("rollout", "status", "deployment/web", "--timeout=60s")
        assert 'deployment "web" successfully rolled out' in out
        assert {p["spec"]["nodeName"] for p in pods_of(api.store, "web-")} == {"n0", "n1"}

        def endpoint_count() -> int:
            slices, _ = api.store.list("endpointslices", "default", label_selector="kubernetes.io/service-name=web")
            return sum(len(s.get("endpoints") or []) for s in slices)

        assert await poll_until(lambda: endpoint_count() == 2, within=WITHIN)

        api.stop()
        await asyncio.sleep(1.0)  # the process sees its watches end and its reconnects refused
        api.start()
        await kubectl("scale", "deployment/web", "--replicas=3")
        out = await kubectl("rollout", "status", "deployment/web", "--timeout=60s")
        assert 'deployment "web" successfully rolled out' in out
        assert len(pods_of(api.store, "web-")) == 3
        assert await poll_until(lambda: endpoint_count() == 3, within=WITHIN)

        await kubectl("set", "image", "deployment/web", "app=echo:2")
        out = await kubectl("rollout", "status", "deployment/web", "--timeout=60s")
        assert 'deployment "web" successfully rolled out' in out
        images = {p["spec"]["containers"][0]["image"] for p in pods_of(api.store, "web-", active=False)}
        assert await poll_until(lambda: {p["spec"]["containers"][0]["image"] for p in pods_of(
            api.store, "web-", active=False)} == {"echo:2"}, within=WITHIN), images
        out = await kubectl("get", "replicasets", "-o", "name")
        assert len(out.split()) == 2  # the old ReplicaSet stays, scaled to 0

        await kubectl("rollout", "undo", "deployment/web")  # back to revision 1's template, as revision 3
        out = await kubectl("rollout", "status", "deployment/web", "--timeout=60s")
        assert 'deployment "web" successfully rolled out' in out
        assert await poll_until(lambda: {p["spec"]["containers"][0]["image"] for p in pods_of(
            api.store, "web-", active=False)} == {"echo:1"}, within=WITHIN)
        out = await kubectl("get", "deployment", "web", "-o",
                            "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}")
        assert out == "3"
        assert len((await kubectl("get", "replicasets", "-o", "name")).split()) == 2

        await kubectl("delete", "deployment", "web")
        assert await poll_until(lambda: api.store.list("replicasets", "default")[0] == [] and pods_of(
            api.store, "web-", active=False) == [], within=WITHIN)

        assert proc.returncode is None  # it carried on through the restart
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 15)  # generous; it takes about a second
        assert rc == 0
    log = log_file.read_text()
    assert "pod bound" in log and "cluster=c1" in log and "stopped by signal" in log
    assert "Traceback" not in log


async def until_ok(call: Callable[[], Awaitable[T]], within: float = 30.0) -> T:
    """Retry an API call while the API server is coming back."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await call()
        except K8sError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_controllers_carry_on_after_the_api_process_is_sigkilled(etcd_tls: EtcdProcess, tmp_path: Path
                                                                       ) -> None:
    """The lab's real stack: etcd, the API emulator process on it, the controllers process. The API process
    is SIGKILLed (connections reset, no clean close) and started again; the controllers reconnect, resume
    or re-list, and act on a change made after the restart."""
    api = ApiProcess(etcd_tls, tmp_path / "api").start()
    client = await KubeClient.from_kubeconfig(api.kubeconfig)
    try:
        for i in range(2):
            body = node(f"n{i}")
            await client.apply(Create(NODES, "", body))
            await client.apply(Patch(NODES, "", f"n{i}", {"status": body["status"]}, subresource="status"))
        await client.apply(Create(DEPLOYMENTS, "default", deployment("web", 2, pod_template({"app": "web"}))))

        async def rolled_out(replicas: int) -> bool:
            try:
                d = await client.get(DEPLOYMENTS, "default", "web")
            except K8sError:
                return False
            st: dict[str, Any] = (d or {}).get("status") or {}
            return (st.get("observedGeneration") == (d or {}).get("metadata", {}).get("generation")
                    and st.get("availableReplicas") == replicas and st.get("replicas") == replicas)

        log_file = tmp_path / "controllers.log"
        async with controller_process(api.kubeconfig, log_file) as proc, running(ApiKubelet(client).run()):
            assert await poll_until(lambda: rolled_out(2), within=WITHIN)
            api.restart()  # SIGKILL, then the same port, etcd and TLS directory
            await until_ok(lambda: client.apply(Patch(DEPLOYMENTS, "default", "web", {"spec": {"replicas": 3}})))
            assert await poll_until(lambda: rolled_out(3), within=WITHIN), log_file.read_text()[-3000:]
            assert proc.returncode is None
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0
        items, _ = await client.reader.list("/api/v1/namespaces/default/pods")
        assert len([p for p in items if not p["metadata"].get("deletionTimestamp")]) == 3
    finally:
        await client.close()
        api.kill()
