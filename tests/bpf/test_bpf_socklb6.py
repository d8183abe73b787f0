"""cgroup v2 socket load-balancing over IPv6 (connect6/sendmsg6/recvmsg6), for real: a process in
a test cgroup, in a namespace whose only device is loopback (IPv6 enabled there, and only there),
connects to the frontend ``[fd00:96::10]:80`` and lands on a backend listening on ``::1`` or
``fd00:1::x`` (added to that namespace's loopback), chosen by the service maps and the affinity.
IPv4-mapped destinations on IPv6 sockets (``::ffff:10.96.0.10``) use the IPv4 frontends."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from bpf.layouts import PROTOCOLS, Affinity, Direction, Reason, frontend_key
from bpf.loader import Datapath, DatapathConfig
from bpf.services import ServiceBackend, delete_service, plan_service, write_service

Backend = tuple[int, str, int, bool]  # (id, ip, port, local)

FRONTEND6 = ("fd00:96::10", 80)
BACKENDS6: list[Backend] = [
    (11, "::1", 9011, True),
    (12, "fd00:1::2", 9012, True),
    (13, "fd00:1::3", 9013, False),
]
LOCAL6 = {"::1:9011", "fd00:1::2:9012"}
REMOTE6 = {"fd00:1::3:9013"}
FRONTEND4 = ("10.96.0.10", 80)
BACKENDS4: list[Backend] = [(1, "127.0.0.2", 9001, True)]

# Runs inside the namespace and the cgroup: serve every backend (either family), then connect N
# times over TCP, send one unconnected UDP datagram and one on a connected UDP socket.
CLIENT = r"""
import json, socket, sys, threading
fe_ip, fe_port, n, backends = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
def fam(ip):
    return socket.AF_INET6 if ":" in ip else socket.AF_INET
def serve_tcp(s, name):
    for _ in range(n):
        try:
            c, _ = s.accept()
        except OSError:
            return
        c.sendall(name.encode()); c.close()
def serve_udp(s, name):
    for _ in range(2):
        try:
            data, peer = s.recvfrom(100)
        except OSError:
            return
        s.sendto(name.encode(), peer)
for ip, port in backends:
    t = socket.socket(fam(ip)); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((ip, port)); t.listen(64); t.settimeout(5)
    threading.Thread(target=serve_tcp, args=(t, f"{ip}:{port}"), daemon=True).start()
    u = socket.socket(fam(ip), socket.SOCK_DGRAM); u.bind((ip, port)); u.settimeout(5)
    threading.Thread(target=serve_udp, args=(u, f"{ip}:{port}"), daemon=True).start()
out = {"tcp": [], "udp": []}
for _ in range(n):
    try:
        c = socket.socket(socket.AF_INET6); c.settimeout(2)
        c.connect((fe_ip, fe_port))
        out["tcp"].append(c.recv(100).decode()); c.close()
    except OSError as e:
        out["tcp"].append(f"error:{e.errno}")
for connected in (False, True):
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u.settimeout(2)
    try:
        if connected:
            u.connect((fe_ip, fe_port)); u.send(b"hi")
        else:
            u.sendto(b"hi", (fe_ip, fe_port))
        data, peer = u.recvfrom(100)
        out["udp"].append([data.decode(), f"{peer[0]}:{peer[1]}"])
    except OSError as e:
        out["udp"].append(f"error:{e.errno}")
    u.close()
print(json.dumps(out))
"""


def _client_ns(netns: Callable[[str], str], sh: Callable[..., subprocess.CompletedProcess[str]]) -> str:
    """A loopback-only namespace with IPv6 enabled on its loopback and two more v6 addresses."""
    ns = netns("client6")
    sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.lo.disable_ipv6=0")
    for ip in ("fd00:1::2", "fd00:1::3"):
        sh("ip", "-n", ns, "-6", "addr", "add", f"{ip}/128", "dev", "lo", "nodad")
    addrs = sh("ip", "-n", ns, "-6", "-o", "addr", "show", "dev", "lo").stdout
    assert "::1/128" in addrs and "fd00:1::3/128" in addrs, addrs
    return ns


def _client(
    ns: str, cgroup: Path, frontend: tuple[str, int], n: int, backends: list[Backend]
) -> dict[str, list[object]]:
    def join_cgroup() -> None:  # runs in the child before exec: everything after is in the cgroup
        (cgroup / "cgroup.procs").write_text("0\n")

    proc = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            sys.executable,
            "-c",
            CLIENT,
            frontend[0],
            str(frontend[1]),
            str(n),
            json.dumps([[ip, port] for _, ip, port, _ in backends]),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=join_cgroup,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _program(dp: Datapath, frontend: tuple[str, int], affinity: Affinity, backends: list[Backend]) -> None:
    for proto in ("TCP", "UDP"):
        fe = frontend_key(*frontend, proto)
        members = [
            ServiceBackend(i, ip, port, PROTOCOLS[proto], 1 if local else 2, local) for i, ip, port, local in backends
        ]
        write_service(dp.maps, fe, plan_service(fe, members, affinity))


def test_connect6_affinity_and_udp_reverse_nat(
    pin_root: Path,
    netns: Callable[[str], str],
    cgroup: Path,
    sh: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    ns = _client_ns(netns, sh)
    with Datapath.load("lb6", pin_root, DatapathConfig(cgroup=str(cgroup))) as dp:

        def run(n: int, backends: list[Backend] = BACKENDS6) -> dict[str, list[object]]:
            return _client(ns, cgroup, FRONTEND6, n, backends)

        # Not a service yet: the v6 programs pass it through untouched (no route in this namespace).
        untouched = run(1)
        assert untouched["tcp"] == ["error:101"], untouched  # ENETUNREACH

        _program(dp, FRONTEND6, Affinity.LOCAL, BACKENDS6)
        out = run(12)
        assert set(out["tcp"]) <= LOCAL6 and len(out["tcp"]) == 12, out
        # UDP (sendmsg6, then connect6 on a connected socket): served by a backend, the reply
        # appears to come from the frontend (recvmsg6).
        assert len(out["udp"]) == 2, out
        for reply in out["udp"]:
            assert isinstance(reply, list) and reply[0] in LOCAL6 and reply[1] == "fd00:96::10:80", out

        _program(dp, FRONTEND6, Affinity.REMOTE, BACKENDS6)
        assert set(run(6)["tcp"]) == REMOTE6

        _program(dp, FRONTEND6, Affinity.NONE, BACKENDS6)
        seen = Counter(run(30)["tcp"])
        assert set(seen) <= LOCAL6 | REMOTE6 and len(seen) >= 2, seen

        # Affinity local with no healthy local backend: the remote range.
        _program(dp, FRONTEND6, Affinity.LOCAL, [BACKENDS6[2]])
        assert set(run(4, [BACKENDS6[2]])["tcp"]) == REMOTE6
        # Affinity remote with no healthy remote backend: the local range.
        _program(dp, FRONTEND6, Affinity.REMOTE, BACKENDS6[:1])
        assert set(run(4, BACKENDS6[:1])["tcp"]) == {"::1:9011"}

        # An IPv4 backend behind an IPv6 frontend is never used (families do not mix): refused.
        _program(dp, FRONTEND6, Affinity.NONE, BACKENDS4)
        assert run(1, BACKENDS4)["tcp"] == ["error:1"]

        # No backend at all: connect() and sendmsg() are refused (EPERM), never sent to the frontend.
        _program(dp, FRONTEND6, Affinity.LOCAL, [])
        refused = run(2)
        assert refused["tcp"] == ["error:1", "error:1"] and refused["udp"] == ["error:1", "error:1"], refused

        counters = dp.maps.counters()
        assert counters[(Reason.LB_NO_BACKEND, Direction.EGRESS)][0] >= 5
        assert counters[(Reason.LB_TRANSLATED, Direction.EGRESS)][0] >= 58
        assert counters[(Reason.LB_REVNAT, Direction.INGRESS)][0] >= 2

        delete_service(dp.maps, frontend_key(*FRONTEND6))
        delete_service(dp.maps, frontend_key(*FRONTEND6, "UDP"))
        assert dp.maps.services.get(frontend_key(*FRONTEND6)) is None
        dp.detach_cgroup()


def test_v4_mapped_destination_on_v6_socket(
    pin_root: Path,
    netns: Callable[[str], str],
    cgroup: Path,
    sh: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    # Which hook sees what (checked on 6.18): TCP connect() and UDP connect() of a v6 socket to
    # ::ffff:a.b.c.d run connect6 only; an unconnected UDP sendto() to it runs sendmsg4 (the kernel
    # hands it to the IPv4 UDP code first); the reply's ::ffff:backend source runs recvmsg6 only.
    # All of them must agree for the reply to appear to come from ::ffff:10.96.0.10.
    ns = _client_ns(netns, sh)
    with Datapath.load("lb6m", pin_root, DatapathConfig(cgroup=str(cgroup))) as dp:
        _program(dp, FRONTEND4, Affinity.NONE, BACKENDS4)
        out = _client(ns, cgroup, ("::ffff:10.96.0.10", 80), 3, BACKENDS4)
        assert out["tcp"] == ["127.0.0.2:9001"] * 3, out
        assert out["udp"] == [["127.0.0.2:9001", "::ffff:10.96.0.10:80"]] * 2, out

        _program(dp, FRONTEND4, Affinity.NONE, [])
        refused = _client(ns, cgroup, ("::ffff:10.96.0.10", 80), 1, BACKENDS4)
        assert refused["tcp"] == ["error:1"] and refused["udp"] == ["error:1", "error:1"], refused
        dp.detach_cgroup()
