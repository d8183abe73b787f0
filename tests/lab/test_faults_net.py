"""Partitions and packet loss on a real lab topology: clusters c1 and c2 of two nodes and a third
cluster c3 of one node on one underlay bridge, pods behind c1.n0, c1.n1 and c2.n0, and the
hand-built native mesh (pod IPs carried by the underlay between nodes)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from lab import faults
from lab.faults import FaultError, FaultRecord, InvalidFault, NodeRef, UnknownFault
from lab.faults.losses import installed_filters
from lab.net import Node, Pod, Topology, ping, run_in, start_tcp_stream, unique_prefix


def _bcc_missing() -> bool:
    try:
        import bcc  # noqa: F401
    except ImportError:
        return True
    return False


pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or not (shutil.which("nft") or os.path.exists("/usr/sbin/nft")),
    reason="needs root, iproute2 and nftables for network namespaces",
)
needs_bcc = pytest.mark.skipif(_bcc_missing() or shutil.which("tc") is None, reason="packet loss needs bcc and tc")


class Lab:
    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.ns = topo.underlay_ns

    def node(self, name: str) -> Node:
        cluster, node = name.split(".")
        return self.topo.node(cluster, node)

    def ref(self, *names: str) -> list[NodeRef]:
        return [NodeRef.of(self.node(n)) for n in names]

    def cluster(self, name: str) -> list[NodeRef]:
        return [NodeRef.of(n) for n in self.topo.nodes if n.cluster == name]

    def pod(self, node: str) -> Pod:
        return self.topo.pods_of(self.node(node))[0]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Topology(unique_prefix("fl")) as topo:
        for cid, count in ((1, 2), (2, 2), (3, 1)):
            cluster = topo.add_cluster(f"c{cid}", cid)
            for i in range(count):
                node = topo.add_node(cluster, f"n{i}")
                if cid < 3 and (cid, i) != (2, 1):
                    topo.add_pod(node, f"p{cid}{i}")
        topo.hand_built_native()
        yield Lab(topo)


@pytest.fixture(autouse=True)
def no_faults_left(lab: Lab) -> Iterator[None]:
    faults.clear_all(lab.ns)
    yield
    faults.clear_all(lab.ns)


def reaches(lab: Lab, src: str, dst: str) -> bool:
    """One ping from node ``src`` to node ``dst``'s underlay IP."""
    proc = run_in(lab.node(src).ns, "ping", "-n", "-q", "-c", "1", "-W", "0.5", str(lab.node(dst).underlay_ip),
                  check=False, timeout=5)  # fmt: skip
    return proc.returncode == 0


def reach_map(lab: Lab, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], bool]:
    with ThreadPoolExecutor(max_workers=len(pairs)) as pool:
        return dict(zip(pairs, pool.map(lambda p: reaches(lab, *p), pairs), strict=True))


def both_ways(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [*pairs, *((b, a) for a, b in pairs)]


C1, C2 = ["c1.n0", "c1.n1"], ["c2.n0", "c2.n1"]
CROSS_C1_C2 = both_ways([(a, b) for a in C1 for b in C2])
INSIDE = both_ways([("c1.n0", "c1.n1"), ("c2.n0", "c2.n1")])
TO_C3 = both_ways([(x, "c3.n0") for x in (*C1, *C2)])


def assert_reach(lab: Lab, expected: dict[tuple[str, str], bool]) -> None:
    got = reach_map(lab, list(expected))
    wrong = {pair: ok for pair, ok in got.items() if ok != expected[pair]}
    assert not wrong, f"reachability differs from the expected (pair: got): {wrong}"


def icmp_counters(ns: str) -> dict[str, int]:
    lines = [
        line.split() for line in run_in(ns, "cat", "/proc/net/snmp").stdout.splitlines() if line.startswith("Icmp:")
    ]
    return dict(zip(lines[0][1:], map(int, lines[1][1:]), strict=True))


def ping_run(lab: Lab, src: str, dst: str, count: int) -> tuple[int, int, int]:
    """``count`` fast pings from node ``src`` to node ``dst``; returns how many echo requests reached
    ``dst`` and how many replies it sent (its ICMP counters) and how many replies reached ``src``."""
    dst_ns = lab.node(dst).ns
    before = icmp_counters(dst_ns)
    out = run_in(lab.node(src).ns, "ping", "-n", "-q", "-c", str(count), "-i", "0.005", "-W", "1",
                 str(lab.node(dst).underlay_ip), check=False, timeout=30).stdout  # fmt: skip
    after = icmp_counters(dst_ns)
    match = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert match and int(match.group(1)) == count, out
    return after["InEchos"] - before["InEchos"], after["OutEchoReps"] - before["OutEchoReps"], int(match.group(2))


@contextlib.contextmanager
def static_neighbours(lab: Lab, a: str, b: str) -> Iterator[None]:
    """Permanent neighbour entries between nodes ``a`` and ``b`` (removed on exit), so that pings
    leave whatever happens to ARP: a run under a fault measures the pings, not address resolution."""
    made: list[tuple[Node, Node]] = [(lab.node(a), lab.node(b)), (lab.node(b), lab.node(a))]
    try:
        for here, there in made:
            run_in(here.ns, "ip", "neigh", "replace", str(there.underlay_ip), "lladdr", there.underlay_mac,
                   "dev", here.underlay_ifname, "nud", "permanent")  # fmt: skip
        yield
    finally:
        for here, there in made:
            run_in(here.ns, "ip", "neigh", "del", str(there.underlay_ip), "dev", here.underlay_ifname, check=False)


# --- partitions -----------------------------------------------------------------------------------


def test_partition_cuts_nodes_pods_and_an_established_connection_both_ways_and_heals(lab: Lab) -> None:
    assert_reach(lab, dict.fromkeys(CROSS_C1_C2 + INSIDE + TO_C3, True))
    client, server, mate = lab.pod("c1.n0"), lab.pod("c2.n0"), lab.pod("c1.n1")
    assert ping(client, server.ip) and ping(server, client.ip)
    stream = start_tcp_stream(server, client, seconds=8.0)
    time.sleep(1.0)

    faults.partition(lab.ns, lab.cluster("c1"), lab.cluster("c2"), name="c1-c2")
    cut = time.monotonic()
    expected = {**dict.fromkeys(CROSS_C1_C2, False), **dict.fromkeys(INSIDE + TO_C3, True)}
    assert_reach(lab, expected)
    with static_neighbours(lab, "c1.n0", "c2.n0"):  # so requests do leave, and are cut on the way
        assert ping_run(lab, "c1.n0", "c2.n0", 5) == (0, 0, 0)
        assert ping_run(lab, "c2.n0", "c1.n0", 5) == (0, 0, 0)
    # Pod IPs routed natively across the underlay are cut too; pods inside c1 still talk.
    assert not ping(client, server.ip, timeout=0.5) and not ping(server, client.ip, timeout=0.5)
    assert ping(client, mate.ip)
    [record] = faults.active_faults(lab.ns)
    assert (record.kind, record.name) == ("partition", "c1-c2")
    assert record.a == tuple(sorted(n.underlay_mac for n in lab.cluster("c1")))
    assert record.b == tuple(sorted(n.underlay_mac for n in lab.cluster("c2")))
    assert record.dropped and record.dropped > 0
    time.sleep(max(0.0, cut + 2.0 - time.monotonic()))

    faults.heal(lab.ns, name="c1-c2")
    healed = time.monotonic()
    result = stream.result()
    assert result.error is None, result
    # The connection made before the partition survived it: everything sent came back, in order,
    # after one stall at least as long as the partition (nothing passed meanwhile).
    assert result.bytes_received == result.bytes_sent > 0 and result.out_of_order == 0, result
    assert result.max_gap >= healed - cut - 0.1, (result.gaps, healed - cut)
    assert_reach(lab, dict.fromkeys(CROSS_C1_C2 + INSIDE + TO_C3, True))
    assert faults.active_faults(lab.ns) == []


def test_two_partitions_coexist_and_heal_independently(lab: Lab) -> None:
    faults.partition(lab.ns, lab.cluster("c1"), lab.cluster("c2"), name="p1")
    faults.partition(lab.ns, lab.ref("c1.n0"), lab.ref("c2.n0", "c3.n0"), name="p2")  # overlaps p1
    both = {
        **dict.fromkeys(CROSS_C1_C2, False),
        **dict.fromkeys(both_ways([("c1.n0", "c3.n0")]), False),
        **dict.fromkeys(both_ways([("c1.n1", "c3.n0"), ("c2.n0", "c3.n0"), ("c2.n1", "c3.n0")]), True),
        **dict.fromkeys(INSIDE, True),
    }
    assert_reach(lab, both)
    assert [(r.kind, r.name) for r in faults.active_faults(lab.ns)] == [("partition", "p1"), ("partition", "p2")]

    faults.heal(lab.ns, name="p1")
    only_p2 = {
        **dict.fromkeys(both_ways([("c1.n0", "c2.n0"), ("c1.n0", "c3.n0")]), False),
        **dict.fromkeys(both_ways([("c1.n0", "c2.n1"), ("c1.n1", "c2.n0"), ("c1.n1", "c2.n1")]), True),
        **dict.fromkeys([p for p in TO_C3 if "c1.n0" not in p], True),
    }
    assert_reach(lab, only_p2)
    [record] = faults.active_faults(lab.ns)
    assert record.name == "p2" and record.a == (lab.ref("c1.n0")[0].underlay_mac,)
    assert [str(ip) for ip in record.b_ips] == ["192.168.2.1", "192.168.3.1"]

    with pytest.raises(UnknownFault, match=r"no partition 'p1'.*in place: p2"):
        faults.heal(lab.ns, name="p1")
    faults.heal(lab.ns, name="p2")
    assert_reach(lab, dict.fromkeys(CROSS_C1_C2 + INSIDE + TO_C3, True))


def test_partition_refuses_a_reused_name_and_bad_node_sets(lab: Lab) -> None:
    faults.partition(lab.ns, lab.ref("c1.n0"), lab.ref("c2.n0"), name="p")
    with pytest.raises(InvalidFault, match="in place already"):
        faults.partition(lab.ns, lab.ref("c1.n1"), lab.ref("c2.n1"), name="p")
    with pytest.raises(InvalidFault, match="both sides"):
        faults.partition(lab.ns, lab.ref("c1.n1"), lab.ref("c1.n1"), name="q")
    with pytest.raises(FaultError, match="does not exist"):
        faults.active_faults(lab.ns + "-missing")
    assert faults.clear_all(lab.ns + "-missing") == []
    assert [r.name for r in faults.active_faults(lab.ns)] == ["p"]


# --- loss -----------------------------------------------------------------------------------------


def warm_neighbours(lab: Lab, *pairs: tuple[str, str]) -> None:
    """Resolve the neighbours both ways before a run (no loss in place)."""
    assert all(reach_map(lab, both_ways(list(pairs))).values())


@needs_bcc
def test_loss_drops_about_half_each_way_between_exactly_the_named_nodes(lab: Lab) -> None:
    warm_neighbours(lab, ("c1.n0", "c2.n0"), ("c1.n0", "c1.n1"), ("c1.n1", "c2.n0"))
    with static_neighbours(lab, "c1.n0", "c2.n0"):
        half_loss_between_c1n0_and_c2n0(lab)


def half_loss_between_c1n0_and_c2n0(lab: Lab) -> None:
    faults.loss(lab.ns, lab.ref("c1.n0"), lab.ref("c2.n0"), 50, name="half")
    [record] = faults.active_faults(lab.ns)
    assert record == FaultRecord(
        "loss", "half", (lab.ref("c1.n0")[0].underlay_mac,), (lab.ref("c2.n0")[0].underlay_mac,), percent=50.0
    )

    count = 200
    arrived, replied, back = ping_run(lab, "c1.n0", "c2.n0", count)
    assert 0.25 <= 1 - arrived / count <= 0.75, f"requests: {arrived}/{count} arrived"
    assert replied == arrived and replied > 0
    assert 0.25 <= 1 - back / replied <= 0.75, f"replies: {back}/{replied} arrived"
    # Traffic of the same nodes with nodes not named in the loss loses nothing.
    assert ping_run(lab, "c1.n0", "c1.n1", count) == (count, count, count)
    assert ping_run(lab, "c1.n1", "c2.n0", count) == (count, count, count)

    faults.clear_loss(lab.ns, name="half")
    assert faults.active_faults(lab.ns) == [] and installed_filters(lab.ns) == []
    assert run_in(lab.ns, "tc", "qdisc", "show").stdout.count("clsact") == 0
    assert ping_run(lab, "c1.n0", "c2.n0", count) == (count, count, count)


@needs_bcc
def test_full_loss_drops_everything_both_ways_and_stacks_with_another_loss(lab: Lab) -> None:
    warm_neighbours(lab, ("c1.n0", "c2.n0"), ("c2.n0", "c3.n0"))
    faults.loss(lab.ns, lab.ref("c1.n0", "c1.n1"), lab.ref("c2.n0"), 100, name="all")
    # A second loss on c2.n0's bridge port, behind the first: frames the first keeps go on to it.
    faults.loss(lab.ns, lab.ref("c2.n0"), lab.ref("c3.n0"), 100, name="c2-c3")
    assert ping_run(lab, "c1.n0", "c2.n0", 20) == (0, 0, 0)
    assert ping_run(lab, "c2.n0", "c1.n1", 20) == (0, 0, 0)
    assert ping_run(lab, "c2.n0", "c3.n0", 20) == (0, 0, 0)
    assert ping_run(lab, "c3.n0", "c2.n0", 20) == (0, 0, 0)
    assert ping_run(lab, "c1.n0", "c3.n0", 20) == (20, 20, 20)
    records = faults.active_faults(lab.ns)
    assert [(r.name, r.percent, len(r.a), len(r.b)) for r in records] == [("all", 100.0, 2, 1), ("c2-c3", 100.0, 1, 1)]

    with pytest.raises(InvalidFault, match="in place already"):
        faults.loss(lab.ns, lab.ref("c1.n0"), lab.ref("c3.n0"), 5, name="all")
    with pytest.raises(InvalidFault, match="percentage"):
        faults.loss(lab.ns, lab.ref("c1.n0"), lab.ref("c3.n0"), 0, name="zero")
    with pytest.raises(InvalidFault, match="percentage"):
        faults.loss(lab.ns, lab.ref("c1.n0"), lab.ref("c3.n0"), 100.5, name="over")
    ghost = dataclasses.replace(lab.ref("c3.n0")[0], ns=f"{lab.topo.prefix}-c9.n0", underlay_mac="02:10:c0:a8:09:01")
    with pytest.raises(FaultError, match="does not exist"):
        faults.loss(lab.ns, lab.ref("c1.n0"), [ghost], 5, name="ghost")
    with pytest.raises(UnknownFault, match=r"no loss 'nope'.*in place: all, c2-c3"):
        faults.clear_loss(lab.ns, name="nope")

    faults.clear_loss(lab.ns, name="all")
    assert [r.name for r in faults.active_faults(lab.ns)] == ["c2-c3"]
    assert ping_run(lab, "c1.n0", "c2.n0", 20) == (20, 20, 20)
    assert ping_run(lab, "c2.n0", "c3.n0", 20) == (0, 0, 0)


@needs_bcc
def test_clear_all_removes_partitions_and_losses(lab: Lab) -> None:
    faults.partition(lab.ns, lab.cluster("c1"), lab.cluster("c2"), name="p1")
    faults.partition(lab.ns, lab.cluster("c2"), lab.cluster("c3"), name="p2")
    faults.loss(lab.ns, lab.ref("c1.n0"), lab.ref("c3.n0"), 30, name="l1")
    assert [(r.kind, r.name) for r in faults.active_faults(lab.ns)] == [
        ("partition", "p1"),
        ("partition", "p2"),
        ("loss", "l1"),
    ]
    removed = faults.clear_all(lab.ns)
    assert [r.name for r in removed] == ["p1", "p2", "l1"]
    assert faults.active_faults(lab.ns) == []
    assert "table" not in run_in(lab.ns, "nft", "list", "ruleset").stdout
    assert run_in(lab.ns, "tc", "qdisc", "show").stdout.count("clsact") == 0
    warm_neighbours(lab, ("c1.n0", "c2.n0"), ("c2.n0", "c3.n0"))
    assert ping_run(lab, "c1.n0", "c3.n0", 50) == (50, 50, 50)
