"""Readiness and liveness probes: ``exec`` (in the container's network and mount namespaces, via
``nsenter``), ``tcpSocket`` and ``httpGet`` (from the node's network namespace to the pod IP, where
the node runtime runs), with the API's defaults and thresholds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from lab.node.podspec import ContainerConfigError, Obj, named_port

ProbeKind = str  # "exec" | "tcp" | "http"


@dataclass(frozen=True)
class Probe:
    """One probe of one container, defaults applied."""

    kind: ProbeKind
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3
    command: tuple[str, ...] = ()
    port: int = 0
    host: str = ""
    path: str = "/"
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def parse_probe(doc: Obj | None, container: Obj, *, liveness: bool = False) -> Probe | None:
    """The probe described by ``doc`` (a container's ``readinessProbe``/``livenessProbe``)."""
    if not isinstance(doc, dict):
        return None

    def num(key: str, default: float, minimum: float) -> float:
        value = doc.get(key)
        try:
            return max(minimum, float(value)) if value is not None else default
        except (TypeError, ValueError):
            return default

    timing: dict[str, Any] = {
        "initial_delay": num("initialDelaySeconds", 0.0, 0.0),
        "period": num("periodSeconds", 10.0, 1.0),
        "timeout": num("timeoutSeconds", 1.0, 1.0),
        # a liveness probe's successThreshold must be 1 (as the API server validates)
        "success_threshold": 1 if liveness else int(num("successThreshold", 1, 1)),
        "failure_threshold": int(num("failureThreshold", 3, 1)),
    }
    if isinstance(doc.get("exec"), dict):
        command = tuple(str(a) for a in doc["exec"].get("command") or [])
        if not command:
            raise ContainerConfigError("exec probe without a command")
        return Probe("exec", command=command, **timing)
    if isinstance(doc.get("tcpSocket"), dict):
        t = doc["tcpSocket"]
        return Probe("tcp", port=named_port(container, t.get("port")), host=str(t.get("host") or ""), **timing)
    if isinstance(doc.get("httpGet"), dict):
        h = doc["httpGet"]
        headers = tuple((str(x.get("name", "")), str(x.get("value", ""))) for x in h.get("httpHeaders") or [])
        return Probe("http", port=named_port(container, h.get("port")), host=str(h.get("host") or ""),
                     path=str(h.get("path") or "/"), scheme=str(h.get("scheme") or "HTTP").upper(), headers=headers,
                     **timing)
    raise ContainerConfigError(f"unsupported probe handler {sorted(k for k in doc if not k.endswith('Seconds'))}")


class ProbeState:
    """Consecutive results against the thresholds (pure). Readiness starts failed, liveness passed."""

    def __init__(self, probe: Probe, *, initially: bool) -> None:
        self.probe = probe
        self.ok = initially
        self.successes = 0
        self.failures = 0
        self.message = ""

    def record(self, success: bool, message: str = "") -> bool:
        """Count one result; True if :attr:`ok` changed."""
        before = self.ok
        self.message = message
        if success:
            self.successes += 1
            self.failures = 0
            if self.successes >= self.probe.success_threshold:
                self.ok = True
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= self.probe.failure_threshold:
                self.ok = False
        return self.ok != before


async def _exec(probe: Probe, pid: int) -> tuple[bool, str]:
    env = _environ(pid)
    proc = await asyncio.create_subprocess_exec(
        "nsenter", "-t", str(pid), "-n", "-m", "--", *probe.command, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True)
    try:
        async with asyncio.timeout(probe.timeout):
            out, _ = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await proc.wait()
        return False, f"command timed out after {probe.timeout:g}s"
    if proc.returncode == 0:
        return True, ""
    return False, f"command exited with {proc.returncode}: {out.decode(errors='replace')[-200:].strip()}"


def _environ(pid: int) -> dict[str, str]:
    env: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            key, sep, value = item.decode(errors="replace").partition("=")
            if sep:
                env[key] = value
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    return env


async def _tcp(probe: Probe, host: str) -> tuple[bool, str]:
    try:
        async with asyncio.timeout(probe.timeout):
            _, writer = await asyncio.open_connection(host, probe.port)
    except (OSError, TimeoutError) as err:
        return False, f"dial tcp {host}:{probe.port}: {err or 'timeout'}"
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True, ""


async def _http(probe: Probe, host: str, session: aiohttp.ClientSession) -> tuple[bool, str]:
    scheme = "https" if probe.scheme == "HTTPS" else "http"
    path = probe.path if probe.path.startswith("/") else "/" + probe.path
    url = f"{scheme}://{host}:{probe.port}{path}"
    ctx: ssl.SSLContext | bool = False if scheme == "https" else True
    headers = {"User-Agent": "kube-probe/lab", "Accept": "*/*", **dict(probe.headers)}
    try:
        async with session.get(url, headers=headers, ssl=ctx, allow_redirects=False,
                               timeout=aiohttp.ClientTimeout(total=probe.timeout)) as resp:
            await resp.read()
            if 200 <= resp.status < 400:
                return True, ""
            return False, f"HTTP probe failed with statuscode: {resp.status}"
    except (aiohttp.ClientError, OSError, TimeoutError) as err:
        return False, f'Get "{url}": {err or "timeout"}'


async def run_once(probe: Probe, *, pod_ip: str, pid: int | None, session: aiohttp.ClientSession) -> tuple[bool, str]:
    """Run ``probe`` once: (success, message)."""
    if probe.kind == "exec":
        if pid is None:
            return False, "the container has no process"
        return await _exec(probe, pid)
    host = probe.host or pod_ip
    if probe.kind == "tcp":
        return await _tcp(probe, host)
    return await _http(probe, host, session)


async def probe_loop(state: ProbeState, *, pod_ip: str, pid: int, session: aiohttp.ClientSession,
                     changed: Callable[[], None]) -> None:
    """Probe every period (after the initial delay) until cancelled; ``changed()`` when the verdict flips."""
    probe = state.probe
    await asyncio.sleep(probe.initial_delay)
    while True:
        try:
            ok, message = await run_once(probe, pod_ip=pod_ip, pid=pid, session=session)
        except Exception as err:  # a probe that cannot run counts as failed; the loop goes on
            ok, message = False, f"probe error: {err}"
        if state.record(ok, message):
            changed()
        await asyncio.sleep(probe.period)
