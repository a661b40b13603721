"""The coordinator's FastAPI application."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from gpunet import __version__
from gpunet.api import errors
from gpunet.api.deps import Rt
from gpunet.api.gateway_app import GatewayFront
from gpunet.api.guard import BodyGuard
from gpunet.api.routers import (
    agent,
    checkpoints,
    fleet,
    jobs,
    lifecycle,
    market,
    services,
    sim,
    tokens,
    tunnel,
)
from gpunet.loops.background import start_all, stop_all
from gpunet.services.leases import flush_telemetry, grant_grace
from gpunet.services.runtime import Runtime
from gpunet.settings import Settings
from gpunet.store.db import Database
from gpunet.web import install as install_dashboard


def _telemetry() -> dict[str, Any]:
    """FastAPI's native OpenTelemetry off unless OpenTelemetry is configured (an ``OTEL_``
    variable): asking for the global providers on every request cost several percent of
    the coordinator's time under load (py-spy), with nothing to export them to."""
    import inspect
    import os

    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}  # a FastAPI without native telemetry
    if any(k.startswith(("OTEL_", "FASTAPI_OTEL_")) for k in os.environ):
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


def create_app(settings: Settings, *, db: Database | None = None) -> FastAPI:
    database = db or Database(settings.database_url)
    rt = Runtime(settings, database)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(database.migrate)
        grant_grace(database, rt.leases)
        rt.wakeups.bind(asyncio.get_running_loop())
        rt.bus.start()  # wake-ups to and from other replicas (PostgreSQL)
        tasks = start_all(rt)
        try:
            yield
        finally:
            await stop_all(rt, tasks)
            await rt.tunnels.close()
            await run_in_threadpool(rt.bus.stop)
            with contextlib.suppress(Exception):
                flush_telemetry(database, rt.leases)
            database.dispose()

    app = FastAPI(
        title="gpunet coordinator", version=__version__, lifespan=lifespan, **_telemetry()
    )
    app.state.runtime = rt
    errors.install(app)
    app.add_middleware(BodyGuard, rt=rt)
    # the services' gateway (/services/...), in front of the API's middleware and routes
    app.add_middleware(GatewayFront, rt=rt)
    for r in (
        jobs.router,
        fleet.router,
        agent.router,
        lifecycle.router,
        lifecycle.agent_router,
        lifecycle.tiers_router,
        lifecycle.energy_router,
        lifecycle.economics_router,
        market.router,
        tokens.router,
        sim.router,
        checkpoints.router,
        checkpoints.agent_router,
        services.router,
        tunnel.router,
    ):
        app.include_router(r)
    install_dashboard(app)  # the web dashboard at /, outside the OpenAPI document

    @app.get("/healthz", tags=["meta"])
    def healthz() -> dict[str, Any]:
        # which replica answered, and which one leads the singleton loops (docs/replicas.md)
        return {"status": "ok", "version": __version__, **rt.leadership.view()}

    @app.get(
        "/metrics",
        tags=["meta"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    def metrics(rt: Rt) -> Response:
        _refresh_gauges(rt)
        return Response(rt.metrics.render(), media_type="text/plain; version=0.0.4")

    return app


def _refresh_gauges(rt: Runtime) -> None:
    """The in-memory gauges; the store's series are read by StoreCollector at the scrape."""
    lags = rt.leases.lags()
    rt.metrics.heartbeat_lag_max.set(max(lags) if lags else 0)
