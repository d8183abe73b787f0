"""Find a lab pod's processes, namespaces, cgroup and logs from its Kubernetes object (for ``lab
exec``, ``lab logs`` and pod faults).

A pod is looked up in its cluster's API (name, namespace, node, uid, restart counts); its files
follow the node runtime's layout in lab/README.md: ``<state>/nodes/<node>/pods/<ns>_<name>_<uid>/``
holding ``pod.json`` (the runtime's record: containers and their pids) and
``<container>/<restart>.log``; its cgroup is ``<lab cgroup>/<cluster>.n<j>/<uid>/``.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.supervisor import apiclient
from lab.supervisor.spec import ClusterSpec, LabSpec, NodeSpec


class PodNotFound(LookupError):
    """No such pod, or it has no running container (yet)."""


@dataclass(frozen=True)
class PodRef:
    """A pod of a lab and where its pieces are."""

    spec: LabSpec
    cluster: ClusterSpec
    node: NodeSpec
    namespace: str
    name: str
    uid: str
    obj: dict[str, Any]

    @property
    def pod_dir(self) -> Path:
        return self.spec.node_dir(self.node.name) / "pods" / f"{self.namespace}_{self.name}_{self.uid}"

    @property
    def cgroup(self) -> Path:
        return self.spec.node_cgroup(self.node) / self.uid

    @property
    def containers(self) -> list[str]:
        return [c["name"] for c in (self.obj.get("spec") or {}).get("containers") or []]


def find(spec: LabSpec, context: str | None, namespace: str, name: str) -> PodRef:
    """The pod ``namespace/name`` of the cluster named by ``context`` (default: the first cluster)."""
    cluster = spec.cluster(context) if context else spec.clusters[0]
    try:
        obj = apiclient.api_get(spec, cluster, f"/api/v1/namespaces/{namespace}/pods/{name}")
    except urllib.error.HTTPError as err:
        if err.code == 404:
            raise PodNotFound(f"no pod {namespace}/{name} in {cluster.context}") from None
        raise PodNotFound(f"cannot read pod {namespace}/{name} from {cluster.context}: HTTP {err.code}") from None
    except OSError as err:
        raise PodNotFound(f"the Kubernetes API of {cluster.context} does not answer ({err})") from None
    node_name = (obj.get("spec") or {}).get("nodeName")
    if not node_name:
        raise PodNotFound(f"pod {namespace}/{name} is not scheduled to a node yet")
    return PodRef(spec, cluster, spec.node(node_name), namespace, name, obj["metadata"]["uid"], obj)


def _record(ref: PodRef) -> dict[str, Any]:
    try:
        doc = json.loads((ref.pod_dir / "pod.json").read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def container_pid(ref: PodRef, container: str | None) -> int:
    """A live process of ``container`` (default: the first container) of the pod."""
    want = container or (ref.containers[0] if ref.containers else None)
    if want is not None and want not in ref.containers:
        raise PodNotFound(f"pod {ref.namespace}/{ref.name} has no container {want!r} (it has: "
                          f"{', '.join(ref.containers)})")
    containers = _record(ref).get("containers") or {}
    entry = containers.get(want) if isinstance(containers, dict) else None
    pid = entry.get("pid") if isinstance(entry, dict) else None
    if isinstance(pid, int) and _alive(pid):
        return pid
    with contextlib.suppress(OSError, ValueError):
        pids = [int(p) for p in (ref.cgroup / "cgroup.procs").read_text().split()]
        if pids:
            return min(pids)
    raise PodNotFound(f"container {want} of pod {ref.namespace}/{ref.name} is not running")


def exec_argv(ref: PodRef, container: str | None, command: list[str]) -> list[str]:
    """``nsenter`` into the container's network and mount namespaces, then ``command``."""
    pid = container_pid(ref, container)
    return ["nsenter", "-t", str(pid), "-n", "-m", "--", *command]


def container_env(ref: PodRef, container: str | None) -> dict[str, str]:
    """The container's environment (what ``kubectl exec`` gives a command)."""
    pid = container_pid(ref, container)
    env = {}
    for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            env[key] = value
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    return env


def join_cgroup(ref: PodRef) -> None:
    """Move this process into the pod's cgroup (socket load balancing and faults then apply to what
    it runs, as to the pod's own processes)."""
    with contextlib.suppress(OSError):
        (ref.cgroup / "cgroup.procs").write_text("0")


def log_path(ref: PodRef, container: str | None, *, previous: bool = False) -> Path | None:
    """The log file of the container's current (or previous) run, None if there is none."""
    want = container or (ref.containers[0] if ref.containers else "")
    statuses = (ref.obj.get("status") or {}).get("containerStatuses") or []
    restarts = next((int(s.get("restartCount", 0)) for s in statuses if s.get("name") == want), None)
    d = ref.pod_dir / want
    if restarts is None:
        runs = sorted((int(p.stem) for p in d.glob("*.log") if p.stem.isdigit()), reverse=True)
        if not runs:
            return None
        restarts = runs[0]
    run = restarts - 1 if previous else restarts
    path = d / f"{run}.log"
    return path if run >= 0 and path.exists() else None
