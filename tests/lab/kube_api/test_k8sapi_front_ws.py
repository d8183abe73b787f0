"""The API front's WebSocket relay (lab/kube/front.py) against a small real WebSocket server behind it:
subprotocol negotiation, text and binary frames both ways, close codes and reasons kept in both
directions, an upstream that breaks, and a refused upgrade answered with the upstream's own body."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from lab.etcd import free_port
from lab.kube.api.server import ensure_tls_files
from lab.kube.front import ApiFront


@dataclass
class Upstream:
    """What the WebSocket server behind the front saw."""

    received: list[tuple[str, object]] = field(default_factory=list)
    close_codes: list[int | None] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


async def _upstream_app(seen: Upstream) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        seen.headers.append(dict(request.headers))
        if request.query.get("refuse"):
            return web.json_response({"kind": "Status", "message": "refused by upstream", "code": 400}, status=400)
        ws = web.WebSocketResponse(protocols=("v5.channel.k8s.io", "v4.channel.k8s.io"))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                seen.received.append(("text", msg.data))
                if msg.data == "close-me":
                    await ws.close(code=4001, message=b"bye from upstream")
                elif msg.data == "break":
                    assert request.transport is not None
                    request.transport.abort()
                else:
                    await ws.send_bytes(b"\x01" + msg.data.encode())
            elif msg.type == aiohttp.WSMsgType.BINARY:
                seen.received.append(("binary", msg.data))
                await ws.send_str(f"got {len(msg.data)} bytes")
        seen.close_codes.append(ws.close_code)
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    return app


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[tuple[ApiFront, Upstream, ssl.SSLContext]]:
    tls = ensure_tls_files(tmp_path / "tls")
    serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    serving.load_cert_chain(tls.cert_file, tls.key_file)
    seen = Upstream()
    runner = web.AppRunner(await _upstream_app(seen))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=serving).start()
    front = ApiFront(0, port, tmp_path / "tls")
    await front.start()
    try:
        yield front, seen, ssl.create_default_context(cafile=str(tls.ca_file))
    finally:
        await front.stop()
        await runner.cleanup()


async def test_frames_protocol_and_close_codes_pass_through(
        relay: tuple[ApiFront, Upstream, ssl.SSLContext]) -> None:
    front, seen, ctx = relay
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{front.url}/api/v1/x/exec", protocols=("v5.channel.k8s.io",), ssl=ctx,
                                   headers={"Authorization": "Bearer t"}) as ws:
            assert ws.protocol == "v5.channel.k8s.io"
            await ws.send_str("hello")
            assert (await ws.receive_bytes(timeout=5)) == b"\x01hello"
            await ws.send_bytes(b"\x00" * 70_000)
            assert (await ws.receive_str(timeout=5)) == "got 70000 bytes"
            await ws.close(code=4002, message=b"client done")
        assert seen.headers[0]["Authorization"] == "Bearer t"
        assert seen.headers[0]["Sec-WebSocket-Protocol"] == "v5.channel.k8s.io"
        await _eventually(lambda: seen.close_codes == [4002])

        async with http.ws_connect(f"{front.url}/api/v1/x/exec", protocols=("v4.channel.k8s.io",), ssl=ctx) as ws:
            assert ws.protocol == "v4.channel.k8s.io"
            await ws.send_str("close-me")
            msg = await ws.receive(timeout=5)
            assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 4001, "bye from upstream")
    assert front.stats.websockets == 2


async def test_an_upstream_break_breaks_the_client(relay: tuple[ApiFront, Upstream, ssl.SSLContext]) -> None:
    front, _, ctx = relay
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{front.url}/exec", protocols=("v5.channel.k8s.io",), ssl=ctx) as ws:
            await ws.send_str("break")
            msg = await ws.receive(timeout=10)
            assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
            assert ws.close_code != 1000


async def test_a_refused_upgrade_gets_the_upstream_answer(relay: tuple[ApiFront, Upstream, ssl.SSLContext]) -> None:
    front, _, ctx = relay
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await http.ws_connect(f"{front.url}/exec?refuse=1", protocols=("v5.channel.k8s.io",), ssl=ctx)
        assert err.value.status == 400
        headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
        async with http.get(f"{front.url}/exec?refuse=1", headers=headers, ssl=ctx) as r:
            assert r.status == 400 and (await r.json())["message"] == "refused by upstream"


async def _eventually(check: object, within: float = 5.0) -> None:
    assert callable(check)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)
