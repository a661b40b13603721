"""A coordinator, an agent's tunnel client and a replica, on one event loop on 127.0.0.1.

The coordinator is the real app (uvicorn, SQLite), the tunnel client is the agent's, and the
replica a small Starlette app with the routes the tests and the benchmark need. Used by
tests/integration/test_tunnel.py and benchmarks/tunnel.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trustme
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gpunet.agent.tunnel import TunnelClient
from gpunet.api.app import create_app
from gpunet.services.auth import bootstrap_admin
from gpunet.services.runtime import Runtime
from gpunet.settings import Settings
from gpunet.store.db import Database
from gpunet.tls import client_context
from gpunet.tunnel.hub import TunnelHub
from tests.conftest import migrated
from tests.e2e.procs import free_port

DEADLINE_S = 15.0


async def eventually(fn: Callable[[], Any], what: str, timeout: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        out = fn()
        if out:
            return out
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Replica:
    """The replica's app and what it saw."""

    port: int
    disconnects: list[str] = field(default_factory=list)  # streams whose client went away

    def app(self) -> Starlette:
        async def echo(request: Request) -> Response:
            body = await request.body()
            return Response(
                json.dumps(
                    {
                        "method": request.method,
                        "path": request.url.path,
                        "query": request.url.query,
                        "headers": dict(request.headers),
                        "body": body.decode("latin-1") if len(body) < 4096 else None,
                        "length": len(body),
                        "sha256": hashlib.sha256(body).hexdigest(),
                    }
                ),
                media_type="application/json",
                headers={"X-Replica": "yes"},
            )

        async def blob(request: Request) -> Response:
            n = int(request.query_params["n"])
            return Response(pattern(n), media_type="application/octet-stream")

        async def sse(request: Request) -> StreamingResponse:
            count = int(request.query_params.get("n", "5"))
            every = float(request.query_params.get("every", "0.2"))
            name = request.query_params.get("name", "sse")

            async def events() -> AsyncIterator[bytes]:
                try:
                    for i in range(count):
                        if i:
                            await asyncio.sleep(every)
                        yield f"data: {i}\n\n".encode()
                except (asyncio.CancelledError, GeneratorExit):
                    self.disconnects.append(name)
                    raise

            return StreamingResponse(events(), media_type="text/event-stream")

        async def noop(request: Request) -> Response:
            return Response(b"ok")

        return Starlette(
            routes=[
                Route("/blob", blob),
                Route("/sse", sse),
                Route("/noop", noop, methods=["GET", "POST"]),
                Route("/{rest:path}", echo, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
            ]
        )


def pattern(n: int) -> bytes:
    """``n`` bytes that differ along the body (a shifted or dropped chunk shows)."""
    block = hashlib.sha256(str(n).encode()).digest() * 64
    out = bytearray()
    i = 0
    while len(out) < n:
        out += block[i % 7 :] + i.to_bytes(4, "big")
        i += 1
    return bytes(out[:n])


@dataclass
class Stack:
    base: str  # the coordinator's URL
    hub: TunnelHub
    admin: str
    node_id: str
    node_token: str
    replica: Replica
    ports: dict[str, int]  # the agent's service ports: attempt id -> port
    client: TunnelClient
    http: httpx.AsyncClient
    runtime: Runtime  # the coordinator's

    async def token(self, role: str, account: str) -> str:
        return await _token(self.http, self.base, self.admin, role, account)

    async def register(self, name: str) -> tuple[str, str]:
        """A new node's id and token."""
        return await _register(self.http, self.base, self.admin, name)


async def _token(http: httpx.AsyncClient, base: str, admin: str, role: str, account: str) -> str:
    r = await http.post(
        f"{base}/v1/tokens",
        json={"role": role, "account": account},
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


async def _register(http: httpx.AsyncClient, base: str, admin: str, name: str) -> tuple[str, str]:
    provider = await _token(http, base, admin, "provider", "owner")
    r = await http.post(
        f"{base}/v1/agent/register",
        json={"name": name, "gpus": [], "agent_version": "test"},
        headers={"Authorization": f"Bearer {provider}"},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["node_id"]), str(r.json()["token"])


async def _serve(
    app: Any, port: int, keep_alive_s: float = 5.0, tls: tuple[str, str] | None = None
) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    config = uvicorn.Config(
        app,
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=2,
        timeout_keep_alive=keep_alive_s,
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    await eventually(lambda: server.started or task.done(), f"a server on port {port}")
    if task.done():
        task.result()
    return server, task


@contextlib.asynccontextmanager
async def tunnel_stack(
    replica_keep_alive_s: float = 5.0, tls: bool = False
) -> AsyncIterator[Stack]:
    """Everything running; stopped (bounded) on exit. ``replica_keep_alive_s``: how long
    the replica keeps an idle connection open (uvicorn's default: 5 s); ``tls``: the
    coordinator serves https (and the tunnel wss) with a certificate of a private CA."""
    with tempfile.TemporaryDirectory(prefix="gpunet-tunnel-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'gpunet.db'}"
        migrated(url)
        db = Database(url)
        admin = bootstrap_admin(db)
        assert admin is not None
        settings = Settings(database_url=url, checkpoint_dir=str(Path(tmp) / "ckpt"))
        app = create_app(settings, db=db)
        port = free_port()
        verify: bool | ssl.SSLContext = True
        pair = None
        if tls:
            ca = trustme.CA()
            cert = ca.issue_cert("127.0.0.1")
            pair = (str(Path(tmp) / "cert.pem"), str(Path(tmp) / "key.pem"))
            cert.cert_chain_pems[0].write_to_path(pair[0])
            cert.private_key_pem.write_to_path(pair[1])
            ca.cert_pem.write_to_path(str(Path(tmp) / "ca.pem"))
            verify = client_context(Path(tmp) / "ca.pem")
        base = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        servers = [await _serve(app, port, tls=pair)]
        replica = Replica(free_port())
        servers.append(await _serve(replica.app(), replica.port, replica_keep_alive_s))
        http = httpx.AsyncClient(timeout=10, trust_env=False, verify=verify)
        client: TunnelClient | None = None
        task: asyncio.Task[None] | None = None
        try:
            node_id, node_token = await _register(http, base, admin, "node-a")
            ports: dict[str, int] = {}
            client = TunnelClient(base, node_token, verify, ports.get)
            rt = app.state.runtime
            stack = Stack(
                base, rt.tunnels, admin, node_id, node_token, replica, ports, client, http, rt
            )
            task = asyncio.get_running_loop().create_task(client.run())
            await eventually(lambda: stack.hub.connected(stack.node_id), "the tunnel")
            yield stack
        finally:
            if client is not None and task is not None:
                client.stop()
                await asyncio.wait_for(task, DEADLINE_S)
            await http.aclose()
            for server, t in reversed(servers):
                server.should_exit = True
                await asyncio.wait_for(t, DEADLINE_S)
