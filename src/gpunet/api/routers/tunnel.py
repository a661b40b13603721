"""The agents' tunnel endpoint: a WebSocket each agent opens with its node token, over which
the gateway reaches the service replicas on its node (gpunet.tunnel.hub)."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect

from gpunet.errors import GpunetError, MalformedFrame
from gpunet.services.auth import Principal
from gpunet.services.runtime import Runtime
from gpunet.tunnel import protocol as p
from gpunet.tunnel.flow import Closed
from gpunet.tunnel.hub import version_of

router = APIRouter(tags=["agent"])

POLICY_VIOLATION = 1008  # the close code before accept: the handshake answers 403


class WebSocketChannel:
    """A Starlette WebSocket as the hub's Channel."""

    __slots__ = ("ws",)

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    async def send(self, message: bytes) -> None:
        await self.ws.send({"type": "websocket.send", "bytes": message})

    async def receive(self) -> bytes:
        try:
            msg = await self.ws.receive()
        except (WebSocketDisconnect, RuntimeError) as exc:
            raise Closed(f"disconnected ({exc})") from None
        if msg["type"] == "websocket.disconnect":
            raise Closed(f"disconnected (code {msg.get('code')})")
        data = msg.get("bytes")
        if data is None:  # a text message: not part of the protocol
            raise MalformedFrame("a text message", field="frame")
        return bytes(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.ws.close(code, reason)


async def _node_of(rt: Runtime, authorization: str) -> str | None:
    """The node whose token is in the handshake's Authorization header; None for any other
    caller (a consumer's token, an admin's, none)."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    who: Principal | None = rt.auth.cached(token)
    if who is None:
        try:
            who = await run_in_threadpool(rt.auth.authenticate, token)
        except GpunetError:
            return None
    return who.node_id


@router.websocket("/v1/agent/tunnel")
async def tunnel(ws: WebSocket) -> None:
    rt: Runtime = ws.app.state.runtime
    node_id = await _node_of(rt, ws.headers.get("authorization", ""))
    if node_id is None:
        await ws.close(POLICY_VIOLATION, "a node token is required")
        return
    version = version_of(ws.headers.get(p.VERSION_HEADER))
    await ws.accept(headers=[(p.VERSION_HEADER.lower().encode(), str(version).encode())])
    await rt.tunnels.serve(node_id, WebSocketChannel(ws), version)
