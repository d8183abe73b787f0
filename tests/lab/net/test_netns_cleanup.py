"""Cleanup of real topologies: close, ``with`` after an exception, a failure half-way through a
build, interpreter exit without close, and leftovers of a SIGKILLed run (``cleanup_stale``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

from lab.net import CommandError, Topology, TopologyError, cleanup_stale, nsutil, unique_prefix

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2 for network namespaces"
)

REPO = Path(__file__).resolve().parents[3]


def leftovers(prefix: str) -> list[str]:
    return nsutil.namespaces_with_prefix(prefix) + nsutil.stray_root_devices(prefix)


def small(topo: Topology) -> None:
    cluster = topo.add_cluster("c1", 1)
    node = topo.add_node(cluster, "n0")
    topo.add_pod(node, "p0")
    topo.add_pod(topo.add_node(cluster, "n1"), "p1")


def test_close_removes_everything_and_is_idempotent() -> None:
    topo = Topology(unique_prefix("c"))
    small(topo)
    topo.hand_built_tunnel()
    assert len(leftovers(topo.prefix)) == 5  # underlay, 2 nodes, 2 pods
    topo.close()
    topo.close()
    assert leftovers(topo.prefix) == []
    with pytest.raises(TopologyError, match="closed"):
        topo.add_cluster("c2", 2)


def test_context_manager_cleans_up_after_an_exception() -> None:
    prefix = unique_prefix("c")
    with pytest.raises(RuntimeError, match="boom"), Topology(prefix) as topo:
        small(topo)
        raise RuntimeError("boom")
    assert leftovers(prefix) == []


def test_cleanup_after_a_failure_half_way_through_a_build(monkeypatch: pytest.MonkeyPatch) -> None:
    real = nsutil.set_sysctls
    calls: list[str] = []

    def failing(ns: str, values: Mapping[str, int | str]) -> None:
        calls.append(ns)
        if len(calls) == 3:  # underlay, node, then the pod: its namespace exists, its veth not
            raise CommandError(["sysctl"], "injected failure")
        real(ns, values)

    monkeypatch.setattr(nsutil, "set_sysctls", failing)
    prefix = unique_prefix("c")
    with Topology(prefix) as topo:
        cluster = topo.add_cluster("c1", 1)
        node = topo.add_node(cluster, "n0")
        with pytest.raises(CommandError, match="injected"):
            topo.add_pod(node, "p0")
        assert len(leftovers(prefix)) == 3
    assert leftovers(prefix) == []


def test_interpreter_exit_without_close_cleans_up() -> None:
    prefix = unique_prefix("c")
    script = textwrap.dedent(f"""
        from lab.net import Topology
        topo = Topology({prefix!r})
        topo.add_pod(topo.add_node(topo.add_cluster("c1", 1), "n0"), "p0")
        raise SystemExit("exiting with the topology still open")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert "still open" in proc.stderr
    assert leftovers(prefix) == []


def test_cleanup_stale_removes_leftovers_of_a_killed_run() -> None:
    prefix = unique_prefix("c")
    script = textwrap.dedent(f"""
        import time
        from lab.net import Topology
        topo = Topology({prefix!r})
        topo.add_pod(topo.add_node(topo.add_cluster("c1", 1), "n0"), "p0")
        topo.hand_built_tunnel()
        print("built", flush=True)
        time.sleep(30)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "built"
    finally:
        proc.kill()  # SIGKILL: no finalizer runs
        proc.wait(timeout=10)
    assert len(nsutil.namespaces_with_prefix(prefix)) == 3
    with pytest.raises(TopologyError, match="cleanup_stale"):
        Topology(prefix)
    removed = cleanup_stale(prefix)
    assert len(removed) == 3
    assert leftovers(prefix) == []
    assert cleanup_stale(prefix) == []


def test_cleanup_stale_only_touches_its_own_prefix() -> None:
    base = unique_prefix("c")
    with Topology(base) as mine, Topology(base + "x") as other:
        mine.add_node(mine.add_cluster("c1", 1), "n0")
        other.add_node(other.add_cluster("c1", 1), "n0")
        cleanup_stale(base)
        assert nsutil.namespaces_with_prefix(base) == []
        assert len(nsutil.namespaces_with_prefix(other.prefix)) == 2
