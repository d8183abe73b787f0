"""lab.etcd: starting, stopping and breaking real etcd processes."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lab.etcd import EtcdFleet, EtcdProcess, EtcdProcessError, running_etcd_pids
from meshcore.errors import KVStoreUnavailableError
from meshcore.kvstore.client import EtcdClient
from meshcore.kvstore.config import load_etcd_config


def alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie awaiting its reaper counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_start_stop_on_loopback(tmp_path: Path) -> None:
    etcd = EtcdProcess(tmp_path / "e")
    with etcd:
        pid = etcd.pid
        assert pid is not None and etcd.running
        assert etcd.endpoint.startswith("http://127.0.0.1:")
        assert pid in running_etcd_pids()
        assert etcd.log_file.exists() and etcd.data_dir.is_dir()
    assert not etcd.running and not alive(pid)
    assert pid not in running_etcd_pids()


def test_start_failure_shows_the_log_tail(tmp_path: Path) -> None:
    etcd = EtcdProcess(tmp_path / "e", extra_args=["--no-such-flag"])
    with pytest.raises(EtcdProcessError, match="no-such-flag"):
        etcd.start(ready_within=5)
    assert not etcd.running


async def test_restart_keeps_data_and_ports(etcd: EtcdProcess) -> None:
    endpoint = etcd.endpoint
    async with EtcdClient(etcd.client_config()) as client:
        await client.put("k", b"v")
        cluster_id = client.cluster_id
    etcd.restart()
    assert etcd.endpoint == endpoint
    async with EtcdClient(etcd.client_config()) as client:
        kv = await client.get("k")
        assert kv is not None and kv.value == b"v"
        assert client.cluster_id == cluster_id


async def test_wipe_gives_an_empty_new_cluster(etcd: EtcdProcess) -> None:
    async with EtcdClient(etcd.client_config()) as client:
        await client.put("k", b"v")
        cluster_id = client.cluster_id
    with pytest.raises(EtcdProcessError, match="stopped"):
        etcd.wipe()
    etcd.stop()
    etcd.wipe()
    await etcd.start_async()
    async with EtcdClient(etcd.client_config()) as client:
        assert await client.get("k") is None
        assert client.cluster_id != cluster_id


async def test_pause_and_resume(etcd: EtcdProcess) -> None:
    async with EtcdClient(etcd.client_config(request_timeout=0.5)) as client:
        etcd.pause()
        try:
            with pytest.raises(KVStoreUnavailableError, match="timed out"):
                await client.put("k", b"v")
        finally:
            etcd.resume()
        await client.put("k", b"v")


def test_kill_leaves_no_process(etcd: EtcdProcess) -> None:
    pid = etcd.pid
    assert pid is not None
    etcd.kill()
    assert not alive(pid)
    etcd.kill()  # idempotent


def test_stop_a_paused_etcd(etcd: EtcdProcess) -> None:
    pid = etcd.pid
    assert pid is not None
    etcd.pause()
    etcd.stop(timeout=2)
    assert not alive(pid)


async def test_tls_client_configs_and_yaml(etcd_tls: EtcdProcess, tmp_path: Path) -> None:
    cfg = etcd_tls.client_config("remote")
    assert cfg == etcd_tls.client_config("remote")  # the certificate is issued once
    assert cfg.key_file is not None and stat.S_IMODE(cfg.key_file.stat().st_mode) == 0o600
    loaded = load_etcd_config(etcd_tls.write_config_yaml(tmp_path / "c1", user="remote"))
    assert loaded.endpoints == (etcd_tls.endpoint,) and loaded.cert_file == cfg.cert_file
    async with EtcdClient(loaded) as client:
        assert client.user == "remote"
        await client.status()


def test_fleet_closes_everything(tmp_path: Path) -> None:
    fleet = EtcdFleet(tmp_path)
    a = fleet.start("c1")
    b = fleet.start("c2")
    assert a.ports != b.ports and a.directory != b.directory
    pids = [a.pid, b.pid]
    fleet.close()
    assert not any(alive(pid) for pid in pids if pid is not None)


async def test_start_async(etcd_factory: Callable[..., EtcdProcess]) -> None:
    etcd = etcd_factory()
    etcd.stop()
    await asyncio.wait_for(etcd.start_async(), 20)
    assert etcd.running


def test_etcd_dies_with_a_crashed_parent(tmp_path: Path) -> None:
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from lab.etcd import EtcdProcess\n"
        f"e = EtcdProcess(Path({str(tmp_path / 'orphan')!r}))\n"
        "e.start()\n"
        "print(e.pid, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=30)
    pid = int(out.stdout.split()[0])
    for _ in range(50):
        if not alive(pid):
            break
        time.sleep(0.05)
    assert not alive(pid)
