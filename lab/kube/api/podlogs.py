"""``pods/log``: container logs read from the files the lab's node runtime writes.

A container's log for one run is ``<root>/<spec.nodeName>/pods/<namespace>_<name>_<uid>/<container>/
<restartCount>.log``, ``restartCount`` taken from ``status.containerStatuses`` (``previous``: the run
before). :func:`log_file` picks the file (pure, raises :class:`ApiError` 400 as kube-apiserver words
it); :func:`serve_log` answers ``GET .../pods/<name>/log`` with ``container``, ``previous``,
``tailLines``, ``limitBytes`` and ``follow`` (new lines are streamed until the Pod is gone, its uid
changes, or the client disconnects; the file is polled, every wait is bounded).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web

from lab.kube.api.errors import ApiError, bad_request
from lab.kube.api.store import ObjectStore

FOLLOW_POLL_SECONDS = 0.2
_CHUNK = 64 * 1024


def _containers(pod: dict[str, Any]) -> list[str]:
    return [str(c.get("name")) for c in (pod.get("spec") or {}).get("containers") or [] if isinstance(c, dict)]


def pod_dir(root: Path, pod: dict[str, Any]) -> Path:
    """The node runtime's directory of ``pod`` (``<root>/<spec.nodeName>/pods/<ns>_<name>_<uid>``)."""
    md = pod["metadata"]
    node = (pod.get("spec") or {}).get("nodeName") or ""
    return root / str(node) / "pods" / f"{md.get('namespace', 'default')}_{md['name']}_{md.get('uid', '')}"


def log_file(root: Path, pod: dict[str, Any], container: str | None, previous: bool) -> Path:
    """The log file of ``container`` (default: the first one) of ``pod``."""
    md, spec = pod["metadata"], pod.get("spec") or {}
    name = md["name"]
    names = _containers(pod)
    if not names:
        raise bad_request(f"pod {name} has no containers")
    container = container or names[0]
    if container not in names:
        raise bad_request(f"container {container} is not valid for pod {name}")
    node = spec.get("nodeName")
    if not node:
        raise bad_request(f'container "{container}" in pod "{name}" is waiting to start: the pod is not '
                          "scheduled to a node yet")
    restarts = 0
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if isinstance(cs, dict) and cs.get("name") == container:
            restarts = int(cs.get("restartCount") or 0)
    if previous:
        if restarts == 0:
            raise bad_request(f'previous terminated container "{container}" in pod "{name}" not found')
        restarts -= 1
    return pod_dir(root, pod) / container / f"{restarts}.log"


def tail(data: bytes, lines: int) -> bytes:
    """The last ``lines`` lines of ``data`` (a final line without newline counts)."""
    if lines <= 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


def _int(q: Any, name: str) -> int | None:
    value = q.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise bad_request(f"invalid {name} {value!r}") from None


async def serve_log(request: web.Request, store: ObjectStore, root: Path | None, namespace: str, name: str
                    ) -> web.StreamResponse:
    """Answer one ``pods/log`` request."""
    q = request.query
    pod = store.get("pods", name, namespace)
    if root is None:
        raise bad_request("this API server has no --pod-log-root: container logs are not available")
    path = log_file(root, pod, q.get("container") or None, q.get("previous", "").lower() in ("true", "1"))
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError:
        raise bad_request(f'container "{path.parent.name}" in pod "{name}" has no log yet ({path} is missing)'
                          ) from None
    tail_lines, limit = _int(q, "tailLines"), _int(q, "limitBytes")
    offset = len(data)
    if tail_lines is not None:
        data = tail(data, tail_lines)
    if limit is not None:
        data = data[:limit]
    follow = q.get("follow", "").lower() in ("true", "1")
    if not follow:
        return web.Response(body=data, content_type="text/plain")
    resp = web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    uid = pod["metadata"].get("uid")
    try:
        if data:
            await resp.write(data)
        while request.transport is not None and not request.transport.is_closing():
            chunk = await asyncio.to_thread(_read_from, path, offset)
            if chunk:
                offset += len(chunk)
                await resp.write(chunk)
                continue
            if not _still_there(store, namespace, name, uid):
                break
            await asyncio.sleep(FOLLOW_POLL_SECONDS)
        await resp.write_eof()
    except (ConnectionResetError, ConnectionError):
        pass
    return resp


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(_CHUNK)
    except OSError:
        return b""


def _still_there(store: ObjectStore, namespace: str, name: str, uid: str | None) -> bool:
    try:
        return bool(store.get("pods", name, namespace, copy=False)["metadata"].get("uid") == uid)
    except ApiError:
        return False
