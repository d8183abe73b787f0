"""Test traffic between lab pods: ping, a paced TCP echo stream that exposes stalls and loss, a
paced stream of numbered UDP datagrams that exposes every lost one, and a TCP throughput
measurement. All of it runs inside the pods (:class:`Endpoint`: a
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
DEFAULT_UDP_PORT = 5301
#: Extra seconds the endpoints get beyond the traffic itself (start-up, connect, drain).
SLACK = 5.0
#: Seconds a server gets to say it is listening (a `clustermesh lab exec` starts Python first);
#: a stream's server also lives this much longer than its client's budget, since the client starts
#: the same slow way after the server is ready (it ends at the client's end of stream anyway).
READY_WITHIN = 15.0
#: Seconds a UDP receiver waits after the last datagram before it reports the rest as missing.
UDP_IDLE = 5.0


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
    shows up as a gap of at least one retransmission timeout. ``longest_gap`` is the longest pause
    whatever the threshold. ``out_of_order`` counts echoed chunks whose sequence number was not the
    next one. ``started`` is when the client began sending (``time.monotonic()`` of this host).
    ``error`` is set if either end failed or timed out.
    """

    bytes_sent: int
    bytes_received: int
    gaps: tuple[tuple[float, float], ...]
    chunks_sent: int = 0
    chunks_received: int = 0
    out_of_order: int = 0
    seconds: float = 0.0
    error: str | None = None
    longest_gap: float = 0.0
    started: float = 0.0

    @property
    def max_gap(self) -> float:
        """The longest pause between echoed chunks (over the threshold: the longest of ``gaps``)."""
        return max((d for _, d in self.gaps), default=self.longest_gap)

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


def _start_server(pod: Endpoint, mode: str, port: int, budget: float, *extra: str) -> subprocess.Popen[str]:
    """Start a server in ``pod`` and wait (bounded) for its ``ready`` line."""
    argv = _trafficd(pod, mode, "--port", str(port), "--deadline", f"{budget:.3f}", *extra)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout=READY_WITHIN)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != "ready":
        _, err = _stop(proc)
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


def _start_client(argv: list[str], server: subprocess.Popen[str]) -> subprocess.Popen[str]:
    """Start a stream's client end; when it cannot start, stop its (running) server end first."""
    try:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError:
        _stop(server)
        raise


def _with_stderr(error: str, stderr: str) -> str:
    """An end's error with the tail of what it wrote to stderr, if anything."""
    return f"{error} ({stderr.strip()[-300:]})" if stderr.strip() else error


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
        self._server = _start_server(server_pod, "echo-server", port, budget + READY_WITHIN)
        argv = _trafficd(
            client_pod, "stream-client", "--host", str(server_pod.ip), "--port", str(port),
            "--seconds", str(seconds), "--deadline", f"{budget:.3f}", *client_args,
        )  # fmt: skip
        self._client = _start_client(argv, self._server)
        self._result: StreamResult | None = None

    def result(self) -> StreamResult:
        """Wait (bounded by the stream's own budget) for the stream to end and return its report."""
        if self._result is None:
            out, err = _stop(self._client, self._budget + 2)
            report = _last_json(out)
            _stop(self._server, 2 if report.get("error") is None else 0)
            if report.get("error"):
                report["error"] = _with_stderr(report["error"], err)
            self._result = StreamResult(
                bytes_sent=int(report.get("bytes_sent", 0)),
                bytes_received=int(report.get("bytes_received", 0)),
                gaps=tuple((float(a), float(b)) for a, b in report.get("gaps", [])),
                chunks_sent=int(report.get("chunks_sent", 0)),
                chunks_received=int(report.get("chunks_received", 0)),
                out_of_order=int(report.get("out_of_order", 0)),
                seconds=float(report.get("seconds", 0.0)),
                error=report.get("error"),
                longest_gap=float(report.get("longest_gap", 0.0)),
                started=float(report.get("started", 0.0)),
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


@dataclass(frozen=True)
class UdpResult:
    """What a paced stream of ``count`` numbered UDP datagrams saw (see :func:`start_udp_stream`).

    ``missing`` counts the sequence numbers that never arrived, ``missing_ranges`` lists the first
    of them as inclusive ``(first, last)`` ranges; ``duplicates`` and ``reordered`` (arrived after a
    higher number) are for information. ``max_gap`` is the receiver's longest pause between two new
    datagrams, ``max_late`` the sender's worst lateness against its schedule (a busy machine, not the
    network). ``started``/``ended``: the sender's first and last send (``time.monotonic()`` of this
    host). ``error`` is set if either end failed or timed out.
    """

    count: int
    sent: int
    received: int
    missing: int
    missing_ranges: tuple[tuple[int, int], ...] = ()
    duplicates: int = 0
    reordered: int = 0
    send_errors: int = 0
    max_gap: float = 0.0
    max_late: float = 0.0
    started: float = 0.0
    ended: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Every datagram went and arrived, without an error."""
        return self.error is None and self.count > 0 and self.sent == self.count and self.missing == 0


class UdpRun:
    """A UDP stream in progress (see :func:`start_udp_stream`); :meth:`result` collects it."""

    def __init__(
        self,
        receiver_pod: Endpoint,
        sender_pod: Endpoint,
        port: int,
        seconds: float,
        rate: float,
        size: int,
        source: str | None,
    ) -> None:
        self._count = max(1, round(seconds * rate))
        budget = seconds + SLACK
        self._budget = budget
        extra = ("--count", str(self._count), "--idle", str(UDP_IDLE))
        self._receiver = _start_server(receiver_pod, "udp-receiver", port, budget + READY_WITHIN, *extra)
        argv = _trafficd(
            sender_pod, "udp-sender", "--host", str(receiver_pod.ip), "--port", str(port), "--count",
            str(self._count), "--rate", str(rate), "--size", str(size), "--deadline", f"{budget:.3f}",
            *(["--source", source] if source else []),
        )  # fmt: skip
        self._sender = _start_client(argv, self._receiver)
        self._result: UdpResult | None = None

    def result(self) -> UdpResult:
        """Wait (bounded by the stream's own budget) for both ends and return the report."""
        if self._result is None:
            out, err = _stop(self._sender, self._budget + 2)
            sent = _last_json(out)
            rout, rerr = _stop(self._receiver, UDP_IDLE + 3 if sent.get("sent") else 0)
            got = _last_json(rout)
            errors = [f"{side}: {_with_stderr(r['error'], e)}"
                      for side, r, e in (("sender", sent, err), ("receiver", got, rerr)) if r.get("error")]  # fmt: skip
            self._result = UdpResult(
                count=self._count,
                sent=int(sent.get("sent", 0)),
                received=int(got.get("received", 0)),
                missing=int(got.get("missing", self._count)),
                missing_ranges=tuple((int(a), int(b)) for a, b in got.get("missing_ranges", [])),
                duplicates=int(got.get("duplicates", 0)),
                reordered=int(got.get("reordered", 0)),
                send_errors=int(sent.get("send_errors", 0)),
                max_gap=float(got.get("max_gap", 0.0)),
                max_late=float(sent.get("max_late", 0.0)),
                started=float(sent.get("started", 0.0)),
                ended=float(sent.get("ended", 0.0)),
                error="; ".join(errors) or None,
            )
        return self._result


def start_udp_stream(
    receiver_pod: Endpoint,
    sender_pod: Endpoint,
    port: int = DEFAULT_UDP_PORT,
    seconds: float = 3.0,
    *,
    rate: float = 200.0,
    size: int = 64,
    source: str | None = None,
) -> UdpRun:
    """Start a receiver in ``receiver_pod`` (on ``port`` of its IP) and a sender in ``sender_pod``
    sending ``seconds * rate`` numbered ``size``-byte datagrams at ``rate`` a second (from address
    ``source`` if given); returns at once, :meth:`UdpRun.result` collects the report."""
    return UdpRun(receiver_pod, sender_pod, port, seconds, rate, size, source)


def udp_stream(
    receiver_pod: Endpoint,
    sender_pod: Endpoint,
    port: int = DEFAULT_UDP_PORT,
    seconds: float = 3.0,
    *,
    rate: float = 200.0,
    size: int = 64,
    source: str | None = None,
) -> UdpResult:
    """Run a paced UDP stream for ``seconds`` s and return its report (see :class:`UdpResult`)."""
    return start_udp_stream(receiver_pod, sender_pod, port, seconds, rate=rate, size=size, source=source).result()


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
