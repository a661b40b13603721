"""End to end, the market: priced simulated GPUs, credits, metering, refunds, statements.
Real processes driven by the CLI. A coordinator restart runs on SQLite and on PostgreSQL, the
other tests on one each (the integration tests bill on both)."""

from __future__ import annotations

import csv
import io
import textwrap
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpunet.core.ledger import charge_for, fee_split, metered_seconds
from gpunet.sdk.client import Client
from tests.conftest import only_on
from tests.e2e.procs import Network, two_agent_network, wait_for

pytestmark = pytest.mark.e2e
PRICE = Decimal("3.6")  # credits per GPU-hour: 0.001 a second


@pytest.fixture
def net(request: pytest.FixtureRequest, tmp_path: Path, db_url: str) -> Iterator[Network]:
    lease = 10.0 if "restart" in request.node.name else 3.0
    with two_agent_network(tmp_path, db_url, "2xA100-80GB", lease_timeout=lease) as n:
        # through the SDK: the CLI's `price set` and `credits grant` run in the README's test
        with Client(n.url, n.owner) as owner, Client(n.url, n.admin) as admin:
            for node in admin.nodes():
                rows = owner.set_price(str(PRICE), node_id=node["id"])
                assert {r["price_per_hour"] for r in rows} == {"3.600000"}
            granted = admin.grant("alice", "50")
        assert granted["balance"] == "50.000000"
        yield n


def _submit(net: Network, tmp_path: Path, body: str) -> str:
    p = tmp_path / "job.yaml"
    p.write_text(textwrap.dedent(body))
    return str(net.cli_json(net.user, "submit", str(p))["id"])


def _finished(net: Network, job_id: str) -> dict[str, Any]:
    """Polled on the API; the record as the CLI shows it."""
    user = net.user
    wait_for(
        lambda: net.job(user, job_id)["state"] in ("succeeded", "failed"), 45, f"{job_id} to finish"
    )
    return dict(net.cli_json(user, "jobs", "show", job_id))


def _cost(attempt: dict[str, Any], gpus: int) -> tuple[int, Decimal]:
    """Metered seconds and charge of an attempt: the running time its agent measured."""
    t0 = datetime.fromisoformat(attempt["started_at"])
    t1 = datetime.fromisoformat(attempt["finished_at"])
    assert attempt["runtime_s"] is not None
    # the coordinator's view bounds it: the reports arrive after the process started and ended
    assert attempt["runtime_s"] <= (t1 - t0).total_seconds() + 1.0
    secs = metered_seconds(attempt["runtime_s"])
    return secs, charge_for(secs, PRICE * gpus)


def _check_books(net: Network, charged: Decimal) -> None:
    user, owner = net.user, net.owner
    spend = net.cli_json(user, "spend")
    assert Decimal(spend["total_charged"]) == charged
    assert Decimal(spend["balance"]) == Decimal(50) - charged and spend["held"] == "0.000000"
    earn = net.cli_json(owner, "earnings")
    owner_share, _fee = fee_split(charged, Decimal("0.10"))
    assert Decimal(earn["total_revenue"]) == owner_share
    assert sum(Decimal(g["revenue"]) for g in earn["gpus"]) == owner_share
    r = net.cli(net.admin, "ledger", "verify")
    assert r.returncode == 0 and "ledger ok" in r.stdout, r.stdout + r.stderr


@only_on("sqlite")  # integration: both
def test_a_priced_job_bills_metered_seconds_times_price(net: Network, tmp_path: Path) -> None:
    job_id = _submit(
        net,
        tmp_path,
        """
        name: priced
        command: ["python3", "-c", "import time; time.sleep(2)"]
        resources: {gpus: 2}
        max_price: 4
    """,
    )
    job = _finished(net, job_id)
    assert job["state"] == "succeeded"
    (att,) = job["attempts"]
    secs, cost = _cost(att, 2)
    assert secs >= 2 and cost == Decimal(secs) * Decimal("0.002")
    _check_books(net, cost)
    spend = net.cli_json(net.user, "spend")
    assert spend["jobs"] == [
        {
            "job_id": job_id,
            "attempts": 1,
            "refunded_attempts": 0,
            "gpu_seconds": 2 * secs,
            "charged": str(cost),
        }
    ]
    out = net.cli(net.owner, "earnings", "--csv")
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert sorted(r["gpu_id"] for r in rows) == sorted(att["gpu_ids"])
    assert all(int(r["seconds_sold"]) == secs for r in rows)
    # a job whose cap is below every price can never run, and says so
    bad = net.cli(net.user, "run", "--gpus", "1", "--max-price", "1", "--", "true")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr


@only_on("postgres")  # integration: both
def test_kill9_agent_is_not_charged_and_late_report_cannot_bill(
    net: Network, tmp_path: Path
) -> None:
    user = net.user
    job_id = _submit(
        net,
        tmp_path,
        """
        name: survivor
        command:
          - python3
          - -c
          - |
            import os, time
            time.sleep(60 if os.environ['GPUNET_ATTEMPT_NUMBER'] == '1' else 1)
        max_retries: 2
    """,
    )
    first = wait_for(
        lambda: (j := net.job(user, job_id))["state"] == "running" and j,
        20,
        "the job to run",
    )
    node = first["node_id"]
    victim = next(n for n in net.agents if net.agent_credentials(n)["node_id"] == node)
    creds = net.agent_credentials(victim)
    old = first["attempts"][-1]
    assert net.cli_json(user, "balance")["held"] == "3.600000"
    net.agents[victim].kill9()
    job = _finished(net, job_id)
    assert [a["state"] for a in job["attempts"]] == ["lost", "succeeded"]
    _secs, cost = _cost(job["attempts"][1], 1)
    _check_books(net, cost)  # only the attempt that ran to the end is charged
    assert net.cli_json(user, "spend")["jobs"][0]["refunded_attempts"] == 1
    r = httpx.post(
        f"{net.url}/v1/agent/attempts/{old['id']}/finished",
        json={"fencing_token": 1, "exit_code": 0},
        headers={"Authorization": f"Bearer {creds['token']}"},
        timeout=10,
    )
    # the job's retry already ran: a late success is recorded as a discarded duplicate
    assert r.status_code == 200, r.text
    events = net.cli_json(user, "jobs", "events", job_id)
    assert any("duplicate discarded" in e["reason"] for e in events)
    _check_books(net, cost)  # the late report billed nothing


def test_coordinator_restart_mid_job_bills_once(net: Network, tmp_path: Path) -> None:
    user = net.user
    job_id = _submit(
        net,
        tmp_path,
        """
        name: across-restart
        command: ["python3", "-c", "import time; time.sleep(4)"]
    """,
    )
    wait_for(
        lambda: net.job(user, job_id)["state"] == "running",
        20,
        "the job to run",
    )
    net.stop_coordinator()
    net.start_coordinator()
    job = _finished(net, job_id)
    assert [a["state"] for a in job["attempts"]] == ["succeeded"]
    _secs, cost = _cost(job["attempts"][0], 1)
    _check_books(net, cost)
