"""Many jobs in one request: the batch endpoint, the SDK's submit_many and `gpunet submit` with
several files or standard input. All are queued or none; an error names the spec's index."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import Coordinator, auth, coordinator, gpu
from typer.testing import CliRunner

from gpunet.cli import jobs as cli_jobs
from gpunet.cli.main import app
from gpunet.errors import GpunetError, ValidationFailed
from gpunet.sdk.client import Client


def _count(co: Coordinator, token: str) -> int:
    r = co.c.get("/v1/jobs", params={"limit": 10_000}, headers=auth(token))
    assert r.status_code == 200, r.text
    return len(r.json())


class _InProcess(Client):
    """The SDK client talking to the in-process coordinator."""

    def __init__(self, co: Coordinator, token: str) -> None:
        super().__init__("http://testserver", token)
        self._http.close()
        self._http = httpx.Client(
            transport=co.c._transport, base_url="http://testserver", headers=auth(token)
        )


@contextmanager
def _cli(co: Coordinator, token: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.setattr(cli_jobs, "Client", lambda: _InProcess(co, token))
    yield CliRunner()


def test_a_batch_is_queued_whole_or_not_at_all(db_url: str) -> None:
    with coordinator(db_url) as co:
        co.register(co.token("provider", "prov"), [gpu(0)])
        user = co.token("consumer", "alice")
        ok = {"command": ["true"]}
        r = co.c.post("/v1/jobs/batch", json={"jobs": [ok, ok, ok]}, headers=auth(user))
        assert r.status_code == 201, r.text
        ids = [i["ids"] for i in r.json()["items"]]
        assert [len(x) for x in ids] == [1, 1, 1] and len({x[0] for x in ids}) == 3

        # a bad spec: its index and field are named, and nothing of the batch is queued
        bad = {"command": []}
        r = co.c.post("/v1/jobs/batch", json={"jobs": [ok, bad]}, headers=auth(user))
        assert r.status_code == 422
        assert r.json()["error"]["field"] == "jobs.1.command", r.text
        never = {"command": ["true"], "resources": {"gpus": 4}}
        r = co.c.post("/v1/jobs/batch", json={"jobs": [ok, ok, never]}, headers=auth(user))
        assert r.status_code == 422
        err = r.json()["error"]
        assert err["field"] == "jobs.2.resources" and "jobs.2:" in err["message"], r.text
        assert _count(co, user) == 3

        # the same idempotency key answers the same jobs, queues nothing more
        h = auth(user) | {"Idempotency-Key": "k1"}
        first = co.c.post("/v1/jobs/batch", json={"jobs": [ok, ok]}, headers=h)
        again = co.c.post("/v1/jobs/batch", json={"jobs": [ok, ok]}, headers=h)
        assert first.status_code == again.status_code == 201
        assert first.json() == again.json()
        assert _count(co, user) == 5


def test_the_queue_quota_counts_the_whole_batch(db_url: str) -> None:
    with coordinator(db_url, max_queued_jobs=3) as co:
        co.register(co.token("provider", "prov"), [gpu(0)])
        user = co.token("consumer", "alice")
        jobs = [{"command": ["true"]}] * 4
        r = co.c.post("/v1/jobs/batch", json={"jobs": jobs}, headers=auth(user))
        assert r.status_code == 429 and r.json()["error"]["field"] == "queued_jobs", r.text
        assert _count(co, user) == 0


def test_the_sdk_submits_many_and_names_a_bad_spec_before_sending(db_url: str) -> None:
    with coordinator(db_url) as co:
        co.register(co.token("provider", "prov"), [gpu(0)])
        user = co.token("consumer", "alice")
        with _InProcess(co, user) as client:
            done = client.submit_many([{"command": ["true"]}, {"command": "echo hi", "array": 3}])
            assert [len(x) for x in done] == [1, 3]
            with pytest.raises(ValidationFailed) as exc:
                client.submit_many([{"command": ["true"]}, {"command": ["true"], "gpus": 1}])
            assert exc.value.field == "jobs.1.gpus"
        assert _count(co, user) == 4


def test_cli_submits_several_files_and_stdin_in_one_request(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with coordinator(db_url) as co:
        co.register(co.token("provider", "prov"), [gpu(0)])
        user = co.token("consumer", "alice")
        a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
        a.write_text("name: a\ncommand: ['true']\n")
        b.write_text("name: b1\ncommand: ['true']\n---\nname: b2\ncommand: echo hi\n")
        calls: list[str] = []
        real = httpx.Client.request

        def counted(self: httpx.Client, method: str, url: Any, **kw: Any) -> httpx.Response:
            calls.append(f"{method} {url}")
            return real(self, method, url, **kw)

        monkeypatch.setattr(httpx.Client, "request", counted)
        with _cli(co, user, monkeypatch) as runner:
            r = runner.invoke(app, ["submit", str(a), str(b)])
            assert r.exit_code == 0, r.output
            ids = r.stdout.split()
            assert len(ids) == 3 and all(i.startswith("job-") for i in ids)
            assert calls == ["POST /v1/jobs/batch"]  # one request for the three

            lines = "\n".join(json.dumps({"name": f"l{i}", "command": ["true"]}) for i in range(4))
            r = runner.invoke(app, ["submit", "-"], input=lines + "\n")
            assert r.exit_code == 0, r.output
            assert len(r.stdout.split()) == 4

            docs = "command: ['true']\n---\ncommand: ['true']\narray: 2\n"
            r = runner.invoke(app, ["submit", "-"], input=docs)
            assert r.exit_code == 0, r.output
            assert len(r.stdout.split()) == 3

            # a bad spec is named by where it came from, in one line; nothing is queued
            before = _count(co, user)
            bad = '{"command": ["true"]}\n{"command": ["true"], "resources": {"gpus": 0}}\n'
            r = runner.invoke(app, ["submit", "-"], input=bad)
            assert isinstance(r.exception, GpunetError)  # `gpunet` prints its message, one line
            msg = r.exception.message
            assert msg.startswith("stdin line 2: ") and "jobs.1.resources.gpus" in msg, msg
            assert _count(co, user) == before
        names = {j["name"] for j in co.c.get("/v1/jobs", headers=auth(user)).json()}
        assert {"a", "b1", "b2", "l0", "l3"} <= names


def test_an_empty_batch_with_an_idempotency_key_queues_nothing(db_url: str) -> None:
    with coordinator(db_url) as co:
        alice = co.token("consumer", "alice")
        r = co.c.post(
            "/v1/jobs/batch",
            json={"jobs": []},
            headers=auth(alice) | {"Idempotency-Key": "k1"},
        )
        assert r.status_code == 201 and r.json() == {"items": []}, r.text
