"""The web dashboard the coordinator serves at ``/``: Jinja2 pages, htmx for live updates,
matplotlib SVG plots. Static files (``static/``) ship in the package: no build step."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from gpunet.web.routes import router
from gpunet.web.session import Sessions


def install(app: FastAPI) -> None:
    """Serve the dashboard from ``app``: its pages, its static files, its session store."""
    app.state.dashboard_sessions = Sessions()
    app.include_router(router)
    static = StaticFiles(directory=Path(__file__).parent / "static")
    app.mount("/static", static, name="dashboard-static")
