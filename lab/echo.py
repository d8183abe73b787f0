"""The lab's echo workload: one port that answers HTTP and plain TCP with who answered.

``clustermesh lab echo --port P`` serves both on one port: a connection whose first bytes look
like an HTTP request gets an HTTP/1.1 response with a JSON body; any other connection gets one
line per line it sends, ``<cluster> <node> <pod>: <line>``. Who it is comes from the environment
the lab's node runtime gives every pod (``CLUSTER_NAME``, and ``NODE_NAME``/``POD_NAME`` from the
Downward API in lab/examples/echo.yaml), falling back to the host name.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from dataclasses import asdict, dataclass

_HTTP_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ")
_MAX_HEADER = 16 * 1024
_IDLE_TIMEOUT = 60.0


@dataclass(frozen=True)
class Identity:
    """Who answers: the pod's cluster, node, name, namespace and IP."""

    cluster: str
    node: str
    pod: str
    namespace: str
    ip: str

    @classmethod
    def from_env(cls) -> Identity:
        host = socket.gethostname()
        return cls(
            cluster=os.environ.get("CLUSTER_NAME", "unknown"),
            node=os.environ.get("NODE_NAME", "unknown"),
            pod=os.environ.get("POD_NAME", host),
            namespace=os.environ.get("POD_NAMESPACE", "default"),
            ip=os.environ.get("POD_IP", ""),
        )

    def line(self) -> str:
        return f"{self.cluster} {self.node} {self.pod}"


def http_response(identity: Identity, method: str, path: str, client: str) -> bytes:
    """The full HTTP/1.1 response to one request (pure)."""
    doc = {**asdict(identity), "path": path, "client": client}
    body = b"" if method == "HEAD" else (json.dumps(doc) + "\n").encode()
    head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\nX-Echo-Cluster: {identity.cluster}\r\n\r\n")
    return head.encode() + body


async def _serve_http(first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      identity: Identity, client: str) -> None:
    data = first
    while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < _MAX_HEADER:
        chunk = await reader.read(4096)
        if not chunk:
            break
        data += chunk
    request_line = data.split(b"\n", 1)[0].decode(errors="replace").strip().split()
    method = request_line[0] if request_line else "GET"
    path = request_line[1] if len(request_line) > 1 else "/"
    writer.write(http_response(identity, method, path, client))
    await writer.drain()


async def _serve_tcp(first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     identity: Identity) -> None:
    pending = first
    while True:
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            writer.write(f"{identity.line()}: ".encode() + line + b"\n")
        await writer.drain()
        chunk = await asyncio.wait_for(reader.read(4096), _IDLE_TIMEOUT)
        if not chunk:
            if pending:
                writer.write(f"{identity.line()}: ".encode() + pending + b"\n")
                await writer.drain()
            return
        pending += chunk


async def serve(port: int, host: str = "0.0.0.0") -> None:
    """Serve until cancelled."""
    identity = Identity.from_env()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        try:
            first = await asyncio.wait_for(reader.read(4096), _IDLE_TIMEOUT)
            if first.startswith(_HTTP_METHODS):
                await _serve_http(first, reader, writer, identity, f"{peer[0]}:{peer[1]}")
            elif first:
                await _serve_tcp(first, reader, writer, identity)
        except (TimeoutError, ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port, reuse_address=True)
    print(f"echo: {identity.line()} serving HTTP and TCP on {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()
