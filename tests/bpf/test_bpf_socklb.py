"""cgroup v2 socket load-balancing for real: a process in a test cgroup (and in a namespace with
only loopback, so an untranslated frontend routes nowhere) connects to a frontend and lands on a
backend listening on 127.0.0.x, chosen by the service maps and the affinity."""

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

FRONTEND = ("10.96.0.10", 80)
BACKENDS = [  # (id, ip, port, local)
    (1, "127.0.0.2", 9001, True),
    (2, "127.0.0.3", 9002, True),
    (3, "127.0.0.4", 9003, False),
]

# Runs inside the namespace and the cgroup: serve every backend, then connect N times.
CLIENT = r"""
import json, socket, sys, threading
fe_ip, fe_port, n, backends = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
def serve_tcp(s, name):
    for _ in range(n):
        try:
            c, _ = s.accept()
        except OSError:
            return
        c.sendall(name.encode()); c.close()
def serve_udp(s, name):
    for _ in range(n):
        try:
            data, peer = s.recvfrom(100)
        except OSError:
            return
        s.sendto(name.encode(), peer)
for ip, port in backends:
    t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((ip, port)); t.listen(64); t.settimeout(5)
    threading.Thread(target=serve_tcp, args=(t, f"{ip}:{port}"), daemon=True).start()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((ip, port)); u.settimeout(5)
    threading.Thread(target=serve_udp, args=(u, f"{ip}:{port}"), daemon=True).start()
out = {"tcp": [], "udp": []}
for _ in range(n):
    try:
        c = socket.create_connection((fe_ip, fe_port), timeout=2)
        out["tcp"].append(c.recv(100).decode()); c.close()
    except OSError as e:
        out["tcp"].append(f"error:{e.errno}")
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)
try:
    u.sendto(b"hi", (fe_ip, fe_port))
    data, peer = u.recvfrom(100)
    out["udp"].append([data.decode(), f"{peer[0]}:{peer[1]}"])
except OSError as e:
    out["udp"].append(f"error:{e.errno}")
print(json.dumps(out))
"""


def _client(ns: str, cgroup: Path, n: int) -> dict[str, list[object]]:
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
            FRONTEND[0],
            str(FRONTEND[1]),
            str(n),
            json.dumps([[ip, port] for _, ip, port, _ in BACKENDS]),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=join_cgroup,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _program(dp: Datapath, affinity: Affinity, backends: list[tuple[int, str, int, bool]] = BACKENDS) -> None:
    for proto in ("TCP", "UDP"):
        fe = frontend_key(*FRONTEND, proto)
        members = [
            ServiceBackend(i, ip, port, PROTOCOLS[proto], 1 if local else 2, local) for i, ip, port, local in backends
        ]
        write_service(dp.maps, fe, plan_service(fe, members, affinity))


def test_connect4_affinity_and_udp_reverse_nat(pin_root: Path, netns: Callable[[str], str], cgroup: Path) -> None:
    ns = netns("client")
    with Datapath.load("lb1", pin_root, DatapathConfig(cgroup=str(cgroup))) as dp:
        local = {"127.0.0.2:9001", "127.0.0.3:9002"}

        _program(dp, Affinity.LOCAL)
        out = _client(ns, cgroup, 12)
        assert set(out["tcp"]) <= local and len(out["tcp"]) == 12, out
        # UDP: sent to the frontend, served by a backend, the reply appears to come from the frontend.
        (reply,) = out["udp"]
        assert isinstance(reply, list) and reply[0] in local and reply[1] == "10.96.0.10:80", out

        _program(dp, Affinity.REMOTE)
        assert set(_client(ns, cgroup, 6)["tcp"]) == {"127.0.0.4:9003"}

        _program(dp, Affinity.NONE)
        seen = Counter(_client(ns, cgroup, 30)["tcp"])
        assert set(seen) <= local | {"127.0.0.4:9003"} and len(seen) >= 2, seen

        # Affinity local with every local backend unhealthy (not in the slots): remote fallback.
        _program(dp, Affinity.LOCAL, [(3, "127.0.0.4", 9003, False)])
        assert set(_client(ns, cgroup, 4)["tcp"]) == {"127.0.0.4:9003"}
        assert dp.maps.services.get(frontend_key(*FRONTEND)) is not None

        # No backend at all: the connect is refused (EPERM), never sent to the frontend address.
        _program(dp, Affinity.LOCAL, [])
        assert _client(ns, cgroup, 2)["tcp"] == ["error:1", "error:1"]
        counters = dp.maps.counters()
        assert counters[(Reason.LB_NO_BACKEND, Direction.EGRESS)][0] >= 2
        assert counters[(Reason.LB_TRANSLATED, Direction.EGRESS)][0] >= 52
        assert counters[(Reason.LB_REVNAT, Direction.INGRESS)][0] >= 1

        delete_service(dp.maps, frontend_key(*FRONTEND))
        assert dp.maps.services.get(frontend_key(*FRONTEND)) is None
        dp.detach_cgroup()
