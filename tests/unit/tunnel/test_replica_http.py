"""The agent's HTTP/1.1 client to its replicas (gpunet.agent.replica_http), against scripted
servers on 127.0.0.1: framing both ways, kept-alive connections, and replicas that close,
stall or break their answers."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from gpunet.agent.replica_http import Refused, ReplicaError, ReplicaPool, Timeouts
from tests.e2e.procs import free_port

pytestmark = pytest.mark.timeout(60)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[tuple[int, list[int]]]:
    """A server running ``handler`` per connection: its port, and a list that counts the
    connections it accepted."""
    accepted: list[int] = []

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1], accepted
    finally:
        srv.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    """One request: its request line, headers (lowercased names) and body (de-chunked)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {}
    for line in head[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    return head[0], headers, body


def ok(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_requests_are_framed_as_http_1_1() -> None:
    seen: list[tuple[str, dict[str, str], bytes]] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            seen.append(await read_request(reader))
            writer.write(ok(b"ok"))
            await writer.drain()

    async def body() -> AsyncIterator[bytes]:
        yield b"streamed "
        yield b"body"

    async def t() -> None:
        async with server(echo) as (port, _):
            pool = ReplicaPool()
            for method, target, headers, content in [
                ("GET", "/a b/\u00fc?q=x y&r=%2F", [("X-One", "1")], None),
                ("POST", "/inline", [], b"hello"),
                ("POST", "/empty", [], None),
                ("PUT", "/chunked", [], body()),
                ("PUT", "/sized", [("Content-Length", "13")], body()),
            ]:
                answer = await pool.request(port, method, target, headers, content)
                assert answer.status == 200
                assert b"".join([c async for c in answer.chunks()]) == b"ok"
                await answer.aclose()
            await pool.aclose()

    run(t())
    get, inline, empty, chunked, sized = seen
    assert get[0] == "GET /a%20b/%C3%BC?q=x%20y&r=%2F HTTP/1.1"
    assert get[1]["host"].startswith("127.0.0.1:") and get[1]["x-one"] == "1"
    assert "content-length" not in get[1] and "transfer-encoding" not in get[1]
    assert (inline[1]["content-length"], inline[2]) == ("5", b"hello")
    assert empty[1]["content-length"] == "0"
    assert chunked[1]["transfer-encoding"] == "chunked" and chunked[2] == b"streamed body"
    assert "transfer-encoding" not in sized[1] and sized[2] == b"streamed body"


def test_a_kept_alive_connection_is_reused_and_a_closing_one_is_not() -> None:
    answers = [ok(b"one"), ok(b"two"), ok(b"bye", "Connection: close\r\n"), ok(b"new")]

    async def scripted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while answers:
            line, _, _ = await read_request(reader)
            answer = answers.pop(0)
            writer.write(answer)
            await writer.drain()
            if b"close" in answer:
                return

    async def t() -> None:
        async with server(scripted) as (port, accepted):
            pool = ReplicaPool()
            got = []
            for _ in range(4):
                answer = await pool.request(port, "GET", "/", [], inline_max=1024)
                got.append(answer.complete)
                await answer.aclose()
            assert got == [b"one", b"two", b"bye", b"new"]
            assert len(accepted) == 2 == pool.opened  # one, two, bye on the first
            await pool.aclose()

    run(t())


def test_an_idle_connection_the_replica_closed_is_not_reused() -> None:
    async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok(b"ok"))
        await writer.drain()
        # and closes the kept-alive connection while it is idle, as a keep-alive timeout does

    async def t() -> None:
        async with server(one_then_close) as (port, accepted):
            pool = ReplicaPool()
            for _ in range(3):
                answer = await pool.request(port, "POST", "/", [], b"body", inline_max=1024)
                assert answer.complete == b"ok"
                await answer.aclose()
                await asyncio.sleep(0.1)  # the close arrives
            assert len(accepted) == 3
            await pool.aclose()

    run(t())


def test_a_stale_connection_is_retried_once_without_a_body_only() -> None:
    async def take_then_drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # answers the first request, then drops the connection when the next one arrives
        await read_request(reader)
        writer.write(ok(b"ok"))
        await writer.drain()
        await read_request(reader)

    async def t() -> None:
        async with server(take_then_drop) as (port, accepted):
            pool = ReplicaPool()
            for _ in range(2):
                answer = await pool.request(port, "GET", "/", [], inline_max=1024)
                assert answer.complete == b"ok"
                await answer.aclose()
            assert len(accepted) == 2  # the second went again, on a new connection
            with pytest.raises(ReplicaError, match="closed the connection before answering"):
                await pool.request(port, "POST", "/", [], b"body")
            await pool.aclose()

    run(t())


def test_a_new_connection_closed_unanswered_fails_without_retrying() -> None:
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async def t() -> None:
        async with server(drop) as (port, accepted):
            pool = ReplicaPool()
            with pytest.raises(ReplicaError, match="before answering"):
                await pool.request(port, "GET", "/", [])
            assert len(accepted) == 1

    run(t())


def test_a_chunked_answer_streams_chunk_by_chunk() -> None:
    release = asyncio.Event()

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await release.wait()  # the second chunk only once the client has the first
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()
        await read_request(reader)
        writer.write(ok(b"again"))
        await writer.drain()

    async def t() -> None:
        async with server(chunked) as (port, accepted):
            pool = ReplicaPool()
            answer = await pool.request(port, "GET", "/sse", [], inline_max=1024)
            assert answer.complete is None  # not all here yet: streamed
            assert ("transfer-encoding", "chunked") in answer.headers
            chunks = answer.chunks()
            assert await asyncio.wait_for(chunks.__anext__(), 5) == b"first"
            release.set()
            assert [c async for c in chunks] == [b"second"]
            await answer.aclose()
            answer = await pool.request(port, "GET", "/", [], inline_max=1024)
            assert answer.complete == b"again"
            await answer.aclose()
            assert len(accepted) == 1  # a chunked answer read to its end keeps the connection

    run(t())


def test_a_small_chunked_answer_complete_on_arrival_is_whole() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"
        )
        await writer.drain()
        await asyncio.sleep(5)

    async def t() -> None:
        async with server(chunked) as (port, _):
            pool = ReplicaPool()
            answer = await pool.request(port, "GET", "/", [], inline_max=1024)
            assert answer.complete == b"abcdef"
            await answer.aclose()
            await pool.aclose()

    run(t())


def test_a_sized_answer_split_across_writes_is_waited_for_when_small() -> None:
    async def split(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(b"56789")
        await writer.drain()
        await asyncio.sleep(5)

    async def t() -> None:
        async with server(split) as (port, _):
            pool = ReplicaPool()
            answer = await pool.request(port, "GET", "/", [], inline_max=10)
            assert answer.complete == b"0123456789"
            await answer.aclose()
            answer = await pool.request(port, "GET", "/", [], inline_max=9)  # too large: streamed
            assert answer.complete is None
            assert b"".join([c async for c in answer.chunks()]) == b"0123456789"
            await answer.aclose()
            await pool.aclose()

    run(t())


def test_an_answer_cut_short_fails_and_its_connection_is_dropped() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial")
        await writer.drain()

    async def t() -> None:
        async with server(cut) as (port, accepted):
            pool = ReplicaPool()
            answer = await pool.request(port, "GET", "/", [], inline_max=1024)
            assert answer.complete is None
            with pytest.raises(ReplicaError, match="mid-answer"):
                async for _ in answer.chunks():
                    pass
            await answer.aclose()
            with pytest.raises(ReplicaError, match="mid-answer"):  # small: waited for, then
                await pool.request(port, "GET", "/", [], inline_max=200000)
            assert len(accepted) == 2

    run(t())


def test_an_answer_delimited_by_close_is_read_to_the_end() -> None:
    async def legacy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nall of it")
        await writer.drain()

    async def t() -> None:
        async with server(legacy) as (port, accepted):
            pool = ReplicaPool()
            for _ in range(2):
                answer = await pool.request(port, "GET", "/", [])
                assert b"".join([c async for c in answer.chunks()]) == b"all of it"
                await answer.aclose()
            assert len(accepted) == 2

    run(t())


def test_an_unread_answer_closes_its_connection() -> None:
    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(ok(b"x" * 200_000))
            await writer.drain()

    async def t() -> None:
        async with server(big) as (port, accepted):
            pool = ReplicaPool()
            for _ in range(2):
                answer = await pool.request(port, "GET", "/", [], inline_max=1024)
                assert answer.complete is None
                await answer.aclose()  # before the body's end: the connection cannot serve more
            assert len(accepted) == 2

    run(t())


def test_a_closed_port_is_refused() -> None:
    async def t() -> None:
        pool = ReplicaPool()
        with pytest.raises(Refused, match="refused"):
            await pool.request(free_port(), "GET", "/", [])

    run(t())


def test_a_replica_that_never_answers_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(10)

    async def t() -> None:
        async with server(silent) as (port, _):
            pool = ReplicaPool(timeouts=Timeouts(read=0.3))
            with pytest.raises(ReplicaError, match="no data from the replica"):
                await pool.request(port, "GET", "/", [])

    run(t())


def test_garbage_from_the_replica_is_an_error() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()

    async def t() -> None:
        async with server(garbage) as (port, _):
            with pytest.raises(ReplicaError, match="broke HTTP"):
                await ReplicaPool().request(port, "GET", "/", [])

    run(t())


def test_idle_connections_are_bounded() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(ok(b"ok"))
            await writer.drain()

    async def t() -> None:
        async with server(echo) as (port, accepted):
            pool = ReplicaPool(max_idle=2)
            answers = [await pool.request(port, "GET", "/", [], inline_max=8) for _ in range(4)]
            for a in answers:
                await a.aclose()
            assert len(accepted) == 4
            assert sum(len(q) for q in pool._idle.values()) == 2
            await pool.aclose()

    run(t())


def test_large_bodies_stream_both_ways_intact() -> None:
    size = 4 * 1024 * 1024
    blob = bytes(range(256)) * (size // 256)

    async def digest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            _, _, body = await read_request(reader)
            writer.write(ok(hashlib.sha256(body).hexdigest().encode() + b"\n" + body))
            await writer.drain()

    async def upload() -> AsyncIterator[bytes]:
        for i in range(0, size, 100_000):
            yield blob[i : i + 100_000]

    async def t() -> None:
        async with server(digest) as (port, accepted):
            pool = ReplicaPool()
            for content in (blob, upload()):
                answer = await pool.request(port, "PUT", "/", [], content, inline_max=1024)
                assert answer.complete is None  # over inline_max: streamed
                got = b"".join([c async for c in answer.chunks()])
                await answer.aclose()
                sha, _, echoed = got.partition(b"\n")
                assert sha.decode() == hashlib.sha256(blob).hexdigest()
                assert echoed == blob
            assert len(accepted) == 1
            await pool.aclose()

    run(t())
