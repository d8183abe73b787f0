"""The numbered UDP stream of :mod:`lab.net.traffic`: the receiver's tally (pure), and a stream
between two pods of a small topology that is exact when nothing is lost and names the lost
datagrams when the path is cut for a moment."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator

import pytest

from lab.net import Pod, Topology, start_tcp_stream, start_udp_stream, udp_stream, unique_prefix
from lab.net.trafficd import MAX_RANGES, UdpTally

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2 for network namespaces"
)


def test_tally_counts_missing_duplicates_and_reorders() -> None:
    tally = UdpTally(10)
    for t, seq in enumerate([0, 1, 3, 2, 2, 6, 7, 12]):
        tally.add(seq, float(t))
    report = tally.report()
    assert (report["received"], report["missing"], report["missing_ranges"]) == (6, 4, [[4, 5], [8, 9]])
    assert (report["duplicates"], report["reordered"], report["invalid"]) == (1, 1, 1)
    assert report["max_gap"] == 2.0 and (report["started"], report["ended"]) == (0.0, 6.0)
    assert not tally.complete


def test_tally_of_a_complete_stream_and_of_nothing() -> None:
    tally = UdpTally(3)
    for seq in (2, 0, 1):
        tally.add(seq, 1.0)
    assert tally.complete and tally.report()["missing"] == 0 and tally.report()["missing_ranges"] == []
    empty = UdpTally(4).report()
    assert (empty["missing"], empty["missing_ranges"], empty["started"]) == (4, [[0, 3]], None)


def test_tally_lists_at_most_max_ranges_but_counts_all() -> None:
    count = 2 * (MAX_RANGES + 10)
    tally = UdpTally(count)
    for seq in range(0, count, 2):
        tally.add(seq, 0.0)
    report = tally.report()
    assert report["missing"] == count // 2 and len(report["missing_ranges"]) == MAX_RANGES


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Topology, Pod, Pod]]:
    with Topology(unique_prefix("u")) as topo:
        for cid in (1, 2):
            cluster = topo.add_cluster(f"c{cid}", cid)
            topo.add_pod(topo.add_node(cluster, "n0"), "pod")
        topo.hand_built_tunnel()
        a, b = topo.pods
        yield topo, a, b


@needs_root
def test_udp_stream_arrives_whole(pair: tuple[Topology, Pod, Pod]) -> None:
    _, a, b = pair
    result = udp_stream(b, a, seconds=2.0, rate=200)
    assert result.ok, result
    assert (result.count, result.sent, result.received, result.missing_ranges) == (400, 400, 400, ())
    # paced, not a burst: datagram n is never sent before start + n / rate (no upper bound: a busy
    # machine only makes it later, and speed belongs in benchmarks)
    assert result.ended - result.started >= (result.count - 1) / 200 and result.max_gap > 0


@needs_root
def test_udp_stream_names_what_a_cut_lost_and_tcp_beside_it_stalls(pair: tuple[Topology, Pod, Pod]) -> None:
    topo, a, b = pair
    run = start_udp_stream(b, a, 5311, seconds=3.0, rate=200)
    tcp = start_tcp_stream(b, a, 5312, seconds=3.0, gap_threshold=0.2)
    threading.Event().wait(1.0)
    topo.remove_hand_built()  # ~0.5 s without a path
    threading.Event().wait(0.5)
    topo.hand_built_tunnel()
    result = run.result()
    assert result.error is None and result.sent == 600 and not result.ok, result
    assert 50 <= result.missing <= 200 and len(result.missing_ranges) == 1, result
    first, last = result.missing_ranges[0]
    assert last - first + 1 == result.missing and result.max_gap >= 0.25
    stream = tcp.result()
    assert stream.error is None and stream.max_gap >= 0.4 and stream.longest_gap == stream.max_gap, stream
