"""The agent's report queue against a fake coordinator: a 4xx is final for its report."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from gpunet.agent.gpus.simulated import SimulatedBackend, parse_simulate
from gpunet.agent.journal import read_pending
from gpunet.agent.loop import Agent, AttemptCtx
from gpunet.wire.agent import EnergyUse, FinishReport, LogLine, LogReport, Report, StartItem


class FakeCoordinator:
    """Answers each report with the next status scripted for its path (200 when none), and
    each ``POST /v1/agent/reports`` with the next status scripted for it: 404 (an older
    coordinator) unless ``batches``, else (when 200) each report in it as its own path's
    script says, as the coordinator does (every start, then every finish)."""

    def __init__(self, script: dict[str, list[int]], *, batches: bool = False) -> None:
        self.script = script
        self.batches = batches
        self.seen: list[tuple[str, int, dict[str, Any]]] = []  # each report, as answered
        self.requests: list[tuple[str, int]] = []  # each request's path and status
        self.watch: Callable[[], Any] | None = None  # looked at as each request comes
        self.watched: list[Any] = []

    def _status(self, path: str) -> int:
        statuses = self.script.get(path, [])
        return statuses.pop(0) if statuses else 200

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        body = json.loads(request.content)
        if self.watch is not None:
            self.watched.append(self.watch())
        if path == BATCH:
            status = self._status(path) if self.batches else 404
            self.requests.append((path, status))
            if status != 200:
                return _error(status)
            return httpx.Response(200, json={"results": self._batch(body)})
        status = self._status(path)
        self.requests.append((path, status))
        self.seen.append((path, status, body))
        return httpx.Response(200, json={"status": "ok"}) if status == 200 else _error(status)

    def _batch(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        results = []
        for kind in ("started", "finished"):
            for item in body[kind]:
                att = item.pop("attempt_id")
                path = f"/v1/agent/attempts/{att}/{kind}"
                status = self._status(path)
                self.seen.append((path, status, item))
                results.append({"attempt_id": att, "kind": kind, "status": status})
        return results


BATCH = "/v1/agent/reports"


def _error(status: int) -> httpx.Response:
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
        ("/a2/logs", 200),  # another attempt's output goes ahead of the start reports
        ("/a1/started", 500),  # the coordinator was away: retried
        ("/a1/started", 413),  # then refused: dropped
        ("/a1/logs", 200),  # this attempt's next report is not blocked
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


# ---- batched reports (POST /v1/agent/reports) ------------------------------------------------
BASE = "/v1/agent/attempts"


def _paths(fake: FakeCoordinator) -> list[tuple[str, int]]:
    return [(p.removeprefix(BASE), status) for p, status, _ in fake.seen]


def _two_run(a: Agent, *exits: int) -> tuple[AttemptCtx, AttemptCtx]:
    """Attempts a1 and a2 reported started, then finished with ``exits`` (in order)."""
    one, two = _ctx(a, "a1"), _ctx(a, "a2")
    a._report(one, Report(fencing_token=1))
    a._report(two, Report(fencing_token=1))
    for ctx, code in zip((one, two), exits, strict=False):
        a._finish(ctx, code, f"exit code {code}")
    return one, two


def test_queued_reports_go_in_one_request_in_order(tmp_path: Path) -> None:
    fake = FakeCoordinator({}, batches=True)
    a = _agent(tmp_path, fake)
    _two_run(a, 0, 3)
    asyncio.run(_drain(a, fake, 4))
    assert fake.requests == [(BATCH, 200)]
    assert _paths(fake) == [
        ("/a1/started", 200),
        ("/a2/started", 200),
        ("/a1/finished", 200),
        ("/a2/finished", 200),
    ]
    assert [b["fencing_token"] for _, _, b in fake.seen] == [1, 1, 1, 1]
    assert [b["exit_code"] for _, _, b in fake.seen[2:]] == [0, 3]
    assert not a.attempts and not a.journal.pending() and not read_pending(tmp_path)


def test_output_goes_between_batches_in_each_attempts_order(tmp_path: Path) -> None:
    fake = FakeCoordinator({}, batches=True)
    a = _agent(tmp_path, fake)
    one, two, three = _ctx(a, "a1"), _ctx(a, "a2"), _ctx(a, "a3")
    a._report(one, Report(fencing_token=1))
    a._report(one, _logs(one, "one"))
    a._report(two, Report(fencing_token=1))
    a._report(three, _logs(three, "three"))
    a._finish(one, 0, "exit code 0")
    a._finish(three, 0, "exit code 0")
    asyncio.run(_drain(a, fake, 6))
    # the batch cannot carry output: a1's output waits for a1's start and goes before a1's end
    assert fake.requests == [
        (BATCH, 200),
        (f"{BASE}/a1/logs", 200),
        (f"{BASE}/a3/logs", 200),
        (BATCH, 200),
    ]
    assert _paths(fake) == [
        ("/a1/started", 200),
        ("/a2/started", 200),
        ("/a1/logs", 200),
        ("/a3/logs", 200),
        ("/a1/finished", 200),
        ("/a3/finished", 200),
    ]
    assert not a.journal.pending()


def test_a_report_refused_in_a_batch_is_final_for_it_alone(tmp_path: Path) -> None:
    fake = FakeCoordinator(
        {
            f"{BASE}/a1/started": [413],  # refused: dropped, the attempt goes on
            f"{BASE}/a2/started": [409],  # stale: the attempt is not ours any more
            f"{BASE}/a3/finished": [422],  # refused: sent again cut to what ends it
        },
        batches=True,
    )
    a = _agent(tmp_path, fake)
    one, two, three, four = (_ctx(a, f"a{i}") for i in range(1, 5))
    for ctx in (one, two, four):
        a._report(ctx, Report(fencing_token=1))
    energy = [EnergyUse(index=0, joules=12.5)]
    a._report(three, FinishReport(fencing_token=1, exit_code=3, reason="odd", energy=energy))
    asyncio.run(_drain(a, fake, 5))
    assert _paths(fake) == [
        ("/a1/started", 413),
        ("/a2/started", 409),
        ("/a4/started", 200),
        ("/a3/finished", 422),
        ("/a3/finished", 200),
    ]
    assert fake.requests == [(BATCH, 200), (f"{BASE}/a3/finished", 200)]
    assert fake.seen[-1][2]["reason"] == "the coordinator refused the full report"
    assert fake.seen[-1][2]["energy"] == []
    assert not one.orphaned and two.orphaned and not four.orphaned
    assert set(a.attempts) == {"a1", "a2", "a4"}  # a3 ended
    assert not a.journal.pending()


def test_a_batch_the_coordinator_could_not_take_is_sent_again(tmp_path: Path) -> None:
    fake = FakeCoordinator({BATCH: [503, 502], f"{BASE}/a2/finished": [503]}, batches=True)
    a = _agent(tmp_path, fake)
    _two_run(a, 0, 0)
    queued = [e.seq for e in a.journal.pending()]
    fake.watch = lambda: [e.seq for e in read_pending(tmp_path)]
    asyncio.run(_drain(a, fake, 5))
    assert fake.requests == [(BATCH, 503), (BATCH, 502), (BATCH, 200), (BATCH, 200)]
    # nothing lost or reordered; the one report the coordinator could not take goes again
    assert _paths(fake) == [
        ("/a1/started", 200),
        ("/a2/started", 200),
        ("/a1/finished", 200),
        ("/a2/finished", 503),
        ("/a2/finished", 200),
    ]
    # each journal entry is done only once its report was answered
    assert fake.watched == [queued, queued, queued, queued[3:]]
    assert not a.journal.pending() and not read_pending(tmp_path)
    assert not a.attempts


def test_an_older_coordinator_gets_one_request_per_report(tmp_path: Path) -> None:
    fake = FakeCoordinator({})  # no POST /v1/agent/reports: 404
    a = _agent(tmp_path, fake)
    _one, two = _two_run(a, 0)

    async def twice() -> None:
        task = asyncio.create_task(a._report_loop())
        for _ in range(200):
            if len(fake.seen) >= 3:
                break
            await asyncio.sleep(0.02)
        a._finish(two, 0, "exit code 0")
        a._report(_ctx(a, "a3"), Report(fencing_token=1))
        await _drain(a, fake, 5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(twice())
    assert fake.requests == [  # asked once, then remembered
        (BATCH, 404),
        (f"{BASE}/a1/started", 200),
        (f"{BASE}/a2/started", 200),
        (f"{BASE}/a1/finished", 200),
        (f"{BASE}/a2/finished", 200),
        (f"{BASE}/a3/started", 200),
    ]
    assert a.batch_reports is False
    assert not a.journal.pending()
