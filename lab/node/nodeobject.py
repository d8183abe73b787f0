"""The node's own API objects: its Node (registered on start, status written only on change) and its
Lease in ``kube-node-lease`` (renewed every 10 s, the kubelet's heartbeat). The Node is never
deleted by the runtime: a stopped node runtime leaves a Node whose Lease goes stale, as a kubelet does.
"""

from __future__ import annotations

import asyncio
import datetime
import platform
from pathlib import Path
from typing import Any

from lab.kube.controllers.client import KubeClient, RequestError
from lab.node.config import NodeConfig
from lab.node.podspec import NODE_CPU, NODE_MAX_PODS
from meshcore.backoff import Backoff
from meshcore.log import get_logger

Obj = dict[str, Any]
LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION = 40
HEARTBEAT_PERIOD = 10.0
RUNTIME_VERSION = "lab://0.1.0"
KUBELET_VERSION = "v1.32.0-lab"

_log = get_logger(__name__)


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def host_memory_bytes() -> int:
    """MemTotal of this machine (every lab node reports the host's memory)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 8 * 2**30


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def node_labels(cfg: NodeConfig) -> dict[str, str]:
    return {"kubernetes.io/hostname": cfg.node_name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64"}


def node_object(cfg: NodeConfig) -> Obj:
    """The Node as registered (metadata and spec; the status is written separately)."""
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": cfg.node_name, "labels": node_labels(cfg)},
        "spec": {"podCIDR": cfg.pod_cidr, "podCIDRs": [cfg.pod_cidr]},
    }  # fmt: skip


def node_status(cfg: NodeConfig, *, memory: int, previous: Obj | None, now: str) -> Obj:
    """The Node's status; condition times carry over from ``previous`` while nothing changes."""
    quantities = {"cpu": str(NODE_CPU), "memory": f"{memory // 1024}Ki", "pods": str(NODE_MAX_PODS),
                  "ephemeral-storage": f"{memory // 1024}Ki"}
    wanted = [
        ("Ready", "True", "KubeletReady", "lab node runtime is posting ready status"),
        ("MemoryPressure", "False", "KubeletHasSufficientMemory", "lab node runtime has sufficient memory"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure", "lab node runtime has no disk pressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID", "lab node runtime has sufficient PID available"),
    ]
    old_conditions = {c.get("type"): c for c in (previous or {}).get("conditions") or []}
    conds = []
    for ctype, status, reason, message in wanted:
        old = old_conditions.get(ctype) or {}
        same = old.get("status") == status and old.get("reason") == reason
        conds.append({"type": ctype, "status": status, "reason": reason, "message": message,
                      "lastHeartbeatTime": old.get("lastHeartbeatTime", now) if same else now,
                      "lastTransitionTime": old.get("lastTransitionTime", now) if same else now})
    uname = platform.uname()
    machine_id = _read("/etc/machine-id")
    return {
        "capacity": quantities, "allocatable": dict(quantities),
        "addresses": [{"type": "InternalIP", "address": cfg.internal_ip},
                      {"type": "Hostname", "address": cfg.node_name}],
        "conditions": conds,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "machineID": machine_id, "systemUUID": f"{cfg.lab}-{cfg.node_name}",
            "bootID": _read("/proc/sys/kernel/random/boot_id"), "kernelVersion": uname.release,
            "osImage": _os_image(), "containerRuntimeVersion": RUNTIME_VERSION, "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
        },
    }  # fmt: skip


def _os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return "Linux"


def status_changed(current: Obj, desired: Obj) -> bool:
    """Whether the Node's status must be written (heartbeat times alone are no change)."""
    def strip(status: Obj) -> Obj:
        conds = [{k: v for k, v in c.items() if k not in ("lastHeartbeatTime", "lastTransitionTime")}
                 for c in status.get("conditions") or []]
        return {**{k: status.get(k) for k in desired}, "conditions": conds}

    return strip(current) != strip(desired)


def lease_object(cfg: NodeConfig, node_uid: str | None, renew: str) -> Obj:
    md: Obj = {"name": cfg.node_name, "namespace": LEASE_NAMESPACE}
    if node_uid:
        md["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": cfg.node_name, "uid": node_uid}]
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": md,
            "spec": {"holderIdentity": cfg.node_name, "leaseDurationSeconds": LEASE_DURATION, "renewTime": renew}}


class NodeRegistration:
    """Registers the Node, keeps its status current and renews its Lease (run :meth:`run` in a task)."""

    def __init__(self, cfg: NodeConfig, client: KubeClient) -> None:
        self.cfg = cfg
        self.client = client
        self.registered = asyncio.Event()
        self.error = ""
        self._memory = host_memory_bytes()
        self._node_path = f"/api/v1/nodes/{cfg.node_name}"
        self._lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{cfg.node_name}"

    async def sync_once(self) -> None:
        """Create or update the Node, write its status if it changed, renew the Lease."""
        cfg = self.cfg
        node = await self._get(self._node_path)
        desired = node_object(cfg)
        if node is None:
            try:
                node = await self.client.request("POST", "/api/v1/nodes", desired)
                _log.info("node registered", node=cfg.node_name)
            except RequestError as err:
                if err.status != 409:
                    raise
                node = await self.client.request("GET", self._node_path)
        md = node.get("metadata") or {}
        spec = node.get("spec") or {}
        labels = md.get("labels") or {}
        if any(labels.get(k) != v for k, v in desired["metadata"]["labels"].items()) \
                or spec.get("podCIDR") != cfg.pod_cidr or spec.get("podCIDRs") != [cfg.pod_cidr]:
            node = await self.client.request("PATCH", self._node_path,
                                             {"metadata": {"labels": desired["metadata"]["labels"]},
                                              "spec": desired["spec"]},
                                             content_type="application/merge-patch+json")
        current = node.get("status") or {}
        status = node_status(cfg, memory=self._memory, previous=current, now=now_rfc3339())
        if status_changed(current, status):
            await self.client.request("PATCH", self._node_path + "/status", {"status": status},
                                      content_type="application/merge-patch+json")
        await self._renew_lease(str(md.get("uid") or ""))
        self.registered.set()

    async def _get(self, path: str) -> Obj | None:
        try:
            return await self.client.request("GET", path)
        except RequestError as err:
            if err.status == 404:
                return None
            raise

    async def _renew_lease(self, node_uid: str) -> None:
        lease = lease_object(self.cfg, node_uid, now_micro())
        try:
            await self.client.request("PATCH", self._lease_path, {"spec": lease["spec"]},
                                      content_type="application/merge-patch+json")
        except RequestError as err:
            if err.status != 404:
                raise
            await self.client.request("POST", f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases",
                                      lease)

    async def run(self) -> None:
        """Sync now and every :data:`HEARTBEAT_PERIOD` seconds; retry sooner with backoff while it fails."""
        backoff = Backoff(initial=0.5, maximum=HEARTBEAT_PERIOD)
        while True:
            try:
                await self.sync_once()
                if self.error:
                    _log.info("node heartbeat works again", node=self.cfg.node_name)
                self.error = ""
                backoff.reset()
                delay = HEARTBEAT_PERIOD
            except RequestError as err:
                if not self.error:
                    _log.warning("node heartbeat failed", node=self.cfg.node_name, error=str(err))
                self.error = str(err)
                delay = backoff.next_delay()
            await asyncio.sleep(delay)

