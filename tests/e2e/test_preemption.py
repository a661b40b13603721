"""End to end, live preemption: real coordinator and agents, real processes. An on-demand job
preempts one of two running interruptible jobs; the agent sends SIGTERM, the job's handler
runs within its grace, the attempt ends `preempted`, the job is queued again naming the job
that took its GPU, and that job runs. Each test runs on SQLite and on PostgreSQL.

``preempt_one`` returns everything a later check (e.g. resuming from a checkpoint) needs."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.procs import Network, two_agent_network, wait_for

pytestmark = pytest.mark.e2e

# Handles SIGTERM: says so and exits non-zero (a job that stops without finishing its work).
FILLER = """\
import signal, sys, time
def stop(signum, frame):
    print("got SIGTERM", flush=True)
    sys.exit(3)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
while True:
    time.sleep(0.1)
"""


@pytest.fixture
def net(tmp_path: Path, db_url: str) -> Iterator[Network]:
    with two_agent_network(tmp_path, db_url, "1xA100-80GB") as n:
        yield n


def _submit(net: Network, tmp_path: Path, name: str, body: str) -> str:
    p = tmp_path / f"{name}.yaml"
    p.write_text(textwrap.dedent(body))
    return str(net.cli_json(net.user, "submit", str(p))["id"])


def _job(net: Network, job_id: str) -> dict[str, Any]:
    data: dict[str, Any] = net.cli_json(net.user, "jobs", "show", job_id)
    return data


def _output(net: Network, job_id: str) -> str:
    r = net.cli(net.user, "logs", job_id)
    assert r.returncode == 0, r.stderr
    return r.stdout


@dataclass
class Preemption:
    fillers: list[str]  # the interruptible jobs
    victim: str  # the one that was preempted
    urgent: str  # the on-demand job that took its GPU


def preempt_one(net: Network, tmp_path: Path, filler_spec: str = "") -> Preemption:
    """Fill both GPUs with interruptible jobs, then submit an on-demand job; returns once the
    victim's attempt is `preempted` and the on-demand job has succeeded."""
    fillers = []
    for i in range(2):
        fillers.append(
            _submit(
                net,
                tmp_path,
                f"filler{i}",
                f"""\
                name: filler{i}
                command: ["python3", "-c", {json.dumps(FILLER)}]
                interruptible: true
                checkpoint: {{grace_s: 10}}
                {filler_spec}
                """,
            )
        )
    for f in fillers:
        wait_for(lambda f=f: "ready" in _output(net, f), 45, f"{f} to run")  # type: ignore[misc]
    urgent = _submit(
        net,
        tmp_path,
        "urgent",
        """\
        name: urgent
        command: ["python3", "-c", "print('urgent done')"]
        """,
    )

    def preempted() -> str | None:
        for f in fillers:
            job = _job(net, f)
            if any(a["state"] == "preempted" for a in job["attempts"]):
                return f
        return None

    victim = wait_for(preempted, 45, "a filler to be preempted")
    wait_for(lambda: _job(net, urgent)["state"] == "succeeded", 45, "the urgent job to run")
    return Preemption(fillers, victim, urgent)


def test_on_demand_job_preempts_an_interruptible_one(net: Network, tmp_path: Path) -> None:
    res = preempt_one(net, tmp_path)
    victim = _job(net, res.victim)
    first = victim["attempts"][0]
    assert first["state"] == "preempted"
    assert f"preempted by job {res.urgent}" in first["reason"]
    assert victim["retries_used"] == 0
    assert "got SIGTERM" in _output(net, res.victim)  # its handler ran within the grace
    events = net.cli_json(net.user, "jobs", "events", res.victim)
    requeued = [e for e in events if e["to"] == "queued" and e["from"] is not None]
    assert requeued and f"preempted by job {res.urgent}" in requeued[-1]["reason"]
    # only one filler was stopped: one GPU was needed
    other = next(f for f in res.fillers if f != res.victim)
    assert [a["state"] for a in _job(net, other)["attempts"]] == ["running"]
    # the victim runs again once the urgent job's GPU is free
    wait_for(lambda: len(_job(net, res.victim)["attempts"]) == 2, 45, "the victim to run again")
    assert "urgent done" in _output(net, res.urgent)
    for f in res.fillers:
        net.cli(net.user, "cancel", f)
