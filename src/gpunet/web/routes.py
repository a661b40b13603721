"""The dashboard's routes: server-rendered pages, htmx fragments polled for live updates,
SVG plots, and three POSTs (sign in, sign out, a GPU lifecycle move). None is in the OpenAPI
document: the API is ``/v1``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from gpunet import __version__
from gpunet.errors import GpunetError, Unauthorized
from gpunet.services import lifecycle as life
from gpunet.services.auth import Principal, Role
from gpunet.services.runtime import Runtime
from gpunet.web import plots, views
from gpunet.web.session import COOKIE, Session, Sessions, csrf_ok, same_origin, secure

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.globals["version"] = __version__
templates.env.trim_blocks = templates.env.lstrip_blocks = True  # no blank lines per loop turn

router = APIRouter(include_in_schema=False)

SIGNIN_ROLES = {Role.ADMIN, Role.CONSUMER, Role.PROVIDER}  # a node's own token cannot sign in
GPU_ACTIONS = {"drain", "activate"}
# pages may load only this host's scripts, styles and images
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

Build = Callable[[Runtime, Principal], dict[str, Any]]


def _rt(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def _sessions(request: Request) -> Sessions:
    s: Sessions = request.app.state.dashboard_sessions
    return s


def _signed_in(request: Request) -> tuple[Principal, Session] | None:
    """The principal behind the session cookie; None when there is none or its token no longer
    authenticates (revoked, expired), which also ends the session."""
    sid = request.cookies.get(COOKIE)
    session = _sessions(request).get(sid)
    if session is None:
        return None
    try:
        return _rt(request).auth.authenticate(session.token), session
    except Unauthorized:
        _sessions(request).close(sid)
        return None


def _out(request: Request) -> Response:
    """Where a request without a session goes: the sign-in page (an htmx fragment asks the
    browser to go there)."""
    if request.headers.get("hx-request"):
        return Response(status_code=401, headers={"HX-Redirect": "/"})
    return RedirectResponse("/", status_code=303)


def _html(request: Request, template: str, ctx: dict[str, Any], status: int = 200) -> Response:
    resp = templates.TemplateResponse(request, template, ctx, status_code=status)
    resp.headers.update(HEADERS)
    return resp


def _page(request: Request, template: str, build: Build, page: str = "") -> Response:
    """Render ``template`` with what ``build`` gathers for the signed-in principal; a service
    refusal (not found, forbidden...) renders as an HTML error page with its status."""
    found = _signed_in(request)
    if found is None:
        return _out(request)
    who, session = found
    base = {"who": who, "csrf": session.csrf, "page": page, "notice": None}
    try:
        ctx = build(_rt(request), who)
    except GpunetError as exc:
        err = {"status": exc.status_code, "message": exc.message}
        return _html(request, "error.html", base | err, exc.status_code)
    return _html(request, template, base | ctx)


def _svg(request: Request, render: Callable[[Runtime, Principal], bytes]) -> Response:
    found = _signed_in(request)
    if found is None:
        return Response(status_code=401)
    try:
        body = render(_rt(request), found[0])
    except GpunetError as exc:
        return Response(exc.message, status_code=exc.status_code, media_type="text/plain")
    return Response(body, media_type="image/svg+xml", headers={"Cache-Control": "no-store"})


# --- sign in and out


@router.get("/")
def home(request: Request) -> Response:
    if _signed_in(request) is None:
        return _html(request, "signin.html", {"error": None})
    return _page(request, "fleet.html", lambda rt, who: views.fleet(rt, who), "fleet")


@router.post("/signin")
def signin(request: Request, token: str = Form("", max_length=500)) -> Response:
    if not same_origin(request):
        return _html(request, "signin.html", {"error": "sign-in from another site"}, 403)
    try:
        who = _rt(request).auth.authenticate(token.strip())
    except Unauthorized as exc:
        return _html(request, "signin.html", {"error": exc.message}, 401)
    if who.role not in SIGNIN_ROLES:
        err = (
            f"a {who.role.value} token cannot sign in here: use an admin, consumer or provider one"
        )
        return _html(request, "signin.html", {"error": err}, 403)
    sid = _sessions(request).open(token.strip())
    resp = RedirectResponse("/", status_code=303)
    resp.set_cookie(COOKIE, sid, httponly=True, samesite="strict", secure=secure(request), path="/")
    return resp


@router.post("/signout")
def signout(request: Request, csrf: str = Form("", max_length=100)) -> Response:
    found = _signed_in(request)
    if found is not None:
        if not same_origin(request) or not csrf_ok(found[1], csrf):
            return Response("bad or missing CSRF token", status_code=403, media_type="text/plain")
        _sessions(request).close(request.cookies.get(COOKIE))
    resp = RedirectResponse("/", status_code=303)
    resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=secure(request))
    return resp


# --- the fleet and a GPU's life


@router.get("/fleet/table")
def fleet_table(request: Request) -> Response:
    return _page(request, "_fleet.html", lambda rt, who: views.fleet(rt, who))


@router.get("/gpus/{gpu_id:path}/benchmarks.svg")
def gpu_benchmarks_svg(request: Request, gpu_id: str) -> Response:
    return _svg(request, lambda rt, who: plots.benchmarks(views.gpu_benchmarks(rt, who, gpu_id)))


@router.get("/gpus/{gpu_id:path}/panel")
def gpu_panel(request: Request, gpu_id: str) -> Response:
    return _page(request, "_gpu.html", lambda rt, who: {"g": views.gpu(rt, who, gpu_id)})


@router.post("/gpus/{gpu_id:path}/lifecycle")
def gpu_action(
    request: Request,
    gpu_id: str,
    action: str = Form(max_length=20),
    reason: str = Form("", max_length=2000),
    csrf: str = Form("", max_length=100),
) -> Response:
    """Drain or activate a GPU (admin, or the provider that owns it), from its page."""
    found = _signed_in(request)
    if found is None:
        return _out(request)
    who, session = found
    if not same_origin(request) or not csrf_ok(session, csrf):
        return Response("bad or missing CSRF token", status_code=403, media_type="text/plain")
    if action not in GPU_ACTIONS:
        return Response(f"unknown action {action!r}", status_code=422, media_type="text/plain")
    rt = _rt(request)
    try:
        life.operate(rt.db, who, gpu_id, action, reason.strip() or f"{action} from the dashboard")
    except GpunetError as exc:
        ctx = {"who": who, "csrf": session.csrf, "page": "fleet", "notice": None}
        ctx |= {"status": exc.status_code, "message": exc.message}
        return _html(request, "error.html", ctx, exc.status_code)
    rt.wakeups.wake_scheduler()  # an activated GPU may take queued work
    # after a POST, the page's own address: a reload re-reads instead of re-posting
    return RedirectResponse(f"/gpus/{gpu_id}", status_code=303)


@router.get("/gpus/{gpu_id:path}")
def gpu_page(request: Request, gpu_id: str) -> Response:
    return _page(request, "gpu.html", lambda rt, who: {"g": views.gpu(rt, who, gpu_id)}, "fleet")


# --- jobs


@router.get("/jobs")
def jobs_page(request: Request, state: str = "") -> Response:
    return _page(request, "jobs.html", lambda rt, who: views.jobs(rt, who, state[:20]), "jobs")


@router.get("/jobs/table")
def jobs_table(request: Request, state: str = "") -> Response:
    return _page(request, "_jobs.html", lambda rt, who: views.jobs(rt, who, state[:20]))


@router.get("/jobs/{job_id}/live")
def job_live(request: Request, job_id: str) -> Response:
    return _page(request, "_job.html", lambda rt, who: {"j": views.job(rt, who, job_id)})


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: str) -> Response:
    return _page(request, "job.html", lambda rt, who: {"j": views.job(rt, who, job_id)}, "jobs")


# --- the market and money


@router.get("/offers")
def offers_page(request: Request, q: str = "") -> Response:
    return _page(
        request, "offers.html", lambda rt, who: views.offer_list(rt, who, q[:1000]), "offers"
    )


@router.get("/money")
def money_page(request: Request) -> Response:
    return _page(request, "money.html", lambda rt, who: views.money(rt, who), "money")


@router.get("/money/plot.svg")
def money_svg(request: Request) -> Response:
    return _svg(request, lambda rt, who: plots.money(views.history(rt, who)))


@router.get("/tco")
def tco_page(request: Request) -> Response:
    return _page(request, "tco.html", lambda rt, who: {"r": views.tco_report(rt, who)}, "tco")


@router.get("/tco/plot.svg")
def tco_svg(request: Request) -> Response:
    return _svg(request, lambda rt, who: plots.tco_report(views.tco_report(rt, who)))
