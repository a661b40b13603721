"""The agent's side of owner reclaim, with real processes and a simulated GPU: an attempt on an
owner-busy GPU is never started, and a running one gets SIGTERM with its grace and is reported
reclaimed; a bad owner option is refused naming it."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from gpunet.agent import bench, owner
from gpunet.agent.gpus.simulated import SimulatedBackend
from gpunet.agent.loop import Agent, AttemptCtx
from gpunet.cli.main import app
from gpunet.wire.agent import FinishReport, Report, StartItem

TRAP = (
    "import pathlib, signal, sys, time\n"
    "def term(sig, frame):\n"
    "    pathlib.Path(sys.argv[1]).write_text('saved')\n"
    "    sys.exit(3)\n"
    "signal.signal(signal.SIGTERM, term)\n"
    "pathlib.Path(sys.argv[1] + '.up').write_text('up')\n"
    "time.sleep(60)\n"
)


def _agent(tmp_path: Path) -> tuple[Agent, Path]:
    faults = tmp_path / "faults.yaml"
    backend = SimulatedBackend(["A100-80GB", "A100-80GB"], faults=faults)
    policy = owner.OwnerPolicy(idle_s=60.0, poll_s=0.05)
    return Agent("http://coordinator.test", backend, tmp_path / "home", owner_policy=policy), faults


def _ctx(a: Agent, spec: dict[str, object], gpu: int = 0) -> AttemptCtx:
    item = StartItem(
        attempt_id="att-1",
        job_id="job-1",
        fencing_token=7,
        number=1,
        gpu_indices=[gpu],
        gpu_ids=[f"node-1/{gpu}"],
        spec=spec,
    )
    ctx = AttemptCtx(item)
    a.attempts[ctx.id] = ctx
    return ctx


def _reports(a: Agent) -> list[Report]:
    out = []
    while not a.reports.empty():
        out.append(a.reports.get_nowait()[1])
    return out


def test_an_attempt_on_an_owner_busy_gpu_is_never_started(tmp_path: Path) -> None:
    a, faults = _agent(tmp_path)
    assert a.owner is not None
    faults.write_text("gpus:\n  0:\n    owner_process: true\n")
    a.owner.update(a.backend.gpu_processes(), set())
    assert a.owner.busy_indices() == {0}
    marker = tmp_path / "ran"
    ctx = _ctx(a, {"command": ["touch", str(marker)]})
    (a.home / "work").mkdir(parents=True)
    asyncio.run(a._run_attempt(ctx))
    (rep,) = _reports(a)
    assert isinstance(rep, FinishReport)
    assert rep.reclaimed and rep.exit_code == -15 and rep.reason == owner.OWNER_REASON
    assert not marker.exists()
    beat = owner.mark(a.owner, [t.to_wire() for t in a.backend.telemetry(set())])
    assert [g.owner_busy for g in beat] == [True, False]


def test_the_owner_loop_reclaims_a_running_attempt_with_its_grace(tmp_path: Path) -> None:
    a, faults = _agent(tmp_path)
    assert a.owner is not None
    saved = tmp_path / "checkpoint"
    spec = {"command": [sys.executable, "-c", TRAP, str(saved)], "checkpoint": {"grace_s": 5}}

    async def scenario() -> float:
        (a.home / "work").mkdir(parents=True)
        ctx = _ctx(a, spec)
        assert a.owner is not None
        ctx.task = asyncio.create_task(a._run_attempt(ctx))
        watch = asyncio.create_task(owner.owner_loop(a, a.owner))
        try:
            for _ in range(400):
                if Path(str(saved) + ".up").exists():
                    break
                await asyncio.sleep(0.025)
            assert not a.beat_now.is_set()
            t0 = time.monotonic()
            faults.write_text("gpus:\n  0:\n    owner_process: true\n")
            await asyncio.wait_for(ctx.task, timeout=20)
            assert a.beat_now.is_set()  # the coordinator is told at once
            return time.monotonic() - t0
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

    took = asyncio.run(scenario())
    assert saved.read_text() == "saved"
    fin = [r for r in _reports(a) if isinstance(r, FinishReport)]
    assert len(fin) == 1 and fin[0].reclaimed and fin[0].exit_code == 3
    assert fin[0].reason == owner.OWNER_REASON
    assert took < 5.0  # it exited on SIGTERM, well within its grace
    assert a.owner.busy(0) and not a.owner.busy(1)


def test_bad_owner_options_are_refused_naming_them() -> None:
    r = CliRunner().invoke(
        app,
        ["agent", "--coordinator", "http://127.0.0.1:9", "--available", "Mon-Fri 25:00-07:00"],
    )
    assert r.exit_code == 2
    assert "--available" in r.output and "'Mon-Fri 25:00-07:00': bad time '25:00'" in r.output
    r = CliRunner().invoke(
        app, ["agent", "--coordinator", "http://127.0.0.1:9", "--owner-policy", "idle=never"]
    )
    assert r.exit_code == 2 and "--owner-policy" in r.output and "idle='never'" in r.output


def test_benchmarks_leave_owner_busy_gpus_alone(tmp_path: Path) -> None:
    a, faults = _agent(tmp_path)
    assert a.owner is not None
    faults.write_text("gpus:\n  0:\n    owner_process: true\n")
    a.owner.update(a.backend.gpu_processes(), set())
    sent: list[dict[str, Any]] = []

    def coordinator(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, json={"status": "ok"})

    a.token = "node-token"
    a.http = httpx.AsyncClient(transport=httpx.MockTransport(coordinator))

    async def scenario() -> None:
        task = asyncio.create_task(bench.benchmark_loop(a))
        for _ in range(400):
            if sent:
                break
            await asyncio.sleep(0.025)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert [r["index"] for r in sent[0]["results"]] == [1]


def test_a_reclaim_while_the_archive_downloads_reports_the_owners_reason(tmp_path: Path) -> None:
    a, _ = _agent(tmp_path)

    async def slow_coordinator(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)  # the archive never arrives before the reclaim
        return httpx.Response(200, content=b"")

    a.token = "node-token"
    a.http = httpx.AsyncClient(transport=httpx.MockTransport(slow_coordinator))

    async def scenario() -> None:
        (a.home / "work").mkdir(parents=True)
        ctx = _ctx(a, {"command": ["true"], "workdir": "sha256-abc"})
        ctx.task = asyncio.create_task(a._run_attempt(ctx))
        await asyncio.sleep(0.2)
        owner.reclaim(a, ctx, owner.WINDOW_REASON)
        await asyncio.wait_for(asyncio.gather(ctx.task, return_exceptions=True), timeout=10)
        await a.http.aclose()

    asyncio.run(scenario())
    (rep,) = _reports(a)
    assert isinstance(rep, FinishReport)
    assert rep.reclaimed and rep.exit_code == -15 and rep.reason == owner.WINDOW_REASON
