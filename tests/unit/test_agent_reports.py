"""The agent's report queue against a fake coordinator: a 4xx is final for its report."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from gpunet.agent.gpus.simulated import SimulatedBackend, parse_simulate
from gpunet.agent.loop import Agent, AttemptCtx
from gpunet.wire.agent import EnergyUse, FinishReport, LogLine, LogReport, Report, StartItem


class FakeCoordinator:
    """Answers each report with the next status scripted for its path (200 when none)."""

    def __init__(self, script: dict[str, list[int]]) -> None:
        self.script = script
        self.seen: list[tuple[str, int, dict[str, Any]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        statuses = self.script.get(path, [])
        status = statuses.pop(0) if statuses else 200
        body = json.loads(request.content)
        self.seen.append((path, status, body))
        if status == 200:
            return httpx.Response(200, json={"status": "ok"})
        return httpx.Response(status, json={"error": {"code": "x", "message": "no", "field": None}})


def _agent(tmp_path: Path, fake: FakeCoordinator) -> Agent:
    a = Agent("http://coordinator.test", SimulatedBackend(parse_simulate("1xA100-80GB")), tmp_path)
    a.token = "node-token"
    a.http = httpx.AsyncClient(transport=httpx.MockTransport(fake))
    return a


def _ctx(a: Agent, att: str) -> AttemptCtx:
    item = StartItem(
        attempt_id=att,
        job_id="job-1",
        fencing_token=1,
        number=1,
        gpu_indices=[0],
        gpu_ids=["node-1/0"],
        spec={},
    )
    ctx = AttemptCtx(item)
    a.attempts[att] = ctx
    return ctx


async def _drain(a: Agent, fake: FakeCoordinator, count: int) -> None:
    task = asyncio.create_task(a._report_loop())
    try:
        for _ in range(200):
            if len(fake.seen) >= count and a.reports.empty():
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await a.http.aclose()


def _logs(ctx: AttemptCtx, data: str) -> LogReport:
    return LogReport(fencing_token=ctx.token, chunks=[LogLine(stream="stdout", data=data)])


def test_a_refused_report_is_dropped_and_later_ones_flow(tmp_path: Path) -> None:
    base = "/v1/agent/attempts"
    fake = FakeCoordinator({f"{base}/a1/logs": [422], f"{base}/a1/started": [500, 413]})
    a = _agent(tmp_path, fake)
    one, two = _ctx(a, "a1"), _ctx(a, "a2")
    a._report(one, _logs(one, "bad"))
    a._report(one, Report(fencing_token=one.token))
    a._report(two, _logs(two, "fine"))
    a._report(one, _logs(one, "after"))
    asyncio.run(_drain(a, fake, 5))
    assert [(p.removeprefix(base), s) for p, s, _ in fake.seen] == [
        ("/a1/logs", 422),  # dropped, not retried
        ("/a1/started", 500),  # the coordinator was away: retried
        ("/a1/started", 413),  # then refused: dropped
        ("/a2/logs", 200),  # another tenant's attempt is not blocked
        ("/a1/logs", 200),  # nor is this attempt's next report
    ]
    assert not one.orphaned and not two.orphaned  # a refused report does not orphan


def test_a_refused_finished_report_is_replaced_by_a_minimal_one(tmp_path: Path) -> None:
    base = "/v1/agent/attempts"
    fake = FakeCoordinator({f"{base}/a1/finished": [422]})
    a = _agent(tmp_path, fake)
    ctx = _ctx(a, "a1")
    energy = [EnergyUse(index=0, joules=12.5)]
    a._report(ctx, FinishReport(fencing_token=1, exit_code=3, reason="odd", energy=energy))
    asyncio.run(_drain(a, fake, 2))
    assert [s for _, s, _ in fake.seen] == [422, 200]
    assert fake.seen[1][2] == {
        "fencing_token": 1,
        "exit_code": 3,
        "lost": False,
        "reclaimed": False,
        "rendezvous_failed": False,
        "reason": "the coordinator refused the full report",
        "energy": [],
        "runtime_s": None,
    }
    assert "a1" not in a.attempts  # the attempt ended


def test_stale_and_unknown_attempts_are_orphaned_as_before(tmp_path: Path) -> None:
    base = "/v1/agent/attempts"
    fake = FakeCoordinator(
        {
            f"{base}/a1/started": [409],
            f"{base}/a2/finished": [404],
            f"{base}/a3/finished": [422, 422],
        }
    )
    a = _agent(tmp_path, fake)
    one, two, three = _ctx(a, "a1"), _ctx(a, "a2"), _ctx(a, "a3")
    a._report(one, Report(fencing_token=1))
    a._finish(two, 0, "exit code 0")
    a._finish(three, 0, "exit code 0")
    asyncio.run(_drain(a, fake, 4))
    assert [s for _, s, _ in fake.seen] == [409, 404, 422, 422]  # the minimal one only once
    assert one.orphaned and "a1" in a.attempts
    assert "a2" not in a.attempts and "a3" not in a.attempts
    assert three.orphaned


def test_output_past_the_cap_is_dropped_by_the_agent(tmp_path: Path) -> None:
    a = _agent(tmp_path, FakeCoordinator({}))
    ctx = _ctx(a, "a1")
    assert isinstance(ctx.info, StartItem)
    ctx.info.max_log_bytes = 100
    for _ in range(5):
        a._collect(ctx, "stdout", "x" * 60)
    assert [len(c["data"]) for c in ctx.logs] == [60, 60]  # the crossing piece still goes
    assert ctx.output_closed
    a._flush_logs(ctx)
    assert a.reports.qsize() == 1


def test_big_output_is_split_into_bounded_reports(tmp_path: Path) -> None:
    a = _agent(tmp_path, FakeCoordinator({}))
    ctx = _ctx(a, "a1")
    a._collect(ctx, "stdout", "a" * 100_000)
    a._collect(ctx, "stderr", "b" * 10)
    a._collect(ctx, "stdout", "c" * 200_000)
    a._flush_logs(ctx)
    bodies = [a.reports.get_nowait()[1] for _ in range(a.reports.qsize())]
    assert all(isinstance(b, LogReport) for b in bodies)
    logs = [b for b in bodies if isinstance(b, LogReport)]
    assert all(sum(len(c.data) for c in b.chunks) <= 64 * 1024 for b in logs)
    joined = "".join(c.data for b in logs for c in b.chunks)
    assert joined == "a" * 100_000 + "b" * 10 + "c" * 200_000
    asyncio.run(a.http.aclose())
