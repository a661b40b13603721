"""Request dependencies: the runtime and the caller's principal.

Both are async: FastAPI runs a sync dependency in the thread pool, which would cost two
thread hand-offs on every request (agents heartbeat every few seconds). The principal comes
from the authenticator's cache on the event loop; only a miss reads the store, in the pool.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from gpunet.errors import Forbidden
from gpunet.services.auth import Principal, Role
from gpunet.services.runtime import Runtime

_bearer = HTTPBearer(auto_error=False)
# what a service key may call besides the gateway (api/gateway_app.py authenticates its own)
SERVICE_KEY_PATHS = frozenset(
    {"/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings"}
)


async def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


async def principal(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    auth = (await runtime(request)).auth
    token = creds.credentials if creds else None
    who = auth.cached(token)
    if who is None:
        who = (
            auth.authenticate(token)  # raises Unauthorized without touching the store
            if not token
            else await run_in_threadpool(auth.authenticate, token)
        )
    if who.role is Role.SERVICE and request.url.path not in SERVICE_KEY_PATHS:
        raise Forbidden(
            "a service key calls only its service: /services/NAME/... and the "
            "OpenAI-compatible routes"
        )
    return who


Rt = Annotated[Runtime, Depends(runtime)]
Who = Annotated[Principal, Depends(principal)]
