"""Bare (unsandboxed) attempts: what a killed agent's job left running is killed when the agent
restarts, found by the session each attempt runs in."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from gpunet.agent import runner

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait(cond: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_a_killed_agents_grandchildren_are_killed_on_restart(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    pidfile = tmp_path / "grandchild.pid"
    # (its output elsewhere: a child holding the job's pipes keeps the attempt open)
    spec = {"command": f"sleep 300 >/dev/null 2>&1 & echo $! > {pidfile}; wait"}
    attempt = {"attempt_id": "att-x", "job_id": "job-x", "number": 1}

    async def scenario() -> tuple[int, dict[str, list[int]]]:
        run = await runner.start(spec, work / "att-x", [], attempt, lambda s, d: None)
        assert (work / "att-x.session").exists()
        for _ in range(200):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            await asyncio.sleep(0.05)
        grandchild = int(pidfile.read_text())
        # the agent dies: its parent-death signal kills the leader, not the leader's children
        os.kill(run.proc.pid, signal.SIGKILL)
        await run.proc.wait()
        assert _alive(grandchild)
        # the next run of the agent, before it takes work
        killed = runner.reap_bare_leftovers(work)
        await asyncio.gather(*run.pumps, return_exceptions=True)
        return grandchild, killed

    grandchild, killed = asyncio.run(scenario())
    assert grandchild in killed["att-x"]
    assert _wait(lambda: not _alive(grandchild))
    assert not (work / "att-x.session").exists()
    # an attempt the agent still runs is left alone; a damaged record is dropped
    (work / "att-y.session").write_text("garbage")
    assert runner.reap_bare_leftovers(work, keep={"att-y"}) == {}
    assert runner.reap_bare_leftovers(work) == {"att-y": []}


def test_a_bare_attempts_leftovers_go_when_its_leader_ends(tmp_path: Path) -> None:
    pidfile = tmp_path / "daemon.pid"
    spec = {"command": f"sleep 300 >/dev/null 2>&1 & echo $! > {pidfile}"}

    async def scenario() -> int:
        run = await runner.start(
            spec,
            tmp_path / "w" / "att-z",
            [],
            {"attempt_id": "att-z", "job_id": "job-z", "number": 1},
            lambda s, d: None,
        )
        assert await run.wait() == 0  # its daemon holds no pipe open past the leader's end
        pid = int(pidfile.read_text())
        run.close()
        return pid

    (tmp_path / "w").mkdir()
    pid = asyncio.run(scenario())
    assert _wait(lambda: not _alive(pid))
    assert not (tmp_path / "w" / "att-z.session").exists()
