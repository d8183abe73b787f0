"""``pods/exec``: run a command in a lab pod's container over a WebSocket, as kubectl and the official
Python client speak it.

``GET|POST .../pods/<name>/exec?command=...&container=...&stdin=&stdout=&stderr=&tty=`` with
``Upgrade: websocket`` and subprotocol ``v5.channel.k8s.io`` (kubectl >= 1.30 sends only that one; the
Python client offers v5 then v4) or ``v4.channel.k8s.io``. Every frame is binary, its first byte the
channel: 0 stdin, 1 stdout, 2 stderr, 3 the final ``Status`` (``Success``, or ``Failure`` with reason
``NonZeroExitCode`` and the exit code in ``details.causes``), 4 terminal resize (``{"Width", "Height"}``)
and, in v5 only, 255 "close channel N" (how the client says its stdin ended). Like kube-apiserver, the
server first sends an empty frame on the lowest output channel. SPDY (kubectl's fallback, and what
kubectl < 1.30 speaks) is answered 400 with a message saying so.

The command runs where the container runs: the node runtime's record ``<pod-log-root>/<node>/pods/
<ns>_<name>_<uid>/pod.json`` names the container's pid (checked against its start time) and the pod's
cgroup; the process joins that cgroup, then ``nsenter`` enters the container's network, mount and UTS
namespaces and working directory, with the container's environment (``/proc/<pid>/environ``). With
``tty=true`` it gets a pseudo-terminal as its controlling terminal (``setsid --ctty``; stderr merges
into it, as on a real cluster). A client that goes away gets its command SIGKILLed (process group);
after the command exits its output is drained for at most :data:`DRAIN_SECONDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import struct
import termios
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from multidict import MultiMapping

from lab.kube.api.errors import ApiError
from lab.kube.api.podlogs import pod_dir
from lab.kube.api.store import ObjectStore
from lab.node import linux

V5, V4 = "v5.channel.k8s.io", "v4.channel.k8s.io"
PROTOCOLS = (V5, V4)
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
DRAIN_SECONDS = 2.0
KILL_WAIT_SECONDS = 5.0
MAX_FRAME = 32 * 1024
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# joins the cgroup named by $0 (the shell's own pid: "0"), then becomes the rest of the command line
JOIN_CGROUP = '{ echo 0 > "$0"; } 2>/dev/null; exec "$@"'


class ExecNotPossible(ApiError):
    """The request cannot be served (400, Status message as kube-apiserver words it where it has one)."""

    def __init__(self, message: str) -> None:
        super().__init__(400, "BadRequest", message)


@dataclass(frozen=True, slots=True)
class ExecOptions:
    """The query of one exec request."""

    command: tuple[str, ...]
    container: str | None
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool


def _flag(query: MultiMapping[str], name: str) -> bool:
    return query.get(name, "").lower() in ("1", "true")


def exec_options(query: MultiMapping[str]) -> ExecOptions:
    """Parse and check the query (``tty`` turns ``stderr`` off, as the kubelet does)."""
    command = tuple(query.getall("command", ()))
    if not command:
        raise ExecNotPossible("you must specify at least 1 command")
    tty = _flag(query, "tty")
    opts = ExecOptions(command, query.get("container") or None, _flag(query, "stdin"), _flag(query, "stdout"),
                       _flag(query, "stderr") and not tty, tty)
    if not (opts.stdin or opts.stdout or opts.stderr):
        raise ExecNotPossible("you must specify at least 1 of stdin, stdout, stderr")
    return opts


def container_name(pod: dict[str, Any], requested: str | None) -> str:
    """The container to exec in: the one asked for (it must be in the spec), else the only one."""
    md, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    names = [str(c.get("name")) for c in spec.get("containers") or [] if isinstance(c, dict)]
    names += [str(c.get("name")) for c in spec.get("initContainers") or [] if isinstance(c, dict)]
    if requested:
        if requested not in names:
            raise ExecNotPossible(f"container {requested} is not valid for pod {md.get('name')}")
        return requested
    if len(names) == 1:
        return names[0]
    raise ExecNotPossible(f"a container name must be specified for pod {md.get('name')}, choose one of: "
                          f"[{' '.join(names)}]")


@dataclass(frozen=True, slots=True)
class ContainerProcess:
    """A running container's main process and its pod's cgroup."""

    pid: int
    cgroup: str | None


def container_process(record: Any, container: str,
                      alive: Callable[[int, int | None], bool] = linux.alive) -> ContainerProcess:
    """The live process of ``container`` in the node runtime's ``pod.json`` record."""
    containers = record.get("containers") if isinstance(record, dict) else None
    entry = containers.get(container) if isinstance(containers, dict) else None
    pid = entry.get("pid") if isinstance(entry, dict) else None
    start = entry.get("start_time") if isinstance(entry, dict) else None
    if not isinstance(pid, int) or not alive(pid, start if isinstance(start, int) else None):
        raise ExecNotPossible(f'container not found ("{container}"): it is not running')
    cgroup = record.get("cgroup") if isinstance(record, dict) else None
    return ContainerProcess(pid, str(cgroup) if cgroup else None)


def exec_argv(proc: ContainerProcess, command: tuple[str, ...], *, tty: bool, nsenter: str = "nsenter",
              setsid: str = "setsid") -> list[str]:
    """The host command line that runs ``command`` in the container (see the module docstring)."""
    argv = ["/bin/sh", "-c", JOIN_CGROUP, f"{proc.cgroup}/cgroup.procs"] if proc.cgroup else []
    if tty:
        argv += [setsid, "--ctty"]
    return [*argv, nsenter, "-t", str(proc.pid), "-n", "-m", "-u", "--wd", "--", *command]


def parse_environ(raw: bytes) -> dict[str, str]:
    """``/proc/<pid>/environ`` as a dict (``PATH`` defaulted as a container runtime does)."""
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep and key:
            env[key] = value
    env.setdefault("PATH", DEFAULT_PATH)
    return env


def exit_status(returncode: int, command: tuple[str, ...]) -> dict[str, Any]:
    """The channel-3 ``Status`` for a command that ended with ``returncode`` (negative: killed by that
    signal, reported as 128+signal like a shell does)."""
    code = 128 - returncode if returncode < 0 else returncode
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
            "message": f"command terminated with non-zero exit code: command '{' '.join(command)}' exited with {code}",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


def internal_error(message: str) -> dict[str, Any]:
    """The channel-3 ``Status`` for a command that could not be run."""
    return {"metadata": {}, "status": "Failure", "reason": "InternalError", "code": 500,
            "message": f"Internal error occurred: {message}",
            "details": {"causes": [{"message": message}]}}


def frame(channel: int, data: bytes = b"") -> bytes:
    return bytes([channel]) + data


# ----- I/O -----


def _is_websocket(request: web.Request) -> bool:
    return "websocket" in request.headers.get("Upgrade", "").lower()


def _prepare_target(pod: dict[str, Any], root: Path | None, opts: ExecOptions
                    ) -> tuple[ContainerProcess, dict[str, str]]:
    name = pod["metadata"]["name"]
    container = container_name(pod, opts.container)
    if root is None:
        raise ExecNotPossible("this API server has no --pod-log-root: it cannot find pods' processes to exec in")
    if not (pod.get("spec") or {}).get("nodeName"):
        raise ExecNotPossible(f"pod {name} is not scheduled to a node yet")
    try:
        record = json.loads((pod_dir(root, pod) / "pod.json").read_bytes())
    except (OSError, ValueError):
        record = None
    proc = container_process(record, container)
    try:
        env = parse_environ(Path(f"/proc/{proc.pid}/environ").read_bytes())
    except OSError:
        raise ExecNotPossible(f'container not found ("{container}"): it is not running') from None
    if opts.tty:
        env.setdefault("TERM", "xterm")
    return proc, env


async def serve_exec(request: web.Request, store: ObjectStore, root: Path | None, namespace: str, name: str
                     ) -> web.StreamResponse:
    """Answer one ``pods/exec`` request: errors as a ``Status`` before the upgrade, then the session."""
    opts = exec_options(request.query)
    pod = store.get("pods", name, namespace)
    proc, env = await asyncio.to_thread(_prepare_target, pod, root, opts)
    if not _is_websocket(request):
        what = "SPDY/3.1" if request.headers.get("Upgrade") else "a plain HTTP request"
        raise ExecNotPossible(f"the lab's Kubernetes API serves pods/exec over WebSocket only (subprotocols {V5}, "
                              f"{V4}: kubectl >= 1.30 by default, the official Python client's stream()); got {what}")
    ws = web.WebSocketResponse(protocols=PROTOCOLS, max_msg_size=0, compress=False)
    ready = ws.can_prepare(request)
    if not ready.ok or ready.protocol not in PROTOCOLS:
        offered = request.headers.get("Sec-WebSocket-Protocol", "none")
        raise ExecNotPossible(f"pods/exec needs one of the WebSocket subprotocols {V5}, {V4}; the client offered "
                              f"{offered}")
    nsenter, setsid = shutil.which("nsenter") or "nsenter", shutil.which("setsid") or "setsid"
    argv = exec_argv(proc, opts.command, tty=opts.tty, nsenter=nsenter, setsid=setsid)
    await ws.prepare(request)
    session = _Session(ws, opts, ws.ws_protocol == V5)
    try:
        await session.run(argv, env)
    except (ConnectionError, OSError):
        pass  # the client went away
    finally:
        if not ws.closed:
            with contextlib.suppress(ConnectionError, OSError):
                await ws.close()
    return ws


class _Session:
    """One exec stream: a process and the WebSocket it is wired to."""

    def __init__(self, ws: web.WebSocketResponse, opts: ExecOptions, v5: bool) -> None:
        self.ws = ws
        self.opts = opts
        self.v5 = v5
        self.proc: asyncio.subprocess.Process | None = None
        self.pty: int | None = None

    async def send(self, channel: int, data: bytes = b"") -> None:
        if not self.ws.closed:
            await self.ws.send_bytes(frame(channel, data))

    async def run(self, argv: list[str], env: dict[str, str]) -> None:
        o = self.opts
        await self.send(STDOUT if o.stdout else STDERR if o.stderr else ERROR)
        try:
            outputs = await self._spawn(argv, env)
        except OSError as e:
            await self.send(ERROR, json.dumps(internal_error(f"cannot start {argv[0]}: {e}")).encode())
            return
        proc = self.proc
        assert proc is not None
        try:
            async with asyncio.TaskGroup() as tg:
                pumps = [tg.create_task(self._pump(read, ch)) for read, ch in outputs]
                inbound = tg.create_task(self._inbound())
                waiter = tg.create_task(proc.wait())
                await asyncio.wait({waiter, inbound}, return_when=asyncio.FIRST_COMPLETED)
                if not waiter.done():  # the client went away (or closed the socket): end the command
                    self._kill()
                    await asyncio.wait({waiter}, timeout=KILL_WAIT_SECONDS)
                    for t in (*pumps, waiter):
                        t.cancel()
                    return
                if pumps:
                    await asyncio.wait(pumps, timeout=DRAIN_SECONDS)
                for t in pumps:
                    t.cancel()
                await self.send(ERROR, json.dumps(exit_status(waiter.result(), o.command)).encode())
                inbound.cancel()
                await self.ws.close()
        except* (ConnectionError, OSError):
            pass  # the client went away mid-session
        finally:
            if proc.returncode is None:
                self._kill()
            if self.pty is not None:
                with contextlib.suppress(OSError):
                    os.close(self.pty)
                self.pty = None

    async def _spawn(self, argv: list[str], env: dict[str, str]
                     ) -> list[tuple[Callable[[], Awaitable[bytes]], int]]:
        """Start the process; returns the output readers with their channels."""
        o = self.opts
        pipe, devnull = asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL
        if o.tty:
            master, slave = os.openpty()
            try:
                self.proc = await asyncio.create_subprocess_exec(*argv, stdin=slave, stdout=slave, stderr=slave,
                                                                 env=env, close_fds=True)
            except OSError:
                os.close(master)
                raise
            finally:
                os.close(slave)
            self.pty = master
            os.set_blocking(master, False)
            return [(self._pty_reader(master), STDOUT)] if o.stdout else []
        self.proc = await asyncio.create_subprocess_exec(
            *argv, stdin=pipe if o.stdin else devnull, stdout=pipe if o.stdout else devnull,
            stderr=pipe if o.stderr else devnull, env=env, close_fds=True, start_new_session=True)
        out: list[tuple[Callable[[], Awaitable[bytes]], int]] = []
        for stream, channel in ((self.proc.stdout, STDOUT), (self.proc.stderr, STDERR)):
            if stream is not None:
                out.append((_chunks(stream), channel))
        return out

    def _pty_reader(self, fd: int) -> Callable[[], Awaitable[bytes]]:
        loop = asyncio.get_running_loop()

        async def read() -> bytes:
            while True:
                try:
                    return os.read(fd, MAX_FRAME)  # b"" or EIO once the terminal's last user closed it
                except BlockingIOError:
                    pass
                except OSError:
                    return b""
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_reader(fd, _set_done, ready)
                try:
                    await ready
                finally:
                    loop.remove_reader(fd)

        return read

    async def _pump(self, read: Callable[[], Awaitable[bytes]], channel: int) -> None:
        while True:
            data = await read()
            if not data:
                return
            try:
                await self.send(channel, data)
            except (ConnectionError, OSError):
                return

    async def _inbound(self) -> None:
        """Client frames: stdin, resize, close (v5); returns when the client closes or goes away."""
        async for msg in self.ws:
            if msg.type == WSMsgType.BINARY:
                data = bytes(msg.data)
            elif msg.type == WSMsgType.TEXT:
                data = str(msg.data).encode()
            else:
                continue
            if not data:
                continue
            channel, payload = data[0], data[1:]
            if channel == STDIN and self.opts.stdin:
                await self._stdin(payload)
            elif channel == RESIZE and self.pty is not None:
                self._resize(payload)
            elif channel == CLOSE and self.v5 and payload[:1] == bytes([STDIN]):
                self._close_stdin()

    async def _stdin(self, data: bytes) -> None:
        if not data:
            return
        if self.pty is not None:
            fd = self.pty
            await asyncio.to_thread(_write_all, fd, data)
            return
        stdin = self.proc.stdin if self.proc is not None else None
        if stdin is None or stdin.is_closing():
            return
        with contextlib.suppress(ConnectionError, OSError):
            stdin.write(data)
            await stdin.drain()

    def _close_stdin(self) -> None:
        if self.pty is not None:
            with contextlib.suppress(OSError):
                os.write(self.pty, b"\x04")  # end of file, as typing Ctrl-D does
            return
        stdin = self.proc.stdin if self.proc is not None else None
        if stdin is not None and not stdin.is_closing():
            stdin.close()

    def _resize(self, payload: bytes) -> None:
        try:
            size = json.loads(payload)
            cols, rows = int(size.get("Width", 0)), int(size.get("Height", 0))
        except (ValueError, TypeError, AttributeError):
            return
        if self.pty is not None and cols > 0 and rows > 0:
            with contextlib.suppress(OSError):
                fcntl.ioctl(self.pty, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def _kill(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGKILL)


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _chunks(stream: asyncio.StreamReader) -> Callable[[], Awaitable[bytes]]:
    async def read() -> bytes:
        return await stream.read(MAX_FRAME)

    return read


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [], 1.0)
            continue
        except OSError:
            return
        view = view[n:]
