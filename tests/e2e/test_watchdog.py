"""End to end, the agent's watchdog (agent/watchdog.py): an agent frozen with SIGSTOP past its
lease has its running attempt stopped with it, then killed before the coordinator reaps it, so
the job runs to exit 0 once, never twice (no discarded duplicate); an agent killed with -9
takes its job's grandchildren with it; the watchdog itself leaves with its agent. Real
coordinator, agents and processes; the SIGSTOP test on SQLite (test_watchdog_reports.py
freezes one on PostgreSQL; the integration tests run the reaper on both databases)."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from gpunet.store.db import Database
from gpunet.store.tables import Attempt
from tests.conftest import only_on
from tests.e2e.procs import (
    Network,
    alive,
    ancestors,
    environ_var,
    host_pids_with,
    logs_on_failure,
    wait_for,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the watchdog is Linux's"),
]

LEASE = 6.0  # a margin of 0.9 s: room for a loaded host's scheduling
# runs 8 s, then exits 0: longer than the agent's lease, shorter than the freeze below
JOB = """\
import sys, time
print("ready", flush=True)
time.sleep(8)
print("done", flush=True)
"""


def _watchdogs(home: Path) -> list[int]:
    """Pids of live watchdogs of the agent on ``home``."""
    return [p for p in host_pids_with("gpunet.agent.watchdog") if alive(p) and _has_arg(p, home)]


def _has_arg(pid: int, home: Path) -> bool:
    try:
        return str(home).encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


@pytest.fixture
def net(tmp_path: Path, db_url: str) -> Iterator[Network]:
    n = Network(tmp_path, db_url, lease_timeout=LEASE)
    with logs_on_failure(n):
        n.start_coordinator()
        n.owner = n.token("provider", "owner")
        for name in ("a1", "a2"):
            n.start_agent(name, "1xA100-80GB", n.owner)
        n.user = n.token("consumer", "alice")
        n.wait_online(2)
        yield n


@only_on("sqlite")  # the agent's watchdog
def test_a_frozen_agents_attempt_is_killed_before_the_reap_and_never_runs_twice(
    net: Network, tmp_path: Path
) -> None:
    marker = f"wd-{uuid.uuid4().hex[:8]}"
    spec = tmp_path / "job.yaml"
    spec.write_text(
        textwrap.dedent(f"""\
        name: frozen
        command: ["python3", "-c", {json.dumps(JOB)}, "{marker}"]
        max_retries: 3
        """)
    )
    job_id = str(net.cli_json(net.user, "submit", str(spec))["id"])

    def first_attempt() -> list[int]:
        return [
            p
            for p in host_pids_with(marker)
            if alive(p) and environ_var(p, "GPUNET_ATTEMPT_NUMBER") == "1"
        ]

    # freeze its agent the moment the job runs (found from /proc: the CLI is too slow)
    [pid] = wait_for(first_attempt, 45, "the job to run", every=0.02)
    name = next(n for n, a in net.agents.items() if a.p.pid in ancestors(pid))
    frozen = net.agents[name]
    db = Database(net.db_url)
    os.kill(frozen.p.pid, signal.SIGSTOP)
    first = net.job(net.user, job_id)["attempts"][0]
    try:
        # the job is stopped with its agent: it cannot finish while nobody can report it (on a
        # loaded host the watchdog may already have killed it by the time this looks)
        wait_for(
            lambda: _state(pid) in ("T", "Z", "gone"), 3, "the job to be stopped with its agent"
        )
        # the watchdog kills the attempt while the coordinator still counts it running
        gone_at = None
        state_then = None
        deadline = time.monotonic() + 5 * LEASE
        while time.monotonic() < deadline and gone_at is None:
            if not alive(pid):
                gone_at = time.monotonic()
                with db.sessions() as s:
                    state_then = s.scalar(select(Attempt.state).where(Attempt.id == first["id"]))
            time.sleep(0.05)
        assert gone_at is not None, "the frozen agent's attempt was never stopped"
        assert state_then in ("assigned", "running"), state_then  # a margin before the reap
        # frozen past the lease and past the time the job would have finished on its own
        time.sleep(max(0.0, 10.0 - (time.monotonic() - gone_at)))
    finally:
        os.kill(frozen.p.pid, signal.SIGCONT)
        db.engine.dispose()
    wait_for(
        lambda: net.job(net.user, job_id)["state"] == "succeeded",
        60,
        "the job to run again and succeed",
    )
    # the thawed agent has reported what it had (it is online again), and no success came late
    wait_for(
        lambda: all(x["status"] == "online" for x in net.api(net.admin, "/v1/nodes")),
        30,
        "the frozen agent to be back",
    )
    time.sleep(2 * LEASE / 6 + 1)  # a heartbeat or two: its reports are delivered by then
    done = net.cli_json(net.user, "jobs", "show", job_id)
    runs = [a for a in done["attempts"] if a["exit_code"] == 0]
    assert len(runs) == 1, done["attempts"]
    assert done["attempts"][0]["state"] == "lost" and done["attempts"][0]["exit_code"] != 0
    events = net.cli_json(net.user, "jobs", "events", job_id)
    assert not [e for e in events if e["reason"].startswith("duplicate discarded")], events
    assert "stopped by the agent's watchdog" in frozen.output()
    # a normal exit takes the watchdog with it
    home = net.root / f"agent-{name}"
    assert len(_watchdogs(home)) == 1
    frozen.stop()
    wait_for(lambda: not _watchdogs(home), 10, "the watchdog to exit with its agent")


def test_kill_9_of_the_agent_kills_its_jobs_grandchildren(tmp_path: Path) -> None:
    # a bare attempt (no sandbox): the leader dies with the agent (parent-death signal), but
    # not the children it started; the watchdog kills those
    n = Network(tmp_path, f"sqlite:///{tmp_path / 'gpunet.db'}", lease_timeout=4.0)
    with logs_on_failure(n):
        n.start_coordinator()
        n.owner = n.token("provider", "owner")
        bare = ["--isolation", "none", "--accept-unisolated-jobs"]
        n.start_agent("bare", "1xA100-80GB", n.owner, extra=bare)
        n.user = n.token("consumer", "alice")
        n.wait_online(1)
        secs = str(3000 + os.getpid() % 1000)
        spec = tmp_path / "job.yaml"
        spec.write_text(f'name: tree\ncommand: "sleep {secs} & sleep {secs}; true"\n')
        n.cli_json(n.user, "submit", str(spec))
        wait_for(lambda: len(host_pids_with(secs)) == 2, 45, "the job and its child to run")
        home = n.root / "agent-bare"
        [dog] = _watchdogs(home)
        n.agents["bare"].kill9()
        wait_for(
            lambda: not [p for p in host_pids_with(secs) if alive(p)], 10, "the job's processes"
        )
        wait_for(lambda: not alive(dog), 10, "the watchdog to exit")
