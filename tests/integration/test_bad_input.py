"""Bad input answers as JSON naming the field and the reason, and changes nothing."""

from __future__ import annotations

import hashlib

from helpers import archive, auth, coordinator, gpu


def _no_jobs(co: object) -> None:
    r = co.c.get("/v1/jobs", headers=auth(co.admin))  # type: ignore[attr-defined]
    assert r.status_code == 200 and r.json() == []


def test_malformed_and_invalid_job_bodies(db_url: str) -> None:
    with coordinator(db_url) as co:
        co.register(co.token("provider", "prov"), [gpu(0), gpu(1)])
        user = auth(co.token("consumer", "alice"))

        r = co.c.post(
            "/v1/jobs", content=b"{not json", headers=user | {"Content-Type": "application/json"}
        )
        assert r.status_code == 422
        err = r.json()["error"]
        assert (err["code"], err["field"]) == ("invalid", "body")
        assert "malformed JSON" in err["message"]
        for bad in (b"", b"[1, 2]", b'"a string"'):
            r = co.c.post(
                "/v1/jobs", content=bad, headers=user | {"Content-Type": "application/json"}
            )
            assert r.status_code == 422, bad
            assert r.json()["error"]["code"] == "invalid"
            assert r.json()["error"]["field"] == "body"

        cases = [
            ({"command": ["true"], "colour": "blue"}, "colour", "unknown field"),
            ({"command": []}, "command", "must not be empty"),
            ({"command": "   "}, "command", "must not be empty"),
            ({"name": "x"}, "command", ""),
            ({"command": ["true"], "resources": {"gpus": 0}}, "resources.gpus", ""),
            (
                {"command": ["true"], "resources": {"gpu_models": ["A100", "Z9000"]}},
                "resources.gpu_models",
                "Z9000",
            ),
            (
                {"command": ["true"], "resources": {"min_compute_capability": "eight"}},
                "resources.min_compute_capability",
                "8.0",
            ),
            ({"command": ["true"], "env": {"1BAD": "x"}}, "env", "1BAD"),
            ({"command": ["true"], "max_retries": -1}, "max_retries", ""),
        ]
        for body, field, words in cases:
            r = co.c.post("/v1/jobs", json=body, headers=user)
            assert r.status_code == 422, (body, r.text)
            err = r.json()["error"]
            assert err["code"] == "invalid", (body, err)
            assert err["field"] == field, (body, err)
            assert err["message"].startswith(f"{field}: ")
            assert words in err["message"], (body, err)
        unknown = co.c.post(
            "/v1/jobs",
            json={"command": ["true"], "resources": {"gpu_models": ["Z9000"]}},
            headers=user,
        ).json()["error"]
        assert "A100-80GB" in unknown["message"]  # lists the known models
        _no_jobs(co)

        # query parameters are checked too
        r = co.c.get("/v1/jobs", params={"state": "sleeping"}, headers=user)
        assert r.status_code == 422 and r.json()["error"]["field"] == "state"
        r = co.c.get("/v1/jobs", params={"limit": 0}, headers=user)
        assert r.status_code == 422 and r.json()["error"]["field"] == "limit"


def test_impossible_request_is_rejected_at_submit_with_the_reason(db_url: str) -> None:
    with coordinator(db_url) as co:
        user = auth(co.token("consumer", "alice"))
        # an empty fleet can run nothing
        r = co.c.post("/v1/jobs", json={"command": ["true"]}, headers=user)
        assert r.status_code == 422
        assert r.json()["error"]["code"] == "unschedulable"
        assert "no GPUs" in r.json()["error"]["message"]

        provider = co.token("provider", "prov")
        co.register(provider, [gpu(0), gpu(1)], name="a")
        co.register(provider, [gpu(0, "RTX-4090", 24_000)], name="b")
        impossible = [
            {"gpus": 3},  # two nodes of 2 and 1: no node has 3
            {"gpus": 2, "gpu_models": ["RTX-4090"]},
            {"gpu_models": ["H100-80GB"]},
            {"min_gpu_memory_gb": 200},
            {"min_compute_capability": "9.0"},
        ]
        for res in impossible:
            r = co.c.post("/v1/jobs", json={"command": ["true"], "resources": res}, headers=user)
            assert r.status_code == 422, (res, r.text)
            err = r.json()["error"]
            assert err["code"] == "unschedulable" and err["field"] == "resources", err
            assert "never run" in err["message"]
        assert (
            "the best node has 2"
            in co.c.post(
                "/v1/jobs", json={"command": ["true"], "resources": {"gpus": 3}}, headers=user
            ).json()["error"]["message"]
        )
        _no_jobs(co)
        # a job that fits only once other work is done is queued, not rejected
        r = co.c.post(
            "/v1/jobs", json={"command": ["true"], "resources": {"gpus": 2}}, headers=user
        )
        assert r.status_code == 201


def test_uploads_too_large_or_with_a_wrong_digest(db_url: str) -> None:
    with coordinator(db_url, max_upload_bytes=1024) as co:
        user = auth(co.token("consumer", "alice"))
        r = co.c.post("/v1/blobs", content=b"x" * 1025, headers=user)
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "too_large"

        # a chunked body (no Content-Length) over the limit is refused too
        def chunks() -> object:
            for _ in range(5):
                yield b"y" * 400

        r = co.c.post("/v1/blobs", content=chunks(), headers=user)
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "too_large"

        data = archive({"z": b"z" * 512})
        good = "sha256:" + hashlib.sha256(data).hexdigest()
        r = co.c.post(
            "/v1/blobs", content=data, params={"digest": "sha256:" + "0" * 64}, headers=user
        )
        assert r.status_code == 422
        assert r.json()["error"]["field"] == "digest"
        assert good in r.json()["error"]["message"]
        # nothing was stored: a job cannot name it
        co.register(co.token("provider", "prov"), [gpu(0)])
        r = co.c.post("/v1/jobs", json={"command": ["true"], "workdir": good}, headers=user)
        assert r.status_code == 422 and r.json()["error"]["field"] == "workdir"

        r = co.c.post("/v1/blobs", content=data, params={"digest": good}, headers=user)
        assert r.status_code == 201 and r.json() == {"digest": good, "size": len(data)}
        r = co.c.post("/v1/jobs", json={"command": ["true"], "workdir": good}, headers=user)
        assert r.status_code == 201


def test_stale_fencing_token_is_409_and_changes_nothing(db_url: str) -> None:
    with coordinator(db_url) as co:
        node = co.register(co.token("provider", "prov"), [gpu(0)])
        user = co.token("consumer", "alice")
        job = co.submit(user)
        att = co.next_start(node)
        assert co.report(node, att, "started").status_code == 200
        before_job = co.job(user, job["id"])
        before_events = co.events(user, job["id"])

        stale = att["fencing_token"] + 1
        for what, body in (
            ("started", {}),
            ("logs", {"chunks": [{"stream": "stdout", "data": "late"}]}),
            ("finished", {"exit_code": 0}),
            ("finished", {"lost": True}),
        ):
            for token in (stale, att["fencing_token"] - 1):
                r = co.report(node, att, what, fencing_token=token, **body)
                assert r.status_code == 409, (what, r.text)
                err = r.json()["error"]
                assert err["code"] == "stale_fencing_token"
                assert err["field"] == "fencing_token"
        assert co.job(user, job["id"]) == before_job
        assert co.events(user, job["id"]) == before_events
        logs = co.c.get(f"/v1/jobs/{job['id']}/logs", headers=auth(user)).json()
        assert logs["chunks"] == []

        # reports with a malformed body are refused before reaching the store
        r = co.c.post(
            f"/v1/agent/attempts/{att['attempt_id']}/finished",
            json={"exit_code": 0},
            headers=node.headers,
        )
        assert r.status_code == 422 and r.json()["error"]["field"] == "fencing_token"
        r = co.report(node, att, "logs", chunks=[{"stream": "stdin", "data": "x"}])
        assert r.status_code == 422
        assert co.job(user, job["id"]) == before_job


def test_registration_with_an_unknown_gpu_model_is_refused(db_url: str) -> None:
    with coordinator(db_url) as co:
        provider = auth(co.token("provider", "prov"))
        r = co.c.post(
            "/v1/agent/register", json={"name": "n", "gpus": [gpu(0, "Z9000")]}, headers=provider
        )
        assert r.status_code == 422
        assert r.json()["error"]["field"] == "gpus.model"
        r = co.c.post("/v1/agent/register", json={"name": "", "gpus": []}, headers=provider)
        assert r.status_code == 422 and r.json()["error"]["field"] == "name"
        assert co.c.get("/v1/nodes", headers=auth(co.admin)).json() == []
