"""The real ``clustermesh-agent`` process against real etcds: sync, status, metrics, desired
state, a remote that is not synced yet, removal (drain), and a graceful SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket as pysocket
import stat
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

from lab.etcd import EtcdProcess, free_port
from lab.samples import SampleSize, canary_keys, sample_node, seed_cluster
from lab.wait import poll_until
from meshcore.kvstore.client import EtcdClient
from meshcore.wire import keys as wirekeys
from tests.agent.agentproc import PROJECT, AgentProcess, agent_process


async def until(check: Callable[[], bool], agent: AgentProcess, what: str, within: float = 15) -> None:
    def safe() -> bool:
        try:
            return check()
        except Exception:
            return False

    if not await poll_until(safe, within=within, interval=0.1):
        raise AssertionError(f"{what} not reached within {within}s; status={agent.status()}\n{agent.log_tail()}")


async def test_agent_syncs_serves_status_metrics_desired_and_stops(
    tmp_path: Path, etcd_factory: Callable[..., EtcdProcess]
) -> None:
    c2, c3 = etcd_factory("c2"), etcd_factory("c3")
    async with EtcdClient(c2.client_config()) as kv2, EtcdClient(c3.client_config()) as kv3:
        await seed_cluster(kv2, "c2", 2, SampleSize(nodes=4, endpoints_per_node=3, identities=5, services=2))
        # One intruder node (wrong cluster ID) in c2.
        await kv2.put(wirekeys.node_key("c2", "c2-node-9"), sample_node("c2", 9, 9).encode())
        # c3 advertises sync canaries but has not written them yet.
        await seed_cluster(kv3, "c3", 3, SampleSize(nodes=2), canaries=False)
        await kv3.put(wirekeys.cluster_config_key("c3"), b'{"id":3,"capabilities":{"syncedCanaries":true}}')

        metrics_port = free_port()
        async with agent_process(tmp_path, args=["--metrics-port", str(metrics_port)]) as agent:
            assert stat.S_IMODE(os.stat(agent.socket).st_mode) == 0o600
            c2.write_config_yaml(agent.config_dir / "c2")
            c3.write_config_yaml(agent.config_dir / "c3")
            await until(lambda: agent.clusters()["c2"]["ready"], agent, "c2 ready")
            await until(lambda: agent.clusters()["c3"]["connected"], agent, "c3 connected")

            clusters = agent.clusters()
            c2_status = clusters["c2"]
            assert (c2_status["num-nodes"], c2_status["num-endpoints"], c2_status["num-identities"],
                    c2_status["num-shared-services"]) == (4, 12, 5, 2)
            assert c2_status["config"] == {"required": True, "retrieved": True, "cluster-id": 2,
                                           "kvstoremesh": False, "sync-canaries": True}
            assert not clusters["c3"]["ready"]
            assert clusters["c3"]["synced"] == {"nodes": False, "services": False, "endpoints": False,
                                                "identities": False}

            # The desired state follows (debounced) and holds nothing from the intruder.
            await until(lambda: agent.status()["local"]["desired"]["ipcache"] == 12 + 4 * 4, agent, "desired c2")
            desired = agent.desired()
            assert {e["cluster"] for e in desired["ipcache"]} == {"c2"}
            assert all(p["node"] != "c2-node-9" for p in desired["wireguard-peers"])
            assert [s["service"] for s in desired["services"]] == ["default/svc-0", "default/svc-1"]

            # Metrics on the socket and on the TCP port agree.
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
            assert 'clustermesh_remote_cluster_invalid_entries_total{kind="nodes",source_cluster="c2"} 1.0' in text
            assert 'clustermesh_remote_clusters{source_cluster="c1",source_node_name="c1-node-0"} 2.0' in text
            assert ('clustermesh_remote_cluster_readiness_status{source_cluster="c1",source_node_name="c1-node-0",'
                    'target_cluster="c2"} 1.0') in text
            assert ('clustermesh_remote_cluster_nodes{source_cluster="c1",source_node_name="c1-node-0",'
                    'target_cluster="c2"} 4.0') in text

            # c3 writes its canaries: it syncs, and its entries join the desired state.
            for key in canary_keys("c3"):
                await kv3.put(key, b"2026-01-01T00:00:00Z")
            await until(lambda: agent.clusters()["c3"]["ready"], agent, "c3 ready")
            await until(lambda: any(e["cluster"] == "c3" for e in agent.desired()["ipcache"]), agent, "desired c3")

            # Removing c3's config drains it; c2 is untouched.
            (agent.config_dir / "c3").unlink()
            await until(lambda: "c3" not in agent.clusters(), agent, "c3 removed")
            await until(lambda: all(e["cluster"] == "c2" for e in agent.desired()["ipcache"]), agent, "c3 drained")
            assert agent.clusters()["c2"]["ready"]

            agent.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(agent.proc.wait(), 10) == 0
            assert not agent.socket.exists(), "the socket is removed on a graceful stop"
            assert "Traceback" not in agent.log_tail()


async def test_second_agent_on_the_same_socket_fails_clearly(tmp_path: Path) -> None:
    async with agent_process(tmp_path) as first:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.cli", "--cluster-name", "c1", "--cluster-id", "1",
            "--clustermesh-config", str(first.config_dir), "--agent-socket", str(first.socket),
            "--datapath", "none", cwd=PROJECT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 1
        assert b"another agent is already serving on" in err
        assert first.status()["local"]["cluster-name"] == "c1"


async def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    sock_path = tmp_path / "state" / "agent.sock"
    sock_path.parent.mkdir(parents=True)
    leftover = pysocket.socket(pysocket.AF_UNIX)
    leftover.bind(str(sock_path))
    leftover.close()  # a socket file nobody listens on, as a killed agent leaves behind
    async with agent_process(tmp_path) as agent:
        await until(lambda: agent.status()["local"]["node-name"] == "c1-node-0", agent, "agent serving")
