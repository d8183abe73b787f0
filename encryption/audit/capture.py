"""Capture on one interface for a while and summarise what crossed it between mesh endpoints.

An ``AF_PACKET``/``SOCK_RAW`` socket bound to one interface of the current network namespace sees
every frame the interface receives and sends (``PACKET_OUTGOING``), each once; on a loopback
device a sent frame also comes back as received, so there outgoing frames are skipped. Only the
first :data:`SNAPLEN` bytes of a frame are read (``MSG_TRUNC`` still gives its full length): the
headers are all :func:`~encryption.audit.classify.classify` needs. The capture stops after
``duration`` seconds or ``max_packets`` frames, whichever comes first.

Run inside a node (``kubectl exec`` into the agent pod, which has the host's network)::

    python -m encryption.audit.capture --node-ip 172.18.0.2 --duration 10 --plan-json - -o json < plan.json

It prints one JSON document (:meth:`CaptureResult.to_json`). Exit status: 0 once captured
(whatever was seen: the verdict is the report's), 1 when the capture cannot run (no such
interface, no address, no permission), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from encryption.audit.classify import PLAINTEXT_POD, AuditPlan, classify

__all__ = [
    "MAX_DURATION",
    "MAX_PACKETS",
    "SNAPLEN",
    "CaptureError",
    "CaptureResult",
    "Frame",
    "capture",
    "interface_for_ip",
    "main",
    "summarise",
]

ETH_P_ALL: Final = 0x0003
SOL_PACKET: Final = 263
PACKET_STATISTICS: Final = 6
PACKET_OUTGOING: Final = 4
ARPHRD_ETHER, ARPHRD_LOOPBACK = 1, 772
SNAPLEN: Final = 512
MAX_PACKETS: Final = 200_000
MAX_DURATION: Final = 600.0
FIRST_FLOWS: Final = 20
RCVBUF: Final = 8 * 1024 * 1024

#: One captured frame: (bytes, full length on the wire, hatype, pkttype).
Frame = tuple[bytes, int, int, int]
#: Waits at most ``timeout`` seconds for the next frame (None: none came).
Receive = Callable[[float], Frame | None]


class CaptureError(Exception):
    """The capture cannot run; the message names the interface and the cause."""


@dataclass
class CaptureResult:
    """What one capture point saw: counts per (source owner, destination owner, class) and the
    first plaintext pod flows (distinct, with their packet counts)."""

    interface: str
    node_ip: str | None
    duration: float = 0.0
    frames: int = 0
    considered: int = 0
    stopped: str = "duration"
    drops: int = 0
    counts: dict[tuple[str, str, str], list[int]] = field(default_factory=dict)
    flows: dict[tuple[str, ...], dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "interface": self.interface, "node_ip": self.node_ip, "duration": round(self.duration, 3),
            "frames": self.frames, "considered": self.considered, "stopped": self.stopped, "drops": self.drops,
            "counts": [{"src": s, "dst": d, "class": c, "packets": n, "bytes": b}
                       for (s, d, c), (n, b) in sorted(self.counts.items())],
            "plaintext_flows": list(self.flows.values()),
        }  # fmt: skip


def summarise(receive: Receive, plan: AuditPlan, *, duration: float, max_packets: int = MAX_PACKETS,
              raw_ip: bool | None = None, first_flows: int = FIRST_FLOWS, interface: str = "",
              node_ip: str | None = None, clock: Callable[[], float] = time.monotonic) -> CaptureResult:
    """Classify frames from ``receive`` until ``duration`` passed or ``max_packets`` came.

    ``raw_ip``: frames are IP packets (None: decide per frame by its hatype, Ethernet for
    Ethernet and loopback devices, IP for the others, as WireGuard or tun devices give)."""
    result = CaptureResult(interface, node_ip)
    start = clock()
    deadline = start + duration
    while True:
        remaining = deadline - clock()
        if remaining <= 0:
            break
        if result.frames >= max_packets:
            result.stopped = "max-packets"
            break
        frame = receive(remaining)
        if frame is None:
            continue
        data, length, hatype, pkttype = frame
        if hatype == ARPHRD_LOOPBACK and pkttype == PACKET_OUTGOING:
            continue  # seen again as received
        result.frames += 1
        raw = raw_ip if raw_ip is not None else hatype not in (ARPHRD_ETHER, ARPHRD_LOOPBACK)
        got = classify(data, plan, raw_ip=raw)
        if got is None:
            continue
        result.considered += 1
        entry = result.counts.setdefault((got.src_node, got.dst_node, got.cls), [0, 0])
        entry[0] += 1
        entry[1] += length
        if got.cls == PLAINTEXT_POD and got.flow is not None:
            key = (got.src_node, got.dst_node, got.via or "", str(got.flow))
            seen = result.flows.get(key)
            if seen is not None:
                seen["packets"] += 1
            elif len(result.flows) < first_flows:
                result.flows[key] = {"src_node": got.src_node, "dst_node": got.dst_node, "outer_src": got.src,
                                     "outer_dst": got.dst, "via": got.via, **got.flow.to_json(), "packets": 1}
    result.duration = clock() - start
    return result


def interface_for_ip(ip: str) -> str:
    """The interface of the current network namespace holding address ``ip``."""
    from pyroute2 import IPRoute  # only the capture needs netlink

    with IPRoute() as ipr:
        addrs = ipr.get_addr(address=ip) if ":" not in ip else [
            a for a in ipr.get_addr(family=socket.AF_INET6) if a.get_attr("IFA_ADDRESS") == ip]
        for addr in addrs:
            return socket.if_indextoname(int(addr["index"]))
    raise CaptureError(f"no interface in this network namespace holds {ip} (is this the node's own namespace?)")


def _open(interface: str) -> socket.socket:
    # Protocol 0 receives nothing until bound: no frame of another interface is queued meanwhile.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind((interface, ETH_P_ALL))
    except BaseException:
        sock.close()
        raise
    return sock


def _drops(sock: socket.socket) -> int:
    try:
        _, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    except OSError:
        return 0
    return int(drops)


def capture(interface: str, plan: AuditPlan, *, duration: float, max_packets: int = MAX_PACKETS,
            raw_ip: bool | None = None, first_flows: int = FIRST_FLOWS, node_ip: str | None = None) -> CaptureResult:
    """Capture on ``interface`` (see :func:`summarise`); raises :class:`CaptureError`."""
    try:
        sock = _open(interface)
    except PermissionError:
        raise CaptureError(f"no permission to open a packet socket on {interface}: it needs CAP_NET_RAW") from None
    except OSError as err:
        raise CaptureError(f"cannot capture on {interface}: {err.strerror or err}") from None
    buf = bytearray(SNAPLEN)
    view = memoryview(buf)

    def receive(timeout: float) -> Frame | None:
        sock.settimeout(timeout)
        try:
            length, addr = sock.recvfrom_into(view, SNAPLEN, socket.MSG_TRUNC)
        except TimeoutError:
            return None
        return bytes(view[:min(length, SNAPLEN)]), length, int(addr[3]), int(addr[2])

    try:
        _drops(sock)  # reading the statistics resets them: count from here
        result = summarise(receive, plan, duration=duration, max_packets=max_packets, raw_ip=raw_ip,
                           first_flows=first_flows, interface=interface, node_ip=node_ip)
        result.drops = _drops(sock)
    except OSError as err:
        raise CaptureError(f"capture on {interface} failed: {err.strerror or err}") from None
    finally:
        sock.close()
    return result


def _read_plan(value: str) -> AuditPlan:
    if value == "-":
        text = sys.stdin.read()
    elif value.lstrip().startswith("{"):
        text = value
    else:
        text = Path(value).read_text()
    return AuditPlan.from_json(json.loads(text))


def _duration(value: str) -> float:
    seconds = float(value)
    if not 0 < seconds <= MAX_DURATION:
        raise argparse.ArgumentTypeError(f"{value}: must be more than 0 and at most {MAX_DURATION:g} seconds")
    return seconds


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m encryption.audit.capture",
                                description="Capture on one interface and classify the packets between mesh endpoints.")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--interface", help="interface to capture on")
    where.add_argument("--node-ip", help="capture on the interface holding this address (the node's InternalIP)")
    p.add_argument("--duration", type=_duration, default=10.0, help="seconds to capture (default 10)")
    p.add_argument("--max-packets", type=int, default=MAX_PACKETS, help=f"stop after this many frames ({MAX_PACKETS})")
    p.add_argument("--plan-json", required=True,
                   help="the plan (node IPs, pod CIDRs, WireGuard ports): a file, - for stdin, or the JSON itself")
    p.add_argument("--raw-ip", action="store_true", help="frames are IP packets without a link header")
    p.add_argument("--flows", type=int, default=FIRST_FLOWS, help="plaintext pod flows to keep (default 20)")
    p.add_argument("-o", "--output", choices=("json", "text"), default="json")
    return p


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    args = _parser().parse_args(argv)
    if args.max_packets < 1 or args.flows < 0:
        print("error: --max-packets must be at least 1 and --flows not negative", file=sys.stderr)
        return 2
    try:
        plan = _read_plan(args.plan_json)
    except (OSError, ValueError) as err:
        print(f"error: --plan-json: {err}", file=sys.stderr)
        return 2
    try:
        interface = args.interface or interface_for_ip(args.node_ip)
        result = capture(interface, plan, duration=args.duration, max_packets=args.max_packets,
                         raw_ip=True if args.raw_ip else None, first_flows=args.flows, node_ip=args.node_ip)
    except CaptureError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    doc = result.to_json()
    if args.output == "json":
        print(json.dumps(doc), flush=True)
    else:
        print(f"{doc['interface']}: {doc['frames']} frames in {doc['duration']:g}s, {doc['considered']} between mesh "
              f"endpoints, {doc['drops']} dropped (stopped by {doc['stopped']})")
        for c in doc["counts"]:
            print(f"  {c['src']} -> {c['dst']}  {c['class']}: {c['packets']} packets, {c['bytes']} bytes")
        for f in doc["plaintext_flows"]:
            print(f"  plaintext: {f['src_node']} -> {f['dst_node']} via {f['via']}: {f['proto']} {f['src']}:"
                  f"{f['sport']} -> {f['dst']}:{f['dport']} ({f['packets']} packets)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
