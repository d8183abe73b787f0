"""A watch-resuming HTTPS front for the lab's Kubernetes API emulator.

The lab supervisor runs one :class:`ApiFront` per cluster on the cluster's public API port and the
API process (``python -m lab.kube.api``) on an internal port behind it. The front relays every
request as it is (method, path, query, headers, body; responses streamed back), with two additions
that make an API process crash invisible to clients that are only watching:

- a watch whose upstream connection breaks (the API process was killed) is re-issued upstream with
  ``resourceVersion=<the last one the client got>`` (objects' and BOOKMARKs') once the API is back,
  with backoff, for at most ``resume_within`` seconds; the client's stream carries on as if nothing
  happened, each event exactly once and in order (only complete lines are relayed, so a line cut by
  the crash comes again from the re-watch). Should the re-watch be refused (410 Gone: an ``ERROR``
  event, or an error status), the client gets that ``ERROR`` event and its stream ends, as against a
  real apiserver, so the client relists. A clean upstream end (``timeoutSeconds`` reached, or the API
  stopped gracefully) ends the client's stream too;
- any other request while the API process is down gets ``503 ServiceUnavailable`` with a
  Kubernetes ``Status`` body and ``Retry-After: 1`` (client-go retries those) instead of hanging.

A WebSocket upgrade (``kubectl exec``, the official client's ``stream()``) is relayed as a WebSocket:
the front connects upstream offering the client's subprotocols, accepts the client with the one the
API chose, and copies frames both ways (text as text, binary as binary); a close from either side is
passed on with its code and reason, and an upstream connection that breaks breaks the client's too.
An upgrade the API refuses is answered with the API's own error: aiohttp's WebSocket client drops
the refusal's body, so the front asks again without ``Upgrade`` (the API's exec validates before it
looks at the upgrade, so it gives the same ``Status``) and relays that when its code matches.

The front serves the API's own certificate (``tls.crt``/``tls.key`` in the API's TLS directory, which
must exist: :func:`lab.kube.api.server.ensure_tls_files` makes them), so kubeconfigs that trust the
API's CA work unchanged, and it checks the API's certificate against that CA. Watches answered in a
format other than JSON lines (e.g. protobuf) are relayed without resuming. The ``Table`` watch events
``kubectl get -w`` asks for are JSON lines whose Table carries the object's resourceVersion: they resume.
Known limit: a watch started without a resourceVersion (or with ``0``) gets its initial state as
synthetic ``ADDED`` events in no particular order; if the API dies in the middle of those, the
re-watch starts after the highest resourceVersion relayed, so objects not yet relayed are missed.
"""

from __future__ import annotations

import asyncio
import enum
import math
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from aiohttp import web
from multidict import CIMultiDict, MultiDict, MultiMapping
from yarl import URL

from lab.kube.api.errors import ApiError
from meshcore.pki import CA_FILE, CERT_FILE, KEY_FILE

RESUME_WITHIN = 60.0
"""Seconds a broken watch is retried upstream before the client's stream is closed."""
CONNECT_TIMEOUT = 2.0
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0
MAX_BODY = 64 * 1024 * 1024
INITIAL_EVENTS_END = "k8s.io/initial-events-end"
# hop-by-hop headers (RFC 9110 7.6.1) and the ones aiohttp computes for each leg itself
_NOT_RELAYED = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                          "trailer", "transfer-encoding", "upgrade", "content-length"})
_UPSTREAM_BROKE = (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError)
_RESUME_DROPS = ("resourceVersion", "resourceVersionMatch", "sendInitialEvents", "timeoutSeconds")
# set by aiohttp's WebSocket client itself for the upstream leg
_WS_OWN = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-protocol",
                     "sec-websocket-extensions"})
WS_CLOSE_TIMEOUT = 10.0
_WS_UNSENDABLE_CODES = (1005, 1006, 1015)  # reserved: never on the wire


class FrontError(RuntimeError):
    """The front cannot start (e.g. the API's TLS files are missing)."""


# ----- pure parts -----


def is_watch(path: str, query: Mapping[str, str]) -> bool:
    """True for a watch request: ``watch=1|true`` or the legacy ``/api/v1/watch/...``,
    ``/apis/<group>/<version>/watch/...`` paths."""
    if query.get("watch", "").lower() in ("1", "true"):
        return True
    parts = path.split("/")
    return (len(parts) > 3 and parts[1] == "api" and parts[3] == "watch") or (
        len(parts) > 4 and parts[1] == "apis" and parts[4] == "watch")


def request_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """The client's headers as sent upstream: all but hop-by-hop ones and ``Accept-Encoding`` (so the
    API answers uncompressed and watch lines can be read)."""
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in headers.items():
        if k.lower() not in _NOT_RELAYED and k.lower() != "accept-encoding":
            out.add(k, v)
    return out


def is_websocket_upgrade(headers: Mapping[str, str]) -> bool:
    """True for a WebSocket handshake (``Upgrade: websocket`` with ``Connection: upgrade``)."""
    return ("websocket" in headers.get("Upgrade", "").lower()
            and "upgrade" in headers.get("Connection", "").lower())


def websocket_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """The client's headers for the upstream handshake: :func:`request_headers` without the
    ``Sec-WebSocket-*`` ones aiohttp's client makes itself."""
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in request_headers(headers).items():
        if k.lower() not in _WS_OWN:
            out.add(k, v)
    return out


def offered_protocols(headers: MultiMapping[str]) -> tuple[str, ...]:
    """The subprotocols the client offers, in its order (the header may repeat and lists with commas)."""
    out: list[str] = []
    for value in headers.getall("Sec-WebSocket-Protocol", ()):
        out += [p.strip() for p in value.split(",") if p.strip()]
    return tuple(dict.fromkeys(out))


def close_code(code: int | None) -> int:
    """The code to pass on for a close received with ``code`` (reserved or missing codes become 1000)."""
    return 1000 if code is None or code in _WS_UNSENDABLE_CODES or not 1000 <= code <= 4999 else code


def response_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """The API's response headers as sent to the client: all but hop-by-hop ones."""
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in headers.items():
        if k.lower() not in _NOT_RELAYED:
            out.add(k, v)
    return out


def unavailable_status(message: str) -> dict[str, Any]:
    """The ``Status`` answered while the API process is down."""
    return ApiError(503, "ServiceUnavailable", message).status()


def error_event(status: int, body: bytes) -> bytes:
    """A watch ``ERROR`` line for a refused re-watch: the API's ``Status`` body, or one made up."""
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError:
        doc = None
    if not (isinstance(doc, dict) and doc.get("kind") == "Status"):
        reason = "Expired" if status == 410 else "InternalError"
        doc = ApiError(status, reason, f"re-watching after an API restart failed with HTTP {status}").status()
    return msgspec.json.encode({"type": "ERROR", "object": doc}) + b"\n"


class _Meta(msgspec.Struct):
    resourceVersion: str = ""  # noqa: N815 (the wire name)
    annotations: dict[str, Any] | None = None


class _Object(msgspec.Struct):
    metadata: _Meta | None = None


class _Event(msgspec.Struct):
    type: str
    object: _Object | None = None


_EVENT = msgspec.json.Decoder(_Event)


def _rv_key(rv: str) -> tuple[int, int | str]:
    return (1, int(rv)) if rv.isdigit() else (0, rv)


@dataclass
class WatchProgress:
    """What one watch has relayed so far, and how to re-issue it (pure; fed line by line).

    ``resource_version``: the highest resourceVersion relayed (objects and BOOKMARKs; in an ordered
    watch stream that is the last one). ``resumable`` turns False on a line that is not a watch event,
    or while initial events asked for with ``sendInitialEvents`` have not been followed by their
    end-marking BOOKMARK (a re-watch could not deliver that marker)."""

    query: MultiDict[str]
    resource_version: str | None = None
    initial_events_pending: bool = False
    undecodable: bool = False
    error: bool = False
    events: int = 0

    @classmethod
    def of(cls, query: MultiMapping[str]) -> WatchProgress:
        q = MultiDict(query)
        return cls(q, initial_events_pending=q.get("sendInitialEvents", "").lower() in ("1", "true"))

    @property
    def resumable(self) -> bool:
        return not (self.undecodable or self.error or self.initial_events_pending)

    def see(self, line: bytes) -> None:
        """Account for one complete line relayed to the client."""
        if not line.strip():
            return
        try:
            ev = _EVENT.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.undecodable = True
            return
        self.events += 1
        if ev.type == "ERROR":
            self.error = True
            return
        md = ev.object.metadata if ev.object is not None else None
        if md is None:
            return
        if md.resourceVersion and (self.resource_version is None
                                   or _rv_key(md.resourceVersion) > _rv_key(self.resource_version)):
            self.resource_version = md.resourceVersion
        if ev.type == "BOOKMARK" and md.annotations and str(md.annotations.get(INITIAL_EVENTS_END)) == "true":
            self.initial_events_pending = False

    def resume_query(self, timeout_seconds: int | None) -> MultiDict[str]:
        """The query of the re-watch: the client's, from the last resourceVersion relayed (as it was if
        nothing was relayed yet), with the client's remaining ``timeoutSeconds``."""
        q = MultiDict(self.query)
        drops = _RESUME_DROPS if self.resource_version is not None else ("timeoutSeconds",)
        for k in drops:
            q.popall(k, None)
        if self.resource_version is not None:
            q["resourceVersion"] = self.resource_version
        if timeout_seconds is not None:
            q["timeoutSeconds"] = str(timeout_seconds)
        return q


def client_timeout(query: Mapping[str, str]) -> float | None:
    """The client's ``timeoutSeconds`` (None if absent or unusable: the API answers those itself)."""
    try:
        value = float(query.get("timeoutSeconds") or 0)
    except ValueError:
        return None
    return value if value > 0 else None


# ----- I/O -----


class _End(enum.Enum):
    CLEAN = "clean"  # upstream ended its stream (timeout, graceful stop, ERROR event): end the client's
    BROKEN = "broken"  # upstream connection broke: resume if possible
    ABORT = "abort"  # cannot carry on: close the client's connection as a broken upstream would


@dataclass
class FrontStats:
    """Counters of one front (for status output and tests)."""

    requests: int = 0
    unavailable: int = 0
    watches: int = 0
    websockets: int = 0
    resumed: int = 0
    resume_failures: int = 0


class ApiFront:
    """An HTTPS reverse proxy on ``127.0.0.1:listen_port`` for the API on ``127.0.0.1:upstream_port``
    (see the module docstring). ``async with`` or :meth:`start` / :meth:`stop`."""

    def __init__(self, listen_port: int, upstream_port: int, tls_dir: Path, *,
                 resume_within: float = RESUME_WITHIN, host: str = "127.0.0.1") -> None:
        self.listen_port = listen_port
        self.upstream_port = upstream_port
        self.tls_dir = Path(tls_dir)
        self.resume_within = resume_within
        self.host = host
        self.stats = FrontStats()
        self._base = f"https://127.0.0.1:{upstream_port}"
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.listen_port}"

    async def start(self) -> None:
        """Listen (returns once the port is bound); raises :class:`FrontError` without the TLS files."""
        cert, key, ca = (self.tls_dir / n for n in (CERT_FILE, KEY_FILE, CA_FILE))
        missing = [str(p) for p in (cert, key, ca) if not p.exists()]
        if missing:
            raise FrontError(f"the API front needs the API's TLS files; missing: {', '.join(missing)}")
        serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        serving.load_cert_chain(cert, key)
        upstream = ssl.create_default_context(cafile=str(ca))
        # limit=0: every open watch holds a connection; a pool limit would queue requests behind them
        connector = aiohttp.TCPConnector(ssl=upstream, limit=0)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                              skip_auto_headers=("Accept-Encoding", "User-Agent"))
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a client that goes away cancels its handler, which closes the upstream leg
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.listen_port, ssl_context=serving, reuse_address=True).start()
        except OSError:
            await runner.cleanup()
            await self._session.close()
            self._session = None
            raise
        self._runner = runner
        self.listen_port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop listening and end every relayed request. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> ApiFront:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ----- handlers -----

    def _upstream_url(self, request: web.Request, query: MultiDict[str] | None = None) -> URL:
        if query is None:
            return URL(self._base + request.raw_path, encoded=True)
        return URL(self._base + request.rel_url.raw_path, encoded=True).with_query(query)

    def _unavailable(self, err: BaseException) -> web.Response:
        self.stats.unavailable += 1
        msg = (f"the lab's Kubernetes API is restarting (127.0.0.1:{self.upstream_port} does not answer: "
               f"{str(err) or type(err).__name__}); try again in a few seconds")
        return web.json_response(unavailable_status(msg), status=503, headers={"Retry-After": "1"})

    def _connect_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.stats.requests += 1
        if is_websocket_upgrade(request.headers):
            return await self._websocket(request)
        body = await request.read()
        headers = request_headers(request.headers)
        if request.method == "GET" and is_watch(request.path, request.query):
            return await self._watch(request, headers)
        up = await self._send(request, headers, body)
        if isinstance(up, web.Response):
            return up
        try:
            return await self._relay(request, up)
        finally:
            up.release()

    async def _send(self, request: web.Request, headers: CIMultiDict[str], body: bytes
                    ) -> aiohttp.ClientResponse | web.Response:
        """The API's response to the request (its headers read), or a 503 when the API does not answer."""
        assert self._session is not None
        for attempt in (1, 2):
            try:
                return await self._session.request(request.method, self._upstream_url(request),
                                                   headers=headers, data=body or None, allow_redirects=False,
                                                   timeout=self._connect_timeout())
            except aiohttp.ServerDisconnectedError as err:
                # a kept-alive connection the killed API left behind: safe to resend a read once
                if attempt == 2 or request.method not in ("GET", "HEAD"):
                    return self._unavailable(err)
            except (aiohttp.ClientConnectionError, TimeoutError) as err:
                return self._unavailable(err)
        raise AssertionError("unreachable")

    async def _relay(self, request: web.Request, up: aiohttp.ClientResponse) -> web.StreamResponse:
        """The API's answer, whole when it has a length, else streamed as it comes."""
        headers = response_headers(up.headers)
        if up.headers.get("Content-Length") is not None or request.method == "HEAD":
            try:
                data = await up.read()
            except _UPSTREAM_BROKE as err:
                return self._unavailable(err)
            return web.Response(status=up.status, reason=up.reason, headers=headers, body=data)
        resp = web.StreamResponse(status=up.status, reason=up.reason, headers=headers)
        resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
            while True:
                try:
                    chunk = await up.content.readany()
                except _UPSTREAM_BROKE:
                    _abort(request)  # the client sees the break, as it would have from the API itself
                    return resp
                if not chunk:
                    break
                await resp.write(chunk)
            await resp.write_eof()
        except ConnectionError:
            pass  # the client went away
        return resp

    async def _watch(self, request: web.Request, headers: CIMultiDict[str]) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        timeout = client_timeout(request.query)
        deadline = None if timeout is None else loop.time() + timeout
        up = await self._send(request, headers, b"")
        if isinstance(up, web.Response):
            return up
        if up.status != 200 or not up.content_type.startswith("application/json"):
            try:
                return await self._relay(request, up)
            finally:
                up.release()
        self.stats.watches += 1
        resp = web.StreamResponse(status=200, reason=up.reason, headers=response_headers(up.headers))
        resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
            end = await self._follow(request, headers, up, resp, deadline)
            if end is _End.CLEAN:
                await resp.write_eof()
            else:
                _abort(request)
        except ConnectionError:
            pass  # the client went away
        return resp

    async def _follow(self, request: web.Request, headers: CIMultiDict[str], up: aiohttp.ClientResponse,
                      resp: web.StreamResponse, deadline: float | None) -> _End:
        """Relay the watch ``up`` to ``resp``, re-watching each time it breaks, until it ends for good."""
        progress = WatchProgress.of(request.query)
        current = up
        while True:
            try:
                end = await self._pump(current, resp, progress)
            finally:
                current.release()
            if end is not _End.BROKEN:
                return end
            if not progress.resumable:
                return _End.ABORT
            again = await self._rewatch(request, headers, progress, deadline, resp)
            if isinstance(again, _End):
                return again
            self.stats.resumed += 1
            current = again

    async def _pump(self, up: aiohttp.ClientResponse, resp: web.StreamResponse, progress: WatchProgress) -> _End:
        """Relay complete event lines from ``up`` until it ends (CLEAN), breaks (BROKEN), or sends ERROR."""
        pending = b""
        while True:
            try:
                chunk = await up.content.readany()
            except _UPSTREAM_BROKE:
                return _End.BROKEN  # an incomplete last line is dropped: the re-watch sends it again
            if not chunk:
                break
            pending += chunk
            cut = pending.rfind(b"\n")
            if cut < 0:
                continue
            lines, pending = pending[:cut + 1], pending[cut + 1:]
            await resp.write(lines)  # a client gone raises ConnectionResetError here (or cancels the handler)
            for line in lines.split(b"\n"):
                progress.see(line)
            if progress.error:
                return _End.CLEAN
        if pending:
            await resp.write(pending)
        return _End.CLEAN

    async def _rewatch(self, request: web.Request, headers: CIMultiDict[str], progress: WatchProgress,
                       deadline: float | None, resp: web.StreamResponse) -> aiohttp.ClientResponse | _End:
        """Re-issue a broken watch until the API takes it (its response), refuses it (the ERROR event is
        written: CLEAN), the client's timeout passes (CLEAN) or ``resume_within`` runs out (ABORT)."""
        assert self._session is not None
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.resume_within
        delay = BACKOFF_FIRST
        while True:
            now = loop.time()
            remaining = None if deadline is None else deadline - now
            if remaining is not None and remaining <= 0:
                return _End.CLEAN
            if now >= give_up:
                self.stats.resume_failures += 1
                return _End.ABORT
            url = self._upstream_url(request, progress.resume_query(
                None if remaining is None else max(1, math.ceil(remaining))))
            try:
                up = await self._session.get(url, headers=headers, allow_redirects=False,
                                             timeout=self._connect_timeout())
            except (aiohttp.ClientConnectionError, TimeoutError):
                pass
            else:
                if up.status == 200:
                    return up
                try:
                    if up.status < 500:  # refused for good (e.g. 410 Gone): the client relists
                        await resp.write(error_event(up.status, await up.read()))
                        return _End.CLEAN
                finally:
                    up.release()
            await asyncio.sleep(max(0.0, min(delay, give_up - loop.time())))
            delay = min(delay * 2, BACKOFF_MAX)


    # ----- WebSockets -----

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        """Relay one WebSocket session (see the module docstring)."""
        assert self._session is not None
        try:
            up = await self._session.ws_connect(
                self._upstream_url(request), method=request.method, protocols=offered_protocols(request.headers),
                headers=websocket_headers(request.headers), autoping=True, autoclose=True, max_msg_size=0,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=WS_CLOSE_TIMEOUT))
        except aiohttp.WSServerHandshakeError as err:
            return await self._refused_upgrade(request, err)
        except (aiohttp.ClientConnectionError, TimeoutError) as err:
            return self._unavailable(err)
        self.stats.websockets += 1
        try:
            ws = web.WebSocketResponse(protocols=(up.protocol,) if up.protocol else (), autoping=True,
                                       autoclose=True, max_msg_size=0, compress=False,
                                       timeout=WS_CLOSE_TIMEOUT)
            await ws.prepare(request)
            async with asyncio.TaskGroup() as tg:
                to_api = tg.create_task(_ws_copy(ws, up))
                to_client = tg.create_task(_ws_copy(up, ws))
                done, _ = await asyncio.wait({to_api, to_client}, return_when=asyncio.FIRST_COMPLETED)
                if to_client in done and to_client.result() is False and not ws.closed:
                    _abort(request)  # the API's side broke: so does the client's
                    to_api.cancel()
            return ws
        finally:
            await up.close()

    async def _refused_upgrade(self, request: web.Request, err: aiohttp.WSServerHandshakeError
                               ) -> web.StreamResponse:
        """The API's answer to a refused upgrade, asked again without ``Upgrade`` (see the module docstring)."""
        if err.status != 101:
            headers = websocket_headers(request.headers)
            again = await self._send(request, headers, b"")
            if isinstance(again, web.Response):
                return again
            try:
                if again.status == err.status:
                    return await self._relay(request, again)
            finally:
                again.release()
        status = err.status if err.status >= 400 else 502
        msg = f"the Kubernetes API refused the WebSocket upgrade: HTTP {err.status} ({err.message})"
        return web.json_response(ApiError(status, "BadRequest" if status < 500 else "BadGateway", msg).status(),
                                 status=status)


async def _ws_copy(src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                   dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> bool:
    """Copy messages from ``src`` to ``dst`` until ``src`` closes (True: cleanly, its close passed on to
    ``dst``) or breaks (False)."""
    while True:
        msg = await src.receive()
        try:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await dst.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await dst.send_bytes(msg.data)
            elif msg.type == aiohttp.WSMsgType.CLOSE:
                await dst.close(code=close_code(msg.data), message=str(msg.extra or "").encode())
                return True
            elif msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                code = src.close_code
                if code is None or code in _WS_UNSENDABLE_CODES:
                    return False  # gone without a close frame (1006): not a clean close to pass on
                if not dst.closed:
                    await dst.close(code=close_code(code))
                return True
            elif msg.type == aiohttp.WSMsgType.ERROR:
                return False
        except ConnectionError:
            return False  # the other side went away: its own copy sees that


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()
