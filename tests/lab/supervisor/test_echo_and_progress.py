"""The echo workload answers HTTP and TCP on one port; lab up follows the supervisor's progress file."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest

from lab import echo
from lab.etcd import free_port
from lab.supervisor.progress import FAILED, READY, ProgressWriter, follow


@pytest.fixture
def echo_port(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("CLUSTER_NAME", "c7")
    monkeypatch.setenv("NODE_NAME", "c7-n1")
    monkeypatch.setenv("POD_NAME", "echo-x")
    return free_port()


async def _with_server(port: int, client: object) -> object:
    server = asyncio.create_task(echo.serve(port, "127.0.0.1"))
    try:
        for _ in range(100):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.02)
        return await client()  # type: ignore[operator]
    finally:
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server


def test_echo_answers_http_with_who_answered(echo_port: int) -> None:
    async def client() -> bytes:
        r, w = await asyncio.open_connection("127.0.0.1", echo_port)
        w.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        await w.drain()
        data = await r.read()
        w.close()
        return data

    data = asyncio.run(_with_server(echo_port, client))
    assert isinstance(data, bytes)
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK") and b"X-Echo-Cluster: c7" in head
    doc = json.loads(body)
    assert (doc["cluster"], doc["node"], doc["pod"], doc["path"]) == ("c7", "c7-n1", "echo-x", "/hello")


def test_echo_answers_tcp_lines(echo_port: int) -> None:
    async def client() -> bytes:
        r, w = await asyncio.open_connection("127.0.0.1", echo_port)
        w.write(b"one\ntwo\n")
        await w.drain()
        w.write_eof()
        data = await r.read()
        w.close()
        return data

    assert asyncio.run(_with_server(echo_port, client)) == b"c7 c7-n1 echo-x: one\nc7 c7-n1 echo-x: two\n"


def test_follow_yields_steps_until_the_final_line(tmp_path: Path) -> None:
    path = tmp_path / "progress.log"
    writer = ProgressWriter(path)

    def write() -> None:
        for i in range(3):
            writer.step(f"step {i}")
            time.sleep(0.05)
        writer.final(READY, "up")

    t = threading.Thread(target=write)
    t.start()
    lines = list(follow(path, alive=lambda: True, timeout=10))
    t.join()
    assert [line["msg"] for line in lines] == ["step 0", "step 1", "step 2", "up"]
    assert lines[-1]["final"] == READY


def test_follow_reports_a_dead_supervisor_and_a_timeout(tmp_path: Path) -> None:
    path = tmp_path / "progress.log"
    ProgressWriter(path).step("started")
    lines = list(follow(path, alive=lambda: False, timeout=10))
    assert lines[-1]["final"] == FAILED and "exited" in lines[-1]["msg"]
    lines = list(follow(tmp_path / "none.log", alive=lambda: True, timeout=0.3))
    assert lines == [{"msg": "the lab was not ready within 0 s", "final": FAILED}]
