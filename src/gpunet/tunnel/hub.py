"""The coordinator's end of the agents' tunnels: which node has a live tunnel, and requests
sent through one to a replica on that node (docs/services.md, "The tunnel").

Each agent keeps one WebSocket open to the coordinator (``/v1/agent/tunnel``), so a replica
behind NAT is reached through the connection its agent opened. :meth:`TunnelHub.request`
multiplexes a request over it and returns as soon as the replica's status and headers are
back; the body follows chunk by chunk, each chunk as soon as it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Protocol

from gpunet.errors import ForwardFailed, MalformedFrame, NotForwarded
from gpunet.tunnel import protocol as p
from gpunet.tunnel.flow import Closed, Credit, Inbox

log = logging.getLogger("gpunet.tunnel")

Body = bytes | AsyncIterable[bytes]

DEFAULT_RESPONSE_TIMEOUT_S = 300.0  # for the replica's status line (a model may think long)
DEFAULT_IDLE_TIMEOUT_S = 300.0  # between two chunks of a response body


class Channel(Protocol):
    """One WebSocket, as the hub uses it: binary messages both ways."""

    async def send(self, message: bytes) -> None: ...

    async def receive(self) -> bytes:
        """The next message; raises :class:`Closed` when the connection ended."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class _Stream:
    __slots__ = ("id", "conn", "response", "inbox", "credit", "unacked", "pump", "done")

    def __init__(self, sid: int, conn: _Conn) -> None:
        self.id = sid
        self.conn = conn
        self.response: asyncio.Future[p.Response] = asyncio.get_running_loop().create_future()
        self.inbox = Inbox(p.INITIAL_WINDOW)  # of the response body, granted to the agent
        self.credit = Credit(p.INITIAL_WINDOW)  # of the request body, granted by the agent
        self.unacked = 0  # response bytes consumed and not yet granted back
        self.pump: asyncio.Task[None] | None = None
        self.done = False

    def fail(self, exc: Exception) -> None:
        """The stream broke: whoever waits on it gets ``exc``."""
        if not self.response.done():
            self.response.set_exception(exc)
            self.response.exception()  # retrieved: no "never retrieved" warning if no waiter
        self.inbox.fail(exc)
        self.credit.fail(exc)


class _Conn:
    """One live tunnel: its channel and its open streams; ``version``: of the protocol both
    ends speak."""

    def __init__(self, node_id: str, channel: Channel, version: int = 1) -> None:
        self.node_id = node_id
        self.channel = channel
        self.version = version
        self.streams: dict[int, _Stream] = {}
        self.next_id = 1
        self.closed = False
        self.lock = asyncio.Lock()  # one message at a time on the socket
        self.background: set[asyncio.Task[None]] = set()

    async def send(self, message: bytes) -> None:
        if self.closed:
            raise Closed("the tunnel is closed")
        try:
            async with self.lock:
                await self.channel.send(message)
        except Exception as exc:  # the socket's own errors vary with the server
            self.closed = True
            raise Closed(f"the tunnel broke: {exc}") from exc

    def send_soon(self, message: bytes) -> None:
        """Send from synchronous code (frame dispatch); failures only end the tunnel."""
        task = asyncio.get_running_loop().create_task(self._send_quietly(message))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _send_quietly(self, message: bytes) -> None:
        with contextlib.suppress(Closed):
            await self.send(message)

    def fail_all(self, reason: str) -> None:
        self.closed = True
        for s in list(self.streams.values()):
            # sent, with no answer yet: it may have reached the replica
            s.fail(ForwardFailed(f"the tunnel from node {self.node_id} closed: {reason}"))
        self.streams.clear()


class TunnelResponse:
    """A replica's answer: ``status``, ``headers``, then the body by ``async for`` (each
    chunk as soon as it arrives). :meth:`aclose` when done or when the client went away:
    an unfinished stream is reset, so the agent stops reading from the replica."""

    __slots__ = ("status", "headers", "_stream", "_hub")

    def __init__(self, hub: TunnelHub, stream: _Stream, status: int, headers: p.Headers) -> None:
        self.status = status
        self.headers = headers
        self._stream = stream
        self._hub = hub

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        s = self._stream
        try:
            if s.inbox.ready:  # no timer when the chunk is already here
                chunk = await s.inbox.get()
            else:
                async with asyncio.timeout(self._hub.idle_timeout_s):
                    chunk = await s.inbox.get()
        except TimeoutError:
            await self.aclose()
            raise ForwardFailed(
                f"no response data for {self._hub.idle_timeout_s:g} s", field="timeout"
            ) from None
        except BaseException:
            await self._drop()
            raise
        if chunk is None:
            await self._drop()
            raise StopAsyncIteration
        s.unacked += len(chunk)
        if s.unacked >= s.inbox.window // 2 and not s.conn.closed:
            credit, s.unacked = s.unacked, 0
            with contextlib.suppress(Closed):  # a lost tunnel shows in the next get()
                await s.conn.send(p.encode_window(s.id, credit))
        return chunk

    async def read(self) -> bytes:
        """The whole body (for small answers)."""
        return b"".join([chunk async for chunk in self])

    async def aclose(self) -> None:
        s = self._stream
        if not s.done and not s.inbox.finished:
            with contextlib.suppress(Closed):
                await s.conn.send(p.encode_reset(s.id, "the client went away", True))
        await self._drop()

    async def _drop(self) -> None:
        s = self._stream
        s.done = True
        s.conn.streams.pop(s.id, None)
        if s.pump is not None and not s.pump.done():
            s.pump.cancel()
            with contextlib.suppress(BaseException):
                await s.pump

    async def __aenter__(self) -> TunnelResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def version_of(offered: str | None) -> int:
    """The protocol's version to speak with an agent whose handshake carried ``offered`` in
    its ``X-Gpunet-Tunnel`` header (none: 1): the highest both speak."""
    try:
        return max(1, min(int(offered or 1), p.VERSION))
    except ValueError:
        return 1


class TunnelHub:
    """node id → its live tunnel, and requests through them. One per coordinator process;
    a newer tunnel from a node replaces the older one."""

    def __init__(
        self,
        *,
        response_timeout_s: float = DEFAULT_RESPONSE_TIMEOUT_S,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
    ) -> None:
        self.response_timeout_s = response_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._conns: dict[str, _Conn] = {}

    # ---- the registry ---------------------------------------------------------------
    def connected(self, node_id: str) -> bool:
        conn = self._conns.get(node_id)
        return conn is not None and not conn.closed

    def nodes(self) -> list[str]:
        """Nodes with a live tunnel, sorted."""
        return sorted(n for n, c in self._conns.items() if not c.closed)

    async def serve(self, node_id: str, channel: Channel, version: int = 1) -> None:
        """Run a tunnel from ``node_id`` (already authenticated) until it closes; ``version``:
        of the protocol both ends speak (see :func:`version_of`)."""
        conn = _Conn(node_id, channel, version)
        old = self._conns.get(node_id)
        self._conns[node_id] = conn
        if old is not None:
            log.info("a new tunnel from node %s replaces the old one", node_id)
            await self._shut(old, "replaced by a newer tunnel from the node", p.REPLACED)
        reason = "closed"
        try:
            while True:
                message = await channel.receive()
                self._dispatch(conn, message)
        except Closed as exc:
            reason = str(exc) or reason
        except MalformedFrame as exc:
            reason = f"protocol error: {exc.message}"
            log.warning("tunnel from node %s: %s", node_id, reason)
            with contextlib.suppress(Exception):
                await channel.close(1002, reason[:120])
        finally:
            if self._conns.get(node_id) is conn:
                del self._conns[node_id]
            conn.fail_all(reason)

    async def _shut(self, conn: _Conn, reason: str, code: int = 1001) -> None:
        conn.fail_all(reason)
        with contextlib.suppress(Exception):
            await conn.channel.close(code, reason[:120])

    async def close(self) -> None:
        """Close every tunnel (the coordinator is stopping)."""
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            await self._shut(conn, "the coordinator is stopping")

    def _dispatch(self, conn: _Conn, message: bytes) -> None:
        frame = p.decode(message)
        s = conn.streams.get(frame.stream)
        if s is None:
            return  # a stream already closed here (e.g. reset while frames were in flight)
        match frame:
            case p.Data():
                if s.response.done() and s.inbox.put(frame.payload):
                    return
                s.fail(ForwardFailed("the agent overran the stream's window or sent data early"))
                conn.streams.pop(s.id, None)
                conn.send_soon(p.encode_reset(s.id, "flow control violated", True))
            case p.End():
                s.inbox.end()
            case p.Reply():
                if s.response.done() or conn.version < 2:
                    raise MalformedFrame("a REPLY out of place", field="kind")
                if frame.body:
                    s.inbox.put(frame.body)  # within the window: INLINE_MAX is less
                s.inbox.end()
                s.done = True
                conn.streams.pop(s.id, None)
                s.response.set_result(p.Response(s.id, frame.status, frame.headers))
            case p.Response():
                if not s.response.done():
                    s.response.set_result(frame)
            case p.Window():
                s.credit.grant(frame.credit)
            case p.Reset():
                conn.streams.pop(s.id, None)
                s.done = True
                if frame.forwarded:
                    s.fail(ForwardFailed(f"the replica's answer broke: {frame.reason}"))
                else:
                    s.fail(NotForwarded(f"not forwarded to the replica: {frame.reason}"))
            case p.Open():
                raise MalformedFrame("an agent may not open streams", field="kind")

    # ---- requests -------------------------------------------------------------------
    async def request(
        self,
        node_id: str,
        attempt_id: str,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]] = (),
        body: Body = b"",
        *,
        timeout_s: float | None = None,
    ) -> TunnelResponse:
        """Send a request to the replica ``attempt_id`` on ``node_id``, and return once its
        status and headers are back (within ``timeout_s``, default ``response_timeout_s``).

        ``path`` carries the query string; ``body`` is bytes or an async iterable of chunks.
        Raises :class:`NotForwarded` when the request did not reach the replica (retry it on
        another), :class:`ForwardFailed` when it may have (do not), MalformedFrame when the
        request cannot be encoded (headers over the protocol's bounds)."""
        conn = self._conns.get(node_id)
        if conn is None or conn.closed:
            raise NotForwarded(f"no tunnel from node {node_id}", field="node")
        inline = isinstance(body, bytes | bytearray | memoryview)
        has_body = not inline or len(body) > 0  # type: ignore[arg-type]
        sid = conn.next_id
        whole = (  # the whole body in the OPEN itself
            conn.version >= 2 and has_body and inline and len(body) <= p.INLINE_MAX  # type: ignore[arg-type]
        )
        if whole:
            open_frame = p.encode_open(
                sid,
                attempt_id,
                method,
                path,
                headers,
                False,
                bytes(body),  # type: ignore[arg-type]
            )
            has_body = False
        else:
            open_frame = p.encode_open(sid, attempt_id, method, path, headers, has_body)
        conn.next_id = sid + 1 if sid < p.MAX_STREAM else 1
        s = _Stream(sid, conn)
        conn.streams[sid] = s
        try:
            await conn.send(open_frame)
        except Closed as exc:
            conn.streams.pop(sid, None)
            raise NotForwarded(f"the tunnel from node {node_id} closed: {exc}") from None
        if has_body:
            if inline and len(body) <= s.credit.available:  # type: ignore[arg-type]
                await self._send_inline(s, bytes(body))  # type: ignore[arg-type]
            else:
                s.pump = asyncio.get_running_loop().create_task(self._pump(s, body))
        try:
            async with asyncio.timeout(self.response_timeout_s if timeout_s is None else timeout_s):
                res = await s.response
        except TimeoutError:
            await TunnelResponse(self, s, 0, ()).aclose()
            raise ForwardFailed(
                f"no response from the replica within {timeout_s or self.response_timeout_s:g} s",
                field="timeout",
            ) from None
        except BaseException:
            await TunnelResponse(self, s, 0, ()).aclose()
            raise
        return TunnelResponse(self, s, res.status, res.headers)

    async def _send_inline(self, s: _Stream, body: bytes) -> None:
        """A body that fits the initial window: sent at once, without a task."""
        try:
            for i in range(0, len(body), p.MAX_CHUNK):
                await s.conn.send(p.encode_data(s.id, body[i : i + p.MAX_CHUNK]))
            s.credit.available -= len(body)
            await s.conn.send(p.encode_end(s.id))
        except Closed:
            pass  # the reader fails the stream (ForwardFailed: the OPEN went out)

    async def _pump(self, s: _Stream, body: Body) -> None:
        """Send a request body as the agent grants credit."""
        try:
            if isinstance(body, bytes | bytearray | memoryview):
                await self._send_chunk(s, memoryview(body))
            else:
                async for chunk in body:
                    await self._send_chunk(s, memoryview(chunk))
            await s.conn.send(p.encode_end(s.id))
        except (Closed, ForwardFailed, NotForwarded):
            pass  # the stream already carries its failure
        except Exception as exc:  # the client's upload broke: the replica must not wait
            s.fail(ForwardFailed(f"the request body failed: {exc}"))
            with contextlib.suppress(Closed):
                await s.conn.send(p.encode_reset(s.id, "the request body failed", True))

    async def _send_chunk(self, s: _Stream, data: memoryview) -> None:
        while data:
            n = await s.credit.take(min(len(data), p.MAX_CHUNK))
            await s.conn.send(p.encode_data(s.id, bytes(data[:n])))
            data = data[n:]
