"""Tenancy and roles: one tenant never sees another's jobs, through any endpoint; agents only
report on their own node; consumers cannot act as agents or admins; tokens are required."""

from __future__ import annotations

import hashlib
from typing import Any

from helpers import Coordinator, archive, auth, coordinator, gpu


def _setup(co: Coordinator) -> dict[str, Any]:
    provider = co.token("provider", "prov")
    node = co.register(provider, [gpu(0), gpu(1)], name="a")
    other = co.register(provider, [gpu(0, "RTX-4090", 24_000)], name="b")
    alice = co.token("consumer", "alice")
    bob = co.token("consumer", "bob")
    running = co.submit(
        alice,
        {"name": "alice-1", "command": ["sleep", "60"], "resources": {"gpu_models": ["A100-80GB"]}},
    )
    att = co.next_start(node)
    assert att["job_id"] == running["id"]
    assert co.report(node, att, "started").status_code == 200
    assert (
        co.report(node, att, "logs", chunks=[{"stream": "stdout", "data": "secret\n"}]).status_code
        == 200
    )
    # a queued one too (asks for more A100s than are free)
    queued = co.submit(
        alice,
        {
            "name": "alice-2",
            "command": ["true"],
            "resources": {"gpus": 2, "gpu_models": ["A100-80GB"]},
        },
    )
    return {
        "provider": provider,
        "node": node,
        "other": other,
        "alice": alice,
        "bob": bob,
        "running": running,
        "queued": queued,
        "att": att,
    }


def _job_endpoints(job_id: str) -> list[tuple[str, str]]:
    return [
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("GET", f"/v1/jobs/{job_id}/logs"),
        ("GET", f"/v1/jobs/{job_id}/why"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
    ]


def test_tenants_cannot_see_or_touch_each_others_jobs(db_url: str) -> None:
    with coordinator(db_url) as co:
        s = _setup(co)
        alice, bob = s["alice"], s["bob"]
        mine = {s["running"]["id"], s["queued"]["id"]}
        bobs = co.submit(
            bob, {"name": "bob-1", "command": ["true"], "resources": {"gpu_models": ["RTX-4090"]}}
        )

        for job_id in mine:
            for method, path in _job_endpoints(job_id):
                r = co.c.request(method, path, headers=auth(bob))
                assert r.status_code == 404, (method, path, r.text)
                err = r.json()["error"]
                assert err["code"] == "not_found"
                # answers exactly like a job that does not exist
                missing = co.c.request(
                    method, path.replace(job_id, "job-000000000000"), headers=auth(bob)
                ).json()["error"]
                assert err["message"].replace(job_id, "X") == missing["message"].replace(
                    "job-000000000000", "X"
                )
                assert "secret" not in r.text
        for method, path in _job_endpoints(bobs["id"]):
            r = co.c.request(method, path, headers=auth(alice))
            assert r.status_code == 404, (method, path, r.text)

        # the owner gets real answers from the same endpoints
        why = co.c.get(f"/v1/jobs/{s['queued']['id']}/why", headers=auth(alice))
        assert why.status_code == 200, why.text
        assert why.json()["state"] == "queued"
        assert why.json()["fitting_gpus"] == 1  # of the two A100s, one is busy
        assert why.json()["rejections"]["busy"] == 1
        logs = co.c.get(f"/v1/jobs/{s['running']['id']}/logs", headers=auth(alice)).json()
        assert [c["data"] for c in logs["chunks"]] == ["secret\n"]

        # bob's cancel attempts changed nothing
        shown = co.job(alice, s["running"]["id"])
        assert shown["state"] == "running"
        assert shown["attempts"][0]["state"] == "running"
        assert co.job(alice, s["queued"]["id"])["state"] == "queued"

        # lists exclude the other tenant's jobs, with or without a state filter
        def listed(token: str, **params: str) -> set[str]:
            r = co.c.get("/v1/jobs", params=params, headers=auth(token))
            assert r.status_code == 200, r.text
            return {j["id"] for j in r.json()}

        assert listed(alice) == mine
        assert listed(bob) == {bobs["id"]}
        assert listed(bob, state="running") == set()
        assert listed(bob, state="queued") <= {bobs["id"]}
        assert listed(alice, state="running") == {s["running"]["id"]}
        # the admin sees everything
        assert listed(co.admin) == mine | {bobs["id"]}

        # the GPU listing does not tell a tenant which attempt holds a GPU
        for token in (alice, bob):
            gpus = co.c.get("/v1/gpus", headers=auth(token)).json()
            assert any(g["busy"] for g in gpus)
            assert all(g["attempt_id"] is None for g in gpus)

        # the same idempotency key in another tenant never returns the other's job
        keyed = co.submit(alice, key="k")
        assert co.submit(bob, key="k")["id"] != keyed["id"]


def test_archives_are_private_to_their_tenant(db_url: str) -> None:
    with coordinator(db_url) as co:
        s = _setup(co)
        data = archive({"secret.txt": b"alice's archive"})
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        r = co.c.post(
            "/v1/blobs", content=data, params={"digest": digest}, headers=auth(s["alice"])
        )
        assert r.status_code == 201 and r.json()["digest"] == digest
        # bob cannot run a job on alice's archive by naming its digest
        r = co.c.post(
            "/v1/jobs", json={"command": ["true"], "workdir": digest}, headers=auth(s["bob"])
        )
        assert r.status_code == 422
        assert r.json()["error"]["field"] == "workdir"
        # alice can
        job = co.submit(
            s["alice"],
            {"command": ["true"], "workdir": digest, "resources": {"gpu_models": ["RTX-4090"]}},
        )
        att = co.next_start(s["other"])
        assert att["job_id"] == job["id"] and att["workdir_size"] == len(data)
        # only the node running it may download the archive
        r = co.c.get(f"/v1/agent/blobs/{digest}", headers=s["other"].headers)
        assert r.status_code == 200 and r.content == data
        for token in (s["node"].token, s["alice"], s["bob"], s["provider"]):
            r = co.c.get(f"/v1/agent/blobs/{digest}", headers=auth(token))
            assert r.status_code in (403, 404), r.text


def test_two_tenants_uploading_the_same_archive_can_both_use_it(db_url: str) -> None:
    with coordinator(db_url) as co:
        co.register(co.token("provider", "prov"), [gpu(0)])
        data = archive({"same.txt": b"the same bytes"})
        for token in (co.token("consumer", "alice"), co.token("consumer", "bob")):
            r = co.c.post("/v1/blobs", content=data, headers=auth(token))
            assert r.status_code == 201
            digest = r.json()["digest"]
            r = co.c.post(
                "/v1/jobs", json={"command": ["true"], "workdir": digest}, headers=auth(token)
            )
            assert r.status_code == 201, r.text


def test_agents_report_only_on_their_own_nodes_attempts(db_url: str) -> None:
    with coordinator(db_url) as co:
        s = _setup(co)
        att, intruder = s["att"], s["other"]
        before = co.events(s["alice"], s["running"]["id"])
        for what, body in (
            ("started", {}),
            ("logs", {"chunks": [{"stream": "stdout", "data": "forged"}]}),
            ("finished", {"exit_code": 0}),
            ("finished", {"exit_code": None, "lost": True}),
        ):
            r = co.report(intruder, att, what, **body)
            assert r.status_code == 404, (what, r.text)
            assert r.json()["error"]["code"] == "not_found"
        # the other node's agent also sees none of this node's work
        assert co.work(intruder) == {"start": [], "stop": []}
        # and cannot get it stopped through its heartbeat either
        assert co.heartbeat(intruder, [att["attempt_id"]])["stop"] == [att["attempt_id"]]
        shown = co.job(s["alice"], s["running"]["id"])
        assert shown["state"] == "running" and shown["attempts"][0]["state"] == "running"
        assert co.events(s["alice"], s["running"]["id"]) == before
        logs = co.c.get(f"/v1/jobs/{s['running']['id']}/logs", headers=auth(s["alice"])).json()
        assert [c["data"] for c in logs["chunks"]] == ["secret\n"]


def test_consumers_cannot_use_agent_or_admin_endpoints(db_url: str) -> None:
    with coordinator(db_url) as co:
        s = _setup(co)
        att = s["att"]
        alice = auth(s["alice"])
        reg = {"name": "rogue", "gpus": [gpu(0)]}
        denied = [
            co.c.post("/v1/agent/register", json=reg, headers=alice),
            co.c.post("/v1/agent/hello", json=reg, headers=alice),
            co.c.post("/v1/agent/heartbeat", json={}, headers=alice),
            co.c.get("/v1/agent/work", params={"wait": 0}, headers=alice),
            co.c.get("/v1/agent/blobs/sha256:00", headers=alice),
            co.c.post("/v1/tokens", json={"role": "consumer", "account": "alice"}, headers=alice),
            co.c.post("/v1/tokens", json={"role": "admin", "account": "alice"}, headers=alice),
            co.c.post("/v1/tokens", json={"role": "provider", "account": "x"}, headers=alice),
        ]
        for r in denied:
            assert r.status_code == 403, (r.request.url, r.text)
            assert r.json()["error"]["code"] == "forbidden"
        # reports on the attempt running her own job are not hers to make either
        for what, body in (
            ("started", {}),
            ("finished", {"exit_code": 0}),
            ("finished", {"exit_code": 0, "lost": True}),  # lost: her GPU time refunded
            ("logs", {"chunks": [{"stream": "stdout", "data": "x"}]}),
        ):
            r = co.c.post(
                f"/v1/agent/attempts/{att['attempt_id']}/{what}",
                json={"fencing_token": att["fencing_token"], **body},
                headers=alice,
            )
            assert r.status_code in (403, 404), r.text
        assert co.job(s["alice"], s["running"]["id"])["state"] == "running"
        nodes = co.c.get("/v1/nodes", headers=auth(co.admin)).json()
        assert sorted(n["name"] for n in nodes) == ["a", "b"]

        # providers and agents cannot submit jobs or mint tokens
        for token in (s["provider"], s["node"].token):
            r = co.c.post("/v1/jobs", json={"command": ["true"]}, headers=auth(token))
            assert r.status_code == 403, r.text
            r = co.c.post(
                "/v1/tokens", json={"role": "consumer", "account": "z"}, headers=auth(token)
            )
            assert r.status_code == 403, r.text
        # an agent token cannot register further nodes
        r = co.c.post("/v1/agent/register", json=reg, headers=s["node"].headers)
        assert r.status_code == 403
        # even the admin cannot mint agent tokens by hand
        r = co.c.post(
            "/v1/tokens", json={"role": "agent", "account": "prov"}, headers=auth(co.admin)
        )
        assert r.status_code == 422 and r.json()["error"]["field"] == "role"


BAD_HEADERS = [
    {},
    {"Authorization": "Bearer gpn_con_not-a-real-token"},
    {"Authorization": "Bearer "},
    {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Authorization": "gpn_con_no-scheme"},
]


def test_missing_or_bad_token_is_401_json(db_url: str) -> None:
    with coordinator(db_url) as co:
        paths = [
            ("GET", "/v1/jobs"),
            ("POST", "/v1/jobs"),
            ("GET", "/v1/jobs/job-x"),
            ("POST", "/v1/jobs/job-x/cancel"),
            ("GET", "/v1/nodes"),
            ("GET", "/v1/gpus"),
            ("GET", "/v1/whoami"),
            ("POST", "/v1/tokens"),
            ("POST", "/v1/blobs"),
            ("GET", "/v1/agent/work"),
            ("POST", "/v1/agent/heartbeat"),
            ("POST", "/v1/agent/register"),
            ("POST", "/v1/agent/attempts/att-x/started"),
        ]
        for headers in BAD_HEADERS:
            for method, path in paths:
                r = co.c.request(method, path, headers=headers, json={"fencing_token": 1})
                assert r.status_code == 401, (headers, method, path, r.status_code, r.text)
                assert r.headers["content-type"].startswith("application/json")
                err = r.json()["error"]
                assert err["code"] == "unauthorized" and err["message"]
        # a good token gets through, and nothing was created on the way
        me = co.c.get("/v1/whoami", headers=auth(co.admin))
        assert me.status_code == 200 and me.json()["role"] == "admin"
        assert co.c.get("/v1/jobs", headers=auth(co.admin)).json() == []
        assert co.c.get("/v1/nodes", headers=auth(co.admin)).json() == []
