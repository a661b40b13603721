"""A bare attempt's job runs only once the agent has recorded its session (the record is how
the agent's watchdog finds, stops and reports it). The chaos benchmark found jobs that ran to
exit 0 twice because their agent was frozen between spawning the job and recording its session:
the job ran to its end unseen, the lease lapsed, the work ran again elsewhere, and the thawed
agent then reported the first run's success. Real processes; the frozen agent is a pause
inserted right after the spawn."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gpunet.agent import runner

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")

ATTEMPT = {"attempt_id": "att-g", "job_id": "job-g", "number": 1}
FROZEN_S = 0.8  # the agent "frozen" after the spawn: far longer than the job takes


def _frozen_after_spawn(monkeypatch: pytest.MonkeyPatch, seen: list[bool], marker: Path) -> None:
    """The spawn, then a pause as long as a frozen agent's, noting whether the job ran in it."""
    spawn = runner._spawn

    async def slow_spawn(*args: Any, **kw: Any) -> Any:
        out = await spawn(*args, **kw)
        time.sleep(FROZEN_S)  # blocks the whole loop, as SIGSTOP would
        seen.append(marker.exists())
        return out

    monkeypatch.setattr(runner, "_spawn", slow_spawn)


def test_a_job_does_not_run_before_its_session_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    marker = work / "att-g" / "ran"
    seen: list[bool] = []
    _frozen_after_spawn(monkeypatch, seen, marker)
    spec = {"command": "touch ran; echo $$ > pid; readlink /proc/self/fd/0 > stdin"}

    async def scenario() -> tuple[runner.Run, int, str]:
        run = await runner.start(spec, work / "att-g", [], ATTEMPT, lambda s, d: None)
        record = (work / "att-g.session").read_text()
        code = await run.wait()
        return run, code, record

    run, code, record = asyncio.run(scenario())
    assert seen == [False], "the job ran while the agent could not have recorded it"
    assert code == 0 and marker.exists()
    # the job is the recorded leader itself (the gate replaced itself with it), stdin as before
    pid = int((work / "att-g" / "pid").read_text())
    assert pid == run.proc.pid and record.split()[0] == str(pid)
    assert (work / "att-g" / "stdin").read_text().strip() == "/dev/null"
    # its running time counts from when it was let run, not from the spawn
    assert run.runtime_s < FROZEN_S
    run.close()
    assert not (work / "att-g.session").exists()


def test_a_job_refused_at_its_start_never_runs(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    spec = {"command": "touch ran"}
    asked: list[bool] = []

    def may_run() -> str | None:
        asked.append((work / "att-g.session").exists())  # asked once the session is recorded
        return "lease lost"

    async def scenario() -> None:
        with pytest.raises(runner.NotStarted, match="lease lost"):
            await runner.start(
                spec, work / "att-g", [], ATTEMPT, lambda s, d: None, may_run=may_run
            )

    asyncio.run(scenario())
    time.sleep(0.3)
    assert asked == [True]
    assert not (work / "att-g" / "ran").exists()
    assert not (work / "att-g.session").exists()


def test_a_command_given_as_argv_passes_the_gate_unchanged(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    out: list[str] = []
    spec = {"command": [sys.executable, "-c", "import sys; print(sys.argv[1:])", "a b", "-c", ""]}

    async def scenario() -> int:
        run = await runner.start(spec, work / "att-g", [], ATTEMPT, lambda s, d: out.append(d))
        code = await run.wait()
        run.close()
        return code

    assert asyncio.run(scenario()) == 0
    assert "".join(out).strip() == str(["a b", "-c", ""])
