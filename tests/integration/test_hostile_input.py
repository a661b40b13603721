"""Hostile tenants and lying agents, through the HTTP API, on both stores."""

from __future__ import annotations

import io
import os
import tarfile
from datetime import timedelta

from helpers import Coordinator, archive, auth, coordinator, gpu, wait_for
from sqlalchemy import select, update

from gpunet.services import blobs
from gpunet.store.tables import Attempt, Blob
from gpunet.util import now

JSON = {"Content-Type": "application/json"}


def _err(r: object, status: int) -> dict[str, str]:
    assert r.status_code == status, r.text  # type: ignore[attr-defined]
    return dict(r.json()["error"])  # type: ignore[attr-defined]


def _no_jobs(co: Coordinator) -> None:
    assert co.c.get("/v1/jobs", headers=auth(co.admin)).json() == []


def test_nul_and_invalid_utf8_are_refused_by_field(db_url: str) -> None:
    with coordinator(db_url) as co:
        co.register(co.token("provider", "prov"), [gpu(0)])
        user = auth(co.token("consumer", "alice"))
        cases = [
            (b'{"name": "a\\u0000b", "command": ["true"]}', "name", "must not contain NUL"),
            (b'{"command": ["true", "x\\u0000"]}', "command[1]", "must not contain NUL"),
            (b'{"command": ["true"], "env": {"A": "\\u0000"}}', "env.A", "NUL"),
            (b'{"command": ["true"], "env": {"A\\u0000": "1"}}', "env", "key"),
            (b'{"command": ["echo", "\\ud800"]}', "command[1]", "must be valid UTF-8"),
            (b'{"command": ["echo", "\xff\xfe"]}', "command[1]", "must be valid UTF-8"),
        ]
        for body, field, words in cases:
            err = _err(co.c.post("/v1/jobs", content=body, headers=user | JSON), 422)
            assert (err["code"], err["field"]) == ("invalid", field), (body, err)
            assert err["message"].startswith(f"{field}: ") and words in err["message"], err
        _no_jobs(co)
        # a valid surrogate pair and a literal backslash-u are fine
        ok = b'{"name": "\\ud83d\\ude00 \\\\u0000", "command": ["true"]}'
        r = co.c.post("/v1/jobs", content=ok, headers=user | JSON)
        assert r.status_code == 201 and r.json()["name"] == "\U0001f600 \\u0000"

        # NUL in a path parameter or a query string: a clear 4xx, never a 500 from the store
        err = _err(co.c.get("/v1/jobs/job%00x", headers=user), 404)
        assert err["field"] == "path" and "NUL" in err["message"]
        err = _err(co.c.get("/v1/jobs/x%00/logs", headers=user), 404)
        err = _err(co.c.get("/v1/jobs", params={"state": "a\x00"}, headers=user), 422)
        assert err["field"] == "state" and "NUL" in err["message"]
        r = co.c.get("/v1/jobs/%ff%fe", headers=user)
        assert r.status_code == 404

        # an Idempotency-Key over 200 characters names the header
        err = _err(
            co.c.post(
                "/v1/jobs",
                json={"command": ["true"]},
                headers=user | {"Idempotency-Key": "k" * 201},
            ),
            422,
        )
        assert err["field"] == "Idempotency-Key" and "200" in err["message"]
        assert co.submit(user["Authorization"][7:], key="k" * 200)["state"] == "queued"


def test_big_bodies_are_capped_and_strangers_are_refused_before_reading(db_url: str) -> None:
    with coordinator(db_url, max_body_bytes=256 * 1024) as co:
        user = auth(co.token("consumer", "alice"))
        big = b'{"command": ["true"], "name": "' + b"x" * 300_000 + b'"}'
        # no token: 401 without reading the body (before the 413 too)
        err = _err(co.c.post("/v1/jobs", content=big, headers=JSON), 401)
        assert err["code"] == "unauthorized"
        err = _err(co.c.post("/v1/jobs", content=big, headers=JSON | auth("wrong")), 401)
        err = _err(co.c.post("/v1/jobs", content=big, headers=user | JSON), 413)
        assert (err["code"], err["field"]) == ("too_large", "body")
        assert "262144" in err["message"]

        def chunked(n: int) -> object:
            for _ in range(n):
                yield b" " * 65536

        err = _err(co.c.post("/v1/jobs", content=chunked(5), headers=user | JSON), 413)
        assert err["field"] == "body"
        _err(co.c.post("/v1/jobs", content=chunked(5), headers=JSON), 401)
        # small bodies take the usual path: the router names the missing token
        _err(co.c.post("/v1/jobs", json={"command": ["true"]}), 401)
        _no_jobs(co)


def _running(co: Coordinator) -> tuple[object, dict[str, object], str, dict[str, object]]:
    node = co.register(co.token("provider", "prov"), [gpu(0), gpu(1)])
    user = co.token("consumer", "alice")
    job = co.submit(user)
    att = co.next_start(node)
    assert co.report(node, att, "started").status_code == 200
    return node, att, user, job


def test_job_output_is_stored_escaped_and_capped(db_url: str) -> None:
    with coordinator(db_url, max_log_bytes=1000) as co:
        node, att, user, job = _running(co)
        assert att["max_log_bytes"] == 1000  # the agent learns the cap with its work
        chunk = b'{"stream": "stdout", "data": "a\\u0000b\xff\\ud800c"}'
        raw = b'{"fencing_token": %d, "chunks": [%s]}' % (att["fencing_token"], chunk)
        r = co.c.post(
            f"/v1/agent/attempts/{att['attempt_id']}/logs", content=raw, headers=node.headers | JSON
        )
        assert r.status_code == 200 and r.json() == {"status": "ok", "truncated": False}
        # NUL in any other field of a report is refused, naming it
        bad = (
            b'{"fencing_token": %d, "chunks": [{"stream": "std\\u0000out", "data": ""}]}'
            % (att["fencing_token"])
        )
        r = co.c.post(
            f"/v1/agent/attempts/{att['attempt_id']}/logs", content=bad, headers=node.headers | JSON
        )
        assert _err(r, 422)["field"] == "chunks[0].stream"

        r = co.report(node, att, "logs", chunks=[{"stream": "stdout", "data": "x" * 600}])
        assert r.json()["truncated"] is False
        r = co.report(
            node,
            att,
            "logs",
            chunks=[{"stream": "stderr", "data": "é" * 300}, {"stream": "stdout", "data": "z"}],
        )
        assert r.status_code == 200 and r.json()["truncated"] is True
        r = co.report(node, att, "logs", chunks=[{"stream": "stdout", "data": "more"}])
        assert r.json()["truncated"] is True
        logs = co.c.get(f"/v1/jobs/{job['id']}/logs", headers=auth(user)).json()
        data = [(c["stream"], c["data"]) for c in logs["chunks"]]
        first = "a\\x00b\\xff\\ud800c"
        left = 1000 - len(first) - 600
        assert data == [
            ("stdout", first),
            ("stdout", "x" * 600),
            ("stderr", "é" * (left // 2)),
            ("system", "[gpunet: output truncated after 1000 bytes]\n"),
        ]
        with co.db.sessions() as s:
            a = s.get(Attempt, att["attempt_id"])
            assert a is not None and a.log_truncated
            assert a.log_bytes == len(first) + 600 + 2 * (left // 2)

        # a finished report with NUL is refused by field, and the minimal one still ends it
        r = co.report(node, att, "finished", exit_code=0, reason="done\x00")
        assert _err(r, 422)["field"] == "reason"
        assert co.report(node, att, "finished", exit_code=0).status_code == 200
        assert co.job(user, job["id"])["state"] == "succeeded"


def _symlink_escape() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("etc")
        info.type, info.linkname = tarfile.SYMTYPE, "../../../etc"
        tar.addfile(info)
    return buf.getvalue()


def _bomb(size: int) -> bytes:
    import gzip

    info = tarfile.TarInfo("zeros")
    info.size = size
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as gz:
        gz.write(info.tobuf())
        for _ in range(size // 65536):
            gz.write(bytes(65536))
    return out.getvalue()


def test_archives_are_checked_at_upload_and_quotas_hold(db_url: str) -> None:
    with coordinator(
        db_url, archive_max_bytes=1024 * 1024, blob_quota_bytes=4000, max_queued_jobs=2
    ) as co:
        co.register(co.token("provider", "prov"), [gpu(0)])
        alice = auth(co.token("consumer", "alice"))
        bomb = _bomb(8 * 1024 * 1024)
        assert len(bomb) < 20_000
        err = _err(co.c.post("/v1/blobs", content=bomb, headers=alice), 413)
        assert err["field"] == "workdir" and "1048576" in err["message"]
        err = _err(co.c.post("/v1/blobs", content=_symlink_escape(), headers=alice), 422)
        assert err["field"] == "workdir" and "points outside" in err["message"]
        err = _err(co.c.post("/v1/blobs", content=b"not a tar", headers=alice), 422)
        assert "not a readable tar" in err["message"]
        with co.db.sessions() as s:
            assert s.scalars(select(Blob.digest)).all() == []

        one = archive({"a": os.urandom(1500)})
        r = co.c.post("/v1/blobs", content=one, headers=alice)
        assert r.status_code == 201
        assert co.c.post("/v1/blobs", content=one, headers=alice).status_code == 201  # owned
        big = archive({"b": os.urandom(3000)})  # incompressible
        assert len(one) + len(big) > 4000
        err = _err(co.c.post("/v1/blobs", content=big, headers=alice), 429)
        assert (err["code"], err["field"]) == ("quota_exceeded", "storage_quota")
        assert "4000" in err["message"]
        # another account has its own quota
        assert (
            co.c.post(
                "/v1/blobs", content=big, headers=auth(co.token("consumer", "bob"))
            ).status_code
            == 201
        )

        for _ in range(2):
            co.submit(alice["Authorization"][7:], {"command": ["true"], "resources": {"gpus": 1}})
        err = _err(co.c.post("/v1/jobs", json={"command": ["true"]}, headers=alice), 429)
        assert (err["code"], err["field"]) == ("quota_exceeded", "queued_jobs")
        assert "quota is 2" in err["message"]


def test_unreferenced_archives_are_collected_after_their_grace(db_url: str) -> None:
    with coordinator(db_url) as co:
        co.register(co.token("provider", "prov"), [gpu(0)])
        alice = auth(co.token("consumer", "alice"))
        digests = {}
        for name in ("queued", "cancelled", "loose", "young"):
            r = co.c.post("/v1/blobs", content=archive({name: name.encode()}), headers=alice)
            digests[name] = r.json()["digest"]
        token = alice["Authorization"][7:]
        co.submit(
            token, {"command": ["true"], "workdir": digests["queued"], "resources": {"gpus": 1}}
        )
        done = co.submit(token, {"command": ["true"], "workdir": digests["cancelled"]})
        assert co.c.post(f"/v1/jobs/{done['id']}/cancel", headers=alice).status_code == 200
        with co.db.transaction() as s:
            s.execute(
                update(Blob)
                .where(Blob.digest != digests["young"])
                .values(created_at=now() - timedelta(hours=2))
            )
        gone = blobs.collect(co.db, grace_s=3600)
        assert gone == sorted([digests["cancelled"], digests["loose"]])
        with co.db.sessions() as s:
            left = set(s.scalars(select(Blob.digest)))
        assert left == {digests["queued"], digests["young"]}
        # a collected archive must be uploaded again
        err = _err(
            co.c.post(
                "/v1/jobs", json={"command": ["true"], "workdir": digests["loose"]}, headers=alice
            ),
            422,
        )
        assert err["field"] == "workdir"


def test_the_collection_loop_runs(db_url: str) -> None:
    with coordinator(db_url, blob_gc_interval_s=0.1, blob_grace_s=0) as co:
        alice = auth(co.token("consumer", "alice"))
        assert (
            co.c.post("/v1/blobs", content=archive({"x": b"x"}), headers=alice).status_code == 201
        )

        def empty() -> bool:
            with co.db.sessions() as s:
                return s.scalar(select(Blob.digest).limit(1)) is None

        wait_for(empty, what="the archive to be collected")
