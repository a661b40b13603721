"""End to end, live preemption: real coordinator and agents, real processes. An on-demand job
preempts one of two running interruptible jobs; the agent sends SIGTERM, the job's handler
runs within its grace, the attempt ends `preempted`, the job is queued again naming the job
that took its GPU, and that job runs. One test on SQLite, the other on PostgreSQL (the
integration tests preempt and bill on both).

``preempt_one`` returns everything a later check (e.g. resuming from a checkpoint) needs."""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from gpunet.store.db import Database
from gpunet.store.tables import AttemptCharge
from tests.conftest import only_on
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


# Counts steps into its checkpoint directory, the count written atomically, one every 0.1 s on
# its first attempt and every 0.01 s on a later one (which nothing but the test waits for);
# resumes from the count it finds; says "ready" once it has three steps worth keeping. No
# SIGTERM handler: a stop kills it, and the agent uploads what the directory holds.
COUNTER = """\
import os, sys, time
path = os.path.join(os.environ["GPUNET_CHECKPOINT_DIR"], "count")
total = int(sys.argv[1])
n = int(open(path).read()) if os.path.exists(path) else 0
attempt = os.environ['GPUNET_ATTEMPT_NUMBER']
print(f"attempt {attempt} resumes at {n}", flush=True)
while n < total:
    time.sleep(0.1 if attempt == "1" else 0.01)
    n += 1
    with open(path + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(path + ".tmp", path)
    if n == 3:
        print("ready", flush=True)
print(f"final count {n}", flush=True)
"""
PRICE = "3.6"  # credits per GPU-hour: 0.001 a second, so every billed second shows


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


def preempt_one(
    net: Network,
    tmp_path: Path,
    filler_spec: str = "",
    command: list[str] | None = None,
    urgent_command: str = "print('urgent done')",
) -> Preemption:
    """Fill both GPUs with interruptible jobs (``command``, default FILLER: each prints
    "ready" once it has work worth keeping), then submit an on-demand job; returns once the
    victim's attempt is `preempted` and the on-demand job has succeeded."""
    fillers = []
    argv = json.dumps(command or ["python3", "-c", FILLER])
    for i in range(2):
        fillers.append(
            _submit(
                net,
                tmp_path,
                f"filler{i}",
                f"""\
                name: filler{i}
                command: {argv}
                interruptible: true
                {filler_spec or "checkpoint: {grace_s: 10}"}
                """,
            )
        )
    for f in fillers:
        wait_for(lambda f=f: "ready" in net.output(net.user, f), 45, f"{f} to run")  # type: ignore[misc]
    urgent = _submit(
        net,
        tmp_path,
        "urgent",
        f"""\
        name: urgent
        command: ["python3", "-c", {json.dumps(urgent_command)}]
        """,
    )

    def preempted() -> str | None:
        for f in fillers:
            job = net.job(net.user, f)
            if any(a["state"] == "preempted" for a in job["attempts"]):
                return f
        return None

    victim = wait_for(preempted, 45, "a filler to be preempted")
    wait_for(lambda: net.job(net.user, urgent)["state"] == "succeeded", 45, "the urgent job to run")
    return Preemption(fillers, victim, urgent)


@only_on("sqlite")  # the agent's SIGTERM
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
    wait_for(
        lambda: len(net.job(net.user, res.victim)["attempts"]) == 2, 45, "the victim to run again"
    )
    assert "urgent done" in _output(net, res.urgent)
    for f in res.fillers:
        net.cli(net.user, "cancel", f)


@dataclass
class Charge:
    billed_seconds: int
    charged: Decimal
    outcome: str | None
    settled: bool


def _charges(net: Network) -> dict[str, Charge]:
    """Each attempt's charge, read from the store (what the tenant was billed)."""
    db = Database(net.db_url)
    try:
        with db.sessions() as s:
            return {
                c.attempt_id: Charge(
                    c.billed_seconds, c.charged, c.outcome, c.settled_at is not None
                )
                for c in s.scalars(select(AttemptCharge))
            }
    finally:
        db.engine.dispose()


@only_on("postgres")  # the other: SQLite
def test_a_preempted_job_resumes_from_its_checkpoint_and_pays_what_ran(
    net: Network, tmp_path: Path
) -> None:
    for node in net.cli_json(net.admin, "nodes"):
        net.cli_json(net.owner, "price", "set", "--node", node["id"], PRICE)
    net.cli_json(net.admin, "credits", "grant", "--account", "alice", "100")
    total = 200  # 20 s of steps: both still run when the on-demand job comes, however slow the host
    res = preempt_one(
        net,
        tmp_path,
        filler_spec="checkpoint: {grace_s: 2, interval_s: 30}",
        command=["python3", "-c", COUNTER, str(total)],
        urgent_command="import time; time.sleep(1); print('urgent done')",
    )
    wait_for(
        lambda: net.job(net.user, res.victim)["state"] == "succeeded",
        60,
        "the preempted job to resume and finish",
    )
    done = _job(net, res.victim)
    first, second = done["attempts"]
    assert (first["state"], second["state"]) == ("preempted", "succeeded"), done["attempts"]
    assert done["retries_used"] == 0  # a preemption costs no retry
    out = _output(net, res.victim)
    resumed = [int(m) for m in re.findall(r"attempt 2 resumes at (\d+)", out)]
    assert len(resumed) == 1 and 0 < resumed[0] < total, out
    assert re.findall(r"final count (\d+)", out) == [str(total)], out
    # the `preempted` event names the job that took the GPU
    events = net.cli_json(net.user, "jobs", "events", res.victim)
    requeued = [e for e in events if e["to"] == "queued" and e["from"] is not None]
    assert len(requeued) == 1 and f"preempted by job {res.urgent}" in requeued[0]["reason"]
    # the preempted attempt is billed the time it ran, as its agent measured it, no more
    charges = _charges(net)
    ran = first["runtime_s"]
    assert ran is not None and ran > 0.3, first
    ch = charges[first["id"]]
    assert ch.outcome != "lost" and ch.settled
    assert abs(ch.billed_seconds - ran) <= 1.0, (ch.billed_seconds, ran)
    assert ch.charged > 0
    # so is the attempt that finished the work
    assert abs(charges[second["id"]].billed_seconds - second["runtime_s"]) <= 1.0
    for f in res.fillers:
        net.cli(net.user, "cancel", f)
    ledger = net.cli(net.admin, "ledger", "verify")
    assert ledger.returncode == 0 and "ledger ok" in ledger.stdout, ledger.stdout + ledger.stderr
