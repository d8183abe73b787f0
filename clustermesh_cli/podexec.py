"""Run a command in a pod through the Kubernetes API (``pods/exec``) and read the JSON document it
prints: how the CLI asks agents for their status and has them capture on their node.

One exec, bounded in time; every failure comes back as a sentence naming the cause (the API refused
the exec, the command did not finish, it exited non-zero with this stderr, it printed no JSON),
never as an exception.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any, Final

import websocket
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream

__all__ = ["ExecResult", "exec_json"]

_ERROR_TAIL: Final = 400  # characters of a command's output kept in a reason


@dataclass(frozen=True)
class ExecResult:
    """The command's JSON document, or why there is none (``error``)."""

    doc: dict[str, Any] | None = None
    error: str = ""


def _tail(text: str) -> str:
    """``text`` on one line, cut to its last 400 characters."""
    text = " ".join(text.split())
    return text if len(text) <= _ERROR_TAIL else "..." + text[-_ERROR_TAIL:]


def _api_error(err: ApiException) -> str:
    reason = str(err.reason or err)
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        body = reason.split("-+-+-")[-1]  # the WebSocket client packs the handshake's body into the reason
        reason = json.loads(body).get("message") or reason
    return f"exec refused by the Kubernetes API: {_tail(reason)}"


def exec_json(configuration: client.Configuration, namespace: str, name: str, container: str,
              command: list[str], timeout: float, *, what: str) -> ExecResult:
    """Exec ``command`` in pod ``namespace/name`` (``container``) for at most ``timeout`` seconds
    once connected and parse what it prints; ``what`` names the command in errors."""
    api = client.ApiClient(configuration)
    ws: Any = None
    try:
        ws = stream(client.CoreV1Api(api).connect_get_namespaced_pod_exec, name, namespace, command=command,
                    container=container, stdin=False, stdout=True, stderr=True, tty=False, _preload_content=False)
        ws.run_forever(timeout=timeout)
        if ws.is_open():
            return ExecResult(error=f"{what} did not finish within {timeout:g}s")
        out, err, code = str(ws.read_stdout() or ""), str(ws.read_stderr() or ""), ws.returncode
    except ApiException as exc:
        return ExecResult(error=_api_error(exc))
    except (OSError, websocket.WebSocketException, ValueError, KeyError, TypeError, IndexError) as exc:
        return ExecResult(error=f"exec failed: {type(exc).__name__}: {_tail(str(exc))}")
    finally:
        if ws is not None:
            with contextlib.suppress(Exception):
                ws.close()
        api.close()  # type: ignore[no-untyped-call]
    if code != 0:
        stderr = _tail(err.removeprefix("Error: ").removeprefix("error: "))
        return ExecResult(error=stderr or f"{what} exited {code}")
    try:
        doc = json.loads(out)
    except ValueError as exc:
        return ExecResult(error=f"{what} printed no JSON ({exc}): {_tail(out or err)}")
    if not isinstance(doc, dict):
        return ExecResult(error=f"{what} printed {type(doc).__name__}, not a document")
    return ExecResult(doc=doc)
