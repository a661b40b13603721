"""The agent's end of the tunnel: one WebSocket to each coordinator, over which the
coordinator's gateway sends requests for the service replicas running on this node
(docs/services.md, "The tunnel"). The agent dials out, so replicas behind NAT are reachable;
each request is forwarded to the replica's port on 127.0.0.1 (gpunet.agent.replica_http) and
its answer streamed back chunk by chunk, or in one REPLY message when it is small and was
complete as its head arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Sequence

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from gpunet.agent.replica_http import Answer, Refused, ReplicaError, ReplicaPool, Timeouts
from gpunet.errors import MalformedFrame
from gpunet.tls import client_context
from gpunet.tunnel import protocol as p
from gpunet.tunnel.flow import Closed, Credit, Inbox

log = logging.getLogger("gpunet.agent.tunnel")

PATH = "/v1/agent/tunnel"
# not forwarded either way: they describe one hop, not the request
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# of a request's headers: the replica's Host, and the body's framing, are set here
NOT_FORWARDED = HOP_BY_HOP | {"host"}
REPLICA_TIMEOUT = Timeouts(connect=5.0, read=300.0, write=60.0)


def tunnel_url(coordinator: str) -> str:
    """The tunnel's WebSocket URL at a coordinator's base URL (https → wss)."""
    base = coordinator.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base.removeprefix("https://") + PATH
    return "ws://" + base.removeprefix("http://") + PATH


def _ssl_context(verify: bool | ssl.SSLContext) -> ssl.SSLContext:
    if isinstance(verify, ssl.SSLContext):
        return verify
    if verify:
        return client_context()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Stream:
    __slots__ = ("id", "inbox", "credit", "unacked", "task")

    def __init__(self, sid: int) -> None:
        self.id = sid
        self.inbox = Inbox(p.INITIAL_WINDOW)  # the request body, as the hub sends it
        self.credit = Credit(p.INITIAL_WINDOW)  # of the response body, granted by the hub
        self.unacked = 0
        self.task: asyncio.Task[None] | None = None


class _Conn:
    """One live tunnel to one coordinator, with its streams; ``version``: of the protocol
    both ends speak (the coordinator's answer to the handshake's header)."""

    def __init__(self, ws: ClientConnection, version: int = 1) -> None:
        self.ws = ws
        self.version = version
        self.streams: dict[int, _Stream] = {}
        self.closed = False

    async def send(self, message: bytes) -> None:
        if self.closed:
            raise Closed("the tunnel is closed")
        try:
            await self.ws.send(message)
        except WebSocketException as exc:
            self.closed = True
            raise Closed(str(exc)) from exc


class TunnelClient:
    """Keeps a tunnel open to each coordinator URL until :meth:`stop`, reconnecting with
    bounded backoff; ``port_of(attempt_id)`` is the local port of a replica running here
    (None: no such replica, and the request is refused as not forwarded)."""

    def __init__(
        self,
        url: str | Sequence[str],
        token: str,
        verify: bool | ssl.SSLContext,
        port_of: Callable[[str], int | None],
        *,
        max_streams: int = 1024,
        backoff_max_s: float = 10.0,
        replica_timeout: Timeouts = REPLICA_TIMEOUT,
    ) -> None:
        self.urls = [url] if isinstance(url, str) else list(url)
        self.token = token
        self.verify = verify
        self.port_of = port_of
        self.max_streams = max_streams
        self.backoff_max_s = backoff_max_s
        self.replica_timeout = replica_timeout
        self.stopping = asyncio.Event()
        self.live: dict[str, _Conn] = {}  # coordinator URL -> its open tunnel
        self._http: ReplicaPool | None = None
        self._background: set[asyncio.Task[None]] = set()

    def stop(self) -> None:
        self.stopping.set()

    def connected(self, url: str | None = None) -> bool:
        return url in self.live if url is not None else bool(self.live)

    async def run(self) -> None:
        """Hold every tunnel open until :meth:`stop`."""
        # the replicas are on this host, plain HTTP/1.1, never through a proxy
        self._http = ReplicaPool(timeouts=self.replica_timeout, max_idle=32)
        try:
            await asyncio.gather(*(self._keep(u) for u in self.urls))
        finally:
            await self._http.aclose()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)

    async def _keep(self, coordinator: str) -> None:
        url = tunnel_url(coordinator)
        ssl_ctx = _ssl_context(self.verify) if url.startswith("wss://") else None
        delay = 0.2
        while not self.stopping.is_set():
            try:
                async with connect(
                    url,
                    additional_headers={
                        "Authorization": f"Bearer {self.token}",
                        p.VERSION_HEADER: str(p.VERSION),
                    },
                    ssl=ssl_ctx,
                    compression=None,  # bodies are often compressed already; latency first
                    max_size=p.MAX_FRAME,
                    open_timeout=10,
                    ping_interval=20,
                    ping_timeout=20,
                    close_timeout=5,
                ) as ws:
                    log.info("tunnel open to %s", coordinator)
                    await self._serve(coordinator, ws)
                    if ws.close_code != p.REPLACED:
                        delay = 0.2
                    # else another tunnel from this node took its place (two URLs of one
                    # coordinator?): keep backing off rather than take it back at once
                    if not self.stopping.is_set():
                        log.warning(
                            "tunnel to %s closed (%s %s); reconnecting in %.1fs",
                            coordinator,
                            ws.close_code,
                            ws.close_reason,
                            delay,
                        )
            except InvalidStatus as exc:
                log.warning("the coordinator at %s refused the tunnel: %s", coordinator, exc)
                delay = self.backoff_max_s  # a refused token will not work sooner
            except (OSError, TimeoutError, WebSocketException) as exc:
                log.warning("tunnel to %s: %s; reconnecting in %.1fs", coordinator, exc, delay)
            await self._sleep(delay)
            delay = min(delay * 2, self.backoff_max_s)

    async def _serve(self, coordinator: str, ws: ClientConnection) -> None:
        conn = _Conn(ws, _version(ws))
        self.live[coordinator] = conn

        async def close_on_stop() -> None:
            await self.stopping.wait()
            await ws.close()

        closer = asyncio.get_running_loop().create_task(close_on_stop())
        try:
            async for message in ws:  # ends when the connection closes
                if isinstance(message, str):
                    raise MalformedFrame("a text message", field="frame")
                self._dispatch(conn, message)
        except MalformedFrame as exc:
            log.warning("tunnel to %s: protocol error: %s", coordinator, exc.message)
            await ws.close(1002, exc.message[:120])
        except ConnectionClosed:
            pass  # the caller reads how from the close code
        finally:
            closer.cancel()
            conn.closed = True
            if self.live.get(coordinator) is conn:
                del self.live[coordinator]
            tasks = [s.task for s in conn.streams.values() if s.task is not None]
            for t in tasks:
                t.cancel()  # closes their replica connections
            await asyncio.gather(*tasks, return_exceptions=True)

    def _dispatch(self, conn: _Conn, message: bytes) -> None:
        frame = p.decode(message)
        if isinstance(frame, p.Open):
            if frame.stream in conn.streams:
                raise MalformedFrame(f"stream {frame.stream} is already open", field="stream")
            if len(conn.streams) >= self.max_streams:
                reason = f"over {self.max_streams} requests at once on this node"
                self._send_soon(conn, p.encode_reset(frame.stream, reason, False))
                return
            new = _Stream(frame.stream)
            if not frame.has_body:
                new.inbox.end()
            conn.streams[new.id] = new
            new.task = asyncio.get_running_loop().create_task(self._forward(conn, new, frame))
            return
        s = conn.streams.get(frame.stream)
        if s is None:
            return  # finished here already
        match frame:
            case p.Data():
                if not s.inbox.put(frame.payload):
                    self._abort(conn, s, "flow control violated")
            case p.End():
                s.inbox.end()
            case p.Window():
                s.credit.grant(frame.credit)
            case p.Reset():
                conn.streams.pop(s.id, None)
                if s.task is not None:
                    s.task.cancel()  # the client went away: stop reading from the replica
            case p.Response():
                raise MalformedFrame("a coordinator may not send a response", field="kind")

    def _abort(self, conn: _Conn, s: _Stream, reason: str) -> None:
        conn.streams.pop(s.id, None)
        if s.task is not None:
            s.task.cancel()
        self._send_soon(conn, p.encode_reset(s.id, reason, True))

    def _send_soon(self, conn: _Conn, message: bytes) -> None:
        async def go() -> None:
            with contextlib.suppress(Closed):
                await conn.send(message)

        task = asyncio.get_running_loop().create_task(go())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _body(self, conn: _Conn, s: _Stream) -> AsyncIterator[bytes]:
        """The request body as the hub sends it, granting credit as the replica takes it."""
        while True:
            chunk = await s.inbox.get()
            if chunk is None:
                return
            yield chunk
            s.unacked += len(chunk)
            if s.unacked >= p.INITIAL_WINDOW // 2:
                credit, s.unacked = s.unacked, 0
                await conn.send(p.encode_window(s.id, credit))

    async def _forward(self, conn: _Conn, s: _Stream, req: p.Open) -> None:
        assert self._http is not None
        try:
            port = self.port_of(req.attempt_id)
        except Exception:  # noqa: BLE001 - a lookup bug must not kill the tunnel
            log.exception("port_of(%s) failed", req.attempt_id)
            port = None
        if port is None:
            await self._reset(conn, s, f"no replica {req.attempt_id} on this node", False)
            return
        # a streamed body keeps the Content-Length the request had (else it goes chunked);
        # the replica's client sets it for any other (an inline body's length, or none)
        headers = [
            (k, v)
            for k, v in req.headers
            if (low := k.lower()) not in NOT_FORWARDED and (req.has_body or low != "content-length")
        ]
        content = (
            req.body if req.body is not None else self._body(conn, s) if req.has_body else None
        )
        try:
            answer = await self._http.request(
                port,
                req.method,
                req.path,
                headers,
                content,
                inline_max=p.INLINE_MAX if conn.version >= 2 else 0,
            )
        except Refused as exc:
            await self._reset(conn, s, str(exc), False)
            return
        except ReplicaError as exc:
            await self._reset(conn, s, f"the replica failed: {exc}", True)
            return
        except Closed:
            return
        try:
            await self._answer(conn, s, answer)
        except ReplicaError as exc:
            await self._reset(conn, s, f"the replica's answer broke: {exc}", True)
        except Closed:
            pass  # the tunnel is gone; the coordinator fails the stream itself
        finally:
            await answer.aclose()

    async def _answer(self, conn: _Conn, s: _Stream, answer: Answer) -> None:
        headers = [(k, v) for k, v in answer.headers if k not in HOP_BY_HOP]
        if answer.complete is not None:  # all of it is here: one message
            try:
                message = p.encode_reply(s.id, answer.status, headers, answer.complete)
            except MalformedFrame:
                pass  # headers over the bounds: RESPONSE refuses them the same way
            else:
                conn.streams.pop(s.id, None)
                await conn.send(message)
                return
        await conn.send(p.encode_response(s.id, answer.status, headers))
        async for chunk in answer.chunks():
            view = memoryview(chunk)
            while view:
                n = await s.credit.take(min(len(view), p.MAX_CHUNK))
                await conn.send(p.encode_data(s.id, bytes(view[:n])))
                view = view[n:]
        await conn.send(p.encode_end(s.id))
        conn.streams.pop(s.id, None)

    async def _reset(self, conn: _Conn, s: _Stream, reason: str, forwarded: bool) -> None:
        conn.streams.pop(s.id, None)
        with contextlib.suppress(Closed):
            await conn.send(p.encode_reset(s.id, reason, forwarded))


def _version(ws: ClientConnection) -> int:
    """The protocol's version the coordinator answered with (1 when it said none)."""
    raw = ws.response.headers.get(p.VERSION_HEADER) if ws.response is not None else None
    try:
        return max(1, min(int(raw or 1), p.VERSION))
    except ValueError:
        return 1
