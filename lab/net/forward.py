"""TCP forwarding from addresses inside network namespaces to a port on the host's loopback.

This is how a lab node reaches its cluster's API: the API emulator listens on the host's
127.0.0.1 only, and a listener created *inside* the node's namespace (a socket stays in the
namespace it was created in) relays each connection to it. No route or address of the host is
involved, so nothing in a lab namespace can reach anything else on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
import threading

from lab.net.errors import NetnsError
from lab.net.nsutil import NETNS_RUN_DIR

_CLONE_NEWNET = 0x40000000
_CONNECT_TIMEOUT = 5.0
_BUFFER = 65536


def listen_in_netns(ns: str, host: str, port: int, *, backlog: int = 128) -> socket.socket:
    """A non-blocking listening TCP socket on ``host:port`` inside namespace ``ns``.

    A throwaway thread enters the namespace (``setns`` applies to the calling thread only), makes
    the socket and ends; the socket keeps its namespace for life."""
    result: list[socket.socket | BaseException] = []

    def make() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            fd = os.open(os.path.join(NETNS_RUN_DIR, ns), os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {ns}")
            finally:
                os.close(fd)
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
            s.listen(backlog)
            s.setblocking(False)
            result.append(s)
        except BaseException as exc:  # handed to the caller below
            result.append(exc)

    t = threading.Thread(target=make, name=f"listen-{ns}")
    t.start()
    t.join(10)
    if not result:
        raise NetnsError(f"timed out creating a listener on {host}:{port} in namespace {ns}")
    if isinstance(result[0], BaseException):
        raise NetnsError(f"cannot listen on {host}:{port} in namespace {ns}: {result[0]}")
    return result[0]


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` until EOF or an error, then half-close ``writer``."""
    try:
        while data := await reader.read(_BUFFER):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()


class Forwarder:
    """Listeners inside namespaces relaying to ``127.0.0.1:<port>`` of the host (async).

    Call :meth:`add` for each (namespace, address) and :meth:`close` at the end; connections in
    flight are closed with it."""

    def __init__(self) -> None:
        self._servers: list[asyncio.Server] = []
        self._conns: set[asyncio.StreamWriter] = set()
        self.routes: list[tuple[str, str, int, int]] = []

    async def add(self, ns: str, host: str, port: int, target_port: int) -> None:
        """Relay ``host:port`` inside ``ns`` to 127.0.0.1:``target_port`` here."""
        sock = listen_in_netns(ns, host, port)

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._conns.add(writer)
            up_writer: asyncio.StreamWriter | None = None
            try:
                async with asyncio.timeout(_CONNECT_TIMEOUT):
                    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
                self._conns.add(up_writer)
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(pump(reader, up_writer))
                    tg.create_task(pump(up_reader, writer))
            except (OSError, TimeoutError):
                pass  # the target is down: the client sees the connection close, as with a dead server
            finally:
                for w in (writer, up_writer):
                    if w is not None:
                        self._conns.discard(w)
                        w.close()

        self._servers.append(await asyncio.start_server(relay, sock=sock))
        self.routes.append((ns, host, port, target_port))

    async def close(self) -> None:
        """Stop listening and close every relayed connection."""
        for server in self._servers:
            server.close()
        for w in list(self._conns):
            w.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await server.wait_closed()
        self._servers.clear()
