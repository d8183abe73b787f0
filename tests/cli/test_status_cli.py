"""``clustermesh status`` and ``clustermesh agent dump`` against a real agent process (with real
etcds), plus the errors for a missing or refusing socket."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner, Result

from clustermesh_cli.main import cli
from clustermesh_cli.status import cluster_error, render_summary
from lab.etcd import EtcdProcess
from lab.samples import SampleSize, canary_keys, seed_cluster
from meshcore.kvstore.client import EtcdClient
from meshcore.wire import keys as wirekeys
from tests.agent.test_agent_daemon import agent_process, until


def clustermesh(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


async def test_status_renders_json_summary_table_and_waits(
    tmp_path: Path, etcd_factory: Callable[..., EtcdProcess]
) -> None:
    c2, c3 = etcd_factory("c2"), etcd_factory("c3")
    async with EtcdClient(c2.client_config()) as kv2, EtcdClient(c3.client_config()) as kv3:
        await seed_cluster(kv2, "c2", 2, SampleSize(nodes=3, endpoints_per_node=2, identities=4, services=2))
        await seed_cluster(kv3, "c3", 3, SampleSize(nodes=2), canaries=False)
        await kv3.put(wirekeys.cluster_config_key("c3"), b'{"id":3,"capabilities":{"syncedCanaries":true}}')
        async with agent_process(tmp_path) as agent:
            c2.write_config_yaml(agent.config_dir / "c2")
            c3.write_config_yaml(agent.config_dir / "c3")
            await until(lambda: agent.clusters()["c2"]["ready"] and agent.clusters()["c3"]["connected"], agent,
                        "c2 ready, c3 connected")
            sock = str(agent.socket)

            result = clustermesh("status", "--agent-socket", sock, "-o", "json")
            assert result.exit_code == 0, result.output
            doc = json.loads(result.stdout)
            assert [c["name"] for c in doc["cluster-mesh"]["clusters"]] == ["c2", "c3"]
            assert doc["local"]["cluster-name"] == "c1"

            result = clustermesh("status", "--agent-socket", sock)
            assert result.exit_code == 0, result.output
            lines = result.stdout.splitlines()
            assert lines[0] == "ClusterMesh:   1/2 remote clusters ready"
            assert lines[1] == (
                "   c2: ready, 3 nodes, 6 endpoints, 4 identities, 2 services, 0 endpoint slices, "
                "0 MCS-API service exports, 0 reconnections (last: never)"
            )
            assert lines[2] == ("   └  remote configuration: expected=true, retrieved=true, cluster-id=2, "
                                "kvstoremesh=false, sync-canaries=true")
            assert lines[3] == ("   └  synchronization status: nodes=true, endpoints=true, identities=true, "
                                "services=true")
            assert lines[4].startswith("   c3: not ready, 0 nodes")
            assert lines[-1] == "   └  error: synchronization in progress for nodes, endpoints, identities, services"

            result = clustermesh("status", "--agent-socket", sock, "-o", "table")
            assert result.exit_code == 0, result.output
            table = result.stdout
            assert "ClusterMesh:   1/2 remote clusters ready" in table
            assert "waiting: nodes, endpoints, identities, services" in table
            assert "cluster-id=2 kvstoremesh=false sync-canaries=true" in table
            row = next(line for line in table.splitlines() if "│ c2 " in line)
            assert [cell.strip() for cell in row.split("│")[1:8]] == ["c2", "yes", "yes", "3", "6", "4", "2"]

            result = clustermesh("status", "--agent-socket", sock, "--wait", "--timeout", "1", "--interval", "0.2")
            assert result.exit_code == 1
            assert ("timed out after 1s waiting for the remote clusters; not ready: c3 (synchronization in "
                    "progress for nodes, endpoints, identities, services)") in " ".join(result.stderr.split())

            for key in canary_keys("c3"):
                await kv3.put(key, b"2026-01-01T00:00:00Z")
            result = clustermesh("status", "--agent-socket", sock, "--wait", "--timeout", "20", "--interval", "0.2")
            assert result.exit_code == 0, result.output
            assert result.stdout.splitlines()[0] == "ClusterMesh:   2/2 remote clusters ready"

            await until(lambda: agent.status()["local"]["desired"]["ipcache"] > 0, agent, "desired state")
            result = clustermesh("agent", "dump", "--agent-socket", sock, "-o", "json")
            assert result.exit_code == 0, result.output
            desired = json.loads(result.stdout)
            assert set(desired) >= {"ipcache", "routes", "wireguard-peers", "services", "identities"}
            assert {e["cluster"] for e in desired["ipcache"]} <= {"c2", "c3"}


def test_missing_and_refusing_socket_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.sock"
    result = clustermesh("status", "--agent-socket", str(missing))
    assert result.exit_code == 1
    assert "does not exist: is clustermesh-agent running" in result.stderr

    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))  # bound, never listening: connections are refused
        result = clustermesh("status", "--agent-socket", str(stale))
        assert result.exit_code == 1
        assert "refused the connection: no agent is listening" in result.stderr
        result = clustermesh("agent", "dump", "--agent-socket", str(stale))
        assert result.exit_code == 1 and "refused" in result.stderr

    result = clustermesh("status", "--agent-socket", str(missing), "--wait", "--timeout", "0.3", "--interval", "0.1")
    assert result.exit_code == 1
    assert "timed out after 0.3s" in result.stderr and "does not exist" in result.stderr


def test_errors_name_what_is_missing() -> None:
    base = {"name": "c9", "ready": False, "connected": True, "status": "",
            "config": {"required": True, "retrieved": True},
            "synced": {"nodes": True, "endpoints": False, "identities": False, "services": True}}
    assert cluster_error(base) == "synchronization in progress for endpoints, identities"
    assert cluster_error({**base, "connected": False, "status": "connecting"}) == "connecting"
    assert cluster_error({**base, "config": {"required": True, "retrieved": False}}) == (
        "remote cluster configuration retrieval in progress")
    assert render_summary({"cluster-mesh": {"clusters": []}}) == "ClusterMesh:   0/0 remote clusters ready"
