"""Run the capture inside every node at once: exec :data:`CAPTURE_COMMAND` in the node's agent pod
(its agent container has the host's network, so it sees the node's underlay) and parse its JSON.

The exec is the official client's ``kubernetes.stream.stream`` over
``CoreV1Api.connect_get_namespaced_pod_exec`` (what kubectl exec does; no kubectl binary needed),
one ``ApiClient`` per exec since ``stream`` patches its client while it connects.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import websocket
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream

from clustermesh_cli.encryption.discover import Target
from encryption.audit.classify import AuditPlan
from encryption.audit.report import NodeCapture

__all__ = ["CAPTURE_COMMAND", "STARTUP_ALLOWANCE", "CaptureExec", "capture_command", "exec_capture", "run_captures"]

#: Resolved on the agent container's PATH: the lab puts its venv's bin first, the image
#: (Containerfile) has python3 with the project installed.
CAPTURE_COMMAND: Final = ("python3", "-m", "encryption.audit.capture")
#: Seconds an exec may take beyond the capture's duration (interpreter start, netlink, JSON).
STARTUP_ALLOWANCE: Final = 20.0
MAX_PARALLEL: Final = 128  # captures run at once: all of them, so their windows overlap
_ERROR_TAIL: Final = 400

#: Runs one capture: (target, command, timeout) -> its result. Tests give their own.
CaptureExec = Callable[[Target, list[str], float], NodeCapture]


def capture_command(target: Target, plan: AuditPlan, duration: float) -> list[str]:
    """The command line that captures on ``target``'s underlay (the interface holding its IP)."""
    assert target.node_ip is not None
    return [*CAPTURE_COMMAND, "--node-ip", target.node_ip, "--duration", f"{duration:g}",
            "--plan-json", json.dumps(plan.to_json(), separators=(",", ":")), "-o", "json"]


def _tail(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _ERROR_TAIL else "..." + text[-_ERROR_TAIL:]


def _api_error(err: ApiException) -> str:
    reason = str(err.reason or err)
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        reason = json.loads(reason.split("-+-+-")[-1]).get("message") or reason
    return f"exec refused by the Kubernetes API: {_tail(reason)}"


def exec_capture(configuration: client.Configuration, target: Target, command: list[str], timeout: float, *,
                 container: str) -> NodeCapture:
    """Exec ``command`` in ``target``'s pod (``container``) for at most ``timeout`` seconds; its
    JSON document, or the error naming the cause."""
    pod: Mapping[str, Any] = target.pod or {}
    md = pod.get("metadata") or {}
    where = f"pod {md.get('namespace')}/{md.get('name')}"
    api = client.ApiClient(configuration)
    ws: Any = None
    try:
        ws = stream(client.CoreV1Api(api).connect_get_namespaced_pod_exec, str(md.get("name")),
                    str(md.get("namespace")), command=command, container=container, stdin=False, stdout=True,
                    stderr=True, tty=False, _preload_content=False)
        ws.run_forever(timeout=timeout)
        if ws.is_open():
            return NodeCapture(target.node, error=f"capture in {where} did not finish within {timeout:g}s")
        out, err, code = str(ws.read_stdout() or ""), str(ws.read_stderr() or ""), ws.returncode
    except ApiException as exc:
        return NodeCapture(target.node, error=f"{where}: {_api_error(exc)}")
    except (OSError, websocket.WebSocketException, ValueError, KeyError, TypeError, IndexError) as exc:
        return NodeCapture(target.node, error=f"exec in {where} failed: {type(exc).__name__}: {_tail(str(exc))}")
    finally:
        if ws is not None:
            with contextlib.suppress(Exception):
                ws.close()
        api.close()  # type: ignore[no-untyped-call]
    if code != 0:
        why = _tail(err.removeprefix("error: ")) or f"exit status {code}"
        return NodeCapture(target.node, error=f"capture in {where} failed: {why}")
    try:
        doc = json.loads(out)
    except ValueError:
        return NodeCapture(target.node, error=f"capture in {where} printed no JSON: {_tail(out or err)}")
    if not isinstance(doc, dict):
        return NodeCapture(target.node, error=f"capture in {where} printed {type(doc).__name__}, not a document")
    return NodeCapture(target.node, result=doc)


def run_captures(targets: Sequence[Target], plan: AuditPlan, duration: float, run: CaptureExec) -> list[NodeCapture]:
    """Every target's capture, all at once; a target that cannot be captured keeps its problem."""
    out: dict[int, NodeCapture] = {}
    todo = []
    for i, t in enumerate(targets):
        if t.pod is None or t.node_ip is None:
            out[i] = NodeCapture(t.node, error=t.problem or "nowhere to capture")
        else:
            todo.append(i)
    if todo:
        timeout = duration + STARTUP_ALLOWANCE
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(todo)), thread_name_prefix="capture") as pool:
            results = pool.map(lambda i: run(targets[i], capture_command(targets[i], plan, duration), timeout), todo)
            for i, result in zip(todo, results, strict=True):
                out[i] = result
    return [out[i] for i in range(len(targets))]
