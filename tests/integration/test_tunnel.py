"""The agent's tunnel end to end: the coordinator's app behind uvicorn, the agent's
TunnelClient, a replica on a local port; requests through TunnelHub.request."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gpunet.agent.gpus.simulated import SimulatedBackend
from gpunet.agent.loop import Agent
from gpunet.agent.tunnel import TunnelClient, tunnel_url
from gpunet.api.routers import tunnel as tunnel_router
from gpunet.errors import ForwardFailed, NotForwarded
from gpunet.tunnel import protocol as p
from gpunet.tunnel.hub import TunnelHub
from tests.e2e.procs import free_port
from tests.integration.tunnel_stack import Stack, eventually, pattern, tunnel_stack

pytestmark = pytest.mark.timeout(120)


def run(test: Callable[[Stack], Awaitable[None]], *, tls: bool = False) -> None:
    async def main() -> None:
        async with tunnel_stack(tls=tls) as stack:
            stack.ports["att-1"] = stack.replica.port
            await test(stack)

    asyncio.run(main())


def test_echo_carries_method_path_query_headers_and_body() -> None:
    async def t(st: Stack) -> None:
        res = await st.hub.request(
            st.node_id,
            "att-1",
            "PUT",
            "/some/path?x=1&y=a%20b",
            [("X-Custom", "v1"), ("Content-Type", "text/plain"), ("Content-Length", "5")],
            b"hello",
        )
        assert res.status == 200
        assert ("x-replica", "yes") in res.headers
        seen = json.loads(await res.read())
        assert seen["method"] == "PUT"
        assert seen["path"] == "/some/path"
        assert seen["query"] == "x=1&y=a%20b"
        assert seen["headers"]["x-custom"] == "v1"
        assert seen["headers"]["content-type"] == "text/plain"
        assert seen["body"] == "hello"
        # no body: a GET has neither Content-Length nor a chunked body
        res = await st.hub.request(st.node_id, "att-1", "GET", "/q?z=9")
        seen = json.loads(await res.read())
        assert (seen["method"], seen["query"], seen["length"]) == ("GET", "z=9", 0)

    run(t)


def test_large_bodies_both_ways_arrive_intact() -> None:
    async def t(st: Stack) -> None:
        up = pattern(5 * 1024 * 1024 + 17)

        async def chunks() -> AsyncIterator[bytes]:
            sizes = [1, 100, 70_000, 300_000, 1_000_003]
            i = 0
            k = 0
            while i < len(up):
                n = sizes[k % len(sizes)]
                yield up[i : i + n]
                i += n
                k += 1

        for body in (up, chunks()):  # bytes over the window, then a streamed body
            res = await st.hub.request(st.node_id, "att-1", "POST", "/upload", [], body)
            seen = json.loads(await res.read())
            assert seen["length"] == len(up)
            assert seen["sha256"] == hashlib.sha256(up).hexdigest()

        n = 6 * 1024 * 1024 + 5
        res = await st.hub.request(st.node_id, "att-1", "GET", f"/blob?n={n}")
        got = await res.read()
        assert len(got) == n and got == pattern(n)

    run(t)


def test_server_sent_events_arrive_one_by_one() -> None:
    async def t(st: Stack) -> None:
        res = await st.hub.request(st.node_id, "att-1", "GET", "/sse?n=6&every=0.2")
        assert dict(res.headers)["content-type"].startswith("text/event-stream")
        arrivals: list[tuple[float, bytes]] = []
        async for chunk in res:
            arrivals.append((time.monotonic(), chunk))
        assert [c for _, c in arrivals] == [f"data: {i}\n\n".encode() for i in range(6)]
        gaps = [b[0] - a[0] for a, b in zip(arrivals, arrivals[1:], strict=False)]
        # buffered chunks would arrive together at the end (gaps near 0)
        assert min(gaps) > 0.1, gaps

    run(t)


def test_concurrent_requests_share_the_tunnel() -> None:
    async def t(st: Stack) -> None:
        async def one(i: int) -> None:
            body = f"request {i} ".encode() * (i * 300 + 1)
            res = await st.hub.request(
                st.node_id, "att-1", "POST", f"/r/{i}?i={i}", [("X-I", str(i))], body
            )
            seen = json.loads(await res.read())
            assert (seen["path"], seen["query"], seen["headers"]["x-i"]) == (
                f"/r/{i}",
                f"i={i}",
                str(i),
            )
            assert seen["sha256"] == hashlib.sha256(body).hexdigest()

        sse = await st.hub.request(st.node_id, "att-1", "GET", "/sse?n=3&every=0.3")
        await asyncio.gather(*(one(i) for i in range(20)))
        assert len(await sse.read()) == 3 * len(b"data: 0\n\n")
        assert not st.hub._conns[st.node_id].streams  # every stream was released

    run(t)


def test_unreachable_replica_is_not_forwarded() -> None:
    async def t(st: Stack) -> None:
        st.ports["att-dead"] = free_port()  # nothing listens there
        with pytest.raises(NotForwarded, match="refused"):
            await st.hub.request(st.node_id, "att-dead", "GET", "/x")
        with pytest.raises(NotForwarded, match="no replica att-nope"):
            await st.hub.request(st.node_id, "att-nope", "POST", "/x", [], b"body")
        with pytest.raises(NotForwarded, match="no tunnel"):
            await st.hub.request("node-unknown", "att-1", "GET", "/x")
        # the tunnel still works afterwards
        res = await st.hub.request(st.node_id, "att-1", "GET", "/noop")
        assert await res.read() == b"ok"

    run(t)


def test_tunnel_dropped_mid_response_fails_forwarded_and_reconnects() -> None:
    async def t(st: Stack) -> None:
        res = await st.hub.request(st.node_id, "att-1", "GET", "/sse?n=50&every=0.1")
        first = await res.__anext__()
        assert first == b"data: 0\n\n"
        ws = st.client.live[st.base].ws
        ws.transport.abort()  # the agent's connection drops, as on a network failure
        with pytest.raises(ForwardFailed):
            async for _ in res:
                pass
        # the agent reconnects by itself and requests pass again
        await eventually(lambda: st.client.live.get(st.base) not in (None,), "a new tunnel")
        await eventually(lambda: st.hub.connected(st.node_id), "the hub to see it")
        res = await st.hub.request(st.node_id, "att-1", "GET", "/noop")
        assert await res.read() == b"ok"

    run(t)


def test_client_going_away_closes_the_replica_stream() -> None:
    async def t(st: Stack) -> None:
        res = await st.hub.request(st.node_id, "att-1", "GET", "/sse?n=100&every=0.1&name=gone")
        assert await res.__anext__() == b"data: 0\n\n"
        assert st.replica.disconnects == []
        await res.aclose()
        await eventually(lambda: "gone" in st.replica.disconnects, "the replica to see it")
        await eventually(lambda: not st.client.live[st.base].streams, "the agent to drop it")

    run(t)


def test_only_node_tokens_open_a_tunnel() -> None:
    async def t(st: Stack) -> None:
        consumer = await st.token("consumer", "alice")
        for headers in ({"Authorization": f"Bearer {consumer}"}, {}, {"Authorization": "Bearer x"}):
            with pytest.raises(InvalidStatus) as info:
                async with connect(tunnel_url(st.base), additional_headers=headers):
                    pass
            assert info.value.response.status_code == 403
        assert st.hub.nodes() == [st.node_id]

    run(t)


def test_tunnels_are_keyed_by_the_authenticated_node() -> None:
    async def t(st: Stack) -> None:
        b_id, b_token = await st.register("node-b")
        b_ports = {"att-1": free_port()}  # B claims A's attempt id, with nothing behind it
        b = TunnelClient(st.base, b_token, True, b_ports.get)
        task = asyncio.create_task(b.run())
        try:
            await eventually(lambda: st.hub.connected(b_id), "node B's tunnel")
            assert st.hub.nodes() == sorted([st.node_id, b_id])
            # A's requests still reach A's replica, B's tunnel took nothing of A's
            res = await st.hub.request(st.node_id, "att-1", "GET", "/noop")
            assert await res.read() == b"ok"
            with pytest.raises(NotForwarded):
                await st.hub.request(b_id, "att-1", "GET", "/noop")
        finally:
            b.stop()
            await asyncio.wait_for(task, 10)
        await eventually(lambda: not st.hub.connected(b_id), "B's tunnel to close")

    run(t)


def test_a_newer_tunnel_from_the_node_replaces_the_older() -> None:
    async def t(st: Stack) -> None:
        c_id, c_token = await st.register("node-c")
        headers = {"Authorization": f"Bearer {c_token}"}
        async with connect(tunnel_url(st.base), additional_headers=headers) as first:
            await eventually(lambda: st.hub.connected(c_id), "the first tunnel")
            async with connect(tunnel_url(st.base), additional_headers=headers) as second:
                with pytest.raises(ConnectionClosed) as info:
                    await asyncio.wait_for(first.recv(), 10)
                assert info.value.rcvd is not None and info.value.rcvd.code == p.REPLACED
                pending = asyncio.create_task(st.hub.request(c_id, "att-7", "GET", "/x"))
                frame = p.decode(await asyncio.wait_for(second.recv(decode=False), 10))
                assert isinstance(frame, p.Open) and frame.attempt_id == "att-7"
                await second.send(p.encode_reset(frame.stream, "test", False))
                with pytest.raises(NotForwarded, match="test"):
                    await pending
        await eventually(lambda: not st.hub.connected(c_id), "the tunnel to close")

    run(t)


@asynccontextmanager
async def raw_agent(st: Stack, name: str) -> AsyncIterator[SimpleNamespace]:
    """A node whose agent is the test itself: ``raw`` (its tunnel, unframed), ``stream`` (a
    GET the hub sent it, answered 200 with no headers) and ``res`` (the hub's response)."""
    node_id, token = await st.register(name)
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(tunnel_url(st.base), additional_headers=headers) as raw:
        await eventually(lambda: st.hub.connected(node_id), "the tunnel")
        pending = asyncio.create_task(st.hub.request(node_id, "att-9", "GET", "/x"))
        frame = p.decode(await asyncio.wait_for(raw.recv(decode=False), 10))
        await raw.send(p.encode_response(frame.stream, 200, []))
        res = await asyncio.wait_for(pending, 10)
        yield SimpleNamespace(id=node_id, raw=raw, stream=frame.stream, res=res)


def test_a_malformed_frame_ends_the_tunnel_and_fails_its_streams() -> None:
    async def t(st: Stack) -> None:
        async with raw_agent(st, "node-d") as a:
            raw, res, d_id = a.raw, a.res, a.id
            await raw.send(p.encode_data(a.stream, b"x" * p.MAX_CHUNK))
            assert await res.__anext__() == b"x" * p.MAX_CHUNK
            await raw.send(b"\x09garbage")  # an unknown kind
            with pytest.raises(ForwardFailed, match="protocol error"):
                await res.read()
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(raw.recv(), 10)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1002
        assert not st.hub.connected(d_id)

    run(t)


def test_an_agent_overrunning_the_window_gets_the_stream_reset() -> None:
    async def t(st: Stack) -> None:
        async with raw_agent(st, "node-e") as a:
            raw, res, e_id = a.raw, a.res, a.id
            for _ in range(p.INITIAL_WINDOW // p.MAX_CHUNK + 1):  # one chunk too many
                await raw.send(p.encode_data(a.stream, bytes(p.MAX_CHUNK)))
            reset = p.decode(await asyncio.wait_for(raw.recv(decode=False), 10))
            assert reset == p.Reset(a.stream, "flow control violated", True)
            with pytest.raises(ForwardFailed, match="overran"):
                await res.read()
            assert st.hub.connected(e_id)  # the tunnel itself stays

    run(t)


def test_a_slow_reader_holds_at_most_a_window_per_stream() -> None:
    async def t(st: Stack) -> None:
        n = 8 * 1024 * 1024
        res = await st.hub.request(st.node_id, "att-1", "GET", f"/blob?n={n}")
        inbox = st.hub._conns[st.node_id].streams[res._stream.id].inbox
        await eventually(lambda: inbox.buffered > 0, "the first chunks")
        await asyncio.sleep(0.5)  # the agent would send the rest now without flow control
        assert 0 < inbox.buffered <= p.INITIAL_WINDOW
        assert await res.read() == pattern(n)

    run(t)


def test_the_agent_opens_its_tunnel_once_registered(tmp_path: Path) -> None:
    async def t(st: Stack) -> None:
        provider = await st.token("provider", "owner")
        gpus = SimulatedBackend(["A100-80GB"])
        agent = Agent(st.base, gpus, tmp_path / "home", join_token=provider)
        agent.use_watchdog = False
        agent.benchmark_every_s = 1e9
        task = asyncio.create_task(agent.run())
        try:
            await eventually(lambda: agent.node_id and st.hub.connected(agent.node_id), "it")
            assert agent.node_id is not None
            with pytest.raises(NotForwarded, match="no replica att-s"):
                await st.hub.request(agent.node_id, "att-s", "GET", "/noop")
            agent.service_ports["att-s"] = st.replica.port  # a replica started here
            res = await st.hub.request(agent.node_id, "att-s", "GET", "/noop")
            assert (res.status, await res.read()) == (200, b"ok")
        finally:
            agent.stopping.set()
            await asyncio.wait_for(task, 30)
        assert not st.hub.connected(agent.node_id)

    run(t)


def test_one_tunnel_to_each_coordinator_url() -> None:
    async def t(st: Stack) -> None:
        # a second coordinator replica: the tunnel endpoint over the same store's tokens
        other = FastAPI()
        other.state.runtime = SimpleNamespace(auth=st.runtime.auth, tunnels=TunnelHub())
        other.include_router(tunnel_router.router)
        port = free_port()
        second = f"http://127.0.0.1:{port}"
        server = uvicorn.Server(
            uvicorn.Config(other, host="127.0.0.1", port=port, log_level="warning")
        )
        serving = asyncio.create_task(server.serve())
        # the stack's own client holds this node's tunnel to the first coordinator: a second
        # client with the node's token would take it over, and be taken over in turn
        st.client.stop()
        await eventually(lambda: not st.hub.connected(st.node_id), "the stack's tunnel closed")
        both = TunnelClient([st.base, second], st.node_token, True, st.ports.get)
        running = asyncio.create_task(both.run())
        try:
            hubs = (st.hub, other.state.runtime.tunnels)
            await eventually(
                lambda: (
                    all(h.connected(st.node_id) for h in hubs)
                    and both.connected(second)
                    and both.connected(st.base)
                ),
                "both",
            )
            for hub in hubs:
                res = await hub.request(st.node_id, "att-1", "GET", "/noop")
                assert await res.read() == b"ok"
        finally:
            both.stop()
            await asyncio.wait_for(running, 10)
            server.should_exit = True
            await asyncio.wait_for(serving, 10)

    run(t)


def test_a_stale_kept_alive_connection_is_retried_only_without_a_body() -> None:
    async def t(st: Stack) -> None:
        connections = 0

        async def one_request_per_connection(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            # answers the first request with keep-alive, then drops the connection when the
            # next one arrives: a server closing an idle connection as it is reused
            nonlocal connections
            connections += 1
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")
            writer.close()

        server = await asyncio.start_server(one_request_per_connection, "127.0.0.1", 0)
        st.ports["att-flaky"] = server.sockets[0].getsockname()[1]
        try:
            for _ in range(2):
                res = await st.hub.request(st.node_id, "att-flaky", "GET", "/")
                assert await res.read() == b"ok"
            assert connections == 2  # the second request went again, on a new connection
            with pytest.raises(ForwardFailed, match="replica failed"):
                await st.hub.request(st.node_id, "att-flaky", "POST", "/", [], b"body")
        finally:
            server.close()

    run(t)


def test_the_tunnel_runs_over_tls_to_an_https_coordinator() -> None:
    async def t(st: Stack) -> None:
        assert st.base.startswith("https://")
        assert tunnel_url(st.base).startswith("wss://")
        res = await st.hub.request(st.node_id, "att-1", "POST", "/e?tls=1", [], b"secret")
        seen = json.loads(await res.read())
        assert (seen["query"], seen["body"]) == ("tls=1", "secret")
        # a client that does not trust the coordinator's CA never gets a tunnel
        n_id, n_token = await st.register("node-untrusting")
        doubter = TunnelClient(st.base, n_token, True, st.ports.get, backoff_max_s=0.2)
        task = asyncio.create_task(doubter.run())
        await asyncio.sleep(1.0)
        assert not st.hub.connected(n_id) and not doubter.connected()
        doubter.stop()
        await asyncio.wait_for(task, 10)

    run(t, tls=True)


def test_two_urls_of_one_coordinator_back_off_instead_of_flapping(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def t(st: Stack) -> None:
        # both URLs reach the same coordinator: each new tunnel replaces the other's
        alias = st.base.replace("127.0.0.1", "localhost")
        st.client.stop()
        twice = TunnelClient([st.base, alias], st.node_token, True, st.ports.get)
        with caplog.at_level(logging.INFO, logger="gpunet.agent.tunnel"):
            task = asyncio.create_task(twice.run())
            await asyncio.sleep(4.0)
            twice.stop()
            await asyncio.wait_for(task, 10)
        opened = [r for r in caplog.records if r.getMessage().startswith("tunnel open to")]
        # reconnecting 0.2 s after each replacement would open about 30 in 4 s; backing off
        # (0.2, 0.4, 0.8, 1.6 s...) opens a handful per URL
        assert 2 <= len(opened) <= 12, len(opened)

    run(t)


def _record_kinds(hub: TunnelHub) -> list[p.Kind]:
    """The kinds of the frames the hub receives from here on."""
    kinds: list[p.Kind] = []
    dispatch = hub._dispatch

    def recording(conn: Any, message: bytes) -> None:
        kinds.append(p.Kind(message[0]))
        dispatch(conn, message)

    hub._dispatch = recording  # type: ignore[method-assign]
    return kinds


def test_a_small_complete_answer_comes_back_in_one_message() -> None:
    async def t(st: Stack) -> None:
        assert st.hub._conns[st.node_id].version == p.VERSION  # the agent's offer, accepted
        kinds = _record_kinds(st.hub)
        res = await st.hub.request(st.node_id, "att-1", "GET", "/noop")
        assert (res.status, await res.read()) == (200, b"ok")
        assert kinds == [p.Kind.REPLY]
        kinds.clear()
        body = b"p" * (p.INLINE_MAX - 1000)
        res = await st.hub.request(st.node_id, "att-1", "POST", "/echo", [], body)
        seen = json.loads(await res.read())
        assert seen["sha256"] == hashlib.sha256(body).hexdigest()
        assert seen["headers"]["content-length"] == str(len(body))  # sent inline: sized
        assert kinds == [p.Kind.REPLY]
        kinds.clear()
        # an answer larger than INLINE_MAX, or streamed, still goes chunk by chunk
        res = await st.hub.request(st.node_id, "att-1", "GET", f"/blob?n={p.INLINE_MAX + 1}")
        assert await res.read() == pattern(p.INLINE_MAX + 1)
        assert kinds[0] == p.Kind.RESPONSE and kinds[-1] == p.Kind.END
        kinds.clear()
        res = await st.hub.request(st.node_id, "att-1", "GET", "/sse?n=3&every=0.2")
        assert len([c async for c in res]) == 3
        assert kinds[0] == p.Kind.RESPONSE and kinds.count(p.Kind.DATA) == 3
        assert not st.hub._conns[st.node_id].streams  # every stream was released

    run(t)


def test_a_version_1_agent_gets_bodies_in_data_frames_and_may_not_reply() -> None:
    async def t(st: Stack) -> None:
        node_id, token = await st.register("node-old")
        async with connect(
            tunnel_url(st.base), additional_headers={"Authorization": f"Bearer {token}"}
        ) as raw:
            assert raw.response is not None
            assert raw.response.headers.get(p.VERSION_HEADER) == "1"
            await eventually(lambda: st.hub.connected(node_id), "the tunnel")
            pending = asyncio.create_task(st.hub.request(node_id, "a", "POST", "/x", [], b"hi"))
            frames = [p.decode(await asyncio.wait_for(raw.recv(decode=False), 10))]
            while not isinstance(frames[-1], p.End):
                frames.append(p.decode(await asyncio.wait_for(raw.recv(decode=False), 10)))
            opened, data, _ = frames
            assert isinstance(opened, p.Open) and opened.has_body and opened.body is None
            assert data == p.Data(opened.stream, b"hi")
            await raw.send(p.encode_reply(opened.stream, 200, [], b"no"))  # not in version 1
            with pytest.raises(ForwardFailed, match="protocol error"):
                await pending
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(raw.recv(), 10)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1002

    run(t)


def test_a_version_2_agent_gets_a_small_body_inline_and_may_reply() -> None:
    async def t(st: Stack) -> None:
        node_id, token = await st.register("node-new")
        headers = {"Authorization": f"Bearer {token}", p.VERSION_HEADER: "7"}  # a later one
        async with connect(tunnel_url(st.base), additional_headers=headers) as raw:
            assert raw.response is not None
            assert raw.response.headers.get(p.VERSION_HEADER) == str(p.VERSION)
            await eventually(lambda: st.hub.connected(node_id), "the tunnel")
            pending = asyncio.create_task(st.hub.request(node_id, "a", "POST", "/x", [], b"hi"))
            opened = p.decode(await asyncio.wait_for(raw.recv(decode=False), 10))
            assert isinstance(opened, p.Open) and opened.body == b"hi" and not opened.has_body
            await raw.send(p.encode_reply(opened.stream, 201, [("x-a", "1")], b"done"))
            res = await asyncio.wait_for(pending, 10)
            assert (res.status, res.headers) == (201, (("x-a", "1"),))
            assert await res.read() == b"done"
            assert not st.hub._conns[node_id].streams
            # a body over INLINE_MAX still goes in DATA frames, under flow control
            big = pattern(p.INLINE_MAX + 1)
            pending = asyncio.create_task(st.hub.request(node_id, "a", "PUT", "/y", [], big))
            opened = p.decode(await asyncio.wait_for(raw.recv(decode=False), 10))
            assert isinstance(opened, p.Open) and opened.has_body and opened.body is None
            got = b""
            while True:
                frame = p.decode(await asyncio.wait_for(raw.recv(decode=False), 10))
                if isinstance(frame, p.End):
                    break
                assert isinstance(frame, p.Data)
                got += frame.payload
            assert got == big
            await raw.send(p.encode_reply(opened.stream, 200, [], b""))
            res = await asyncio.wait_for(pending, 10)
            assert await res.read() == b""

    run(t)


def test_the_agent_replies_in_one_message_only_to_a_coordinator_that_speaks_version_2() -> None:
    async def fake_coordinator(version: str | None) -> list[p.Frame]:
        """What the agent answers to one GET, through a coordinator that answers the
        handshake with ``version`` (None: no header, as a version 1 coordinator)."""
        got: list[p.Frame] = []
        done = asyncio.Event()

        async def handler(ws: ServerConnection) -> None:
            await ws.send(p.encode_open(1, "att-1", "GET", "/noop", [], False))
            while not done.is_set():
                got.append(p.decode(await ws.recv(decode=False)))
                if isinstance(got[-1], p.End | p.Reply):
                    done.set()

        def answer(_: ServerConnection, request: Any, response: Any) -> Any:
            if version is not None:
                response.headers[p.VERSION_HEADER] = version
            return response

        async with serve(handler, "127.0.0.1", 0, process_response=answer) as server:
            port = list(server.sockets)[0].getsockname()[1]
            ports = {"att-1": replica_port}
            client = TunnelClient(f"http://127.0.0.1:{port}", "tok", False, ports.get)
            task = asyncio.create_task(client.run())
            try:
                await asyncio.wait_for(done.wait(), 10)
            finally:
                client.stop()
                await asyncio.wait_for(task, 10)
        return got

    replica_port = 0

    async def t(st: Stack) -> None:
        nonlocal replica_port
        replica_port = st.replica.port
        old = await fake_coordinator(None)
        assert [type(f) for f in old] == [p.Response, p.Data, p.End]
        assert old[1] == p.Data(1, b"ok")
        new = await fake_coordinator("2")
        assert len(new) == 1 and isinstance(new[0], p.Reply)
        assert (new[0].status, new[0].body) == (200, b"ok")

    run(t)
