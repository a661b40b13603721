"""End to end: a GPU's owner takes it back. Real processes (a coordinator, two agents on
simulated GPUs, a tenant job that traps SIGTERM), on SQLite: the policy is the agent's, and the
integration tests run reclaims on both databases. The owner's process is started and stopped
through the simulated backend's fault profile."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpunet.core.ledger import metered_seconds
from gpunet.store.db import Database
from gpunet.store.tables import AttemptCharge
from tests.conftest import only_on
from tests.e2e.procs import Network, logs_on_failure, wait_for

pytestmark = pytest.mark.e2e

IDLE_S = 3  # the owner-free time before a GPU takes tenant work again (short for the test)
GRACE_S = 5

JOB = textwrap.dedent(
    """
    import os, pathlib, signal, sys, time
    if os.environ["GPUNET_ATTEMPT_NUMBER"] != "1":
        print("resumed", flush=True)
        sys.exit(0)
    def term(sig, frame):
        print("checkpointing", flush=True)
        ck = os.environ.get("GPUNET_CHECKPOINT_DIR")
        if ck:
            pathlib.Path(ck, "step.txt").write_text("42")
        sys.exit(3)
    signal.signal(signal.SIGTERM, term)
    print("started", flush=True)
    time.sleep(120)
    """
)


@pytest.fixture
def net(tmp_path: Path, db_url: str) -> Iterator[Network]:
    n = Network(tmp_path, db_url, lease_timeout=5.0)
    with logs_on_failure(n):
        n.start_coordinator()
        n.owner = n.token("provider", "owner")
        policy = ["--owner-policy", f"idle={IDLE_S}s,poll=0.2"]
        n.start_agent("a1", "1xA100-80GB", n.owner, extra=policy)
        n.start_agent("a2", "1xA100-80GB", n.owner, extra=policy)
        n.user = n.token("consumer", "alice")
        n.wait_online(2)
        yield n


def _api(net: Network, method: str, path: str, token: str, **kw: Any) -> Any:
    r = httpx.request(
        method, net.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=10, **kw
    )
    assert r.is_success, r.text
    return r.json()


def _job(net: Network, job_id: str) -> dict[str, Any]:
    return dict(net.cli_json(net.user, "jobs", "show", job_id))


def _agent_of(net: Network, node_id: str) -> str:
    return next(n for n in net.agents if net.agent_credentials(n)["node_id"] == node_id)


def _faults(net: Network, agent: str) -> Path:
    return net.root / f"agent-{agent}" / "faults.yaml"


def _detached(net: Network, *command: str) -> str:
    r = net.cli(net.user, "run", "--gpus", "1", "--detach", "--", *command)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.strip()


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@only_on("sqlite")  # the agent's policy
def test_the_owner_takes_the_gpu_back_and_the_job_finishes_elsewhere(
    net: Network, tmp_path: Path, db_url: str
) -> None:
    for node in net.cli_json(net.admin, "nodes"):
        _api(net, "PUT", "/v1/prices", net.owner, json={"node_id": node["id"], "price": "3.6"})
    _api(net, "POST", "/v1/credits/grant", net.admin, json={"account": "alice", "amount": "10"})
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "name: trainer\n"
        f"command: {json.dumps(['python3', '-c', JOB])}\n"
        f"checkpoint: {{grace_s: {GRACE_S}}}\n"
        "max_retries: 0\n"
    )
    job_id = net.cli_json(net.user, "submit", str(spec))["id"]
    first = wait_for(
        lambda: (j := net.job(net.user, job_id))["state"] == "running" and j, 30, "the job to run"
    )
    node_a = first["node_id"]
    a = _agent_of(net, node_a)
    gpu_a = f"{node_a}/0"
    wait_for(lambda: "started" in net.output(net.user, job_id), 20, "the job's output")

    # the owner starts a process on A's GPU
    _faults(net, a).write_text("gpus:\n  0:\n    owner_process: true\n")
    wait_for(lambda: net.job(net.user, job_id)["state"] == "succeeded", 60, "the job to finish")
    done = _job(net, job_id)
    att1, att2 = done["attempts"]
    assert att1["state"] == "preempted" and att1["node_id"] == node_a
    assert "owner" in att1["reason"] and att1["exit_code"] == 3
    assert att2["state"] == "succeeded" and att2["node_id"] != node_a
    assert done["retries_used"] == 0  # a reclaim uses no retry (max_retries 0)
    logs = net.cli(net.user, "logs", job_id).stdout
    assert "checkpointing" in logs and "resumed" in logs
    queued = [e for e in net.cli_json(net.user, "jobs", "events", job_id) if e["to"] == "queued"]
    assert any("owner" in e["reason"] for e in queued[1:])

    # A's GPU shows owner-busy to its owner and on the market
    gpus = {g["id"]: g for g in net.cli_json(net.admin, "gpus")}
    assert gpus[gpu_a]["owner_busy"] is True
    offers = net.cli_json(net.user, "offers", "owner_busy=yes")
    assert [(o["gpu_id"], o["state"]) for o in offers] == [(gpu_a, "owner_busy")]
    shown = net.cli(net.admin, "gpus")
    assert "owner_busy" in shown.stdout, shown.stdout + shown.stderr

    # billed for the time the first attempt ran, and no more
    db = Database(db_url)
    try:
        with db.sessions() as s:
            ch = s.get(AttemptCharge, att1["id"])
            assert ch is not None and ch.settled_at is not None
            # the running time its agent measured (core.billing_time), within the
            # coordinator's view of the attempt
            ran = att1["runtime_s"]
            assert ran is not None
            assert ran <= _ts(att1["finished_at"]) - _ts(att1["started_at"]) + 1.0
            assert ch.billed_seconds == metered_seconds(ran)
            assert ch.charged == (Decimal("3.6") * ch.billed_seconds / 3600).quantize(ch.charged)
    finally:
        db.dispose()

    # while the owner is there A takes no work: B busy, a new job waits for A
    blocker_id = _detached(net, "sleep", "60")
    wait_for(lambda: net.job(net.user, blocker_id)["state"] == "running", 30, "the blocker")
    assert _job(net, blocker_id)["node_id"] != node_a
    later = _detached(net, "echo", "late")
    why = wait_for(
        lambda: (
            (w := net.cli_json(net.user, "jobs", "why", later))
            and "owner is using it" in w["summary"]
            and w
        ),
        20,
        "the owner reason",
    )
    assert why["rejections"].get("owner is using it") == 1
    time.sleep(1.0)
    assert _job(net, later)["state"] == "queued"

    # the owner's process ends: A takes work again once it stayed idle for IDLE_S
    gone = time.time()
    _faults(net, a).unlink()
    wait_for(lambda: net.job(net.user, later)["state"] == "succeeded", 40, "the late job")
    finished = _job(net, later)
    assert finished["node_id"] == node_a
    assert _ts(finished["attempts"][0]["started_at"]) >= gone + IDLE_S - 0.5
    gpus = {g["id"]: g for g in net.cli_json(net.admin, "gpus")}
    assert gpus[gpu_a]["owner_busy"] is False
    net.cli(net.user, "cancel", blocker_id)
