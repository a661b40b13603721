"""Token management and accounts through the HTTP API, on SQLite and PostgreSQL: revocation
holds from the very next request (cached tokens too), expiry, join-token use counts, what a
consumer may see and revoke, and account look-ups that say how to create the account."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from helpers import Coordinator, auth, coordinator, gpu
from sqlalchemy import select, update

from gpunet.services.auth import Authenticator
from gpunet.store.tables import Token
from gpunet.util import now, utc


def _create(co: Coordinator, **body: Any) -> dict[str, Any]:
    r = co.c.post("/v1/tokens", json=body, headers=auth(co.admin))
    assert r.status_code == 201, r.text
    return dict(r.json())


def _tokens(co: Coordinator, token: str, **params: str) -> list[dict[str, Any]]:
    r = co.c.get("/v1/tokens", params=params, headers=auth(token))
    assert r.status_code == 200, r.text
    return list(r.json())


def _error(r: Any) -> dict[str, Any]:
    return dict(r.json()["error"])


def test_revocation_holds_from_the_next_request_even_when_cached(db_url: str) -> None:
    with coordinator(db_url) as co:
        alice = _create(co, role="consumer", account="alice")
        # used twice: the second answer comes from the authenticator's cache
        for _ in range(2):
            assert co.c.get("/v1/jobs", headers=auth(alice["token"])).status_code == 200
        r = co.c.delete(f"/v1/tokens/{alice['id']}", headers=auth(co.admin))
        assert r.status_code == 200, r.text
        assert r.json()["revoked"] is True and r.json()["state"] == "revoked"
        revoked_at = r.json()["revoked_at"]
        r = co.c.get("/v1/jobs", headers=auth(alice["token"]))
        assert r.status_code == 401
        assert _error(r)["message"].startswith("token revoked at ")
        assert _error(r)["message"].endswith("Z")
        # revoking again changes nothing
        again = co.c.delete(f"/v1/tokens/{alice['id']}", headers=auth(co.admin))
        assert again.status_code == 200 and again.json()["revoked_at"] == revoked_at


def test_revoking_a_nodes_token_refuses_its_next_heartbeat(db_url: str) -> None:
    with coordinator(db_url) as co:
        node = co.register(co.token("provider", "owner"), [gpu(0)])
        co.heartbeat(node)  # cached now
        agent_tok = next(t for t in _tokens(co, co.admin) if t["node_id"] == node.id)
        assert agent_tok["role"] == "agent" and agent_tok["account"] == "owner"
        assert co.c.delete(f"/v1/tokens/{agent_tok['id']}", headers=auth(co.admin)).is_success
        r = co.c.post("/v1/agent/heartbeat", json={"attempts": []}, headers=node.headers)
        assert r.status_code == 401 and "revoked" in _error(r)["message"]


def test_expired_token_is_refused_with_its_expiry(db_url: str) -> None:
    with coordinator(db_url) as co:
        bob = _create(co, role="consumer", account="bob", expires="1s")
        assert bob["expires_at"] is not None
        assert co.c.get("/v1/jobs", headers=auth(bob["token"])).status_code == 200  # cached
        time.sleep(1.1)
        r = co.c.get("/v1/jobs", headers=auth(bob["token"]))
        assert r.status_code == 401
        stamp = bob["expires_at"][:19] + "Z"
        assert _error(r)["message"] == f"token expired at {stamp}"
        listed = next(t for t in _tokens(co, co.admin) if t["id"] == bob["id"])
        assert listed["state"] == "expired"


def test_join_token_with_one_use_registers_one_agent(db_url: str) -> None:
    with coordinator(db_url) as co:
        join = _create(co, role="provider", account="owner", uses=1, expires="30d")
        assert join["uses_left"] == 1
        co.register(join["token"], [gpu(0)], name="first")
        body = {"name": "second", "gpus": [gpu(0)], "agent_version": "test"}
        r = co.c.post("/v1/agent/register", json=body, headers=auth(join["token"]))
        assert r.status_code == 403
        assert _error(r)["message"].startswith("join token used up")
        listed = next(t for t in _tokens(co, co.admin) if t["id"] == join["id"])
        assert listed["uses_left"] == 0 and listed["state"] == "used up"
        nodes = co.c.get("/v1/nodes", headers=auth(co.admin)).json()
        assert [n["name"] for n in nodes] == ["first"]


def test_create_rejects_bad_expiry_and_uses_naming_the_field(db_url: str) -> None:
    with coordinator(db_url) as co:
        cases = [
            ({"role": "consumer", "account": "a", "expires": "soon"}, "expires"),
            ({"role": "consumer", "account": "a", "expires": "0d"}, "expires"),
            ({"role": "consumer", "account": "a", "uses": 2}, "uses"),
            ({"role": "provider", "account": "a", "uses": 0}, "uses"),
        ]
        for body, field in cases:
            r = co.c.post("/v1/tokens", json=body, headers=auth(co.admin))
            assert r.status_code == 422, (body, r.text)
            assert _error(r)["field"] == field


def test_consumers_see_and_revoke_only_their_own_tokens(db_url: str) -> None:
    with coordinator(db_url) as co:
        alice = _create(co, role="consumer", account="alice", name="laptop")
        alice2 = _create(co, role="consumer", account="alice", name="ci")
        bob = _create(co, role="consumer", account="bob")
        mine = _tokens(co, alice["token"])
        assert {t["id"] for t in mine} == {alice["id"], alice2["id"]}
        assert all("token" not in t and "token_hash" not in t for t in mine)
        r = co.c.get("/v1/tokens", params={"account": "bob"}, headers=auth(alice["token"]))
        assert r.status_code == 403
        # another account's token answers as if it did not exist, and stays live
        r = co.c.delete(f"/v1/tokens/{bob['id']}", headers=auth(alice["token"]))
        assert r.status_code == 404
        assert co.c.get("/v1/jobs", headers=auth(bob["token"])).status_code == 200
        # an account may revoke its own
        r = co.c.delete(f"/v1/tokens/{alice2['id']}", headers=auth(alice["token"]))
        assert r.status_code == 200
        assert co.c.get("/v1/jobs", headers=auth(alice2["token"])).status_code == 401
        # the admin sees every token
        assert {alice["id"], bob["id"]} <= {t["id"] for t in _tokens(co, co.admin)}


def test_agent_tokens_cannot_manage_tokens_and_last_admin_stays(db_url: str) -> None:
    with coordinator(db_url) as co:
        node = co.register(co.token("provider", "owner"), [gpu(0)])
        assert co.c.get("/v1/tokens", headers=node.headers).status_code == 403
        admin_id = next(t["id"] for t in _tokens(co, co.admin) if t["role"] == "admin")
        r = co.c.delete(f"/v1/tokens/{admin_id}", headers=auth(co.admin))
        assert r.status_code == 409 and "last live admin token" in _error(r)["message"]
        second = _create(co, role="admin", account="admin")
        assert co.c.delete(f"/v1/tokens/{admin_id}", headers=auth(second["token"])).is_success
        assert co.c.get("/v1/tokens", headers=auth(co.admin)).status_code == 401


def test_last_used_is_written_at_most_once_a_minute(db_url: str) -> None:
    with coordinator(db_url) as co:
        tok = _create(co, role="consumer", account="carol")
        a = Authenticator(co.db, ttl_s=0)  # no cache: every call reads the store
        a.authenticate(tok["token"])
        with co.db.sessions() as s:
            first = utc(s.scalar(select(Token.last_used_at).where(Token.id == tok["id"])))
        assert first is not None and now() - first < timedelta(seconds=10)
        a.authenticate(tok["token"])
        with co.db.sessions() as s:
            assert utc(s.scalar(select(Token.last_used_at).where(Token.id == tok["id"]))) == first
        old = now() - timedelta(minutes=2)
        with co.db.transaction() as s:
            s.execute(update(Token).where(Token.id == tok["id"]).values(last_used_at=old))
        a.authenticate(tok["token"])
        with co.db.sessions() as s:
            later = utc(s.scalar(select(Token.last_used_at).where(Token.id == tok["id"])))
        assert later is not None and later > old + timedelta(seconds=60)


def test_accounts_exist_before_tokens_and_unknown_ones_say_how(db_url: str) -> None:
    with coordinator(db_url) as co:
        r = co.c.post(
            "/v1/credits/grant", json={"account": "alice", "amount": "100"}, headers=auth(co.admin)
        )
        assert r.status_code == 404
        err = _error(r)
        assert err["field"] == "account"
        assert "gpunet accounts create alice" in err["message"]
        assert "gpunet tokens create --role consumer --account alice" in err["message"]
        r = co.c.put(
            "/v1/quotas",
            json={"account": "alice", "max_concurrent_gpus": 1},
            headers=auth(co.admin),
        )
        assert r.status_code == 404 and _error(r)["field"] == "account"

        r = co.c.post("/v1/accounts", json={"name": "alice"}, headers=auth(co.admin))
        assert r.status_code == 201 and r.json()["roles"] == []
        dup = co.c.post("/v1/accounts", json={"name": "alice"}, headers=auth(co.admin))
        assert dup.status_code == 409
        r = co.c.post(
            "/v1/credits/grant", json={"account": "alice", "amount": "100"}, headers=auth(co.admin)
        )
        assert r.status_code == 201 and r.json()["balance"] == "100.000000"

        alice = co.token("consumer", "alice")
        co.register(co.token("provider", "owner"), [gpu(0)])
        rows = {a["name"]: a for a in co.c.get("/v1/accounts", headers=auth(co.admin)).json()}
        assert rows["alice"]["roles"] == ["consumer"] and rows["alice"]["nodes"] == 0
        assert rows["owner"]["roles"] == ["agent", "provider"] and rows["owner"]["nodes"] == 1
        # a consumer sees its own account only, and may not create one
        own = co.c.get("/v1/accounts", headers=auth(alice)).json()
        assert [a["name"] for a in own] == ["alice"]
        r = co.c.post("/v1/accounts", json={"name": "eve"}, headers=auth(alice))
        assert r.status_code == 403
