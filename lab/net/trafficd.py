"""Stand-alone traffic endpoints run inside lab pods (stdlib only; ``python -I -S trafficd.py``).

Modes (every one bounded by ``--deadline`` seconds of wall time, after which it exits by itself):

- ``echo-server`` / ``sink-server``: listen on ``--port``, print ``ready``, serve one connection
  (echo everything back / count bytes and print ``{"bytes", "seconds"}`` as JSON).
- ``stream-client``: send sequence-numbered chunks every ``--interval`` s for ``--seconds`` s to an
  echo server, check the echoes' order and timing, print a JSON report (see :func:`stream_client`).
- ``bulk-client``: send as fast as possible for ``--seconds`` s, print ``{"bytes", "seconds"}``.
- ``udp-receiver`` / ``udp-sender``: ``--count`` sequence-numbered UDP datagrams at ``--rate`` per
  second; the receiver (bound to ``--port``, prints ``ready``) reports every sequence number that
  did not arrive, duplicates and reorders (see :class:`UdpTally`), the sender how late it ran.

Time stamps in the reports (``started``, ``ended``) are ``time.monotonic()``: CLOCK_MONOTONIC, which
network namespaces share with the process that started the tool, so it can place them on its own
clock.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import threading
import time
from typing import Any

HEADER = struct.Struct("!QI")  # sequence number, payload length
UDP_HEADER = struct.Struct("!QQ")  # sequence number, datagrams in the stream
BULK_BUFFER = 256 * 1024
#: Most missing-sequence ranges a UDP report lists (the count is always exact).
MAX_RANGES = 100


def _listen(port: int, deadline: float) -> socket.socket:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(1)
    srv.settimeout(max(0.1, deadline - time.monotonic()))
    print("ready", flush=True)
    return srv


def echo_server(port: int, deadline: float) -> dict[str, Any]:
    """Echo one connection's bytes back until EOF or the deadline."""
    total = 0
    with _listen(port, deadline) as srv:
        conn, _ = srv.accept()
        with conn:
            while time.monotonic() < deadline:
                conn.settimeout(max(0.05, deadline - time.monotonic()))
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)
                total += len(data)
    return {"bytes": total}


def sink_server(port: int, deadline: float) -> dict[str, Any]:
    """Count one connection's bytes until EOF or the deadline; time from first byte to EOF."""
    total = 0
    first = last = 0.0
    with _listen(port, deadline) as srv:
        conn, _ = srv.accept()
        with conn:
            buf = bytearray(BULK_BUFFER)
            while time.monotonic() < deadline:
                conn.settimeout(max(0.05, deadline - time.monotonic()))
                n = conn.recv_into(buf)
                now = time.monotonic()
                if not n:
                    break
                if not total:
                    first = now
                total += n
                last = now
    return {"bytes": total, "seconds": max(last - first, 1e-9)}


def _connect(host: str, port: int, deadline: float, connect_timeout: float) -> socket.socket:
    last_error: OSError | None = None
    give_up = min(deadline, time.monotonic() + connect_timeout)
    while time.monotonic() < give_up:
        try:
            return socket.create_connection((host, port), timeout=max(0.05, give_up - time.monotonic()))
        except OSError as exc:  # the server may be a moment late; retry until the budget is spent
            last_error = exc
            time.sleep(0.05)
    raise last_error or TimeoutError(f"could not connect to {host}:{port}")


def stream_client(
    host: str,
    port: int,
    seconds: float,
    chunk: int,
    interval: float,
    gap: float,
    deadline: float,
    connect_timeout: float,
) -> dict[str, Any]:
    """Paced sequence-numbered chunks to an echo server; report what came back and every *gap* (a
    pause longer than ``gap`` s between consecutive echoed chunks, or before the first one)."""
    report: dict[str, Any] = {
        "bytes_sent": 0,
        "bytes_received": 0,
        "chunks_sent": 0,
        "chunks_received": 0,
        "out_of_order": 0,
        "gaps": [],
        "longest_gap": 0.0,
        "error": None,
    }
    payload = bytes(max(0, chunk - HEADER.size))
    sock = _connect(host, port, deadline, connect_timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    start = time.monotonic()
    report["started"] = start
    send_error: list[str] = []

    def sender() -> None:
        seq = 0
        try:
            while True:
                due = start + seq * interval
                now = time.monotonic()
                if due - start >= seconds or now >= deadline:
                    break
                if due > now:
                    time.sleep(due - now)
                sock.sendall(HEADER.pack(seq, len(payload)) + payload)
                report["bytes_sent"] += HEADER.size + len(payload)
                report["chunks_sent"] = seq = seq + 1
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            send_error.append(f"send: {exc}")

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    buf = bytearray()
    expected = 0
    last_arrival = start
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            data = sock.recv(65536)
            if not data:
                break
            report["bytes_received"] += len(data)
            buf += data
            while len(buf) >= HEADER.size:
                seq, length = HEADER.unpack_from(buf)
                if len(buf) < HEADER.size + length:
                    break
                del buf[: HEADER.size + length]
                now = time.monotonic()
                if now - last_arrival > gap:
                    report["gaps"].append([round(last_arrival - start, 4), round(now - last_arrival, 4)])
                report["longest_gap"] = max(report["longest_gap"], round(now - last_arrival, 4))
                last_arrival = now
                if seq != expected:
                    report["out_of_order"] += 1
                expected = seq + 1
                report["chunks_received"] += 1
        else:
            report["error"] = "deadline reached before the echo stream ended"
    except OSError as exc:
        report["error"] = f"receive: {exc}"
    finally:
        sock.close()
    thread.join(timeout=max(0.1, deadline - time.monotonic()))
    if send_error and report["error"] is None:
        report["error"] = send_error[0]
    report["seconds"] = time.monotonic() - start
    return report


class UdpTally:
    """What a UDP receiver saw of a stream of ``count`` datagrams numbered ``0 .. count-1``.

    :meth:`add` takes each datagram's sequence number and arrival time: a number seen before is a
    duplicate, one below the highest seen so far (and new) a reorder; the longest pause between two
    new datagrams is ``max_gap``. :meth:`report` lists what never arrived as ``[first, last]``
    ranges (at most :data:`MAX_RANGES`; ``missing`` counts them all).
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self._seen = bytearray(count)
        self.received = self.duplicates = self.reordered = self.invalid = 0
        self.highest = -1
        self.first = self.last = 0.0
        self.max_gap = 0.0

    @property
    def complete(self) -> bool:
        return self.received == self.count

    def add(self, seq: int, now: float) -> None:
        if not 0 <= seq < self.count:
            self.invalid += 1
            return
        if self._seen[seq]:
            self.duplicates += 1
            return
        self._seen[seq] = 1
        if self.received:
            self.max_gap = max(self.max_gap, now - self.last)
        else:
            self.first = now
        self.received += 1
        self.last = now
        if seq < self.highest:
            self.reordered += 1
        self.highest = max(self.highest, seq)

    def missing_ranges(self) -> list[list[int]]:
        ranges: list[list[int]] = []
        start = self._seen.find(0)
        while start != -1:
            end = self._seen.find(1, start)
            end = self.count if end == -1 else end
            ranges.append([start, end - 1])
            start = self._seen.find(0, end)
        return ranges

    def report(self) -> dict[str, Any]:
        ranges = self.missing_ranges()
        return {
            "count": self.count,
            "received": self.received,
            "missing": sum(b - a + 1 for a, b in ranges),
            "missing_ranges": ranges[:MAX_RANGES],
            "duplicates": self.duplicates,
            "reordered": self.reordered,
            "invalid": self.invalid,
            "max_gap": round(self.max_gap, 4),
            "started": self.first if self.received else None,
            "ended": self.last if self.received else None,
        }


def udp_receiver(port: int, count: int, deadline: float, idle: float) -> dict[str, Any]:
    """Receive a :func:`udp_sender` stream on ``port`` until every datagram arrived, nothing new
    arrived for ``idle`` s after the first one, or the deadline; report it (:class:`UdpTally`)."""
    tally = UdpTally(count)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        sock.bind(("0.0.0.0", port))
        print("ready", flush=True)
        while not tally.complete:
            now = time.monotonic()
            wait = deadline - now if not tally.received else min(deadline - now, tally.last + idle - now)
            if wait <= 0:
                break
            sock.settimeout(wait)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if len(data) >= UDP_HEADER.size:
                tally.add(UDP_HEADER.unpack_from(data)[0], time.monotonic())
            else:
                tally.invalid += 1
    out = tally.report()
    out["error"] = None if tally.received else "no datagram arrived"
    return out


def udp_sender(
    host: str, port: int, count: int, rate: float, size: int, deadline: float, source: str | None
) -> dict[str, Any]:
    """Send ``count`` datagrams of ``size`` bytes to ``host:port``, datagram ``n`` due at
    ``start + n / rate`` (a late one goes at once, the schedule is kept); report how many went, the
    send errors (e.g. no route) and the latest a datagram went after it was due."""
    payload = bytes(max(0, size - UDP_HEADER.size))
    sent = errors = 0
    max_late = 0.0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        if source:
            sock.bind((source, 0))
        start = time.monotonic()
        while sent < count:
            due = start + sent / rate
            now = time.monotonic()
            if now >= deadline:
                break
            if due > now:
                time.sleep(due - now)
            else:
                max_late = max(max_late, now - due)
            try:
                sock.sendto(UDP_HEADER.pack(sent, count) + payload, (host, port))
            except OSError:
                errors += 1
            sent += 1
        ended = time.monotonic()
    error = None if sent == count else f"deadline reached after {sent} of {count} datagrams"
    return {
        "sent": sent,
        "send_errors": errors,
        "max_late": round(max_late, 4),
        "started": start,
        "ended": ended,
        "error": error,
    }


def bulk_client(host: str, port: int, seconds: float, deadline: float, connect_timeout: float) -> dict[str, Any]:
    """Send zeros as fast as possible for ``seconds``."""
    buf = bytes(BULK_BUFFER)
    total = 0
    with _connect(host, port, deadline, connect_timeout) as sock:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        start = time.monotonic()
        end = min(start + seconds, deadline)
        while time.monotonic() < end:
            total += sock.send(buf)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)  # wait for the server's close: every byte has been read by then
        return {"bytes": total, "seconds": time.monotonic() - start}


def main(argv: list[str]) -> int:
    """Entry point; prints one JSON line with the mode's result (``{"error": ...}`` on failure)."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "mode", choices=["echo-server", "sink-server", "stream-client", "bulk-client", "udp-receiver", "udp-sender"]
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument("--gap", type=float, default=0.2)
    p.add_argument("--connect-timeout", type=float, default=3.0)
    p.add_argument("--count", type=int, default=0, help="UDP: datagrams in the stream")
    p.add_argument("--rate", type=float, default=200.0, help="UDP: datagrams per second")
    p.add_argument("--size", type=int, default=64, help="UDP: datagram payload bytes")
    p.add_argument("--source", default=None, help="UDP: the sender's source address")
    p.add_argument("--idle", type=float, default=5.0, help="UDP: receiver's quiet seconds before it gives up")
    p.add_argument("--deadline", type=float, required=True, help="seconds of wall time before giving up")
    a = p.parse_args(argv)
    deadline = time.monotonic() + a.deadline
    try:
        if a.mode == "echo-server":
            out = echo_server(a.port, deadline)
        elif a.mode == "sink-server":
            out = sink_server(a.port, deadline)
        elif a.mode == "udp-receiver":
            out = udp_receiver(a.port, a.count, deadline, a.idle)
        elif a.mode == "udp-sender":
            out = udp_sender(a.host, a.port, a.count, a.rate, a.size, deadline, a.source)
        elif a.mode == "stream-client":
            out = stream_client(a.host, a.port, a.seconds, a.chunk, a.interval, a.gap, deadline, a.connect_timeout)
        else:
            out = bulk_client(a.host, a.port, a.seconds, deadline, a.connect_timeout)
    except OSError as exc:
        out = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out), flush=True)
    return 0 if out.get("error") is None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
