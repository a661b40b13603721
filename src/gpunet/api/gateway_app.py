"""The gateway's front door: ``/services/NAME/<path>`` as a bare ASGI app, forwarding to a
ready replica through services.gateway.

Bare ASGI in front of the API (``GatewayFront``), not a FastAPI route: a proxy's path must add
as little as possible to each request. Measured, the API's middleware and the matching of its
hundred-odd routes cost more per request than the gateway itself; here there is no dependency
injection and no response model, and the replica's headers pass as they came (a repeated
``Set-Cookie`` included). Errors answer the API's JSON envelope."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from gpunet.api.guard import send_error
from gpunet.errors import GpunetError, NotFound, PayloadTooLarge
from gpunet.services.gateway import forwarded_headers
from gpunet.services.runtime import Runtime

PREFIX = "/services/"
MAX_BODY = 64 << 20  # bytes of one request forwarded to a replica


class GatewayFront:
    """ASGI middleware: requests under ``/services/`` go straight to the gateway, everything
    else to the API."""

    def __init__(self, app: ASGIApp, rt: Runtime) -> None:
        self.app = app
        self.gateway = GatewayApp(rt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIX):
            await self.gateway(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class GatewayApp:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        started = False

        async def sending(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self._serve(scope, receive, sending)
        except GpunetError as exc:
            if started:  # the answer broke off mid-body: nothing more can be said
                return
            await send_error(send, exc.status_code, exc.code, exc.message, exc.field)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        rt = self.rt
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        token = next(
            (v[7:] for k, v in headers if k == "authorization" and v[:7].lower() == "bearer "),
            None,
        )
        who = rt.auth.cached(token)
        if who is None:
            who = (
                rt.auth.authenticate(token)  # raises Unauthorized, no store read
                if not token
                else await run_in_threadpool(rt.auth.authenticate, token)
            )
        name, _, sub = scope["path"][len(PREFIX) :].partition("/")
        if not name:
            raise NotFound("no service named in the path: /services/NAME/...", field="name")
        route = rt.gateway.route(who, name)
        body = await _read_body(receive)
        query = scope.get("query_string", b"").decode("latin-1")
        target = "/" + sub + (f"?{query}" if query else "")
        client = (scope.get("client") or ("",))[0]
        sent = forwarded_headers(headers, client, scope.get("scheme", "http"), route.name)
        out = await rt.gateway.send(route, scope["method"], target, sent, body)
        try:
            raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in out.headers]
            raw.append((b"x-gpunet-replica", out.replica.encode()))
            await send({"type": "http.response.start", "status": out.status, "headers": raw})
            async for chunk in out.body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await out.body.aclose()  # type: ignore[attr-defined]  # an async generator


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise PayloadTooLarge(f"body: at most {MAX_BODY} bytes", field="body")
        parts.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(parts)
