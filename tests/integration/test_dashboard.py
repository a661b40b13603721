"""The web dashboard, in-process: sign-in and its cookie, CSRF, tenancy as the API's, the GPU
lifecycle form, plots, and that none of it is in the OpenAPI document. Each test runs on
SQLite and PostgreSQL."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient
from helpers import Coordinator, auth, coordinator, gpu

from gpunet.web.session import COOKIE

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def browser(co: Coordinator) -> TestClient:
    """A second client on the running app with its own cookie jar (one per person)."""
    return TestClient(co.c.app, follow_redirects=False)


def sign_in(co: Coordinator, token: str) -> TestClient:
    b = browser(co)
    r = b.post("/signin", data={"token": token})
    assert r.status_code == 303, r.text
    return b


def csrf_of(b: TestClient, path: str = "/") -> str:
    m = CSRF.search(b.get(path).text)
    assert m, "no CSRF token on the page"
    return m.group(1)


def test_sign_in_keeps_the_session_in_a_strict_httponly_cookie(db_url: str) -> None:
    with coordinator(db_url) as co:
        b = browser(co)
        page = b.get("/")
        assert page.status_code == 200 and 'name="token"' in page.text
        assert "text/html" in page.headers["content-type"]

        bad = b.post("/signin", data={"token": "gpn_nope"})
        assert bad.status_code == 401 and "invalid token" in bad.text
        assert COOKIE not in bad.headers.get("set-cookie", "")

        r = b.post("/signin", data={"token": co.admin})
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert "Secure" not in cookie  # plain http here; https adds it
        assert co.admin not in cookie and co.admin not in r.headers["location"]

        home = b.get("/")
        assert 'name="token"' not in home.text and "Fleet" in home.text
        assert home.headers["content-security-policy"].startswith("default-src 'self'")

        tls = TestClient(co.c.app, base_url="https://testserver", follow_redirects=False)
        cookie = tls.post("/signin", data={"token": co.admin}).headers["set-cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie


def test_sign_in_refuses_other_sites_node_tokens_and_revoked_tokens(db_url: str) -> None:
    with coordinator(db_url) as co:
        b = browser(co)
        r = b.post("/signin", data={"token": co.admin}, headers={"Origin": "http://evil.test"})
        assert r.status_code == 403 and COOKIE not in r.headers.get("set-cookie", "")

        node = co.register(co.token("provider", "prov"))
        r = b.post("/signin", data={"token": node.token})
        assert r.status_code == 403 and "cannot sign in" in r.text

        alice = co.token("consumer", "alice")
        ab = sign_in(co, alice)
        assert ab.get("/jobs").status_code == 200
        mine = co.c.get("/v1/tokens", headers=auth(co.admin), params={"account": "alice"}).json()
        tid = next(t["id"] for t in mine if t["role"] == "consumer")
        assert co.c.delete(f"/v1/tokens/{tid}", headers=auth(co.admin)).status_code == 200
        gone = ab.get("/jobs")
        assert gone.status_code == 303 and gone.headers["location"] == "/"
        assert ab.get("/jobs/table", headers={"HX-Request": "true"}).headers["HX-Redirect"] == "/"


def test_sign_out_needs_the_csrf_token(db_url: str) -> None:
    with coordinator(db_url) as co:
        b = sign_in(co, co.admin)
        csrf = csrf_of(b)
        assert b.post("/signout", data={}).status_code == 403
        assert b.post("/signout", data={"csrf": "x" * len(csrf)}).status_code == 403
        cross = b.post("/signout", data={"csrf": csrf}, headers={"Origin": "http://evil.test"})
        assert cross.status_code == 403
        assert b.get("/jobs").status_code == 200  # still signed in
        out = b.post("/signout", data={"csrf": csrf})
        assert out.status_code == 303
        assert b.get("/jobs").status_code == 303  # signed out


def test_a_consumer_sees_only_its_own_jobs_and_money(db_url: str) -> None:
    with coordinator(db_url) as co:
        prov = co.token("provider", "prov")
        co.register(prov, [gpu(0)], name="n1")
        alice, bob = co.token("consumer", "alice"), co.token("consumer", "bob")
        a_job = co.submit(alice, {"name": "alice-job", "command": ["true"]})
        b_job = co.submit(bob, {"name": "bob-secret", "command": ["true"], "priority": 3})

        ab = sign_in(co, alice)
        jobs = ab.get("/jobs").text
        assert a_job["id"] in jobs and b_job["id"] not in jobs and "bob-secret" not in jobs
        assert b_job["id"] not in ab.get("/jobs/table").text
        for path in (f"/jobs/{b_job['id']}", f"/jobs/{b_job['id']}/live"):
            r = ab.get(path)
            assert r.status_code == 404 and "text/html" in r.headers["content-type"], path
            assert "bob-secret" not in r.text
        own = ab.get(f"/jobs/{a_job['id']}")
        assert own.status_code == 200 and "alice-job" in own.text

        money = ab.get("/money").text
        assert "alice" in money and "Ledger check" not in money and "Accounts" not in money
        assert ab.get("/tco").status_code == 403  # cost of ownership is for owners

        admin = sign_in(co, co.admin)
        everyone = admin.get("/jobs").text
        assert a_job["id"] in everyone and b_job["id"] in everyone
        assert "sound: every transaction balances" in admin.get("/money").text


def test_fleet_pages_show_what_the_api_shows_to_each_role(db_url: str) -> None:
    with coordinator(db_url) as co:
        p1, p2 = co.token("provider", "p1"), co.token("provider", "p2")
        n1 = co.register(p1, [gpu(0), gpu(1)], name="mine")
        n2 = co.register(p2, [gpu(0, "RTX-4090", 24_000)], name="theirs")
        alice = co.token("consumer", "alice")
        for token in (co.admin, p1, alice):
            api = {g["id"] for g in co.c.get("/v1/gpus", headers=auth(token)).json()}
            page = sign_in(co, token).get("/fleet/table").text
            shown = set(re.findall(r'data-gpu="([^"]+)"', page))
            assert shown == api, token
        assert f"{n2.id}/0" not in sign_in(co, p1).get("/").text
        assert "owner busy" in sign_in(co, co.admin).get("/").text
        # a consumer may list the fleet but not open a GPU's history
        ab = sign_in(co, alice)
        assert f'href="/gpus/{n1.id}/0"' not in ab.get("/").text
        assert ab.get(f"/gpus/{n1.id}/0").status_code == 404
        assert ab.get(f"/gpus/{n1.id}/0/benchmarks.svg").status_code == 404
        # a provider opens its own GPU, not another owner's
        pb = sign_in(co, p1)
        assert pb.get(f"/gpus/{n1.id}/0").status_code == 200
        assert pb.get(f"/gpus/{n2.id}/0").status_code == 404
        assert pb.get(f"/gpus/{n2.id}/0/panel").status_code == 404
        assert pb.get(f"/gpus/{n1.id}/0/benchmarks.svg").status_code == 200


def test_admin_drains_a_gpu_from_its_page_and_sees_the_event(db_url: str) -> None:
    with coordinator(db_url) as co:
        node = co.register(co.token("provider", "prov"), [gpu(0)])
        gid = f"{node.id}/0"
        b = sign_in(co, co.admin)
        csrf = csrf_of(b, f"/gpus/{gid}")
        form = {"action": "drain", "reason": "fan noise"}
        assert b.post(f"/gpus/{gid}/lifecycle", data=form).status_code == 403
        g = co.c.get("/v1/gpus", headers=auth(co.admin)).json()[0]
        assert not g["drained"]

        r = b.post(f"/gpus/{gid}/lifecycle", data=form | {"csrf": csrf})
        assert r.status_code == 303 and r.headers["location"] == f"/gpus/{gid}"
        page = b.get(f"/gpus/{gid}").text
        assert "fan noise" in page and 'class="ev-lifecycle"' in page
        g = co.c.get("/v1/gpus", headers=auth(co.admin)).json()[0]
        assert g["drained"]
        timeline = co.c.get(f"/v1/gpus/{gid}/timeline", headers=auth(co.admin)).json()
        assert timeline["events"][-1]["reason"] == "fan noise"

        bad = b.post(f"/gpus/{gid}/lifecycle", data={"action": "retire", "csrf": csrf})
        assert bad.status_code == 422


def test_plots_are_svg_and_money_history_follows_the_ledger(db_url: str) -> None:
    with coordinator(db_url) as co:
        co.register(co.token("provider", "prov"), [gpu(0)])
        alice = co.token("consumer", "alice")
        r = co.c.post(
            "/v1/credits/grant", json={"account": "alice", "amount": "12.5"}, headers=auth(co.admin)
        )
        assert r.status_code == 201, r.text
        from gpunet.services.auth import Principal, Role
        from gpunet.services.history import money_history

        acct = co.c.get("/v1/balance", headers=auth(alice)).json()["account_id"]
        hist = money_history(co.db, Principal("t", Role.CONSUMER, acct))
        assert [p["value"] for p in hist["balance"]] == ["12.500000"]
        assert hist["earned"] == [] and hist["spent"] == []

        ab = sign_in(co, alice)
        svg = ab.get("/money/plot.svg")
        assert svg.status_code == 200 and svg.headers["content-type"] == "image/svg+xml"
        assert b"<svg" in svg.content
        assert ab.get("/money/plot.svg").content == svg.content  # cached: same data, same SVG
        admin = sign_in(co, co.admin)
        assert b"<svg" in admin.get("/tco/plot.svg").content
        gid = co.c.get("/v1/gpus", headers=auth(co.admin)).json()[0]["id"]
        assert b"<svg" in admin.get(f"/gpus/{gid}/benchmarks.svg").content
        assert browser(co).get("/money/plot.svg").status_code == 401
        for path in ("/offers", "/money", "/tco", f"/gpus/{gid}/panel"):
            assert admin.get(path).status_code == 200, path


def test_dashboard_routes_are_not_in_the_openapi_document(db_url: str) -> None:
    with coordinator(db_url) as co:
        paths = co.c.get("/openapi.json").json()["paths"]
        assert all(p.startswith("/v1/") or p in ("/healthz", "/metrics") for p in paths), paths
        assert co.c.get("/static/htmx.min.js").status_code == 200
