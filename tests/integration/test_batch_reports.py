"""Batched reports: several attempts' started and finished reports in one request, each
fenced and answered as its own request would be."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
from helpers import Coordinator, Node, auth, coordinator, gpu, wait_for

from gpunet.agent.gpus.simulated import SimulatedBackend
from gpunet.agent.loop import Agent, AttemptCtx
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
