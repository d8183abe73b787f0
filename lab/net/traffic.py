"""Test traffic between lab pods: ping, a paced TCP echo stream that exposes stalls and loss, and a
TCP throughput measurement. All of it runs inside the pods (:class:`Endpoint`: a
:class:`~lab.net.topology.Pod` runs commands with ``ip netns exec``, a pod of a running lab with
``clustermesh lab exec``) with the stand-alone :mod:`lab.net.trafficd` script and this
interpreter, and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import selectors
import subprocess
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from lab.net.errors import CommandError

TRAFFICD = str(Path(__file__).with_name("trafficd.py"))
DEFAULT_PORT = 5201
#: Extra seconds the endpoints get beyond the traffic itself (start-up, connect, drain).
SLACK = 5.0
#: Seconds a server gets to say it is listening (a `clustermesh lab exec` starts Python first).
READY_WITHIN = 15.0


class Endpoint(Protocol):
    """Where traffic starts or ends: a pod with an IPv4 address that runs commands inside itself."""

    @property
    def ip(self) -> ipaddress.IPv4Address: ...

    def exec_argv(self, *argv: str) -> list[str]:
        """The argv running ``argv`` inside the pod (network namespace at least), dying with its parent."""
        ...


_E = TypeVar("_E", bound=Endpoint)


def ping(src: Endpoint, dst_ip: str | ipaddress.IPv4Address, *, count: int = 1, timeout: float = 1.0) -> bool:
    """Whether ``count`` pings from ``src`` to ``dst_ip`` all get answers (each waits ``timeout`` s)."""
    argv = src.exec_argv("ping", "-n", "-q", "-c", str(count), "-W", f"{timeout:g}", "-i", "0.2", str(dst_ip))
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=count * (timeout + 0.2) + SLACK + 5)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


def ping_matrix(
    pods: Iterable[_E], targets: Iterable[_E] | None = None, *, timeout: float = 1.0, workers: int = 64
) -> dict[tuple[_E, _E], bool]:
    """Ping every target pod from every pod (not itself), up to ``workers`` at a time; returns
    ``{(src, dst): answered}``."""
    srcs = list(pods)
    dsts = srcs if targets is None else list(targets)
    pairs = [(s, d) for s in srcs for d in dsts if s != d]
    if not pairs:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(pairs)))) as pool:
        results = list(pool.map(lambda pair: ping(pair[0], pair[1].ip, timeout=timeout), pairs))
    return dict(zip(pairs, results, strict=True))


@dataclass(frozen=True)
class StreamResult:
    """What a paced TCP echo stream saw (all measured at the client).

    ``gaps`` are ``(offset_s, duration_s)`` pauses longer than the threshold between consecutive
    echoed chunks (offset from the stream's start); TCP retransmits lost segments, so a lost packet
    shows up as a gap of at least one retransmission timeout. ``out_of_order`` counts echoed chunks
    whose sequence number was not the next one. ``error`` is set if either end failed or timed out.
    """

    bytes_sent: int
    bytes_received: int
    gaps: tuple[tuple[float, float], ...]
    chunks_sent: int = 0
    chunks_received: int = 0
    out_of_order: int = 0
    seconds: float = 0.0
    error: str | None = None

    @property
    def max_gap(self) -> float:
        """The longest gap (0 if none)."""
        return max((d for _, d in self.gaps), default=0.0)

    @property
    def ok(self) -> bool:
        """Everything sent came back, in order, with no gap and no error."""
        return (
            self.error is None
            and self.bytes_sent > 0
            and self.bytes_received == self.bytes_sent
            and not self.gaps
            and self.out_of_order == 0
        )


def _trafficd(pod: Endpoint, *args: str) -> list[str]:
    return pod.exec_argv(sys.executable, "-I", "-S", TRAFFICD, *args)


def _start_server(pod: Endpoint, mode: str, port: int, budget: float) -> subprocess.Popen[str]:
    """Start a server in ``pod`` and wait (bounded) for its ``ready`` line."""
    argv = _trafficd(pod, mode, "--port", str(port), "--deadline", f"{budget:.3f}")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout=READY_WITHIN)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != "ready":
        _stop(proc)
        err = proc.stderr.read() if proc.stderr else ""
        raise CommandError(argv, f"server did not become ready (got {line!r})", output=err)
    return proc


def _stop(proc: subprocess.Popen[str], timeout: float = 0.0) -> tuple[str, str]:
    """Wait up to ``timeout`` s for ``proc``, kill it if still running; return its output."""
    try:
        return proc.communicate(timeout=timeout) if timeout > 0 else _kill_and_collect(proc)
    except subprocess.TimeoutExpired:
        return _kill_and_collect(proc)


def _kill_and_collect(proc: subprocess.Popen[str]) -> tuple[str, str]:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    try:
        return proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        return "", ""


def _last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    return {"error": f"no JSON report in {text[-200:]!r}"}


class StreamRun:
    """A TCP echo stream in progress (see :func:`start_tcp_stream`); :meth:`result` collects it."""

    def __init__(
        self, server_pod: Endpoint, client_pod: Endpoint, port: int, seconds: float, client_args: list[str]
    ) -> None:
        budget = seconds + SLACK
        self._budget = budget
        self._server = _start_server(server_pod, "echo-server", port, budget + 1)
        argv = _trafficd(
            client_pod, "stream-client", "--host", str(server_pod.ip), "--port", str(port),
            "--seconds", str(seconds), "--deadline", f"{budget:.3f}", *client_args,
        )  # fmt: skip
        try:
            self._client = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        except OSError:
            _stop(self._server)
            raise
        self._result: StreamResult | None = None

    def result(self) -> StreamResult:
        """Wait (bounded by the stream's own budget) for the stream to end and return its report."""
        if self._result is None:
            out, err = _stop(self._client, self._budget + 2)
            report = _last_json(out)
            _stop(self._server, 2 if report.get("error") is None else 0)
            if report.get("error") and err.strip():
                report["error"] = f"{report['error']} ({err.strip()[-300:]})"
            self._result = StreamResult(
                bytes_sent=int(report.get("bytes_sent", 0)),
                bytes_received=int(report.get("bytes_received", 0)),
                gaps=tuple((float(a), float(b)) for a, b in report.get("gaps", [])),
                chunks_sent=int(report.get("chunks_sent", 0)),
                chunks_received=int(report.get("chunks_received", 0)),
                out_of_order=int(report.get("out_of_order", 0)),
                seconds=float(report.get("seconds", 0.0)),
                error=report.get("error"),
            )
        return self._result


def start_tcp_stream(
    server_pod: Endpoint,
    client_pod: Endpoint,
    port: int = DEFAULT_PORT,
    seconds: float = 3.0,
    *,
    chunk_size: int = 1024,
    interval: float = 0.01,
    gap_threshold: float = 0.2,
    connect_timeout: float = 3.0,
) -> StreamRun:
    """Start an echo server in ``server_pod`` and a client in ``client_pod`` sending a
    ``chunk_size``-byte sequence-numbered chunk every ``interval`` s for ``seconds`` s; returns at
    once (for disrupting the path meanwhile), :meth:`StreamRun.result` collects the report."""
    args = ["--chunk", str(chunk_size), "--interval", str(interval), "--gap", str(gap_threshold)]
    args += ["--connect-timeout", str(connect_timeout)]
    return StreamRun(server_pod, client_pod, port, seconds, args)


def tcp_stream(
    server_pod: Endpoint,
    client_pod: Endpoint,
    port: int = DEFAULT_PORT,
    seconds: float = 3.0,
    *,
    chunk_size: int = 1024,
    interval: float = 0.01,
    gap_threshold: float = 0.2,
    connect_timeout: float = 3.0,
) -> StreamResult:
    """Run a paced TCP echo stream for ``seconds`` s and return its report (see :class:`StreamResult`)."""
    return start_tcp_stream(
        server_pod,
        client_pod,
        port,
        seconds,
        chunk_size=chunk_size,
        interval=interval,
        gap_threshold=gap_threshold,
        connect_timeout=connect_timeout,
    ).result()


def tcp_throughput(
    client_pod: Endpoint, server_pod: Endpoint, seconds: float = 3.0, *, port: int = DEFAULT_PORT + 1
) -> float:
    """Bulk TCP from ``client_pod`` to ``server_pod`` for ``seconds`` s; bits per second as
    received by the server (first byte to end of stream). Raises :class:`CommandError` on failure."""
    budget = seconds + SLACK
    server = _start_server(server_pod, "sink-server", port, budget + 1)
    argv = _trafficd(
        client_pod, "bulk-client", "--host", str(server_pod.ip), "--port", str(port),
        "--seconds", str(seconds), "--deadline", f"{budget:.3f}",
    )  # fmt: skip
    try:
        client = subprocess.run(argv, capture_output=True, text=True, timeout=budget + 2, check=False)
    except subprocess.TimeoutExpired as exc:
        _stop(server)
        raise CommandError(argv, "throughput client timed out") from exc
    out, err = _stop(server, 2)
    report = _last_json(out)
    client_report = _last_json(client.stdout)
    for r, e in ((report, err), (client_report, client.stderr)):
        if r.get("error") is not None:
            raise CommandError(argv, f"throughput run failed: {r['error']}", output=e)
    return float(report["bytes"]) * 8 / float(report["seconds"])
