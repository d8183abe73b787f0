"""Where the node runtime keeps things (pure paths, plus atomic JSON writes).

Per node, under ``state_dir`` (``/run/clustermesh-lab/<lab>/nodes/<node>/``)::

    node.json                                the runtime's status (see lab.node.runtime)
    pods/<namespace>_<name>_<uid>/           one directory per pod
        pod.json                             the runtime's record of the pod (see lab.node.worker)
        created-paths.json                   host paths made as mount points (JSON list, deepest last)
        volumes/<volume>/                    secret, configMap, projected, downwardAPI, emptyDir contents
        <container>/<restart>.log            stdout+stderr of one run (``kubectl logs`` reads it)
        <container>/<restart>.spec.json      the launcher's input for that run
        <container>/<restart>.pid.json       {"pid", "shim_pid", "start_time", "started_at"} once it runs
        <container>/<restart>.exit.json      {"exit_code", "signal", "reason", "message", "started_at",
                                             "finished_at"} once it ended (written by the launcher)

Namespace, pod and container names are DNS labels/subdomains and uids are UUIDs, so ``_`` never
occurs inside a part and a volume name never looks like ``<n>.log``.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POD_RECORD = "pod.json"
CREATED_PATHS = "created-paths.json"
NODE_STATUS = "node.json"
MOUNTPOINT_LOCK = ".mountpoints.lock"


def pods_root(state_dir: Path) -> Path:
    return state_dir / "pods"


def node_status_file(state_dir: Path) -> Path:
    return state_dir / NODE_STATUS


def labs_root(state_dir: Path) -> Path:
    """The directory holding every lab's state (``/run/clustermesh-lab``): ``state_dir`` is
    ``<labs root>/<lab>/nodes/<node>``."""
    return state_dir.parents[2]


def pod_dir_name(namespace: str, name: str, uid: str) -> str:
    return f"{namespace}_{name}_{uid}"


def parse_pod_dir_name(dirname: str) -> tuple[str, str, str] | None:
    """``(namespace, name, uid)`` of a pod directory name, None if it is not one."""
    parts = dirname.split("_")
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]


@dataclass(frozen=True)
class PodDir:
    """The files of one pod (see the module docstring)."""

    root: Path

    @classmethod
    def of(cls, state_dir: Path, namespace: str, name: str, uid: str) -> PodDir:
        return cls(pods_root(state_dir) / pod_dir_name(namespace, name, uid))

    @property
    def record(self) -> Path:
        return self.root / POD_RECORD

    @property
    def created_paths(self) -> Path:
        return self.root / CREATED_PATHS

    @property
    def volumes(self) -> Path:
        return self.root / "volumes"

    def volume(self, name: str) -> Path:
        return self.volumes / name

    def container(self, name: str) -> Path:
        return self.root / name

    def log(self, container: str, restart: int) -> Path:
        return self.root / container / f"{restart}.log"

    def spec_file(self, container: str, restart: int) -> Path:
        return self.root / container / f"{restart}.spec.json"

    def pid_file(self, container: str, restart: int) -> Path:
        return self.root / container / f"{restart}.pid.json"

    def exit_file(self, container: str, restart: int) -> Path:
        return self.root / container / f"{restart}.exit.json"

    def runs(self, container: str) -> list[int]:
        """Restart numbers of the runs this container has had (ascending)."""
        d = self.container(container)
        out = []
        with contextlib.suppress(OSError):
            for p in d.iterdir():
                head, _, tail = p.name.partition(".")
                if tail == "spec.json" and head.isdigit():
                    out.append(int(head))
        return sorted(out)


def write_json(path: Path, doc: Any, *, mode: int = 0o644) -> None:
    """Write ``doc`` as JSON atomically (temp file + rename in the same directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """The JSON document at ``path``, None if it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
