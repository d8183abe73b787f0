"""The user-facing trigger of WireGuard key rotation on one node: the agent API's
``POST /v1/encryption/rotate`` (a real aiohttp server on a unix socket), the in-pod command
``clustermesh agent encryption rotate`` that posts it, the daemon's wiring without a node datapath,
and the agent flag ``--wireguard-key-rotation-interval``."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from prometheus_client import CollectorRegistry

from agent.api import AgentAPI
from agent.cli import main as agent_main
from agent.config import AgentConfig
from clustermesh_cli.main import cli
from clustermesh_cli.status import AgentUnreachableError, agent_post
from meshcore.errors import ConfigError, MeshError

ANSWER = {"node": "c1-n0", "public-key": "A" * 43 + "=", "next-public-key": "B" * 43 + "=", "phase": "preparing"}


def _api(sock: Path, rotate: Callable[[], dict[str, Any]] | None) -> AgentAPI:
    return AgentAPI(sock, status=dict, desired=bytes, registry=CollectorRegistry(), rotate=rotate)


def _post_raw(sock: Path, path: str) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("localhost", timeout=5)
    conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.sock.connect(str(sock))
    try:
        conn.request("POST", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _agent_rotate(sock: Path) -> Result:
    return CliRunner().invoke(cli, ["agent", "encryption", "rotate", "--agent-socket", str(sock)])


async def test_rotate_answers_what_the_node_rotates_to(tmp_path: Path) -> None:
    calls = []

    def rotate() -> dict[str, Any]:
        calls.append(1)
        return dict(ANSWER)

    sock = tmp_path / "agent.sock"
    api = _api(sock, rotate)
    await api.start()
    try:
        assert await asyncio.to_thread(_post_raw, sock, "/v1/encryption/rotate") == (200, ANSWER)
        assert await asyncio.to_thread(agent_post, sock, "/v1/encryption/rotate") == ANSWER
        result = await asyncio.to_thread(_agent_rotate, sock)
    finally:
        await api.stop()
    assert len(calls) == 3
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == ANSWER


async def test_a_node_that_cannot_rotate_answers_409_with_its_reason(tmp_path: Path) -> None:
    def rotate() -> dict[str, Any]:
        raise MeshError("node c1-n0: WireGuard is not running on this node (--encryption none)")

    sock = tmp_path / "agent.sock"
    api = _api(sock, rotate)
    await api.start()
    try:
        status, doc = await asyncio.to_thread(_post_raw, sock, "/v1/encryption/rotate")
        with pytest.raises(AgentUnreachableError, match=r"^node c1-n0: WireGuard is not running"):
            await asyncio.to_thread(agent_post, sock, "/v1/encryption/rotate")
        result = await asyncio.to_thread(_agent_rotate, sock)
    finally:
        await api.stop()
    assert status == 409 and doc == {"error": "node c1-n0: WireGuard is not running on this node (--encryption none)"}
    assert result.exit_code == 1
    assert "Error: node c1-n0: WireGuard is not running" in result.output


async def test_an_agent_without_rotation_answers_404_saying_so(tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    api = _api(sock, None)
    await api.start()
    try:
        status, doc = await asyncio.to_thread(_post_raw, sock, "/v1/encryption/rotate")
        with pytest.raises(AgentUnreachableError, match="does not rotate WireGuard keys"):
            await asyncio.to_thread(agent_post, sock, "/v1/encryption/rotate")
        # an agent older than the endpoint: aiohttp's own 404, no JSON
        with pytest.raises(AgentUnreachableError, match="has no POST /v1/nothing-here: it is older than this CLI"):
            await asyncio.to_thread(agent_post, sock, "/v1/nothing-here")
    finally:
        await api.stop()
    assert status == 404 and "does not rotate" in doc["error"]


def test_the_agent_command_fails_clearly_when_no_agent_listens(tmp_path: Path) -> None:
    result = _agent_rotate(tmp_path / "missing.sock")
    assert result.exit_code == 1
    assert "agent socket" in result.output and "does not exist" in result.output
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))  # bound, never listening: refuses
        result = _agent_rotate(stale)
    assert result.exit_code == 1 and "refused the connection" in result.output


def _config(tmp_path: Path, **kw: Any) -> AgentConfig:
    (tmp_path / "cm").mkdir(exist_ok=True)
    base: dict[str, Any] = dict(
        cluster_name="c1", cluster_id=1, node_name="n1", clustermesh_config=tmp_path / "cm",
        state_dir=tmp_path / "state", datapath="bpf", kvstore_config=tmp_path / "etcd.yaml",
    )  # fmt: skip
    base.update(kw)
    return AgentConfig(**base)


async def test_a_control_plane_only_agent_refuses_rotation_with_409(tmp_path: Path) -> None:
    from agent.daemon import Agent

    sock = tmp_path / "a.sock"
    agent = Agent(_config(tmp_path, datapath="none", kvstore_config=None, agent_socket=sock))
    await agent.api.start()
    try:
        status, doc = await asyncio.to_thread(_post_raw, sock, "/v1/encryption/rotate")
    finally:
        await agent.api.stop()
    assert status == 409
    assert "needs the node datapath" in doc["error"] and "--datapath none" in doc["error"]


# ---- --wireguard-key-rotation-interval ----

_BASE_ARGS = ["--cluster-name", "c1", "--cluster-id", "1", "--clustermesh-config", "/tmp"]


@pytest.mark.parametrize(("value", "seconds"), [("720h", 2592000.0), ("30m", 1800.0), ("3600", 3600.0), ("0", 0.0)])
def test_the_interval_flag_takes_seconds_or_go_durations(value: str, seconds: float) -> None:
    params = agent_main.make_context("clustermesh-agent", [*_BASE_ARGS, "--wireguard-key-rotation-interval", value])
    assert params.params["wireguard_key_rotation_interval"] == seconds


def test_the_interval_defaults_to_off_and_refuses_nonsense() -> None:
    assert agent_main.make_context("clustermesh-agent", _BASE_ARGS).params["wireguard_key_rotation_interval"] == 0.0
    result = CliRunner().invoke(agent_main, [*_BASE_ARGS, "--wireguard-key-rotation-interval", "monthly"])
    assert result.exit_code == 2 and "'monthly' is not a duration" in result.output
    result = CliRunner().invoke(agent_main, [*_BASE_ARGS, "--wireguard-key-rotation-interval", "-5m"])
    assert result.exit_code == 2 and "--wireguard-key-rotation-interval" in result.output
    helptext = " ".join(CliRunner().invoke(agent_main, ["--help"], terminal_width=400).output.split())
    assert "--wireguard-key-rotation-interval DURATION" in helptext and "Make-before-break" in helptext


def test_the_interval_reaches_the_config_and_needs_wireguard(tmp_path: Path) -> None:
    config = _config(tmp_path, encryption="wireguard", wireguard_key_rotation_interval=1800.0)
    config.validate()
    assert config.wireguard_key_rotation_interval == 1800.0
    with pytest.raises(ConfigError, match=re.escape("--wireguard-key-rotation-interval needs --encryption wireguard")):
        _config(tmp_path, wireguard_key_rotation_interval=60.0).validate()
    with pytest.raises(ConfigError, match="must be 0 \\(off\\) or a positive duration"):
        _config(tmp_path, encryption="wireguard", wireguard_key_rotation_interval=-1.0).validate()
    _config(tmp_path, wireguard_key_rotation_interval=0.0).validate()  # off: fine without WireGuard
