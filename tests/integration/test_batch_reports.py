"""Batched reports: several attempts' started and finished reports in one request, each
fenced and answered as its own request would be."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import Coordinator, Node, auth, coordinator, gpu, wait_for
from sqlalchemy import event, select
from sqlalchemy.exc import OperationalError

from gpunet.agent.gpus.simulated import SimulatedBackend
from gpunet.agent.loop import Agent, AttemptCtx
from gpunet.store.tables import AttemptCharge
from gpunet.wire.agent import LogLine, LogReport, Report, StartItem


def _reports(co: Coordinator, node: Node, **body: Any) -> list[dict[str, Any]]:
    r = co.c.post("/v1/agent/reports", json=body, headers=node.headers)
    assert r.status_code == 200, r.text
    return list(r.json()["results"])


def _starts(co: Coordinator, node: Node, n: int) -> list[dict[str, Any]]:
    got: dict[str, dict[str, Any]] = {}

    def poll() -> bool:
        for item in co.work(node, wait=1)["start"]:
            got[item["attempt_id"]] = item
        return len(got) >= n

    wait_for(poll, poll=0, what=f"{n} attempts")
    return list(got.values())


def test_started_and_finished_reports_in_one_request(db_url: str) -> None:
    with coordinator(db_url) as co:
        node = co.register(co.token("provider", "prov"), [gpu(0), gpu(1), gpu(2)])
        user = co.token("consumer", "alice")
        jobs = [co.submit(user, {"command": ["true"]})["id"] for _ in range(3)]
        atts = _starts(co, node, 3)
        ok, failing, refused = atts
        fin = lambda a, code: {  # noqa: E731
            "attempt_id": a["attempt_id"],
            "fencing_token": a["fencing_token"],
            "exit_code": code,
            "runtime_s": 0.01,
        }
        results = _reports(
            co,
            node,
            started=[
                {"attempt_id": a["attempt_id"], "fencing_token": a["fencing_token"]}
                for a in (ok, failing)
            ]
            # a stale token: refused alone, as its own request would be
            + [{"attempt_id": refused["attempt_id"], "fencing_token": 99}],
            finished=[fin(ok, 0), fin(failing, 3)],
        )
        assert [(r["attempt_id"], r["kind"], r["status"]) for r in results] == [
            (ok["attempt_id"], "started", 200),
            (failing["attempt_id"], "started", 200),
            (refused["attempt_id"], "started", 409),
            (ok["attempt_id"], "finished", 200),
            (failing["attempt_id"], "finished", 200),
        ]
        assert results[2]["code"] == "stale_fencing_token"
        states = {a["job_id"]: co.job(user, a["job_id"])["state"] for a in atts}
        assert states == {
            ok["job_id"]: "succeeded",
            failing["job_id"]: "failed",
            refused["job_id"]: "assigned",  # the refused start changed nothing
        }
        assert set(states) == set(jobs)
        # a repeated finish is refused (the attempt is no longer current); the start of the
        # third, with its token, is taken
        again = _reports(
            co,
            node,
            started=[
                {"attempt_id": refused["attempt_id"], "fencing_token": refused["fencing_token"]}
            ],
            finished=[fin(ok, 0)],
        )
        assert [r["status"] for r in again] == [200, 409]
        assert co.job(user, refused["job_id"])["state"] == "running"


def test_only_an_agent_may_send_reports(db_url: str) -> None:
    with coordinator(db_url) as co:
        user = co.token("consumer", "alice")
        r = co.c.post(
            "/v1/agent/reports", json={"started": []}, headers={"Authorization": f"Bearer {user}"}
        )
        assert r.status_code == 403, r.text


def _agent_of(co: Coordinator, node: Node, home: Path, requests: list[str]) -> Agent:
    """A real agent whose requests go to ``co`` (each one's path noted in ``requests``)."""

    def forward(request: httpx.Request) -> httpx.Response:
        requests.append(request.url.path)
        r = co.c.request(
            request.method, request.url.path, content=request.content, headers=request.headers
        )
        return httpx.Response(r.status_code, headers=r.headers, content=r.content)

    agent = Agent("http://coordinator.test", SimulatedBackend(["A100-80GB"]), home)
    agent.node_id, agent.token = node.id, node.token
    agent.http = httpx.AsyncClient(transport=httpx.MockTransport(forward))
    return agent


async def _deliver_queued(agent: Agent) -> None:
    task = asyncio.create_task(agent._report_loop())
    try:
        for _ in range(500):
            if not agent.journal.pending():
                break
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await agent.http.aclose()


def test_the_agent_sends_its_queued_reports_in_batches(db_url: str, tmp_path: Path) -> None:
    with coordinator(db_url) as co:
        node = co.register(co.token("provider", "prov"), [gpu(0), gpu(1), gpu(2)])
        user = co.token("consumer", "alice")
        for _ in range(3):
            co.submit(user, {"command": ["true"]})
        requests: list[str] = []
        agent = _agent_of(co, node, tmp_path, requests)
        ok, failing, stale = (AttemptCtx(StartItem.model_validate(a)) for a in _starts(co, node, 3))
        assert isinstance(stale.info, StartItem)
        stale.info.fencing_token += 7  # not the attempt's token: refused alone
        for ctx in (ok, failing, stale):
            agent.attempts[ctx.id] = ctx
            agent._report(ctx, Report(fencing_token=ctx.token))
        agent._report(
            ok, LogReport(fencing_token=ok.token, chunks=[LogLine(stream="stdout", data="hi\n")])
        )
        agent._finish(ok, 0, "exit code 0")
        agent._finish(failing, 3, "exit code 3")
        asyncio.run(_deliver_queued(agent))
        assert requests == [
            "/v1/agent/reports",  # the three starts, and the finish with no output before it
            f"/v1/agent/attempts/{ok.id}/logs",  # the output after its start
            f"/v1/agent/attempts/{ok.id}/finished",  # then its finish (alone: a request)
        ]
        states = {c.id: co.job(user, c.info.job_id)["state"] for c in (ok, failing, stale)}
        assert states == {ok.id: "succeeded", failing.id: "failed", stale.id: "assigned"}
        out = co.c.get(f"/v1/jobs/{ok.info.job_id}/logs", headers=auth(user)).json()
        assert [c["data"] for c in out["chunks"] if c["stream"] == "stdout"] == ["hi\n"]
        assert stale.orphaned and not ok.orphaned and not failing.orphaned
        assert set(agent.attempts) == {stale.id}  # the ended ones are done with
        assert not agent.journal.pending()
        metrics = co.c.get("/metrics", headers=auth(co.admin)).text
        counted = re.findall(
            r'^gpunet_agent_report_requests_total\{path="(\w+)"\} (\S+)$', metrics, re.M
        )
        assert sorted((p, float(n)) for p, n in counted) == [
            ("finished", 1.0),
            ("logs", 1.0),
            ("reports", 1.0),
        ]


def _report_commits(db: Any) -> list[int]:
    """A counter (its one element) of the commits, from now on, of transactions that moved an
    attempt: the reports' own (the coordinator's background loops commit too)."""
    seen = [0]
    moved: set[int] = set()

    def note(conn: Any, _cur: Any, sql: str, *_a: Any) -> None:
        if sql.lstrip().upper().startswith("UPDATE ATTEMPTS"):
            moved.add(id(conn))

    def commit(conn: Any) -> None:
        if id(conn) in moved:
            moved.discard(id(conn))
            seen[0] += 1

    event.listen(db.engine, "before_cursor_execute", note)
    event.listen(db.engine, "commit", commit)
    event.listen(db.engine, "rollback", lambda conn: moved.discard(id(conn)))
    return seen


def _priced(co: Coordinator, n: int) -> tuple[Node, str, list[dict[str, Any]]]:
    """A node whose ``n`` GPUs are priced, a consumer with credits, and ``n`` of its jobs
    placed there (their start items): every attempt is billed."""
    provider = co.token("provider", "prov")
    node = co.register(provider, [gpu(i) for i in range(n)])
    r = co.c.put("/v1/prices", json={"node_id": node.id, "price": "3.6"}, headers=auth(provider))
    assert r.status_code == 200, r.text
    user = co.token("consumer", "alice")
    r = co.c.post(
        "/v1/credits/grant", json={"account": "alice", "amount": "50"}, headers=auth(co.admin)
    )
    assert r.status_code == 201, r.text
    for _ in range(n):
        co.submit(user, {"command": ["true"]})
    return node, user, _starts(co, node, n)


def _started(atts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"attempt_id": a["attempt_id"], "fencing_token": a["fencing_token"]} for a in atts]


def _finished(atts: list[dict[str, Any]], code: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "attempt_id": a["attempt_id"],
            "fencing_token": a["fencing_token"],
            "exit_code": code,
            "runtime_s": 0.5,
        }
        for a in atts
    ]


def _settled(co: Coordinator) -> dict[str, bool]:
    with co.db.sessions() as s:
        return {c.attempt_id: c.settled_at is not None for c in s.scalars(select(AttemptCharge))}


def _ledger_sound(co: Coordinator) -> None:
    r = co.c.get("/v1/ledger/verify", headers=auth(co.admin))
    assert r.json() == {"ok": True, "problems": []}, r.text


def test_a_batch_of_current_reports_is_taken_in_one_transaction(db_url: str) -> None:
    with coordinator(db_url) as co:
        node, user, atts = _priced(co, 4)
        commits = _report_commits(co.db)
        # the start and the finish of the same attempt in one batch, as a short job's are
        results = _reports(co, node, started=_started(atts), finished=_finished(atts[:2]))
        assert [r["status"] for r in results] == [200] * 6
        assert commits[0] == 1
        states = [co.job(user, a["job_id"])["state"] for a in atts]
        assert states == ["succeeded", "succeeded", "running", "running"]
        assert _settled(co) == {a["attempt_id"]: i < 2 for i, a in enumerate(atts)}
        # one refused report: each is then taken on its own, and only the refused one fails
        commits[0] = 0
        stale = dict(atts[2], fencing_token=atts[2]["fencing_token"] + 5)
        results = _reports(co, node, finished=_finished([stale, atts[3]], code=3))
        assert [r["status"] for r in results] == [409, 200]
        assert commits[0] == 1  # the accepted one; the batch's own transaction rolled back
        assert co.job(user, atts[2]["job_id"])["state"] == "running"
        assert co.job(user, atts[3]["job_id"])["state"] == "failed"
        assert _settled(co)[atts[3]["attempt_id"]] and not _settled(co)[atts[2]["attempt_id"]]
        _ledger_sound(co)


def test_a_batch_that_loses_a_deadlock_is_taken_report_by_report(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL picks one transaction of a deadlock to abort: a batch so chosen is undone
    and its reports are taken one by one, none lost or taken twice."""
    from gpunet.services import agents

    class Deadlock(Exception):
        sqlstate = agents.DEADLOCK_DETECTED

    real = agents.lock_rows
    calls = [0]

    def second_deadlocks(s: Any, model: Any, keys: Any) -> Any:
        calls[0] += 1
        if calls[0] == 2:  # locking the jobs, after the attempts
            raise OperationalError("SELECT ... FOR UPDATE", {}, Deadlock())
        return real(s, model, keys)

    monkeypatch.setattr(agents, "lock_rows", second_deadlocks)
    with coordinator(db_url) as co:
        node, user, atts = _priced(co, 2)
        commits = _report_commits(co.db)
        results = _reports(co, node, started=_started(atts), finished=_finished(atts[:1]))
        assert [r["status"] for r in results] == [200, 200, 200]
        assert commits[0] == 3
        states = [co.job(user, a["job_id"])["state"] for a in atts]
        assert states == ["succeeded", "running"]
        assert _settled(co) == {atts[0]["attempt_id"]: True, atts[1]["attempt_id"]: False}
        _ledger_sound(co)
        # any other database error is not a refusal: the request fails, nothing is written
        monkeypatch.setattr(
            agents,
            "lock_rows",
            lambda *a: (_ for _ in ()).throw(OperationalError("x", {}, Exception("down"))),
        )
        with pytest.raises(OperationalError):
            _reports(co, node, started=_started(atts[1:]), finished=_finished(atts[1:]))
        assert co.job(user, atts[1]["job_id"])["state"] == "running"
