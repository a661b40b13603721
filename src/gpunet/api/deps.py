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

from gpunet.services.auth import Principal
from gpunet.services.runtime import Runtime

_bearer = HTTPBearer(auto_error=False)


async def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


async def principal(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    auth = (await runtime(request)).auth
    token = creds.credentials if creds else None
    hit = auth.cached(token)
    if hit is not None:
        return hit
    if not token:
        return auth.authenticate(token)  # raises Unauthorized without touching the store
    return await run_in_threadpool(auth.authenticate, token)


Rt = Annotated[Runtime, Depends(runtime)]
Who = Annotated[Principal, Depends(principal)]
