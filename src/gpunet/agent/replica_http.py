"""The agent's HTTP/1.1 client to the service replicas on this host (127.0.0.1), for the
tunnel (gpunet.agent.tunnel): h11 over asyncio streams, kept-alive connections per port.

Lean on purpose: a request through the gateway makes two HTTP hops (client to coordinator,
agent to replica), and the second one is on this host, plain HTTP/1.1, never through a proxy.
What a general client adds (URL parsing, header models, cookie and redirect handling, a
connection pool checking each idle connection) is per request overhead the gateway's latency
pays for nothing.

Errors: :class:`Refused` when the request never reached the replica (its port refused the
connection, or none opened in time): safe to send elsewhere. :class:`ReplicaError` when it may
have (it broke, timed out or broke HTTP after the request went out).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict, deque
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from urllib.parse import quote

import h11

READ_SIZE = 64 * 1024  # bytes asked of the socket per read


class Refused(Exception):
    """The request never reached the replica."""


class ReplicaError(Exception):
    """The request may have reached the replica, and its answer broke or never came."""


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0  # to open a connection
    read: float = 300.0  # for each read of the answer (a model may think long)
    write: float = 60.0  # for each write of the request


class _Conn:
    __slots__ = ("port", "reader", "writer", "h11", "got", "eof")

    def __init__(
        self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.port = port
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)
        self.got = 0  # bytes read of the current answer
        self.eof = False  # the replica closed its side (or reset the connection)

    def usable(self) -> bool:
        """An idle connection the replica has not closed."""
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


class Answer:
    """A replica's answer: ``status`` and ``headers`` (names lowercased), ``complete`` (the
    whole body, when it had arrived with the head, else None), and the rest of the body by
    :meth:`chunks`. :meth:`aclose` once done: it keeps the connection for the next request
    when the answer was read to its end, else closes it."""

    __slots__ = ("status", "headers", "complete", "_pending", "_conn", "_pool", "_ended")

    def __init__(
        self,
        pool: ReplicaPool,
        conn: _Conn,
        status: int,
        headers: list[tuple[str, str]],
    ) -> None:
        self.status = status
        self.headers = headers
        self.complete: bytes | None = None
        self._pending: list[bytes] = []  # body chunks read with the head, not yet handed out
        self._conn: _Conn | None = conn
        self._pool = pool
        self._ended = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body chunk by chunk as it arrives (what :attr:`complete` holds, if set, first)."""
        if self.complete is not None:
            if self.complete:
                yield self.complete
            return
        while self._pending:
            yield self._pending.pop(0)
        while not self._ended:
            conn = self._conn
            assert conn is not None
            event = await self._pool._next_event(conn)  # noqa: SLF001
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._ended = True
            else:  # ConnectionClosed before the end (Content-Length or chunking said more)
                raise ReplicaError("the replica closed the connection mid-answer")

    def _fill(self, limit: int) -> bool:
        """Take what is already read of the body without waiting; True when that is all of
        it (then :attr:`complete` holds it). ``limit``: at most so many bytes in memory."""
        conn = self._conn
        assert conn is not None
        size = 0
        while True:
            event = _event(conn)
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return False
            if isinstance(event, h11.Data):
                self._pending.append(bytes(event.data))
                size += len(event.data)
                if size > limit:
                    return False
            elif isinstance(event, h11.EndOfMessage):
                self._ended = True
                self.complete = b"".join(self._pending)
                self._pending = []
                return True
            else:
                raise ReplicaError("the replica closed the connection mid-answer")

    async def _read_small(self, length: int) -> None:
        """Read a body of a known small ``length`` to its end (:attr:`complete`)."""
        if self._fill(length):
            return
        conn = self._conn
        assert conn is not None
        while not self._ended:
            event = await self._pool._next_event(conn)  # noqa: SLF001
            if isinstance(event, h11.Data):
                self._pending.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._ended = True
            else:
                raise ReplicaError("the replica closed the connection mid-answer")
        self.complete = b"".join(self._pending)
        self._pending = []

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._ended:
            self._pool._release(conn)  # noqa: SLF001
        else:
            conn.close()


class ReplicaPool:
    """Kept-alive HTTP/1.1 connections to the replicas' ports on 127.0.0.1: at most
    ``max_idle`` idle ones in all (the oldest closed first)."""

    def __init__(
        self, *, timeouts: Timeouts = Timeouts(), max_idle: int = 32, host: str = "127.0.0.1"
    ) -> None:
        self.timeouts = timeouts
        self.max_idle = max_idle
        self.host = host
        self._idle: dict[int, deque[_Conn]] = defaultdict(deque)
        self._idle_count = 0
        self.opened = 0  # connections opened so far (for tests and stats)

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for c in conns:
                c.close()
        self._idle.clear()
        self._idle_count = 0

    # ---- connections -------------------------------------------------------------------
    def _take_idle(self, port: int) -> _Conn | None:
        conns = self._idle.get(port)
        while conns:
            c = conns.pop()  # the most recent: the least likely to have timed out
            self._idle_count -= 1
            if c.usable():
                return c
            c.close()
        return None

    def _release(self, conn: _Conn) -> None:
        h = conn.h11
        if h.our_state is h11.DONE and h.their_state is h11.DONE and conn.usable():
            h.start_next_cycle()
            self._idle[conn.port].append(conn)
            self._idle_count += 1
            while self._idle_count > self.max_idle:
                oldest = max(self._idle.values(), key=len)
                oldest.popleft().close()
                self._idle_count -= 1
        else:
            conn.close()

    async def _open(self, port: int) -> _Conn:
        try:
            async with asyncio.timeout(self.timeouts.connect):
                reader, writer = await asyncio.open_connection(self.host, port, limit=READ_SIZE)
        except (OSError, TimeoutError) as exc:
            raise Refused(f"the replica's port {port} refused: {exc or 'timed out'}") from None
        self.opened += 1
        return _Conn(port, reader, writer)

    async def _send(self, conn: _Conn, *events: h11.Event) -> None:
        """``events`` in one write (a request's head and inline body: one segment)."""
        try:
            out = [conn.h11.send(e) for e in events]
        except h11.LocalProtocolError as exc:
            raise ReplicaError(f"the request is not valid HTTP/1.1: {exc}") from None
        data = out[0] if len(out) == 1 else b"".join(x for x in out if x)
        if data:
            conn.writer.write(data)
            if conn.writer.transport.get_write_buffer_size() > READ_SIZE:
                try:
                    async with asyncio.timeout(self.timeouts.write):
                        await conn.writer.drain()
                except (OSError, TimeoutError) as exc:
                    raise ReplicaError(f"writing to the replica: {exc or 'timed out'}") from None

    async def _next_event(self, conn: _Conn) -> h11.Event:
        """The next event of the answer, reading as needed (within the read timeout)."""
        h = conn.h11
        while True:
            event = _event(conn)
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:  # not after an answer's end: this is never asked then
                raise ReplicaError("the replica's answer is over")
            try:
                async with asyncio.timeout(self.timeouts.read):
                    data = await conn.reader.read(READ_SIZE)
            except TimeoutError:
                raise ReplicaError(
                    f"no data from the replica for {self.timeouts.read:g} s"
                ) from None
            except OSError as exc:
                conn.eof = True
                raise ReplicaError(f"reading from the replica: {exc}") from None
            conn.got += len(data)
            conn.eof = not data
            h.receive_data(data)  # b"": the replica closed the connection

    # ---- requests ----------------------------------------------------------------------
    async def request(
        self,
        port: int,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | AsyncIterable[bytes] | None = None,
        *,
        inline_max: int = 0,
    ) -> Answer:
        """Send a request to the replica on ``port`` and return its answer once its head is
        back. ``headers`` without Host (set here), Content-Length or Transfer-Encoding when
        ``body`` is bytes (set here); a streamed body is sent with its Content-Length when
        ``headers`` has one, else chunked. When the answer's whole body is at most
        ``inline_max`` bytes and arrives without waiting for more than its declared length,
        :attr:`Answer.complete` holds it.

        A kept-alive connection the replica closed meanwhile is retried once on a new one
        when the request has no body (a body may have been read by then, or cannot be
        resent)."""
        conn = self._take_idle(port)
        reused = conn is not None
        if conn is None:
            conn = await self._open(port)
        try:
            return await self._exchange(conn, method, target, headers, body, inline_max)
        except _Stale:
            conn.close()
            if not reused or body is not None:
                raise ReplicaError("the replica closed the connection before answering") from None
        except BaseException:
            conn.close()
            raise
        # a kept-alive connection the replica closed as it was reused: it never took the
        # request, and a new connection will
        conn = await self._open(port)
        try:
            return await self._exchange(conn, method, target, headers, body, inline_max)
        except _Stale:
            conn.close()
            raise ReplicaError("the replica closed the connection before answering") from None
        except BaseException:
            conn.close()
            raise

    async def _exchange(
        self,
        conn: _Conn,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | AsyncIterable[bytes] | None,
        inline_max: int,
    ) -> Answer:
        out: list[tuple[str, str]] = [("host", f"{self.host}:{conn.port}"), *headers]
        if isinstance(body, bytes):
            out.append(("content-length", str(len(body))))
        elif body is not None:
            if not any(k.lower() == "content-length" for k, _ in headers):
                out.append(("transfer-encoding", "chunked"))
        elif method in ("POST", "PUT", "PATCH"):
            out.append(("content-length", "0"))
        conn.got = 0
        try:
            head = h11.Request(method=method, target=_target(target), headers=out)
            if isinstance(body, bytes):
                if body:
                    await self._send(conn, head, h11.Data(data=body), h11.EndOfMessage())
                else:
                    await self._send(conn, head, h11.EndOfMessage())
            elif body is not None:
                await self._send(conn, head)
                async for chunk in body:
                    if chunk:
                        await self._send(conn, h11.Data(data=chunk))
                await self._send(conn, h11.EndOfMessage())
            else:
                await self._send(conn, head, h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise ReplicaError(f"the request is not valid HTTP/1.1: {exc}") from None
        except OSError as exc:
            if conn.h11.our_state is h11.DONE or body is None:
                raise _Stale() from None  # the replica had closed it: nothing reached it
            raise ReplicaError(f"writing to the replica: {exc}") from None
        while True:
            try:
                event = await self._next_event(conn)
            except ReplicaError:
                if conn.got == 0 and conn.eof:
                    raise _Stale() from None
                raise
            if isinstance(event, h11.Response):
                break
            if isinstance(event, h11.InformationalResponse):
                continue  # 100 Continue and the like: the final answer follows
            if isinstance(event, h11.ConnectionClosed):
                raise _Stale()
            raise ReplicaError(f"unexpected {type(event).__name__} from the replica")
        answer = Answer(
            self,
            conn,
            event.status_code,
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers],
        )
        if inline_max > 0:
            length = _content_length(event.headers)
            if length is not None and length <= inline_max:
                await answer._read_small(length)  # noqa: SLF001
            else:
                answer._fill(inline_max)  # noqa: SLF001
        return answer


def _event(conn: _Conn) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
    try:
        return conn.h11.next_event()
    except h11.RemoteProtocolError as exc:
        if conn.eof:
            raise ReplicaError(f"the replica closed the connection mid-answer ({exc})") from None
        raise ReplicaError(f"the replica broke HTTP: {exc}") from None


class _Stale(Exception):
    """The replica closed the connection before any byte of an answer."""


# what a request target keeps as it is (RFC 3986's unreserved and reserved characters, and
# escapes already made); anything else is percent-encoded (UTF-8), as an HTTP client does
_SAFE = "!#$&'()*+,/:;=?@[]~%-._"


def _target(path: str) -> str:
    return quote(path, safe=_SAFE)


def _content_length(headers: Sequence[tuple[bytes, bytes]]) -> int | None:
    for k, v in headers:
        if k == b"content-length":
            with contextlib.suppress(ValueError):
                return int(v)
    return None
